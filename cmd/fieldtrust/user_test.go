package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestUserCommands invites, lists and disables console users as an
// operator would.
func TestUserCommands(t *testing.T) {
	data := t.TempDir()
	out, code := run(t, "user", "invite", "--data", data, "--path", "acme-pumps", "--role", "viewer", "Anna@Acme.example")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	link := lines[len(lines)-1]
	if code != 0 || !strings.HasPrefix(link, "https://localhost:8443/invite#") || len(link) < len("https://localhost:8443/invite#")+40 {
		t.Fatalf("invite: exit %d\n%s", code, out)
	}
	// The same user again: another link (another passkey); another role: refused.
	out, code = run(t, "user", "invite", "--data", data, "--path", "acme-pumps", "--role", "viewer", "--url", "https://console.example:9443", "anna@acme.example")
	if code != 0 || !strings.Contains(out, "https://console.example:9443/invite#") || strings.Contains(out, link) {
		t.Fatalf("second invite: exit %d\n%s", code, out)
	}
	if out, code = run(t, "user", "invite", "--data", data, "--path", "acme-pumps", "--role", "admin", "anna@acme.example"); code != 1 || !strings.Contains(out, "exists") {
		t.Errorf("invite with another role: exit %d\n%s", code, out)
	}
	run(t, "user", "invite", "--data", data, "--path", "/", "--role", "admin", "ops@vendor.example")
	out, _ = run(t, "user", "list", "--data", data)
	if !strings.Contains(out, "anna@acme.example") || !strings.Contains(out, "ops@vendor.example") || !strings.Contains(out, "active") {
		t.Errorf("list:\n%s", out)
	}
	if out, _ = run(t, "user", "list", "--data", data, "--path", "acme-pumps"); strings.Contains(out, "ops@vendor.example") {
		t.Errorf("list --path acme-pumps shows the vendor's admin:\n%s", out)
	}
	if out, code = run(t, "user", "disable", "--data", data, "anna@acme.example"); code != 0 || !strings.Contains(out, "disabled anna@acme.example") {
		t.Errorf("disable: exit %d\n%s", code, out)
	}
	if out, _ = run(t, "user", "list", "--data", data); !strings.Contains(out, "disabled 20") {
		t.Errorf("list after disable:\n%s", out)
	}
	if out, code = run(t, "user", "invite", "--data", data, "--path", "acme-pumps", "--role", "viewer", "anna@acme.example"); code != 1 || !strings.Contains(out, "disabled") {
		t.Errorf("invite a disabled user: exit %d\n%s", code, out)
	}
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"user", "invite", "--data", data, "--path", "a/b/c/d", "x@y.example"}, "at most 3"},
		{[]string{"user", "invite", "--data", data, "--path", "acme", "--role", "root", "x@y.example"}, "viewer, operator, admin"},
		{[]string{"user", "invite", "--data", data, "--path", "acme", "not-an-email"}, "not an email"},
		{[]string{"user", "invite", "--data", data, "x@y.example"}, "--path"},
		{[]string{"user", "disable", "--data", data, "<b>@x"}, "not an email"},
	} {
		if out, code := run(t, tt.args...); code != 2 || !strings.Contains(out, tt.want) {
			t.Errorf("%v: exit %d, %q; want exit 2 and %q", tt.args, code, out, tt.want)
		}
	}
}

// TestIssueP12 writes identity.p12 and checks it with OpenSSL, the
// reader browsers' importers agree with.
func TestIssueP12(t *testing.T) {
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("CI is set but openssl is missing")
		}
		t.Skip("openssl not installed")
	}
	data, dir := t.TempDir(), filepath.Join(t.TempDir(), "acme")
	// Without a password and without a terminal: a clear refusal.
	cmd := exec.Command(binary, "pki", "issue", "acme-pumps", "--p12", "--data", data, "--out", dir)
	cmd.Env = append(os.Environ(), "FIELDTRUST_P12_PASSWORD=")
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "FIELDTRUST_P12_PASSWORD") {
		t.Fatalf("--p12 without a password: %v\n%s", err, out)
	}
	cmd = exec.Command(binary, "pki", "issue", "acme-pumps", "--p12", "--data", data, "--out", dir)
	cmd.Env = append(os.Environ(), "FIELDTRUST_P12_PASSWORD=s3cret pass")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "identity.p12") {
		t.Fatalf("pki issue --p12: %v\n%s", err, out)
	}
	p12 := filepath.Join(dir, "identity.p12")
	if st, err := os.Stat(p12); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("identity.p12: %v %v", st, err)
	}
	check := func(pass string, args ...string) (string, error) {
		c := exec.Command(openssl, append([]string{"pkcs12", "-in", p12, "-passin", "env:P12PASS"}, args...)...)
		c.Env = append(os.Environ(), "P12PASS="+pass)
		o, err := c.CombinedOutput()
		return string(o), err
	}
	o, err := check("s3cret pass", "-nokeys", "-clcerts")
	if err != nil || !strings.Contains(o, "acme-pumps") {
		t.Fatalf("openssl reads the certificate: %v\n%s", err, o)
	}
	if o, err = check("s3cret pass", "-nocerts", "-nodes"); err != nil || !strings.Contains(o, "PRIVATE KEY") {
		t.Fatalf("openssl reads the key: %v\n%s", err, o)
	}
	if o, err = check("wrong", "-nokeys"); err == nil {
		t.Fatalf("openssl read the file with a wrong password:\n%s", o)
	}
}
