package supervisor

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeClock advances only when a run "lasts" (the script says how long)
// or a backoff is waited for; it records the backoffs.
type fakeClock struct {
	mu       sync.Mutex
	now      time.Time
	backoffs []time.Duration
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *fakeClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.backoffs = append(c.backoffs, d)
	c.now = c.now.Add(d)
	ch := make(chan time.Time, 1)
	ch <- c.now
	return ch
}
func (c *fakeClock) advance(d time.Duration) { c.mu.Lock(); c.now = c.now.Add(d); c.mu.Unlock() }

// run is one scripted run of a service: it lasts d, then returns err (or,
// with block, runs until its context ends).
type run struct {
	d     time.Duration
	err   error
	block bool
}

var errBoom = errors.New("boom")

// TestPolicy is the restart policy, rule by rule.
func TestPolicy(t *testing.T) {
	policy := Policy{MinBackoff: time.Second, MaxBackoff: 8 * time.Second, StableAfter: time.Minute, GiveUpAfter: 4}
	tests := []struct {
		name         string
		giveUp       int // the service's own GiveUpAfter
		script       []run
		wantErr      string // "" = Run returns nil once the script blocks and ctx ends
		wantBackoffs []time.Duration
		wantRestarts int
	}{
		{name: "restarted with doubling backoff, then runs", script: []run{{err: errBoom}, {err: errBoom}, {err: errBoom}, {block: true}},
			wantBackoffs: []time.Duration{time.Second, 2 * time.Second, 4 * time.Second}, wantRestarts: 3},
		{name: "backoff capped", giveUp: -1, script: []run{{err: errBoom}, {err: errBoom}, {err: errBoom}, {err: errBoom}, {err: errBoom}, {block: true}},
			wantBackoffs: []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 8 * time.Second}, wantRestarts: 5},
		{name: "gives up after 4 failures in a row", script: []run{{err: errBoom}, {err: errBoom}, {err: errBoom}, {err: errBoom}, {block: true}},
			wantErr: "service svc failed 4 times in a row, last: boom", wantBackoffs: []time.Duration{time.Second, 2 * time.Second, 4 * time.Second}, wantRestarts: 3},
		{name: "a stable run resets the count", script: []run{{err: errBoom}, {err: errBoom}, {err: errBoom}, {d: 2 * time.Minute, err: errBoom}, {err: errBoom}, {block: true}},
			wantBackoffs: []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, time.Second, 2 * time.Second}, wantRestarts: 5},
		{name: "returning nil is a failure", script: []run{{}, {block: true}},
			wantBackoffs: []time.Duration{time.Second}, wantRestarts: 1},
		{name: "fatal ends at once", script: []run{{err: Fatal(errBoom)}},
			wantErr: "service svc failed: boom", wantRestarts: 0},
		{name: "own give-up count", giveUp: 1, script: []run{{err: errBoom}},
			wantErr: "service svc failed 1 times in a row, last: boom", wantRestarts: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
			s := New(policy, nil, WithClock(clk.Now, clk.After))
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			step := 0
			blocked := make(chan struct{})
			svc := Service{Name: "svc", GiveUpAfter: tt.giveUp, Run: func(ctx context.Context) error {
				r := tt.script[step]
				step++
				if r.block {
					close(blocked)
					<-ctx.Done()
					return ctx.Err()
				}
				clk.advance(r.d)
				return r.err
			}}
			done := make(chan error, 1)
			go func() { done <- s.Run(ctx, svc) }()
			var err error
			select {
			case err = <-done:
			case <-blocked:
				if st := s.Status()[0]; st.State != StateRunning {
					t.Errorf("state while running = %+v", st)
				}
				cancel()
				err = <-done
			}
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || err.Error() != tt.wantErr) {
				t.Fatalf("Run = %v, want %q", err, tt.wantErr)
			}
			if !slices.Equal(clk.backoffs, tt.wantBackoffs) {
				t.Errorf("backoffs = %v, want %v", clk.backoffs, tt.wantBackoffs)
			}
			st := s.Status()[0]
			if st.Restarts != tt.wantRestarts {
				t.Errorf("restarts = %d, want %d", st.Restarts, tt.wantRestarts)
			}
			if want := map[bool]string{true: StateStopped, false: StateFailed}[tt.wantErr == ""]; st.State != want {
				t.Errorf("final state = %s, want %s", st.State, want)
			}
		})
	}
}

// TestGivingUpStopsTheOthers: when one service gives up, the others are
// stopped and Run names the one that failed.
func TestGivingUpStopsTheOthers(t *testing.T) {
	s := New(Policy{GiveUpAfter: 1}, nil)
	stopped := make(chan struct{})
	err := s.Run(t.Context(),
		Service{Name: "steady", Run: func(ctx context.Context) error { <-ctx.Done(); close(stopped); return nil }},
		Service{Name: "broken", Run: func(context.Context) error { return errors.New("cannot bind") }},
	)
	if err == nil || !strings.Contains(err.Error(), "service broken failed") || !strings.Contains(err.Error(), "cannot bind") {
		t.Fatalf("Run = %v", err)
	}
	select {
	case <-stopped:
	default:
		t.Fatal("the steady service was not stopped")
	}
	got := s.Status()
	if got[0].State != StateStopped || got[1].State != StateFailed {
		t.Fatalf("status = %+v", got)
	}
}

// TestDuplicateNames are refused.
func TestDuplicateNames(t *testing.T) {
	f := func(ctx context.Context) error { <-ctx.Done(); return nil }
	if err := New(Policy{}, nil).Run(t.Context(), Service{Name: "a", Run: f}, Service{Name: "a", Run: f}); err == nil {
		t.Fatal("two services with one name accepted")
	}
}
