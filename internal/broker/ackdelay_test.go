package broker

import (
	"testing"

	"github.com/fieldtrust/fieldtrust/internal/broker/packet"
)

// TestPubackOnceSubscribersAcknowledge: a persistent session's delivery
// no longer holds its publisher's PUBACK behind a stalled disk once the
// subscriber has acknowledged it (the message needs nothing on disk
// then); a PUBACK that still needs the disk (an offline session's copy)
// holds back the ones after it, so PUBACKs keep the publishes' order.
func TestPubackOnceSubscribersAcknowledge(t *testing.T) {
	e := newEnv(t)
	persistent := props(func(p *packet.Properties) { p.SessionExpiry = 3600; p.Set(packet.PropSessionExpiry) })
	acc := e.pki.identity("ms-acc-1/acc-1")
	live, _ := e.dialRaw(acc, packet.Connect{Version: packet.V5, ClientID: "live", Props: persistent})
	if sa := live.subscribe("ms-acc-1/acc-1/dev-1/snapshots", 1, packet.Properties{}); sa.Reasons[0] != 1 {
		t.Fatalf("live SUBACK 0x%02x", sa.Reasons[0])
	}
	offline, _ := e.dialRaw(acc, packet.Connect{Version: packet.V5, ClientID: "offline", Props: persistent})
	if sa := offline.subscribe("ms-acc-1/acc-1/dev-1/status", 1, packet.Properties{}); sa.Reasons[0] != 1 {
		t.Fatalf("offline SUBACK 0x%02x", sa.Reasons[0])
	}
	offline.send(packet.AppendDisconnect(nil, packet.V5, &packet.Disconnect{}))
	eventually(func() bool {
		e.b.mu.Lock()
		defer e.b.mu.Unlock()
		for _, s := range e.b.sessions {
			if s.clientID == "offline" {
				s.mu.Lock()
				defer s.mu.Unlock()
				return s.conn == nil
			}
		}
		return false
	})

	// The disk stalls: the journal is held inside an operation.
	gate := make(chan struct{})
	_ = e.b.store.j.submit("stalled disk", func(dst []walMut) []walMut { <-gate; return dst }, false)
	t.Cleanup(func() {
		select {
		case <-gate:
		default:
			close(gate)
		}
	})

	pub, _ := e.dialRaw(e.pki.identity("ms-acc-1/acc-1/dev-1"), packet.Connect{Version: packet.V5, ClientID: "pub"})
	send := func(topic string, pid uint16) {
		pub.send(packet.AppendPublish(nil, packet.V5, &packet.Publish{Topic: topic, QoS: 1, PacketID: pid, Payload: []byte("x")}))
	}
	deliverAndAck := func() {
		d := expect[packet.Publish](live)
		live.send(packet.AppendAck(nil, packet.V5, &packet.Ack{Type: packet.PUBACK, PacketID: d.PacketID}))
		live.ping() // the broker has handled the PUBACK
	}

	// 1: its only copy is acknowledged by the live subscriber.
	send("ms-acc-1/acc-1/dev-1/snapshots", 1)
	deliverAndAck()
	if a := expect[packet.Ack](pub); a.Type != packet.PUBACK || a.PacketID != 1 {
		t.Fatalf("got %+v; want PUBACK 1 while the disk is stalled", a)
	}

	// 2 needs the disk (the offline session's copy); 3 does not, but
	// must follow 2.
	send("ms-acc-1/acc-1/dev-1/status", 2)
	send("ms-acc-1/acc-1/dev-1/snapshots", 3)
	deliverAndAck()
	close(gate)
	for _, want := range []uint16{2, 3} {
		if a := expect[packet.Ack](pub); a.Type != packet.PUBACK || a.PacketID != want {
			t.Fatalf("got %+v; want PUBACK %d (in publish order)", a, want)
		}
	}
}
