package ingest

import (
	"sync"
	"time"
)

// Status is ingest's state for health checks: whether it is connected to
// the broker, how many messages it holds unacknowledged, the age of the
// oldest (the ingest lag), and whether a batch is failing. Safe for
// concurrent use; the zero value is ready (Run initializes it).
type Status struct {
	mu         sync.Mutex
	stallAfter time.Duration
	now        func() time.Time
	q          *queue    // the live connection's queue; nil when disconnected
	since      time.Time // of the current connection state
	failures   int       // consecutive failed attempts of the current batch
}

// Health is a snapshot of Status.
type Health struct {
	// State is "connecting", "running", "retrying" (a batch keeps failing:
	// store or ledger) or "stalled" (the lag exceeds the stall threshold).
	State     string
	Connected bool
	Pending   int           // received, not yet acknowledged
	Lag       time.Duration // age of the oldest of them
	Failures  int           // consecutive failed attempts of the current batch
	Since     time.Time     // when the connection state last changed
}

// Healthy reports whether ingest is making progress: connected, no
// failing batch, lag under the threshold. A connection being established
// counts as healthy for grace (a reconnect takes a moment).
func (h Health) Healthy() bool {
	return h.State == "running" || h.State == "connecting"
}

func (s *Status) init(stallAfter time.Duration, now func() time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stallAfter, s.now = stallAfter, now
	if s.since.IsZero() {
		s.since = now()
	}
}

func (s *Status) connected(q *queue) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.q, s.since, s.failures = q, s.now(), 0
}

func (s *Status) disconnected() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.q != nil {
		s.q, s.since = nil, s.now()
	}
}

func (s *Status) failed(attempt int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failures = attempt
}

func (s *Status) committed() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failures = 0
}

// Health returns the current state. A connection that has been down for
// longer than the stall threshold counts as stalled.
func (s *Status) Health() Health {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.now == nil {
		return Health{State: "connecting"}
	}
	now := s.now()
	h := Health{Since: s.since, Failures: s.failures, Connected: s.q != nil}
	if s.q != nil {
		var oldest time.Time
		h.Pending, oldest = s.q.lag()
		if h.Pending > 0 {
			h.Lag = now.Sub(oldest)
		}
	}
	switch {
	case h.Failures > 0:
		h.State = "retrying"
	case h.Connected && h.Lag > s.stallAfter, !h.Connected && now.Sub(s.since) > s.stallAfter:
		h.State = "stalled"
	case h.Connected:
		h.State = "running"
	default:
		h.State = "connecting"
	}
	return h
}
