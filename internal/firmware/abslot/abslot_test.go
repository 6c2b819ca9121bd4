package abslot

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

func TestInstallCommitRollback(t *testing.T) {
	i := &Installer{Dir: t.TempDir()}
	ctx := context.Background()
	fw := func(s string) string {
		f := filepath.Join(t.TempDir(), "fw")
		os.WriteFile(f, []byte(s), 0o600)
		return f
	}
	if v, _, err := i.Version("pump"); v != "" || err != nil {
		t.Fatalf("fresh: %q %v", v, err)
	}
	if err := i.Install(ctx, "pump", "1.0.0", fw("one")); err != nil {
		t.Fatal(err)
	}
	if err := i.Commit("pump"); err != nil {
		t.Fatal(err)
	}
	if err := i.Install(ctx, "pump", "2.0.0", fw("two")); err != nil {
		t.Fatal(err)
	}
	// Again (a restart after the switch): nothing changes.
	if err := i.Install(ctx, "pump", "2.0.0", fw("two")); err != nil {
		t.Fatal(err)
	}
	b, _ := i.Boot("pump")
	if b.Active != "b" || b.Version != "2.0.0" || !b.Tentative || b.Previous == nil || b.Previous.Version != "1.0.0" {
		t.Fatalf("after install: %+v", b)
	}
	if err := i.Install(ctx, "pump", "3.0.0", fw("three")); err == nil {
		t.Fatal("installed over a version on trial")
	}
	if err := i.Rollback("pump"); err != nil {
		t.Fatal(err)
	}
	b, _ = i.Boot("pump")
	if b.Active != "a" || b.Version != "1.0.0" || b.Tentative {
		t.Fatalf("after rollback: %+v", b)
	}
	if got, _ := os.ReadFile(filepath.Join(i.Dir, "pump", "a", "firmware.bin")); string(got) != "one" {
		t.Fatalf("slot a holds %q", got)
	}
	if _, _, err := i.Version("../x"); err == nil {
		t.Fatal("a device type with a path traversal was accepted")
	}
	os.WriteFile(filepath.Join(i.Dir, "pump", "boot.json"), []byte("{"), 0o644)
	if _, _, err := i.Version("pump"); err == nil {
		t.Fatal("a damaged boot record was accepted")
	}
}
