package ingest_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/ingest"
	"github.com/fieldtrust/fieldtrust/internal/snapshot"
	"github.com/fieldtrust/fieldtrust/internal/topic"
)

// TestIngestHoldsGaps: within HoldGaps of a connection's start, a
// snapshot that would open a gap is neither stored nor acknowledged; the
// broker delivers it again on the next connection, behind the missing
// one, and the chain has no event. (A partition session taken over from a
// killed node gets new snapshots before the redelivery of what the dead
// node held: without this, every device in flight recorded a gap, then a
// stale snapshot.) Beyond HoldGaps a gap is recorded as before.
func TestIngestHoldsGaps(t *testing.T) {
	e := newIngestEnv(t)
	var mu sync.Mutex
	clock := time.Now()
	cfg := e.cfg
	cfg.HoldGaps = time.Hour
	cfg.Now = func() time.Time { mu.Lock(); defer mu.Unlock(); return clock }
	start := func() (stop func()) {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- ingest.Run(ctx, cfg) }()
		return func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("ingest: %v", err)
			}
		}
	}
	stop := start()
	gw := e.Identity(t, "ms-1/acc-1/gw-1", true)
	c := e.MQTT(t, gw)
	to := topic.SnapshotsOf("ms-1/acc-1/gw-1")
	b := &snapshot.Builder{Device: "d"}
	var encs [][]byte
	for i := range 8 {
		enc, _, err := b.Next(int64(i), []snapshot.Value{{Channel: "c", Value: float64(i)}})
		if err != nil {
			t.Fatal(err)
		}
		encs = append(encs, seal(t, enc, gw.E2E, e.IngestCert))
	}
	probes := 0
	probe := func() { // a one-snapshot device: stored once what was sent before it was handled
		probes++
		enc, _, _ := (&snapshot.Builder{Device: fmt.Sprintf("probe-%d", probes)}).Next(1, []snapshot.Value{{Channel: "c", Value: 1}})
		publish(t, c, to, seal(t, enc, gw.E2E, e.IngestCert))
	}
	waitFor(t, "ingest-2 subscribed", func() bool {
		probe()
		time.Sleep(100 * time.Millisecond) // the probe's time to be handled, while ingest-2 may still connect
		return e.stored() > 0
	})
	base := e.stored()
	publish(t, c, to, encs[0]) // seq 1
	publish(t, c, to, encs[2]) // seq 3: a gap, held
	probe()
	waitFor(t, "seq 1 and the probe stored", func() bool { return e.stored() == base+2 })
	if evs, _ := e.db.IntegrityEvents(t.Context(), "", time.Time{}, time.Time{}, 0); len(evs) != 0 {
		t.Fatalf("events while held: %+v", evs)
	}
	publish(t, c, to, encs[1]) // seq 2, the missing one
	waitFor(t, "seq 2 stored", func() bool { return e.stored() == base+3 })
	// The next connection gets seq 3 again (it was not acknowledged).
	stop()
	stop = start()
	waitFor(t, "the held seq 3 stored on the next connection", func() bool { return e.stored() == base+4 })
	if evs, _ := e.db.IntegrityEvents(t.Context(), "", time.Time{}, time.Time{}, 0); len(evs) != 0 {
		t.Fatalf("integrity events %+v, want none", evs)
	}
	// Beyond HoldGaps a gap is a gap.
	mu.Lock()
	clock = clock.Add(2 * time.Hour)
	mu.Unlock()
	publish(t, c, to, encs[4]) // seq 5 after 3: seq 4 missing
	waitFor(t, "seq 5 stored", func() bool { return e.stored() == base+5 })
	evs, err := e.db.IntegrityEvents(t.Context(), "", time.Time{}, time.Time{}, 0)
	if err != nil || len(evs) != 1 || evs[0].Kind != "gap" || evs[0].Seq != 5 {
		t.Fatalf("integrity events %+v (%v), want one gap at seq 5", evs, err)
	}
	stop()
}
