package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
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
