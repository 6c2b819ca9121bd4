package platform

import (
	"context"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/fieldtrust/fieldtrust/internal/datadir"
	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/topic"
)

// running is a platform started in-process on free loopback ports.
type running struct {
	dir       string
	httpAddr  string
	mqttAddr  string
	d         *datadir.Dir // a second handle on the directory, as the operator CLI has
	transport *x509.CertPool
	stop      func() error
	done      chan error // Run's result
}

func start(t *testing.T) *running {
	t.Helper()
	return startWith(t, nil)
}

// startWith starts the platform with test hooks.
func startWith(t *testing.T, hooks *testHooks) *running {
	t.Helper()
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan [2]string, 1)
	done := make(chan error, 1)
	log := slog.New(slog.DiscardHandler)
	if os.Getenv("PLATFORM_TEST_LOG") != "" {
		log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	go func() {
		cfg := Config{DataDir: dir, HTTPAddr: "127.0.0.1:0", MQTTAddr: "127.0.0.1:0", Logger: log,
			Ready: func(h, m string) { ready <- [2]string{h, m} }, hooks: hooks}
		if hooks != nil {
			cfg.Broker = hooks.broker
		}
		done <- Run(ctx, cfg)
	}()
	var addrs [2]string
	select {
	case addrs = <-ready:
	case err := <-done:
		cancel()
		t.Fatalf("platform failed to start: %v", err)
	case <-time.After(60 * time.Second):
		cancel()
		t.Fatal("platform did not start")
	}
	d, err := datadir.Open(t.Context(), dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(d.Transport.Root())
	r := &running{dir: dir, httpAddr: addrs[0], mqttAddr: addrs[1], d: d, transport: pool, done: done}
	var stopped bool
	r.stop = func() error {
		if stopped {
			return nil
		}
		stopped = true
		cancel()
		d.Close()
		select {
		case err := <-done:
			return err
		case <-time.After(30 * time.Second):
			return errors.New("platform did not stop within 30 s")
		}
	}
	t.Cleanup(func() {
		if err := r.stop(); err != nil {
			t.Error(err)
		}
	})
	return r
}

// credentials issues a transport certificate for a path or service.
func (r *running) credentials(t *testing.T, req pki.LeafRequest) tls.Certificate {
	t.Helper()
	key, _ := pki.GenerateKey(elliptic.P256())
	req.PublicKey = key.Public()
	iss, err := r.d.Transport.Issue(t.Context(), req)
	if err != nil {
		t.Fatal(err)
	}
	c := tls.Certificate{PrivateKey: key, Leaf: iss.Cert}
	for _, x := range iss.Chain {
		c.Certificate = append(c.Certificate, x.Raw)
	}
	return c
}

func (r *running) mqttClient(t *testing.T, id string, cert tls.Certificate, lost func(error)) (mqtt.Client, error) {
	t.Helper()
	opts := mqtt.NewClientOptions().AddBroker("ssl://" + r.mqttAddr).SetClientID(id).
		SetTLSConfig(&tls.Config{RootCAs: r.transport, Certificates: []tls.Certificate{cert}}).
		SetAutoReconnect(false).SetConnectTimeout(10 * time.Second).SetCleanSession(true)
	if lost != nil {
		opts.SetConnectionLostHandler(func(_ mqtt.Client, err error) { lost(err) })
	}
	c := mqtt.NewClient(opts)
	tok := c.Connect()
	if !tok.WaitTimeout(15 * time.Second) {
		return nil, errors.New("connect timed out")
	}
	if tok.Error() != nil {
		return nil, tok.Error()
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c, nil
}

// TestLiveRevocation: a revoked device is disconnected and refused within
// 5 s of 'pki revoke PATH' (a path revocation, polled through the store's
// revocation version), and the retained CRL bundle lists it.
func TestLiveRevocation(t *testing.T) {
	r := start(t)
	dev := r.credentials(t, pki.LeafRequest{Path: mustPath(t, "ms-1/acc-1/dev-1")})
	other := r.credentials(t, pki.LeafRequest{Path: mustPath(t, "ms-1/acc-1/dev-2")})
	lost := make(chan error, 1)
	c, err := r.mqttClient(t, "dev-1", dev, func(err error) { lost <- err })
	if err != nil {
		t.Fatalf("device connect: %v", err)
	}
	crls := make(chan []byte, 4)
	if tok := c.Subscribe(topic.CRLTransport, 1, func(_ mqtt.Client, m mqtt.Message) { crls <- m.Payload() }); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe CRL topic: %v", tok.Error())
	}
	select {
	case b := <-crls:
		if _, err := pki.ParseCRLBundle(b); err != nil {
			t.Fatalf("retained CRL bundle: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no retained CRL bundle")
	}
	watcher, err := r.mqttClient(t, "dev-2", other, nil)
	if err != nil {
		t.Fatal(err)
	}
	crls2 := make(chan []byte, 4)
	watcher.Subscribe(topic.CRLTransport, 1, func(_ mqtt.Client, m mqtt.Message) { crls2 <- m.Payload() })
	<-crls2 // the retained one

	revoked := time.Now()
	if _, err := r.d.Transport.RevokePath(t.Context(), mustPath(t, "ms-1/acc-1/dev-1"), 1); err != nil {
		t.Fatal(err)
	}
	select {
	case <-lost:
		t.Logf("revoked session ended after %v", time.Since(revoked).Round(time.Millisecond))
	case <-time.After(5 * time.Second):
		t.Fatal("revoked device still connected 5 s after revocation")
	}
	if _, err := r.mqttClient(t, "dev-1b", dev, nil); err == nil {
		t.Fatal("revoked device could connect again")
	}
	// The other device is untouched and receives the new CRL bundle.
	select {
	case b := <-crls2:
		list, err := pki.ParseCRLBundle(b)
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, crl := range list {
			for _, e := range crl.RevokedCertificateEntries {
				found = found || e.SerialNumber.Cmp(dev.Leaf.SerialNumber) == 0
			}
		}
		if !found {
			t.Fatal("new CRL bundle does not list the revoked device")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no new CRL bundle after revocation")
	}
	if !watcher.IsConnectionOpen() {
		t.Fatal("unrevoked device was disconnected")
	}
	// Revoking the account CA ends every session below it.
	if _, err := r.d.Transport.RevokeName(t.Context(), "ms-1/acc-1", true, 2); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for watcher.IsConnectionOpen() && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if watcher.IsConnectionOpen() {
		t.Fatal("device below a revoked account CA still connected after 5 s")
	}
}

// TestMetricsAccess: /metrics needs an admin service certificate.
func TestMetricsAccess(t *testing.T) {
	r := start(t)
	if err := r.d.Store.SetServiceRole(t.Context(), "ops", "admin"); err != nil {
		t.Fatal(err)
	}
	admin := r.credentials(t, pki.LeafRequest{Service: "ops"})
	dev := r.credentials(t, pki.LeafRequest{Path: mustPath(t, "ms-1/acc-1/dev-1")})
	time.Sleep(2 * revocationPoll) // the platform picks up the new role
	if _, err := r.mqttClient(t, "dev-1", dev, nil); err != nil {
		t.Fatal(err)
	}
	// A refused connection: the admin service has no business on MQTT here
	// other than as admin, but an unknown service has no role at all.
	nobody := r.credentials(t, pki.LeafRequest{Service: "nobody"})
	if _, err := r.mqttClient(t, "nobody", nobody, nil); err == nil {
		t.Fatal("a service without a role connected")
	}
	get := func(cert *tls.Certificate) (int, string) {
		conf := &tls.Config{RootCAs: r.transport}
		if cert != nil {
			conf.Certificates = []tls.Certificate{*cert}
		}
		c := &http.Client{Transport: &http.Transport{TLSClientConfig: conf}, Timeout: 10 * time.Second}
		resp, err := c.Get("https://" + r.httpAddr + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get(nil); code != http.StatusUnauthorized {
		t.Fatalf("no certificate: %d", code)
	}
	if code, _ := get(&dev); code != http.StatusForbidden {
		t.Fatalf("device certificate: %d", code)
	}
	code, body := get(&admin)
	if code != http.StatusOK || !strings.Contains(body, "fieldtrust_broker_connections_total") || !strings.Contains(body, "fieldtrust_broker_refusals_total{") {
		t.Fatalf("admin: %d\n%.500s", code, body)
	}
}

func mustPath(t *testing.T, s string) pki.Path {
	p, err := pki.ParsePath(s)
	if err != nil {
		t.Fatal(err)
	}
	return p
}
