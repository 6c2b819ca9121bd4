package broker

import (
	"fmt"
	"testing"

	"github.com/fieldtrust/fieldtrust/internal/broker/packet"
	"github.com/fieldtrust/fieldtrust/internal/tacs"
)

// TestDeliveryCheckRemembersEveryTopic: an account's subscriber of 32
// devices' topics decides each topic once (the cache held 8, so a
// subscriber of more topics paid a full TACS decision on every delivery);
// refusals are never remembered; the cache stays bounded.
func TestDeliveryCheckRemembersEveryTopic(t *testing.T) {
	e := newEnv(t)
	r, _ := e.dialRaw(e.pki.identity("ms-acc-1/acc-1"), packet.Connect{Version: packet.V5, ClientID: "acc"})
	r.ping()
	var s *session
	e.b.mu.Lock()
	for _, x := range e.b.sessions {
		if x.clientID == "acc" {
			s = x
		}
	}
	e.b.mu.Unlock()
	if s == nil {
		t.Fatal("no session")
	}
	cached := func() int {
		s.limMu.Lock()
		defer s.limMu.Unlock()
		return len(s.readOK)
	}
	for round := range 2 {
		for i := range 32 {
			if !e.b.mayRead(s, fmt.Sprintf("ms-acc-1/acc-1/dev-%d/snapshots", i)) {
				t.Fatalf("round %d: dev-%d refused", round, i)
			}
		}
		if n := cached(); n != 32 {
			t.Fatalf("round %d: %d topics remembered; want 32", round, n)
		}
	}
	if e.b.mayRead(s, "ms-acc-2/acc-2/dev-1/snapshots") {
		t.Fatal("another account's topic allowed")
	}
	if n := cached(); n != 32 {
		t.Fatalf("a refusal was remembered: %d topics", n)
	}
	for i := range readCacheTopics + 10 {
		e.b.mayRead(s, fmt.Sprintf("ms-acc-1/acc-1/dev-%d/status", i))
	}
	if n := cached(); n > readCacheTopics {
		t.Fatalf("%d topics remembered; at most %d", n, readCacheTopics)
	}
}

// TestPublishCheckFollowsGrants: the publish decision a connection
// remembers is dropped when the grants change — a service's next publish
// to the same topic is refused once its grant no longer covers it.
func TestPublishCheckFollowsGrants(t *testing.T) {
	e := newEnv(t)
	fw, _ := e.dialRaw(e.pki.service("firmware"), packet.Connect{Version: packet.V5})
	const topic = "ms-acc-1/acc-1/dev-1/firmware"
	pubAck := func(pid uint16) byte {
		fw.send(packet.AppendPublish(nil, packet.V5, &packet.Publish{Topic: topic, QoS: 1, PacketID: pid, Payload: []byte("x")}))
		a := expect[packet.Ack](fw)
		if a.PacketID != pid {
			t.Fatalf("PUBACK %d; want %d", a.PacketID, pid)
		}
		return a.Reason
	}
	for pid := uint16(1); pid <= 2; pid++ {
		if r := pubAck(pid); r != packet.Success {
			t.Fatalf("publish %d: reason 0x%02x", pid, r)
		}
	}
	grants := tacs.DefaultGrants()
	grants[tacs.RoleFirmwareWriter] = []tacs.Grant{{Filter: "ms-acc-2/+/+/firmware", Write: true}}
	e.b.setGrants(grants)
	t.Cleanup(func() { e.b.setGrants(tacs.DefaultGrants()) })
	if r := pubAck(3); r != packet.NotAuthorized {
		t.Fatalf("publish after the grant narrowed: reason 0x%02x; want 0x%02x", r, packet.NotAuthorized)
	}
}
