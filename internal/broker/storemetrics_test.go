package broker

import (
	"fmt"
	"testing"
)

// TestStoreMetrics: a QoS 1 publish to a persistent session is timed
// stage by stage (fieldtrust_broker_store_seconds), so a PUBACK's latency
// can be attributed (docs/benchmarks.md): its wait, its queueing, the
// batch's write and sync, and the ops per batch are all observed.
func TestStoreMetrics(t *testing.T) {
	e := newEnv(t)
	sub := e.v3(e.pki.identity("ms-acc-1/acc-1"), v3opts{clientID: "keeps-session", clean: false})
	if tok := sub.Subscribe("ms-acc-1/acc-1/+/snapshots", 1, nil); !tok.WaitTimeout(wait) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	pub := e.v3(e.pki.identity("ms-acc-1/acc-1/dev-1"), v3opts{clean: true})
	const n = 5
	for i := range n {
		if tok := pub.Publish("ms-acc-1/acc-1/dev-1/snapshots", 1, false, fmt.Sprint(i)); !tok.WaitTimeout(wait) || tok.Error() != nil {
			t.Fatalf("publish %d: %v", i, tok.Error())
		}
	}
	mfs, err := e.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	counts := map[string]uint64{}
	for _, mf := range mfs {
		switch mf.GetName() {
		case "fieldtrust_broker_store_seconds":
			for _, m := range mf.GetMetric() {
				stage := ""
				for _, l := range m.GetLabel() {
					if l.GetName() == "stage" {
						stage = l.GetValue()
					}
				}
				counts[stage] += m.GetHistogram().GetSampleCount()
			}
		case "fieldtrust_broker_store_batch_ops":
			counts["batch"] = mf.GetMetric()[0].GetHistogram().GetSampleCount()
		}
	}
	// Every PUBACK waited for the journal (the subscriber's session is
	// persistent); the subscription and the deliveries were logged.
	for stage, least := range map[string]uint64{"wait": n, "queue": n, "write": 1, "sync": 1, "resolve": 1, "batch": 1} {
		if counts[stage] < least {
			t.Errorf("stage %s: %d observations; want at least %d (all: %v)", stage, counts[stage], least, counts)
		}
	}
}
