package tufrepo_test

import (
	"crypto"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/firmware"
	"github.com/fieldtrust/fieldtrust/internal/firmware/tufclient"
	"github.com/fieldtrust/fieldtrust/internal/firmware/tufrepo"
	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// serve serves the repository's metadata as the platform does.
func serve(t *testing.T, r *tufrepo.Repo) *httptest.Server {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		b, err := r.Metadata(strings.TrimPrefix(req.URL.Path, tufclient.MetadataPath))
		if err != nil {
			http.NotFound(w, req)
			return
		}
		w.Write(b)
	}))
	t.Cleanup(srv.Close)
	return srv
}

func artifact(t *testing.T, content string) string {
	f := filepath.Join(t.TempDir(), "fw.bin")
	if err := os.WriteFile(f, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

func client(t *testing.T, srv *httptest.Server, root []byte) *tufclient.Client {
	return &tufclient.Client{Platform: srv.URL, HTTP: srv.Client(), Dir: t.TempDir(), PinnedRoot: root}
}

func TestAddLookupRotate(t *testing.T) {
	keys := t.TempDir()
	root, err := tufrepo.InitKeys(keys, time.Now(), tufrepo.DefaultExpiry)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tufrepo.InitKeys(keys, time.Now(), tufrepo.DefaultExpiry); err == nil {
		t.Fatal("InitKeys overwrote existing keys")
	}
	r := tufrepo.Open(t.TempDir())
	tg, err := r.Add(keys, tufrepo.Artifact{File: artifact(t, "firmware 2.4.1"), DeviceType: "pump", Version: "2.4.1"})
	if err != nil {
		t.Fatal(err)
	}
	if tg.Name != "pump/2.4.1" || tg.Length != int64(len("firmware 2.4.1")) {
		t.Fatalf("target %+v", tg)
	}
	// Immutable versions.
	if _, err := r.Add(keys, tufrepo.Artifact{File: artifact(t, "other"), DeviceType: "pump", Version: "2.4.1"}); err == nil || !strings.Contains(err.Error(), "immutable") {
		t.Fatalf("re-adding a version with other content: %v", err)
	}
	if _, err := r.Add(keys, tufrepo.Artifact{File: artifact(t, "firmware 2.4.1"), DeviceType: "pump", Version: "2.4.1"}); err != nil {
		t.Fatalf("re-adding the same content: %v", err)
	}
	srv := serve(t, r)
	c := client(t, srv, root)
	got, err := c.Lookup("pump/2.4.1")
	if err != nil {
		t.Fatal(err)
	}
	if got.Custom.Version != "2.4.1" || got.Custom.DeviceType != "pump" || got.RootVersion != 1 {
		t.Fatalf("lookup %+v", got)
	}

	// Rotating the targets key: the gateway keeps its pinned root (v1)
	// and follows the new root version by itself.
	v, err := r.RotateKey(keys, "targets")
	if err != nil || v != 2 {
		t.Fatalf("rotate: v%d %v", v, err)
	}
	if _, err := r.Add(keys, tufrepo.Artifact{File: artifact(t, "firmware 2.5.0"), DeviceType: "pump", Version: "2.5.0"}); err != nil {
		t.Fatal(err)
	}
	for _, cl := range []*tufclient.Client{c, client(t, srv, root)} { // one that saw v1, one fresh from the pin
		got, err = cl.Lookup("pump/2.5.0")
		if err != nil {
			t.Fatal(err)
		}
		if got.RootVersion != 2 {
			t.Fatalf("root version %d after rotation", got.RootVersion)
		}
	}
	// The retired targets key can no longer sign: a repository that signs
	// with it is refused by the gateways.
	retired := filepath.Join(keys, "targets.key.retired-2")
	if err := os.Rename(filepath.Join(keys, "targets.key"), filepath.Join(keys, "targets.key.new")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(retired, filepath.Join(keys, "targets.key")); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Add(keys, tufrepo.Artifact{File: artifact(t, "x"), DeviceType: "pump", Version: "9.9.9"}); err == nil {
		t.Fatal("the repository signed with the retired targets key")
	}
	os.Rename(filepath.Join(keys, "targets.key"), retired)
	os.Rename(filepath.Join(keys, "targets.key.new"), filepath.Join(keys, "targets.key"))

	// Rotating the root key (v3, signed by the old and the new root key),
	// then the online snapshot (v4) and timestamp (v5) keys: every client,
	// from the pinned v1 or from what it saw, follows, and what the new
	// keys sign verifies.
	for i, role := range []string{"root", "snapshot", "timestamp"} {
		v, err := r.RotateKey(keys, role)
		if err != nil || v != int64(3+i) {
			t.Fatalf("rotate %s: v%d %v", role, v, err)
		}
		ver := fmt.Sprintf("2.6.%d", i)
		if _, err := r.Add(keys, tufrepo.Artifact{File: artifact(t, "firmware "+ver), DeviceType: "pump", Version: ver}); err != nil {
			t.Fatalf("add after rotating %s: %v", role, err)
		}
		for _, cl := range []*tufclient.Client{c, client(t, srv, root)} {
			got, err := cl.Lookup("pump/" + ver)
			if err != nil || got.RootVersion != v {
				t.Fatalf("after rotating %s: %+v %v", role, got, err)
			}
		}
	}
	// The retired root key is no longer the root key: it cannot rotate
	// anything (the repository refuses before any gateway would).
	if err := os.Rename(filepath.Join(keys, "root.key.retired-3"), filepath.Join(keys, "root.key")); err != nil {
		t.Fatal(err)
	}
	if _, err := r.RotateKey(keys, "targets"); err == nil || !strings.Contains(err.Error(), "root key is not the one") {
		t.Fatalf("rotation with the retired root key: %v", err)
	}
	if _, err := r.RotateKey(keys, "delegated"); err == nil {
		t.Fatal("rotated an unknown role")
	}
}

// TestRootSignedByNewKeyOnly: a root version signed by the new root key
// alone (what an attacker who generated a key of its own would publish)
// is refused by the gateways' client: a new root needs the threshold of
// the root they trust.
func TestRootSignedByNewKeyOnly(t *testing.T) {
	keys := t.TempDir()
	root, err := tufrepo.InitKeys(keys, time.Now(), tufrepo.DefaultExpiry)
	if err != nil {
		t.Fatal(err)
	}
	r := tufrepo.Open(t.TempDir())
	if _, err := r.Add(keys, tufrepo.Artifact{File: artifact(t, "firmware 2.4.1"), DeviceType: "pump", Version: "2.4.1"}); err != nil {
		t.Fatal(err)
	}
	// The attacker's keys directory: its own root key in place of ours.
	evil := t.TempDir()
	if _, err := tufrepo.InitKeys(evil, time.Now(), tufrepo.DefaultExpiry); err != nil {
		t.Fatal(err)
	}
	ours, _ := os.ReadFile(filepath.Join(keys, "root.key"))
	theirs, _ := os.ReadFile(filepath.Join(evil, "root.key"))
	os.WriteFile(filepath.Join(keys, "root.key"), theirs, 0o600)
	if _, err := r.RotateKey(keys, "root"); err == nil {
		t.Fatal("the repository rotated the root with a key root does not name")
	}
	os.WriteFile(filepath.Join(keys, "root.key"), ours, 0o600)
	if _, err := r.RotateKey(keys, "root"); err != nil {
		t.Fatal(err)
	}
	// Re-sign 2.root.json with the new key only, as the attacker's tool
	// would, and serve it.
	meta := filepath.Join(r.Dir(), "metadata", "2.root.json")
	m, err := metadata.Root().FromFile(meta)
	if err != nil {
		t.Fatal(err)
	}
	nk, err := pki.ReadKeyFile(filepath.Join(keys, "root.key"), nil)
	if err != nil {
		t.Fatal(err)
	}
	m.ClearSignatures()
	sg, _ := signature.LoadSigner(nk, crypto.Hash(0))
	if _, err := m.Sign(sg); err != nil {
		t.Fatal(err)
	}
	b, _ := m.ToBytes(false)
	os.WriteFile(meta, b, 0o644)
	if _, err := client(t, serve(t, r), root).Lookup("pump/2.4.1"); err == nil || !strings.Contains(err.Error(), "root") {
		t.Fatalf("the client trusted a root signed by the new root key only: %v", err)
	}
}

func TestRefusals(t *testing.T) {
	keys := t.TempDir()
	now := time.Now()
	root, err := tufrepo.InitKeys(keys, now, tufrepo.DefaultExpiry)
	if err != nil {
		t.Fatal(err)
	}
	r := tufrepo.Open(t.TempDir())
	if _, err := r.Add(keys, tufrepo.Artifact{File: artifact(t, "fw"), DeviceType: "pump", Version: "1.0.0"}); err != nil {
		t.Fatal(err)
	}
	srv := serve(t, r)

	t.Run("not a target", func(t *testing.T) {
		_, err := client(t, srv, root).Lookup("pump/7.0.0")
		assertReason(t, err, firmware.ReasonNotTargeted)
	})
	t.Run("another root", func(t *testing.T) {
		other, err := tufrepo.InitKeys(t.TempDir(), now, tufrepo.DefaultExpiry)
		if err != nil {
			t.Fatal(err)
		}
		_, err = client(t, srv, other).Lookup("pump/1.0.0")
		assertReason(t, err, firmware.ReasonMetadata)
	})
	t.Run("expired timestamp (freeze)", func(t *testing.T) {
		c := client(t, srv, root)
		c.Now = func() time.Time { return now.Add(25 * time.Hour) }
		_, err := c.Lookup("pump/1.0.0")
		assertReason(t, err, firmware.ReasonExpired)
	})
	t.Run("rollback of timestamp", func(t *testing.T) {
		c := client(t, srv, root)
		if _, err := c.Lookup("pump/1.0.0"); err != nil {
			t.Fatal(err)
		}
		old, err := r.Metadata("timestamp.json")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := r.Add(keys, tufrepo.Artifact{File: artifact(t, "fw2"), DeviceType: "pump", Version: "1.1.0"}); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Lookup("pump/1.1.0"); err != nil {
			t.Fatal(err)
		}
		// The server (or a man in the middle) answers the old timestamp.
		srv2 := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			name := strings.TrimPrefix(req.URL.Path, tufclient.MetadataPath)
			if name == "timestamp.json" {
				w.Write(old)
				return
			}
			b, err := r.Metadata(name)
			if err != nil {
				http.NotFound(w, req)
				return
			}
			w.Write(b)
		}))
		defer srv2.Close()
		c.Platform, c.HTTP = srv2.URL, srv2.Client()
		_, err = c.Lookup("pump/1.1.0")
		assertReason(t, err, firmware.ReasonMetadata)
	})
	t.Run("tampered targets", func(t *testing.T) {
		srv3 := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			name := strings.TrimPrefix(req.URL.Path, tufclient.MetadataPath)
			b, err := r.Metadata(name)
			if err != nil {
				http.NotFound(w, req)
				return
			}
			if strings.HasSuffix(name, ".targets.json") {
				b = []byte(strings.Replace(string(b), `"pump"`, `"compressor"`, 1))
			}
			w.Write(b)
		}))
		defer srv3.Close()
		c := client(t, srv3, root)
		_, err := c.Lookup("pump/1.0.0")
		assertReason(t, err, firmware.ReasonMetadata)
	})
}

func TestRefresh(t *testing.T) {
	keys := t.TempDir()
	now := time.Now()
	root, err := tufrepo.InitKeys(keys, now, tufrepo.DefaultExpiry)
	if err != nil {
		t.Fatal(err)
	}
	r := tufrepo.Open(t.TempDir())
	if ok, err := r.Refresh(); ok || err != nil {
		t.Fatalf("refresh before init: %v %v", ok, err)
	}
	if _, err := r.Add(keys, tufrepo.Artifact{File: artifact(t, "fw"), DeviceType: "pump", Version: "1.0.0"}); err != nil {
		t.Fatal(err)
	}
	if ok, err := r.Refresh(); ok || err != nil {
		t.Fatalf("refresh of fresh metadata: %v %v", ok, err)
	}
	later := now.Add(13 * time.Hour)
	r.Now = func() time.Time { return later }
	if ok, err := r.Refresh(); !ok || err != nil {
		t.Fatalf("refresh of a half-expired timestamp: %v %v", ok, err)
	}
	c := client(t, serve(t, r), root)
	c.Now = func() time.Time { return later.Add(12 * time.Hour) } // the old timestamp would be expired
	if _, err := c.Lookup("pump/1.0.0"); err != nil {
		t.Fatal(err)
	}
}

func assertReason(t *testing.T, err error, reason string) {
	t.Helper()
	var e *tufclient.Error
	if !errors.As(err, &e) || e.Reason != reason {
		t.Fatalf("got %v, want reason %q", err, reason)
	}
}

func TestMetadataNames(t *testing.T) {
	r := tufrepo.Open(t.TempDir())
	for _, n := range []string{"../x", "root.json", "0.root.json", "1.root.json/..", "timestamp.json.bak", "1.foo.json"} {
		if _, err := r.Metadata(n); !errors.Is(err, tufrepo.ErrNotFound) {
			t.Errorf("Metadata(%q): %v", n, err)
		}
	}
	for _, s := range []string{"../../etc/passwd", strings.Repeat("A", 64), ""} {
		if _, err := r.ArtifactFile(s); !errors.Is(err, tufrepo.ErrNotFound) {
			t.Errorf("ArtifactFile(%q): %v", s, err)
		}
	}
}
