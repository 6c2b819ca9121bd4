package est_test

import (
	"crypto/x509"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fieldtrust/fieldtrust/internal/est"
	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/store"
)

// TestCurlOpenSSL is the walkthrough of docs/onboarding.md run for real: a
// device made of curl and openssl enrolls with its onboarding certificate,
// re-enrolls with its operational certificate, gets an e2e certificate and
// fetches cacerts; openssl decodes and verifies every answer.
func TestCurlOpenSSL(t *testing.T) {
	openssl := requireTool(t, "openssl")
	curl := requireTool(t, "curl")
	p := newPlatform(t, est.Policy{})
	acme := newManufacturer(t, "Acme")
	p.trust(t, acme)
	idev := acme.device(t, "ACME-GW-0700")
	p.claim(t, acme, store.ClaimBySerial, pki.SerialHex(idev.Leaf.SerialNumber), "ms-1/acc-1/gw-700")

	dir := t.TempDir()
	file := func(name string) string { return filepath.Join(dir, name) }
	write := func(name string, data []byte) {
		if err := os.WriteFile(file(name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("root.pem", pki.EncodeCertsPEM(p.d.Transport.Root()))
	write("e2e-root.pem", pki.EncodeCertsPEM(p.d.E2E.Root()))
	write("onboarding.pem", pki.EncodeCertsPEM(idev.Leaf, acme.inter))
	keyPEM, err := pki.MarshalKeyPEM(idev.PrivateKey, nil)
	if err != nil {
		t.Fatal(err)
	}
	write("onboarding.key", keyPEM)

	sh := func(script string) string {
		t.Helper()
		cmd := exec.CommandContext(t.Context(), "sh", "-ec", script)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "OPENSSL="+openssl, "CURL="+curl, "EST="+p.url+"/.well-known/est")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s\n%v\n%s", script, err, out)
		}
		return string(out)
	}
	// newCSR makes a P-256 key and a base64 DER CSR with openssl req.
	newCSR := func(name string) {
		sh(`"$OPENSSL" req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ` + name + `.key -subj /CN=gateway -outform DER -out ` + name + `.der 2>/dev/null
"$OPENSSL" base64 -in ` + name + `.der -out ` + name + `.b64`)
	}
	// post sends a CSR with curl and decodes the answer into out.pem.
	post := func(cert, key, csr, op, out string) {
		code := sh(`"$CURL" -sS -o ` + out + `.b64 -w '%{http_code}' --cacert root.pem --cert ` + cert + ` --key ` + key +
			` --data-binary @` + csr + `.b64 -H 'Content-Type: application/pkcs10' "$EST/` + op + `"`)
		if code != "200" {
			body, _ := os.ReadFile(file(out + ".b64"))
			t.Fatalf("curl %s: HTTP %s: %s", op, code, body)
		}
		sh(`"$OPENSSL" base64 -d -in ` + out + `.b64 | "$OPENSSL" pkcs7 -inform DER -print_certs -out ` + out + `.pem`)
	}
	// cacerts fetches the CA certificates as the holder of cert (the
	// enrollment answer is the leaf alone, RFC 7030 §4.2.3).
	cacerts := func(cert, key, label, out string) {
		sh(`"$CURL" -sS --fail --cacert root.pem --cert ` + cert + ` --key ` + key + ` "$EST/` + label + `cacerts" | "$OPENSSL" base64 -d | "$OPENSSL" pkcs7 -inform DER -print_certs -out ` + out)
	}
	verify := func(root, cas, cert string) {
		data, err := os.ReadFile(file(cert))
		if err != nil {
			t.Fatal(err)
		}
		if n := strings.Count(string(data), "BEGIN CERTIFICATE"); n != 1 {
			t.Fatalf("%s holds %d certificates; an enrollment answer holds only the one issued", cert, n)
		}
		out := sh(`"$OPENSSL" verify -CAfile ` + root + ` -untrusted ` + cas + ` ` + cert)
		if !strings.Contains(out, ": OK") {
			t.Fatalf("openssl verify %s: %s", cert, out)
		}
	}
	subjectCN := func(certs string) string {
		out := sh(`"$OPENSSL" x509 -in ` + certs + ` -noout -subject -nameopt multiline`)
		for _, l := range strings.Split(out, "\n") {
			if k, v, ok := strings.Cut(l, "="); ok && strings.TrimSpace(k) == "commonName" {
				return strings.TrimSpace(v)
			}
		}
		return out
	}

	// 1. Enroll with the onboarding certificate.
	newCSR("csr1")
	post("onboarding.pem", "onboarding.key", "csr1", "simpleenroll", "op1")
	cacerts("op1.pem", "csr1.key", "", "cas.pem")
	verify("root.pem", "cas.pem", "op1.pem")
	if cn := subjectCN("op1.pem"); cn != "ms-1/acc-1/gw-700" {
		t.Fatalf("enrolled certificate CN %q", cn)
	}
	// The openssl-made key is the one certified.
	if a, b := sh(`"$OPENSSL" x509 -in op1.pem -noout -pubkey`), sh(`"$OPENSSL" pkey -in csr1.key -pubout`); a != b {
		t.Fatalf("certified key differs from the CSR key:\n%s\n%s", a, b)
	}

	// 2. Re-enroll with the operational certificate and a new key.
	newCSR("csr2")
	post("op1.pem", "csr1.key", "csr2", "simplereenroll", "op2")
	verify("root.pem", "cas.pem", "op2.pem")
	if cn := subjectCN("op2.pem"); cn != "ms-1/acc-1/gw-700" {
		t.Fatalf("re-enrolled certificate CN %q", cn)
	}

	// 3. The e2e twin, authenticated by the transport certificate.
	newCSR("csr3")
	post("op2.pem", "csr2.key", "csr3", "e2e/simpleenroll", "e2e")
	cacerts("op2.pem", "csr2.key", "e2e/", "e2e-cas.pem")
	verify("e2e-root.pem", "e2e-cas.pem", "e2e.pem")

	// 4. cacerts, no client certificate.
	sh(`"$CURL" -sS --fail --cacert root.pem "$EST/cacerts" | "$OPENSSL" base64 -d | "$OPENSSL" pkcs7 -inform DER -print_certs -out cacerts.pem`)
	data, err := os.ReadFile(file("cacerts.pem"))
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		t.Fatalf("cacerts: %s", data)
	}
	if c, err := x509.ParseCertificate(block.Bytes); err != nil || !c.Equal(p.d.Transport.Root()) {
		t.Fatalf("first cacerts certificate is not the transport root: %v", err)
	}

	// 5. The onboarding certificate is spent; curl sees the 403 and reason.
	newCSR("csr4")
	out := sh(`"$CURL" -sS -w ' %{http_code}' --cacert root.pem --cert onboarding.pem --key onboarding.key --data-binary @csr4.b64 -H 'Content-Type: application/pkcs10' "$EST/simpleenroll"`)
	if !strings.Contains(out, "already used") || !strings.HasSuffix(strings.TrimSpace(out), "403") {
		t.Fatalf("second enrollment: %s", out)
	}
}

// TestBoundCSROpenSSL: OpenSSL reads a CSR with channel binding, verifies
// its signature and shows the binding as challengePassword.
func TestBoundCSROpenSSL(t *testing.T) {
	openssl := requireTool(t, "openssl")
	der, binding := boundCSR(t)
	f := filepath.Join(t.TempDir(), "csr.pem")
	if err := os.WriteFile(f, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(openssl, "req", "-in", f, "-noout", "-text", "-verify").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "verify OK") || !strings.Contains(string(out), "challengePassword") || !strings.Contains(string(out), binding) {
		t.Fatalf("openssl req: %v\n%s", err, out)
	}
}
