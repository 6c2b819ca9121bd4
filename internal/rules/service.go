package rules

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fieldtrust/fieldtrust/internal/dcc/calibration"
	"github.com/fieldtrust/fieldtrust/internal/store"
)

// ServiceStore is what the rules service needs of the store.
type ServiceStore interface {
	ListRules(ctx context.Context, scope string) ([]store.Rule, error)
	RulesCursor(ctx context.Context) (uint64, error)
	SnapshotsFromLedger(ctx context.Context, from uint64, limit int) ([]store.SnapshotRecord, error)
	RuleStates(ctx context.Context) ([]store.RuleState, error)
	CommitRules(ctx context.Context, c store.RuleCommit) error
	Alarms(ctx context.Context, q store.AlarmQuery) ([]store.Alarm, error)
	ListDevices(ctx context.Context, scope string) ([]store.Device, error)
	SnapshotByHash(ctx context.Context, scope string, hash []byte) (store.SnapshotRecord, error)
	LedgerSize(ctx context.Context) (uint64, error)
}

// Service runs the rules on the platform: it takes what ingest committed
// (Committed, never blocking ingest), evaluates it, and commits alarms,
// states and outbox messages together with its cursor (the next ledger
// index), so that after a crash it resumes where its last commit left off
// and re-evaluates the rest from the store with the same IDs.
type Service struct {
	Store  ServiceStore
	Logger *slog.Logger
	// Registerer receives the service's metrics; nil keeps them private.
	Registerer prometheus.Registerer
	Now        func() time.Time
	// Notify is called after a commit that added outbox messages (to
	// wake the dispatcher); it must not block.
	Notify func()
	// TickEvery is how often silence is checked (default 10 s);
	// ReloadEvery how often rules and open alarms are re-read (rules are
	// added offline by the CLI too; default 2 s).
	TickEvery, ReloadEvery time.Duration
	// Calibration, if set, is the DCC fleet link: what rules reading
	// calibration see (read per device at most once per CalibrationTTL);
	// nil: their calibration is unknown.
	Calibration Calibrations
	// Queue bounds the batches waiting between ingest and the engine;
	// beyond it the engine catches up from the store. Default 256.
	Queue int

	once   sync.Once
	inputs chan input
	behind atomic.Bool
	// Gateway statuses wait here, the latest per gateway (the broker
	// sends every retained one at subscription: thousands at once).
	statusMu sync.Mutex
	statuses map[string]bool
	statusCh chan struct{}
	m        *serviceMetrics
	mu       sync.Mutex
	running  map[string]*Rule // by ID, for RateOf
	// Committed (test hook) is called after each commit.
	committed func(store.RuleCommit)
}

type input struct {
	snaps   []store.SnapshotRecord
	events  []store.IntegrityEvent
	rejects []store.Reject
}

func (s *Service) init() {
	s.once.Do(func() {
		if s.Logger == nil {
			s.Logger = slog.New(slog.DiscardHandler)
		}
		if s.Now == nil {
			s.Now = time.Now
		}
		if s.TickEvery <= 0 {
			s.TickEvery = 10 * time.Second
		}
		if s.ReloadEvery <= 0 {
			s.ReloadEvery = 2 * time.Second
		}
		if s.Queue <= 0 {
			s.Queue = 256
		}
		s.inputs = make(chan input, s.Queue)
		s.statuses, s.statusCh = map[string]bool{}, make(chan struct{}, 1)
		s.m = newServiceMetrics(s.Registerer)
	})
}

// Committed takes what ingest made durable. It never blocks: when the
// engine is behind, the batch is dropped here and read from the store.
func (s *Service) Committed(snaps []store.SnapshotRecord, events []store.IntegrityEvent, rejects []store.Reject) {
	s.init()
	if len(snaps)+len(events)+len(rejects) == 0 {
		return
	}
	select {
	case s.inputs <- input{snaps: snaps, events: events, rejects: rejects}:
	default:
		s.m.behind.Inc()
		s.behind.Store(true)
	}
}

// GatewayStatus takes a gateway's retained status (birth or last will).
func (s *Service) GatewayStatus(gateway string, online bool) {
	s.init()
	s.statusMu.Lock()
	s.statuses[gateway] = online
	s.statusMu.Unlock()
	select {
	case s.statusCh <- struct{}{}:
	default:
	}
}

// RateOf returns a running rule's rate limit (for the dispatcher).
func (s *Service) RateOf(ruleID string) (int, time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r := s.running[ruleID]; r != nil {
		return r.RateLimit.N, r.RateLimit.Per
	}
	return DefaultRate.N, DefaultRate.Per
}

// Run runs the engine until ctx ends. It returns an error when the store
// fails at start; later store failures are retried.
func (s *Service) Run(ctx context.Context) error {
	s.init()
	e := NewEngine()
	e.Prev = func(gw string, hash []byte) (map[string]float64, bool) {
		rec, err := s.Store.SnapshotByHash(ctx, gw, hash)
		if err != nil {
			return nil, false
		}
		vals := make(map[string]float64, len(rec.Values))
		for _, v := range rec.Values {
			vals[v.Channel] = v.Value
		}
		return vals, true
	}
	if s.Calibration != nil {
		cc := &calibrationCache{link: s.Calibration, now: s.Now, log: s.Logger}
		e.Calibration = func(gw, dev string, t time.Time) *calibration.Flag { return cc.flag(ctx, gw, dev, t) }
	}
	revs := map[string]int{}
	if err := s.reload(ctx, e, revs); err != nil {
		return err
	}
	states, err := s.Store.RuleStates(ctx)
	if err != nil {
		return fmt.Errorf("rules: states: %w", err)
	}
	open, err := s.Store.Alarms(ctx, store.AlarmQuery{State: "open", Limit: store.MaxLimit})
	if err != nil {
		return fmt.Errorf("rules: open alarms: %w", err)
	}
	e.Restore(states, open)
	devs, err := s.Store.ListDevices(ctx, "")
	if err != nil {
		return fmt.Errorf("rules: devices: %w", err)
	}
	now := s.Now()
	for _, d := range devs {
		// Silence counts from start-up at the earliest: a platform that
		// was down does not page for the time it was down.
		seen := d.LastTime
		if seen.Before(now) {
			seen = now
		}
		e.Known(d, seen)
	}
	cursor, err := s.Store.RulesCursor(ctx)
	if err != nil {
		return fmt.Errorf("rules: cursor: %w", err)
	}
	saved := cursor
	if cursor, err = s.catchUp(ctx, e, cursor); err != nil {
		return err
	}
	s.Logger.Info("rules running", "rules", len(e.Rules()), "cursor", cursor, "devices", len(devs))
	tick := time.NewTicker(s.TickEvery)
	defer tick.Stop()
	reload := time.NewTicker(s.ReloadEvery)
	defer reload.Stop()
	for {
		var c store.RuleCommit
		select {
		case <-ctx.Done():
			if cursor != saved {
				s.commit(context.WithoutCancel(ctx), store.RuleCommit{Cursor: &cursor}, time.Second)
			}
			return nil
		case <-s.statusCh:
			s.statusMu.Lock()
			st := s.statuses
			s.statuses = map[string]bool{}
			s.statusMu.Unlock()
			offline := false
			for gw, online := range st {
				e.GatewayStatus(gw, online)
				offline = offline || !online
			}
			if offline {
				e.Tick(s.Now(), &c)
			}
		case in := <-s.inputs:
			start := time.Now()
			for _, rec := range in.snaps {
				if rec.LedgerIndex < cursor {
					continue // evaluated already (catch-up)
				}
				if rec.LedgerIndex > cursor {
					// Something else appended to the ledger in between
					// (HTTPS agents store their snapshots themselves):
					// read it all from the store, this batch included.
					s.behind.Store(true)
					break
				}
				e.Snapshot(rec, &c)
				cursor = rec.LedgerIndex + 1
				s.m.snapshots.Inc()
			}
			for _, ev := range in.events {
				e.Integrity(ev, &c)
			}
			for _, r := range in.rejects {
				e.Reject(r, &c)
			}
			if len(in.snaps) > 0 {
				s.m.evalSeconds.Observe(time.Since(start).Seconds() / float64(len(in.snaps)))
			}
		case <-tick.C:
			// Snapshots that did not come through ingest's hook (agents)
			// are read from the store.
			s.behind.Store(true)
			e.Tick(s.Now(), &c)
			if cursor != saved {
				c.Cursor = &cursor // persist the cursor now and then, not per batch
			}
		case <-reload.C:
			if err := s.reload(ctx, e, revs); err != nil {
				s.Logger.Warn("rules: reloading rules failed", "err", err)
			}
			if open, err := s.Store.Alarms(ctx, store.AlarmQuery{State: "open", Limit: store.MaxLimit}); err == nil {
				e.SyncOpen(open)
			}
		}
		if s.behind.Swap(false) {
			var err error
			if cursor, err = s.catchUp(ctx, e, cursor); err != nil {
				s.behind.Store(true)
			}
		}
		if len(c.Alarms)+len(c.Outbox)+len(c.States)+len(c.Errors) > 0 {
			c.Cursor = &cursor
		}
		if c.Cursor == nil {
			continue
		}
		if !s.commit(ctx, c, 50*time.Millisecond) {
			return nil
		}
		saved = *c.Cursor
	}
}

// commit makes c durable, retrying with backoff until it succeeds or ctx
// ends (the engine's memory already holds its effects).
func (s *Service) commit(ctx context.Context, c store.RuleCommit, delay time.Duration) bool {
	for {
		err := s.Store.CommitRules(ctx, c)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return false
		}
		s.Logger.Error("rules: committing failed; retrying", "err", err, "in", delay)
		select {
		case <-ctx.Done():
			return false
		case <-time.After(delay):
		}
		delay = min(2*delay, 10*time.Second)
	}
	s.m.account(c)
	if len(c.Outbox) > 0 && s.Notify != nil {
		s.Notify()
	}
	if s.committed != nil {
		s.committed(c)
	}
	return true
}

// catchUp evaluates the stored snapshots from cursor on and returns the
// new cursor. Without rules there is nothing to evaluate: the cursor moves
// to the end of the ledger (rules apply from when they are added; 'rule
// test' replays history).
func (s *Service) catchUp(ctx context.Context, e *Engine, cursor uint64) (uint64, error) {
	if len(e.Rules()) == 0 {
		size, err := s.Store.LedgerSize(ctx)
		if err != nil {
			return cursor, fmt.Errorf("rules: ledger size: %w", err)
		}
		if size > cursor {
			cursor = size
			if !s.commit(ctx, store.RuleCommit{Cursor: &cursor}, 50*time.Millisecond) {
				return cursor, ctx.Err()
			}
		}
		return cursor, nil
	}
	for {
		recs, err := s.Store.SnapshotsFromLedger(ctx, cursor, 500)
		if err != nil {
			return cursor, fmt.Errorf("rules: catching up from ledger index %d: %w", cursor, err)
		}
		if len(recs) == 0 {
			return cursor, nil
		}
		var c store.RuleCommit
		for _, rec := range recs {
			e.Snapshot(rec, &c)
			cursor = rec.LedgerIndex + 1
		}
		s.m.snapshots.Add(float64(len(recs)))
		c.Cursor = &cursor
		if !s.commit(ctx, c, 50*time.Millisecond) {
			return cursor, ctx.Err()
		}
		if len(recs) < 500 {
			return cursor, nil
		}
	}
}

// reload reads the rules and hands the engine the compiled ones.
func (s *Service) reload(ctx context.Context, e *Engine, revs map[string]int) error {
	list, err := s.Store.ListRules(ctx, "")
	if err != nil {
		return fmt.Errorf("rules: %w", err)
	}
	changed := len(list) != len(revs)
	for _, r := range list {
		if rev, ok := revs[r.ID]; !ok || rev != r.Revision*2+boolInt(r.Enabled) {
			changed = true
		}
	}
	if !changed {
		return nil
	}
	clear(revs)
	var rs []*Rule
	running := map[string]*Rule{}
	for _, sr := range list {
		revs[sr.ID] = sr.Revision*2 + boolInt(sr.Enabled)
		r, err := FromStore(sr)
		if err != nil {
			var pe *Error
			if !errors.As(err, &pe) {
				return err
			}
			s.Logger.Error("rules: a stored rule does not compile; it does not run", "rule", sr.ID, "err", err)
			continue
		}
		rs = append(rs, r)
		running[r.ID] = r
	}
	e.SetRules(rs)
	s.mu.Lock()
	s.running = running
	s.mu.Unlock()
	s.m.rules.Set(float64(len(e.Rules())))
	s.Logger.Info("rules loaded", "rules", len(rs), "enabled", len(e.Rules()))
	return nil
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

type serviceMetrics struct {
	raised, cleared, errors, behind, messages, snapshots prometheus.Counter
	rules                                                prometheus.Gauge
	evalSeconds                                          prometheus.Histogram
}

func newServiceMetrics(reg prometheus.Registerer) *serviceMetrics {
	c := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Namespace: "fieldtrust", Subsystem: "rules", Name: name, Help: help})
	}
	m := &serviceMetrics{
		raised:    c("alarms_raised_total", "Alarms raised."),
		cleared:   c("alarms_cleared_total", "Alarms cleared by their rule."),
		errors:    c("errors_total", "Rule evaluations that failed at run time (recorded as rule errors)."),
		behind:    c("behind_total", "Batches from ingest not queued because the engine was behind (read from the store instead)."),
		messages:  c("outbox_messages_total", "Notifications written to the outbox."),
		snapshots: c("snapshots_total", "Snapshots the rules were evaluated on."),
		rules:     prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "fieldtrust", Subsystem: "rules", Name: "enabled", Help: "Enabled rules."}),
		evalSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: "fieldtrust", Subsystem: "rules", Name: "evaluation_seconds",
			Help: "Time to evaluate every rule on one snapshot.", Buckets: prometheus.ExponentialBuckets(1e-6, 4, 10)}),
	}
	if reg == nil {
		return m
	}
	reg1 := func(c prometheus.Collector) prometheus.Collector {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				return are.ExistingCollector
			}
			panic(err)
		}
		return c
	}
	m.raised = reg1(m.raised).(prometheus.Counter)
	m.cleared = reg1(m.cleared).(prometheus.Counter)
	m.errors = reg1(m.errors).(prometheus.Counter)
	m.behind = reg1(m.behind).(prometheus.Counter)
	m.messages = reg1(m.messages).(prometheus.Counter)
	m.snapshots = reg1(m.snapshots).(prometheus.Counter)
	m.rules = reg1(m.rules).(prometheus.Gauge)
	m.evalSeconds = reg1(m.evalSeconds).(prometheus.Histogram)
	return m
}

func (m *serviceMetrics) account(c store.RuleCommit) {
	for _, a := range c.Alarms {
		if a.Clear {
			m.cleared.Inc()
		} else {
			m.raised.Inc()
		}
	}
	m.errors.Add(float64(len(c.Errors)))
	m.messages.Add(float64(len(c.Outbox)))
}
