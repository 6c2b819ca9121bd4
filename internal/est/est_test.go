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
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/est"
	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/tlspolicy"
)

// TestOnboardingFlow is zero-touch onboarding end to end on loopback: a
// device with only its manufacturer certificate enrolls for its claimed
// transport identity, renews it with a new key, gets its e2e twin, and the
// onboarding certificate is spent.
func TestOnboardingFlow(t *testing.T) {
	for _, binding := range []bool{false, true} {
		t.Run(map[bool]string{false: "default", true: "channel-binding-required"}[binding], func(t *testing.T) {
			ctx := t.Context()
			p := newPlatform(t, est.Policy{RequireChannelBinding: binding})
			acme := newManufacturer(t, "Acme")
			p.trust(t, acme)
			idev := acme.device(t, "ACME-GW-0001")
			p.claim(t, acme, store.ClaimBySerial, pki.SerialHex(idev.Leaf.SerialNumber), "ms-1/acc-1/gw-1")

			// cacerts needs no client certificate.
			cas, err := p.client(nil, "").CACerts(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if !cas[0].Equal(p.d.Transport.Root()) || !cas[1].Equal(p.d.Transport.ServicesCA()) {
				t.Fatalf("cacerts = %v, want the transport root and services CA first", subjects(cas))
			}

			// Enroll: the client sends the channel binding; the CSR asks for
			// another name, which is ignored.
			key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			chain, err := p.client(&idev, "").Enroll(ctx, key, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "ms-9/acc-9/evil"}, DNSNames: []string{"evil.example"}})
			if err != nil {
				t.Fatal(err)
			}
			id, _, err := p.verifier.Verify(chain[0], chain[1:], time.Time{}, x509.ExtKeyUsageClientAuth)
			if err != nil || id.String() != "ms-1/acc-1/gw-1" {
				t.Fatalf("enrolled certificate: identity %v, %v; want ms-1/acc-1/gw-1", id, err)
			}
			if len(chain[0].DNSNames) != 0 || !publicKeyEqual(chain[0], key) {
				t.Fatalf("issued certificate must carry the CSR key and no names from the CSR: %v", chain[0].DNSNames)
			}
			if c, err := p.d.Store.Claim(ctx, acme.key(store.ClaimBySerial, pki.SerialHex(idev.Leaf.SerialNumber))); err != nil || !c.Consumed() || c.ConsumedBy != pki.SerialHex(idev.Leaf.SerialNumber) || c.ConsumedByCert != pki.Fingerprint(idev.Leaf) {
				t.Fatalf("claim after enrollment: %+v, %v", c, err)
			}
			op := tlsCert(chain, key)

			// The onboarding certificate is spent: another key gets nothing,
			// a retry with the same key the same certificate.
			before := p.certCount(t)
			otherKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			_, err = p.client(&idev, "").Enroll(ctx, otherKey, nil)
			wantStatus(t, err, http.StatusForbidden, "already used")
			if again, err := p.client(&idev, "").Enroll(ctx, key, nil); err != nil || !again[0].Equal(chain[0]) {
				t.Fatalf("retry with the enrolled key: %v", err)
			}
			if n := p.certCount(t); n != before {
				t.Fatalf("certificates %d -> %d after a refused and a repeated enrollment", before, n)
			}

			// Re-enroll with a new key, then with the same key: same identity.
			key2, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			chain2, err := p.client(&op, "").Reenroll(ctx, key2, nil)
			if err != nil {
				t.Fatal(err)
			}
			if id, _, err := p.verifier.Verify(chain2[0], chain2[1:], time.Time{}, x509.ExtKeyUsageClientAuth); err != nil || id.String() != "ms-1/acc-1/gw-1" || !publicKeyEqual(chain2[0], key2) {
				t.Fatalf("re-enrolled certificate: %v, %v", id, err)
			}
			op2 := tlsCert(chain2, key2)
			if chain3, err := p.client(&op2, "").Reenroll(ctx, key2, nil); err != nil || !publicKeyEqual(chain3[0], key2) {
				t.Fatalf("re-enroll with the same key: %v", err)
			}

			// The transport identity buys its e2e twin.
			e2eKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			e2e, err := p.client(&op2, est.LabelE2E).Enroll(ctx, e2eKey, nil)
			if err != nil {
				t.Fatal(err)
			}
			ev, err := p.d.E2E.Verifier(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if id, _, err := ev.Verify(e2e[0], e2e[1:], time.Time{}, x509.ExtKeyUsageAny); err != nil || id.String() != "ms-1/acc-1/gw-1" {
				t.Fatalf("e2e certificate: %v, %v", id, err)
			}
			if _, err := p.client(&op2, est.LabelE2E).Reenroll(ctx, e2eKey, nil); err != nil {
				t.Fatalf("e2e re-enroll: %v", err)
			}
			// e2e cacerts for an authenticated caller include its e2e CAs.
			cas, err = p.client(&op2, est.LabelE2E).CACerts(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if !cas[0].Equal(p.d.E2E.Root()) || len(cas) != 4 || cas[2].Subject.CommonName != "ms-1" || cas[3].Subject.CommonName != "acc-1" {
				t.Fatalf("e2e cacerts = %v; want e2e root, services, ms-1, acc-1", subjects(cas))
			}
			if !strings.Contains(p.logs.String(), "EST certificate issued") {
				t.Fatal("issuance not logged")
			}
		})
	}
}

// TestOnboardingCertNeverOperational: a manufacturer certificate does not
// chain to the transport root, so the pki verifier (used by the broker)
// refuses it, a broker-like TLS listener refuses the handshake, and the
// platform's non-EST routes refuse it.
func TestOnboardingCertNeverOperational(t *testing.T) {
	p := newPlatform(t, est.Policy{})
	acme := newManufacturer(t, "Acme")
	p.trust(t, acme)
	idev := acme.device(t, "ACME-GW-0002")

	_, _, err := p.verifier.Verify(idev.Leaf, []*x509.Certificate{acme.inter}, time.Time{}, x509.ExtKeyUsageClientAuth)
	if !errors.Is(err, pki.ErrUntrusted) {
		t.Fatalf("Verifier.Verify(onboarding cert) = %v, want ErrUntrusted", err)
	}
	if _, err := p.verifier.IdentifyTLS(tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{idev.Leaf, acme.inter, acme.root}}}); !errors.Is(err, pki.ErrUntrusted) {
		t.Fatalf("IdentifyTLS(onboarding chain) = %v, want ErrUntrusted", err)
	}

	// A listener configured as the broker's: client certificates required
	// and verified against the transport root, plus the identity hook.
	op := p.operational(t, "ms-1/acc-1/gw-9")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	conf := tlspolicy.Server(nil, p.verifier.Roots(), tls.RequireAndVerifyClientCert, p.verifier.VerifyConnection)
	conf.Certificates = p.srv.TLS.Certificates
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				tc := tls.Server(c, conf)
				if tc.Handshake() == nil {
					io.WriteString(tc, "ok")
				}
			}()
		}
	}()
	dial := func(cert tls.Certificate) error {
		c, err := tls.Dial("tcp", ln.Addr().String(), tlspolicy.Client(p.roots, &cert))
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = io.ReadAll(c) // TLS 1.3: a refused client certificate surfaces on read
		return err
	}
	if err := dial(op); err != nil {
		t.Fatalf("operational certificate refused by the broker-like listener: %v", err)
	}
	if err := dial(idev); err == nil {
		t.Fatal("onboarding certificate accepted by the broker-like listener")
	}

	// Non-EST platform routes.
	for _, tt := range []struct {
		cert *tls.Certificate
		code int
		want string
	}{
		{nil, 200, "hello anonymous"},
		{&op, 200, "hello ms-1/acc-1/gw-9"},
		{&idev, 401, "not a valid operational"},
	} {
		resp, err := p.httpClient(tt.cert).Get(p.guarded)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tt.code || !strings.Contains(string(b), tt.want) {
			t.Errorf("GET /other: %d %q, want %d %q", resp.StatusCode, b, tt.code, tt.want)
		}
	}
}

// TestRefusals: everything that is not allowed gets a 4xx with a reason,
// is logged, and issues nothing.
func TestRefusals(t *testing.T) {
	ctx := t.Context()
	p := newPlatform(t, est.Policy{})
	acme, rogue := newManufacturer(t, "Acme"), newManufacturer(t, "Rogue")
	p.trust(t, acme)
	claimed := acme.device(t, "ACME-GW-0100")
	p.claim(t, acme, store.ClaimBySubject, "ACME-GW-0100", "ms-1/acc-1/gw-100")
	unclaimed := acme.device(t, "ACME-GW-0101")
	used := acme.device(t, "ACME-GW-0102")
	p.claim(t, acme, store.ClaimBySubject, "ACME-GW-0102", "ms-1/acc-1/gw-102")
	if err := p.d.Store.ConsumeClaim(ctx, acme.key(store.ClaimBySubject, "ACME-GW-0102"), store.Consumer{Serial: "01"}, time.Now()); err != nil {
		t.Fatal(err)
	}
	untrusted := rogue.device(t, "ACME-GW-0100") // same subject as a claimed device
	op := p.operational(t, "ms-1/acc-1/gw-200")
	revoked := p.operational(t, "ms-1/acc-1/gw-201")
	site := p.site(t, "ms-1/acc-1")
	if _, err := p.d.Transport.Revoke(ctx, revoked.Leaf.SerialNumber, 1); err != nil {
		t.Fatal(err)
	}
	if _, err := p.verifier.Refresh(ctx); err != nil {
		t.Fatal(err)
	}

	good, _ := csrBody(t, "x")
	badSig := func() []byte {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		der, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "x"}}, key)
		der[len(der)-3] ^= 0x01 // inside the signature
		return est.EncodeCSRBody(der)
	}()
	rsaCSR := func() []byte {
		key, _ := rsa.GenerateKey(rand.Reader, 2048)
		der, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
		return est.EncodeCSRBody(der)
	}()
	smallRSA := func() []byte {
		key, _ := rsa.GenerateKey(rand.Reader, 1024)
		der, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
		return est.EncodeCSRBody(der)
	}()
	// A CSR bound to another TLS connection.
	otherBinding := func() []byte {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		der, err := est.NewCSR(rand.Reader, key, &x509.CertificateRequest{}, make([]byte, 32))
		if err != nil {
			t.Fatal(err)
		}
		return est.EncodeCSRBody(der)
	}()
	const pkcs10 = est.ContentTypePKCS10
	const enroll, reenroll, e2eEnroll = "/.well-known/est/simpleenroll", "/.well-known/est/simplereenroll", "/.well-known/est/e2e/simpleenroll"

	tests := []struct {
		name   string
		cert   *tls.Certificate
		path   string
		ctype  string
		body   []byte
		status int
		reason string
	}{
		{"no client certificate", nil, enroll, pkcs10, good, 401, "no client certificate"},
		{"untrusted manufacturer", &untrusted, enroll, pkcs10, good, 403, "not issued by a trusted manufacturer"},
		{"unclaimed device", &unclaimed, enroll, pkcs10, good, 403, "not claimed"},
		{"consumed claim", &used, enroll, pkcs10, good, 403, "already used"},
		{"operational cert on simpleenroll", &op, enroll, pkcs10, good, 403, "simplereenroll"},
		{"revoked cert on simpleenroll", &revoked, enroll, pkcs10, good, 403, "simplereenroll"},
		{"reenroll without certificate", nil, reenroll, pkcs10, good, 401, "no client certificate"},
		{"reenroll with onboarding cert", &claimed, reenroll, pkcs10, good, 401, "not a valid operational"},
		{"reenroll revoked", &revoked, reenroll, pkcs10, good, 403, "revoked"},
		{"e2e with onboarding cert", &claimed, e2eEnroll, pkcs10, good, 401, "not a valid operational"},
		{"e2e revoked", &revoked, e2eEnroll, pkcs10, good, 403, "revoked"},
		{"reenroll with a site certificate", &site, reenroll, pkcs10, good, 403, "site certificates"},
		{"e2e with a site certificate", &site, e2eEnroll, pkcs10, good, 403, "site certificates"},
		{"guarded route with a site certificate", &site, "/other", pkcs10, good, 403, "MQTT connection only"},
		{"bad CSR signature", &claimed, enroll, pkcs10, badSig, 400, "signature does not verify"},
		{"not base64", &claimed, enroll, pkcs10, []byte("this is *not* base64!"), 400, "not base64"},
		{"not a CSR", &claimed, enroll, pkcs10, []byte("aGVsbG8gd29ybGQ="), 400, "not a PKCS#10"},
		{"empty body", &claimed, enroll, pkcs10, nil, 400, "empty body"},
		{"oversized", &claimed, enroll, pkcs10, []byte(strings.Repeat("QUFB", est.MaxRequestBody/4+1)), 413, "exceeds"},
		{"wrong content type", &claimed, enroll, "application/json", good, 415, "application/pkcs10"},
		{"no content type", &claimed, enroll, "", good, 415, "application/pkcs10"},
		{"small RSA key", &op, reenroll, pkcs10, smallRSA, 400, "not accepted"},
		{"RSA key for e2e", &op, e2eEnroll, pkcs10, rsaCSR, 400, "ECDSA P-256 or P-384"},
		{"binding of another connection", &claimed, enroll, pkcs10, otherBinding, 403, "does not match this TLS session"},
		{"unknown label", &op, "/.well-known/est/bogus/simpleenroll", pkcs10, good, 404, "unknown CA label"},
		{"unknown operation", &op, "/.well-known/est/enrollme", pkcs10, good, 404, "unknown EST operation"},
		{"server key generation", &op, "/.well-known/est/serverkeygen", pkcs10, good, 501, "never leave"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := p.certCount(t)
			status, body := p.post(t, tt.cert, tt.path, tt.ctype, tt.body)
			if status != tt.status || !strings.Contains(body, tt.reason) {
				t.Fatalf("status %d %q, want %d %q", status, body, tt.status, tt.reason)
			}
			if n := p.certCount(t); n != before {
				t.Fatalf("certificates %d -> %d after a refusal", before, n)
			}
		})
	}
	// GET on an enrollment operation.
	resp, err := p.httpClient(&op).Get(p.url + enroll)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 405 || resp.Header.Get("Allow") != "POST" {
		t.Fatalf("GET simpleenroll: %d Allow=%q", resp.StatusCode, resp.Header.Get("Allow"))
	}
	// The claimed device still has its claim: refusals consumed nothing.
	if c, err := p.d.Store.Claim(ctx, acme.key(store.ClaimBySubject, "ACME-GW-0100")); err != nil || c.Consumed() {
		t.Fatalf("claim after refused requests: %+v, %v", c, err)
	}
	// Every refusal is logged with remote, subject and reason.
	logged := false
	for _, line := range strings.Split(p.logs.String(), "\n") {
		if contains(line, "EST request refused", "remote=127.0.0.1:", "subject=", "ACME-GW-0101", "reason=\"this device is not claimed") {
			logged = true
		}
	}
	if !logged {
		t.Errorf("no refusal log line with remote, subject and reason for the unclaimed device:\n%s", p.logs.String())
	}
}

// TestChannelBindingRequired: with the policy on, a plain CSR (what curl +
// openssl send) is refused and a bound one accepted.
func TestChannelBindingRequired(t *testing.T) {
	p := newPlatform(t, est.Policy{RequireChannelBinding: true})
	acme := newManufacturer(t, "Acme")
	p.trust(t, acme)
	idev := acme.device(t, "ACME-GW-0300")
	p.claim(t, acme, store.ClaimBySubject, "ACME-GW-0300", "ms-1/acc-1/gw-300")
	body, _ := csrBody(t, "x")
	before := p.certCount(t)
	if status, reason := p.post(t, &idev, "/.well-known/est/simpleenroll", est.ContentTypePKCS10, body); status != 403 || !strings.Contains(reason, "no channel binding") {
		t.Fatalf("unbound CSR: %d %q", status, reason)
	}
	if p.certCount(t) != before {
		t.Fatal("unbound CSR issued something")
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if _, err := p.client(&idev, "").Enroll(t.Context(), key, nil); err != nil {
		t.Fatalf("bound CSR: %v", err)
	}
	// csrattrs asks for the binding.
	resp, err := p.httpClient(nil).Get(p.url + "/.well-known/est/csrattrs")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != est.ContentTypeCSRAttrs || len(b) == 0 {
		t.Fatalf("csrattrs: %d %s", resp.StatusCode, b)
	}
}

// TestClaimRace: two enrollments with one claim at once; exactly one
// issues.
func TestClaimRace(t *testing.T) {
	p := newPlatform(t, est.Policy{})
	acme := newManufacturer(t, "Acme")
	p.trust(t, acme)
	idev := acme.device(t, "ACME-GW-0400")
	p.claim(t, acme, store.ClaimBySubject, "ACME-GW-0400", "ms-1/acc-1/gw-400")
	p.operational(t, "ms-1/acc-1/other") // create the CAs, so only leaves count
	before := p.certCount(t)
	const racers = 4
	var wg sync.WaitGroup
	errs := make([]error, racers)
	for i := range racers {
		wg.Go(func() {
			key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			_, errs[i] = p.client(&idev, "").Enroll(t.Context(), key, nil)
		})
	}
	wg.Wait()
	ok := 0
	for _, err := range errs {
		if err == nil {
			ok++
			continue
		}
		var se *est.StatusError
		if !errors.As(err, &se) || se.Code != 403 {
			t.Errorf("loser: %v, want 403", err)
		}
	}
	if ok != 1 || p.certCount(t) != before+1 {
		t.Fatalf("%d enrollments succeeded, %d certificates issued; want exactly 1", ok, p.certCount(t)-before)
	}
}

// TestAllowReenroll: with the policy on, the onboarding certificate that
// consumed the claim may enroll again; another certificate with the same
// subject may not.
func TestAllowReenroll(t *testing.T) {
	p := newPlatform(t, est.Policy{AllowReenroll: true})
	acme := newManufacturer(t, "Acme")
	p.trust(t, acme)
	idev := acme.device(t, "ACME-GW-0500")
	clone := acme.device(t, "ACME-GW-0500")
	p.claim(t, acme, store.ClaimBySubject, "ACME-GW-0500", "ms-1/acc-1/gw-500")
	for i := range 2 {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if _, err := p.client(&idev, "").Enroll(t.Context(), key, nil); err != nil {
			t.Fatalf("enrollment %d: %v", i+1, err)
		}
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	_, err := p.client(&clone, "").Enroll(t.Context(), key, nil)
	wantStatus(t, err, 403, "already used")
}

// TestWireTolerance: base64 with or without line breaks, missing padding, a
// PEM body, and with or without Content-Transfer-Encoding all enroll.
func TestWireTolerance(t *testing.T) {
	p := newPlatform(t, est.Policy{AllowReenroll: true})
	acme := newManufacturer(t, "Acme")
	p.trust(t, acme)
	idev := acme.device(t, "ACME-GW-0600")
	p.claim(t, acme, store.ClaimBySerial, pki.SerialHex(idev.Leaf.SerialNumber), "ms-1/acc-1/gw-600")
	lines, _ := csrBody(t, "x")
	oneLine := []byte(strings.ReplaceAll(string(lines), "\n", ""))
	crlf := []byte(strings.ReplaceAll(string(lines), "\n", "\r\n"))
	unpadded := []byte(strings.TrimRight(string(oneLine), "="))
	der, _ := est.DecodeCSR(lines)
	pemBody := []byte("-----BEGIN CERTIFICATE REQUEST-----\n" + string(lines) + "-----END CERTIFICATE REQUEST-----\n")
	for name, tc := range map[string]struct {
		body []byte
		cte  string
	}{
		"lines": {lines, "base64"}, "one line": {oneLine, ""}, "crlf": {crlf, "BASE64"}, "unpadded": {unpadded, ""}, "pem": {pemBody, ""},
	} {
		t.Run(name, func(t *testing.T) {
			req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, p.url+"/.well-known/est/simpleenroll", strings.NewReader(string(tc.body)))
			req.Header.Set("Content-Type", "application/pkcs10; charset=us-ascii")
			if tc.cte != "" {
				req.Header.Set("Content-Transfer-Encoding", tc.cte)
			}
			resp, err := p.httpClient(&idev).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != est.ContentTypeCertsOnly {
				t.Fatalf("%d %s", resp.StatusCode, b)
			}
			certs, err := est.DecodeCerts(b)
			if err != nil || !publicKeyEqualPub(certs[0], der.PublicKey) {
				t.Fatalf("response: %v", err)
			}
		})
	}
}

func wantStatus(t *testing.T, err error, code int, reason string) {
	t.Helper()
	var se *est.StatusError
	if !errors.As(err, &se) || se.Code != code || !strings.Contains(se.Reason, reason) {
		t.Fatalf("err = %v, want status %d with %q", err, code, reason)
	}
}

func publicKeyEqual(c *x509.Certificate, key *ecdsa.PrivateKey) bool {
	return publicKeyEqualPub(c, key.Public())
}

func publicKeyEqualPub(c *x509.Certificate, pub any) bool {
	k, ok := c.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(pub)
}

func subjects(certs []*x509.Certificate) []string {
	var s []string
	for _, c := range certs {
		s = append(s, c.Subject.CommonName)
	}
	return s
}
