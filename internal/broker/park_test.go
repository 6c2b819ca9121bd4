package broker

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"
	"unsafe"
	"weak"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fieldtrust/fieldtrust/internal/broker/packet"
)

// until polls cond until it holds or wait passes (a condition with a
// deadline, never a sleep as synchronisation).
func until(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		runtime.Gosched()
		time.Sleep(time.Millisecond) // polling interval, not synchronisation
	}
}

// connOf returns the live connection of client ID id.
func (e *env) connOf(id string) *conn {
	e.b.mu.Lock()
	defer e.b.mu.Unlock()
	for c := range e.b.conns {
		if c.clientID == id && !c.closed.Load() {
			return c
		}
	}
	return nil
}

// isParked reports whether c's reader is parked (no goroutine).
func (e *env) isParked(c *conn) bool {
	p := e.b.parker
	if p == nil {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return c.parked
}

// idle waits until client id's reader is idle: parked in the parking
// model; in the goroutine model there is nothing to wait for.
func (e *env) idle(t *testing.T, id string, parking bool) {
	t.Helper()
	if !parking {
		return
	}
	until(t, "connection "+id+" parked", func() bool {
		c := e.connOf(id)
		return c != nil && e.isParked(c)
	})
}

var readerModels = []struct {
	name    string
	parking bool
}{
	{"parked", true},
	{"goroutine per connection", false},
}

// TestParkedConnection: everything a blocked reader did, a parked
// connection does too — in both reader models.
func TestParkedConnection(t *testing.T) {
	tests := []struct {
		name string
		tune func(*Config)
		run  func(t *testing.T, e *env, parking bool)
	}{
		{"answers PINGREQ and parks again", nil, func(t *testing.T, e *env, parking bool) {
			r, _ := e.dialRaw(e.pki.identity("ms-acc-1/acc-1/dev-1"), packet.Connect{ClientID: "p", KeepAlive: 30})
			for range 3 {
				e.idle(t, "p", parking)
				r.ping()
			}
			e.idle(t, "p", parking)
		}},
		{"receives a publish routed to it", nil, func(t *testing.T, e *env, parking bool) {
			sub, _ := e.dialRaw(e.pki.service("admin"), packet.Connect{ClientID: "sub", KeepAlive: 30})
			if ack := sub.subscribe("ms-acc-1/acc-1/dev-1/status", 1, packet.Properties{}); ack.Reasons[0] != 1 {
				t.Fatalf("SUBACK %v", ack.Reasons)
			}
			e.idle(t, "sub", parking)
			pub, _ := e.dialRaw(e.pki.identity("ms-acc-1/acc-1/dev-1"), packet.Connect{ClientID: "pub", KeepAlive: 30})
			pub.publish("ms-acc-1/acc-1/dev-1/status", 0, false, []byte("up"), packet.Properties{})
			p := expect[packet.Publish](sub)
			if string(p.Payload) != "up" {
				t.Fatalf("payload %q", p.Payload)
			}
			if parking && !e.isParked(e.connOf("sub")) {
				t.Fatal("the write path woke the parked reader")
			}
			sub.ping()
		}},
		{"disconnected on revocation", nil, func(t *testing.T, e *env, parking bool) {
			cert := e.pki.identity("ms-acc-1/acc-1/dev-1")
			r, _ := e.dialRaw(cert, packet.Connect{ClientID: "rev", KeepAlive: 30})
			e.idle(t, "rev", parking)
			e.id.revoke(cert)
			if n := e.b.Revalidate(context.Background()); n != 1 {
				t.Fatalf("Revalidate = %d; want 1", n)
			}
			r.expectClosed(packet.NotAuthorized)
		}},
		{"keepalive timeout", func(c *Config) { c.MaxKeepAlive = time.Second }, func(t *testing.T, e *env, parking bool) {
			r, _ := e.dialRaw(e.pki.identity("ms-acc-1/acc-1/dev-1"), packet.Connect{ClientID: "ka", KeepAlive: 1})
			e.idle(t, "ka", parking)
			r.expectClosed(packet.KeepAliveTimeout)
			if n := counter(t, e, "revalidate", "certificate_expired"); n != 0 {
				t.Fatalf("keepalive counted as expiry: %v", n)
			}
		}},
		{"certificate expiry closes it", nil, func(t *testing.T, e *env, parking bool) {
			short := e.pki.identityUntil("ms-acc-1/acc-1/dev-1", time.Now().Add(2*time.Second))
			r, _ := e.dialRaw(short, packet.Connect{ClientID: "exp", KeepAlive: 30})
			e.idle(t, "exp", parking)
			r.expectClosed(packet.NotAuthorized)
			if n := counter(t, e, "revalidate", "certificate_expired"); n != 1 {
				t.Fatalf("refusals{revalidate,certificate_expired} = %v", n)
			}
		}},
		{"taken over by the same client ID", nil, func(t *testing.T, e *env, parking bool) {
			cert := e.pki.identity("ms-acc-1/acc-1/dev-1")
			old, _ := e.dialRaw(cert, packet.Connect{ClientID: "same", KeepAlive: 30})
			e.idle(t, "same", parking)
			repl, _ := e.dialRaw(cert, packet.Connect{ClientID: "same", KeepAlive: 30})
			old.expectClosed(packet.SessionTakenOver)
			repl.ping()
		}},
		{"will sent when the peer vanishes", nil, func(t *testing.T, e *env, parking bool) {
			obs, _ := e.dialRaw(e.pki.service("admin"), packet.Connect{ClientID: "obs", KeepAlive: 30})
			obs.subscribe("ms-acc-1/acc-1/dev-1/status", 0, packet.Properties{})
			r, _ := e.dialRaw(e.pki.identity("ms-acc-1/acc-1/dev-1"), packet.Connect{ClientID: "w", KeepAlive: 30,
				Will: &packet.Will{Topic: "ms-acc-1/acc-1/dev-1/status", Payload: []byte("gone")}})
			e.idle(t, "w", parking)
			_ = r.conn.NetConn().Close() // no DISCONNECT: a dead link
			if p := expect[packet.Publish](obs); string(p.Payload) != "gone" {
				t.Fatalf("will %q", p.Payload)
			}
		}},
		{"server shutdown reaches it", nil, func(t *testing.T, e *env, parking bool) {
			r, _ := e.dialRaw(e.pki.identity("ms-acc-1/acc-1/dev-1"), packet.Connect{ClientID: "sd", KeepAlive: 30})
			e.idle(t, "sd", parking)
			done := make(chan struct{})
			go func() { e.shutdown(); close(done) }()
			r.expectClosed(packet.ServerShuttingDown)
			<-done
		}},
		{"closed when the broker fails a write", nil, func(t *testing.T, e *env, parking bool) {
			r, _ := e.dialRaw(e.pki.identity("ms-acc-1/acc-1/dev-1"), packet.Connect{ClientID: "f", KeepAlive: 30})
			e.idle(t, "f", parking)
			c := e.connOf("f")
			c.fail(errors.New("test: write failed"))
			r.expectClosed(0)
			until(t, "connection ended", func() bool { return e.b.metricConns() == 0 })
		}},
	}
	for _, m := range readerModels {
		t.Run(m.name, func(t *testing.T) {
			for _, tc := range tests {
				t.Run(tc.name, func(t *testing.T) {
					e := newEnvWith(t, func(c *Config) {
						c.GoroutinePerConnection = !m.parking
						if tc.tune != nil {
							tc.tune(c)
						}
					})
					tc.run(t, e, m.parking)
				})
			}
		})
	}
}

// metricConns is the number of attached connections.
func (b *Broker) metricConns() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.conns)
}

// TestIdleConnectionsHoldNoReaders: N idle connections are all parked and
// no reader goroutine runs (counted by the broker's own hook); after the
// clients leave and the broker stops, no goroutine is left behind. The
// goroutine-per-connection model holds N readers.
func TestIdleConnectionsHoldNoReaders(t *testing.T) {
	const n = 40
	for _, m := range readerModels {
		t.Run(m.name, func(t *testing.T) {
			base := runtime.NumGoroutine()
			e := newEnvWith(t, func(c *Config) { c.GoroutinePerConnection = !m.parking })
			var clients []*raw
			for i := range n {
				r, _ := e.dialRaw(e.pki.identity("ms-acc-1/acc-1/dev-"+itoaInt(i)), packet.Connect{ClientID: "c", KeepAlive: 30})
				clients = append(clients, r)
			}
			if m.parking {
				// A reader that just parked counts until its goroutine returns.
				until(t, "all connections parked, no reader running", func() bool {
					return e.b.parker.parkedCount() == n && e.b.readers.Load() == 0
				})
				if g := runtime.NumGoroutine() - base; g >= n {
					t.Fatalf("%d goroutines more than before for %d idle connections", g, n)
				}
			} else {
				until(t, "all readers running", func() bool { return e.b.readers.Load() == n })
			}
			for _, r := range clients {
				_ = r.conn.Close()
			}
			until(t, "all connections ended", func() bool { return e.b.metricConns() == 0 })
			if m.parking {
				until(t, "none parked", func() bool { return e.b.parker.parkedCount() == 0 })
			}
			e.shutdown()
			until(t, "goroutines back to where they were", func() bool { return runtime.NumGoroutine() <= base })
		})
	}
}

// flushConn holds a client's writes once armed and sends them in one
// write, so several TLS records reach the server's socket together.
type flushConn struct {
	net.Conn
	hold bool
	buf  bytes.Buffer
}

func (f *flushConn) Write(b []byte) (int, error) {
	if f.hold {
		return f.buf.Write(b)
	}
	return f.Conn.Write(b)
}

func (f *flushConn) flush() error {
	f.hold = false
	_, err := f.Conn.Write(f.buf.Bytes())
	f.buf.Reset()
	return err
}

// tlsPair is a handshaken TLS connection over loopback whose server side
// reads through a pollConn.
func tlsPair(t *testing.T) (srv *tls.Conn, pc *pollConn, cli *tls.Conn, fc *flushConn) {
	t.Helper()
	e := &env{t: t, pki: newTestPKI(t)}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type accepted struct {
		c   *tls.Conn
		pc  *pollConn
		err error
	}
	ch := make(chan accepted, 1)
	go func() {
		nc, err := ln.Accept()
		if err != nil {
			ch <- accepted{err: err}
			return
		}
		pc, err := newPollConn(nc.(*net.TCPConn))
		if err != nil {
			ch <- accepted{err: err}
			return
		}
		c := tls.Server(pc, &tls.Config{Certificates: []tls.Certificate{e.pki.server()}})
		ch <- accepted{c, pc, c.HandshakeContext(context.Background())}
	}()
	nc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	fc = &flushConn{Conn: nc}
	cli = tls.Client(fc, &tls.Config{RootCAs: e.pki.pool, ServerName: "127.0.0.1"})
	if err := cli.Handshake(); err != nil {
		t.Fatal(err)
	}
	a := <-ch
	if a.err != nil {
		t.Fatal(a.err)
	}
	t.Cleanup(func() { _ = a.c.Close(); _ = cli.Close() })
	return a.c, a.pc, cli, fc
}

// TestTLSReadsBufferedRecordsFirst pins what parking relies on in this
// Go version's crypto/tls: after one socket read took several records, a
// read that cannot touch the socket (an already-expired deadline, or the
// pollConn's non-blocking probe) still returns the buffered records'
// data; a timeout or "would block" is temporary, and the connection
// works after it.
func TestTLSReadsBufferedRecordsFirst(t *testing.T) {
	for _, mode := range []string{"expired deadline", "probe"} {
		t.Run(mode, func(t *testing.T) {
			srv, pc, cli, fc := tlsPair(t)
			fc.hold = true
			for _, rec := range []string{"one", "two", "three"} {
				if _, err := cli.Write([]byte(rec)); err != nil { // a record each
					t.Fatal(err)
				}
			}
			if err := fc.flush(); err != nil {
				t.Fatal(err)
			}
			// A blocking read: crypto/tls reads all three records' bytes
			// from the socket in one go and returns the first record.
			b := make([]byte, 16)
			_ = srv.SetReadDeadline(time.Now().Add(wait))
			n, err := srv.Read(b)
			if err != nil || string(b[:n]) != "one" {
				t.Fatalf("first read %q, %v", b[:n], err)
			}
			// Now the socket is empty: whatever comes must come from
			// crypto/tls's buffer.
			read := func() (int, error) {
				if mode == "probe" {
					pc.probing = true
					defer func() { pc.probing = false }()
					return srv.Read(b)
				}
				_ = srv.SetReadDeadline(time.Unix(1, 0))
				return srv.Read(b)
			}
			for _, want := range []string{"two", "three"} {
				n, err := read()
				if err != nil || string(b[:n]) != want {
					t.Fatalf("buffered read %q, %v; want %q", b[:n], err, want)
				}
			}
			n, err = read()
			var ne net.Error
			if n != 0 || !errors.As(err, &ne) || !ne.Timeout() {
				t.Fatalf("read with nothing buffered: %d, %v; want a timeout", n, err)
			}
			if mode == "probe" && !errors.Is(err, errWouldBlock) {
				t.Fatalf("probe error %v; want errWouldBlock", err)
			}
			if mode == "expired deadline" && !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("error %v; want os.ErrDeadlineExceeded", err)
			}
			// The connection still works, both ways.
			if _, err := cli.Write([]byte("four")); err != nil {
				t.Fatal(err)
			}
			_ = srv.SetReadDeadline(time.Now().Add(wait))
			if n, err := io.ReadAtLeast(srv, b, 4); err != nil || string(b[:n]) != "four" {
				t.Fatalf("read after the timeout: %q, %v", b[:n], err)
			}
			if _, err := srv.Write([]byte("back")); err != nil {
				t.Fatal(err)
			}
			_ = cli.SetReadDeadline(time.Now().Add(wait))
			if n, err := io.ReadAtLeast(cli, b, 4); err != nil || string(b[:n]) != "back" {
				t.Fatalf("client read %q, %v", b[:n], err)
			}
		})
	}
}

// TestProbeSeesTheSocket: unlike a read under an expired deadline, the
// probe reads what is in the socket, so a busy connection does not park
// (and go through the poller) every time crypto/tls's buffer runs dry;
// and a peer's close is reported, not mistaken for "nothing yet".
func TestProbeSeesTheSocket(t *testing.T) {
	srv, pc, cli, _ := tlsPair(t)
	if _, err := cli.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 4)
	until(t, "the record in the server's socket", func() bool {
		pc.probing = true
		n, err := srv.Read(b)
		pc.probing = false
		if n == 1 && b[0] == 'x' {
			return true
		}
		if err != nil && !errors.Is(err, errWouldBlock) {
			t.Fatalf("probe: %v", err)
		}
		return false
	})
	_ = cli.Close()
	until(t, "the close reported", func() bool {
		pc.probing = true
		_, err := srv.Read(b)
		pc.probing = false
		return err != nil && !errors.Is(err, errWouldBlock)
	})
}

// TestPingsDoNotMoveTheTimer: a keepalive ping takes the connection with
// the earliest deadline out of the heap and puts it back with a later
// one; the parker's one timer is not moved for that (it fires early once
// and moves then), only for an earlier deadline.
func TestPingsDoNotMoveTheTimer(t *testing.T) {
	e := newEnvWith(t, func(c *Config) { c.ParkAfter = -1 })
	first, _ := e.dialRaw(e.pki.identity("ms-acc-1/acc-1/dev-1"), packet.Connect{ClientID: "first", KeepAlive: 30})
	e.idle(t, "first", true)
	second, _ := e.dialRaw(e.pki.identity("ms-acc-1/acc-1/dev-2"), packet.Connect{ClientID: "second", KeepAlive: 30})
	e.idle(t, "second", true)
	rearms := e.b.parker.rearms.Load()
	for range 5 {
		first.ping()
		e.idle(t, "first", true)
		second.ping()
		e.idle(t, "second", true)
	}
	if got := e.b.parker.rearms.Load() - rearms; got != 0 {
		t.Fatalf("the deadline timer was set %d times for 10 pings; want 0", got)
	}
	// An earlier deadline still moves it: a client with a short keepalive.
	_, _ = e.dialRaw(e.pki.identity("ms-acc-1/acc-1/dev-3"), packet.Connect{ClientID: "short", KeepAlive: 1})
	e.idle(t, "short", true)
	if e.b.parker.rearms.Load() == rearms {
		t.Fatal("an earlier deadline did not set the timer")
	}
}

// TestSendQueueEmpty: the guard that lets the poller write a PINGRESP
// itself (pong) sees bytes the peer has not taken: while a client does
// not read, the poller never writes (a write could wait for it) and the
// answer goes to a writer goroutine.
func TestSendQueueEmpty(t *testing.T) {
	srv, pc, cli, _ := tlsPair(t)
	if !pc.sendQueueEmpty() {
		t.Fatal("send queue not empty before anything was written")
	}
	const total = 8 << 20 // more than both socket buffers hold: the write blocks until the client reads
	written := make(chan error, 1)
	go func() {
		_, err := srv.Write(make([]byte, total))
		written <- err
	}()
	until(t, "the send queue holds what the client does not read", func() bool { return !pc.sendQueueEmpty() })
	if _, err := io.CopyN(io.Discard, cli, total); err != nil {
		t.Fatal(err)
	}
	if err := <-written; err != nil {
		t.Fatal(err)
	}
	until(t, "the send queue empty once the client read everything", pc.sendQueueEmpty)
}

// TestPollerFailureResumesParked: if the poller's wait loop fails (here:
// its epoll descriptor is closed under it), parked connections resume,
// nothing parks any more, and connections keep working with blocking
// reads — pings answered, revocation still reaches them.
func TestPollerFailureResumesParked(t *testing.T) {
	e := newEnv(t)
	cert := e.pki.identity("ms-acc-1/acc-1/dev-1")
	r, _ := e.dialRaw(cert, packet.Connect{ClientID: "pf", KeepAlive: 30})
	e.idle(t, "pf", true)
	es, ok := e.b.parker.ps.(*epollSet)
	if !ok {
		t.Skip("no epoll on this system")
	}
	_ = es.f.Close() // not through interrupt: the wait loop sees a failure
	<-e.b.parker.done
	until(t, "the parked reader resumed", func() bool {
		return !e.isParked(e.connOf("pf")) && e.b.readers.Load() == 1
	})
	for range 3 {
		r.ping()
	}
	if e.isParked(e.connOf("pf")) || e.b.readers.Load() != 1 {
		t.Fatal("parked after the poller failed")
	}
	e.id.revoke(cert)
	if n := e.b.Revalidate(context.Background()); n != 1 {
		t.Fatalf("Revalidate = %d; want 1", n)
	}
	r.expectClosed(packet.NotAuthorized)
}

// TestBusyConnectionKeepsItsReader: a reader that finds nothing to read
// waits Config.ParkAfter for the next packet before parking, so a
// connection in a conversation does not park between its packets; with no
// wait it parks after each one.
func TestBusyConnectionKeepsItsReader(t *testing.T) {
	const rounds = 20
	for _, tc := range []struct {
		name      string
		parkAfter time.Duration
		parksMin  uint64
		parksMax  uint64
	}{
		{"waits before parking", time.Minute, 0, 0},
		// The next PINGREQ may already be there when the reader looks
		// (the client sends it as soon as the PINGRESP is out): at once
		// means some parks, at most one per round and its PINGRESP write.
		{"parks at once", -1, 1, 2 * rounds},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnvWith(t, func(c *Config) { c.ParkAfter = tc.parkAfter })
			r, _ := e.dialRaw(e.pki.identity("ms-acc-1/acc-1/dev-1"), packet.Connect{ClientID: "c", KeepAlive: 30})
			r.ping() // the connection is up and its reader past CONNECT
			if e.b.parker == nil {
				t.Fatal("no poller: this test needs Linux's")
			}
			before := e.b.parker.parks.Load()
			for range rounds {
				r.ping() // a PINGREQ, and its PINGRESP before the next one
			}
			if got := e.b.parker.parks.Load() - before; got < tc.parksMin || got > tc.parksMax {
				t.Fatalf("%d parks in %d request/response rounds; want %d to %d", got, rounds, tc.parksMin, tc.parksMax)
			}
		})
	}
}

// TestParkedPingsAnsweredByThePoller: a keepalive PINGREQ to a parked
// connection is answered by the poller itself, which parks the connection
// again at once: no reader resumes, no goroutine hand-off and no
// Config.ParkAfter wait per ping (that was most of an idle connection's
// CPU). Anything else (a packet after the ping, a malformed PINGREQ, a
// ping split over records, a ping after the deadline) still goes to the
// reader, which handles it exactly as before.
func TestParkedPingsAnsweredByThePoller(t *testing.T) {
	e := newEnvWith(t, func(c *Config) { c.ParkAfter = -1 })
	parked := func(t *testing.T, id string) *conn {
		t.Helper()
		if e.b.parker == nil {
			t.Fatal("no poller: this test needs Linux's")
		}
		var c *conn
		until(t, "connection "+id+" parked, no reader running", func() bool {
			c = e.connOf(id)
			return c != nil && e.isParked(c) && e.b.readers.Load() == 0
		})
		return c
	}
	t.Run("pings", func(t *testing.T) {
		r, _ := e.dialRaw(e.pki.identity("ms-acc-1/acc-1/dev-1"), packet.Connect{ClientID: "pings", KeepAlive: 30})
		parked(t, "pings")
		resumes, parks := e.b.parker.resumes.Load(), e.b.parker.parks.Load()
		for range 20 {
			r.ping()
			parked(t, "pings")
		}
		if got := e.b.parker.resumes.Load() - resumes; got != 0 {
			t.Fatalf("%d readers resumed for 20 pings to a parked connection; want 0 (answered by the poller)", got)
		}
		if got := e.b.parker.parks.Load() - parks; got != 20 {
			t.Fatalf("%d parks after 20 pings; want 20 (one re-park each)", got)
		}
		if e.b.parker.pongs.Load() == 0 {
			t.Fatal("no PINGRESP written by the poller itself (each went to a writer goroutine)")
		}
	})
	t.Run("two pings in one record", func(t *testing.T) {
		r, _ := e.dialRaw(e.pki.identity("ms-acc-1/acc-1/dev-2"), packet.Connect{ClientID: "two", KeepAlive: 30})
		parked(t, "two")
		resumes := e.b.parker.resumes.Load()
		r.send(append(packet.AppendPingreq(nil), packet.AppendPingreq(nil)...))
		expect[packet.Pingresp](r)
		expect[packet.Pingresp](r)
		parked(t, "two")
		if got := e.b.parker.resumes.Load() - resumes; got != 0 {
			t.Fatalf("%d readers resumed; want 0", got)
		}
	})
	t.Run("a publish after the ping goes to the reader", func(t *testing.T) {
		r, _ := e.dialRaw(e.pki.identity("ms-acc-1/acc-1/dev-3"), packet.Connect{ClientID: "mixed", KeepAlive: 30})
		r.subscribe("ms-acc-1/acc-1/dev-3/t", 0, packet.Properties{}) // QoS 0: the client sends nothing back
		parked(t, "mixed")
		resumes := e.b.parker.resumes.Load()
		pub := packet.AppendPublish(nil, packet.V5, &packet.Publish{Topic: "ms-acc-1/acc-1/dev-3/t", QoS: 1, PacketID: 7, Payload: []byte("after the ping")})
		r.send(append(packet.AppendPingreq(nil), pub...))
		var gotPing, gotAck, gotMsg bool
		for !(gotPing && gotAck && gotMsg) {
			p, err := r.next()
			if err != nil {
				t.Fatalf("after PINGREQ+PUBLISH: %v (PINGRESP %v, PUBACK %v, message %v)", err, gotPing, gotAck, gotMsg)
			}
			switch p := p.(type) {
			case *packet.Pingresp:
				gotPing = true
			case *packet.Ack:
				gotAck = gotAck || (p.Type == packet.PUBACK && p.PacketID == 7)
			case *packet.Publish:
				if string(p.Payload) != "after the ping" {
					t.Fatalf("delivered %q", p.Payload)
				}
				gotMsg = true
			}
		}
		if got := e.b.parker.resumes.Load() - resumes; got != 1 {
			t.Fatalf("%d readers resumed; want 1 (for the publish)", got)
		}
		r.ping()
	})
	t.Run("a malformed PINGREQ is the reader's protocol error", func(t *testing.T) {
		r, _ := e.dialRaw(e.pki.identity("ms-acc-1/acc-1/dev-4"), packet.Connect{ClientID: "bad", KeepAlive: 30})
		parked(t, "bad")
		r.send([]byte{0xc0, 0x01, 0x00}) // a PINGREQ has no body
		r.expectClosed(packet.MalformedPacket)
	})
	t.Run("a ping split over two records", func(t *testing.T) {
		r, _ := e.dialRaw(e.pki.identity("ms-acc-1/acc-1/dev-5"), packet.Connect{ClientID: "split", KeepAlive: 30})
		parked(t, "split")
		r.send([]byte{0xc0})
		until(t, "the first half read", func() bool { return e.b.parker.resumes.Load() > 0 || !e.isParked(e.connOf("split")) })
		r.send([]byte{0x00})
		expect[packet.Pingresp](r)
		parked(t, "split")
		r.ping()
	})
}

// TestRecordSizes: the connection and session records stay in their
// runtime size classes. Every idle connection has a conn, which held a
// whole tls.ConnectionState and padding (672 bytes in the 704 class), and
// with the default GC a byte of it costs about two of RSS. A delivery
// touches its subscriber's session: at 392 bytes (the 416 class, not a
// multiple of a cache line) the fan-out to 1,000 subscribers lost 3–36 %
// of its rate in eight of eight runs against the 384-byte record
// (docs/benchmarks.md, "Sixth round").
func TestRecordSizes(t *testing.T) {
	for _, tc := range []struct {
		name      string
		size, max uintptr
	}{
		{"conn", unsafe.Sizeof(conn{}), 512},
		{"session", unsafe.Sizeof(session{}), 384},
	} {
		if tc.size > tc.max {
			t.Errorf("%s is %d bytes; want at most %d (runtime size class)", tc.name, tc.size, tc.max)
		}
	}
}

// TestConnAllocatesOnlyItself: a new connection's record is one
// allocation; what only some connections need (the channel a reader held
// back by inbound limits waits on) is made when it is needed.
func TestConnAllocatesOnlyItself(t *testing.T) {
	var kept *conn // the record escapes, as a real connection's does
	if n := testing.AllocsPerRun(100, func() { kept = newConn(nil, nil, nil) }); n != 1 || kept == nil {
		t.Fatalf("newConn makes %v allocations; want 1", n)
	}
}

// TestRetainedKeepsNoConnection: a retained message keeps its publisher's
// certificates (Revalidate identifies it again), not its connection —
// which holds the TLS connection, its buffers and cipher state.
func TestRetainedKeepsNoConnection(t *testing.T) {
	e := newEnv(t)
	r, _ := e.dialRaw(e.pki.identity("ms-acc-1/acc-1/dev-1"), packet.Connect{ClientID: "retainer", KeepAlive: 30})
	r.publish("ms-acc-1/acc-1/dev-1/state", 1, true, []byte("kept"), packet.Properties{})
	expect[packet.Ack](r)
	c := e.connOf("retainer")
	if c == nil {
		t.Fatal("no connection")
	}
	wc := weak.Make(c)
	c = nil
	r.send(packet.AppendDisconnect(nil, packet.V5, &packet.Disconnect{}))
	until(t, "the connection ended", func() bool { return e.b.metricConns() == 0 })
	until(t, "the connection collected", func() bool {
		runtime.GC()
		return wc.Value() == nil
	})
	// The retained message is still there, and its publisher still
	// identifies (Revalidate keeps it).
	if n := e.b.Revalidate(context.Background()); n != 0 {
		t.Fatalf("Revalidate ended %d connections", n)
	}
	s, _ := e.dialRaw(e.pki.identity("ms-acc-1/acc-1/dev-1"), packet.Connect{ClientID: "reader", KeepAlive: 30})
	s.subscribe("ms-acc-1/acc-1/dev-1/state", 0, packet.Properties{})
	if p := expect[packet.Publish](s); string(p.Payload) != "kept" || !p.Retain {
		t.Fatalf("retained %q (retain %v)", p.Payload, p.Retain)
	}
}

var (
	fuzzParkOnce sync.Once
	fuzzParkE    *env
)

// FuzzParkedInput sends whatever bytes the fuzzer makes up to a parked
// connection, in two writes split where the fuzzer says (so the poller
// sees pings whole, split, followed by other packets, or garbage), and
// checks: input that is only PINGREQs gets exactly one PINGRESP each and
// the connection parks again; anything else leaves the broker serving a
// fresh client (connect, subscribe, publish, receive).
func FuzzParkedInput(f *testing.F) {
	ping := packet.AppendPingreq(nil)
	pub := packet.AppendPublish(nil, packet.V5, &packet.Publish{Topic: "ms-acc-1/acc-1/dev-1/x", QoS: 1, PacketID: 3, Payload: []byte("p")})
	for _, seed := range [][]byte{ping, bytes.Repeat(ping, 9), append(append([]byte{}, ping...), pub...), {0xc0}, {0xc0, 0x01, 0x00}, {0xc0, 0x80, 0x00}, {0xd0, 0x00}, {0x00, 0x00}} {
		f.Add(seed, uint8(1))
		f.Add(seed, uint8(0))
	}
	f.Fuzz(func(t *testing.T, data []byte, split uint8) {
		fuzzParkOnce.Do(func() {
			e := &env{t: t, pki: newTestPKI(t), id: &testIdentify{roles: map[string]string{"admin": "admin"}}, dir: mustTempDir(t),
				tune: func(c *Config) { c.ParkAfter = -1 }}
			e.reg = prometheus.NewRegistry()
			e.srvTL = e.pki.server()
			e.start() // never shut down: the fuzz process ends with it
			fuzzParkE = e
		})
		e := fuzzParkE
		r, _ := e.dialRawT(t, e.pki.identity("ms-acc-1/acc-1/dev-1"), packet.Connect{Version: packet.V5, ClientID: "fuzz-parked", CleanStart: true, KeepAlive: 30})
		if e.b.parker == nil {
			t.Fatal("no poller: this test needs Linux's")
		}
		until(t, "parked", func() bool {
			c := e.connOf("fuzz-parked")
			return c != nil && e.isParked(c)
		})
		cut := int(split) % (len(data) + 1)
		_ = r.conn.SetWriteDeadline(time.Now().Add(wait))
		for _, part := range [][]byte{data[:cut], data[cut:]} {
			if len(part) > 0 {
				if _, err := r.conn.Write(part); err != nil {
					return
				}
			}
		}
		if pings := len(data) / 2; len(data) > 0 && bytes.Equal(data, bytes.Repeat(ping, pings)) {
			for i := range pings {
				if _, err := r.next(); err != nil {
					t.Fatalf("PINGRESP %d of %d: %v", i+1, pings, err)
				}
			}
			until(t, "parked again", func() bool {
				c := e.connOf("fuzz-parked")
				return c != nil && e.isParked(c)
			})
		} else {
			// Read until the broker is done with what we sent (or closes).
			_ = r.conn.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
			buf := make([]byte, 64<<10)
			for {
				if _, err := r.conn.Read(buf); err != nil {
					break
				}
			}
		}
		_ = r.conn.Close()
		s, ack := e.dialRawT(t, e.pki.identity("ms-acc-1/acc-1/dev-2"), packet.Connect{Version: packet.V5, ClientID: "probe", CleanStart: true, KeepAlive: 30})
		if ack.Reason != 0 {
			t.Fatalf("probe CONNACK 0x%02x", ack.Reason)
		}
		s.subscribe("ms-acc-1/acc-1/dev-2/p", 1, packet.Properties{})
		s.publish("ms-acc-1/acc-1/dev-2/p", 1, false, []byte("alive"), packet.Properties{})
		for {
			p, err := s.next()
			if err != nil {
				t.Fatalf("probe: %v", err)
			}
			if pub, ok := p.(*packet.Publish); ok && string(pub.Payload) == "alive" {
				break
			}
		}
		_ = s.conn.Close()
	})
}

// TestPollerNeverWaitsForAPeer: when the poller writes a parked
// connection's PINGRESP itself (pong), deliveries that other goroutines
// append to that connection's outbox while it writes go to a writer
// goroutine; they are never written on the poller. A client that pings
// and does not read what it is sent would otherwise hold the poller in a
// write (up to writeTimeout), and no other parked connection would be
// read or answered meanwhile.
func TestPollerNeverWaitsForAPeer(t *testing.T) {
	e := newEnvWith(t, func(c *Config) { c.ParkAfter = -1 })
	stuck, _ := e.dialRaw(e.pki.identity("ms-acc-1/acc-1/dev-1"), packet.Connect{ClientID: "stuck", KeepAlive: 30})
	other, _ := e.dialRaw(e.pki.identity("ms-acc-1/acc-1/dev-2"), packet.Connect{ClientID: "other", KeepAlive: 30})
	if e.b.parker == nil {
		t.Fatal("no poller: this test needs Linux's")
	}
	e.idle(t, "stuck", true)
	e.idle(t, "other", true)

	// More than both socket buffers hold, in valid PUBLISH packets: what
	// a burst of deliveries routed to "stuck" at that moment appends.
	const n, size = 128, 64 << 10
	pub := packet.AppendPublish(nil, packet.V5, &packet.Publish{Topic: "ms-acc-1/acc-1/dev-1/t", Payload: make([]byte, size)})
	appended := make(chan struct{})
	hook := func(c *conn) {
		if c.clientID != "stuck" {
			return
		}
		c.out.mu.Lock()
		for range n {
			c.out.spill(pub)
		}
		c.out.mu.Unlock()
		close(appended)
	}
	e.b.parker.beforePong.Store(&hook)
	pongs := e.b.parker.pongs.Load()
	stuck.send(packet.AppendPingreq(nil)) // and reads nothing for now
	<-appended
	e.b.parker.beforePong.Store(nil)
	if e.b.parker.pongs.Load() == pongs {
		t.Fatal("the poller did not write the PINGRESP itself")
	}

	// The poller is free: another parked connection's ping is answered.
	other.send(packet.AppendPingreq(nil))
	expect[packet.Pingresp](other)

	// Nothing was lost or interleaved: the PINGRESP, then every delivery.
	expect[packet.Pingresp](stuck)
	for i := range n {
		p := expect[packet.Publish](stuck)
		if len(p.Payload) != size {
			t.Fatalf("delivery %d: %d bytes; want %d", i, len(p.Payload), size)
		}
	}
	stuck.send(packet.AppendPingreq(nil))
	expect[packet.Pingresp](stuck)
}
