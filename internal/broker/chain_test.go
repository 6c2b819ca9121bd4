package broker

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// A small DSL for test PKIs, shaped like the transport PKI:
//
//	root (pathLen 2) ─┬─ master CA "ms-acc-1" (pathLen 1) ── account CA "acc-1" (pathLen 0) ── leaf CN "ms-acc-1/acc-1/dev-1"
//	                  └─ services CA (pathLen 0) ── service leaf CN "ingest"
//
//	p := newTestPKI(t)
//	dev := p.identity("ms-acc-1/acc-1/dev-1") // tls.Certificate with its chain
//	svc := p.service("ingest")
//
// Identity leaves sit under the CA of their parent path (a master
// identity's leaf under its master CA), with CN = the full path, as the
// brief for the PKI says; the real PKI derives the path from the chain.

var serialCounter atomic.Int64

type testCA struct {
	cert  *x509.Certificate
	key   *ecdsa.PrivateKey
	chain []*x509.Certificate // from this CA up to, excluding, the root
}

type testPKI struct {
	t        testing.TB
	root     *testCA
	services *testCA
	pool     *x509.CertPool

	mu  sync.Mutex
	cas map[string]*testCA // by path ("ms-acc-1", "ms-acc-1/acc-1")
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func newTestPKI(t testing.TB) *testPKI {
	p := &testPKI{t: t, cas: map[string]*testCA{}}
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(serialCounter.Add(1)),
		Subject:               pkix.Name{CommonName: "fieldtrust test root"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            2,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	p.root = &testCA{cert: cert, key: key}
	p.pool = x509.NewCertPool()
	p.pool.AddCert(cert)
	p.services = p.root.subCA(t, "services-ca", 0)
	return p
}

func (c *testCA) subCA(t testing.TB, cn string, pathLen int) *testCA {
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(serialCounter.Add(1)),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            pathLen,
		MaxPathLenZero:        pathLen == 0,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, &key.PublicKey, c.key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert: cert, key: key, chain: append([]*x509.Certificate{cert}, c.chain...)}
}

func (c *testCA) leaf(t testing.TB, cn string, server bool) tls.Certificate {
	return c.leafUntil(t, cn, server, time.Now().Add(24*time.Hour))
}

func (c *testCA) leafUntil(t testing.TB, cn string, server bool, notAfter time.Time) tls.Certificate {
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(serialCounter.Add(1)),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
		tmpl.DNSNames = []string{"localhost"}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, &key.PublicKey, c.key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	out := tls.Certificate{PrivateKey: key, Leaf: cert, Certificate: [][]byte{der}}
	for _, ca := range c.chain {
		out.Certificate = append(out.Certificate, ca.Raw)
	}
	return out
}

// ca returns (creating on first use) the CA that issues identities
// directly below path: "" → root-level master CAs are made by caFor.
func (p *testPKI) caFor(path string) *testCA {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.caForLocked(path)
}

func (p *testPKI) caForLocked(path string) *testCA {
	if ca, ok := p.cas[path]; ok {
		return ca
	}
	parent, name := p.root, path
	pathLen := 1
	if i := strings.LastIndex(path, "/"); i >= 0 {
		parent, name, pathLen = p.caForLocked(path[:i]), path[i+1:], 0
	}
	ca := parent.subCA(p.t, name, pathLen)
	p.cas[path] = ca
	return ca
}

// identity issues a client certificate for an account identity path. The
// leaf hangs under the CA of the identity's own master or account: a master
// identity's leaf under its master CA, an account's under its account CA, a
// device's under its account CA.
func (p *testPKI) identity(path string) tls.Certificate {
	issuer := path
	if strings.Count(path, "/") == 2 {
		issuer = path[:strings.LastIndex(path, "/")]
	}
	return p.caFor(issuer).leaf(p.t, path, false)
}

func (p *testPKI) service(name string) tls.Certificate { return p.services.leaf(p.t, name, false) }

// identityUntil is identity with a chosen expiry.
func (p *testPKI) identityUntil(path string, notAfter time.Time) tls.Certificate {
	issuer := path
	if strings.Count(path, "/") == 2 {
		issuer = path[:strings.LastIndex(path, "/")]
	}
	return p.caFor(issuer).leafUntil(p.t, path, false, notAfter)
}

func (p *testPKI) server() tls.Certificate { return p.root.leaf(p.t, "broker", true) }

// writePEM writes a certificate chain and key as PEM files for external
// clients (mosquitto) and returns their paths.
func writePEM(t testing.TB, dir, name string, c tls.Certificate) (certFile, keyFile string) {
	certFile = filepath.Join(dir, name+".crt")
	keyFile = filepath.Join(dir, name+".key")
	var certPEM []byte
	for _, der := range c.Certificate {
		certPEM = append(certPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(certFile, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

func (p *testPKI) writeRoot(t testing.TB, dir string) string {
	f := filepath.Join(dir, "root.crt")
	if err := os.WriteFile(f, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: p.root.cert.Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}
