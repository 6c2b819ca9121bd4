package sqlite

import (
	"database/sql"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/store/storetest"
)

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		s, err := Open(t.Context(), filepath.Join(t.TempDir(), "test.db"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	})
}

func TestReopenKeepsData(t *testing.T) {
	file := filepath.Join(t.TempDir(), "test.db")
	s, err := Open(t.Context(), file)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SetServiceRole(t.Context(), "ingest", "snapshot-reader"); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s, err = Open(t.Context(), file) // migrations must not run twice
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	roles, err := s.ServiceRoles(t.Context())
	if err != nil || roles["ingest"] != "snapshot-reader" {
		t.Fatalf("after reopen: %v, %v", roles, err)
	}
}

func TestCorruptFile(t *testing.T) {
	file := filepath.Join(t.TempDir(), "test.db")
	if err := os.WriteFile(file, []byte(strings.Repeat("this is not a database\n", 400)), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Open(t.Context(), file)
	if err == nil {
		t.Fatal("Open of a corrupt file succeeded")
	}
	if !strings.Contains(err.Error(), file) || !strings.Contains(err.Error(), "backup") {
		t.Fatalf("error %q should name the file and say what to do", err)
	}
}

// TestClaimsMigrateAsLegacy: a database written before claims named their
// manufacturer keeps its claims, marked legacy (refused at enrollment until
// adopted), consumption included.
func TestClaimsMigrateAsLegacy(t *testing.T) {
	ctx := t.Context()
	file := filepath.Join(t.TempDir(), "old.db")
	db, err := sql.Open("sqlite", "file:"+file)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.ExecContext(ctx, `CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	for v, name := range map[int]string{1: "0001_pki.sql", 2: "0002_enroll.sql", 3: "0003_ledger.sql", 4: "0004_snapshots.sql"} {
		body, err := migrations.ReadFile("migrations/" + name)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := db.ExecContext(ctx, string(body)); err != nil {
			t.Fatal(name, err)
		}
		if _, err := db.ExecContext(ctx, `INSERT INTO schema_migrations VALUES (?, 0)`, v); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := db.ExecContext(ctx, `INSERT INTO claims (kind, value, path, created_at, consumed_at, consumed_by) VALUES
		('serial', '0a1b', 'ms/acc/dev-1', 1700000000, NULL, ''), ('subject', 'SN-2', 'ms/acc/dev-2', 1700000000, 1700000100, 'beef')`); err != nil {
		t.Fatal(err)
	}
	db.Close()

	s, err := Open(ctx, file)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	list, err := s.Claims(ctx)
	if err != nil || len(list) != 2 {
		t.Fatalf("claims after migration: %+v, %v", list, err)
	}
	if c := list[0]; !c.Legacy() || c.Kind != "serial" || c.Value != "0a1b" || c.Path != "ms/acc/dev-1" || c.Consumed() {
		t.Fatalf("first claim after migration: %+v", c)
	}
	if c := list[1]; !c.Legacy() || !c.Consumed() || c.ConsumedBy != "beef" || c.ConsumedByCert != "" {
		t.Fatalf("consumed claim after migration: %+v", c)
	}
	// New claims keep counting after the old ones.
	if err := s.PutClaims(ctx, []store.Claim{{ClaimKey: store.ClaimKey{ManufacturerKeyID: "ac", Kind: "serial", Value: "0a1b"}, Path: "ms/acc/dev-3", CreatedAt: time.Now()}}); err != nil {
		t.Fatal(err)
	}
	if list, err := s.Claims(ctx); err != nil || len(list) != 3 || list[2].Path != "ms/acc/dev-3" {
		t.Fatalf("claims after a new one: %+v, %v", list, err)
	}
}
