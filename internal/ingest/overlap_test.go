package ingest_test

import (
	"context"
	"crypto/sha256"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/fieldtrust/fieldtrust/internal/ingest"
	"github.com/fieldtrust/fieldtrust/internal/lease"
	"github.com/fieldtrust/fieldtrust/internal/platform/platformtest"
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

// TestIngestInsertLanes: with a store that takes concurrent writers, a
// batch is inserted in several transactions at once, split by account
// partition (each transaction holds the snapshots of one lane's accounts
// only, a device's snapshots in one of them, in order). When one lane
// fails, what the others stored stays stored and the rest is stored on
// the retry: every snapshot once, its ledger leaf in arrival order per
// device, no integrity event.
func TestIngestInsertLanes(t *testing.T) {
	e := newIngestEnv(t)
	// Two accounts in different lanes.
	var accounts []string
	for i := 1; len(accounts) < 2; i++ {
		a := fmt.Sprintf("ms-1/acc-%d", i)
		if len(accounts) == 0 || lease.PartitionOf(a, 4) != lease.PartitionOf(accounts[0], 4) {
			accounts = append(accounts, a)
		}
	}
	type gateway struct {
		path string
		id   platformtest.Identity
		c    mqtt.Client
	}
	var gws []gateway
	for _, a := range accounts {
		p := a + "/gw-1"
		id := e.Identity(t, p, true)
		gws = append(gws, gateway{p, id, e.MQTT(t, id)})
	}
	// A first run makes ingest's persistent session.
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- ingest.Run(ctx, e.cfg) }()
	waitFor(t, "ingest subscribed", func() bool {
		enc, _, _ := (&snapshot.Builder{Device: "first"}).Next(1, []snapshot.Value{{Channel: "c", Value: 1}})
		publish(t, gws[0].c, topic.SnapshotsOf(gws[0].path), seal(t, enc, gws[0].id.E2E, e.IngestCert))
		return e.stored() > 0
	})
	enc, _, _ := (&snapshot.Builder{Device: "last"}).Next(1, []snapshot.Value{{Channel: "c", Value: 1}})
	publish(t, gws[0].c, topic.SnapshotsOf(gws[0].path), seal(t, enc, gws[0].id.E2E, e.IngestCert))
	waitFor(t, "the first run drained", func() bool { return e.stored() == 2 })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	base := e.stored()

	// 3 snapshots of 2 devices behind each gateway: one batch of 12.
	hashes := map[string][][32]byte{} // by gateway/device, in seq order
	for _, g := range gws {
		for _, dev := range []string{"d1", "d2"} {
			b := &snapshot.Builder{Device: dev}
			for i := range 3 {
				enc, _, err := b.Next(int64(i), []snapshot.Value{{Channel: "c", Value: float64(i)}})
				if err != nil {
					t.Fatal(err)
				}
				publish(t, g.c, topic.SnapshotsOf(g.path), seal(t, enc, g.id.E2E, e.IngestCert))
				hashes[g.path+"/"+dev] = append(hashes[g.path+"/"+dev], sha256.Sum256(enc))
			}
		}
	}
	e.db.failGateway = gws[1].path
	e.db.failGatewayN.Store(1)
	e.db.callsMu.Lock()
	e.db.insertCalls = nil
	e.db.callsMu.Unlock()
	cfg := e.cfg
	cfg.Store = concurrentStore{e.db}
	cfg.BatchSize, cfg.BatchWait = 12, time.Hour
	cfg.RetryMin, cfg.RetryMax = time.Millisecond, 5*time.Millisecond
	e.run(t, cfg)
	waitFor(t, "every snapshot stored", func() bool { return e.stored() == base+12 })

	e.db.callsMu.Lock()
	calls := slices.Clone(e.db.insertCalls)
	e.db.callsMu.Unlock()
	if len(calls) < 3 {
		t.Errorf("insert calls %v: want one per lane, and the failed lane's again", calls)
	}
	for _, gw := range calls {
		if len(gw) != 1 {
			t.Errorf("an insert held the snapshots of %v: want one lane's accounts", gw)
		}
	}
	if evs, err := e.db.IntegrityEvents(t.Context(), "", time.Time{}, time.Time{}, 0); err != nil || len(evs) != 0 {
		t.Fatalf("integrity events %+v (%v), want none", evs, err)
	}
	if rejects, err := e.db.Rejects(t.Context(), time.Time{}, time.Time{}, 0); err != nil || len(rejects) != 0 {
		t.Fatalf("rejects %+v (%v), want none", rejects, err)
	}
	leaves := map[uint64]bool{}
	for key, hs := range hashes {
		gw := key[:strings.LastIndexByte(key, '/')]
		var last uint64
		for i, h := range hs {
			rec, err := e.db.SnapshotByHash(t.Context(), gw, h[:])
			if err != nil {
				t.Fatalf("%s seq %d: %v", key, i+1, err)
			}
			if rec.Seq != uint64(i+1) || (i > 0 && rec.LedgerIndex <= last) || leaves[rec.LedgerIndex] {
				t.Errorf("%s: seq %d at ledger index %d after %d: want seq %d, indexes rising and each once", key, rec.Seq, rec.LedgerIndex, last, i+1)
			}
			last, leaves[rec.LedgerIndex] = rec.LedgerIndex, true
		}
	}
	if size, err := e.db.LedgerSize(t.Context()); err != nil || size != e.stored() {
		t.Errorf("ledger size %d (%v), want %d: one leaf per stored snapshot", size, err, e.stored())
	}
}
