package outbox

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/store/sqlite"
)

var t0 = time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

func openStore(t *testing.T) *sqlite.Store {
	s, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func enqueue(t *testing.T, s store.Store, msgs ...store.OutboxMessage) {
	t.Helper()
	if err := s.CommitRules(context.Background(), store.RuleCommit{Outbox: msgs}); err != nil {
		t.Fatal(err)
	}
}

func msg(id, kind, rule string) store.OutboxMessage {
	return store.OutboxMessage{ID: id, Kind: kind, RuleID: rule, Gateway: "m/a/g", Payload: []byte(`{}`), NextAt: t0, CreatedAt: t0}
}

// round runs one dispatch round to completion.
func round(t *testing.T, d *Dispatcher) {
	t.Helper()
	var wg sync.WaitGroup
	if err := d.round(context.Background(), make(chan struct{}, d.cfg.Parallel), &wg); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
}

func state(t *testing.T, s store.Store, id string) store.OutboxMessage {
	t.Helper()
	m, err := s.OutboxMessage(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestRetryBackoffDead: a failing delivery is retried after 5 s, 10 s,
// 20 s ... (not before), moves to the dead letters after MaxAttempts, and
// an admin's retry sends it; a permanent failure is dead at once.
func TestRetryBackoffDead(t *testing.T) {
	s := openStore(t)
	c := &clock{t: t0}
	var fail atomic.Bool
	fail.Store(true)
	var sent atomic.Int32
	d := New(Config{Store: s, Now: c.now, MaxAttempts: 4, Senders: map[string]Sender{
		"email": SenderFunc(func(context.Context, store.OutboxMessage) error {
			if fail.Load() {
				return errors.New("connection refused")
			}
			sent.Add(1)
			return nil
		}),
		"webhook": SenderFunc(func(context.Context, store.OutboxMessage) error { return PermanentError(errors.New("401")) }),
	}})
	enqueue(t, s, msg("m1", "email", "r"), msg("m2", "webhook", "r"))
	round(t, d)
	if m := state(t, s, "m2"); m.State != store.OutboxDead || m.Attempts != 1 {
		t.Fatalf("permanent failure: %+v", m)
	}
	for attempt, wait := range []time.Duration{5 * time.Second, 10 * time.Second, 20 * time.Second} {
		m := state(t, s, "m1")
		if m.State != store.OutboxPending || m.Attempts != attempt+1 || !m.NextAt.Equal(c.now().Add(wait)) {
			t.Fatalf("after attempt %d: %+v, want next in %s", attempt+1, m, wait)
		}
		c.add(wait - time.Millisecond)
		round(t, d)
		if state(t, s, "m1").Attempts != attempt+1 {
			t.Fatalf("retried before its backoff")
		}
		c.add(time.Millisecond)
		round(t, d)
	}
	if m := state(t, s, "m1"); m.State != store.OutboxDead || m.Attempts != 4 || m.LastError != "connection refused" {
		t.Fatalf("after 4 attempts: %+v", m)
	}
	fail.Store(false)
	if err := s.RetryOutbox(context.Background(), "m1", c.now()); err != nil {
		t.Fatal(err)
	}
	round(t, d)
	if m := state(t, s, "m1"); m.State != store.OutboxSent || sent.Load() != 1 {
		t.Fatalf("after the admin's retry: %+v, sent %d", m, sent.Load())
	}
	round(t, d)
	if sent.Load() != 1 {
		t.Fatal("a sent message was sent again")
	}
}

// TestRateLimit: beyond a rule's rate limit messages are suppressed (not
// sent, not lost); other rules are not affected; the bucket refills.
func TestRateLimit(t *testing.T) {
	s := openStore(t)
	c := &clock{t: t0}
	var sent atomic.Int32
	d := New(Config{Store: s, Now: c.now, Rate: func(rule string) (int, time.Duration) {
		if rule == "storm" {
			return 3, time.Hour
		}
		return 0, 0
	}, Senders: map[string]Sender{"mqtt": SenderFunc(func(context.Context, store.OutboxMessage) error { sent.Add(1); return nil })}})
	var msgs []store.OutboxMessage
	for i := range 10 {
		m := msg("s"+string(rune('a'+i)), "mqtt", "storm")
		m.NextAt = t0.Add(time.Duration(i) * time.Millisecond)
		msgs = append(msgs, m)
	}
	enqueue(t, s, append(msgs, msg("calm", "mqtt", "calm"))...)
	c.add(time.Second)
	round(t, d)
	if sent.Load() != 4 {
		t.Fatalf("sent %d, want 3 of the storm and the calm one", sent.Load())
	}
	sup, _ := s.Outbox(context.Background(), store.OutboxQuery{State: store.OutboxSuppressed})
	if len(sup) != 7 {
		t.Fatalf("%d suppressed, want 7", len(sup))
	}
	c.add(20 * time.Minute) // one token back
	if err := s.RetryOutbox(context.Background(), sup[0].ID, c.now()); err != nil {
		t.Fatal(err)
	}
	round(t, d)
	if sent.Load() != 5 {
		t.Fatalf("after a refill: sent %d, want 5", sent.Load())
	}
}

// TestSlowSenderDelaysOnlyItsOwn: a hanging webhook does not hold back
// email.
func TestSlowSenderDelaysOnlyItsOwn(t *testing.T) {
	s := openStore(t)
	release := make(chan struct{})
	mailed := make(chan string, 1)
	d := New(Config{Store: s, Poll: 10 * time.Millisecond, Senders: map[string]Sender{
		"webhook": SenderFunc(func(ctx context.Context, _ store.OutboxMessage) error {
			select {
			case <-release:
			case <-ctx.Done():
			}
			return errors.New("timeout")
		}),
		"email": SenderFunc(func(_ context.Context, m store.OutboxMessage) error { mailed <- m.ID; return nil }),
	}})
	w := msg("w", "webhook", "r")
	w.NextAt = t0.Add(-time.Second) // due first
	enqueue(t, s, w, msg("e", "email", "r"))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { d.Run(ctx); close(done) }()
	select {
	case id := <-mailed:
		if id != "e" {
			t.Fatal(id)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the email waited for the hanging webhook")
	}
	close(release)
	cancel()
	<-done
}
