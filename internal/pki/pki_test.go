package pki

import (
	"bytes"
	"context"
	"crypto"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/store/sqlite"
)

// testPKI is one data directory with both trust domains open.
type testPKI struct {
	dir string
	db  *sqlite.Store
	t   *Authority // transport
	e   *Authority // e2e
}

func newTestPKI(t *testing.T, opts Options) *testPKI {
	t.Helper()
	dir := t.TempDir()
	db, err := sqlite.Open(t.Context(), filepath.Join(dir, "fieldtrust.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	tr, err := Open(t.Context(), dir, Transport, db, opts)
	if err != nil {
		t.Fatal(err)
	}
	e, err := Open(t.Context(), dir, E2E, db, opts)
	if err != nil {
		t.Fatal(err)
	}
	return &testPKI{dir: dir, db: db, t: tr, e: e}
}

// issue issues a leaf for path with a fresh key.
func issue(t *testing.T, a *Authority, path string) (*Issued, crypto.Signer) {
	t.Helper()
	key, err := GenerateKey(elliptic.P256())
	if err != nil {
		t.Fatal(err)
	}
	iss, err := a.Issue(t.Context(), LeafRequest{Path: mustPath(t, path), PublicKey: key.Public()})
	if err != nil {
		t.Fatal(err)
	}
	return iss, key
}

// forge signs a certificate for cn with the key of the CA stored under
// caName, bypassing Issue: what an attacker holding that CA key can do.
func forge(t *testing.T, a *Authority, caName string, issuer *x509.Certificate, cn string, isCA bool) *x509.Certificate {
	t.Helper()
	key, _ := GenerateKey(elliptic.P256())
	signer, err := a.caKey(caName)
	if err != nil {
		t.Fatal(err)
	}
	return signWith(t, issuer, signer, cn, isCA, key.Public())
}

func signWith(t *testing.T, issuer *x509.Certificate, signer crypto.Signer, cn string, isCA bool, pub crypto.PublicKey) *x509.Certificate {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		BasicConstraintsValid: true,
		IsCA:                  isCA,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, issuer, pub, signer)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// signTemplate completes tmpl as a clientAuth certificate valid for an hour
// and signs it with signer, bypassing Issue.
func signTemplate(t *testing.T, issuer *x509.Certificate, signer crypto.Signer, tmpl *x509.Certificate, pub crypto.PublicKey) *x509.Certificate {
	t.Helper()
	serial, _ := newSerial()
	tmpl.SerialNumber = serial
	tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(time.Hour)
	tmpl.BasicConstraintsValid = true
	if tmpl.IsCA {
		tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign
	} else {
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, issuer, pub, signer)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestIssueChainShape(t *testing.T) {
	p := newTestPKI(t, Options{})
	iss, _ := issue(t, p.t, "ms-acc-1/acc-1/dev-1")
	if got := strings.Join(iss.CreatedCAs, ","); got != "ms-acc-1,ms-acc-1/acc-1" {
		t.Fatalf("CreatedCAs = %q", got)
	}
	if len(iss.Chain) != 3 {
		t.Fatalf("chain has %d certificates, want leaf + 2 CAs", len(iss.Chain))
	}
	leaf, acct, master, root := iss.Chain[0], iss.Chain[1], iss.Chain[2], iss.Root
	checks := []struct {
		name  string
		c     *x509.Certificate
		isCA  bool
		plen  int
		cn    string
		maxNA time.Duration
	}{
		{"root", root, true, 2, "fieldtrust transport root CA", RootValidity},
		{"master", master, true, 1, "ms-acc-1", MasterCAValidity},
		{"account", acct, true, 0, "acc-1", AccountCAValidity},
		{"leaf", leaf, false, -1, "ms-acc-1/acc-1/dev-1", DefaultLeafValidity},
	}
	for _, c := range checks {
		if c.c.IsCA != c.isCA {
			t.Errorf("%s IsCA = %v", c.name, c.c.IsCA)
		}
		if c.isCA {
			if c.c.MaxPathLen != c.plen {
				t.Errorf("%s MaxPathLen = %d, want %d", c.name, c.c.MaxPathLen, c.plen)
			}
			if c.c.KeyUsage&(x509.KeyUsageCertSign|x509.KeyUsageCRLSign) != x509.KeyUsageCertSign|x509.KeyUsageCRLSign {
				t.Errorf("%s lacks certSign/cRLSign", c.name)
			}
		}
		if c.c.Subject.CommonName != c.cn {
			t.Errorf("%s CN = %q, want %q", c.name, c.c.Subject.CommonName, c.cn)
		}
		if len(c.c.SubjectKeyId) == 0 {
			t.Errorf("%s has no SubjectKeyId", c.name)
		}
		if c.name != "root" && !bytes.Equal(c.c.AuthorityKeyId, mustIssuer(t, iss, c.c).SubjectKeyId) {
			t.Errorf("%s AuthorityKeyId does not match its issuer", c.name)
		}
		if life := c.c.NotAfter.Sub(c.c.NotBefore); life > c.maxNA+time.Hour || life < c.maxNA-time.Hour {
			t.Errorf("%s lifetime %v, want about %v", c.name, life, c.maxNA)
		}
		if c.c.SerialNumber.BitLen() < 100 || c.c.SerialNumber.BitLen() > 128 {
			t.Errorf("%s serial has %d bits, want a random 128-bit number", c.name, c.c.SerialNumber.BitLen())
		}
	}
	if len(leaf.ExtKeyUsage) != 1 || leaf.ExtKeyUsage[0] != x509.ExtKeyUsageClientAuth {
		t.Errorf("leaf EKU = %v, want clientAuth", leaf.ExtKeyUsage)
	}
	// A second device reuses the CAs.
	iss2, _ := issue(t, p.t, "ms-acc-1/acc-1/dev-2")
	if len(iss2.CreatedCAs) != 0 || !iss2.Chain[1].Equal(acct) {
		t.Fatalf("second device created CAs %v", iss2.CreatedCAs)
	}
	// Keys are private.
	for _, f := range []string{"root.key", "services.key", "ca/ms-acc-1.key", "ca/ms-acc-1+acc-1.key"} {
		st, err := os.Stat(filepath.Join(p.dir, "pki", "transport", f))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %v, want 0600", f, st.Mode().Perm())
		}
	}
}

func mustIssuer(t *testing.T, iss *Issued, c *x509.Certificate) *x509.Certificate {
	for _, cand := range append(iss.Chain, iss.Root) {
		if err := c.CheckSignatureFrom(cand); err == nil && !cand.Equal(c) {
			return cand
		}
	}
	t.Fatalf("no issuer for %s", c.Subject.CommonName)
	return nil
}

func TestIdentity(t *testing.T) {
	p := newTestPKI(t, Options{})
	ctx := t.Context()
	v, err := p.t.Verifier(ctx)
	if err != nil {
		t.Fatal(err)
	}
	dev, _ := issue(t, p.t, "ms-acc-1/acc-1/dev-1")
	acc, _ := issue(t, p.t, "ms-acc-1/acc-1")
	mst, _ := issue(t, p.t, "ms-acc-1")
	issue(t, p.t, "ms-acc-1/acc-2/dev-1")
	svcKey, _ := GenerateKey(elliptic.P256())
	svc, err := p.t.Issue(ctx, LeafRequest{Service: "ingest", PublicKey: svcKey.Public()})
	if err != nil {
		t.Fatal(err)
	}
	accountCA, masterCA := dev.Chain[1], dev.Chain[2]

	tests := []struct {
		name    string
		leaf    *x509.Certificate
		inter   []*x509.Certificate
		want    string
		wantErr error
	}{
		{"device", dev.Cert, dev.Chain[1:], "ms-acc-1/acc-1/dev-1", nil},
		{"account", acc.Cert, acc.Chain[1:], "ms-acc-1/acc-1", nil},
		{"master", mst.Cert, mst.Chain[1:], "ms-acc-1", nil},
		{"service", svc.Cert, svc.Chain[1:], "service:ingest", nil},
		{"account CA mints into another account", forge(t, p.t, "ms-acc-1+acc-1", accountCA, "ms-acc-1/acc-2/dev-1", false), dev.Chain[1:], "", ErrNotInNamespace},
		{"account CA mints into another master", forge(t, p.t, "ms-acc-1+acc-1", accountCA, "ms-acc-2/acc-1/dev-1", false), dev.Chain[1:], "", ErrNotInNamespace},
		{"account CA mints its master", forge(t, p.t, "ms-acc-1+acc-1", accountCA, "ms-acc-1", false), dev.Chain[1:], "", ErrNotInNamespace},
		{"master CA skips the account CA", forge(t, p.t, "ms-acc-1", masterCA, "ms-acc-1/acc-1/dev-9", false), dev.Chain[2:], "", ErrNotInNamespace},
		{"account CA mints a bad path", forge(t, p.t, "ms-acc-1+acc-1", accountCA, "ms-acc-1/acc-1/#", false), dev.Chain[1:], "", ErrInvalidPath},
		{"account CA mints a deep path", forge(t, p.t, "ms-acc-1+acc-1", accountCA, "ms-acc-1/acc-1/dev-1/x", false), dev.Chain[1:], "", ErrInvalidPath},
		{"a CA certificate used as a leaf", forge(t, p.t, "ms-acc-1+acc-1", accountCA, "ms-acc-1/acc-1/dev-1", true), dev.Chain[1:], "", ErrNotInNamespace},
		{"services CA mints an account identity", forge(t, p.t, "services", p.t.ServicesCA(), "ms-acc-1/acc-1/dev-1", false), []*x509.Certificate{p.t.ServicesCA()}, "service:", ErrInvalidPath},
	}
	// A leaf cannot sign: a certificate issued by dev-1's key does not verify.
	_, devKey := issue(t, p.t, "ms-acc-1/acc-1/dev-3")
	dev3 := mustLeaf(t, p, "ms-acc-1/acc-1/dev-3")
	k2, _ := GenerateKey(elliptic.P256())
	byLeaf := signWith(t, dev3, devKey, "ms-acc-1/acc-1/dev-3", false, k2.Public())
	tests = append(tests, struct {
		name    string
		leaf    *x509.Certificate
		inter   []*x509.Certificate
		want    string
		wantErr error
	}{"leaf signs a leaf", byLeaf, []*x509.Certificate{dev3, accountCA, masterCA}, "", ErrUntrusted})

	// What the CA keys can mint that the identity rules must still refuse:
	// a leaf with two CN attributes (Go reads the last, other brokers the
	// first), an RSA key below EST's minimum, and identities below a
	// master CA named like the platform's own topics (pki/crl/...).
	accountKey := mustKey(t, p.t, "ms-acc-1+acc-1")
	twoCNs := signTemplate(t, accountCA, accountKey, &x509.Certificate{Subject: pkix.Name{ExtraNames: []pkix.AttributeTypeAndValue{
		{Type: oidCommonName, Value: "ms-acc-1/acc-1/victim"}, {Type: oidCommonName, Value: "ms-acc-1/acc-1/dev-1"},
	}}}, k2.Public())
	rsa1024, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	weak := signTemplate(t, accountCA, accountKey, &x509.Certificate{Subject: pkix.Name{CommonName: "ms-acc-1/acc-1/weak"}}, rsa1024.Public())
	rsa2048, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	strong := signTemplate(t, accountCA, accountKey, &x509.Certificate{Subject: pkix.Name{CommonName: "ms-acc-1/acc-1/strong"}}, rsa2048.Public())
	pkiCAKey, _ := GenerateKey(elliptic.P384())
	pkiCA := signTemplate(t, p.t.Root(), mustKey(t, p.t, "root"), &x509.Certificate{Subject: pkix.Name{CommonName: "pki"}, IsCA: true, MaxPathLen: 1}, pkiCAKey.Public())
	pkiLeaf := signTemplate(t, pkiCA, pkiCAKey, &x509.Certificate{Subject: pkix.Name{CommonName: "pki"}}, k2.Public())
	for _, row := range []struct {
		name    string
		leaf    *x509.Certificate
		inter   []*x509.Certificate
		want    string
		wantErr error
	}{
		{"two common names", twoCNs, dev.Chain[1:], "", ErrNotInNamespace},
		{"RSA-1024 key", weak, dev.Chain[1:], "", ErrKeyNotAccepted},
		{"RSA-2048 key", strong, dev.Chain[1:], "ms-acc-1/acc-1/strong", nil},
		{"identity named like the CRL topics", pkiLeaf, []*x509.Certificate{pkiCA}, "", ErrInvalidPath},
	} {
		tests = append(tests, row)
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, _, err := v.Verify(tt.leaf, tt.inter, time.Time{}, x509.ExtKeyUsageClientAuth)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v (identity %v)", err, tt.wantErr, id)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if id.String() != tt.want {
				t.Fatalf("identity = %q, want %q", id, tt.want)
			}
		})
	}
}

func mustLeaf(t *testing.T, p *testPKI, name string) *x509.Certificate {
	t.Helper()
	recs, err := p.db.ListCertificates(t.Context(), storeFilter(name))
	if err != nil || len(recs) == 0 {
		t.Fatalf("no certificate for %s: %v", name, err)
	}
	c, err := x509.ParseCertificate(recs[len(recs)-1].DER)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestDomainsAreSeparate(t *testing.T) {
	p := newTestPKI(t, Options{})
	ve, err := p.e.Verifier(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	tr, _ := issue(t, p.t, "ms-acc-1/acc-1/dev-1")
	if _, _, err := ve.Verify(tr.Cert, tr.Chain[1:], time.Time{}, x509.ExtKeyUsageAny); !errors.Is(err, ErrUntrusted) {
		t.Fatalf("transport certificate verified in the e2e domain: %v", err)
	}
	e, _ := issue(t, p.e, "ms-acc-1/acc-1/dev-1")
	if id, _, err := ve.Verify(e.Cert, e.Chain[1:], time.Time{}, x509.ExtKeyUsageAny); err != nil || id.String() != "ms-acc-1/acc-1/dev-1" {
		t.Fatalf("e2e verify: %v, %v", id, err)
	}
	if e.Cert.KeyUsage&x509.KeyUsageKeyAgreement == 0 {
		t.Fatal("e2e leaf lacks keyAgreement")
	}
}

func TestRevocation(t *testing.T) {
	p := newTestPKI(t, Options{})
	ctx := t.Context()
	v, _ := p.t.Verifier(ctx)
	d1, _ := issue(t, p.t, "ms-acc-1/acc-1/dev-1")
	d2, _ := issue(t, p.t, "ms-acc-1/acc-2/dev-1")
	verify := func(iss *Issued) error {
		_, _, err := v.Verify(iss.Cert, iss.Chain[1:], time.Time{}, x509.ExtKeyUsageClientAuth)
		return err
	}
	if err := verify(d1); err != nil {
		t.Fatal(err)
	}
	reason, err := ParseReason("KEYCOMPROMISE")
	if err != nil || reason != 1 {
		t.Fatalf("ParseReason = %d, %v", reason, err)
	}
	if _, err := p.t.RevokeName(ctx, "ms-acc-1/acc-1/dev-1", false, reason); err != nil {
		t.Fatal(err)
	}
	if changed, err := v.Refresh(ctx); err != nil || !changed {
		t.Fatalf("Refresh = %v, %v", changed, err)
	}
	if err := verify(d1); !errors.Is(err, ErrRevoked) {
		t.Fatalf("revoked device: err = %v", err)
	}
	if err := verify(d2); err != nil {
		t.Fatalf("other device: %v", err)
	}
	// Revoking the account CA revokes everything below it, also leaves
	// issued before.
	if _, err := p.t.RevokeName(ctx, "ms-acc-1/acc-2", true, 2); err != nil {
		t.Fatal(err)
	}
	v.Refresh(ctx)
	if err := verify(d2); !errors.Is(err, ErrRevoked) {
		t.Fatalf("device below revoked CA: err = %v", err)
	}
	key, _ := GenerateKey(elliptic.P256())
	if _, err := p.t.Issue(ctx, LeafRequest{Path: mustPath(t, "ms-acc-1/acc-2/dev-9"), PublicKey: key.Public()}); err == nil {
		t.Fatal("issued below a revoked CA")
	}
	// Unknown names and serials are clear errors.
	if _, err := p.t.RevokeName(ctx, "ms-acc-9/acc-1/dev-1", false, 0); err == nil || !strings.Contains(err.Error(), "pki list") {
		t.Fatalf("unknown path: err = %v", err)
	}
	if _, err := p.t.Revoke(ctx, big.NewInt(0xdead), 0); err == nil || !strings.Contains(err.Error(), "dead") {
		t.Fatalf("unknown serial: err = %v", err)
	}
	// The CRLs list what was revoked, with reasons.
	crls, err := p.t.CRLs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	found := map[string]int{}
	for _, crl := range crls {
		for _, e := range crl.RevokedCertificateEntries {
			found[SerialHex(e.SerialNumber)] = e.ReasonCode
		}
	}
	if found[SerialHex(d1.Cert.SerialNumber)] != 1 || found[SerialHex(d2.Chain[1].SerialNumber)] != 2 || len(found) != 2 {
		t.Fatalf("CRL entries = %v", found)
	}
}

func TestParseSerial(t *testing.T) {
	want, _ := new(big.Int).SetString("1a2b3c4d5e6f", 16)
	for _, s := range []string{"1a2b3c4d5e6f", "1A2B3C4D5E6F", "1a:2b:3c:4d:5e:6f", "0x1a2b3c4d5e6f", " 1A:2B:3C:4D:5E:6F\n"} {
		n, err := ParseSerial(s)
		if err != nil || n.Cmp(want) != 0 {
			t.Errorf("ParseSerial(%q) = %v, %v", s, n, err)
		}
	}
	for _, s := range []string{"", "xyz", "0", "-1", "1g"} {
		if _, err := ParseSerial(s); err == nil {
			t.Errorf("ParseSerial(%q) succeeded", s)
		}
	}
}

func TestPassphrase(t *testing.T) {
	p := newTestPKI(t, Options{Passphrase: []byte("correct horse")})
	issue(t, p.t, "ms-1/acc-1/dev-1")
	data, err := os.ReadFile(filepath.Join(p.dir, "pki", "transport", "root.key"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(data, []byte("ENCRYPTED PRIVATE KEY")) {
		t.Fatal("CA key not encrypted")
	}
	for _, pass := range []string{"", "wrong"} {
		a, err := Open(t.Context(), p.dir, Transport, p.db, Options{Passphrase: []byte(pass)})
		if err != nil {
			t.Fatal(err) // opening needs no key
		}
		key, _ := GenerateKey(elliptic.P256())
		_, err = a.Issue(t.Context(), LeafRequest{Path: mustPath(t, "ms-1/acc-1/dev-2"), PublicKey: key.Public()})
		if !errors.Is(err, ErrPassphrase) {
			t.Fatalf("passphrase %q: err = %v, want ErrPassphrase", pass, err)
		}
	}
	if _, err := exec.LookPath("openssl"); err == nil {
		out, err := exec.Command("openssl", "pkey", "-in", filepath.Join(p.dir, "pki", "transport", "root.key"), "-passin", "pass:correct horse", "-noout").CombinedOutput()
		if err != nil {
			t.Fatalf("openssl cannot read the encrypted key: %v\n%s", err, out)
		}
	}
}

func TestDamagedDirectory(t *testing.T) {
	p := newTestPKI(t, Options{})
	issue(t, p.t, "ms-1/acc-1/dev-1")
	ctx := context.Background()
	tests := []struct {
		name   string
		break_ func(dir string) error
	}{
		{"garbage root certificate", func(dir string) error {
			return os.WriteFile(filepath.Join(dir, "root.crt"), []byte("garbage"), 0o644)
		}},
		{"missing CA key", func(dir string) error { return os.Remove(filepath.Join(dir, "services.key")) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q := newTestPKI(t, Options{})
			dir := filepath.Join(q.dir, "pki", "transport")
			if err := tt.break_(dir); err != nil {
				t.Fatal(err)
			}
			_, err := Open(ctx, q.dir, Transport, q.db, Options{})
			if err == nil || !strings.Contains(err.Error(), "damaged") || !strings.Contains(err.Error(), "backup") {
				t.Fatalf("err = %v, want a 'damaged ... backup' error", err)
			}
		})
	}
	// A garbage account CA key surfaces when issuing below it.
	os.WriteFile(filepath.Join(p.dir, "pki", "transport", "ca", "ms-1+acc-1.key"), []byte("garbage"), 0o600)
	key, _ := GenerateKey(elliptic.P256())
	if _, err := p.t.Issue(ctx, LeafRequest{Path: mustPath(t, "ms-1/acc-1/dev-2"), PublicKey: key.Public()}); err == nil || !strings.Contains(err.Error(), "ms-1+acc-1.key") {
		t.Fatalf("err = %v, want one naming the key file", err)
	}
}

// TestOpenSSLInterop has OpenSSL, an independent implementation, verify our
// chains and parse our CRLs.
func TestOpenSSLInterop(t *testing.T) {
	openssl := requireTool(t, "openssl")
	p := newTestPKI(t, Options{})
	ctx := t.Context()
	dev, _ := issue(t, p.t, "ms-acc-1/acc-1/dev-1")
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		f := filepath.Join(dir, name)
		if err := os.WriteFile(f, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return f
	}
	root := write("root.pem", EncodeCertsPEM(dev.Root))
	untrusted := write("inter.pem", EncodeCertsPEM(dev.Chain[1:]...))
	leaf := write("leaf.pem", EncodeCertsPEM(dev.Cert))
	run := func(args ...string) (string, error) {
		out, err := exec.Command(openssl, args...).CombinedOutput()
		return string(out), err
	}
	if out, err := run("verify", "-x509_strict", "-purpose", "sslclient", "-CAfile", root, "-untrusted", untrusted, leaf); err != nil || !strings.Contains(out, "OK") {
		t.Fatalf("openssl verify: %v\n%s", err, out)
	}
	// The account CA (pathLen 0) signs a rogue sub-CA, which issues a leaf:
	// both Go and OpenSSL refuse the chain.
	rogueKey, _ := GenerateKey(elliptic.P256())
	rogueCA := signWith(t, dev.Chain[1], mustKey(t, p.t, "ms-acc-1+acc-1"), "rogue", true, rogueKey.Public())
	leafKey, _ := GenerateKey(elliptic.P256())
	below := signWith(t, rogueCA, rogueKey, "ms-acc-1/acc-1/dev-7", false, leafKey.Public())
	v, _ := p.t.Verifier(ctx)
	if _, _, err := v.Verify(below, append([]*x509.Certificate{rogueCA}, dev.Chain[1:]...), time.Time{}, x509.ExtKeyUsageClientAuth); !errors.Is(err, ErrUntrusted) {
		t.Fatalf("Go accepted a chain through a sub-CA of a pathLen-0 CA: %v", err)
	}
	untrusted2 := write("inter2.pem", EncodeCertsPEM(append([]*x509.Certificate{rogueCA}, dev.Chain[1:]...)...))
	if out, err := run("verify", "-CAfile", root, "-untrusted", untrusted2, write("below.pem", EncodeCertsPEM(below))); err == nil {
		t.Fatalf("openssl accepted a chain through a sub-CA of a pathLen-0 CA:\n%s", out)
	}

	if _, err := p.t.RevokeName(ctx, "ms-acc-1/acc-1/dev-1", false, 1); err != nil {
		t.Fatal(err)
	}
	crls, err := p.t.CRLs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var crlPEM []byte
	for _, c := range crls {
		crlPEM = append(crlPEM, EncodeCRLPEM(c)...)
	}
	crlFile := write("crl.pem", crlPEM)
	// The account CA's CRL (the one that lists the device).
	var acctCRL string
	for _, c := range crls {
		if bytes.Equal(c.AuthorityKeyId, dev.Chain[1].SubjectKeyId) {
			acctCRL = write("acct.crl.pem", EncodeCRLPEM(c))
		}
	}
	out, err := run("crl", "-in", acctCRL, "-noout", "-text")
	if err != nil {
		t.Fatalf("openssl crl: %v\n%s", err, out)
	}
	serial := strings.ToUpper(SerialHex(dev.Cert.SerialNumber))
	if !strings.Contains(strings.ToUpper(out), serial) || !strings.Contains(out, "Key Compromise") {
		t.Fatalf("openssl crl output lacks serial %s or reason:\n%s", serial, out)
	}
	if out, err := run("verify", "-crl_check_all", "-CAfile", root, "-CRLfile", crlFile, "-untrusted", untrusted, leaf); err == nil || !strings.Contains(out, "revoked") {
		t.Fatalf("openssl verify -crl_check_all accepted the revoked leaf: %v\n%s", err, out)
	}
	other, _ := issue(t, p.t, "ms-acc-1/acc-1/dev-2")
	crls, _ = p.t.CRLs(ctx)
	crlPEM = nil
	for _, c := range crls {
		crlPEM = append(crlPEM, EncodeCRLPEM(c)...)
	}
	crlFile = write("crl2.pem", crlPEM)
	if out, err := run("verify", "-crl_check_all", "-CAfile", root, "-CRLfile", crlFile, "-untrusted", untrusted, write("other.pem", EncodeCertsPEM(other.Cert))); err != nil {
		t.Fatalf("openssl verify -crl_check_all refused a valid leaf: %v\n%s", err, out)
	}
}

func mustKey(t *testing.T, a *Authority, name string) crypto.Signer {
	k, err := a.caKey(name)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// requireTool returns the path of a tool a test needs. Outside CI a missing
// tool skips the test; in CI (CI set) it fails, so CI cannot go green by
// running less.
func requireTool(t *testing.T, name string) string {
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

// TestVerifyCacheKeepsChecks: a cached chain still honours revocation and
// the validity window.
func TestVerifyCacheKeepsChecks(t *testing.T) {
	p := newTestPKI(t, Options{})
	ctx := t.Context()
	v, _ := p.e.Verifier(ctx)
	key, _ := GenerateKey(elliptic.P256())
	iss, err := p.e.Issue(ctx, LeafRequest{Path: mustPath(t, "ms-1/acc-1/dev-1"), PublicKey: key.Public(), Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	for range 3 { // fill and hit the cache
		if _, err := v.VerifySigner(iss.Cert, iss.Chain[1:], time.Time{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := v.VerifySigner(iss.Cert, iss.Chain[1:], time.Now().Add(2*time.Hour)); !errors.Is(err, ErrUntrusted) {
		t.Fatalf("after expiry: %v", err)
	}
	if _, err := p.e.RevokeName(ctx, "ms-1/acc-1/dev-1", false, 1); err != nil {
		t.Fatal(err)
	}
	v.Refresh(ctx)
	if _, err := v.VerifySigner(iss.Cert, iss.Chain[1:], time.Time{}); !errors.Is(err, ErrRevoked) {
		t.Fatalf("after revocation: %v", err)
	}
}

// TestVerifyBuildsAChainOnce: callers that verify the same new signer at
// once (ingest's parallel openers) wait for one chain build instead of each
// building it.
func TestVerifyBuildsAChainOnce(t *testing.T) {
	p := newTestPKI(t, Options{})
	ctx := t.Context()
	v, _ := p.e.Verifier(ctx)
	iss, _ := issue(t, p.e, "ms-1/acc-1/dev-1")
	var builds atomic.Int32
	release := make(chan struct{})
	v.testHookBuild = func() {
		if builds.Add(1) == 1 {
			<-release
		}
	}
	const callers = 4
	errs := make(chan error, callers)
	for range callers {
		go func() {
			_, err := v.VerifySigner(iss.Cert, iss.Chain[1:], time.Time{})
			errs <- err
		}()
	}
	deadline := time.Now().Add(10 * time.Second)
	for v.chainBuildWaiters() < callers-1 && builds.Load() < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("after 10 s: %d builds, %d callers waiting", builds.Load(), v.chainBuildWaiters())
		}
		runtime.Gosched()
	}
	close(release)
	for range callers {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if n := builds.Load(); n != 1 {
		t.Fatalf("%d callers built the chain %d times; want once", callers, n)
	}
}

func BenchmarkVerifySigner(b *testing.B) {
	dir := b.TempDir()
	db, _ := sqliteOpen(b, dir)
	a, err := Open(b.Context(), dir, E2E, db, Options{})
	if err != nil {
		b.Fatal(err)
	}
	key, _ := GenerateKey(elliptic.P256())
	iss, _ := a.Issue(b.Context(), LeafRequest{Path: Path{"ms-1", "acc-1", "dev-1"}, PublicKey: key.Public()})
	v, _ := a.Verifier(b.Context())
	for b.Loop() {
		if _, err := v.VerifySigner(iss.Cert, iss.Chain[1:], time.Time{}); err != nil {
			b.Fatal(err)
		}
	}
}

func TestLeafBySKI(t *testing.T) {
	p := newTestPKI(t, Options{})
	ctx := t.Context()
	v, _ := p.e.Verifier(ctx)
	a, _ := issue(t, p.e, "ms-1/acc-1/dev-1")
	got, err := v.LeafBySKI(ctx, a.Cert.SubjectKeyId)
	if err != nil || !got.Equal(a.Cert) {
		t.Fatalf("LeafBySKI = %v, %v", got, err)
	}
	if _, err := v.LeafBySKI(ctx, []byte("nope")); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("unknown key: %v", err)
	}
	// A certificate issued after the last scan is found once the rescan
	// interval has passed.
	b, _ := issue(t, p.e, "ms-1/acc-1/dev-2")
	time.Sleep(leafRescan)
	if got, err := v.LeafBySKI(ctx, b.Cert.SubjectKeyId); err != nil || !got.Equal(b.Cert) {
		t.Fatalf("new leaf: %v, %v", got, err)
	}
}

// TestVerifierLearnsNewCAs: a verifier built before an account existed
// verifies that account's certificates without an explicit Refresh.
func TestVerifierLearnsNewCAs(t *testing.T) {
	p := newTestPKI(t, Options{})
	v, _ := p.e.Verifier(t.Context())
	time.Sleep(leafRescan)
	iss, _ := issue(t, p.e, "ms-new/acc-1/dev-1") // creates two new CAs
	if _, err := v.VerifySigner(iss.Cert, nil, time.Time{}); err != nil {
		t.Fatalf("leaf below CAs created after the verifier: %v", err)
	}
}

// TestVerifierLearnsNewCAsConcurrently: callers that miss a new CA at
// the same time (ingest opens envelopes in parallel) all verify, not only
// the one that reloaded the CAs.
func TestVerifierLearnsNewCAsConcurrently(t *testing.T) {
	p := newTestPKI(t, Options{})
	v, _ := p.e.Verifier(t.Context())
	time.Sleep(leafRescan)
	var leaves []*x509.Certificate
	for i := range 8 {
		iss, _ := issue(t, p.e, fmt.Sprintf("ms-new/acc-1/dev-%d", i))
		leaves = append(leaves, iss.Cert)
	}
	errs := make(chan error, len(leaves))
	start := make(chan struct{})
	for _, leaf := range leaves {
		go func() {
			<-start
			_, err := v.VerifySigner(leaf, nil, time.Time{})
			errs <- err
		}()
	}
	close(start)
	for range leaves {
		if err := <-errs; err != nil {
			t.Errorf("concurrent caller: %v", err)
		}
	}
}

func TestShortLifetime(t *testing.T) {
	p := newTestPKI(t, Options{})
	key, _ := GenerateKey(elliptic.P256())
	// Bounds from the moment before issuing, so a slow machine cannot
	// move them: backdating is a tenth of 10 s, and x509 times are whole
	// seconds (one more second of truncation on each side).
	before := time.Now()
	iss, err := p.t.Issue(t.Context(), LeafRequest{Path: mustPath(t, "ms-1/acc-1/dev-1"), PublicKey: key.Public(), Validity: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	c := iss.Cert
	if c.NotBefore.Before(before.Add(-2*time.Second)) || c.NotAfter.Before(before.Add(9*time.Second)) || c.NotAfter.Sub(c.NotBefore) > 12*time.Second {
		t.Fatalf("10 s certificate valid %v .. %v, issued after %v", c.NotBefore, c.NotAfter, before)
	}
}

// TestIdentifyVerifiedChain: offline naming (what 'fieldtrust open' uses)
// applies the namespace rule and recognizes the services CA below the root.
func TestIdentifyVerifiedChain(t *testing.T) {
	p := newTestPKI(t, Options{})
	dev, _ := issue(t, p.e, "ms-acc-1/acc-1/dev-1")
	svcKey, _ := GenerateKey(elliptic.P256())
	svc, err := p.e.Issue(t.Context(), LeafRequest{Service: "ledger", PublicKey: svcKey.Public()})
	if err != nil {
		t.Fatal(err)
	}
	accountCA := dev.Chain[1]
	outside := forge(t, p.e, "ms-acc-1+acc-1", accountCA, "ms-acc-2/acc-1/dev-1", false)
	tests := []struct {
		name  string
		chain []*x509.Certificate
		want  string
	}{
		{"device", append(dev.Chain, p.e.Root()), "ms-acc-1/acc-1/dev-1"},
		{"service", append(svc.Chain, p.e.Root()), "service:ledger"},
		{"outside the namespace", []*x509.Certificate{outside, dev.Chain[1], dev.Chain[2], p.e.Root()}, ""},
		{"service name below an account", []*x509.Certificate{forge(t, p.e, "ms-acc-1+acc-1", accountCA, "ledger", false), dev.Chain[1], dev.Chain[2], p.e.Root()}, ""},
	}
	for _, tt := range tests {
		id, err := IdentifyVerifiedChain(E2E, tt.chain)
		if tt.want == "" {
			if err == nil {
				t.Errorf("%s: identity %q, want an error", tt.name, id)
			}
			continue
		}
		if err != nil || id.String() != tt.want {
			t.Errorf("%s: %q, %v; want %q", tt.name, id, err, tt.want)
		}
	}
}

// TestCAOfAnotherDirectory: two data directories on one store (the nodes
// of a cluster): the second does not make a second CA for a master or
// account the first made; it refuses, naming the fix. A new master still
// works there.
func TestCAOfAnotherDirectory(t *testing.T) {
	p := newTestPKI(t, Options{})
	issue(t, p.t, "ms-1/acc-1/gw-1")
	other := t.TempDir()
	// What 'cluster add-node' copies before any account exists.
	if err := os.MkdirAll(filepath.Join(other, "pki", "transport"), 0o700); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"root.crt", "root.key", "services.crt", "services.key"} {
		b, err := os.ReadFile(filepath.Join(p.dir, "pki", "transport", f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(other, "pki", "transport", f), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	b, err := Open(t.Context(), other, Transport, p.db, Options{})
	if err != nil {
		t.Fatal(err)
	}
	key, _ := GenerateKey(elliptic.P256())
	for _, path := range []string{"ms-1/acc-1/gw-2", "ms-1/acc-2/gw-1"} {
		_, err = b.Issue(t.Context(), LeafRequest{Path: mustPath(t, path), PublicKey: key.Public()})
		if !errors.Is(err, ErrCAElsewhere) || !strings.Contains(err.Error(), "share DIR/pki") {
			t.Errorf("issue %s in another directory: %v, want ErrCAElsewhere", path, err)
		}
	}
	issue(t, b, "ms-2/acc-1/gw-1")
	cas, err := p.db.ListCertificates(t.Context(), store.CertFilter{Domain: string(Transport), Name: "ms-1", Kinds: []string{KindMasterCA}})
	if err != nil || len(cas) != 1 {
		t.Errorf("master CAs of ms-1: %d (%v), want 1", len(cas), err)
	}
}
