package ingest_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/ingest"
	"github.com/fieldtrust/fieldtrust/internal/snapshot"
	"github.com/fieldtrust/fieldtrust/internal/topic"
)

// TestRedeliveryInTheSameBatch: a QoS 1 redelivery that arrives in the
// same batch as its original, after a later snapshot of the same device
// (seq 1, seq 2, seq 1 again: what a forwarding site or a resumed session
// can deliver), is a duplicate stored once, not a stale snapshot or a fork.
// (Before, the stale check looked only in the store, where the batch's own
// seq 1 was not yet.)
func TestRedeliveryInTheSameBatch(t *testing.T) {
	e := newIngestEnv(t)
	gw := e.Identity(t, "ms-1/acc-1/gw-1", true)
	c := e.MQTT(t, gw)
	to := topic.SnapshotsOf("ms-1/acc-1/gw-1")
	// A first run with the defaults makes ingest's persistent session and
	// its subscription; what follows is queued there for the second run.
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- ingest.Run(ctx, e.cfg) }()
	waitFor(t, "ingest subscribed", func() bool {
		enc, _, _ := (&snapshot.Builder{Device: "first"}).Next(1, []snapshot.Value{{Channel: "c", Value: 1}})
		publish(t, c, to, seal(t, enc, gw.E2E, e.IngestCert))
		return e.stored() > 0
	})
	// Once subscribed, a last one drains what the loop above sent (in order).
	enc, _, _ := (&snapshot.Builder{Device: "last"}).Next(1, []snapshot.Value{{Channel: "c", Value: 1}})
	publish(t, c, to, seal(t, enc, gw.E2E, e.IngestCert))
	waitFor(t, "the first run drained", func() bool { return e.stored() == 2 })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	base := e.stored()
	cfg := e.cfg
	cfg.BatchSize, cfg.BatchWait = 3, time.Hour // the three messages form one batch
	b := &snapshot.Builder{Device: "d"}
	var encs [][]byte
	for i := range 2 {
		enc, _, err := b.Next(int64(i), []snapshot.Value{{Channel: "c", Value: float64(i)}})
		if err != nil {
			t.Fatal(err)
		}
		encs = append(encs, seal(t, enc, gw.E2E, e.IngestCert))
	}
	publish(t, c, to, encs[0])
	publish(t, c, to, encs[1])
	publish(t, c, to, encs[0]) // the redelivery
	// Three one-snapshot probes form the next batch: once they are stored,
	// the first batch's outcome (stores, events, rejects) is complete.
	for i := range 3 {
		enc, _, _ := (&snapshot.Builder{Device: fmt.Sprintf("probe-%d", i)}).Next(1, []snapshot.Value{{Channel: "c", Value: 1}})
		publish(t, c, to, seal(t, enc, gw.E2E, e.IngestCert))
	}
	e.run(t, cfg)
	waitFor(t, "both batches stored", func() bool { return e.stored() == base+5 })
	evs, err := e.db.IntegrityEvents(t.Context(), "", time.Time{}, time.Time{}, 0)
	if err != nil || len(evs) != 0 {
		t.Fatalf("integrity events %+v (%v), want none", evs, err)
	}
	rejects, err := e.db.Rejects(t.Context(), time.Time{}, time.Time{}, 0)
	if err != nil || len(rejects) != 0 {
		t.Fatalf("rejects %+v (%v), want none", rejects, err)
	}
}
