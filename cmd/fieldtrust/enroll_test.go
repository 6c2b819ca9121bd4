package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/pki"
)

// writeCA writes a self-signed manufacturer CA (or, with ca false, a
// device certificate) to a PEM file.
func writeCA(t *testing.T, dir, cn string, ca bool) (string, *x509.Certificate) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: ca, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	f := filepath.Join(dir, strings.ReplaceAll(cn, " ", "_")+".pem")
	if err := os.WriteFile(f, pki.EncodeCertsPEM(c), 0o644); err != nil {
		t.Fatal(err)
	}
	return f, c
}

func TestManufacturerCommands(t *testing.T) {
	data, dir := t.TempDir(), t.TempDir()
	caFile, ca := writeCA(t, dir, "Acme IDevID Root CA", true)
	devFile, _ := writeCA(t, dir, "ACME-GW-1", false)

	// Flags before and after the positional argument.
	out, code := run(t, "manufacturer", "trust", "--data", data, caFile)
	if code != 0 || !strings.Contains(out, "trusted manufacturer CA CN=Acme IDevID Root CA") {
		t.Fatalf("trust: exit %d\n%s", code, out)
	}
	out, code = run(t, "manufacturer", "trust", caFile, "--data", data)
	if code != 0 || !strings.Contains(out, "already trusted") {
		t.Fatalf("trust again: exit %d\n%s", code, out)
	}
	out, code = run(t, "manufacturer", "list", "--data", data)
	if code != 0 || !strings.Contains(out, "CN=Acme IDevID Root CA") || !strings.Contains(out, pki.Fingerprint(ca)) {
		t.Fatalf("list: exit %d\n%s", code, out)
	}
	for _, tt := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"manufacturer", "trust", "--data", data}, 2, "exactly one PEM file"},
		{[]string{"manufacturer", "trust", "--data", data, devFile}, 1, "not a CA certificate"},
		{[]string{"manufacturer", "trust", "--data", data, filepath.Join(dir, "missing.pem")}, 1, "missing.pem"},
		{[]string{"manufacturer", "trust", "--data", data, filepath.Join(data, "pki", "transport", "root.crt")}, 1, "is a fieldtrust CA"},
		{[]string{"manufacturer", "list", "--data", data, "extra"}, 2, "unexpected argument"},
	} {
		out, code := run(t, tt.args...)
		if code != tt.code || !strings.Contains(out, tt.want) {
			t.Errorf("%v: exit %d %q; want exit %d and %q", tt.args, code, out, tt.code, tt.want)
		}
	}
}

func TestDeviceClaim(t *testing.T) {
	data, dir := t.TempDir(), t.TempDir()
	if out, code := run(t, "device", "claim", "--data", data, "--onboarding-serial", "01", "--path", "ms-1/acc-1/gw-0"); code != 1 || !strings.Contains(out, "no manufacturer CA is trusted") {
		t.Fatalf("claim without a trusted manufacturer: exit %d\n%s", code, out)
	}
	acmeFile, acme := writeCA(t, dir, "Acme IDevID Root CA", true)
	if out, code := run(t, "manufacturer", "trust", "--data", data, acmeFile); code != 0 {
		t.Fatalf("trust: %s", out)
	}
	// One manufacturer trusted: claims name it without being told.
	out, code := run(t, "device", "claim", "--data", data, "--onboarding-serial", "4a:1F:00:9c", "--path", "ms-1/acc-1/gw-1")
	if code != 0 || !strings.Contains(out, "serial 4A1F009C from CN=Acme IDevID Root CA") {
		t.Fatalf("claim by serial: exit %d\n%s", code, out)
	}
	out, code = run(t, "device", "claim", "--path", "ms-1/acc-1/gw-2", "--onboarding-subject", "ACME-GW-2", "--data", data)
	if code != 0 || !strings.Contains(out, "ms-1/acc-1/gw-2") {
		t.Fatalf("claim by subject: exit %d\n%s", code, out)
	}
	for _, tt := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--onboarding-serial", "4A1F009C", "--path", "ms-1/acc-1/gw-9"}, 1, "already claimed for ms-1/acc-1/gw-1"},
		{[]string{"--onboarding-serial", "xyz", "--path", "ms-1/acc-1/gw-9"}, 2, "hexadecimal"},
		{[]string{"--onboarding-serial", "01", "--path", "ms-1/acc-1"}, 2, "master/account/device"},
		{[]string{"--onboarding-serial", "01", "--path", "ms-1/acc-1/gw/x"}, 2, "at most 3"},
		{[]string{"--onboarding-serial", "01", "--path", "ms-1/+/gw"}, 2, "not allowed"},
		{[]string{"--onboarding-serial", "01", "--onboarding-subject", "x", "--path", "a/b/c"}, 2, "exactly one"},
		{[]string{"--path", "a/b/c"}, 2, "exactly one"},
		{[]string{"--onboarding-serial", "01"}, 2, "missing --path"},
		{[]string{"--csv", "x.csv", "--path", "a/b/c"}, 2, "cannot be combined"},
		{[]string{"extra"}, 2, "unexpected argument"},
	} {
		args := append([]string{"device", "claim", "--data", data}, tt.args...)
		out, code := run(t, args...)
		if code != tt.code || !strings.Contains(out, tt.want) {
			t.Errorf("%v: exit %d %q; want exit %d and %q", tt.args, code, out, tt.code, tt.want)
		}
	}
	out, code = run(t, "device", "list", "--data", data)
	if code != 0 || !regexp.MustCompile(`ms-1/acc-1/gw-1\s+serial 4A1F009C\s+\S+\s+waiting for enrollment\s+CN=Acme IDevID Root CA`).MatchString(out) || !strings.Contains(out, "subject ACME-GW-2") {
		t.Fatalf("list: exit %d\n%s", code, out)
	}

	// Two manufacturers trusted: a claim must say whose device it is, and
	// the same serial of the other manufacturer is another device.
	otherFile, other := writeCA(t, dir, "Other IDevID Root CA", true)
	if out, code := run(t, "manufacturer", "trust", "--data", data, otherFile); code != 0 {
		t.Fatalf("trust: %s", out)
	}
	for _, tt := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--onboarding-serial", "4A1F009C", "--path", "ms-1/acc-1/gw-3"}, 2, "2 manufacturer CAs are trusted"},
		{[]string{"--onboarding-serial", "4A1F009C", "--path", "ms-1/acc-1/gw-3", "--manufacturer", "Nobody"}, 2, "names no trusted manufacturer"},
		{[]string{"--onboarding-serial", "4A1F009C", "--path", "ms-1/acc-1/gw-3", "--manufacturer", pki.Fingerprint(acme)[:12]}, 1, "already claimed"},
		{[]string{"--onboarding-serial", "4A1F009C", "--path", "ms-1/acc-1/gw-3", "--manufacturer", strings.ToUpper(pki.Fingerprint(other)[:10])}, 0, "from CN=Other IDevID Root CA"},
		{[]string{"--onboarding-subject", "ACME-GW-2", "--path", "ms-1/acc-1/gw-4", "--manufacturer", "CN=Other IDevID Root CA"}, 0, "from CN=Other IDevID Root CA"},
		{[]string{"--onboarding-subject", "ACME-GW-5", "--path", "ms-1/acc-1/gw-5", "--manufacturer", "Acme IDevID Root CA"}, 0, "from CN=Acme IDevID Root CA"},
	} {
		args := append([]string{"device", "claim", "--data", data}, tt.args...)
		out, code := run(t, args...)
		if code != tt.code || !strings.Contains(out, tt.want) {
			t.Errorf("%v: exit %d %q; want exit %d and %q", tt.args, code, out, tt.code, tt.want)
		}
	}
	out, _ = run(t, "device", "list", "--data", data)
	if !regexp.MustCompile(`ms-1/acc-1/gw-3\s+serial 4A1F009C\s+\S+\s+waiting for enrollment\s+CN=Other IDevID Root CA`).MatchString(out) {
		t.Fatalf("list after claims of two manufacturers:\n%s", out)
	}
	// Legacy claims have nobody to adopt them while two are trusted.
	if out, code := run(t, "device", "adopt-claims", "--data", data); code != 2 || !strings.Contains(out, "--manufacturer") {
		t.Fatalf("adopt-claims with two manufacturers: exit %d\n%s", code, out)
	}
	if out, code := run(t, "device", "adopt-claims", "--data", data, "--manufacturer", pki.Fingerprint(acme)); code != 0 || !strings.Contains(out, "assigned 0 claim(s)") {
		t.Fatalf("adopt-claims: exit %d\n%s", code, out)
	}
}

func TestDeviceClaimCSV(t *testing.T) {
	data, dir := t.TempDir(), t.TempDir()
	acmeFile, _ := writeCA(t, dir, "Acme IDevID Root CA", true)
	if out, code := run(t, "manufacturer", "trust", "--data", data, acmeFile); code != 0 {
		t.Fatalf("trust: %s", out)
	}
	if _, code := run(t, "device", "claim", "--data", data, "--onboarding-subject", "OLD-1", "--path", "ms-1/acc-1/old"); code != 0 {
		t.Fatal("setup claim failed")
	}
	write := func(name, body string) string {
		f := filepath.Join(dir, name)
		if err := os.WriteFile(f, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return f
	}
	bad := write("bad.csv", `path,onboarding_serial,onboarding_subject
ms-1/acc-1/gw-1,0A:0B,
ms-1/acc-1/gw-2,,GW-2
ms-1/acc-1,,GW-3
ms-1/acc-1/gw-4,zz,
ms-1/acc-1/gw-5,0a0b,
ms-1/acc-1/gw-6,,OLD-1
ms-1/acc-1/gw-7,01,GW-7
ms-1/acc-1/gw-8,,
ms-1/acc-1/gw-9
`)
	out, code := run(t, "device", "claim", "--data", data, "--csv", bad)
	for _, want := range []string{
		"line 4: path \"ms-1/acc-1\" has 2 element(s)",
		"line 5: serial \"zz\"",
		"line 6: onboarding serial 0a0b is also on line 2",
		"line 7: onboarding subject OLD-1 is already claimed for ms-1/acc-1/old",
		"line 8: give either",
		"line 9: no onboarding serial or subject",
		"line 10: 1 fields, the header has 3",
		"7 bad line(s); nothing was written",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("bad CSV output lacks %q:\n%s", want, out)
		}
	}
	if code != 1 {
		t.Fatalf("bad CSV: exit %d", code)
	}
	if out, _ := run(t, "device", "list", "--data", data); strings.Contains(out, "gw-1") {
		t.Fatalf("a bad file wrote claims:\n%s", out)
	}

	// A good file: columns in any order, comments, a byte-order mark.
	var b strings.Builder
	b.WriteString("\ufeffonboarding_subject,path,onboarding_serial\n# factory batch 7\n")
	const n = 2000
	for i := range n {
		if i%2 == 0 {
			fmt.Fprintf(&b, "GW-%05d,ms-1/acc-2/gw-%05d,\n", i, i)
		} else {
			fmt.Fprintf(&b, ",ms-1/acc-2/gw-%05d,%X\n", i, 0x10000+i)
		}
	}
	good := write("good.csv", b.String())
	out, code = run(t, "device", "claim", "--csv", good, "--data", data)
	if code != 0 || !strings.Contains(out, fmt.Sprintf("claimed %d device(s)", n)) {
		t.Fatalf("good CSV: exit %d\n%s", code, out)
	}
	out, _ = run(t, "device", "list", "--data", data)
	if strings.Count(out, "ms-1/acc-2/gw-") != n || !strings.Contains(out, "serial 0107CF") {
		t.Fatalf("list after CSV import: %d claims\n%.500s", strings.Count(out, "ms-1/acc-2/gw-"), out)
	}
	for _, tt := range []struct{ body, want string }{
		{"", "no header row"},
		{"path,serial\n", "unknown column \"serial\""},
		{"path,onboarding_serial,manufacturer\nms-1/acc-3/gw-1,01,Nobody\n", "line 2: manufacturer \"Nobody\" names no trusted manufacturer"},
		{"onboarding_serial\n01\n", "no \"path\" column"},
		{"path\na/b/c\n", "need a \"onboarding_serial\" or \"onboarding_subject\" column"},
		{"path,onboarding_serial\n", "no claims"},
	} {
		out, code := run(t, "device", "claim", "--data", data, "--csv", write("x.csv", tt.body))
		if code != 1 || !strings.Contains(out, tt.want) {
			t.Errorf("CSV %q: exit %d %q, want %q", tt.body, code, out, tt.want)
		}
	}
}
