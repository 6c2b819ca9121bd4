package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestFirmwareCLI: the firmware and command verbs as an operator types
// them, offline (the rollout itself is TestCampaign in internal/devicemsg).
func TestFirmwareCLI(t *testing.T) {
	data, keys := t.TempDir(), filepath.Join(t.TempDir(), "keys")
	fw := filepath.Join(t.TempDir(), "fw.bin")
	os.WriteFile(fw, []byte("pump firmware 2.4.1"), 0o600)
	other := filepath.Join(t.TempDir(), "other.bin")
	os.WriteFile(other, []byte("something else"), 0o600)
	if out, code := run(t, "pki", "init", "--data", data); code != 0 {
		t.Fatalf("pki init: %d %s", code, out)
	}
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"firmware", "keys", "init", "--dir", keys}, 0, "--firmware-root " + filepath.Join(keys, "root.json")},
		{[]string{"firmware", "keys", "init", "--dir", keys}, 1, "already holds firmware keys"},
		{[]string{"firmware", "keys", "init"}, 2, "--dir"},
		{[]string{"firmware", "add", "--data", data, "--keys", keys, "--file", fw, "--version", "2.4.1", "--device-type", "pump"}, 0, "added pump/2.4.1"},
		{[]string{"firmware", "add", "--data", data, "--keys", keys, "--file", other, "--version", "2.4.1", "--device-type", "pump"}, 1, "immutable"},
		{[]string{"firmware", "add", "--data", data, "--keys", keys, "--file", fw, "--version", "v2", "--device-type", "pump"}, 1, "semantic version"},
		{[]string{"firmware", "add", "--data", data, "--keys", keys, "--file", fw, "--version", "2.5.0", "--device-type", "../pump"}, 1, "device type"},
		{[]string{"firmware", "list", "--data", data}, 0, "pump/2.4.1"},
		{[]string{"firmware", "keys", "rotate", "--data", data, "--keys", keys, "--role", "targets"}, 0, "root version 2"},
		{[]string{"firmware", "keys", "rotate", "--data", data, "--keys", keys, "--role", "root"}, 0, "root key rotated: root version 3"},
		{[]string{"firmware", "keys", "rotate", "--data", data, "--keys", keys, "--role", "timestamp"}, 0, "root version 4"},
		{[]string{"firmware", "keys", "rotate", "--data", data, "--keys", keys, "--role", "delegated"}, 2, "want root, targets"},
		{[]string{"firmware", "list", "--data", data}, 0, "pump/2.4.1"},
		{[]string{"firmware", "campaign", "create", "--data", data, "--version", "2.4.1", "--device-type", "pump", "--scope", "ms-1"}, 1, "no gateway in ms-1 runs a pump device"},
		{[]string{"firmware", "campaign", "create", "--data", data, "--version", "9.9.9", "--device-type", "pump", "--scope", "ms-1"}, 1, "no firmware 9.9.9"},
		{[]string{"firmware", "campaign", "create", "--data", data, "--version", "2.4.1", "--device-type", "pump", "--scope", "ms-1", "--canary", "101"}, 1, "--canary 101"},
		{[]string{"firmware", "campaign", "list", "--data", data}, 0, "ID  DEVICE TYPE"},
		{[]string{"firmware", "campaign", "status", "--data", data, "nope", "--json"}, 1, "not found"},
		{[]string{"firmware", "campaign", "pause", "--data", data, "nope"}, 1, "not found"},
		{[]string{"command", "send", "--data", data, "ms-1/acc-1/gw-1", "reboot"}, 1, "no valid e2e certificate"},
		{[]string{"command", "send", "--data", data, "ms-1/acc-1", "reboot"}, 2, "not a gateway path"},
		{[]string{"command", "send", "--data", data, "ms-1/acc-1/gw-1", "Reboot!"}, 2, "name"},
		{[]string{"command", "send", "--data", data, "ms-1/acc-1/gw-1", "set-interval", "seconds"}, 2, "key=value"},
		{[]string{"command", "send", "--data", data, "ms-1/acc-1/gw-1", "reboot", "--expires", "720h"}, 2, "--expires"},
	} {
		out, code := run(t, c.args...)
		if code != c.code || !strings.Contains(out, c.want) {
			t.Errorf("%v: exit %d, %q; want exit %d and %q", c.args, code, out, c.code, c.want)
		}
	}
	// A campaign for an explicit gateway (no snapshot needed): created,
	// listed, steered.
	out, code := run(t, "firmware", "campaign", "create", "--data", data, "--version", "2.4.1", "--device-type", "pump", "--scope", "ms-1/acc-1/gw-1")
	id, _, _ := strings.Cut(out, "\n")
	if code != 0 || len(id) != 16 {
		t.Fatalf("campaign create: %d %q", code, out)
	}
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"firmware", "campaign", "list", "--data", data, "--state", "running"}, 0, id + "  pump         2.4.1    running"},
		{[]string{"firmware", "campaign", "status", "--data", data, id, "--json"}, 0, `"path": "ms-1/acc-1/gw-1",` + "\n      \"state\": \"pending\""},
		{[]string{"firmware", "campaign", "pause", "--data", data, id}, 0, "paused"},
		{[]string{"firmware", "campaign", "pause", "--data", data, id}, 1, "not running"},
		{[]string{"firmware", "campaign", "resume", "--data", data, id}, 0, "running"},
		{[]string{"firmware", "campaign", "abort", "--data", data, id}, 0, "aborting"},
		{[]string{"firmware", "campaign", "abort", "--data", data, id}, 1, "already"},
	} {
		out, code := run(t, c.args...)
		if code != c.code || !strings.Contains(out, c.want) {
			t.Errorf("%v: exit %d, %q; want exit %d and %q", c.args, code, out, c.code, c.want)
		}
	}
	if out, _ := run(t, "firmware", "campaign", "list", "--data", data, "--state", "running"); strings.Contains(out, id) {
		t.Errorf("an aborting campaign listed as running: %q", out)
	}
	if _, err := os.Stat(filepath.Join(keys, "2.root.json")); err != nil {
		t.Errorf("rotation left no 2.root.json: %v", err)
	}
}

// TestFirmwareThresholdCLI: 2-of-3 root and targets keys from the CLI,
// signing with several holders at once and one after the other, and a
// rotation that changes the targets quorum.
func TestFirmwareThresholdCLI(t *testing.T) {
	data, keys := t.TempDir(), filepath.Join(t.TempDir(), "keys")
	h := func(i int) string { return filepath.Join(keys, fmt.Sprintf("keyholder-%d", i)) }
	fw := func(v string) string {
		f := filepath.Join(t.TempDir(), "fw.bin")
		os.WriteFile(f, []byte("pump firmware "+v), 0o600)
		return f
	}
	add := func(v string, dirs ...string) []string {
		args := []string{"firmware", "add", "--data", data, "--file", fw(v), "--version", v, "--device-type", "pump"}
		for _, d := range dirs {
			args = append(args, "--keys", d)
		}
		return args
	}
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"firmware", "keys", "init", "--dir", keys, "--threshold", "snapshot=2"}, 2, "only the offline roles"},
		{[]string{"firmware", "keys", "init", "--dir", keys, "--threshold", "root=3", "--keys", "root=2"}, 2, "threshold 3 of 2"},
		{[]string{"firmware", "keys", "init", "--dir", keys, "--threshold", "root=2,targets=2", "--keys", "root=3,targets=3"}, 0, "key holder 3: " + h(3)},
		{[]string{"firmware", "keys", "init", "--dir", keys}, 1, "already holds firmware keys"},
		{add("1.0.0", h(1), h(2)), 1, "directory of 'firmware keys init'"},
		{add("1.0.0", keys), 0, "added pump/1.0.0"},
		{add("1.1.0", h(1), h(1)), 0, "needs 1 more signature"},
		{add("1.2.0", h(2)), 1, "waits for signatures"},
		{[]string{"firmware", "sign", "--data", data}, 0, "targets version 2 (pump/1.0.0, pump/1.1.0): 1 of 2 signatures"},
		{[]string{"firmware", "sign", "--data", data, "--keys", h(1)}, 0, "1 of 2 signatures; another holder"},
		{[]string{"firmware", "sign", "--data", data, "--keys", h(3)}, 0, "targets version 2 published with 2 of 2"},
		{[]string{"firmware", "sign", "--data", data}, 0, "nothing waits"},
		{[]string{"firmware", "list", "--data", data}, 0, "pump/1.1.0"},
		{add("1.2.0", h(2), h(3)), 0, "added pump/1.2.0"},
		{[]string{"firmware", "keys", "rotate", "--data", data, "--keys", h(1), "--role", "targets"}, 1, "root needs 2 of its 3 keys"},
		{[]string{"firmware", "keys", "rotate", "--data", data, "--keys", h(1), "--role", "targets", "--threshold", "2"}, 2, "go together"},
		{[]string{"firmware", "keys", "rotate", "--data", data, "--keys", h(1), "--keys", h(2), "--role", "targets", "--threshold", "3", "--count", "2"}, 2, "threshold 3 of 2"},
		{[]string{"firmware", "keys", "rotate", "--data", data, "--keys", h(1), "--keys", h(2), "--role", "targets", "--threshold", "1", "--count", "1"}, 0, "root version 2"},
		{add("1.3.0", h(1)), 0, "added pump/1.3.0"},
		{[]string{"firmware", "sign", "--data", data, "--discard"}, 1, "no targets metadata waits"},
	} {
		out, code := run(t, c.args...)
		if code != c.code || !strings.Contains(out, c.want) {
			t.Errorf("%v: exit %d, %q; want exit %d and %q", c.args, code, out, c.code, c.want)
		}
	}
}

// TestDemoFirmware is the "done means" as an operator does it, with
// the real binary: 'fieldtrust demo' pins DIR/demo/firmware-keys/root.json
// in its three gateways and prints the commands; following them adds a
// firmware version, rolls it out canary first to both customers and the
// campaign completes with every gateway installed; a signed command comes
// back with the gateway's signed result; a customer's audit view shows
// what was sent to its gateways, and nothing of the other customer's.
func TestDemoFirmware(t *testing.T) {
	data, httpAddr := t.TempDir(), freeAddr(t)
	cmd := exec.Command(binary, "demo", "--data", data, "--http-addr", httpAddr, "--mqtt-addr", freeAddr(t), "--every", "1s", "--log-format", "json")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() })
	printed := make(chan string, 1)
	go func() {
		var b strings.Builder
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			b.WriteString(sc.Text() + "\n")
			if strings.Contains(sc.Text(), "campaign status") {
				printed <- b.String()
			}
		}
		io.Copy(io.Discard, stdout)
	}()
	var out string
	select {
	case out = <-printed:
	case <-time.After(2 * time.Minute):
		t.Fatal("demo printed no firmware instructions within 2 minutes")
	}
	keys := filepath.Join(data, "demo", "firmware-keys")
	for _, want := range []string{"firmware add --data " + data + " --keys " + keys, "campaign create --data " + data, "--scope acme-pumps --scope globex-labs"} {
		if !strings.Contains(out, want) {
			t.Fatalf("demo output lacks %q:\n%s", want, out)
		}
	}
	fw := filepath.Join(t.TempDir(), "pump-fw.bin")
	os.WriteFile(fw, bytes.Repeat([]byte("pump firmware 1.1.0 "), 50000), 0o600)
	if o, code := run(t, "firmware", "add", "--data", data, "--keys", keys, "--file", fw, "--version", "1.1.0", "--device-type", "pump"); code != 0 {
		t.Fatalf("firmware add: %d %s", code, o)
	}
	// The campaign is for the gateways whose pumps are in the store (their
	// first snapshots): wait for all three.
	d := openData(t, data)
	defer d.Close()
	poll(t, 2*time.Minute, "the three demo gateways' pumps in the store", func() bool {
		devs, err := d.Store.ListDevices(t.Context(), "")
		gws := map[string]bool{}
		for _, dv := range devs {
			if dv.DeviceType == "pump" {
				gws[dv.Gateway] = true
			}
		}
		return err == nil && len(gws) == 3
	})
	o, code := run(t, "firmware", "campaign", "create", "--data", data, "--version", "1.1.0", "--device-type", "pump",
		"--scope", "acme-pumps", "--scope", "globex-labs", "--canary", "34", "--max-failures", "1")
	if code != 0 || !strings.Contains(o, "to 3 gateways (2 in the first stage)") {
		t.Fatalf("campaign create: %d %s", code, o)
	}
	id, _, _ := strings.Cut(o, "\n")
	var rep struct {
		State   string
		Devices []struct{ Path, State, Reason string }
	}
	poll(t, 3*time.Minute, "the campaign to complete", func() bool {
		o, code := run(t, "firmware", "campaign", "status", "--data", data, id, "--json")
		return code == 0 && json.Unmarshal([]byte(o), &rep) == nil && rep.State == "completed"
	})
	for _, d := range rep.Devices {
		if d.State != "installed" {
			t.Errorf("%s: %s %s", d.Path, d.State, d.Reason)
		}
	}
	o, code = run(t, "command", "send", "--data", data, "acme-pumps/plant-berlin/gw-1", "clean", "--wait", "--timeout", "2m")
	if code != 0 || !strings.Contains(o, `"status": "ok"`) || !strings.Contains(o, "cleaned_devices") {
		t.Fatalf("command send --wait: %d %s", code, o)
	}

	// The customer's audit view, with the credentials the demo printed.
	cust := filepath.Join(data, "demo", "customers", "acme-pumps")
	cert, err := tls.LoadX509KeyPair(filepath.Join(cust, "cert.pem"), filepath.Join(cust, "key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	rootPEM, _ := os.ReadFile(filepath.Join(data, "pki", "transport", "root.crt"))
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(rootPEM)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}}}, Timeout: 30 * time.Second}
	audit := func(scope string) (int, map[string]int) {
		resp, err := client.Get("https://" + httpAddr + "/api/v1/gateways/" + scope + "/messages?limit=1000")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var page struct {
			Messages []struct{ Kind, Gateway string }
		}
		json.NewDecoder(resp.Body).Decode(&page)
		kinds := map[string]int{}
		for _, m := range page.Messages {
			if !strings.HasPrefix(m.Gateway, "acme-pumps/") {
				t.Errorf("acme-pumps sees a message for %s", m.Gateway)
			}
			kinds[m.Kind]++
		}
		return resp.StatusCode, kinds
	}
	poll(t, time.Minute, "the customer to see notices, downloads, the command and its result", func() bool {
		code, k := audit("acme-pumps")
		return code == 200 && k["notice"] >= 2 && k["download"] >= 2 && k["command"] == 1 && k["result"] == 1 && k["status"] >= 2
	})
	if code, _ := audit("globex-labs"); code != http.StatusNotFound {
		t.Errorf("acme-pumps read globex-labs's audit: %d", code)
	}

	// The customer's signed export carries the same device messages, and
	// 'fieldtrust ledger verify' proves each against the signed head
	// offline. Exported once the head covers them all.
	exportFile, e2eRoot := filepath.Join(t.TempDir(), "export.json"), filepath.Join(t.TempDir(), "e2e-root.pem")
	e2ePEM, _ := os.ReadFile(filepath.Join(data, "pki", "e2e", "root.crt"))
	os.WriteFile(e2eRoot, e2ePEM, 0o644)
	var vout string
	poll(t, time.Minute, "an export with the notices, downloads, command and result, verified offline", func() bool {
		resp, err := client.Get("https://" + httpAddr + "/api/v1/export")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || os.WriteFile(exportFile, b, 0o600) != nil {
			return false
		}
		var code int
		vout, code = run(t, "ledger", "verify", "--e2e-root", e2eRoot, "--export", exportFile)
		if code != 0 {
			t.Fatalf("ledger verify of the customer's export: %d %s", code, vout)
		}
		if bytes.Contains(b, []byte(`"gateway":"globex-labs/`)) {
			t.Fatal("acme-pumps's export holds globex-labs's device messages")
		}
		return strings.Contains(vout, "1 command,") && strings.Contains(vout, "1 result,") && !strings.Contains(vout, "device messages in range are not yet")
	})
	if !strings.Contains(vout, "notice") || !strings.Contains(vout, "download") {
		t.Errorf("the verified export lacks notices or downloads: %s", vout)
	}
}

// poll runs cond until it holds or within passes.
func poll(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, within)
		}
		time.Sleep(500 * time.Millisecond) // the next look, not synchronisation: cond decides
	}
}
