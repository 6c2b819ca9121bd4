package broker

// Regression tests for the broker findings of the adversarial review
// (issue "Close the holes an adversarial review found"): each failed on
// the mochi-based broker.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/fieldtrust/fieldtrust/internal/broker/packet"
	"github.com/fieldtrust/fieldtrust/internal/logbuf"
	"github.com/fieldtrust/fieldtrust/internal/tacs"
)

func props(f func(p *packet.Properties)) packet.Properties {
	var p packet.Properties
	f(&p)
	return p
}

// TestRefusalAnswers: every refusal path answers as the spec says for each
// version (items 10 and 13). MQTT 5 gets a reason code; MQTT 3.1.1, which
// has no negative acknowledgement for QoS 1/2, gets its connection closed
// — never a hang, and never a DISCONNECT packet (servers do not send those
// in 3.1.1).
func TestRefusalAnswers(t *testing.T) {
	e := newEnv(t)
	userProp := props(func(p *packet.Properties) { p.User = []packet.UserProperty{{Key: "a", Value: "2"}} })

	var own string // the case's own topic, set per case below
	tests := []struct {
		name    string
		version byte
		connect func(*packet.Connect)
		run     func(t *testing.T, r *raw)
	}{
		{"v5 QoS 1 publish to $SYS gets PUBACK not authorized", packet.V5, nil, func(t *testing.T, r *raw) {
			r.publish("$SYS/broker/uptime", 1, false, []byte("x"), packet.Properties{})
			if a := expect[packet.Ack](r); a.Type != packet.PUBACK || a.Reason != packet.NotAuthorized {
				t.Fatalf("got %v reason 0x%02x", a.Type, a.Reason)
			}
			r.ping()
		}},
		{"v5 QoS 2 publish to $SYS gets PUBREC not authorized", packet.V5, nil, func(t *testing.T, r *raw) {
			r.publish("$SYS/x", 2, false, []byte("x"), packet.Properties{})
			if a := expect[packet.Ack](r); a.Type != packet.PUBREC || a.Reason != packet.NotAuthorized {
				t.Fatalf("got %v reason 0x%02x", a.Type, a.Reason)
			}
			r.ping()
		}},
		{"v5 QoS 1 publish to a foreign topic gets PUBACK not authorized", packet.V5, nil, func(t *testing.T, r *raw) {
			r.publish("ms-acc-2/acc-1/dev-2/events", 1, false, []byte("x"), packet.Properties{})
			if a := expect[packet.Ack](r); a.Reason != packet.NotAuthorized {
				t.Fatalf("reason 0x%02x", a.Reason)
			}
		}},
		{"v3 QoS 1 publish to $SYS closes the connection, no DISCONNECT", packet.V311, nil, func(t *testing.T, r *raw) {
			r.publish("$SYS/x", 1, false, []byte("x"), packet.Properties{})
			r.expectClosed(0)
		}},
		{"v3 QoS 2 publish to a foreign topic closes the connection", packet.V311, nil, func(t *testing.T, r *raw) {
			r.publish("ms-acc-2/acc-1/dev-1/events", 2, false, []byte("x"), packet.Properties{})
			r.expectClosed(0)
		}},
		{"v3 QoS 0 publish to a foreign topic is dropped, connection kept", packet.V311, nil, func(t *testing.T, r *raw) {
			r.publish("ms-acc-2/acc-1/dev-1/events", 0, false, []byte("x"), packet.Properties{})
			r.ping()
		}},
		{"PUBACK carries no user properties and reason success (item 13)", packet.V5, nil, func(t *testing.T, r *raw) {
			r.send(packet.AppendPublish(nil, packet.V5, &packet.Publish{Topic: own, QoS: 1, PacketID: 1, Props: userProp, Payload: []byte("x")}))
			_ = r.conn.SetReadDeadline(time.Now().Add(wait))
			got := make([]byte, 4)
			if _, err := ioReadFull(r.conn, got); err != nil {
				t.Fatal(err)
			}
			if hex.EncodeToString(got) != "40020001" {
				t.Fatalf("PUBACK bytes %x; want 40020001", got)
			}
		}},
		{"CONNACK advertises what the broker accepts", packet.V5, nil, func(t *testing.T, r *raw) {}},
		{"topic alias 0 is invalid", packet.V5, nil, func(t *testing.T, r *raw) {
			r.publish(own, 1, false, []byte("x"), props(func(p *packet.Properties) { p.TopicAlias = 0; p.Set(packet.PropTopicAlias) }))
			r.expectClosed(packet.TopicAliasInvalid)
		}},
		{"topic alias above the advertised maximum is invalid", packet.V5, nil, func(t *testing.T, r *raw) {
			r.publish(own, 1, false, []byte("x"), props(func(p *packet.Properties) { p.TopicAlias = topicAliasMaximum + 1; p.Set(packet.PropTopicAlias) }))
			r.expectClosed(packet.TopicAliasInvalid)
		}},
		{"alias-only publish of an unknown alias is a protocol error", packet.V5, nil, func(t *testing.T, r *raw) {
			r.publish("", 1, false, []byte("x"), props(func(p *packet.Properties) { p.TopicAlias = 3; p.Set(packet.PropTopicAlias) }))
			r.expectClosed(packet.ProtocolError)
		}},
		{"alias set, then alias-only publish, is delivered with its topic", packet.V5, nil, func(t *testing.T, r *raw) {
			if sa := r.subscribe(own, 1, packet.Properties{}); sa.Reasons[0] != 1 {
				t.Fatalf("SUBACK 0x%02x", sa.Reasons[0])
			}
			alias := props(func(p *packet.Properties) { p.TopicAlias = 5; p.Set(packet.PropTopicAlias) })
			r.publish(own, 0, false, []byte("first"), alias)
			r.publish("", 0, false, []byte("second"), alias)
			for _, want := range []string{"first", "second"} {
				p := expect[packet.Publish](r)
				if p.Topic != own || string(p.Payload) != want {
					t.Fatalf("got %q %q; want %q %q", p.Topic, p.Payload, own, want)
				}
			}
		}},
		{"alias-only publish to a foreign topic is refused", packet.V5, nil, func(t *testing.T, r *raw) {
			alias := props(func(p *packet.Properties) { p.TopicAlias = 2; p.Set(packet.PropTopicAlias) })
			r.publish("ms-acc-2/acc-1/dev-2/events", 1, false, []byte("x"), alias)
			if a := expect[packet.Ack](r); a.Reason != packet.NotAuthorized {
				t.Fatalf("reason 0x%02x", a.Reason)
			}
			r.publish("", 1, false, []byte("x"), alias)
			if a := expect[packet.Ack](r); a.Reason != packet.NotAuthorized {
				t.Fatalf("alias-only: reason 0x%02x", a.Reason)
			}
		}},
		{"subscription identifier 0 is a protocol error", packet.V5, nil, func(t *testing.T, r *raw) {
			// The encoder writes what it is given; identifier 0 is on the wire.
			r.send(packet.AppendSubscribe(nil, packet.V5, &packet.Subscribe{PacketID: 1,
				Props: packet.Properties{SubscriptionIDs: []uint32{0}}, Subs: []packet.Subscription{{Filter: own}}}))
			r.expectClosed(packet.ProtocolError)
		}},
		{"malformed packet: v5 gets DISCONNECT malformed", packet.V5, nil, func(t *testing.T, r *raw) {
			r.send([]byte{0x62, 0x02, 0x00, 0x00}) // PUBREL with packet id 0
			r.expectClosed(packet.MalformedPacket)
		}},
		{"malformed packet: v3 is closed without DISCONNECT", packet.V311, nil, func(t *testing.T, r *raw) {
			r.send([]byte{0x62, 0x02, 0x00, 0x00})
			r.expectClosed(0)
		}},
		{"second CONNECT: v5 protocol error", packet.V5, nil, func(t *testing.T, r *raw) {
			r.send(packet.AppendConnect(nil, &packet.Connect{Version: packet.V5, ClientID: "again"}))
			r.expectClosed(packet.ProtocolError)
		}},
		{"second CONNECT: v3 closed without DISCONNECT", packet.V311, nil, func(t *testing.T, r *raw) {
			r.send(packet.AppendConnect(nil, &packet.Connect{Version: packet.V311, ClientID: "again"}))
			r.expectClosed(0)
		}},
		{"AUTH without an authentication method is a protocol error", packet.V5, nil, func(t *testing.T, r *raw) {
			r.send(packet.AppendAuth(nil, &packet.Auth{Reason: packet.ReAuthenticate}))
			r.expectClosed(packet.ProtocolError)
		}},
		{"payload format UTF-8 with invalid UTF-8 gets PUBACK payload format invalid", packet.V5, nil, func(t *testing.T, r *raw) {
			r.publish(own, 1, false, []byte{0xff, 0xfe}, props(func(p *packet.Properties) { p.PayloadFormat = 1; p.Set(packet.PropPayloadFormat) }))
			if a := expect[packet.Ack](r); a.Reason != packet.PayloadFormatInvalid {
				t.Fatalf("reason 0x%02x", a.Reason)
			}
		}},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// One identity per case: each stays connected until the end.
			dev := e.pki.identity(fmt.Sprintf("ms-acc-1/acc-1/dev-%d", i))
			own = fmt.Sprintf("ms-acc-1/acc-1/dev-%d/events", i)
			c := packet.Connect{Version: tc.version, CleanStart: true, KeepAlive: 30}
			if tc.connect != nil {
				tc.connect(&c)
			}
			r, ack := e.dialRaw(dev, c)
			r.t = t
			if ack.Reason != packet.Success {
				t.Fatalf("CONNACK 0x%02x", ack.Reason)
			}
			if tc.version == packet.V5 {
				p := &ack.Props
				if !p.Has(packet.PropTopicAliasMaximum) || p.TopicAliasMaximum == 0 || !p.Has(packet.PropReceiveMaximum) ||
					!p.Has(packet.PropMaximumPacketSize) || !p.Has(packet.PropServerKeepAlive) {
					t.Fatalf("CONNACK properties %+v", *p)
				}
			}
			tc.run(t, r)
		})
	}
}

// TestConnectRefusals: CONNECT-time refusals, per version.
func TestConnectRefusals(t *testing.T) {
	e := newEnv(t)
	dev := e.pki.identity("ms-acc-1/acc-1/dev-1")
	tests := []struct {
		name string
		c    packet.Connect
		code byte // v5 reason, or v3 return code
	}{
		{"unknown authentication method (v5)", packet.Connect{Version: packet.V5, ClientID: "a",
			Props: props(func(p *packet.Properties) { p.AuthMethod = "SCRAM-SHA-1"; p.Set(packet.PropAuthMethod) })}, packet.BadAuthenticationMethod},
		{"v3 persistent session without client ID", packet.Connect{Version: packet.V311, ClientID: emptyClientID, CleanStart: false}, packet.V3IdentifierRejected},
		{"control character in client ID (v5)", packet.Connect{Version: packet.V5, ClientID: "a\x01b"}, packet.ClientIDNotValid},
		{"client ID over 128 bytes (v3)", packet.Connect{Version: packet.V311, ClientID: strings.Repeat("x", MaxClientIDLen+1), CleanStart: true}, packet.V3IdentifierRejected},
		{"will on a foreign topic (v5)", packet.Connect{Version: packet.V5, ClientID: "w",
			Will: &packet.Will{Topic: "ms-acc-1/acc-1/dev-2/status", Payload: []byte("x")}}, packet.NotAuthorized},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, ack := e.dialRaw(dev, tc.c)
			r.t = t
			if ack.Reason != tc.code {
				t.Fatalf("CONNACK 0x%02x; want 0x%02x", ack.Reason, tc.code)
			}
			r.expectClosed(0) // after a refusing CONNACK: closed, no DISCONNECT
		})
	}
	// An MQTT 5 client that asks for no keepalive gets the maximum, and is
	// told so (MQTT 5 §3.2.2.3.14).
	r, ack := e.dialRaw(dev, packet.Connect{Version: packet.V5, ClientID: "ka0", KeepAlive: 0})
	if ack.Props.ServerKeepAlive != uint16(DefaultMaxKeepAlive/time.Second) {
		t.Fatalf("Server Keep Alive %d; want %d", ack.Props.ServerKeepAlive, DefaultMaxKeepAlive/time.Second)
	}
	r.ping()
}

// TestKeepAliveCapped: a client asking for no keepalive (0) or a longer
// one than the broker allows is held to the maximum: a silent MQTT 3.1.1
// client (which cannot be told) is disconnected after 1.5 × the maximum,
// its will is sent, and no DISCONNECT reaches it (item 4).
func TestKeepAliveCapped(t *testing.T) {
	e := newEnvWith(t, func(c *Config) { c.MaxKeepAlive = time.Second })
	// The observer is held to the same keepalive: a 3.1.1 client with a
	// working pinger.
	got := make(chan string, 1)
	admin := e.v3c(e.pki.service("admin"), v3opts{clean: true, keepAlive: time.Second, recv: got})
	if tok := admin.Subscribe("ms-acc-1/acc-1/dev-1/status", 1, nil); !tok.WaitTimeout(wait) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	r, ack := e.dialRaw(e.pki.identity("ms-acc-1/acc-1/dev-1"), packet.Connect{Version: packet.V311, ClientID: "silent", KeepAlive: 0, CleanStart: true,
		Will: &packet.Will{Topic: "ms-acc-1/acc-1/dev-1/status", Payload: []byte("gone"), QoS: 1}})
	if ack.Reason != 0 {
		t.Fatalf("CONNACK %d", ack.Reason)
	}
	r.expectClosed(0)
	select {
	case p := <-got:
		if p != "gone" {
			t.Fatalf("got %q", p)
		}
	case <-time.After(wait):
		t.Fatal("no will after the keepalive timeout")
	}

	v5, ack := e.dialRaw(e.pki.identity("ms-acc-1/acc-1/dev-2"), packet.Connect{Version: packet.V5, ClientID: "long", KeepAlive: 3600})
	if ack.Props.ServerKeepAlive != 1 {
		t.Fatalf("Server Keep Alive %d; want 1", ack.Props.ServerKeepAlive)
	}
	v5.expectClosed(packet.KeepAliveTimeout)
}

// TestRevokedDelayedWill: a will with a delay belongs to the identity that
// set it; once that identity is revoked the will must never be published
// or retained (item 3), whether revocation is noticed by Revalidate
// before the delay ends or only when the will fires.
func TestRevokedDelayedWill(t *testing.T) {
	for _, viaRevalidate := range []bool{true, false} {
		t.Run(fmt.Sprintf("revalidate=%v", viaRevalidate), func(t *testing.T) {
			e := newEnv(t)
			admin := e.v5(e.pki.service("admin"))
			admin.subscribe(t, "#", 1)
			devCert := e.pki.identity("ms-acc-1/acc-1/dev-1")
			delay := uint32(1)
			expiry := uint32(60)
			r, ack := e.dialRaw(devCert, packet.Connect{Version: packet.V5, ClientID: "gw", KeepAlive: 30,
				Props: props(func(p *packet.Properties) { p.SessionExpiry = expiry; p.Set(packet.PropSessionExpiry) }),
				Will: &packet.Will{Topic: "ms-acc-1/acc-1/dev-1/status", Payload: []byte("forged after revocation"), QoS: 1, Retain: true,
					Props: props(func(p *packet.Properties) { p.WillDelay = delay; p.Set(packet.PropWillDelay) })}})
			if ack.Reason != 0 {
				t.Fatalf("CONNACK 0x%02x", ack.Reason)
			}
			_ = r.conn.NetConn().Close() // abrupt: the will is due
			s := findClient(t, e, "ms-acc-1/acc-1/dev-1")
			eventually(func() bool { s.mu.Lock(); defer s.mu.Unlock(); return s.will != nil })
			e.id.revoke(devCert)
			if viaRevalidate {
				e.b.Revalidate(context.Background())
				s.mu.Lock()
				pending := s.will != nil
				s.mu.Unlock()
				if pending {
					t.Fatal("will still pending after Revalidate")
				}
			}
			// Whichever way, the refusal is counted: by Revalidate, or when
			// the will fires and its identity is checked again.
			eventually(func() bool { return counter(t, e, "will", "revoked") >= 1 })
			if n := counter(t, e, "will", "revoked"); n != 1 {
				t.Fatalf("refusals{will,revoked} = %v; want 1", n)
			}
			fence(t, admin, admin, "ms-acc-9/fence")
			// Nothing retained either: a new subscriber sees no status.
			late := e.v5(e.pki.identity("ms-acc-1"))
			late.subscribe(t, "ms-acc-1/acc-1/dev-1/status", 1)
			late.subscribe(t, "ms-acc-1/fence", 1)
			fence(t, admin, late, "ms-acc-1/fence")
		})
	}
}

// TestWillBounds: a will is held in memory while it waits, so its payload
// is bounded, and its delay never outlives its session or the configured
// maximum (item 5).
func TestWillBounds(t *testing.T) {
	e := newEnv(t)
	dev := e.pki.identity("ms-acc-1/acc-1/dev-1")
	_, ack := e.dialRaw(dev, packet.Connect{Version: packet.V5, ClientID: "big-will",
		Will: &packet.Will{Topic: "ms-acc-1/acc-1/dev-1/status", Payload: make([]byte, DefaultAccountLimits.WillPayload+1)}})
	if ack.Reason != packet.QuotaExceeded {
		t.Fatalf("oversized will: CONNACK 0x%02x; want quota exceeded", ack.Reason)
	}
	r, ack := e.dialRaw(dev, packet.Connect{Version: packet.V5, ClientID: "long-delay", KeepAlive: 30,
		Props: props(func(p *packet.Properties) { p.SessionExpiry = 600; p.Set(packet.PropSessionExpiry) }),
		Will: &packet.Will{Topic: "ms-acc-1/acc-1/dev-1/status", Payload: []byte("x"),
			Props: props(func(p *packet.Properties) { p.WillDelay = 1 << 30; p.Set(packet.PropWillDelay) })}})
	if ack.Reason != 0 {
		t.Fatalf("CONNACK 0x%02x", ack.Reason)
	}
	_ = r.conn.NetConn().Close()
	s := findClient(t, e, "ms-acc-1/acc-1/dev-1")
	eventually(func() bool { s.mu.Lock(); defer s.mu.Unlock(); return s.will != nil })
	s.mu.Lock()
	due := time.Until(s.will.due)
	s.mu.Unlock()
	if due > 600*time.Second {
		t.Fatalf("will due in %v: beyond the session expiry of 600 s", due)
	}
}

// TestLimitsPerIdentity: one identity cannot make the broker hold more than
// its limits, whatever it opens (item 4).
func TestLimitsPerIdentity(t *testing.T) {
	e := newEnv(t)
	lim := DefaultAccountLimits
	dev := e.pki.identity("ms-acc-1/acc-1/dev-1")
	persistent := func(id string, version byte) packet.Connect {
		c := packet.Connect{Version: version, ClientID: id, KeepAlive: 30}
		if version == packet.V5 {
			c.Props = props(func(p *packet.Properties) { p.SessionExpiry = 3600; p.Set(packet.PropSessionExpiry) })
		}
		return c
	}

	t.Run("persistent sessions", func(t *testing.T) {
		var subs []*raw
		for i := range 20 {
			r, ack := e.dialRaw(dev, persistent(fmt.Sprintf("p%d", i), packet.V5))
			if i < lim.PersistentSessions {
				if ack.Reason != 0 {
					t.Fatalf("session %d refused: 0x%02x", i, ack.Reason)
				}
				r.subscribe("ms-acc-1/acc-1/dev-1/#", 1, packet.Properties{})
				subs = append(subs, r)
				continue
			}
			if ack.Reason != packet.QuotaExceeded {
				t.Fatalf("session %d: CONNACK 0x%02x; want quota exceeded", i, ack.Reason)
			}
		}
		_, ack := e.dialRaw(dev, persistent("v3-extra", packet.V311))
		if ack.Reason != packet.V3ServerUnavailable {
			t.Fatalf("v3 extra session: return code %d; want 3", ack.Reason)
		}
		// Take the sessions offline: every message now queues, per
		// session, on disk and in memory.
		for _, r := range subs {
			r.send(packet.AppendDisconnect(nil, packet.V5, &packet.Disconnect{}))
			r.expectClosed(0)
		}
		eventually(func() bool {
			e.b.mu.Lock()
			defer e.b.mu.Unlock()
			return e.b.identities["ms-acc-1/acc-1/dev-1"].conns == 0
		})

		// 10 MB of QoS 1 publishes into the sessions' subtree.
		dbBefore := fileSize(t, filepath.Join(e.dir, "broker.db"))
		pub, _ := e.dialRaw(dev, packet.Connect{Version: packet.V5, ClientID: "pub", CleanStart: true, KeepAlive: 30})
		payload := make([]byte, 256<<10)
		for range 40 {
			pub.publish("ms-acc-1/acc-1/dev-1/snapshots", 1, false, payload, packet.Properties{})
			if a := expect[packet.Ack](pub); a.Reason != 0 {
				t.Fatalf("PUBACK 0x%02x", a.Reason)
			}
		}
		e.b.mu.Lock()
		queued := e.b.identities["ms-acc-1/acc-1/dev-1"].queued.Load()
		e.b.mu.Unlock()
		if queued > lim.QueuedBytes {
			t.Fatalf("identity holds %d queued bytes; limit %d", queued, lim.QueuedBytes)
		}
		if d := droppedTotal(t, e); d == 0 {
			t.Fatal("nothing counted as dropped beyond the limits")
		}
		_ = e.b.store.barrier()
		if grown := fileSize(t, filepath.Join(e.dir, "broker.db")) - dbBefore; grown > 3*lim.QueuedBytes {
			t.Fatalf("broker.db grew %d bytes for %d bytes of queue limit", grown, lim.QueuedBytes)
		}
	})

	t.Run("connections", func(t *testing.T) {
		other := e.pki.identity("ms-acc-1/acc-1/dev-5")
		for i := range lim.Connections {
			if _, ack := e.dialRaw(other, packet.Connect{Version: packet.V5, CleanStart: true, KeepAlive: 30}); ack.Reason != 0 {
				t.Fatalf("connection %d refused: 0x%02x", i, ack.Reason)
			}
		}
		if _, ack := e.dialRaw(other, packet.Connect{Version: packet.V5, CleanStart: true, KeepAlive: 30}); ack.Reason != packet.QuotaExceeded {
			t.Fatalf("connection %d: 0x%02x; want quota exceeded", lim.Connections+1, ack.Reason)
		}
	})

	t.Run("subscriptions", func(t *testing.T) {
		r, _ := e.dialRaw(e.pki.identity("ms-acc-1/acc-1/dev-6"), packet.Connect{Version: packet.V5, CleanStart: true, KeepAlive: 30})
		for i := range lim.SubscriptionsPerSession {
			if sa := r.subscribe(fmt.Sprintf("ms-acc-1/acc-1/dev-6/s%d", i), 0, packet.Properties{}); sa.Reasons[0] != 0 {
				t.Fatalf("subscription %d: 0x%02x", i, sa.Reasons[0])
			}
		}
		if sa := r.subscribe("ms-acc-1/acc-1/dev-6/one-more", 0, packet.Properties{}); sa.Reasons[0] != packet.QuotaExceeded {
			t.Fatalf("subscription over the limit: 0x%02x", sa.Reasons[0])
		}
		// Re-subscribing an existing filter is not a new subscription.
		if sa := r.subscribe("ms-acc-1/acc-1/dev-6/s0", 1, packet.Properties{}); sa.Reasons[0] != 1 {
			t.Fatalf("re-subscribe: 0x%02x", sa.Reasons[0])
		}
	})

	t.Run("retained", func(t *testing.T) {
		r, _ := e.dialRaw(e.pki.identity("ms-acc-1/acc-1/dev-7"), packet.Connect{Version: packet.V5, CleanStart: true, KeepAlive: 30})
		for i := range lim.Retained {
			r.publish(fmt.Sprintf("ms-acc-1/acc-1/dev-7/r%d", i), 1, true, []byte("x"), packet.Properties{})
			if a := expect[packet.Ack](r); a.Reason != 0 {
				t.Fatalf("retained %d: 0x%02x", i, a.Reason)
			}
		}
		r.publish("ms-acc-1/acc-1/dev-7/one-more", 1, true, []byte("x"), packet.Properties{})
		if a := expect[packet.Ack](r); a.Reason != packet.QuotaExceeded {
			t.Fatalf("retained over the limit: 0x%02x", a.Reason)
		}
		// Replacing or deleting one of its own is always possible.
		r.publish("ms-acc-1/acc-1/dev-7/r0", 1, true, []byte("y"), packet.Properties{})
		if a := expect[packet.Ack](r); a.Reason != 0 {
			t.Fatalf("replace: 0x%02x", a.Reason)
		}
		r.publish("ms-acc-1/acc-1/dev-7/r1", 1, true, nil, packet.Properties{})
		if a := expect[packet.Ack](r); a.Reason != 0 {
			t.Fatalf("delete: 0x%02x", a.Reason)
		}
		r.publish("ms-acc-1/acc-1/dev-7/one-more", 1, true, []byte("x"), packet.Properties{})
		if a := expect[packet.Ack](r); a.Reason != 0 {
			t.Fatalf("after a delete: 0x%02x", a.Reason)
		}
	})
}

func fileSize(t *testing.T, f string) int64 {
	t.Helper()
	st, err := os.Stat(f)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}

// TestRefusalLogBounded: a refused 900 kB publish is logged as a summary
// (topic, size), not the packet (item 5), and a flood of refusals from one
// connection is logged at most once a second with a count.
func TestRefusalLogBounded(t *testing.T) {
	var buf logbuf.Buffer
	e := newEnvWith(t, func(c *Config) {
		c.Logger = slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo}))
	})
	r, _ := e.dialRaw(e.pki.identity("ms-acc-1/acc-1/dev-1"), packet.Connect{Version: packet.V5, CleanStart: true, KeepAlive: 30})
	for range 50 {
		r.publish("ms-acc-2/acc-1/dev-1/snapshots", 1, false, make([]byte, 900_000), packet.Properties{})
		if a := expect[packet.Ack](r); a.Reason != packet.NotAuthorized {
			t.Fatalf("reason 0x%02x", a.Reason)
		}
	}
	if n := counter(t, e, "publish", "foreign_topic"); n != 50 {
		t.Fatalf("refusals counted %v; want 50", n)
	}
	logs := buf.String()
	lines := strings.Count(logs, "mqtt refused")
	if lines == 0 || lines > 5 {
		t.Fatalf("%d refusal log lines for 50 refusals in well under a minute", lines)
	}
	for _, l := range strings.Split(logs, "\n") {
		if len(l) > 1024 {
			t.Fatalf("log line of %d bytes: %.200s…", len(l), l)
		}
	}
	if !strings.Contains(logs, "bytes=900000") {
		t.Fatalf("refusal log does not name the size:\n%s", logs)
	}
}

// TestCertificateExpiryEndsSession: a live session ends when its
// certificate expires, and its will is not sent (item 7).
func TestCertificateExpiryEndsSession(t *testing.T) {
	e := newEnv(t)
	admin := e.v5(e.pki.service("admin"))
	admin.subscribe(t, "#", 1)
	short := e.pki.identityUntil("ms-acc-1/acc-1/dev-1", time.Now().Add(2*time.Second))
	dev, _, err := e.dialV5(short, v5opts{clean: true, will: &paho.WillMessage{Topic: "ms-acc-1/acc-1/dev-1/status", Payload: []byte("expired")}})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-dev.Done():
	case <-time.After(wait):
		t.Fatal("session outlived its certificate")
	}
	if n := counter(t, e, "revalidate", "certificate_expired"); n != 1 {
		t.Fatalf("refusals{revalidate,certificate_expired} = %v", n)
	}
	fence(t, admin, admin, "ms-acc-9/fence") // no will
}

var _ = tacs.RoleAdmin

// TestRevokedPublisherRetainedPurged: what a revoked identity retained is
// not delivered to anyone subscribing after the revocation.
func TestRevokedPublisherRetainedPurged(t *testing.T) {
	e := newEnv(t)
	devCert := e.pki.identity("ms-acc-1/acc-1/dev-1")
	dev := e.v5(devCert)
	dev.publish(t, "ms-acc-1/acc-1/dev-1/status", "forged", 1, true)
	other := e.v5(e.pki.identity("ms-acc-1/acc-1/dev-2"))
	other.publish(t, "ms-acc-1/acc-1/dev-2/status", "fine", 1, true)
	e.id.revoke(devCert)
	e.b.Revalidate(context.Background())
	if n := counter(t, e, "revalidate", "retained_publisher_revoked"); n != 1 {
		t.Fatalf("refusals{revalidate,retained_publisher_revoked} = %v; want 1", n)
	}
	// Across a restart too (the purge is stored).
	e.restart()
	acct := e.v5(e.pki.identity("ms-acc-1/acc-1"))
	acct.subscribe(t, "ms-acc-1/acc-1/+/status", 1)
	acct.expect(t, "ms-acc-1/acc-1/dev-2/status", "fine")
	acct.subscribe(t, "ms-acc-1/acc-1/fence", 1)
	fence(t, acct, acct, "ms-acc-1/acc-1/fence")
}

// TestVerifyClientLeafOnly: with Config.VerifyClient the broker verifies
// client chains itself (the platform's verifier knows every account CA),
// so a client may present its leaf alone — and everything the TLS layer
// refused before is still refused during the handshake.
func TestVerifyClientLeafOnly(t *testing.T) {
	var e *env
	e = newEnvWith(t, func(c *Config) {
		c.TLS.ClientCAs = nil
		c.VerifyClient = func(leaf *x509.Certificate, inter []*x509.Certificate) ([]*x509.Certificate, error) {
			pool := x509.NewCertPool()
			pool.AddCert(e.pki.services.cert)
			e.pki.mu.Lock()
			for _, ca := range e.pki.cas {
				pool.AddCert(ca.cert)
			}
			e.pki.mu.Unlock()
			for _, c := range inter {
				pool.AddCert(c)
			}
			chains, err := leaf.Verify(x509.VerifyOptions{Roots: e.pki.pool, Intermediates: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
			if err != nil {
				return nil, err
			}
			return chains[0], nil
		}
	})
	full := e.pki.identity("ms-acc-1/acc-1/dev-1")
	leafOnly := full
	leafOnly.Certificate = full.Certificate[:1]
	stranger := newTestPKI(t).identity("ms-acc-1/acc-1/dev-1")
	strangerLeaf := stranger
	strangerLeaf.Certificate = stranger.Certificate[:1]
	for _, tc := range []struct {
		name string
		cert *tls.Certificate
		ok   bool
	}{
		{"full chain", &full, true},
		{"leaf only", &leafOnly, true},
		{"foreign PKI, full chain", &stranger, false},
		{"foreign PKI, leaf only", &strangerLeaf, false},
		{"no certificate", nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := e.clientTLS(full)
			cfg.Certificates = nil
			if tc.cert != nil {
				cfg.Certificates = []tls.Certificate{*tc.cert}
			}
			conn, err := tls.DialWithDialer(&netDialer, "tcp", e.b.Addr(), cfg)
			if err == nil {
				_ = conn.SetDeadline(time.Now().Add(wait))
				err = mqttConnect(conn)
				_ = conn.Close()
			}
			if (err == nil) != tc.ok {
				t.Fatalf("err = %v; want ok=%v", err, tc.ok)
			}
		})
	}
	// The leaf-only client has its identity and rights.
	c := e.v5(leafOnly)
	// QoS 0: paho.golang would write the delivery's PUBACK from its reader
	// while this goroutine writes the next PUBLISH, unlocked (see
	// TestSharedSubscriptions).
	c.subscribe(t, "ms-acc-1/acc-1/dev-1/#", 0)
	c.publish(t, "ms-acc-1/acc-1/dev-1/events", "hello", 1, false)
	c.expect(t, "ms-acc-1/acc-1/dev-1/events", "hello")
	if code := c.publish(t, "ms-acc-1/acc-1/dev-2/events", "x", 1, false); code != 0x87 {
		t.Fatalf("foreign publish: 0x%02x", code)
	}
}

// TestTerminationLingers: a client the broker cuts off usually has packets
// in flight (the Paho suite's test_flow_control2 answers every PUBREC with
// a PUBREL while the broker ends the connection for Receive Maximum). If
// the broker closed its socket at once, TCP would answer those with a
// reset, and the client's next write would fail with a broken pipe before
// it had handled the DISCONNECT that says why. So the broker half-closes
// and reads what still comes until the client closes too (or finalWait).
func TestTerminationLingers(t *testing.T) {
	e := newEnv(t)
	r, ack := e.dialRaw(e.pki.identity("ms-acc-1/acc-1/dev-1"), packet.Connect{Version: packet.V5, CleanStart: true})
	if ack.Reason != 0 || ack.Props.ReceiveMaximum != receiveMaximum {
		t.Fatalf("CONNACK 0x%02x, Receive Maximum %d", ack.Reason, ack.Props.ReceiveMaximum)
	}
	var burst []byte
	for i := 1; i <= receiveMaximum+1; i++ {
		burst = packet.AppendPublish(burst, packet.V5, &packet.Publish{Topic: "ms-acc-1/acc-1/dev-1/status", QoS: 2, PacketID: uint16(i), Payload: []byte("x")})
	}
	r.send(burst)
	r.expectClosed(packet.ReceiveMaximumExceeded) // DISCONNECT, then the broker's end of the stream
	// The client answers the PUBRECs it got; each write must still
	// succeed (a reset from the broker would fail the second at latest).
	for i := 1; i <= 20; i++ {
		_ = r.conn.SetWriteDeadline(time.Now().Add(wait))
		if _, err := r.conn.Write(packet.AppendAck(nil, packet.V5, &packet.Ack{Type: packet.PUBREL, PacketID: uint16(i)})); err != nil {
			t.Fatalf("PUBREL %d after the broker's DISCONNECT: %v", i, err)
		}
	}
}
