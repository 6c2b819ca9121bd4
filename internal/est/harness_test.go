package est_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/datadir"
	"github.com/fieldtrust/fieldtrust/internal/est"
	"github.com/fieldtrust/fieldtrust/internal/logbuf"
	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/tlspolicy"
)

// platform is a data directory with an EST server on loopback, configured
// as the real platform is: TLS policy from tlspolicy, client certificates
// requested but verified by the handlers.
type platform struct {
	d        *datadir.Dir
	verifier *pki.Verifier
	srv      *httptest.Server
	url      string
	roots    *x509.CertPool
	logs     *logbuf.Buffer
	// guarded is a non-EST route behind est.GuardOperational.
	guarded string
}

func newPlatform(t testing.TB, policy est.Policy) *platform {
	t.Helper()
	ctx := t.Context()
	d, err := datadir.Open(ctx, t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	v, err := d.Transport.Verifier(ctx)
	if err != nil {
		t.Fatal(err)
	}
	logs := &logbuf.Buffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	s, err := est.New(est.Options{Transport: d.Transport, E2E: d.E2E, Verifier: v, Records: d.Store, Policy: policy, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle(est.PathPrefix, s)
	mux.Handle("/other", est.GuardOperational(v, log, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, ok := est.IdentityFromContext(r.Context())
		if ok != (r.TLS != nil && len(r.TLS.VerifiedChains) == 1) {
			http.Error(w, "guard did not pass the verified chain on", 500)
			return
		}
		io.WriteString(w, "hello "+map[bool]string{true: id.String(), false: "anonymous"}[ok])
	})))

	key, err := pki.GenerateKey(elliptic.P256())
	if err != nil {
		t.Fatal(err)
	}
	iss, err := d.Transport.Issue(ctx, pki.LeafRequest{Service: "platform", PublicKey: key.Public(), IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}})
	if err != nil {
		t.Fatal(err)
	}
	serverCert := tlsCert(iss.Chain, key)
	conf := tlspolicy.Server(nil, nil, tls.RequestClientCert, nil)
	conf.Certificates = []tls.Certificate{serverCert}
	srv := httptest.NewUnstartedServer(mux)
	srv.TLS = conf
	srv.Config.ErrorLog = slog.NewLogLogger(log.Handler(), slog.LevelDebug)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	roots := x509.NewCertPool()
	roots.AddCert(d.Transport.Root())
	return &platform{d: d, verifier: v, srv: srv, url: srv.URL, roots: roots, logs: logs, guarded: srv.URL + "/other"}
}

func tlsCert(chain []*x509.Certificate, key crypto.Signer) tls.Certificate {
	c := tls.Certificate{PrivateKey: key, Leaf: chain[0]}
	for _, x := range chain {
		c.Certificate = append(c.Certificate, x.Raw)
	}
	return c
}

// certCount is how many certificates the store has recorded: refusals must
// not change it.
func (p *platform) certCount(t testing.TB) int {
	t.Helper()
	list, err := p.d.Store.ListCertificates(t.Context(), store.CertFilter{})
	if err != nil {
		t.Fatal(err)
	}
	return len(list)
}

// client returns an EST client presenting cert (nil: none).
func (p *platform) client(cert *tls.Certificate, label string) *est.Client {
	return &est.Client{URL: p.url, Label: label, TLS: tlspolicy.Client(p.roots, cert)}
}

// httpClient returns a plain HTTPS client presenting cert, for hand-made
// requests.
func (p *platform) httpClient(cert *tls.Certificate) *http.Client {
	return &http.Client{Transport: &http.Transport{TLSClientConfig: tlspolicy.Client(p.roots, cert)}, Timeout: 30 * time.Second}
}

// post sends body to an EST path and returns the status and body.
func (p *platform) post(t testing.TB, cert *tls.Certificate, path, contentType string, body []byte) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, p.url+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	c := p.httpClient(cert)
	defer c.CloseIdleConnections()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// trust adds a manufacturer CA to the store, as 'fieldtrust manufacturer
// trust' does.
func (p *platform) trust(t testing.TB, m *manufacturer) {
	t.Helper()
	sum := sha256.Sum256(m.root.Raw)
	if err := p.d.Store.AddManufacturer(t.Context(), store.Manufacturer{
		Fingerprint: hex.EncodeToString(sum[:]), Subject: m.root.Subject.String(), NotAfter: m.root.NotAfter, DER: m.root.Raw, AddedAt: time.Now(),
	}); err != nil {
		t.Fatal(err)
	}
}

// claim pre-assigns a device of manufacturer m by serial or subject, as
// 'fieldtrust device claim' does: under m's trusted CA.
func (p *platform) claim(t testing.TB, m *manufacturer, kind, value, path string) {
	t.Helper()
	if err := p.d.Store.PutClaims(t.Context(), []store.Claim{{ClaimKey: m.key(kind, value), ManufacturerSubject: m.root.Subject.String(), Path: path, CreatedAt: time.Now()}}); err != nil {
		t.Fatal(err)
	}
}

// key is the key of a claim of m's device.
func (m *manufacturer) key(kind, value string) store.ClaimKey {
	return store.ClaimKey{ManufacturerKeyID: pki.KeyID(m.root), Kind: kind, Value: value}
}

// operational issues an operational transport certificate directly.
func (p *platform) operational(t testing.TB, path string) tls.Certificate {
	t.Helper()
	return p.operationalReq(t, path, false)
}

// site issues the site certificate of an account.
func (p *platform) site(t testing.TB, path string) tls.Certificate {
	t.Helper()
	return p.operationalReq(t, path, true)
}

func (p *platform) operationalReq(t testing.TB, path string, site bool) tls.Certificate {
	t.Helper()
	key, err := pki.GenerateKey(elliptic.P256())
	if err != nil {
		t.Fatal(err)
	}
	pp, err := pki.ParsePath(path)
	if err != nil {
		t.Fatal(err)
	}
	iss, err := p.d.Transport.Issue(t.Context(), pki.LeafRequest{Path: pp, PublicKey: key.Public(), Site: site})
	if err != nil {
		t.Fatal(err)
	}
	return tlsCert(iss.Chain, key)
}

// manufacturer is a device maker's onboarding PKI: a root and an
// intermediate that issues device certificates (IDevIDs), as IEEE 802.1AR
// suggests.
type manufacturer struct {
	root, inter       *x509.Certificate
	rootKey, interKey *ecdsa.PrivateKey
}

func newManufacturer(t testing.TB, name string) *manufacturer {
	t.Helper()
	m := &manufacturer{}
	m.rootKey, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	m.interKey, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	m.root = sign(t, &x509.Certificate{
		Subject: pkix.Name{CommonName: name + " IDevID Root CA", Organization: []string{name}},
		IsCA:    true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}, nil, m.rootKey.Public(), m.rootKey)
	m.inter = sign(t, &x509.Certificate{
		Subject: pkix.Name{CommonName: name + " IDevID Issuing CA", Organization: []string{name}},
		IsCA:    true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign, MaxPathLenZero: true,
	}, m.root, m.interKey.Public(), m.rootKey)
	return m
}

// device issues an onboarding certificate for a device with serial number
// cn, presented with the manufacturer's intermediate.
func (m *manufacturer) device(t testing.TB, cn string) tls.Certificate {
	return m.deviceWithSerial(t, cn, nil)
}

// deviceWithSerial is device with a chosen certificate serial (nil:
// random), e.g. the serial of another manufacturer's device.
func (m *manufacturer) deviceWithSerial(t testing.TB, cn string, serial *big.Int) tls.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leaf := sign(t, &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn, SerialNumber: cn, Organization: []string{m.root.Subject.Organization[0]}},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, m.inter, key.Public(), m.interKey)
	return tlsCert([]*x509.Certificate{leaf, m.inter}, key)
}

func sign(t testing.TB, tmpl, parent *x509.Certificate, pub crypto.PublicKey, key crypto.Signer) *x509.Certificate {
	t.Helper()
	if tmpl.SerialNumber == nil {
		serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
		tmpl.SerialNumber = serial.Add(serial, big.NewInt(1))
	}
	tmpl.NotBefore = time.Now().Add(-time.Hour)
	if tmpl.NotAfter.IsZero() {
		tmpl.NotAfter = time.Now().Add(20 * 365 * 24 * time.Hour)
	}
	if parent == nil {
		parent = tmpl
	}
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

// csrBody makes a base64 CSR body for a fresh P-256 key.
func csrBody(t testing.TB, cn string) ([]byte, crypto.Signer) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return est.EncodeCSRBody(der), key
}

// requireTool returns the path of a tool a test needs. Outside CI a missing
// tool skips the test; in CI (CI set) it fails, so CI cannot go green by
// running less.
func requireTool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s not installed; run 'make deps'", name)
		}
		t.Skipf("%s not installed; run 'make deps'", name)
	}
	return p
}

func contains(s string, subs ...string) bool {
	for _, x := range subs {
		if !strings.Contains(s, x) {
			return false
		}
	}
	return true
}
