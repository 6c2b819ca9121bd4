// Package supervisor runs a program's long-running services and keeps
// them running: each service is a func(ctx) error that runs until its
// context ends; one that returns early (with an error, or nil: a service
// has no business ending on its own) is restarted with exponential
// backoff. A service that keeps failing ends the whole run with an error
// naming it, so a program never looks alive while part of it is dead.
//
// # Restart policy
//
// After a failure the service is started again after a backoff that starts
// at Policy.MinBackoff and doubles with each consecutive failure up to
// Policy.MaxBackoff. A run that lasted at least Policy.StableAfter resets
// the count: the service had recovered. When a service fails GiveUpAfter
// times in a row (its own, or the policy's), the supervisor stops every
// service and Run returns an error naming it and its last error. An error
// wrapped with Fatal ends the run at once, without retries (a
// configuration the service can never run with). GiveUpAfter < 0 never
// gives up: the service is retried for as long as the program runs and is
// reported as restarting meanwhile.
package supervisor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// Service is one long-running part of a program.
type Service struct {
	Name string
	// Run runs the service until ctx ends. Returning before that is a
	// failure.
	Run func(ctx context.Context) error
	// GiveUpAfter overrides Policy.GiveUpAfter when not 0.
	GiveUpAfter int
}

// Policy is the restart policy (see the package documentation).
type Policy struct {
	MinBackoff, MaxBackoff time.Duration // default 1 s, 30 s
	StableAfter            time.Duration // default 1 min
	GiveUpAfter            int           // default 5
}

// DefaultPolicy is the policy with its defaults filled in.
func DefaultPolicy() Policy { return Policy{}.withDefaults() }

func (p Policy) withDefaults() Policy {
	if p.MinBackoff <= 0 {
		p.MinBackoff = time.Second
	}
	if p.MaxBackoff < p.MinBackoff {
		p.MaxBackoff = max(30*time.Second, p.MinBackoff)
	}
	if p.StableAfter <= 0 {
		p.StableAfter = time.Minute
	}
	if p.GiveUpAfter == 0 {
		p.GiveUpAfter = 5
	}
	return p
}

// States of a service.
const (
	StateStarting   = "starting"
	StateRunning    = "running"
	StateRestarting = "restarting" // failed, waiting for its backoff
	StateFailed     = "failed"     // gave up
	StateStopped    = "stopped"    // the run ended
)

// Status is one service's state.
type Status struct {
	Name     string
	State    string
	Restarts int       // restarts so far
	Failures int       // consecutive failures
	Since    time.Time // of the current state
}

// Fatal marks err as not worth a restart.
func Fatal(err error) error { return fatalError{err} }

type fatalError struct{ err error }

func (e fatalError) Error() string { return e.err.Error() }
func (e fatalError) Unwrap() error { return e.err }

// Supervisor runs services under a Policy. Create it with New.
type Supervisor struct {
	policy Policy
	log    *slog.Logger
	now    func() time.Time
	after  func(time.Duration) <-chan time.Time

	mu     sync.Mutex
	status map[string]*Status
	order  []string
}

// Option configures a Supervisor.
type Option func(*Supervisor)

// WithClock replaces time.Now and time.After (for tests).
func WithClock(now func() time.Time, after func(time.Duration) <-chan time.Time) Option {
	return func(s *Supervisor) { s.now, s.after = now, after }
}

// New returns a supervisor; log may be nil.
func New(p Policy, log *slog.Logger, opts ...Option) *Supervisor {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Supervisor{policy: p.withDefaults(), log: log, now: time.Now, after: time.After, status: map[string]*Status{}}
	for _, o := range opts {
		o(s)
	}
	return s
}

// Run runs the services until ctx ends (then it waits for all of them and
// returns nil) or one of them gives up (then it stops the others, waits,
// and returns that service's error).
func (s *Supervisor) Run(ctx context.Context, services ...Service) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	s.mu.Lock()
	for _, svc := range services {
		if _, dup := s.status[svc.Name]; dup {
			s.mu.Unlock()
			return fmt.Errorf("supervisor: two services named %q", svc.Name)
		}
		s.status[svc.Name] = &Status{Name: svc.Name, State: StateStarting, Since: s.now()}
		s.order = append(s.order, svc.Name)
	}
	s.mu.Unlock()
	var wg sync.WaitGroup
	for _, svc := range services {
		wg.Go(func() {
			if err := s.keep(ctx, svc); err != nil {
				cancel(err)
			}
		})
	}
	wg.Wait()
	if err := context.Cause(ctx); err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return nil
}

// keep runs one service until ctx ends or it gives up.
func (s *Supervisor) keep(ctx context.Context, svc Service) error {
	giveUp := s.policy.GiveUpAfter
	if svc.GiveUpAfter != 0 {
		giveUp = svc.GiveUpAfter
	}
	failures := 0
	for {
		s.set(svc.Name, StateRunning, failures, false)
		start := s.now()
		err := svc.Run(ctx)
		if ctx.Err() != nil {
			s.set(svc.Name, StateStopped, failures, false)
			return nil
		}
		if err == nil {
			err = errors.New("returned while the platform runs")
		}
		if s.now().Sub(start) >= s.policy.StableAfter {
			failures = 0
		}
		failures++
		var fatal fatalError
		if errors.As(err, &fatal) || giveUp > 0 && failures >= giveUp {
			s.set(svc.Name, StateFailed, failures, false)
			s.log.Error("service failed; stopping", "service", svc.Name, "failures", failures, "err", err)
			if errors.As(err, &fatal) {
				return fmt.Errorf("service %s failed: %w", svc.Name, err)
			}
			return fmt.Errorf("service %s failed %d times in a row, last: %w", svc.Name, failures, err)
		}
		backoff := s.policy.MinBackoff << min(failures-1, 30)
		if backoff > s.policy.MaxBackoff || backoff <= 0 {
			backoff = s.policy.MaxBackoff
		}
		s.set(svc.Name, StateRestarting, failures, false)
		s.log.Error("service failed; restarting", "service", svc.Name, "failures", failures, "in", backoff, "err", err)
		select {
		case <-ctx.Done():
			s.set(svc.Name, StateStopped, failures, false)
			return nil
		case <-s.after(backoff):
		}
		s.set(svc.Name, StateRunning, failures, true)
	}
}

func (s *Supervisor) set(name, state string, failures int, restarted bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.status[name]
	if st.State != state {
		st.State, st.Since = state, s.now()
	}
	st.Failures = failures
	if restarted {
		st.Restarts++
	}
}

// Status returns every service's state, in the order Run was given them.
func (s *Supervisor) Status() []Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Status, 0, len(s.order))
	for _, n := range s.order {
		out = append(out, *s.status[n])
	}
	return out
}
