package broker

import (
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/broker/packet"
	"github.com/fieldtrust/fieldtrust/internal/tacs"
)

// TestMessageStoredOnce: a message queued for several offline persistent
// sessions is written once, each session holds a small reference, and the
// message record goes when the last session has acknowledged it — across
// restarts.
func TestMessageStoredOnce(t *testing.T) {
	e := newEnv(t)
	acct := e.pki.identity("ms-acc-1/acc-1")
	topic := "ms-acc-1/acc-1/dev-1/snapshots"
	const sessions, n = 3, 20
	connect := func(i int) (*raw, *packet.Connack) {
		return e.dialRaw(acct, packet.Connect{Version: packet.V5, ClientID: fmt.Sprintf("s%d", i), KeepAlive: 30,
			Props: props(func(p *packet.Properties) { p.SessionExpiry = 3600; p.Set(packet.PropSessionExpiry) })})
	}
	for i := range sessions {
		r, _ := connect(i)
		r.subscribe(topic, 1, packet.Properties{})
		r.send(packet.AppendDisconnect(nil, packet.V5, &packet.Disconnect{}))
		r.expectClosed(0)
	}
	pub, _ := e.dialRaw(e.pki.identity("ms-acc-1/acc-1/dev-1"), packet.Connect{Version: packet.V5, CleanStart: true, KeepAlive: 30})
	for k := range n {
		pub.publish(topic, 1, false, []byte(fmt.Sprintf("m%d", k)), packet.Properties{})
		if a := expect[packet.Ack](pub); a.Reason != 0 {
			t.Fatalf("PUBACK 0x%02x", a.Reason)
		}
	}
	counts := func(wantMessages, wantRefs int) {
		t.Helper()
		if err := e.b.store.barrier(); err != nil {
			t.Fatal(err)
		}
		m, _ := e.b.store.count(keyMessage)
		q, _ := e.b.store.count(keyQueued)
		if m != wantMessages || q != wantRefs {
			t.Fatalf("stored %d messages and %d references; want %d and %d", m, q, wantMessages, wantRefs)
		}
	}
	counts(n, sessions*n)
	consume := func(i int) {
		t.Helper()
		r, ack := connect(i)
		if !ack.SessionPresent {
			t.Fatalf("session %d lost", i)
		}
		for k := range n {
			p := expect[packet.Publish](r)
			if string(p.Payload) != fmt.Sprintf("m%d", k) {
				t.Fatalf("session %d message %d: %q (out of order?)", i, k, p.Payload)
			}
			r.send(packet.AppendAck(nil, packet.V5, &packet.Ack{Type: packet.PUBACK, PacketID: p.PacketID}))
		}
		r.ping() // every PUBACK was handled
		r.send(packet.AppendDisconnect(nil, packet.V5, &packet.Disconnect{}))
		r.expectClosed(0)
	}
	e.restart()
	consume(0)
	consume(1)
	counts(n, n) // still held by session 2
	e.restart()
	consume(2)
	counts(0, 0)
}

// TestSubjectKeyRoundTrip: a stored session or retained message comes
// back with the subject it was recorded with; a site restored as its plain
// account path would gain the account's rights after a restart.
func TestSubjectKeyRoundTrip(t *testing.T) {
	for _, s := range []tacs.Subject{
		tacs.Account("ms/acc/gw"), tacs.Account("ms/acc"), tacs.ServiceSubject("ingest", tacs.RoleSnapshotReader), tacs.SiteSubject("ms/acc"),
	} {
		got, ok := parseSubjectKey(subjectKey(s))
		if !ok || got != s {
			t.Errorf("%+v: stored as %q, restored as %+v (ok=%v)", s, subjectKey(s), got, ok)
		}
	}
}

// TestPendingWriteEncodedByTheJournal: queuing a persistent delivery's
// message costs the publisher no encoding (it was a fifth of the broker's
// CPU on the publish path, under the store's lock); the journal encodes it
// when it logs it, and a write cancelled before then is never encoded.
func TestPendingWriteEncodedByTheJournal(t *testing.T) {
	st, err := openStore(filepath.Join(t.TempDir(), "broker.db"), slog.New(slog.NewTextHandler(io.Discard, nil)), storeTuning{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.close()
	const size = 1 << 20
	sess := &session{key: "dev|c"}
	// hold stops the journal inside an earlier op, so what is allocated
	// meanwhile is the publisher's own cost.
	hold := func() chan struct{} {
		gate := make(chan struct{})
		_ = st.j.submit("hold", func(dst []walMut) []walMut { <-gate; return dst }, false)
		return gate
	}
	var before, after runtime.MemStats
	for i, c := range []struct {
		name   string
		cancel bool // acknowledged before the journal logs it
		stored int  // messages in bbolt afterwards
	}{{"logged", false, 1}, {"cancelled", true, 1}} {
		m := newMessage("ms-acc-1/acc-1/dev-1/snapshots", make([]byte, size), 1, false, packet.Properties{}, "", time.Now())
		d := &delivery{msg: m, qos: 1, seq: uint64(i)}
		gate := hold()
		runtime.ReadMemStats(&before)
		sess.mu.Lock()
		st.putDelivery(sess, d)
		if c.cancel {
			st.deleteDelivery(sess, d)
		}
		sess.mu.Unlock()
		runtime.ReadMemStats(&after)
		close(gate)
		if n := after.TotalAlloc - before.TotalAlloc; n >= size {
			t.Errorf("%s: queuing a delivery of a %d-byte message allocated %d bytes: the publisher encoded it", c.name, size, n)
		}
		runtime.ReadMemStats(&before)
		if err := st.barrier(); err != nil {
			t.Fatal(err)
		}
		runtime.ReadMemStats(&after)
		encoded := after.TotalAlloc-before.TotalAlloc >= size
		if encoded == c.cancel {
			t.Errorf("%s: the journal encoded the message: %v; want %v", c.name, encoded, !c.cancel)
		}
		if err := st.checkpoint(); err != nil {
			t.Fatal(err)
		}
		if n, err := st.count(keyMessage); err != nil || n != c.stored {
			t.Errorf("%s: stored messages: %d (%v); want %d", c.name, n, err, c.stored)
		}
	}
}
