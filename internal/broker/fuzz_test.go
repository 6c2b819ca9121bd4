package broker

import (
	"crypto/tls"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fieldtrust/fieldtrust/internal/broker/packet"
)

// fuzzEnv is one broker shared by every fuzz input (starting one per
// input would make the fuzzer crawl).
var (
	fuzzOnce sync.Once
	fuzzE    *env
	fuzzCert tls.Certificate
)

// FuzzSession sends, after a valid CONNECT, whatever bytes the fuzzer
// makes up — seeded with well-formed packets of every type — on a real
// mutual-TLS connection, then checks the broker is still serving: a fresh
// client connects, subscribes, publishes and receives. Hostile packet
// sequences may end their own connection, never the broker.
func FuzzSession(f *testing.F) {
	seeds := [][]byte{
		packet.AppendSubscribe(nil, packet.V5, &packet.Subscribe{PacketID: 1, Subs: []packet.Subscription{{Filter: "ms-acc-1/acc-1/dev-1/#", QoS: 2}}}),
		packet.AppendPublish(nil, packet.V5, &packet.Publish{Topic: "ms-acc-1/acc-1/dev-1/x", QoS: 2, PacketID: 7, Payload: []byte("p")}),
		packet.AppendAck(nil, packet.V5, &packet.Ack{Type: packet.PUBREL, PacketID: 7}),
		packet.AppendAck(nil, packet.V5, &packet.Ack{Type: packet.PUBACK, PacketID: 1}),
		packet.AppendUnsubscribe(nil, packet.V5, &packet.Unsubscribe{PacketID: 2, Filters: []string{"ms-acc-1/acc-1/dev-1/#"}}),
		packet.AppendPingreq(nil),
		packet.AppendDisconnect(nil, packet.V5, &packet.Disconnect{Reason: packet.DisconnectWithWill}),
		packet.AppendPublish(nil, packet.V5, &packet.Publish{Topic: "", QoS: 1, PacketID: 3,
			Props: func() packet.Properties {
				var p packet.Properties
				p.TopicAlias = 1
				p.Set(packet.PropTopicAlias)
				return p
			}()}),
	}
	for _, s := range seeds {
		f.Add(byte(packet.V5), s)
		f.Add(byte(packet.V311), s)
	}
	f.Add(byte(packet.V5), append(append([]byte{}, seeds[0]...), seeds[1]...))
	f.Fuzz(func(t *testing.T, version byte, data []byte) {
		fuzzOnce.Do(func() {
			fuzzE = newEnvForFuzz(t)
			fuzzCert = fuzzE.pki.identity("ms-acc-1/acc-1/dev-1")
		})
		e := fuzzE
		if version != packet.V311 {
			version = packet.V5
		}
		conn, err := tls.DialWithDialer(&netDialer, "tcp", e.b.Addr(), e.clientTLS(fuzzCert))
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		defer conn.Close()
		c := packet.Connect{Version: version, ClientID: "fuzz", CleanStart: true, KeepAlive: 30}
		_ = conn.SetDeadline(time.Now().Add(wait))
		if _, err := conn.Write(append(packet.AppendConnect(nil, &c), data...)); err != nil {
			return
		}
		// Read until the broker is done with what we sent (or closes).
		_ = conn.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		buf := make([]byte, 64<<10)
		for {
			if _, err := conn.Read(buf); err != nil {
				break
			}
		}
		// The broker still serves a well-behaved client.
		probe := e.pki.identity("ms-acc-1/acc-1/dev-2")
		r, ack := e.dialRawT(t, probe, packet.Connect{Version: packet.V5, ClientID: "probe", CleanStart: true, KeepAlive: 30})
		if ack.Reason != 0 {
			t.Fatalf("probe CONNACK 0x%02x", ack.Reason)
		}
		r.subscribe("ms-acc-1/acc-1/dev-2/p", 1, packet.Properties{})
		r.publish("ms-acc-1/acc-1/dev-2/p", 1, false, []byte("alive"), packet.Properties{})
		for {
			p, err := r.next()
			if err != nil {
				t.Fatalf("probe: %v", err)
			}
			if pub, ok := p.(*packet.Publish); ok && string(pub.Payload) == "alive" {
				break
			}
		}
		_ = r.conn.Close()
	})
}

// newEnvForFuzz is newEnv for a broker that outlives the first input's
// test: it is never shut down (the fuzz process ends with it).
func newEnvForFuzz(t *testing.T) *env {
	e := &env{t: t, pki: newTestPKI(t), id: &testIdentify{roles: map[string]string{"admin": "admin"}}, dir: mustTempDir(t)}
	e.reg = prometheus.NewRegistry()
	e.srvTL = e.pki.server()
	e.start()
	return e
}

// TestNoGoroutineLeak: connections that come and go — clean disconnects,
// broken sockets, refused CONNECTs, takeovers — leave no goroutine behind.
func TestNoGoroutineLeak(t *testing.T) {
	e := newEnv(t)
	dev := e.pki.identity("ms-acc-1/acc-1/dev-1")
	// settle waits (bounded) until at most limit goroutines run.
	settle := func(limit int) int {
		n := runtime.NumGoroutine()
		for deadline := time.Now().Add(wait); n > limit && time.Now().Before(deadline); n = runtime.NumGoroutine() {
			time.Sleep(20 * time.Millisecond)
		}
		return n
	}
	time.Sleep(100 * time.Millisecond) // let the broker's own goroutines start
	before := runtime.NumGoroutine()
	var open []*raw
	for i := range 50 {
		r, ack := e.dialRaw(dev, packet.Connect{Version: packet.V5, ClientID: "same", CleanStart: i%2 == 0, KeepAlive: 30,
			Props: props(func(p *packet.Properties) { p.SessionExpiry = 60; p.Set(packet.PropSessionExpiry) })})
		if ack.Reason != 0 {
			t.Fatalf("round %d: CONNACK 0x%02x", i, ack.Reason)
		}
		r.subscribe("ms-acc-1/acc-1/dev-1/#", 1, packet.Properties{})
		r.publish("ms-acc-1/acc-1/dev-1/x", 1, false, []byte("m"), packet.Properties{})
		switch i % 3 {
		case 0:
			r.send(packet.AppendDisconnect(nil, packet.V5, &packet.Disconnect{}))
		case 1:
			_ = r.conn.NetConn().Close()
		default: // left open: taken over by the next round
			open = append(open, r)
		}
	}
	for range 20 { // refused CONNECTs
		r, _ := e.dialRaw(dev, packet.Connect{Version: packet.V5, ClientID: "refused",
			Props: props(func(p *packet.Properties) { p.AuthMethod = "x"; p.Set(packet.PropAuthMethod) })})
		open = append(open, r)
	}
	for _, r := range open {
		_ = r.conn.Close()
	}
	if after := settle(before + 2); after > before+2 {
		buf := make([]byte, 1<<20)
		t.Fatalf("%d goroutines before, %d after:\n%s", before, after, buf[:runtime.Stack(buf, true)])
	}
}

func mustTempDir(t *testing.T) string {
	d, err := os.MkdirTemp("", "broker-fuzz-")
	if err != nil {
		t.Fatal(err)
	}
	return d
}
