package datadir

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCopyForNode: a node's directory gets what the nodes share and none
// of the first node's own state; SQLite and a used target are refused.
func TestCopyForNode(t *testing.T) {
	src := t.TempDir()
	files := map[string]string{
		"database.url":                "postgres://db/ft",
		"pki/transport/root.key":      "k",
		"platform/ingest-e2e.key":     "k",
		"firmware/url.key":            "k",
		"up.lock":                     "",
		"broker/state":                "x",
		"cluster/n1/jetstream/meta":   "x",
		"fieldtrust.db":               "x",
		"platform/sub/dir/nested.pem": "p",
	}
	for name, content := range files {
		p := filepath.Join(src, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	dst := filepath.Join(t.TempDir(), "n2")
	if err := CopyForNode(src, dst); err != nil {
		t.Fatal(err)
	}
	for name, content := range files {
		b, err := os.ReadFile(filepath.Join(dst, name))
		local := false
		for _, l := range nodeLocal {
			local = local || name == l || strings.HasPrefix(name, l+"/")
		}
		switch {
		case local && err == nil:
			t.Errorf("%s copied: it is the first node's own", name)
		case !local && (err != nil || string(b) != content):
			t.Errorf("%s not copied: %v", name, err)
		}
	}
	if st, err := os.Stat(filepath.Join(dst, "platform/ingest-e2e.key")); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("key mode: %v %v", st, err)
	}
	if err := CopyForNode(src, dst); err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Errorf("second copy into %s: %v", dst, err)
	}
	sqliteDir := t.TempDir()
	os.WriteFile(filepath.Join(sqliteDir, "fieldtrust.db"), nil, 0o600)
	if err := CopyForNode(sqliteDir, filepath.Join(t.TempDir(), "x")); err == nil || !strings.Contains(err.Error(), "SQLite stays single-node") {
		t.Errorf("SQLite directory: %v", err)
	}
}
