package gateway_test

import (
	"context"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/fieldtrust/fieldtrust/internal/datadir"
	"github.com/fieldtrust/fieldtrust/internal/demo"
	"github.com/fieldtrust/fieldtrust/internal/est"
	"github.com/fieldtrust/fieldtrust/internal/gateway"
	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/platform"
	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/topic"
)

type env struct {
	httpAddr, mqttAddr string
	d                  *datadir.Dir
	fleet              *demo.Fleet
}

func logger() *slog.Logger {
	if os.Getenv("GATEWAY_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	return slog.New(slog.DiscardHandler)
}

func startPlatform(t *testing.T, policy est.Policy) *env {
	t.Helper()
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan [2]string, 1)
	done := make(chan error, 1)
	go func() {
		done <- platform.Run(ctx, platform.Config{DataDir: dir, HTTPAddr: "127.0.0.1:0", MQTTAddr: "127.0.0.1:0", EST: policy,
			PublishInterval: 200 * time.Millisecond, Logger: logger(), Ready: func(h, m string) { ready <- [2]string{h, m} }})
	}()
	var a [2]string
	select {
	case a = <-ready:
	case err := <-done:
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); <-done })
	d, err := datadir.Open(t.Context(), dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	fleet, err := demo.Setup(t.Context(), d)
	if err != nil {
		t.Fatal(err)
	}
	return &env{httpAddr: a[0], mqttAddr: a[1], d: d, fleet: fleet}
}

// runGateway runs the first demo gateway until the returned stop is called.
func (e *env) runGateway(t *testing.T, state string, mod ...func(*gateway.Config)) (stop func()) {
	t.Helper()
	g := e.fleet.Gateways[0]
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	onb := g.Onboarding
	cfg := gateway.Config{Platform: "https://" + e.httpAddr, CA: []*x509.Certificate{e.d.Transport.Root()},
		Onboarding: &onb, StateDir: state, Simulate: 1, SimulateEvery: 200 * time.Millisecond, ReenrollExpired: true, Logger: logger()}
	for _, m := range mod {
		m(&cfg)
	}
	go func() { done <- gateway.Run(ctx, cfg) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("gateway: %v", err)
		}
	}
	t.Cleanup(stop)
	return stop
}

func (e *env) stored(t *testing.T) uint64 {
	devs, err := e.d.Store.ListDevices(t.Context(), "")
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, d := range devs {
		n += d.Snapshots
	}
	return n
}

func waitUntil(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", within, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func serialOf(t *testing.T, file string) string {
	certs, err := pki.ReadCertsFile(file)
	if err != nil {
		return ""
	}
	return pki.SerialHex(certs[0].SerialNumber)
}

// TestRenewalAndReenroll: with 9-second certificates the gateway renews
// both before they expire and keeps delivering; stopped until they expire,
// it enrolls again with its onboarding certificate and its devices' hash
// chains continue without a gap or fork.
func TestRenewalAndReenroll(t *testing.T) {
	e := startPlatform(t, est.Policy{TransportValidity: 9 * time.Second, E2EValidity: 9 * time.Second, AllowReenroll: true})
	state := t.TempDir()
	stop := e.runGateway(t, state)
	waitUntil(t, 30*time.Second, "first snapshots", func() bool { return e.stored(t) >= 3 })
	tr0, e2e0 := serialOf(t, filepath.Join(state, "transport.crt")), serialOf(t, filepath.Join(state, "e2e.crt"))
	// EST answers the leaf alone; the gateway completes its chains from
	// cacerts, so mTLS sends leaf + account CA + master CA.
	for _, f := range []string{"transport.crt", "e2e.crt"} {
		if certs, err := pki.ReadCertsFile(filepath.Join(state, f)); err != nil || len(certs) != 3 {
			t.Fatalf("%s holds %d certificates (%v); want leaf and two intermediates", f, len(certs), err)
		}
	}
	waitUntil(t, 20*time.Second, "renewal of both certificates", func() bool {
		return serialOf(t, filepath.Join(state, "transport.crt")) != tr0 && serialOf(t, filepath.Join(state, "e2e.crt")) != e2e0
	})
	n := e.stored(t)
	waitUntil(t, 20*time.Second, "snapshots after renewal", func() bool { return e.stored(t) >= n+5 })

	stop()
	certs, _ := pki.ReadCertsFile(filepath.Join(state, "transport.crt"))
	time.Sleep(time.Until(certs[0].NotAfter) + time.Second) // expire while offline
	tr1 := serialOf(t, filepath.Join(state, "transport.crt"))
	e.runGateway(t, state)
	waitUntil(t, 30*time.Second, "re-enrollment from scratch", func() bool { return serialOf(t, filepath.Join(state, "transport.crt")) != tr1 })
	n = e.stored(t)
	waitUntil(t, 20*time.Second, "snapshots after re-enrollment", func() bool { return e.stored(t) >= n+3 })
	evs, err := e.d.Store.IntegrityEvents(t.Context(), "", time.Time{}, time.Time{}, 100)
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range evs {
		if ev.Kind == store.EventFork || ev.Kind == store.EventGap {
			rejects, _ := e.d.Store.Rejects(t.Context(), time.Time{}, time.Time{}, 100)
			for _, r := range rejects {
				t.Logf("reject: %s %s at %v", r.Reason, r.Gateway, r.At)
			}
			for _, ev := range evs {
				t.Logf("event: %s seq %d expected %d: %s", ev.Kind, ev.Seq, ev.ExpectedSeq, ev.Detail)
			}
			t.Fatalf("chain broken across renewal/re-enrollment: %+v", ev)
		}
	}
}

// TestRebootstrapCommand: an admin orders a re-bootstrap with key rotation;
// the gateway verifies the signed, sealed command, rotates its keys, and
// keeps delivering. The same command replayed is refused.
func TestRebootstrapCommand(t *testing.T) {
	e := startPlatform(t, est.Policy{})
	if err := e.d.Store.SetServiceRole(t.Context(), "ops", "admin"); err != nil {
		t.Fatal(err)
	}
	key, _ := pki.GenerateKey(elliptic.P256())
	adm, err := e.d.Transport.Issue(t.Context(), pki.LeafRequest{Service: "ops", PublicKey: key.Public()})
	if err != nil {
		t.Fatal(err)
	}
	admin := tls.Certificate{PrivateKey: key, Certificate: [][]byte{adm.Chain[0].Raw, adm.Chain[1].Raw}}
	roots := x509.NewCertPool()
	roots.AddCert(e.d.Transport.Root())
	time.Sleep(1500 * time.Millisecond) // the admin role reaches the running platform

	state := t.TempDir()
	e.runGateway(t, state)
	waitUntil(t, 30*time.Second, "first snapshots", func() bool { return e.stored(t) >= 3 })
	path := e.fleet.Gateways[0].Path

	// The admin watches the gateway's command topic, to replay later.
	var captured []byte
	got := make(chan struct{}, 1)
	mc := mqtt.NewClient(mqtt.NewClientOptions().AddBroker("ssl://" + e.mqttAddr).SetClientID("ops").
		SetTLSConfig(&tls.Config{RootCAs: roots, Certificates: []tls.Certificate{admin}}))
	if tok := mc.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	defer mc.Disconnect(100)
	mc.Subscribe(topic.CommandsOf(path), 1, func(_ mqtt.Client, m mqtt.Message) {
		captured = m.Payload()
		got <- struct{}{}
	}).Wait()

	tr0 := serialOf(t, filepath.Join(state, "transport.crt"))
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{admin}}}}
	resp, err := hc.Post("https://"+e.httpAddr+"/api/v1/gateways/"+path+"/rebootstrap?rotate_keys=true", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("rebootstrap: %s", resp.Status)
	}
	<-got
	waitUntil(t, 30*time.Second, "key rotation", func() bool { return serialOf(t, filepath.Join(state, "transport.crt")) != tr0 })
	n := e.stored(t)
	waitUntil(t, 20*time.Second, "snapshots after re-bootstrap", func() bool { return e.stored(t) >= n+3 })

	// Replay: the same signed envelope again must not rotate anything.
	tr1 := serialOf(t, filepath.Join(state, "transport.crt"))
	mc.Publish(topic.CommandsOf(path), 1, false, captured).Wait()
	time.Sleep(3 * time.Second)
	if serialOf(t, filepath.Join(state, "transport.crt")) != tr1 {
		t.Fatal("a replayed command was followed")
	}
	// A device identity may not order anything.
	dk, _ := pki.GenerateKey(elliptic.P256())
	p, _ := pki.ParsePath(path)
	dev, _ := e.d.Transport.Issue(t.Context(), pki.LeafRequest{Path: p, PublicKey: dk.Public()})
	dc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{{PrivateKey: dk, Certificate: [][]byte{dev.Chain[0].Raw, dev.Chain[1].Raw, dev.Chain[2].Raw}}}}}}
	resp, err = dc.Post("https://"+e.httpAddr+"/api/v1/gateways/"+path+"/rebootstrap", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("rebootstrap by a device: %s", resp.Status)
	}
}

// TestLocalInput: real equipment posts readings to the loopback HTTP
// input; good ones become sealed snapshots in the platform, bad ones are
// refused with a reason, and the input cannot listen beyond loopback.
func TestLocalInput(t *testing.T) {
	e := startPlatform(t, est.Policy{})
	addr := freeAddr(t)
	e.runGateway(t, t.TempDir(), func(c *gateway.Config) { c.Simulate = 0; c.ListenLocal = addr })
	post := func(body string) int {
		var resp *http.Response
		var err error
		for range 100 { // the input starts once the gateway is onboarded
			resp, err = http.Post("http://"+addr+"/v1/readings", "application/json", strings.NewReader(body))
			if err == nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	good := `{"device":"press-1","type":"press","values":[{"channel":"force","value":412.5,"unit":"kN","group":"mechanical"}]}`
	for range 3 {
		if code := post(good); code != http.StatusAccepted {
			t.Fatalf("good reading: %d", code)
		}
	}
	for body, want := range map[string]int{
		`{"device":"press 1","values":[{"channel":"force","value":1}]}`:              400,
		`{"device":"press-1","values":[]}`:                                           400,
		`{"device":"press-1","values":[{"channel":"force","value":1}],"extra":true}`: 400,
		`not json`: 400,
		`{"device":"press-1","values":[{"channel":"f","value":1,"unit":"` + strings.Repeat("x", 2<<20) + `"}]}`: 413,
	} {
		if code := post(body); code != want {
			t.Errorf("POST %.60s: %d, want %d", body, code, want)
		}
	}
	waitUntil(t, 30*time.Second, "local readings stored", func() bool { return e.stored(t) >= 3 })
	devs, _ := e.d.Store.ListDevices(t.Context(), "")
	if len(devs) != 1 || devs[0].Device != "press-1" || devs[0].DeviceType != "press" {
		t.Fatalf("devices = %+v", devs)
	}

	state := t.TempDir()
	err := gateway.Run(t.Context(), gateway.Config{Platform: "https://" + e.httpAddr, CA: []*x509.Certificate{e.d.Transport.Root()},
		StateDir: state, ListenLocal: "0.0.0.0:0", Onboarding: &e.fleet.Gateways[1].Onboarding, Logger: logger()})
	if err == nil || !strings.Contains(err.Error(), "loopback") {
		t.Fatalf("non-loopback local input: %v", err)
	}
	if _, err := os.Stat(filepath.Join(state, "transport.key")); err == nil {
		t.Fatal("a misconfigured gateway enrolled before refusing its configuration")
	}
}

func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
