package sqlite

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

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
