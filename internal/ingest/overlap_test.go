package ingest_test

import (
	"context"
	"crypto/sha256"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fieldtrust/fieldtrust/internal/ingest"
	"github.com/fieldtrust/fieldtrust/internal/snapshot"
	"github.com/fieldtrust/fieldtrust/internal/topic"
)

// TestIngestPreparesWhileStoring: the committer classifies a batch (with
// a store that takes concurrent writers, also looks its ledger leaves up
// and appends the new ones) while the batch before it is being stored
// (before, nothing of a batch happened until the one before was stored
// and acknowledged), and the outcome is that of a single-threaded ingest:
// the second batch continues the device's chain from the first one's
// staged heads (no gap), a redelivery of a snapshot of the first batch is
// a duplicate (not a stale event), every snapshot is stored once with its
// ledger leaf in arrival order. When the first batch's insert fails, it is
// classified again, and so is the second, prepared against heads it did
// not keep yet.
func TestIngestPreparesWhileStoring(t *testing.T) {
	for _, tc := range []struct {
		name        string
		failFirst   bool
		concurrent  bool  // the store takes concurrent writers: the second batch's leaves are appended while the first is inserted
		wantLookups int64 // ledger lookups: one per classification of a batch
	}{
		{"stored as prepared", false, false, 2},
		{"first insert fails", true, false, 3}, // the lookup is the store stage's: the second batch's is not repeated
		{"concurrent writers", false, true, 2},
		{"concurrent writers, first insert fails", true, true, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newIngestEnv(t)
			gw := e.Identity(t, "ms-1/acc-1/gw-1", true)
			c := e.MQTT(t, gw)
			to := topic.SnapshotsOf("ms-1/acc-1/gw-1")
			// A first run with the defaults makes ingest's persistent session;
			// what follows is queued there for the second run.
			ctx, cancel := context.WithCancel(t.Context())
			done := make(chan error, 1)
			go func() { done <- ingest.Run(ctx, e.cfg) }()
			waitFor(t, "ingest subscribed", func() bool {
				enc, _, _ := (&snapshot.Builder{Device: "first"}).Next(1, []snapshot.Value{{Channel: "c", Value: 1}})
				publish(t, c, to, seal(t, enc, gw.E2E, e.IngestCert))
				return e.stored() > 0
			})
			enc, _, _ := (&snapshot.Builder{Device: "last"}).Next(1, []snapshot.Value{{Channel: "c", Value: 1}})
			publish(t, c, to, seal(t, enc, gw.E2E, e.IngestCert))
			waitFor(t, "the first run drained", func() bool { return e.stored() == 2 })
			cancel()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			base := e.stored()
			lookups0 := e.db.lookups.Load()
			ledger0, err := e.db.LedgerSize(t.Context())
			if err != nil {
				t.Fatal(err)
			}

			// Batch 1: seq 1–4 of d. Batch 2: seq 5, 6, seq 3 again, and
			// seq 1 of e, a device new to ingest (its head is looked up in
			// the store when the batch is classified).
			b := &snapshot.Builder{Device: "d"}
			var sealed [][]byte
			var hashes [][32]byte
			var seqs []uint64
			for i := range 7 {
				if i == 6 {
					b = &snapshot.Builder{Device: "e"}
				}
				enc, s, err := b.Next(int64(i), []snapshot.Value{{Channel: "c", Value: float64(i)}})
				if err != nil {
					t.Fatal(err)
				}
				sealed = append(sealed, seal(t, enc, gw.E2E, e.IngestCert))
				hashes = append(hashes, sha256.Sum256(enc))
				seqs = append(seqs, s.Seq)
			}
			for _, i := range []int{0, 1, 2, 3, 4, 5, 2, 6} {
				publish(t, c, to, sealed[i])
			}
			e.db.hold, e.db.holding = make(chan struct{}), make(chan struct{}, 1)
			if tc.failFirst {
				e.db.failNext.Store(1)
			}
			cfg := e.cfg
			if tc.concurrent {
				cfg.Store = concurrentStore{e.db}
			}
			cfg.BatchSize, cfg.BatchWait = 4, time.Hour
			cfg.RetryMin, cfg.RetryMax = time.Millisecond, 5*time.Millisecond
			reg := prometheus.NewRegistry()
			cfg.Registerer = reg
			e.run(t, cfg)
			release := sync.OnceFunc(func() { close(e.db.hold) })
			t.Cleanup(release) // before the ingest's cleanup, which waits for it to stop
			select {
			case <-e.db.holding:
			case <-time.After(30 * time.Second):
				t.Fatal("the first batch's insert did not start")
			}
			waitFor(t, "the second batch classified while the first batch's insert is held", func() bool {
				return e.db.headLookupsOf("e") == 1
			})
			wantHeld := int64(1) // the first batch's, in the store stage
			if tc.concurrent {
				wantHeld = 2 // the second batch's too, in the committer
				waitFor(t, "the second batch's ledger lookup while the first batch's insert is held", func() bool {
					return e.db.lookups.Load()-lookups0 >= 2
				})
			}
			if n := e.db.lookups.Load() - lookups0; n != wantHeld {
				t.Fatalf("%d ledger lookups while the first insert is held, want %d", n, wantHeld)
			}
			if n := e.stored(); n != base {
				t.Fatalf("%d snapshots stored while the insert is held", n-base)
			}
			// The first batch's 4 leaves are appended before its insert;
			// the second batch's 3 new ones (its fourth is a redelivery)
			// before the first batch is stored only with concurrent writers.
			want := ledger0 + 4
			if tc.concurrent {
				want += 3
				waitFor(t, "the second batch's leaves appended while the first batch's insert is held", func() bool {
					n, err := e.db.LedgerSize(t.Context())
					return err == nil && n >= want
				})
			}
			if n, err := e.db.LedgerSize(t.Context()); err != nil || n != want {
				t.Fatalf("ledger size %d (%v) while the first insert is held, want %d", n, err, want)
			}
			release()
			waitFor(t, "both batches stored", func() bool { return e.stored() == base+7 })
			if n := e.db.lookups.Load() - lookups0; n != tc.wantLookups {
				t.Errorf("%d ledger lookups, want %d (one per classification of a batch)", n, tc.wantLookups)
			}
			evs, err := e.db.IntegrityEvents(t.Context(), "", time.Time{}, time.Time{}, 0)
			if err != nil || len(evs) != 0 {
				t.Fatalf("integrity events %+v (%v), want none", evs, err)
			}
			rejects, err := e.db.Rejects(t.Context(), time.Time{}, time.Time{}, 0)
			if err != nil || len(rejects) != 0 {
				t.Fatalf("rejects %+v (%v), want none", rejects, err)
			}
			var first uint64
			for i, h := range hashes {
				rec, err := e.db.SnapshotByHash(t.Context(), "ms-1/acc-1/gw-1", h[:])
				if err != nil {
					t.Fatalf("seq %d: %v", i+1, err)
				}
				if i == 0 {
					first = rec.LedgerIndex
				}
				if rec.Seq != seqs[i] || rec.LedgerIndex != first+uint64(i) {
					t.Errorf("snapshot %d: seq %d, ledger index %d; want seq %d at %d", i, rec.Seq, rec.LedgerIndex, seqs[i], first+uint64(i))
				}
			}
			if size, err := e.db.LedgerSize(t.Context()); err != nil || size != first+7 {
				t.Errorf("ledger size %d (%v), want %d: one leaf per stored snapshot", size, err, first+7)
			}
			// The committer's wall time by stage: each stage a batch went
			// through counted some.
			stages := committerStages(t, reg)
			for _, st := range []string{"idle", "wait", "classify", "ledger_lookup", "ledger_append", "insert", "ack"} {
				if stages[st] <= 0 {
					t.Errorf("stage %s: %v s, want > 0 (all: %v)", st, stages[st], stages)
				}
			}
			if len(stages) != 12 {
				t.Errorf("%d stages %v, want 12", len(stages), stages)
			}
		})
	}
}

// concurrentStore is a store that says it takes concurrent writers.
type concurrentStore struct{ *failing }

func (concurrentStore) ConcurrentWrites() bool { return true }

// committerStages reads fieldtrust_ingest_committer_seconds_total by stage.
func committerStages(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "fieldtrust_ingest_committer_seconds_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "stage" {
					out[l.GetValue()] = m.GetCounter().GetValue()
				}
			}
		}
	}
	return out
}
