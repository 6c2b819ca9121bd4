package gateway

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestLoadE2ECAsFailsClosed: the e2e CA certificates decide which
// commands and CRLs the gateway trusts. Missing, they are enrolled; present
// but unreadable or garbled, the gateway refuses to start instead of
// running on without them.
func TestLoadE2ECAsFailsClosed(t *testing.T) {
	for _, tt := range []struct {
		name    string
		prepare func(file string) error
		wantErr string
	}{
		{"missing", func(string) error { return nil }, ""},
		{"unreadable", func(file string) error { return os.Mkdir(file, 0o700) }, "is a directory"},
		{"garbled", func(file string) error { return os.WriteFile(file, []byte("not PEM"), 0o644) }, "damaged"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := tt.prepare(filepath.Join(dir, "e2e-ca.pem")); err != nil {
				t.Fatal(err)
			}
			c := &credentials{dir: dir}
			err := c.load()
			if tt.wantErr == "" {
				if err != nil || c.cas() != nil {
					t.Fatalf("load = %v, CAs %v; want nothing loaded and no error", err, c.cas())
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), "e2e-ca.pem") {
				t.Fatalf("load = %v; want an error naming e2e-ca.pem and saying %q", err, tt.wantErr)
			}
		})
	}
}
