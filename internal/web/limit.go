package web

import (
	"fmt"
	"log/slog"
	"math"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/fieldtrust/fieldtrust/internal/tacs"
)

// ExportLimits bound what the exports of one tenant may take of the
// platform, so that no tenant can exhaust it for the others: an export
// page holds a database connection, a CPU for proofs and bandwidth while
// it streams. A tenant is a master account (every identity below it
// shares its budget: a tenant cannot multiply it by issuing itself more
// certificates) or a service.
type ExportLimits struct {
	// Concurrent is how many export pages a tenant may stream at once
	// (default DefaultExportConcurrent).
	Concurrent int
	// Every is the sustained rate: one page per Every on average
	// (default DefaultExportEvery), with bursts of Burst pages (default
	// DefaultExportBurst).
	Every time.Duration
	Burst int
}

// Defaults of ExportLimits: with pages of DefaultExportLimit snapshots, a
// tenant downloads a million snapshots in under two minutes, and at most
// two pages of it are in flight at any time.
const (
	DefaultExportConcurrent = 2
	DefaultExportEvery      = time.Second
	DefaultExportBurst      = 10
)

// limitError is a refusal by the export gate: 429 with Retry-After.
type limitError struct {
	retryAfter time.Duration
	msg        string
}

func (e *limitError) Error() string { return e.msg }

// retryAfterSeconds is the Retry-After header value: whole seconds, at
// least 1.
func (e *limitError) retryAfterSeconds() string {
	return fmt.Sprint(max(1, int(math.Ceil(e.retryAfter.Seconds()))))
}

// exportGate enforces ExportLimits per tenant.
type exportGate struct {
	limits ExportLimits
	now    func() time.Time
	log    *slog.Logger

	mu      sync.Mutex
	tenants map[string]*tenantBudget // guarded by mu
}

type tenantBudget struct {
	active  int
	bucket  *rate.Limiter
	refused int // refusals since the last admitted page
}

// gateSweepAt is the number of tenants above which idle ones (nothing
// streaming, bucket full) are forgotten, bounding the gate's memory.
const gateSweepAt = 1024

func newExportGate(l ExportLimits, now func() time.Time, log *slog.Logger) *exportGate {
	if l.Concurrent <= 0 {
		l.Concurrent = DefaultExportConcurrent
	}
	if l.Every <= 0 {
		l.Every = DefaultExportEvery
	}
	if l.Burst <= 0 {
		l.Burst = DefaultExportBurst
	}
	if now == nil {
		now = time.Now
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &exportGate{limits: l, now: now, log: log, tenants: map[string]*tenantBudget{}}
}

// tenantOf is the key a subject's exports are counted under.
func tenantOf(s tacs.Subject) string {
	if s.IsService() {
		return s.String()
	}
	master, _, _ := strings.Cut(s.Path, "/")
	return master
}

// acquire admits one export page of subj's tenant, or refuses it with a
// *limitError. The caller calls release when the page is done.
//
// Refusals are logged without amplification: the first of a run, then
// their number when the tenant is admitted again.
func (g *exportGate) acquire(subj tacs.Subject) (release func(), err error) {
	key := tenantOf(subj)
	now := g.now()
	g.mu.Lock()
	defer g.mu.Unlock()
	b := g.tenants[key]
	if b == nil {
		if len(g.tenants) >= gateSweepAt {
			g.sweep(now)
		}
		b = &tenantBudget{bucket: rate.NewLimiter(rate.Every(g.limits.Every), g.limits.Burst)}
		g.tenants[key] = b
	}
	refuse := func(e *limitError) (func(), error) {
		if b.refused++; b.refused == 1 {
			g.log.Warn("export refused: tenant over its limits", "tenant", key, "reason", e.msg)
		}
		return nil, e
	}
	if b.active >= g.limits.Concurrent {
		return refuse(&limitError{retryAfter: time.Second,
			msg: fmt.Sprintf("%s already has %d exports in progress, the most it may have at once; retry when one has finished", key, b.active)})
	}
	r := b.bucket.ReserveN(now, 1)
	if d := r.DelayFrom(now); !r.OK() || d > 0 {
		r.CancelAt(now)
		return refuse(&limitError{retryAfter: d,
			msg: fmt.Sprintf("%s asked for export pages faster than one per %v (bursts of %d); retry in %v", key, g.limits.Every, g.limits.Burst, d.Round(time.Millisecond))})
	}
	if b.refused > 1 {
		g.log.Info("export admitted again", "tenant", key, "refused_meanwhile", b.refused)
	}
	b.refused = 0
	b.active++
	var once sync.Once
	return func() {
		once.Do(func() {
			g.mu.Lock()
			b.active--
			g.mu.Unlock()
		})
	}, nil
}

// sweep forgets tenants with nothing in progress and a full bucket: they
// would start afresh exactly as they are.
func (g *exportGate) sweep(now time.Time) {
	for k, b := range g.tenants {
		if b.active == 0 && b.bucket.TokensAt(now) >= float64(g.limits.Burst) {
			delete(g.tenants, k)
		}
	}
}
