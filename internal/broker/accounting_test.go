package broker

import (
	"context"
	"crypto/tls"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/broker/packet"
)

// The session's byte counts decide backpressure (session.backlog: the
// queue's bytes, the in-flight bytes beyond the credit) and the limits
// (load, id.queued). A count that drifts either disables backpressure and
// the limits (too low) or holds publishers and drops everything (too
// high). These tests drive every path that adds or removes a delivery and
// check, at each step, that the counts equal what the session holds, and
// that they return to zero once everything is acknowledged or released.

// accounts checks that s's counts match its deliveries and returns load.
func accounts(t *testing.T, what string, s *session) int64 {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	var inflight, queued int64
	for _, d := range s.inflight {
		inflight += int64(d.msg.size)
	}
	for _, d := range s.queue.all() {
		queued += int64(d.msg.size)
	}
	if s.queue.bytes != queued {
		t.Errorf("%s: queue.bytes = %d; the queue holds %d", what, s.queue.bytes, queued)
	}
	if l := s.load.Load(); l != inflight+queued {
		t.Errorf("%s: load = %d; inflight %d + queued %d", what, l, inflight, queued)
	}
	if s.queue.bytes < 0 || s.load.Load() < 0 {
		t.Errorf("%s: negative count: queue.bytes %d, load %d", what, s.queue.bytes, s.load.Load())
	}
	return s.load.Load()
}

// sessionNamed returns the broker's session with client ID id.
func sessionNamed(t *testing.T, e *env, id string) *session {
	t.Helper()
	var s *session
	eventually(func() bool {
		e.b.mu.Lock()
		defer e.b.mu.Unlock()
		for _, x := range e.b.sessions {
			if x.clientID == id {
				s = x
				return true
			}
		}
		return false
	})
	if s == nil {
		t.Fatalf("no session %q", id)
	}
	return s
}

// zero requires s and its identity to hold nothing.
func zero(t *testing.T, what string, s *session) {
	t.Helper()
	eventually(func() bool { return s.load.Load() == 0 && s.id.queued.Load() == 0 })
	accounts(t, what, s)
	s.mu.Lock()
	qb := s.queue.bytes
	s.mu.Unlock()
	if l, q := s.load.Load(), s.id.queued.Load(); l != 0 || q != 0 || qb != 0 {
		t.Fatalf("%s: load %d, queue.bytes %d, identity queued %d; want 0", what, l, qb, q)
	}
}

func subConnect(id string, clean bool, expiry uint32, window uint16, maxPacket uint32) packet.Connect {
	cp := packet.Connect{Version: packet.V5, ClientID: id, CleanStart: clean, KeepAlive: 60}
	if expiry > 0 {
		cp.Props.SessionExpiry = expiry
		cp.Props.Set(packet.PropSessionExpiry)
	}
	if window > 0 {
		cp.Props.ReceiveMaximum = window
		cp.Props.Set(packet.PropReceiveMaximum)
	}
	if maxPacket > 0 {
		cp.Props.MaximumPacketSize = maxPacket
		cp.Props.Set(packet.PropMaximumPacketSize)
	}
	return cp
}

// publishN publishes n QoS 1 messages of size bytes and waits for each PUBACK.
func publishN(t *testing.T, e *env, cert tls.Certificate, topic string, n, size int, props packet.Properties) {
	t.Helper()
	pub, _ := e.dialRaw(cert, packet.Connect{Version: packet.V5, CleanStart: true, KeepAlive: 60})
	for range n {
		pub.publish(topic, 1, false, make([]byte, size), props)
		if a := expect[packet.Ack](pub); a.Reason != 0 {
			t.Fatalf("PUBACK 0x%02x", a.Reason)
		}
	}
	pub.send(packet.AppendDisconnect(nil, packet.V5, &packet.Disconnect{}))
}

// receive reads n PUBLISH packets (skipping others) and returns them.
func receive(t *testing.T, r *raw, n int) []*packet.Publish {
	t.Helper()
	var got []*packet.Publish
	for len(got) < n {
		p, err := r.next()
		if err != nil {
			t.Fatalf("after %d of %d messages: %v", len(got), n, err)
		}
		if pub, ok := p.(*packet.Publish); ok {
			got = append(got, pub)
		}
	}
	return got
}

// drain acknowledges every PUBLISH until a PINGRESP round brings none
// (what an acknowledgement releases is written before the PINGRESP that
// follows it) and returns them all.
func drain(t *testing.T, r *raw) []*packet.Publish {
	t.Helper()
	var all []*packet.Publish
	for {
		r.send(packet.AppendPingreq(nil))
		n := 0
		for {
			p, err := r.next()
			if err != nil {
				t.Fatalf("drain after %d messages: %v", len(all), err)
			}
			if _, ok := p.(*packet.Pingresp); ok {
				break
			}
			if pub, ok := p.(*packet.Publish); ok {
				r.send(packet.AppendAck(nil, packet.V5, &packet.Ack{Type: packet.PUBACK, PacketID: pub.PacketID}))
				all = append(all, pub)
				n++
			}
		}
		if n == 0 {
			return all
		}
	}
}

const acctTopic = "ms-acc-1/acc-1/dev-1/snapshots"

func TestAccountingQoS2(t *testing.T) {
	e := newEnv(t)
	sub, _ := e.dialRaw(e.pki.identity("ms-acc-1/acc-1"), subConnect("sub", true, 0, 0, 0))
	sub.subscribe("ms-acc-1/acc-1/+/snapshots", 2, packet.Properties{})
	s := sessionNamed(t, e, "sub")
	pub, _ := e.dialRaw(e.pki.identity("ms-acc-1/acc-1/dev-1"), packet.Connect{Version: packet.V5, CleanStart: true, KeepAlive: 60})
	const n = 6
	for i := range n {
		pid := uint16(100 + i)
		pub.send(packet.AppendPublish(nil, packet.V5, &packet.Publish{Topic: acctTopic, QoS: 2, PacketID: pid, Payload: make([]byte, 1000)}))
		if a := expect[packet.Ack](pub); a.Type != packet.PUBREC || a.Reason != 0 {
			t.Fatalf("publisher got %+v; want PUBREC", a)
		}
		pub.send(packet.AppendAck(nil, packet.V5, &packet.Ack{Type: packet.PUBREL, PacketID: pid}))
		if a := expect[packet.Ack](pub); a.Type != packet.PUBCOMP {
			t.Fatalf("publisher got %+v; want PUBCOMP", a)
		}
	}
	got := receive(t, sub, n)
	accounts(t, "all sent", s)
	for i, p := range got {
		if p.QoS != 2 {
			t.Fatalf("QoS %d", p.QoS)
		}
		if i%3 == 0 { // refused by the receiver: the flow ends
			sub.send(packet.AppendAck(nil, packet.V5, &packet.Ack{Type: packet.PUBREC, PacketID: p.PacketID, Reason: 0x80}))
			continue
		}
		sub.send(packet.AppendAck(nil, packet.V5, &packet.Ack{Type: packet.PUBREC, PacketID: p.PacketID}))
		if a := expect[packet.Ack](sub); a.Type != packet.PUBREL {
			t.Fatalf("subscriber got %+v; want PUBREL", a)
		}
		accounts(t, "released", s)
		// A duplicate PUBREC, and a PUBCOMP for an unknown id: ignored.
		sub.send(packet.AppendAck(nil, packet.V5, &packet.Ack{Type: packet.PUBCOMP, PacketID: p.PacketID + 1000}))
		sub.send(packet.AppendAck(nil, packet.V5, &packet.Ack{Type: packet.PUBCOMP, PacketID: p.PacketID}))
		sub.send(packet.AppendAck(nil, packet.V5, &packet.Ack{Type: packet.PUBCOMP, PacketID: p.PacketID}))
		sub.send(packet.AppendAck(nil, packet.V5, &packet.Ack{Type: packet.PUBACK, PacketID: p.PacketID}))
	}
	sub.ping()
	zero(t, "QoS 2 flows done", s)
}

// A persistent session: sent within a window of 4, the rest queued,
// more queued offline, restored after a restart, resumed with a window of
// 2 and a Maximum Packet Size that refuses the large ones (in resume and
// in fill), and some expired.
func TestAccountingResumeRestoreRefuseExpire(t *testing.T) {
	e := newEnv(t)
	acc := e.pki.identity("ms-acc-1/acc-1")
	dev := e.pki.identity("ms-acc-1/acc-1/dev-1")
	sub, _ := e.dialRaw(acc, subConnect("sub", true, 3600, 4, 0))
	sub.subscribe("ms-acc-1/acc-1/+/snapshots", 1, packet.Properties{})
	s := sessionNamed(t, e, "sub")
	publishN(t, e, dev, acctTopic, 3, 4000, packet.Properties{}) // large: refused after resume
	publishN(t, e, dev, acctTopic, 3, 100, packet.Properties{})  // small
	publishN(t, e, dev, acctTopic, 4, 4000, packet.Properties{}) // large, queued
	receive(t, sub, 4)                                           // never acknowledged
	if l := accounts(t, "live, window full", s); l == 0 {
		t.Fatal("nothing held")
	}
	_ = sub.conn.Close()
	eventually(func() bool { return !s.online.Load() })
	publishN(t, e, dev, acctTopic, 3, 100, packet.Properties{})
	accounts(t, "offline", s)

	e.restart()
	s = sessionNamed(t, e, "sub")
	restored := accounts(t, "restored", s)
	if restored == 0 {
		t.Fatal("nothing restored")
	}
	if q := s.id.queued.Load(); q != restored {
		t.Fatalf("identity queued %d; session holds %d", q, restored)
	}
	// Expire two queued small messages (white box: the session is offline,
	// nothing else reads them).
	s.mu.Lock()
	expired := 0
	for _, d := range s.queue.all() {
		if d.msg.size < 1000 && expired < 2 {
			d.msg.expires = time.Now().Add(-time.Hour)
			expired++
		}
	}
	s.mu.Unlock()

	sub, _ = e.dialRaw(acc, subConnect("sub", false, 3600, 2, 1000))
	got := drain(t, sub)
	for _, p := range got {
		if len(p.Payload) > 1000 {
			t.Fatalf("got %d bytes beyond Maximum Packet Size", len(p.Payload))
		}
	}
	// 3 large in flight and 4 large queued are refused (Maximum Packet
	// Size), 1 small in flight is resent, 5 small queued less 2 expired
	// are sent.
	if len(got) != 4 {
		t.Errorf("resumed session got %d messages; want 4", len(got))
	}
	zero(t, "resumed and acknowledged", s)
}

// Takeover (resumed), then a clean start that ends the old session, then
// revocation of a live non-persistent session, then session expiry.
func TestAccountingTakeoverRevokeExpire(t *testing.T) {
	e := newEnv(t)
	acc := e.pki.identity("ms-acc-1/acc-1")
	dev := e.pki.identity("ms-acc-1/acc-1/dev-1")

	sub, _ := e.dialRaw(acc, subConnect("sub", true, 3600, 2, 0))
	sub.subscribe("ms-acc-1/acc-1/+/snapshots", 1, packet.Properties{})
	s := sessionNamed(t, e, "sub")
	publishN(t, e, dev, acctTopic, 6, 3000, packet.Properties{})
	receive(t, sub, 2)
	accounts(t, "first connection", s)
	// Takeover without reading the old connection out.
	sub2, _ := e.dialRaw(acc, subConnect("sub", false, 3600, 3, 0))
	if sessionNamed(t, e, "sub") != s {
		t.Fatal("not resumed")
	}
	receive(t, sub2, 3)
	accounts(t, "taken over", s)
	// A clean start: the old session ends, its bytes leave the identity.
	sub3, _ := e.dialRaw(acc, subConnect("sub", true, 0, 0, 0))
	zero(t, "ended by a clean start", s)
	_ = sub3

	// Revocation of a live session holding inflight and queued messages.
	revoked := e.pki.identity("ms-acc-1/acc-1")
	r, _ := e.dialRaw(revoked, subConnect("rev", true, 0, 2, 0))
	r.subscribe("ms-acc-1/acc-1/+/snapshots", 1, packet.Properties{})
	rs := sessionNamed(t, e, "rev")
	publishN(t, e, dev, acctTopic, 5, 2000, packet.Properties{})
	receive(t, r, 2)
	accounts(t, "before revocation", rs)
	e.id.revoke(revoked)
	if n := e.b.Revalidate(context.Background()); n != 1 {
		t.Fatalf("Revalidate = %d; want 1", n)
	}
	eventually(func() bool {
		rs.mu.Lock()
		defer rs.mu.Unlock()
		return rs.ended
	})
	rs.mu.Lock()
	ended := rs.ended
	rs.mu.Unlock()
	if !ended {
		t.Fatal("revoked session did not end")
	}
	if l := rs.load.Load(); l != 0 {
		t.Fatalf("revoked session load %d", l)
	}

	// Session expiry of an offline persistent session holding messages.
	x, _ := e.dialRaw(acc, subConnect("exp", true, 1, 1, 0))
	x.subscribe("ms-acc-1/acc-1/+/snapshots", 1, packet.Properties{})
	xs := sessionNamed(t, e, "exp")
	publishN(t, e, dev, acctTopic, 4, 2000, packet.Properties{})
	receive(t, x, 1)
	_ = x.conn.Close()
	eventually(func() bool {
		xs.mu.Lock()
		defer xs.mu.Unlock()
		return xs.ended
	})
	if l := xs.load.Load(); l != 0 {
		t.Fatalf("expired session load %d", l)
	}
	// Every session of acc-1 that is left holds nothing beyond its own
	// (the clean-start session sub3 subscribed to nothing).
	e.b.mu.Lock()
	id := e.b.identities["ms-acc-1/acc-1"]
	e.b.mu.Unlock()
	if id != nil {
		if q := id.queued.Load(); q != 0 {
			t.Fatalf("identity queued %d after every session ended or holds nothing", q)
		}
	}
}

// A shared group: one member leaves holding unacknowledged messages, the
// other acknowledges everything.
func TestAccountingSharedGroup(t *testing.T) {
	e := newEnv(t)
	var rs []*raw
	var ss []*session
	for _, id := range []string{"g1", "g2"} {
		r, _ := e.dialRaw(e.pki.service("ingest"), subConnect(id, true, 0, 4, 0))
		if a := r.subscribe("$share/ingest/+/+/+/snapshots", 1, packet.Properties{}); a.Reasons[0] != 1 {
			t.Fatalf("SUBACK %v", a.Reasons)
		}
		rs = append(rs, r)
		ss = append(ss, sessionNamed(t, e, id))
	}
	publishN(t, e, e.pki.identity("ms-acc-1/acc-1/dev-1"), acctTopic, 20, 1000, packet.Properties{})
	for i, s := range ss {
		accounts(t, "member "+s.clientID, s)
		_ = i
	}
	id := ss[0].id
	_ = rs[0].conn.Close()
	eventually(func() bool {
		ss[0].mu.Lock()
		defer ss[0].mu.Unlock()
		return ss[0].ended
	})
	// The other member acknowledges all it has and gets.
	drain(t, rs[1])
	zero(t, "member g2", ss[1])
	if l := ss[0].load.Load(); l != 0 {
		t.Fatalf("ended member load %d", l)
	}
	if q := id.queued.Load(); q != 0 {
		t.Fatalf("identity queued %d", q)
	}
}
