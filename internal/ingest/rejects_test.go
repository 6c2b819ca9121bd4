package ingest_test

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/platform"
	"github.com/fieldtrust/fieldtrust/internal/platform/platformtest"
	"github.com/fieldtrust/fieldtrust/internal/snapshot"
	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/topic"
)

// TestRejectFlood: a device flooding its own snapshots topic with garbage
// costs a bounded number of reject records (its budget, then one summary),
// not one insert each; exact repeats aggregate into one record; every
// message is still counted; another device's reject and the flooder's
// good snapshots are unaffected.
func TestRejectFlood(t *testing.T) {
	e := platformtest.Start(t, platform.Config{})
	ctx := t.Context()
	gw1 := e.Identity(t, "ms-1/acc-1/gw-1", true)
	gw2 := e.Identity(t, "ms-1/acc-1/gw-2", true)
	gw3 := e.Identity(t, "ms-1/acc-1/gw-3", true)
	c1, c2, c3 := e.MQTT(t, gw1), e.MQTT(t, gw2), e.MQTT(t, gw3)
	const flood, repeats = 200, 40
	b := &snapshot.Builder{Device: "pump"}
	good := 0
	start := time.Now()
	for i := range flood {
		publish(t, c1, topic.SnapshotsOf("ms-1/acc-1/gw-1"), fmt.Appendf(nil, "garbage %d", i))
		if i%50 == 0 {
			enc, _, _ := b.Next(int64(i), []snapshot.Value{{Channel: "c", Value: float64(i)}})
			publish(t, c1, topic.SnapshotsOf("ms-1/acc-1/gw-1"), seal(t, enc, gw1.E2E, e.IngestCert))
			good++
		}
	}
	for range repeats {
		publish(t, c2, topic.SnapshotsOf("ms-1/acc-1/gw-2"), []byte("the same garbage"))
	}
	publish(t, c3, topic.SnapshotsOf("ms-1/acc-1/gw-3"), []byte("one bad message"))

	var rejects []store.Reject
	count := map[string]int{}
	rows := map[string]int{}
	deadline := time.Now().Add(30 * time.Second)
	for {
		var err error
		if rejects, err = e.D.Store.Rejects(ctx, time.Time{}, time.Time{}, store.MaxLimit); err != nil {
			t.Fatal(err)
		}
		clear(count)
		clear(rows)
		for _, r := range rejects {
			count[r.Topic] += r.N()
			rows[r.Topic]++
		}
		if count[topic.SnapshotsOf("ms-1/acc-1/gw-1")] == flood && count[topic.SnapshotsOf("ms-1/acc-1/gw-2")] == repeats && count[topic.SnapshotsOf("ms-1/acc-1/gw-3")] == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("rejects counted per topic %v (in %v records), want %d, %d and 1", count, rows, flood, repeats)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The default budget is 20 records per publisher, then one summary. It
	// refills by one record every 3 s of the ingest's (real) clock, so a
	// slow machine may legitimately see a record and a summary more per
	// refill that passed while the flood was processed.
	refills := int(time.Since(start) / (3 * time.Second))
	if n := rows[topic.SnapshotsOf("ms-1/acc-1/gw-1")]; n > 21+2*refills {
		t.Errorf("the flood of %d distinct messages took %d records; want at most %d (budget + summary, %d refills)", flood, n, 21+2*refills, refills)
	}
	if n := rows[topic.SnapshotsOf("ms-1/acc-1/gw-2")]; n > 2+2*refills {
		t.Errorf("%d repeats of one message took %d records; want at most %d (aggregated + summary, %d refills)", repeats, n, 2+2*refills, refills)
	}
	if n := rows[topic.SnapshotsOf("ms-1/acc-1/gw-3")]; n != 1 {
		t.Errorf("the other device's reject took %d records, want 1", n)
	}
	for _, r := range rejects {
		if r.RawHash == nil && (r.Count < 2 || r.Size == 0) {
			t.Errorf("summary without count or size: %+v", r)
		}
		if r.RawHash != nil && len(r.RawHash) != 32 {
			t.Errorf("reject with a bad hash: %+v", r)
		}
		if r.Topic == topic.SnapshotsOf("ms-1/acc-1/gw-2") && r.RawHash != nil && (r.Count < 2 || !bytes.Equal(r.RawHash, sha256Of("the same garbage"))) {
			t.Errorf("repeats not aggregated into one record: %+v", r)
		}
	}
	devs, err := e.D.Store.ListDevices(ctx, "ms-1/acc-1/gw-1")
	if err != nil || len(devs) != 1 || devs[0].Snapshots != uint64(good) {
		t.Fatalf("the flooder's good snapshots: %+v, %v; want %d stored", devs, err, good)
	}
}

func sha256Of(s string) []byte {
	h := sha256.Sum256([]byte(s))
	return h[:]
}
