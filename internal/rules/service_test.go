package rules

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/snapshot"
	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/store/sqlite"
)

// runService runs a service on st until it has committed cursor want,
// then stops it.
func runService(t *testing.T, st store.Store, want uint64, feed func(*Service)) {
	runServiceTick(t, st, want, 50*time.Millisecond, feed)
}

func runServiceTick(t *testing.T, st store.Store, want uint64, tick time.Duration, feed func(*Service)) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	reached := make(chan struct{})
	s := &Service{Store: st, TickEvery: tick, ReloadEvery: time.Hour}
	s.committed = func(c store.RuleCommit) {
		if c.Cursor != nil && *c.Cursor >= want {
			select {
			case <-reached:
			default:
				close(reached)
			}
		}
	}
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	if feed != nil {
		feed(s)
	}
	select {
	case <-reached:
	case err := <-done:
		t.Fatalf("service ended: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("the service did not reach its cursor")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestServiceCatchUpAndRestart: snapshots stored while the service was
// down are evaluated from the store at start; a restart evaluates nothing
// twice; live batches below the cursor are skipped.
func TestServiceCatchUpAndRestart(t *testing.T) {
	st, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()
	if _, err := Add(ctx, st, Author{Vendor: true}, "r.yaml", []byte("version: 1\nname: hot\nscope: ms\nmode: each\nwhen: values.t > 90.0\nactions:\n  - email: [a@b.example]\n"), t0); err != nil {
		t.Fatal(err)
	}
	b := snapshot.Builder{Device: "d"}
	var recs []store.SnapshotRecord
	mk := func(n int) {
		for range n {
			i := len(recs)
			enc, s, err := b.Next(t0.Add(time.Duration(i)*time.Minute).UnixMilli(), []snapshot.Value{{Channel: "t", Value: float64(80 + 5*(i%3))}})
			if err != nil {
				t.Fatal(err)
			}
			h := snapshot.Hash(enc)
			recs = append(recs, store.SnapshotRecord{Gateway: "ms/acc/gw", Device: "d", Seq: s.Seq, Time: s.Time(), Hash: h[:], Prev: s.Prev, Values: s.Values,
				Signer: "x", SignedAt: s.Time(), ReceivedAt: s.Time(), LedgerIndex: uint64(i)})
			if _, err := st.InsertSnapshots(ctx, recs[i:]); err != nil {
				t.Fatal(err)
			}
		}
	}
	count := func() int {
		msgs, err := st.Outbox(ctx, store.OutboxQuery{})
		if err != nil {
			t.Fatal(err)
		}
		return len(msgs)
	}
	mk(12) // t = 80, 85, 90, 80, ...: none over 90
	runService(t, st, 12, nil)
	if n := count(); n != 0 {
		t.Fatalf("%d messages for snapshots that never exceeded 90", n)
	}
	// A hot snapshot stored while the service is down.
	b2 := b
	enc, s, _ := b2.Next(t0.Add(time.Hour).UnixMilli(), []snapshot.Value{{Channel: "t", Value: 99}})
	h := snapshot.Hash(enc)
	hot := store.SnapshotRecord{Gateway: "ms/acc/gw", Device: "d", Seq: s.Seq, Time: s.Time(), Hash: h[:], Prev: s.Prev, Values: s.Values, Signer: "x", SignedAt: s.Time(), ReceivedAt: s.Time(), LedgerIndex: 12}
	if _, err := st.InsertSnapshots(ctx, []store.SnapshotRecord{hot}); err != nil {
		t.Fatal(err)
	}
	runService(t, st, 13, nil)
	if n := count(); n != 1 {
		t.Fatalf("after catching up: %d messages, want 1", n)
	}
	// Again: the same hot snapshot fed live is below the cursor and
	// skipped; a new, cool one is evaluated (and moves the cursor).
	enc, s2, _ := b2.Next(t0.Add(2*time.Hour).UnixMilli(), []snapshot.Value{{Channel: "t", Value: 70}})
	h2 := snapshot.Hash(enc)
	cool := store.SnapshotRecord{Gateway: "ms/acc/gw", Device: "d", Seq: s2.Seq, Time: s2.Time(), Hash: h2[:], Prev: s2.Prev, Values: s2.Values, Signer: "x", SignedAt: s2.Time(), ReceivedAt: s2.Time(), LedgerIndex: 13}
	if _, err := st.InsertSnapshots(ctx, []store.SnapshotRecord{cool}); err != nil {
		t.Fatal(err)
	}
	runService(t, st, 14, func(s *Service) { s.Committed([]store.SnapshotRecord{hot, cool}, nil, nil) })
	if cur, _ := st.RulesCursor(ctx); cur != 14 || count() != 1 {
		t.Fatalf("after a restart: cursor %d, %d messages; want 14 and 1", cur, count())
	}
}

// TestServiceLedgerGap: a snapshot stored outside ingest (an HTTPS
// agent's) is evaluated when the next live batch shows the gap.
func TestServiceLedgerGap(t *testing.T) {
	st, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()
	if _, err := Add(ctx, st, Author{Vendor: true}, "r.yaml", []byte("version: 1\nname: hot\nscope: ms\nmode: each\nwhen: values.t > 90.0\nactions:\n  - email: [a@b.example]\n"), t0); err != nil {
		t.Fatal(err)
	}
	b := snapshot.Builder{Device: "d"}
	rec := func(i int, temp float64) store.SnapshotRecord {
		enc, s, err := b.Next(t0.Add(time.Duration(i)*time.Minute).UnixMilli(), []snapshot.Value{{Channel: "t", Value: temp}})
		if err != nil {
			t.Fatal(err)
		}
		h := snapshot.Hash(enc)
		return store.SnapshotRecord{Gateway: "ms/acc/agent", Device: "d", Seq: s.Seq, Time: s.Time(), Hash: h[:], Prev: s.Prev, Values: s.Values,
			Signer: "x", SignedAt: s.Time(), ReceivedAt: s.Time(), LedgerIndex: uint64(i)}
	}
	agent, live := rec(0, 99), rec(1, 50)
	runServiceTick(t, st, 2, time.Hour, func(s *Service) {
		if _, err := st.InsertSnapshots(ctx, []store.SnapshotRecord{agent, live}); err != nil {
			t.Fatal(err)
		}
		s.Committed([]store.SnapshotRecord{live}, nil, nil) // only the second came through ingest
	})
	if msgs, _ := st.Outbox(ctx, store.OutboxQuery{}); len(msgs) != 1 {
		t.Fatalf("%d messages, want 1 for the agent's hot snapshot", len(msgs))
	}
}
