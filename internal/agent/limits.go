package agent

import (
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
)

// Limits bound how often one address and one agent may call register,
// rotate and token, and how often an agent may post (requests per second
// and burst). Zero fields take the defaults; a negative rate switches
// that limit off (load tests).
type Limits struct {
	PerIP, PerAgent, Exchange float64
	PerIPBurst, PerAgentBurst int
	ExchangeBurst             int
}

func (l Limits) withDefaults() Limits {
	def := func(v *float64, d float64) {
		if *v == 0 {
			*v = d
		}
	}
	defi := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	def(&l.PerIP, 20)
	defi(&l.PerIPBurst, 100)
	def(&l.PerAgent, 1)
	defi(&l.PerAgentBurst, 20)
	def(&l.Exchange, 20)
	defi(&l.ExchangeBurst, 100)
	return l
}

// maxLimiterKeys bounds each limiter table: beyond it, the table is
// cleared (every key starts with a full bucket again), so a flood of
// addresses or made-up client ids cannot grow memory without bound.
const maxLimiterKeys = 100_000

type limiterTable struct {
	mu    sync.Mutex
	r     rate.Limit
	burst int
	m     map[string]*rate.Limiter
}

func newTable(r float64, burst int) *limiterTable {
	if r < 0 {
		return nil
	}
	return &limiterTable{r: rate.Limit(r), burst: burst, m: map[string]*rate.Limiter{}}
}

func (t *limiterTable) allow(key string) bool {
	if t == nil {
		return true
	}
	t.mu.Lock()
	l := t.m[key]
	if l == nil {
		if len(t.m) >= maxLimiterKeys {
			clear(t.m)
		}
		l = rate.NewLimiter(t.r, t.burst)
		t.m[key] = l
	}
	t.mu.Unlock()
	return l.Allow()
}

type limiters struct {
	perIP, perAgent, exchange *limiterTable
	log                       *rate.Limiter
}

func newLimiters(l Limits) *limiters {
	return &limiters{
		perIP:    newTable(l.PerIP, l.PerIPBurst),
		perAgent: newTable(l.PerAgent, l.PerAgentBurst),
		exchange: newTable(l.Exchange, l.ExchangeBurst),
		log:      rate.NewLimiter(5, 20),
	}
}

func (l *limiters) ip(addr string) bool  { return l.perIP.allow(addr) }
func (l *limiters) agent(id string) bool { return l.perAgent.allow(id) }
func (l *limiters) post(id string) bool  { return l.exchange.allow(id) }
func (l *limiters) logAllowed() bool     { return l.log.Allow() }
func remoteIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

type metrics struct {
	requests *prometheus.CounterVec
	refusals *prometheus.CounterVec
	values   prometheus.Counter
	verify   prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fieldtrust_agent_requests_total",
			Help: "Agent requests served, by endpoint."}, []string{"endpoint"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fieldtrust_agent_refusals_total",
			Help: "Agent requests refused, by endpoint and OAuth error."}, []string{"endpoint", "error"}),
		values: prometheus.NewCounter(prometheus.CounterOpts{Name: "fieldtrust_agent_values_total",
			Help: "Values agents posted that were stored."}),
		verify: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "fieldtrust_agent_token_verify_seconds",
			Help: "Time to verify an access token on an agent request.", Buckets: prometheus.ExponentialBuckets(1e-5, 2, 12)}),
	}
	if reg != nil {
		reg.MustRegister(m.requests, m.refusals, m.values, m.verify)
	}
	return m
}

var _ = time.Second
