package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestAgentCommands: 'agent create' prints the boarding configuration the
// SDKs consume (or writes it 0600 with --out), list/show/rotate-iat/revoke
// work offline on the data directory, and bad input is a usage error.
func TestAgentCommands(t *testing.T) {
	dir := t.TempDir()
	out, code := run(t, "agent", "create", "--data", dir, "acme-pumps/plant-berlin/press-7", "--profile", "SHARED_SECRET", "--external-url", "https://platform.example:8443")
	if code != 0 {
		t.Fatalf("create: %d %s", code, out)
	}
	var b struct {
		Content struct {
			BaseURL, IAT, ClientID, Tenant string
			ClientCredentialProfile        []string
		}
		Expiration string
	}
	if err := json.Unmarshal([]byte(out), &b); err != nil {
		t.Fatalf("boarding configuration: %v\n%s", err, out)
	}
	if b.Content.BaseURL != "https://platform.example:8443" || b.Content.Tenant != "acme-pumps" || b.Content.IAT == "" ||
		len(b.Content.ClientCredentialProfile) != 1 || b.Content.ClientCredentialProfile[0] != "SHARED_SECRET" || b.Expiration == "" {
		t.Fatalf("boarding %+v", b)
	}
	file := filepath.Join(dir, "press-8.json")
	if out, code := run(t, "agent", "create", "--data", dir, "acme-pumps/plant-berlin/press-8", "--profile", "RSA_3072", "--out", file); code != 0 {
		t.Fatalf("create --out: %d %s", code, out)
	}
	if st, err := os.Stat(file); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("--out file: %v %v", st, err)
	}
	out, code = run(t, "agent", "list", "--data", dir)
	if code != 0 || !strings.Contains(out, "acme-pumps/plant-berlin/press-7") || !strings.Contains(out, "RSA_3072") || !strings.Contains(out, "onboarding") {
		t.Fatalf("list: %d %s", code, out)
	}
	if out, code := run(t, "agent", "rotate-iat", "--data", dir, "acme-pumps/plant-berlin/press-7"); code != 0 || !strings.Contains(out, `"iat"`) || strings.Contains(out, b.Content.IAT) {
		t.Fatalf("rotate-iat: %d %s", code, out)
	}
	if out, code := run(t, "agent", "revoke", "--data", dir, "acme-pumps/plant-berlin/press-7"); code != 0 {
		t.Fatalf("revoke: %d %s", code, out)
	}
	if out, code := run(t, "agent", "show", "--data", dir, "acme-pumps/plant-berlin/press-7"); code != 0 || !strings.Contains(out, `"state": "revoked"`) {
		t.Fatalf("show: %d %s", code, out)
	}
	for _, args := range [][]string{
		{"agent", "create", "--data", dir, "acme-pumps/plant-berlin", "--profile", "SHARED_SECRET"},
		{"agent", "create", "--data", dir, "acme-pumps/plant-berlin/x", "--profile", "PLAIN"},
		{"agent", "create", "--data", dir, "acme-pumps/plant-berlin/x", "--external-url", "http://insecure"},
	} {
		if out, code := run(t, args...); code != 2 {
			t.Errorf("%v: exit %d, want 2 (usage)\n%s", args, code, out)
		}
	}
	if out, code := run(t, "agent", "create", "--data", dir, "acme-pumps/plant-berlin/press-8"); code == 0 || !strings.Contains(out, "exists") {
		t.Errorf("second create at one path: %d %s", code, out)
	}
}
