// Package platformtest runs the real platform in-process for tests of the
// packages around it (ingest, web, loadgen, ...) and acts as its clients:
// gateways and customers with real certificates from the platform's own
// PKI, over real mTLS MQTT and HTTPS. Set FIELDTRUST_TEST_LOG=1 to see the
// platform's log.
package platformtest

import (
	"context"
	"crypto"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/fieldtrust/fieldtrust/internal/datadir"
	"github.com/fieldtrust/fieldtrust/internal/envelope"
	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/platform"
)

// Env is a running platform and a second handle on its data directory, as
// the operator CLI has.
type Env struct {
	Dir                string
	HTTPAddr, MQTTAddr string
	D                  *datadir.Dir
	Roots              *x509.CertPool    // the transport root
	IngestCert         *x509.Certificate // ingest's e2e certificate: the recipient of snapshots
}

// Start runs the platform with cfg (DataDir, addresses, Ready and, unless
// set, Logger are filled in) until the test ends.
func Start(t testing.TB, cfg platform.Config) *Env {
	t.Helper()
	cfg.DataDir = t.TempDir()
	cfg.HTTPAddr, cfg.MQTTAddr = "127.0.0.1:0", "127.0.0.1:0"
	if cfg.Logger == nil { // a test may read the platform's log
		cfg.Logger = slog.New(slog.DiscardHandler)
		if os.Getenv("FIELDTRUST_TEST_LOG") != "" {
			cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
		}
	}
	ready := make(chan [2]string, 1)
	cfg.Ready = func(h, m string) { ready <- [2]string{h, m} }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- platform.Run(ctx, cfg) }()
	var a [2]string
	select {
	case a = <-ready:
	case err := <-done:
		cancel()
		t.Fatalf("platform: %v", err)
	case <-time.After(60 * time.Second):
		cancel()
		t.Fatal("platform did not start within 60 s")
	}
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Error("platform did not stop within 30 s")
		}
	})
	d, err := datadir.Open(context.Background(), cfg.DataDir, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	roots := x509.NewCertPool()
	roots.AddCert(d.Transport.Root())
	ic, err := pki.ReadCertsFile(filepath.Join(cfg.DataDir, "platform", "ingest-e2e.crt"))
	if err != nil {
		t.Fatal(err)
	}
	return &Env{Dir: cfg.DataDir, HTTPAddr: a[0], MQTTAddr: a[1], D: d, Roots: roots, IngestCert: ic[0]}
}

// Identity is a client's credentials.
type Identity struct {
	TLS     tls.Certificate
	E2E     *envelope.Signer  // nil unless asked for
	E2ECert *x509.Certificate // the e2e certificate, as a recipient
}

// Identity issues transport (and, with withE2E, e2e) credentials for an
// identity path.
func (e *Env) Identity(t testing.TB, path string, withE2E bool) Identity {
	t.Helper()
	p, err := pki.ParsePath(path)
	if err != nil {
		t.Fatal(err)
	}
	id := Identity{TLS: e.issue(t, e.D.Transport, pki.LeafRequest{Path: p})}
	if withE2E {
		c := e.issue(t, e.D.E2E, pki.LeafRequest{Path: p})
		id.E2ECert = c.Leaf
		var chain []*x509.Certificate
		for _, der := range c.Certificate[1:] {
			ca, _ := x509.ParseCertificate(der)
			chain = append(chain, ca)
		}
		id.E2E = &envelope.Signer{Cert: c.Leaf, Key: c.PrivateKey.(crypto.Signer), Chain: chain}
	}
	return id
}

// Service issues a transport service certificate and grants the role
// (the running platform picks the role up within its poll interval).
func (e *Env) Service(t testing.TB, name, role string) Identity {
	t.Helper()
	if err := e.D.Store.SetServiceRole(context.Background(), name, role); err != nil {
		t.Fatal(err)
	}
	return Identity{TLS: e.issue(t, e.D.Transport, pki.LeafRequest{Service: name})}
}

// Site issues a site certificate of account (pki issue ACCOUNT --site)
// serving 127.0.0.1.
func (e *Env) Site(t testing.TB, account string) tls.Certificate {
	t.Helper()
	p, err := pki.ParsePath(account)
	if err != nil {
		t.Fatal(err)
	}
	return e.issue(t, e.D.Transport, pki.LeafRequest{Path: p, Site: true, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}})
}

func (e *Env) issue(t testing.TB, a *pki.Authority, req pki.LeafRequest) tls.Certificate {
	t.Helper()
	key, err := pki.GenerateKey(elliptic.P256())
	if err != nil {
		t.Fatal(err)
	}
	req.PublicKey = key.Public()
	iss, err := a.Issue(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	c := tls.Certificate{PrivateKey: key, Leaf: iss.Cert}
	for _, x := range iss.Chain {
		c.Certificate = append(c.Certificate, x.Raw)
	}
	return c
}

var clientSeq atomic.Int64

// MQTT connects id to the broker (a fresh client ID, clean session) until
// the test ends.
func (e *Env) MQTT(t testing.TB, id Identity) mqtt.Client {
	t.Helper()
	c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker("ssl://" + e.MQTTAddr).
		SetClientID(fmt.Sprintf("test-%d", clientSeq.Add(1))).
		SetTLSConfig(&tls.Config{RootCAs: e.Roots, Certificates: []tls.Certificate{id.TLS}}).SetAutoReconnect(false))
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("mqtt connect: %v", tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c
}

// Get fetches an HTTPS path as id, decodes a 200 answer into out (if not
// nil) and returns the status code.
func (e *Env) Get(t testing.TB, id Identity, path string, out any) int {
	t.Helper()
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: e.Roots, Certificates: []tls.Certificate{id.TLS}}}, Timeout: 30 * time.Second}
	resp, err := c.Get("https://" + e.HTTPAddr + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil && resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s: %v\n%.500s", path, err, b)
		}
	}
	return resp.StatusCode
}
