package est_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io/fs"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/est"
	"github.com/fieldtrust/fieldtrust/internal/interoptest"
	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/store"
)

// buildESTClient builds GlobalSign's estclient from its source (kept with
// its licence in the shared interop folder, read-only) in a temporary
// directory, outside this repository's module; its dependencies come from
// the module proxy. Outside CI a missing source or toolchain skips; in CI
// it fails.
func buildESTClient(t *testing.T) string {
	t.Helper()
	src := filepath.Join(interoptest.Dir(), "globalsign-est")
	skip := t.Skipf
	if os.Getenv("CI") != "" {
		skip = t.Fatalf
	}
	if _, err := os.Stat(filepath.Join(src, "cmd", "estclient")); err != nil {
		skip("GlobalSign estclient source not found at %s (set FIELDTRUST_INTEROP): %v", src, err)
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		skip("go toolchain not on PATH: %v", err)
	}
	dir := filepath.Join(t.TempDir(), "globalsign-est")
	err = filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dir, rel), 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dir, rel), b, 0o644)
	})
	if err != nil {
		t.Fatalf("copy estclient source: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "estclient")
	cmd := exec.CommandContext(t.Context(), goTool, "build", "-o", bin, "./cmd/estclient")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=readonly")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build GlobalSign estclient (needs the Go module proxy): %v\n%s", err, out)
	}
	return bin
}

// TestGlobalSignESTClient: an independent EST client (GlobalSign's
// estclient) gets the CA certificates and CSR attributes, enrolls with an
// onboarding certificate (and again, after "losing" the answer), renews
// with the operational certificate, and enrolls the e2e twin under the e2e
// label. (It refuses enrollment answers that hold more than the issued
// certificate: "3 certificates returned".)
func TestGlobalSignESTClient(t *testing.T) {
	bin := buildESTClient(t)
	p := newPlatform(t, est.Policy{})
	acme := newManufacturer(t, "Acme")
	p.trust(t, acme)
	idev := acme.device(t, "ACME-GW-1500")
	p.claim(t, acme, store.ClaimBySerial, pki.SerialHex(idev.Leaf.SerialNumber), "ms-1/acc-1/gw-1500")

	dir := t.TempDir()
	file := func(name string) string { return filepath.Join(dir, name) }
	write := func(name string, data []byte) string {
		t.Helper()
		if err := os.WriteFile(file(name), data, 0o600); err != nil {
			t.Fatal(err)
		}
		return file(name)
	}
	writeKey := func(name string, key *ecdsa.PrivateKey) string {
		t.Helper()
		b, err := pki.MarshalKeyPEM(key, nil)
		if err != nil {
			t.Fatal(err)
		}
		return write(name, b)
	}
	newCSR := func(name string) (string, *ecdsa.PrivateKey) {
		t.Helper()
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "gateway"}}, key)
		if err != nil {
			t.Fatal(err)
		}
		writeKey(name+".key", key)
		return write(name+".pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})), key
	}
	u, err := url.Parse(p.url)
	if err != nil {
		t.Fatal(err)
	}
	root := write("root.pem", pki.EncodeCertsPEM(p.d.Transport.Root()))
	run := func(args ...string) string {
		t.Helper()
		args = append(args, "-server", u.Host, "-explicit", root, "-timeout", "30s")
		out, err := exec.CommandContext(t.Context(), bin, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("estclient %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	readCerts := func(name string) []*x509.Certificate {
		t.Helper()
		certs, err := pki.ReadCertsFile(file(name))
		if err != nil {
			t.Fatal(err)
		}
		return certs
	}
	identity := func(d pki.Domain, leaf *x509.Certificate) string {
		t.Helper()
		a := p.d.Transport
		if d == pki.E2E {
			a = p.d.E2E
		}
		v, err := a.Verifier(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		id, _, err := v.Verify(leaf, nil, time.Time{}, x509.ExtKeyUsageAny)
		if err != nil {
			t.Fatalf("%s certificate from estclient: %v", d, err)
		}
		return id.String()
	}

	// cacerts and csrattrs, anonymous.
	run("cacerts", "-out", file("cacerts.pem"))
	if cas := readCerts("cacerts.pem"); !cas[0].Equal(p.d.Transport.Root()) {
		t.Fatalf("cacerts: first certificate %q, want the transport root", cas[0].Subject)
	}
	// csrattrs: ecdsa-with-SHA256 and an EC key on P-256, as estclient
	// parsed them.
	if out := run("csrattrs"); !strings.Contains(out, "1.2.840.10045.4.3.2") || !strings.Contains(out, "Type    : 1.2.840.10045.2.1") || !strings.Contains(out, "1.2.840.10045.3.1.7") {
		t.Fatalf("csrattrs: %s", out)
	}

	// enroll with the onboarding certificate, then again with the same
	// CSR, as after a lost answer: the same certificate.
	onb := write("onboarding.pem", pki.EncodeCertsPEM(idev.Leaf, acme.inter))
	onbKey := write("onboarding.key", func() []byte { b, _ := pki.MarshalKeyPEM(idev.PrivateKey, nil); return b }())
	csr1, _ := newCSR("csr1")
	run("enroll", "-certs", onb, "-key", onbKey, "-csr", csr1, "-out", file("op.pem"))
	op := readCerts("op.pem")
	if len(op) != 1 || identity(pki.Transport, op[0]) != "ms-1/acc-1/gw-1500" {
		t.Fatalf("enroll: %d certificates for %q", len(op), op[0].Subject.CommonName)
	}
	run("enroll", "-certs", onb, "-key", onbKey, "-csr", csr1, "-out", file("op-again.pem"))
	if again := readCerts("op-again.pem"); !again[0].Equal(op[0]) {
		t.Fatal("repeated enrollment returned another certificate")
	}

	// reenroll with the operational certificate and key (estclient builds
	// the CSR from the certificate's subject), then the e2e twin.
	run("reenroll", "-certs", file("op.pem"), "-key", file("csr1.key"), "-out", file("op2.pem"))
	op2 := readCerts("op2.pem")
	if identity(pki.Transport, op2[0]) != "ms-1/acc-1/gw-1500" || op2[0].Equal(op[0]) {
		t.Fatalf("reenroll: %q", op2[0].Subject.CommonName)
	}
	csr3, _ := newCSR("csr3")
	run("enroll", "-aps", est.LabelE2E, "-certs", file("op2.pem"), "-key", file("csr1.key"), "-csr", csr3, "-out", file("e2e.pem"))
	if e2e := readCerts("e2e.pem"); identity(pki.E2E, e2e[0]) != "ms-1/acc-1/gw-1500" {
		t.Fatalf("e2e enroll: %q", e2e[0].Subject.CommonName)
	}
	run("cacerts", "-aps", est.LabelE2E, "-certs", file("op2.pem"), "-key", file("csr1.key"), "-out", file("e2e-cas.pem"))
	if cas := readCerts("e2e-cas.pem"); len(cas) != 4 || !cas[0].Equal(p.d.E2E.Root()) {
		t.Fatalf("e2e cacerts: %d certificates", len(cas))
	}
}
