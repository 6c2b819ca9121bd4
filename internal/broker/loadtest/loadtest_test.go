package loadtest

import (
	"bytes"
	"context"
	"crypto/tls"
	"strings"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/broker"
	"github.com/fieldtrust/fieldtrust/internal/broker/packet"
	"github.com/fieldtrust/fieldtrust/internal/tacs"
)

// inProcess is an in-process broker for the smoke test; its RSS is the
// test process's.
type inProcess struct{ addr string }

func (b inProcess) Label() string     { return "fieldtrust (in-process)" }
func (b inProcess) Address() string   { return b.addr }
func (inProcess) RSS() (int64, error) { return RSS(0) }

func startInProcess(t *testing.T, p *PKI) inProcess {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(p.ServerCertFile, p.ServerKeyFile)
	if err != nil {
		t.Fatal(err)
	}
	v := p.Verifier()
	b, err := broker.New(broker.Config{
		Addr:     "127.0.0.1:0",
		TLS:      &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: v.Roots(), VerifyConnection: v.VerifyConnection},
		Identify: Identify(v),
		StateDir: t.TempDir(),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return inProcess{addr: b.Addr()}
}

// TestSmoke runs a tiny workload and a few idle connections against an
// in-process broker: the harness works end to end. No timing is checked.
func TestSmoke(t *testing.T) {
	p, err := NewPKI(t.Context(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	b := startInProcess(t, p)
	base := Workload{Publishers: 2, Subscribers: 2, Messages: 50, Warmup: 5, PayloadSize: 1024, Window: 8, Drain: 5 * time.Second}
	for _, tc := range []struct {
		name string
		tune func(*Workload)
	}{
		{"QoS 0", func(w *Workload) {}},
		{"QoS 1", func(w *Workload) { w.QoS = 1 }},
		{"QoS 2", func(w *Workload) { w.QoS = 2 }},
		{"QoS 1 MQTT 5", func(w *Workload) { w.QoS, w.Version = 1, packet.V5 }},
		{"QoS 1 persistent", func(w *Workload) { w.QoS, w.Persistent = 1, true }},
		{"QoS 2 MQTT 5 persistent", func(w *Workload) { w.QoS, w.Version, w.Persistent = 2, packet.V5, true }},
		{"fan-out QoS 1", func(w *Workload) { w.QoS, w.FanOut, w.Subscribers = 1, true, 20 }},
		{"paced QoS 1", func(w *Workload) { w.QoS, w.Rate = 1, 2000 }},
	} {
		w := base
		tc.tune(&w)
		r, err := w.Run(t.Context(), "fieldtrust", b.Address(), p)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if r.Delivered != r.Expected || r.Dupes != 0 {
			t.Fatalf("%s: delivered %d of %d, %d duplicates", tc.name, r.Delivered, r.Expected, r.Dupes)
		}
	}
	certs := []tls.Certificate{}
	for i := range 3 {
		c, err := p.Identity(t.Context(), DevicePath(i))
		if err != nil {
			t.Fatal(err)
		}
		certs = append(certs, c)
	}
	r, err := Idle(t.Context(), b, p, certs, IdleOptions{Conns: 10, Workers: 4, Settle: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if r.Conns != 10 {
		t.Fatalf("idle connections: %d, want 10", r.Conns)
	}
	if table := ThroughputTable(nil) + IdleTable([]IdleResult{r}); !strings.Contains(table, "| fieldtrust (in-process) | leaf + 2 CAs | 10 |") {
		t.Fatalf("idle table:\n%s", table)
	}
}

// TestForeignTopicRefused checks the harness's clients really are under
// TACS: a device subscribing to its sibling's subtree is refused.
func TestForeignTopicRefused(t *testing.T) {
	p, err := NewPKI(t.Context(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	b := startInProcess(t, p)
	cert, err := p.Identity(t.Context(), DevicePath(1))
	if err != nil {
		t.Fatal(err)
	}
	c, _, err := Dial(t.Context(), b.Address(), p.ClientTLS(cert), ClientOptions{ClientID: "probe", Clean: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if code, err := c.Subscribe(DevicePath(2)+"/snapshots", 1); err != nil || code != 0x80 {
		t.Fatalf("SUBACK 0x%02x (%v), want 0x80", code, err)
	}
	if d := tacs.Authorize(tacs.DefaultGrants(), tacs.Account(Account), tacs.Subscribe, Account+"/+/snapshots"); !d.Allowed {
		t.Fatalf("the workload's subscription is refused by TACS: %v", d.Reason)
	}
}

func TestPayloadRoundTrip(t *testing.T) {
	buf := make([]byte, 64)
	encodePayload(buf, 123456789*time.Nanosecond, 7, 42, flagWarmup)
	sent, pub, seq, flags, ok := decodePayload(buf)
	if !ok || sent != 123456789 || pub != 7 || seq != 42 || flags != flagWarmup {
		t.Fatalf("decode = %v %d %d %d %v", sent, pub, seq, flags, ok)
	}
	if _, _, _, _, ok := decodePayload(buf[:payloadHeader-1]); ok {
		t.Fatal("short payload decoded")
	}
}

func TestPercentile(t *testing.T) {
	var v []time.Duration
	for i := 1; i <= 100; i++ {
		v = append(v, time.Duration(i))
	}
	for _, c := range []struct {
		q    float64
		want time.Duration
	}{{50, 50}, {90, 90}, {99, 99}, {100, 100}, {0, 1}} {
		if got := percentile(v, c.q); got != c.want {
			t.Errorf("p%v = %v, want %v", c.q, got, c.want)
		}
	}
	if percentile(nil, 50) != 0 {
		t.Error("percentile of nothing")
	}
}

// TestConnectPacket pins the hand-written CONNECT: MQTT 3.1.1 §3.1.
func TestConnectPacket(t *testing.T) {
	want := []byte{
		0x10, 15, // CONNECT, remaining length 10 + 2 + 3
		0, 4, 'M', 'Q', 'T', 'T', // protocol name
		4,          // protocol level 3.1.1
		0x02,       // flags: clean session
		0x01, 0x2c, // keepalive 300 s
		0, 3, 'a', 'b', 'c', // client ID
	}
	if got := connectPacket("abc", 300); !bytes.Equal(got, want) {
		t.Fatalf("connectPacket = % x\nwant            % x", got, want)
	}
}

func TestMosquittoConfig(t *testing.T) {
	p := &PKI{RootFile: "/r.pem", ServerCertFile: "/s.pem", ServerKeyFile: "/s.key"}
	conf := MosquittoConfig(1883, p, "/d", MosquittoOptions{})
	for _, line := range []string{"listener 1883 127.0.0.1", "require_certificate true", "use_identity_as_username true",
		"cafile /r.pem", "acl_file /d/acl", "persistence false", "allow_anonymous false", "tls_version tlsv1.2"} {
		if !strings.Contains(conf, line+"\n") {
			t.Errorf("config lacks %q:\n%s", line, conf)
		}
	}
}
