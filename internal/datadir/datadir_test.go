package datadir

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestChooseDB(t *testing.T) {
	const pg = "postgres://u@127.0.0.1:5432/ft?sslmode=disable"
	tests := []struct {
		name    string
		setup   func(dir string)
		db      string
		want    string
		wantErr string
	}{
		{"fresh, default", nil, "", "", ""},
		{"fresh, sqlite spelled out", nil, "sqlite", "", ""},
		{"fresh, postgres is remembered", nil, pg, pg, ""},
		{"remembered postgres, no flag", func(d string) { os.WriteFile(filepath.Join(d, "database.url"), []byte(pg+"\n"), 0o600) }, "", pg, ""},
		{"remembered postgres, same flag", func(d string) { os.WriteFile(filepath.Join(d, "database.url"), []byte(pg+"\n"), 0o600) }, pg, pg, ""},
		{"remembered postgres, other flag", func(d string) { os.WriteFile(filepath.Join(d, "database.url"), []byte(pg+"\n"), 0o600) }, pg + "x", "", "another database"},
		{"sqlite in use, postgres asked", func(d string) { os.WriteFile(filepath.Join(d, "fieldtrust.db"), nil, 0o600) }, pg, "", "already keeps its state in SQLite"},
		{"not a database URL", nil, "mysql://x", "", "postgres://"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if tt.setup != nil {
				tt.setup(dir)
			}
			got, err := chooseDB(dir, tt.db)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("chooseDB = %q, %v; want %q", got, err, tt.want)
			}
			if tt.db == pg {
				st, err := os.Stat(filepath.Join(dir, "database.url"))
				if err != nil || st.Mode().Perm() != 0o600 {
					t.Fatalf("database.url: %v %v (it may hold a password: 0600)", st, err)
				}
			}
		})
	}
}
