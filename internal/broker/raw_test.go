package broker

import (
	"crypto/tls"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/broker/packet"
)

// raw is a byte-exact MQTT client built on package packet, for tests that
// must control or observe every byte: refusals, reason codes, what a
// 3.1.1 client must never receive.
type raw struct {
	t       testing.TB
	conn    *tls.Conn
	version byte
}

// emptyClientID asks dialRaw to send an empty client ID.
const emptyClientID = "\x00empty"

// dialRaw connects and sends c (Version decides the protocol); it returns
// the CONNACK.
func (e *env) dialRaw(cert tls.Certificate, c packet.Connect) (*raw, *packet.Connack) {
	e.t.Helper()
	return e.dialRawT(e.t, cert, c)
}

// dialRawT is dialRaw for test t (the env may outlive it: fuzzing).
func (e *env) dialRawT(t testing.TB, cert tls.Certificate, c packet.Connect) (*raw, *packet.Connack) {
	t.Helper()
	conn, err := tls.DialWithDialer(&netDialer, "tcp", e.b.Addr(), e.clientTLS(cert))
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	if c.Version == 0 {
		c.Version = packet.V5
	}
	switch c.ClientID {
	case "":
		c.ClientID = "raw-" + itoaInt(int(serialCounter.Add(1)))
	case emptyClientID:
		c.ClientID = ""
	}
	r := &raw{t: t, conn: conn, version: c.Version}
	r.send(packet.AppendConnect(nil, &c))
	p, err := r.next()
	if err != nil {
		t.Fatalf("reading CONNACK: %v", err)
	}
	ack, ok := p.(*packet.Connack)
	if !ok {
		t.Fatalf("got %T; want CONNACK", p)
	}
	return r, ack
}

func (r *raw) send(b []byte) {
	r.t.Helper()
	_ = r.conn.SetWriteDeadline(time.Now().Add(wait))
	if _, err := r.conn.Write(b); err != nil {
		r.t.Fatalf("write: %v", err)
	}
}

// next reads one packet (bounded by wait).
func (r *raw) next() (any, error) {
	_ = r.conn.SetReadDeadline(time.Now().Add(wait))
	h, err := packet.ReadHeader(r.conn, 0)
	if err != nil {
		return nil, err
	}
	body := make([]byte, h.Remaining)
	if _, err := io.ReadFull(r.conn, body); err != nil {
		return nil, err
	}
	return packet.Decode(r.version, h, body, true)
}

// expect reads the next packet and requires type T.
func expect[T any](r *raw) *T {
	r.t.Helper()
	p, err := r.next()
	if err != nil {
		r.t.Fatalf("want %T: %v", new(T), err)
	}
	v, ok := p.(*T)
	if !ok {
		r.t.Fatalf("got %T %+v; want %T", p, p, new(T))
	}
	return v
}

// expectClosed requires the broker to close the connection, and, for an
// MQTT 5 client, to say why first with DISCONNECT reason (0: no DISCONNECT
// expected). An MQTT 3.1.1 client must never receive a DISCONNECT.
func (r *raw) expectClosed(reason byte) {
	r.t.Helper()
	for {
		p, err := r.next()
		if err != nil {
			var ne interface{ Timeout() bool }
			if errors.As(err, &ne) && ne.Timeout() {
				r.t.Fatal("connection still open")
			}
			if reason != 0 {
				r.t.Fatalf("closed without DISCONNECT 0x%02x: %v", reason, err)
			}
			return
		}
		if d, ok := p.(*packet.Disconnect); ok {
			if r.version != packet.V5 {
				r.t.Fatalf("MQTT 3.1.1 client got a DISCONNECT")
			}
			if d.Reason != reason {
				r.t.Fatalf("DISCONNECT 0x%02x; want 0x%02x", d.Reason, reason)
			}
			reason = 0 // now only EOF may follow
			continue
		}
		// Anything queued before the refusal may still arrive.
	}
}

// ping proves the connection is alive and everything before was handled.
func (r *raw) ping() {
	r.t.Helper()
	r.send(packet.AppendPingreq(nil))
	for {
		p, err := r.next()
		if err != nil {
			r.t.Fatalf("ping: %v", err)
		}
		if _, ok := p.(*packet.Pingresp); ok {
			return
		}
	}
}

// readPublishes reads until the connection ends, calling f for each
// PUBLISH and acknowledging nothing: a subscriber that takes everything
// sent to it (the broker keeps no unwritten output for it) but holds its
// acknowledgements. Run it on its own goroutine.
func (r *raw) readPublishes(f func(*packet.Publish)) {
	for {
		p, err := r.next()
		if err != nil {
			return
		}
		if pub, ok := p.(*packet.Publish); ok {
			f(pub)
		}
	}
}

func (r *raw) publish(topic string, qos byte, retain bool, payload []byte, props packet.Properties) {
	r.t.Helper()
	p := packet.Publish{Topic: topic, QoS: qos, Retain: retain, Payload: payload, Props: props}
	if qos > 0 {
		p.PacketID = uint16(serialCounter.Add(1)%60000 + 1)
	}
	r.send(packet.AppendPublish(nil, r.version, &p))
}

func (r *raw) subscribe(filter string, qos byte, props packet.Properties) *packet.Suback {
	r.t.Helper()
	r.send(packet.AppendSubscribe(nil, r.version, &packet.Subscribe{PacketID: 1, Props: props, Subs: []packet.Subscription{{Filter: filter, QoS: qos}}}))
	for {
		p, err := r.next()
		if err != nil {
			r.t.Fatalf("want SUBACK: %v", err)
		}
		switch p := p.(type) {
		case *packet.Suback:
			return p
		case *packet.Publish: // a resumed session's messages may come first
		default:
			r.t.Fatalf("got %T; want SUBACK", p)
		}
	}
}
