package broker

import (
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/broker/packet"
)

// TestWritersReused: a connection's outbox writer is a reused goroutine,
// not one per burst — 200 publishes, each delivered and acknowledged
// before the next (so both writers drain and go idle every round), start a
// handful of writer goroutines, not 400 — and idle writers exit, so a quiet
// broker holds none.
func TestWritersReused(t *testing.T) {
	e := newEnv(t)
	sub, _ := e.dialRaw(e.pki.identity("ms-acc-1/acc-1"), packet.Connect{Version: packet.V5})
	if sa := sub.subscribe("ms-acc-1/acc-1/+/snapshots", 0, packet.Properties{}); sa.Reasons[0] != 0 {
		t.Fatalf("SUBACK 0x%02x", sa.Reasons[0])
	}
	pub, _ := e.dialRaw(e.pki.identity("ms-acc-1/acc-1/dev-1"), packet.Connect{Version: packet.V5})
	made0 := e.b.writers.made.Load()
	const rounds = 200
	slow := int64(0) // rounds long enough for an idle writer to have exited (writerIdle)
	for i := range rounds {
		t0 := time.Now()
		pub.send(packet.AppendPublish(nil, packet.V5, &packet.Publish{Topic: "ms-acc-1/acc-1/dev-1/snapshots", QoS: 1, PacketID: uint16(i + 1), Payload: []byte("m")}))
		if p := expect[packet.Publish](sub); string(p.Payload) != "m" {
			t.Fatalf("round %d: got %q", i, p.Payload)
		}
		if a := expect[packet.Ack](pub); a.Type != packet.PUBACK || a.PacketID != uint16(i+1) {
			t.Fatalf("round %d: got %+v; want PUBACK %d", i, a, i+1)
		}
		if time.Since(t0) > writerIdle/2 {
			slow++
		}
	}
	// Two writes a round; a writer may be caught between draining and
	// waiting for the next outbox now and then, never every round. A round
	// slow enough (a starved machine, -race) may find its writers gone:
	// those may start two each.
	if made := e.b.writers.made.Load() - made0; made > rounds/4+2*slow {
		t.Fatalf("%d writer goroutines started for %d rounds of 2 writes (%d slow); want them reused", made, rounds, slow)
	}
	t.Logf("%d writer goroutines for %d rounds", e.b.writers.made.Load()-made0, rounds)
	until(t, "idle writers exited", func() bool { return e.b.writers.live.Load() == 0 })
}
