package est_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/est"
	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/store"
)

// TestClaimNamesItsManufacturer: with two trusted manufacturers, maker B
// mints an onboarding certificate with the serial and subject of maker A's
// claimed device. B's certificate matches no claim, before and after the
// real device enrolled, even with AllowReenroll; the real device enrolls.
func TestClaimNamesItsManufacturer(t *testing.T) {
	ctx := t.Context()
	p := newPlatform(t, est.Policy{AllowReenroll: true})
	acme, rogue := newManufacturer(t, "Acme"), newManufacturer(t, "Rogue")
	p.trust(t, acme)
	p.trust(t, rogue) // trusted too: the attack needs no untrusted CA
	real := acme.device(t, "ACME-GW-0800")
	p.claim(t, acme, store.ClaimBySerial, pki.SerialHex(real.Leaf.SerialNumber), "ms-1/acc-1/gw-800")
	bySubject := acme.device(t, "ACME-GW-0801")
	p.claim(t, acme, store.ClaimBySubject, "ACME-GW-0801", "ms-1/acc-1/gw-801")
	sameSerial := rogue.deviceWithSerial(t, "ACME-GW-0800", real.Leaf.SerialNumber)
	sameSubject := rogue.device(t, "ACME-GW-0801")

	before := p.certCount(t)
	for name, cert := range map[string]*tls.Certificate{"same serial": &sameSerial, "same subject": &sameSubject} {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		_, err := p.client(cert, "").Enroll(ctx, key, nil)
		wantStatus(t, err, http.StatusForbidden, "not claimed")
		if p.certCount(t) != before {
			t.Fatalf("%s: the other manufacturer's certificate was issued something", name)
		}
	}
	for _, dev := range []*tls.Certificate{&real, &bySubject} {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if _, err := p.client(dev, "").Enroll(ctx, key, nil); err != nil {
			t.Fatalf("the claimed device %s: %v", dev.Leaf.Subject.CommonName, err)
		}
	}
	// After the real device enrolled, re-enrollment (AllowReenroll) is for
	// that very certificate only.
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	_, err := p.client(&sameSerial, "").Enroll(ctx, key, nil)
	wantStatus(t, err, http.StatusForbidden, "not claimed")
	if _, err := p.client(&real, "").Enroll(ctx, key, nil); err != nil {
		t.Fatalf("re-enrollment by the real device: %v", err)
	}
	if c, err := p.d.Store.Claim(ctx, acme.key(store.ClaimBySerial, pki.SerialHex(real.Leaf.SerialNumber))); err != nil || c.ConsumedByCert != pki.Fingerprint(real.Leaf) {
		t.Fatalf("claim: %+v, %v", c, err)
	}
}

// TestLegacyClaimRefused: a claim made before claims named their
// manufacturer enrolls nothing, with a message that says what to do.
func TestLegacyClaimRefused(t *testing.T) {
	p := newPlatform(t, est.Policy{})
	acme := newManufacturer(t, "Acme")
	p.trust(t, acme)
	dev := acme.device(t, "ACME-GW-0900")
	if err := p.d.Store.PutClaims(t.Context(), []store.Claim{{ClaimKey: store.ClaimKey{Kind: store.ClaimBySubject, Value: "ACME-GW-0900"}, Path: "ms-1/acc-1/gw-900", CreatedAt: time.Now()}}); err != nil {
		t.Fatal(err)
	}
	before := p.certCount(t)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	_, err := p.client(&dev, "").Enroll(t.Context(), key, nil)
	wantStatus(t, err, http.StatusForbidden, "adopt-claims")
	if p.certCount(t) != before {
		t.Fatal("a legacy claim issued something")
	}
	// Adopted for the manufacturer, it enrolls.
	if n, err := p.d.Store.AdoptLegacyClaims(t.Context(), pki.KeyID(acme.root), acme.root.Subject.String()); err != nil || n != 1 {
		t.Fatalf("adopt: %d, %v", n, err)
	}
	if _, err := p.client(&dev, "").Enroll(t.Context(), key, nil); err != nil {
		t.Fatalf("after adoption: %v", err)
	}
}

// TestEnrollIsIdempotent: a device whose client lost or refused the
// answer enrolls again with the same onboarding certificate and key and
// gets the same certificate; another key, or another certificate with the
// same subject, gets nothing.
func TestEnrollIsIdempotent(t *testing.T) {
	ctx := t.Context()
	p := newPlatform(t, est.Policy{})
	acme := newManufacturer(t, "Acme")
	p.trust(t, acme)
	dev := acme.device(t, "ACME-GW-1000")
	clone := acme.device(t, "ACME-GW-1000")
	p.claim(t, acme, store.ClaimBySubject, "ACME-GW-1000", "ms-1/acc-1/gw-1000")
	body, key := csrBody(t, "x")
	status, first := p.post(t, &dev, "/.well-known/est/simpleenroll", est.ContentTypePKCS10, body)
	if status != 200 {
		t.Fatalf("first enrollment: %d %s", status, first)
	}
	n := p.certCount(t)
	// The answer is lost; the device sends the same request again, and
	// another CSR for the same key.
	status, second := p.post(t, &dev, "/.well-known/est/simpleenroll", est.ContentTypePKCS10, body)
	if status != 200 || second != first {
		t.Fatalf("repeated enrollment: %d, same answer %v", status, second == first)
	}
	if chain, err := p.client(&dev, "").Enroll(ctx, key, nil); err != nil || pki.SerialHex(chain[0].SerialNumber) != pki.SerialHex(mustDecode(t, first)[0].SerialNumber) {
		t.Fatalf("repeated enrollment with a new CSR for the key: %v", err)
	}
	if p.certCount(t) != n {
		t.Fatalf("repeated enrollments issued %d more certificates", p.certCount(t)-n)
	}
	otherKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	_, err := p.client(&dev, "").Enroll(ctx, otherKey, nil)
	wantStatus(t, err, http.StatusForbidden, "already used")
	_, err = p.client(&clone, "").Enroll(ctx, key, nil)
	wantStatus(t, err, http.StatusForbidden, "already used")
	// Once the issued certificate is revoked, the retry gets nothing.
	if _, err := p.d.Transport.Revoke(ctx, mustDecode(t, first)[0].SerialNumber, 1); err != nil {
		t.Fatal(err)
	}
	if _, err := p.verifier.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	status, _ = p.post(t, &dev, "/.well-known/est/simpleenroll", est.ContentTypePKCS10, body)
	if status != http.StatusForbidden || p.certCount(t) != n {
		t.Fatalf("retry after revocation: %d", status)
	}
}

func mustDecode(t *testing.T, body string) []*x509.Certificate {
	t.Helper()
	certs, err := est.DecodeCerts([]byte(body))
	if err != nil {
		t.Fatal(err)
	}
	return certs
}

// TestEnrollAnswerIsTheLeaf: RFC 7030 §4.2.3, the answer holds only the
// certificate that was issued (GlobalSign's estclient refuses more); the
// fieldtrust client completes the chain from cacerts.
func TestEnrollAnswerIsTheLeaf(t *testing.T) {
	ctx := t.Context()
	p := newPlatform(t, est.Policy{})
	acme := newManufacturer(t, "Acme")
	p.trust(t, acme)
	dev := acme.device(t, "ACME-GW-1100")
	p.claim(t, acme, store.ClaimBySubject, "ACME-GW-1100", "ms-1/acc-1/gw-1100")
	body, key := csrBody(t, "x")
	status, answer := p.post(t, &dev, "/.well-known/est/simpleenroll", est.ContentTypePKCS10, body)
	if status != 200 || len(mustDecode(t, answer)) != 1 {
		t.Fatalf("simpleenroll: %d, %d certificates", status, len(mustDecode(t, answer)))
	}
	op := tlsCert(mustDecode(t, answer), key)
	for _, path := range []string{"/.well-known/est/simplereenroll", "/.well-known/est/e2e/simpleenroll"} {
		body, _ := csrBody(t, "x")
		status, answer := p.post(t, &op, path, est.ContentTypePKCS10, body)
		if status != 200 || len(mustDecode(t, answer)) != 1 {
			t.Fatalf("%s: %d, %d certificates", path, status, len(mustDecode(t, answer)))
		}
	}
	// est.Client hands the gateway leaf + intermediates: what mTLS sends.
	key2, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	chain, err := p.client(&op, "").Reenroll(ctx, key2, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(chain) != 3 || chain[1].Subject.CommonName != "acc-1" || chain[2].Subject.CommonName != "ms-1" {
		t.Fatalf("client chain = %v; want leaf, acc-1, ms-1", subjects(chain))
	}
	roots := x509.NewCertPool()
	roots.AddCert(p.d.Transport.Root())
	inter := x509.NewCertPool()
	inter.AddCert(chain[1])
	inter.AddCert(chain[2])
	if _, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("client chain does not verify: %v", err)
	}
	e2eKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	op2 := tlsCert(chain, key2)
	e2e, err := p.client(&op2, est.LabelE2E).Enroll(ctx, e2eKey, nil)
	if err != nil || len(e2e) != 3 || !e2e[2].Equal(mustCA(t, p, pki.E2E, "ms-1")) {
		t.Fatalf("e2e client chain = %v, %v", subjects(e2e), err)
	}
}

func mustCA(t *testing.T, p *platform, d pki.Domain, name string) *x509.Certificate {
	t.Helper()
	list, err := p.d.Store.ListCertificates(t.Context(), store.CertFilter{Domain: string(d), Name: name, Kinds: []string{pki.KindMasterCA, pki.KindAccountCA}})
	if err != nil || len(list) == 0 {
		t.Fatalf("CA %s: %v", name, err)
	}
	c, err := x509.ParseCertificate(list[0].DER)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestBodiesHaveContentLength: every answer says how long it is; net/http
// would otherwise send bodies over 2 KiB chunked, which libest refuses.
func TestBodiesHaveContentLength(t *testing.T) {
	p := newPlatform(t, est.Policy{})
	op := p.operational(t, "ms-1/acc-1/gw-1200") // cacerts then holds four CAs, over 2 KiB
	for _, tt := range []struct {
		name, method, path string
		cert               *tls.Certificate
		body               []byte
		status             int
	}{
		{"cacerts", http.MethodGet, "/.well-known/est/cacerts", &op, nil, 200},
		{"e2e cacerts", http.MethodGet, "/.well-known/est/e2e/cacerts", &op, nil, 200},
		{"csrattrs", http.MethodGet, "/.well-known/est/csrattrs", nil, nil, 200},
		{"simplereenroll", http.MethodPost, "/.well-known/est/simplereenroll", &op, func() []byte { b, _ := csrBody(t, "x"); return b }(), 200},
		{"refusal", http.MethodPost, "/.well-known/est/simpleenroll", nil, []byte("x"), 401},
	} {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequestWithContext(t.Context(), tt.method, p.url+tt.path, strings.NewReader(string(tt.body)))
			req.Header.Set("Content-Type", est.ContentTypePKCS10)
			c := p.httpClient(tt.cert)
			defer c.CloseIdleConnections()
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.status || len(resp.TransferEncoding) != 0 || resp.ContentLength != int64(len(b)) {
				t.Fatalf("%d, Transfer-Encoding %v, Content-Length %d for %d bytes", resp.StatusCode, resp.TransferEncoding, resp.ContentLength, len(b))
			}
			if tt.name == "cacerts" && len(b) <= 2048 {
				t.Fatalf("cacerts is %d bytes; the test wants one over net/http's 2 KiB chunking threshold", len(b))
			}
		})
	}
}

// TestUnauthorizedHasChallenge: every 401 carries WWW-Authenticate (RFC
// 9110 §11.6.1), on EST and on the routes behind GuardOperational.
func TestUnauthorizedHasChallenge(t *testing.T) {
	p := newPlatform(t, est.Policy{})
	acme := newManufacturer(t, "Acme")
	p.trust(t, acme)
	onboarding := acme.device(t, "ACME-GW-1300")
	body, _ := csrBody(t, "x")
	for _, tt := range []struct {
		name string
		cert *tls.Certificate
		url  string
	}{
		{"enroll without a certificate", nil, p.url + "/.well-known/est/simpleenroll"},
		{"reenroll with an onboarding certificate", &onboarding, p.url + "/.well-known/est/simplereenroll"},
		{"guarded route with an onboarding certificate", &onboarding, p.guarded},
	} {
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, tt.url, strings.NewReader(string(body)))
		req.Header.Set("Content-Type", est.ContentTypePKCS10)
		c := p.httpClient(tt.cert)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		c.CloseIdleConnections()
		if resp.StatusCode != 401 || resp.Header.Get("WWW-Authenticate") != est.Challenge {
			t.Errorf("%s: %d, WWW-Authenticate %q", tt.name, resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
		}
	}
}

// TestRevokedPathStopsReenrollLoop: a holder of a stolen device
// credential re-enrolls in a loop with the newest certificate. Revoking the
// path stops the loop at once, although the EST server's verifier has not
// refreshed yet (it refreshes once a second): issuing checks the store.
// Every certificate of the loop is refused afterwards, the onboarding
// certificate cannot buy the path again, and a new claim can.
func TestRevokedPathStopsReenrollLoop(t *testing.T) {
	ctx := t.Context()
	p := newPlatform(t, est.Policy{AllowReenroll: true})
	acme := newManufacturer(t, "Acme")
	p.trust(t, acme)
	dev := acme.device(t, "ACME-GW-1400")
	p.claim(t, acme, store.ClaimBySubject, "ACME-GW-1400", "ms-1/acc-1/gw-1400")
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	chain, err := p.client(&dev, "").Enroll(ctx, key, nil)
	if err != nil {
		t.Fatal(err)
	}
	stolen := []tls.Certificate{tlsCert(chain, key)}
	for range 3 { // A -> B -> C -> D
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		c, err := p.client(&stolen[len(stolen)-1], "").Reenroll(ctx, k, nil)
		if err != nil {
			t.Fatal(err)
		}
		stolen = append(stolen, tlsCert(c, k))
	}
	path, _ := pki.ParsePath("ms-1/acc-1/gw-1400")
	if _, err := p.d.Transport.RevokePath(ctx, path, 1); err != nil { // what 'pki revoke PATH' does
		t.Fatal(err)
	}
	before := p.certCount(t)
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	// The verifier's snapshot still passes the newest certificate...
	if _, _, err := p.verifier.Verify(stolen[len(stolen)-1].Leaf, nil, time.Time{}, x509.ExtKeyUsageClientAuth); err != nil {
		t.Fatalf("the test needs a stale verifier: %v", err)
	}
	// ...but nothing is issued on its authority, nor on any older one's,
	// nor for the e2e twin.
	for i := range stolen {
		_, err := p.client(&stolen[i], "").Reenroll(ctx, k, nil)
		wantStatus(t, err, http.StatusForbidden, "revoked")
	}
	// The onboarding certificate cannot buy the path again.
	_, err = p.client(&dev, "").Enroll(ctx, k, nil)
	wantStatus(t, err, http.StatusForbidden, "revoked")
	if n := p.certCount(t); n != before {
		t.Fatalf("%d certificates issued after the path was revoked", n-before)
	}
	// After the refresh, every certificate of the loop is refused
	// everywhere (the guarded routes stand for HTTPS; the broker calls the
	// same verifier).
	if _, err := p.verifier.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	for i := range stolen {
		resp, err := p.httpClient(&stolen[i]).Get(p.guarded)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("certificate %d of the loop on a guarded route: %d, want 403", i, resp.StatusCode)
		}
	}
	// A new claim (the operator's deliberate step) enrolls the path again.
	p.claim(t, acme, store.ClaimBySubject, "ACME-GW-1400", "ms-1/acc-1/gw-1400")
	fresh, err := p.client(&dev, "").Enroll(ctx, k, nil)
	if err != nil {
		t.Fatalf("enrollment with a new claim: %v", err)
	}
	if _, _, err := p.verifier.Verify(fresh[0], fresh[1:], time.Time{}, x509.ExtKeyUsageClientAuth); err != nil {
		t.Fatalf("the new certificate: %v", err)
	}
}

// TestGuardRefusesWeakKeysAndTwoCNs: what an account CA key can mint that
// EST would never issue (an RSA-1024 key, a subject with two common names)
// is refused on the HTTPS routes too: the guard, EST and bootstrap call
// the same pki.Verifier as the broker's Identify and VerifyConnection.
func TestGuardRefusesWeakKeysAndTwoCNs(t *testing.T) {
	p := newPlatform(t, est.Policy{})
	op := p.operational(t, "ms-1/acc-1/gw-1600") // creates the account CA
	caKey, err := pki.ReadKeyFile(filepath.Join(p.d.Path, "pki", "transport", "ca", "ms-1+acc-1.key"), nil)
	if err != nil {
		t.Fatal(err)
	}
	accountCA, masterCA := op.Leaf, op.Leaf // replaced below
	for _, der := range op.Certificate[1:] {
		c, _ := x509.ParseCertificate(der)
		switch c.Subject.CommonName {
		case "acc-1":
			accountCA = c
		case "ms-1":
			masterCA = c
		}
	}
	mint := func(subject pkix.Name, key crypto.Signer) tls.Certificate {
		t.Helper()
		leaf := sign(t, &x509.Certificate{Subject: subject, KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
			NotAfter: time.Now().Add(time.Hour)}, accountCA, key.Public(), caKey)
		return tlsCert([]*x509.Certificate{leaf, accountCA, masterCA}, key)
	}
	rsa1024, _ := rsa.GenerateKey(rand.Reader, 1024)
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	oidCN := asn1.ObjectIdentifier{2, 5, 4, 3}
	for _, tt := range []struct {
		name string
		cert tls.Certificate
		code int
	}{
		{"valid", op, 200},
		{"RSA-1024", mint(pkix.Name{CommonName: "ms-1/acc-1/weak"}, rsa1024), 401},
		{"two common names", mint(pkix.Name{ExtraNames: []pkix.AttributeTypeAndValue{{Type: oidCN, Value: "ms-1/acc-1/victim"}, {Type: oidCN, Value: "ms-1/acc-1/gw-1600"}}}, p256), 401},
	} {
		resp, err := p.httpClient(&tt.cert).Get(p.guarded)
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		resp.Body.Close()
		if resp.StatusCode != tt.code {
			t.Errorf("%s: %d, want %d", tt.name, resp.StatusCode, tt.code)
		}
	}
}
