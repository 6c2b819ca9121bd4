package bootstrap_test

import (
	"context"
	"crypto"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	pathpkg "path"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/bootstrap"
	"github.com/fieldtrust/fieldtrust/internal/datadir"
	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/tlspolicy"
	"github.com/fieldtrust/fieldtrust/internal/topic"
)

type env struct {
	d     *datadir.Dir
	url   string
	roots *x509.CertPool
	tv    *pki.Verifier
}

func newEnv(t *testing.T, ingest func(context.Context) (*x509.Certificate, error)) *env {
	t.Helper()
	ctx := t.Context()
	d, err := datadir.Open(ctx, t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	tv, err := d.Transport.Verifier(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ev, err := d.E2E.Verifier(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if ingest == nil {
		_, ingestCert := issue(t, d.E2E, pki.LeafRequest{Service: "ingest"})
		ingest = func(context.Context) (*x509.Certificate, error) { return ingestCert.Cert, nil }
	}
	h, err := bootstrap.New(bootstrap.Config{
		Brokers:         []bootstrap.Broker{{URL: "mqtts://b1.example:8883"}, {URL: "mqtts://b2.example:8883", Weight: 2}},
		PublishInterval: 30 * time.Second,
		RenewalFraction: 2.0 / 3,
		IngestE2E:       ingest,
		Transport:       tv,
		E2E:             ev,
		Records:         d.Store,
	})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle(bootstrap.Path, h)
	srvKey, srvCert := issue(t, d.Transport, pki.LeafRequest{Service: "platform", IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}})
	srv := httptest.NewUnstartedServer(mux)
	srv.TLS = tlspolicy.Server(nil, nil, tls.RequestClientCert, nil)
	srv.TLS.Certificates = []tls.Certificate{tlsCert(srvCert, srvKey)}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	roots := x509.NewCertPool()
	roots.AddCert(d.Transport.Root())
	return &env{d: d, url: srv.URL + bootstrap.Path, roots: roots, tv: tv}
}

func issue(t *testing.T, a *pki.Authority, req pki.LeafRequest) (crypto.Signer, *pki.Issued) {
	t.Helper()
	key, err := pki.GenerateKey(elliptic.P256())
	if err != nil {
		t.Fatal(err)
	}
	if req.Path == nil && req.Service == "" {
		t.Fatal("no path")
	}
	req.PublicKey = key.Public()
	iss, err := a.Issue(t.Context(), req)
	if err != nil {
		t.Fatal(err)
	}
	return key, iss
}

func path(s string) pki.Path {
	p, err := pki.ParsePath(s)
	if err != nil {
		panic(err)
	}
	return p
}

func tlsCert(iss *pki.Issued, key crypto.Signer) tls.Certificate {
	c := tls.Certificate{PrivateKey: key, Leaf: iss.Cert}
	for _, x := range iss.Chain {
		c.Certificate = append(c.Certificate, x.Raw)
	}
	return c
}

func (e *env) get(t *testing.T, cert *tls.Certificate) (int, []byte) {
	t.Helper()
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: tlspolicy.Client(e.roots, cert)}}
	defer c.CloseIdleConnections()
	resp, err := c.Get(e.url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// TestBootstrap: a gateway gets its brokers, recipients and timers; the
// recipients are the ingest service and the newest valid e2e certificates
// of its account and master account.
func TestBootstrap(t *testing.T) {
	ctx := t.Context()
	e := newEnv(t, nil)
	key, gw := issue(t, e.d.Transport, pki.LeafRequest{Path: path("ms-1/acc-1/gw-1")})
	gwCert := tlsCert(gw, key)

	// Account: an old certificate, a newer one, and a newest that is revoked.
	_, old := issue(t, e.d.E2E, pki.LeafRequest{Path: path("ms-1/acc-1"), NotBefore: time.Now().Add(-2 * time.Hour)})
	_, acc := issue(t, e.d.E2E, pki.LeafRequest{Path: path("ms-1/acc-1"), NotBefore: time.Now().Add(-time.Hour)})
	_, revoked := issue(t, e.d.E2E, pki.LeafRequest{Path: path("ms-1/acc-1")})
	if _, err := e.d.E2E.Revoke(ctx, revoked.Cert.SerialNumber, 1); err != nil {
		t.Fatal(err)
	}
	_ = old
	status, body := e.get(t, &gwCert)
	if status != 200 {
		t.Fatalf("bootstrap: %d %s", status, body)
	}
	var doc bootstrap.Document
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&doc); err != nil {
		t.Fatal(err)
	}
	if doc.Version != bootstrap.SchemaVersion || doc.Identity != "ms-1/acc-1/gw-1" || len(doc.Brokers) != 2 ||
		doc.PublishIntervalSeconds != 30 || doc.RenewalFraction < 0.66 || doc.RenewalFraction > 0.67 || doc.CRLTopic != topic.CRLTransport {
		t.Fatalf("document = %+v", doc)
	}
	if len(doc.Recipients) != 2 || doc.Recipients[0].Role != bootstrap.RoleIngest || doc.Recipients[1].Role != bootstrap.RoleAccount {
		t.Fatalf("recipients = %+v; want ingest and account (no master e2e certificate exists)", doc.Recipients)
	}
	certs, err := pki.ParseCertsPEM([]byte(doc.Recipients[1].Certificate))
	if err != nil || !certs[0].Equal(acc.Cert) {
		t.Fatalf("account recipient is not the newest valid certificate: %v", err)
	}

	// A master-level certificate appears once it exists.
	_, master := issue(t, e.d.E2E, pki.LeafRequest{Path: path("ms-1")})
	status, body = e.get(t, &gwCert)
	json.Unmarshal(body, &doc)
	if status != 200 || len(doc.Recipients) != 3 || doc.Recipients[2].Role != bootstrap.RoleMaster || doc.Recipients[2].Identity != "ms-1" {
		t.Fatalf("with master: %d %+v", status, doc.Recipients)
	}
	if c, _ := pki.ParseCertsPEM([]byte(doc.Recipients[2].Certificate)); !c[0].Equal(master.Cert) {
		t.Fatal("master recipient certificate")
	}
	// Revoking the account's e2e CA removes the account recipient.
	if _, err := e.d.E2E.RevokeName(ctx, "ms-1/acc-1", true, 1); err != nil {
		t.Fatal(err)
	}
	status, body = e.get(t, &gwCert)
	doc = bootstrap.Document{}
	json.Unmarshal(body, &doc)
	if status != 200 || len(doc.Recipients) != 2 || doc.Recipients[1].Role != bootstrap.RoleMaster {
		t.Fatalf("after revoking the account e2e CA: %d %+v", status, doc.Recipients)
	}
}

func TestBootstrapRefusals(t *testing.T) {
	ctx := t.Context()
	e := newEnv(t, nil)
	key, rev := issue(t, e.d.Transport, pki.LeafRequest{Path: path("ms-1/acc-1/gw-2")})
	revoked := tlsCert(rev, key)
	if _, err := e.d.Transport.Revoke(ctx, rev.Cert.SerialNumber, 1); err != nil {
		t.Fatal(err)
	}
	if _, err := e.tv.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	skey, svc := issue(t, e.d.Transport, pki.LeafRequest{Service: "ingest"})
	service := tlsCert(svc, skey)
	// A certificate from outside the transport PKI (e.g. an onboarding one).
	okey, _ := pki.GenerateKey(elliptic.P256())
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "ACME-GW-1"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, _ := x509.CreateCertificate(nil, tmpl, tmpl, okey.Public(), okey)
	foreign := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: okey}
	for _, tt := range []struct {
		name string
		cert *tls.Certificate
		code int
	}{
		{"no certificate", nil, 401},
		{"foreign certificate", &foreign, 401},
		{"revoked", &revoked, 403},
		{"service", &service, 403},
	} {
		if code, body := e.get(t, tt.cert); code != tt.code {
			t.Errorf("%s: %d %s, want %d", tt.name, code, body, tt.code)
		}
	}
}

// TestBootstrapNoIngest: without the ingest certificate the gateway could
// not seal; it is told to come back.
func TestBootstrapNoIngest(t *testing.T) {
	e := newEnv(t, func(context.Context) (*x509.Certificate, error) { return nil, errors.New("ingest not issued yet") })
	key, gw := issue(t, e.d.Transport, pki.LeafRequest{Path: path("ms-1/acc-1/gw-3")})
	c := tlsCert(gw, key)
	if code, body := e.get(t, &c); code != 503 {
		t.Fatalf("%d %s, want 503", code, body)
	}
}

func TestNewValidates(t *testing.T) {
	base := func() bootstrap.Config {
		return bootstrap.Config{
			Brokers: []bootstrap.Broker{{URL: "mqtts://b:8883"}}, PublishInterval: time.Second, RenewalFraction: 0.5,
			IngestE2E: func(context.Context) (*x509.Certificate, error) { return nil, nil },
			Transport: pki.NewVerifier(pki.Transport, &x509.Certificate{}, nil, nil), E2E: pki.NewVerifier(pki.E2E, &x509.Certificate{}, nil, nil), Records: nilRecords{},
		}
	}
	if _, err := bootstrap.New(base()); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	for name, mutate := range map[string]func(*bootstrap.Config){
		"no brokers":     func(c *bootstrap.Config) { c.Brokers = nil },
		"zero interval":  func(c *bootstrap.Config) { c.PublishInterval = 0 },
		"fraction 1":     func(c *bootstrap.Config) { c.RenewalFraction = 1 },
		"fraction 0":     func(c *bootstrap.Config) { c.RenewalFraction = 0 },
		"no ingest":      func(c *bootstrap.Config) { c.IngestE2E = nil },
		"plain mqtt URL": func(c *bootstrap.Config) { c.Brokers = []bootstrap.Broker{{URL: "mqtt://b:1883"}} },
	} {
		c := base()
		mutate(&c)
		if _, err := bootstrap.New(c); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

type nilRecords struct{}

func (nilRecords) ListCertificates(context.Context, store.CertFilter) ([]store.Certificate, error) {
	return nil, nil
}

// TestBootstrapRefusesReservedNames: an identity named like the platform's
// own topics (a master CA "pki", as the root key could have minted before
// the names were reserved) gets no configuration; the broker refuses it
// too. A 401 carries a WWW-Authenticate challenge.
func TestBootstrapRefusesReservedNames(t *testing.T) {
	e := newEnv(t, nil)
	rootKey, err := pki.ReadKeyFile(filepath.Join(e.d.Path, "pki", "transport", "root.key"), nil)
	if err != nil {
		t.Fatal(err)
	}
	caKey, _ := pki.GenerateKey(elliptic.P384())
	sign := func(tmpl, parent *x509.Certificate, pub crypto.PublicKey, key crypto.Signer) *x509.Certificate {
		t.Helper()
		tmpl.SerialNumber = big.NewInt(time.Now().UnixNano())
		tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(time.Hour)
		tmpl.BasicConstraintsValid = true
		der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, key)
		if err != nil {
			t.Fatal(err)
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	ca := sign(&x509.Certificate{Subject: pkix.Name{CommonName: "pki"}, IsCA: true, MaxPathLen: 1, KeyUsage: x509.KeyUsageCertSign}, e.d.Transport.Root(), caKey.Public(), rootKey)
	leafKey, _ := pki.GenerateKey(elliptic.P256())
	reservedPath := pathpkg.Dir(topic.CRLTransport) // an identity named like the platform's own topics
	leaf := sign(&x509.Certificate{Subject: pkix.Name{CommonName: reservedPath}, KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, ca, leafKey.Public(), caKey)
	reserved := tls.Certificate{Certificate: [][]byte{leaf.Raw, ca.Raw}, PrivateKey: leafKey, Leaf: leaf}
	if code, body := e.get(t, &reserved); code != http.StatusUnauthorized || strings.Contains(string(body), `"identity"`) {
		t.Fatalf("identity %s: %d %s, want 401", reservedPath, code, body)
	}
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: tlspolicy.Client(e.roots, nil)}}
	defer c.CloseIdleConnections()
	resp, err := c.Get(e.url)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized || !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "TLS-Client-Certificate ") {
		t.Fatalf("no certificate: %d, WWW-Authenticate %q", resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
	}
}
