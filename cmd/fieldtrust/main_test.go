package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/fieldtrust/fieldtrust/internal/datadir"
	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/topic"
)

// binary is the fieldtrust binary built once for the tests that run it as
// a user would.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "fieldtrust-bin-")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "fieldtrust")
	out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build fieldtrust: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// run runs the binary and returns stdout+stderr and the exit code.
func run(t *testing.T, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return string(out), ee.ExitCode()
	}
	if err != nil {
		t.Fatalf("run %v: %v", args, err)
	}
	return string(out), 0
}

// TestCommandTree walks every command: each has a short description, and
// --help works and documents it (as Tailscale's CLI tests do).
func TestCommandTree(t *testing.T) {
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if c.Hidden || c.Name() == "help" || c.Name() == "completion" {
			return
		}
		if c.Short == "" {
			t.Errorf("%q has no Short description", c.CommandPath())
		}
		args := append(strings.Fields(c.CommandPath())[1:], "--help")
		out, code := run(t, args...)
		if code != 0 || !strings.Contains(out, "Usage:") {
			t.Errorf("%s --help: exit %d\n%s", c.CommandPath(), code, out)
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(newRootCmd())
}

func TestUsageErrors(t *testing.T) {
	data := t.TempDir()
	tests := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"pki", "issue", "--data", data, "a/b/c/d", "--out", t.TempDir()}, 2, "at most 3"},
		{[]string{"pki", "issue", "--data", data, "ms//dev", "--out", t.TempDir()}, 2, "empty element"},
		{[]string{"pki", "issue", "--data", data, "$SYS/x", "--out", t.TempDir()}, 2, "not allowed"},
		{[]string{"pki", "issue", "--data", data, "+", "--out", t.TempDir()}, 2, "not allowed"},
		// The topic scheme's own first levels are no identity (pki/crl/...).
		{[]string{"pki", "issue", "--data", data, "pki", "--out", t.TempDir()}, 2, "reserved for the platform"},
		{[]string{"pki", "issue", "--data", data, topic.CRLTransport, "--out", t.TempDir()}, 2, "reserved for the platform"},
		{[]string{"pki", "issue", "--data", data, "ms/acc/dev"}, 2, "--out"},
		{[]string{"pki", "issue", "--data", data, "--service", "x", "--role", "root", "--out", t.TempDir()}, 2, "admin, device-manager, firmware-writer, rules-engine, snapshot-reader"},
		{[]string{"pki", "revoke", "--data", data, "ms-9/acc-1/dev-1"}, 1, "pki list"},
		{[]string{"pki", "revoke", "--data", data, "--serial", "xyz"}, 2, "hexadecimal"},
		{[]string{"pki", "revoke", "--data", data, "--serial", "ab:cd", "--reason", "bored"}, 2, "keyCompromise"},
		{[]string{"pki", "list", "--data", data, "extra"}, 2, "unexpected argument"},
		{[]string{"up", "--nope"}, 2, "unknown flag"},
	}
	for _, tt := range tests {
		out, code := run(t, tt.args...)
		if code != tt.code || !strings.Contains(out, tt.want) {
			t.Errorf("%v: exit %d, output %q; want exit %d and %q", tt.args, code, out, tt.code, tt.want)
		}
	}
}

// TestPKIWorkflow issues, lists, revokes and prints CRLs as an operator
// would, flags after positional arguments included.
func TestPKIWorkflow(t *testing.T) {
	data, out := t.TempDir(), t.TempDir()
	o, code := run(t, "pki", "issue", "ms-acc-1/acc-1/dev-1", "--data", data, "--out", filepath.Join(out, "dev1"), "--days", "7")
	if code != 0 || !strings.Contains(o, "created master-account CA ms-acc-1") || !strings.Contains(o, "created account CA ms-acc-1/acc-1") {
		t.Fatalf("issue: exit %d\n%s", code, o)
	}
	st, err := os.Stat(filepath.Join(out, "dev1", "key.pem"))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key.pem: %v %v", st, err)
	}
	if o, code := run(t, "pki", "issue", "--data", data, "--service", "ingest", "--role", "snapshot-reader", "--out", filepath.Join(out, "ingest")); code != 0 {
		t.Fatalf("service issue: %s", o)
	}
	// Revoke by serial as 'openssl x509 -text' prints it: colons, lower case.
	certs, err := pki.ReadCertsFile(filepath.Join(out, "dev1", "cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	colon := strings.TrimSuffix(regexp.MustCompile("(..)").ReplaceAllString(fmt.Sprintf("%x", certs[0].SerialNumber.Bytes()), "$1:"), ":")
	if o, code := run(t, "pki", "revoke", "--serial", colon, "--data", data, "--reason", "keyCompromise"); code != 0 || !strings.Contains(o, "keyCompromise") {
		t.Fatalf("revoke: exit %d\n%s", code, o)
	}
	o, code = run(t, "pki", "list", "--data", data)
	if code != 0 || !regexp.MustCompile(`ms-acc-1/acc-1/dev-1\s+[0-9A-F]+\s+\S+\s+revoked \(keyCompromise\)`).MatchString(o) || !strings.Contains(o, "ingest") {
		t.Fatalf("list:\n%s", o)
	}
	o, code = run(t, "pki", "crl", "--data", data)
	if code != 0 || strings.Count(o, "BEGIN X509 CRL") != 4 { // root, services, master, account
		t.Fatalf("crl: exit %d\n%s", code, o)
	}
}

// TestUp runs the platform as a user would: it initializes the data
// directory, serves /healthz and the roots over HTTPS with a certificate
// that verifies for the address, refuses a second 'up' on the same
// directory, and stops cleanly on SIGTERM.
func TestUp(t *testing.T) {
	data := t.TempDir()
	addr := freeAddr(t)
	p := startUp(t, data, addr, freeAddr(t))
	cmd := p.cmd

	rootPEM, err := os.ReadFile(filepath.Join(data, "pki", "transport", "root.crt"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(rootPEM)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}, Timeout: 10 * time.Second}
	resp, err := client.Get("https://" + addr + "/healthz")
	if err != nil {
		t.Fatalf("healthz (server certificate must verify for %s): %v", addr, err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"ok"`) {
		t.Fatalf("healthz: %d %s", resp.StatusCode, body)
	}
	resp, err = client.Get("https://" + addr + "/ca")
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if strings.Count(string(body), "BEGIN CERTIFICATE") != 2 || !bytes.Contains(body, bytes.TrimSpace(rootPEM)) {
		t.Fatalf("/ca did not serve both roots:\n%s", body)
	}
	// TLS 1.1 is refused.
	if c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool, MaxVersion: tls.VersionTLS11}); err == nil {
		c.Close()
		t.Fatal("TLS 1.1 handshake succeeded")
	}
	// Operator commands work while up runs.
	if o, code := run(t, "pki", "issue", "--data", data, "ms-1/acc-1/dev-1", "--out", t.TempDir()); code != 0 {
		t.Fatalf("issue while up runs: %s", o)
	}
	// A second platform on the same directory is refused with a clear error.
	o, code := run(t, "up", "--data", data, "--http-addr", freeAddr(t))
	if code == 0 || !strings.Contains(o, "already running") {
		t.Fatalf("second up: exit %d\n%s", code, o)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	werr := make(chan error, 1)
	go func() { werr <- cmd.Wait() }()
	select {
	case err := <-werr:
		logs := p.logs()
		if err != nil {
			t.Fatalf("up exited with %v after SIGTERM; logs:\n%s", err, logs)
		}
		if !strings.Contains(logs, "platform stopped") {
			t.Fatalf("no clean-stop log line:\n%s", logs)
		}
		if strings.Contains(logs, "PRIVATE KEY") {
			t.Fatal("logs contain key material")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("up did not stop within 30 s of SIGTERM")
	}
}

// upProcess is a 'fieldtrust up' child process.
type upProcess struct {
	cmd     *exec.Cmd
	mu      sync.Mutex
	buf     bytes.Buffer
	logDone chan struct{}
}

// logs returns what the process logged so far (all of it once it exited).
func (p *upProcess) logs() string {
	select {
	case <-p.logDone:
	case <-time.After(5 * time.Second):
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.buf.String()
}

// startUp starts 'fieldtrust up' and waits until it logs that it is up.
func startUp(t *testing.T, data, httpAddr, mqttAddr string, extra ...string) *upProcess {
	t.Helper()
	p := &upProcess{logDone: make(chan struct{})}
	p.cmd = exec.Command(binary, append([]string{"up", "--data", data, "--http-addr", httpAddr, "--mqtt-addr", mqttAddr, "--log-format", "json"}, extra...)...)
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.cmd.Process.Kill(); p.cmd.Wait() })
	up := make(chan struct{})
	go func() {
		defer close(p.logDone)
		sc := bufio.NewScanner(stderr)
		once := false
		for sc.Scan() {
			p.mu.Lock()
			p.buf.WriteString(sc.Text() + "\n")
			p.mu.Unlock()
			if !once && strings.Contains(sc.Text(), `"msg":"platform up"`) {
				once = true
				close(up)
			}
		}
	}()
	select {
	case <-up:
	case <-p.logDone:
		t.Fatalf("platform exited before coming up; logs:\n%s", p.logs())
	case <-time.After(60 * time.Second):
		t.Fatalf("platform did not come up; logs:\n%s", p.logs())
	}
	return p
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func openData(t *testing.T, dir string) *datadir.Dir {
	t.Helper()
	d, err := datadir.Open(t.Context(), dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	return d
}
