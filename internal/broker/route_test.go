package broker

import (
	"crypto/tls"
	"fmt"
	"sync/atomic"
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

// TestRoleChangeReachesAResumedSession: a service whose role changed (a
// demotion in the store) and that reconnects to its persistent session is
// checked with its new rights. The session key names the service, not its
// role: resuming the old session kept its subject, so its subscriptions
// and every delivery check (mayRead and its cache) kept the old role's
// rights. The old session is not resumed (as a clean start).
func TestRoleChangeReachesAResumedSession(t *testing.T) {
	var role atomic.Pointer[string]
	reader := tacs.RoleSnapshotReader
	role.Store(&reader)
	e := newEnvWith(t, func(c *Config) {
		inner := c.Identify
		c.Identify = func(cs tls.ConnectionState) (tacs.Subject, error) {
			subj, err := inner(cs)
			if err == nil && subj.Service == "ingest" {
				subj.Role = *role.Load()
			}
			return subj, err
		}
	})
	const topic = "ms-acc-1/acc-1/dev-1/snapshots"
	persistent := packet.Connect{ClientID: "ingest:p1", KeepAlive: 30,
		Props: props(func(p *packet.Properties) { p.SessionExpiry = 600; p.Set(packet.PropSessionExpiry) })}
	r, _ := e.dialRaw(e.pki.service("ingest"), persistent)
	if ack := r.subscribe(topic, 1, packet.Properties{}); ack.Reasons[0] > 2 {
		t.Fatalf("SUBACK 0x%02x as %s", ack.Reasons[0], tacs.RoleSnapshotReader)
	}
	s := findClient(t, e, "service:ingest")
	if !e.b.mayRead(s, topic) { // and the decision is cached
		t.Fatal("snapshot reader may not read snapshots")
	}
	r.send(packet.AppendDisconnect(nil, packet.V5, &packet.Disconnect{}))
	until(t, "the session offline", func() bool { return !s.online.Load() })

	writer := tacs.RoleFirmwareWriter
	role.Store(&writer)
	_, ack := e.dialRaw(e.pki.service("ingest"), persistent)
	if ack.Reason != packet.Success {
		t.Fatalf("CONNACK 0x%02x after the role change", ack.Reason)
	}
	s = findClient(t, e, "service:ingest")
	s.mu.Lock()
	subj, subs := s.subject, len(s.subs)
	s.mu.Unlock()
	if subj.Role != tacs.RoleFirmwareWriter {
		t.Errorf("resumed session checked as role %q; want %q", subj.Role, tacs.RoleFirmwareWriter)
	}
	if subs != 0 {
		t.Errorf("%d subscriptions kept across the demotion to %s; want 0", subs, tacs.RoleFirmwareWriter)
	}
	if e.b.mayRead(s, topic) {
		t.Errorf("delivery of %s allowed to a %s", topic, tacs.RoleFirmwareWriter)
	}
}
