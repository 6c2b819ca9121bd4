package envelope

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha1"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// A small DSL for test PKIs:
//
//	root := newTestRoot(t, "root")
//	acc := root.issueCA("acc-1")
//	dev := acc.issueLeaf("dev-1", elliptic.P256())
//	acc.revoke(dev)
//	crl := acc.crl()
//
// Every certificate carries a subject key identifier (RFC 5280 method 1),
// leaves have key usage digitalSignature|keyAgreement and no EKU, so the
// same certificate can sign and receive (as the e2e PKI issues them) and
// OpenSSL accepts it for CMS.

var testSerial atomic.Int64

// testNow is the fixed "now" of the test PKI: certificates are valid from
// an hour before to a year after.
var testNow = time.Now().Truncate(time.Second)

type testCA struct {
	t       testing.TB
	cert    *x509.Certificate
	key     *ecdsa.PrivateKey
	chain   []*x509.Certificate // intermediates above this CA, nearest first, root excluded
	root    *testCA
	revoked []x509.RevocationListEntry
}

type testLeaf struct {
	cert  *x509.Certificate
	key   *ecdsa.PrivateKey
	chain []*x509.Certificate // intermediates, nearest first, root excluded
	ca    *testCA
}

func ski(pub *ecdsa.PublicKey) []byte {
	b, err := pub.Bytes()
	if err != nil {
		panic(err)
	}
	h := sha1.Sum(b)
	return h[:]
}

func newTestRoot(t testing.TB, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(testSerial.Add(1)),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             testNow.Add(-time.Hour),
		NotAfter:              testNow.Add(365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		SubjectKeyId:          ski(&key.PublicKey),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	ca := &testCA{t: t, cert: c, key: key}
	ca.root = ca
	return ca
}

func (ca *testCA) issue(tmpl *x509.Certificate, pub *ecdsa.PublicKey) *x509.Certificate {
	ca.t.Helper()
	tmpl.SerialNumber = big.NewInt(testSerial.Add(1))
	if tmpl.NotBefore.IsZero() {
		tmpl.NotBefore = testNow.Add(-time.Hour)
		tmpl.NotAfter = testNow.Add(365 * 24 * time.Hour)
	}
	tmpl.SubjectKeyId = ski(pub)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.key)
	if err != nil {
		ca.t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		ca.t.Fatal(err)
	}
	return c
}

// issueCA issues an intermediate CA below ca.
func (ca *testCA) issueCA(name string) *testCA {
	ca.t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		ca.t.Fatal(err)
	}
	c := ca.issue(&x509.Certificate{
		Subject:               pkix.Name{CommonName: name},
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}, &key.PublicKey)
	var chain []*x509.Certificate
	if ca.root != ca {
		chain = append([]*x509.Certificate{ca.cert}, ca.chain...)
	}
	return &testCA{t: ca.t, cert: c, key: key, chain: chain, root: ca.root}
}

// issueLeaf issues an end-entity certificate on curve below ca.
func (ca *testCA) issueLeaf(name string, curve elliptic.Curve) *testLeaf {
	ca.t.Helper()
	key, err := ecdsa.GenerateKey(curve, rand.Reader)
	if err != nil {
		ca.t.Fatal(err)
	}
	c := ca.issue(&x509.Certificate{
		Subject:               pkix.Name{CommonName: name},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyAgreement,
		BasicConstraintsValid: true,
	}, &key.PublicKey)
	var chain []*x509.Certificate
	if ca.root != ca {
		chain = append([]*x509.Certificate{ca.cert}, ca.chain...)
	}
	return &testLeaf{cert: c, key: key, chain: chain, ca: ca}
}

// revoke puts c on ca's CRL.
func (ca *testCA) revoke(c *x509.Certificate) {
	ca.revoked = append(ca.revoked, x509.RevocationListEntry{SerialNumber: c.SerialNumber, RevocationTime: testNow.Add(-time.Minute)})
}

// crl returns a current CRL of ca.
func (ca *testCA) crl() *x509.RevocationList {
	ca.t.Helper()
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		Number:                    big.NewInt(testSerial.Add(1)),
		ThisUpdate:                testNow.Add(-time.Hour),
		NextUpdate:                testNow.Add(24 * time.Hour),
		RevokedCertificateEntries: ca.revoked,
	}, ca.cert, ca.key)
	if err != nil {
		ca.t.Fatal(err)
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		ca.t.Fatal(err)
	}
	return crl
}

// verifier returns a ChainVerifier trusting ca's root, with the given CRLs.
func (ca *testCA) verifier(crls ...*x509.RevocationList) *ChainVerifier {
	roots := x509.NewCertPool()
	roots.AddCert(ca.root.cert)
	return &ChainVerifier{Roots: roots, CRLs: crls}
}

func (l *testLeaf) signer(embed bool) *Signer {
	return &Signer{Cert: l.cert, Key: l.key, Chain: l.chain, EmbedCerts: embed}
}

// opener returns an Opener for l that trusts l's root and looks signers up in pool.
func (l *testLeaf) opener(t testing.TB, opts OpenOptions) *Opener {
	t.Helper()
	o, err := NewOpener(l.cert, l.key, opts)
	if err != nil {
		t.Fatal(err)
	}
	return o
}

// Files for OpenSSL.

func writePEM(t testing.TB, dir, name, typ string, ders ...[]byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	var out []byte
	for _, d := range ders {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: d})...)
	}
	if err := os.WriteFile(p, out, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func writeKey(t testing.TB, dir, name string, key *ecdsa.PrivateKey) string {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return writePEM(t, dir, name, "PRIVATE KEY", der)
}

func writeCert(t testing.TB, dir, name string, certs ...*x509.Certificate) string {
	t.Helper()
	var ders [][]byte
	for _, c := range certs {
		ders = append(ders, c.Raw)
	}
	return writePEM(t, dir, name, "CERTIFICATE", ders...)
}
