package outbox

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/fieldtrust/fieldtrust/internal/store"
)

// Store is what the dispatcher needs of the store.
type Store interface {
	DueOutbox(ctx context.Context, now time.Time, limit int) ([]store.OutboxMessage, error)
	OutboxSent(ctx context.Context, id string, at time.Time) error
	OutboxFailed(ctx context.Context, id string, attempts int, next time.Time, lastErr, state string) error
	TrimOutbox(ctx context.Context, before time.Time) (int, error)
}

// Sender delivers messages of one kind. An error wrapping a
// *Permanent... error that says so (see IsPermanent) is not retried.
type Sender interface {
	Send(ctx context.Context, m store.OutboxMessage) error
}

// SenderFunc adapts a function to Sender.
type SenderFunc func(ctx context.Context, m store.OutboxMessage) error

// Send implements Sender.
func (f SenderFunc) Send(ctx context.Context, m store.OutboxMessage) error { return f(ctx, m) }

// Permanent marks an error a retry cannot fix.
type Permanent interface{ Permanent() bool }

// permanent wraps an error as permanent.
type permanent struct{ error }

func (p permanent) Permanent() bool { return true }
func (p permanent) Unwrap() error   { return p.error }

// PermanentError marks err as one a retry cannot fix.
func PermanentError(err error) error { return permanent{err} }

// IsPermanent reports whether err is marked permanent.
func IsPermanent(err error) bool {
	var p Permanent
	return errors.As(err, &p) && p.Permanent()
}

// Config configures a dispatcher.
type Config struct {
	Store   Store
	Senders map[string]Sender // by message kind
	// Rate returns a rule's rate limit (n messages per period); n <= 0
	// means none. Nil: no limits.
	Rate   func(ruleID string) (n int, per time.Duration)
	Logger *slog.Logger
	// Registerer receives the dispatcher's metrics; nil keeps them
	// private.
	Registerer prometheus.Registerer
	// Now is the clock; default time.Now.
	Now func() time.Time
	// Wake, if set, makes the dispatcher look for due messages at once
	// (the rules engine signals new ones); it also looks every Poll.
	Wake <-chan struct{}
	Poll time.Duration // default 1 s
	// Backoff after the n-th failed attempt: MinBackoff × 2^(n-1), at
	// most MaxBackoff; after MaxAttempts the message is dead.
	MinBackoff, MaxBackoff time.Duration // default 5 s, 30 min
	MaxAttempts            int           // default 12 (about 3 h of trying)
	// Parallel bounds the deliveries in flight; default 8. An
	// unreachable server delays only its own messages.
	Parallel int
	// Timeout bounds one delivery; default 60 s.
	Timeout time.Duration
	// Retention is how long sent and suppressed messages are kept (the
	// outbox is trimmed hourly); default 7 days.
	Retention time.Duration
	// Sent, if set, is called after each delivery is recorded (tests,
	// latency measurements).
	Sent func(m store.OutboxMessage, at time.Time)
}

func (c *Config) defaults() {
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Poll <= 0 {
		c.Poll = time.Second
	}
	if c.MinBackoff <= 0 {
		c.MinBackoff = 5 * time.Second
	}
	if c.MaxBackoff < c.MinBackoff {
		c.MaxBackoff = max(30*time.Minute, c.MinBackoff)
	}
	if c.MaxAttempts <= 0 {
		c.MaxAttempts = 12
	}
	if c.Parallel <= 0 {
		c.Parallel = 8
	}
	if c.Timeout <= 0 {
		c.Timeout = time.Minute
	}
	if c.Retention <= 0 {
		c.Retention = 7 * 24 * time.Hour
	}
}

// Backoff returns the delay after the n-th failed attempt.
func (c *Config) Backoff(n int) time.Duration {
	d := c.MinBackoff
	for i := 1; i < n && d < c.MaxBackoff; i++ {
		d *= 2
	}
	return min(d, c.MaxBackoff)
}

// Dispatcher delivers the outbox.
type Dispatcher struct {
	cfg      Config
	m        *metrics
	mu       sync.Mutex
	inflight map[string]bool
	limits   map[string]*rate.Limiter
	// suppressed counts suppressions per rule since the last log line
	// about them (one line per rule and minute, not one per message).
	suppressed map[string]*suppression
	trimmed    time.Time
}

type suppression struct {
	n      int
	logged time.Time
}

// New returns a dispatcher.
func New(cfg Config) *Dispatcher {
	cfg.defaults()
	return &Dispatcher{cfg: cfg, m: newMetrics(cfg.Registerer), inflight: map[string]bool{}, limits: map[string]*rate.Limiter{}, suppressed: map[string]*suppression{}}
}

// Run delivers until ctx ends. Store errors are logged and retried on the
// next poll.
func (d *Dispatcher) Run(ctx context.Context) error {
	sem := make(chan struct{}, d.cfg.Parallel)
	var wg sync.WaitGroup
	defer wg.Wait()
	tick := time.NewTicker(d.cfg.Poll)
	defer tick.Stop()
	for {
		if err := d.round(ctx, sem, &wg); err != nil && ctx.Err() == nil {
			d.cfg.Logger.Warn("outbox: reading due messages failed; retrying", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		case <-d.cfg.Wake:
		}
	}
}

// round starts the delivery of every due message not in flight.
func (d *Dispatcher) round(ctx context.Context, sem chan struct{}, wg *sync.WaitGroup) error {
	now := d.cfg.Now()
	if now.Sub(d.trimmed) > time.Hour {
		d.trimmed = now
		if n, err := d.cfg.Store.TrimOutbox(ctx, now.Add(-d.cfg.Retention)); err != nil {
			d.cfg.Logger.Warn("outbox: trimming old messages failed", "err", err)
		} else if n > 0 {
			d.cfg.Logger.Info("outbox: old sent and suppressed messages deleted", "deleted", n, "retention", d.cfg.Retention)
		}
	}
	due, err := d.cfg.Store.DueOutbox(ctx, now, 500)
	if err != nil {
		return err
	}
	for _, m := range due {
		d.mu.Lock()
		busy := d.inflight[m.ID]
		if !busy {
			d.inflight[m.ID] = true
		}
		d.mu.Unlock()
		if busy {
			continue
		}
		if !d.allow(m.RuleID, now) {
			d.m.outcome.WithLabelValues(m.Kind, "suppressed").Inc()
			sp := d.suppressed[m.RuleID]
			if sp == nil {
				sp = &suppression{}
				d.suppressed[m.RuleID] = sp
			}
			sp.n++
			if now.Sub(sp.logged) >= time.Minute {
				d.cfg.Logger.Warn("outbox: a rule's rate limit is spent; its messages are suppressed (list them with 'fieldtrust outbox list --state suppressed', retry with 'fieldtrust outbox retry')",
					"rule", m.RuleID, "suppressed", sp.n, "last", m.ID)
				sp.n, sp.logged = 0, now
			}
			if err := d.cfg.Store.OutboxFailed(ctx, m.ID, m.Attempts, now, "suppressed: the rule's rate limit was spent", store.OutboxSuppressed); err != nil {
				d.cfg.Logger.Warn("outbox: recording a suppression failed", "id", m.ID, "err", err)
			}
			d.done(m.ID)
			continue
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			d.done(m.ID)
			return nil
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			defer d.done(m.ID)
			d.deliver(ctx, m)
		}()
	}
	return nil
}

func (d *Dispatcher) done(id string) {
	d.mu.Lock()
	delete(d.inflight, id)
	d.mu.Unlock()
}

// allow applies the rule's rate limit (a token bucket of n per period,
// full at start).
func (d *Dispatcher) allow(ruleID string, now time.Time) bool {
	if d.cfg.Rate == nil {
		return true
	}
	n, per := d.cfg.Rate(ruleID)
	if n <= 0 || per <= 0 {
		return true
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	l := d.limits[ruleID]
	lim := rate.Limit(float64(n) / per.Seconds())
	if l == nil || l.Limit() != lim || l.Burst() != n {
		l = rate.NewLimiter(lim, n)
		l.SetLimitAt(now, lim)
		d.limits[ruleID] = l
	}
	return l.AllowN(now, 1)
}

// deliver sends one message and records the outcome.
func (d *Dispatcher) deliver(ctx context.Context, m store.OutboxMessage) {
	s := d.cfg.Senders[m.Kind]
	var err error
	if s == nil {
		err = PermanentError(fmt.Errorf("no sender for %s messages is configured", m.Kind))
	} else {
		sctx, cancel := context.WithTimeout(ctx, d.cfg.Timeout)
		err = s.Send(sctx, m)
		cancel()
	}
	if ctx.Err() != nil {
		return // shutting down: it stays pending and is sent after the restart
	}
	now := d.cfg.Now()
	if err == nil {
		// Recorded with a fresh context: a delivery that happened must
		// not be sent again because shutdown began meanwhile.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		if err := d.cfg.Store.OutboxSent(rctx, m.ID, now); err != nil {
			d.cfg.Logger.Error("outbox: delivered, but recording it failed; it will be sent again with the same ID", "id", m.ID, "err", err)
			return
		}
		d.m.outcome.WithLabelValues(m.Kind, "sent").Inc()
		if !m.CreatedAt.IsZero() {
			d.m.latency.WithLabelValues(m.Kind).Observe(now.Sub(m.CreatedAt).Seconds())
		}
		if d.cfg.Sent != nil {
			d.cfg.Sent(m, now)
		}
		return
	}
	attempts := m.Attempts + 1
	state, next := "", now.Add(d.cfg.Backoff(attempts))
	if IsPermanent(err) || attempts >= d.cfg.MaxAttempts {
		state = store.OutboxDead
		d.m.outcome.WithLabelValues(m.Kind, "dead").Inc()
		d.cfg.Logger.Error("outbox: message moved to the dead letters (retry it with 'fieldtrust outbox retry')", "id", m.ID, "kind", m.Kind, "attempts", attempts, "err", err)
	} else {
		d.m.outcome.WithLabelValues(m.Kind, "retry").Inc()
		d.cfg.Logger.Warn("outbox: delivery failed; retrying", "id", m.ID, "kind", m.Kind, "attempt", attempts, "retry_at", next, "err", err)
	}
	if rerr := d.cfg.Store.OutboxFailed(ctx, m.ID, attempts, next, err.Error(), state); rerr != nil {
		d.cfg.Logger.Warn("outbox: recording a failure failed", "id", m.ID, "err", rerr)
	}
}

type metrics struct {
	outcome *prometheus.CounterVec
	latency *prometheus.HistogramVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		outcome: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "fieldtrust", Subsystem: "outbox", Name: "messages_total",
			Help: "Outbox deliveries by kind and outcome (sent, retry, dead, suppressed)."}, []string{"kind", "outcome"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: "fieldtrust", Subsystem: "outbox", Name: "latency_seconds",
			Help:    "From the arrival of what caused a notification to its delivery (SMTP acceptance, webhook 2xx).",
			Buckets: []float64{0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300}}, []string{"kind"}),
	}
	if reg != nil {
		m.outcome = register(reg, m.outcome)
		m.latency = register(reg, m.latency)
	}
	return m
}

// register registers c, or returns the collector registered before (a
// restarted service keeps counting in the same one).
func register[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			return are.ExistingCollector.(C)
		}
		panic(err)
	}
	return c
}
