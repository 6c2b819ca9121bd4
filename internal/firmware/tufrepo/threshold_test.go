package tufrepo_test

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/fieldtrust/fieldtrust/internal/firmware"
	"github.com/fieldtrust/fieldtrust/internal/firmware/tufrepo"
	"github.com/fieldtrust/fieldtrust/internal/pki"
)

func holderKey(t *testing.T, keys string, i int, role string) crypto.Signer {
	t.Helper()
	k, err := pki.ReadKeyFile(filepath.Join(tufrepo.HolderDir(keys, i), role+".key"), nil)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// resign replaces the signatures of a metadata file of the repository
// with those of signers (the same signer twice makes two signature
// entries with one key id), as a forger holding some keys would.
func resign[T metadata.Roles](t *testing.T, file string, load func(string) (*metadata.Metadata[T], error), signers ...crypto.Signer) {
	t.Helper()
	m, err := load(file)
	if err != nil {
		t.Fatal(err)
	}
	m.ClearSignatures()
	for _, k := range signers {
		s, err := signature.LoadSigner(k, crypto.Hash(0))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := m.Sign(s); err != nil {
			t.Fatal(err)
		}
	}
	b, err := m.ToBytes(false)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func loadTargets(f string) (*metadata.Metadata[metadata.TargetsType], error) {
	return metadata.Targets().FromFile(f)
}
func loadRoot(f string) (*metadata.Metadata[metadata.RootType], error) {
	return metadata.Root().FromFile(f)
}

// TestThresholds: root and targets with 2-of-3 keys held in three
// holder directories. The repository counts distinct keys (one holder's
// directory given twice is one signature) and stages targets metadata
// until a second holder signs; the gateway's go-tuf client refuses
// targets with one signature, with one key's signature twice, and with
// a signature of a key root does not name, and accepts two holders'.
func TestThresholds(t *testing.T) {
	keys := t.TempDir()
	root, err := tufrepo.InitKeysWith(keys, time.Now(), tufrepo.DefaultExpiry, tufrepo.Quorums{Root: tufrepo.Quorum{Threshold: 2, Keys: 3}, Targets: tufrepo.Quorum{Threshold: 2, Keys: 3}})
	if err != nil {
		t.Fatal(err)
	}
	rm, err := metadata.Root().FromBytes(root)
	if err != nil {
		t.Fatal(err)
	}
	for _, role := range []string{"root", "targets"} {
		if r := rm.Signed.Roles[role]; r.Threshold != 2 || len(r.KeyIDs) != 3 {
			t.Fatalf("%s: threshold %d, %d keys", role, r.Threshold, len(r.KeyIDs))
		}
	}
	if _, err := os.Stat(filepath.Join(keys, "root.key")); err == nil {
		t.Fatal("a multi-key init left a root key outside the holder directories")
	}
	h1, h2, h3 := tufrepo.HolderDir(keys, 1), tufrepo.HolderDir(keys, 2), tufrepo.HolderDir(keys, 3)
	data := t.TempDir()
	r := tufrepo.Open(data)
	srv := serve(t, r)

	// The first version, signed with the directory of 'keys init' (the
	// online keys and every holder's keys).
	if tg, err := r.AddSigned([]string{keys}, tufrepo.Artifact{File: artifact(t, "fw 1.0.0"), DeviceType: "pump", Version: "1.0.0"}); err != nil || tg.Awaiting != 0 {
		t.Fatalf("add with two holders: %+v %v", tg, err)
	}
	if got, err := client(t, srv, root).Lookup("pump/1.0.0"); err != nil || got.Custom.Version != "1.0.0" {
		t.Fatalf("lookup: %+v %v", got, err)
	}
	if n, err := r.MetadataBytes(1); err == nil {
		t.Logf("metadata per update, 2-of-3 targets signed by all three holders, one target: %d bytes", n) // docs/benchmarks.md
	}

	// One holder (its directory twice) stages; signing again with the
	// same key adds nothing; the second holder publishes.
	tg, err := r.AddSigned([]string{h1, h1}, tufrepo.Artifact{File: artifact(t, "fw 1.1.0"), DeviceType: "pump", Version: "1.1.0"})
	if err != nil || tg.Awaiting != 1 {
		t.Fatalf("add with one holder: %+v %v", tg, err)
	}
	if _, err := client(t, srv, root).Lookup("pump/1.1.0"); err == nil {
		t.Fatal("a target signed by one of two required keys reached a client")
	}
	if _, err := r.AddSigned([]string{h2}, tufrepo.Artifact{File: artifact(t, "fw 1.2.0"), DeviceType: "pump", Version: "1.2.0"}); err == nil || !strings.Contains(err.Error(), "waits for signatures") {
		t.Fatalf("add while targets wait for signatures: %v", err)
	}
	if _, err := r.Rotate([]string{keys}, "targets", tufrepo.Quorum{}); err == nil || !strings.Contains(err.Error(), "waits for signatures") {
		t.Fatalf("rotate while targets wait for signatures: %v", err)
	}
	if s, err := r.Sign([]string{h1}); err != nil || s.Have != 1 || s.Need != 2 || s.Published {
		t.Fatalf("sign again by holder 1: %+v %v", s, err)
	}
	if _, err := r.Sign([]string{t.TempDir()}); err == nil || !strings.Contains(err.Error(), "found none") {
		t.Fatalf("sign with no targets key: %v", err)
	}
	if s, err := r.Sign([]string{h2}); err != nil || s.Have != 2 || !s.Published {
		t.Fatalf("sign by holder 2: %+v %v", s, err)
	}
	if got, err := client(t, srv, root).Lookup("pump/1.1.0"); err != nil || got.Custom.Version != "1.1.0" {
		t.Fatalf("lookup after the second signature: %+v %v", got, err)
	}
	if p, err := r.Pending(); p != nil || err != nil {
		t.Fatalf("pending after publishing: %+v %v", p, err)
	}

	// A forger re-signs the published targets metadata: each with fewer
	// than two distinct named keys is refused by a fresh gateway.
	_, stranger, _ := ed25519.GenerateKey(rand.Reader)
	k1, k2 := holderKey(t, keys, 1, "targets"), holderKey(t, keys, 2, "targets")
	file := filepath.Join(data, "firmware", "metadata", "2.targets.json")
	good, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name    string
		signers []crypto.Signer
		ok      bool
	}{
		{"one signature", []crypto.Signer{k1}, false},
		{"one key twice", []crypto.Signer{k1, k1}, false},
		{"one key and an unknown key", []crypto.Signer{k1, stranger}, false},
		{"a root key for targets", []crypto.Signer{k1, holderKey(t, keys, 2, "root")}, false},
		{"two holders", []crypto.Signer{k2, k1}, true},
		{"two holders and an unknown key", []crypto.Signer{stranger, k1, k2}, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			os.WriteFile(file, good, 0o644)
			resign(t, file, loadTargets, c.signers...)
			_, err := client(t, srv, root).Lookup("pump/1.1.0")
			if c.ok && err != nil {
				t.Fatalf("refused: %v", err)
			}
			if !c.ok {
				assertReason(t, err, firmware.ReasonMetadata)
			}
		})
	}
	os.WriteFile(file, good, 0o644)

	// A staged targets file someone replaced (whoever can write the
	// platform's directory): a holder's signature over other content no
	// longer verifies, a forged one never did; with no valid signature
	// left nothing is signed. One valid signature and a forged one: the
	// forged one is dropped.
	if _, err := r.AddSigned([]string{h1}, tufrepo.Artifact{File: artifact(t, "fw 1.3.0"), DeviceType: "pump", Version: "1.3.0"}); err != nil {
		t.Fatal(err)
	}
	pending := filepath.Join(data, "firmware", "pending", "targets.json")
	staged, _ := os.ReadFile(pending)
	evil := strings.Replace(string(staged), `"pump"`, `"compressor"`, 1)
	os.WriteFile(pending, []byte(evil), 0o644)
	if s, err := r.Sign([]string{h2}); err == nil || !strings.Contains(err.Error(), "no valid signature") {
		t.Fatalf("sign a replaced pending file: %+v %v", s, err)
	}
	resign(t, pending, loadTargets, stranger)
	if s, err := r.Sign([]string{h2}); err == nil || !strings.Contains(err.Error(), "no valid signature") {
		t.Fatalf("sign a pending file with only a forged signature: %+v %v", s, err)
	}
	os.WriteFile(pending, staged, 0o644)
	if err := r.Discard(); err != nil {
		t.Fatal(err)
	}
	if _, err := r.AddSigned([]string{h1}, tufrepo.Artifact{File: artifact(t, "fw 1.3.0"), DeviceType: "pump", Version: "1.3.0"}); err != nil {
		t.Fatal(err)
	}
	staged, _ = os.ReadFile(pending)
	m, _ := metadata.Targets().FromBytes(staged)
	sg, _ := signature.LoadSigner(stranger, crypto.Hash(0))
	m.Sign(sg)
	b, _ := m.ToBytes(true)
	os.WriteFile(pending, b, 0o644)
	if s, err := r.Sign([]string{h3}); err != nil || !s.Published || s.Have != 2 {
		t.Fatalf("sign a pending file with a valid and a forged signature: %+v %v", s, err)
	}
	if _, err := client(t, srv, root).Lookup("pump/1.3.0"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.AddSigned([]string{h1}, tufrepo.Artifact{File: artifact(t, "fw 1.4.0"), DeviceType: "pump", Version: "1.4.0"}); err != nil {
		t.Fatal(err)
	}
	staged, _ = os.ReadFile(pending)
	resign(t, pending, loadTargets, k1, k1)
	if _, err := r.Sign([]string{h2}); err == nil || !strings.Contains(err.Error(), "multiple signatures") {
		t.Fatalf("sign a pending file with one key's signature twice: %v", err)
	}
	if err := r.Discard(); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Sign([]string{h1}); err == nil {
		t.Fatal("signed after discarding")
	}
}

// TestThresholdRotation: a gateway pinned to a one-key root (threshold
// 1) follows rotations to 2-of-3 targets and then 2-of-3 root keys
// without being touched; a rotation with one of two required root keys
// is refused by the repository, and a root version signed by one new
// root key only is refused by the gateway.
func TestThresholdRotation(t *testing.T) {
	keys := t.TempDir()
	root, err := tufrepo.InitKeys(keys, time.Now(), tufrepo.DefaultExpiry)
	if err != nil {
		t.Fatal(err)
	}
	data := t.TempDir()
	r := tufrepo.Open(data)
	srv := serve(t, r)
	if _, err := r.Add(keys, tufrepo.Artifact{File: artifact(t, "fw 1.0.0"), DeviceType: "pump", Version: "1.0.0"}); err != nil {
		t.Fatal(err)
	}
	saw := client(t, srv, root)
	if _, err := saw.Lookup("pump/1.0.0"); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		role  string
		q     tufrepo.Quorum
		keys  []string
		want  string
		rootV int64
	}{
		{"targets", tufrepo.Quorum{Threshold: 4, Keys: 3}, []string{keys}, "threshold 4 of 3", 0},
		{"snapshot", tufrepo.Quorum{Threshold: 2, Keys: 2}, []string{keys}, "online role", 0},
		{"targets", tufrepo.Quorum{Threshold: 2, Keys: 3}, []string{keys}, "", 2},
		{"root", tufrepo.Quorum{Threshold: 2, Keys: 3}, []string{keys}, "", 3},
		{"targets", tufrepo.Quorum{}, []string{tufrepo.HolderDir(keys, 1)}, "root needs 2 of its 3 keys", 0},
		{"targets", tufrepo.Quorum{Threshold: 1, Keys: 1}, []string{keys, tufrepo.HolderDir(keys, 3)}, "", 4},
	} {
		v, err := r.Rotate(c.keys, c.role, c.q)
		if c.want != "" {
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("rotate %s %+v: %v, want %q", c.role, c.q, err, c.want)
			}
			continue
		}
		if err != nil || v != c.rootV {
			t.Fatalf("rotate %s %+v: v%d %v", c.role, c.q, v, err)
		}
		ver := fmt.Sprintf("1.%d.0", v)
		tg, err := r.AddSigned(c.keys, tufrepo.Artifact{File: artifact(t, "fw "+ver), DeviceType: "pump", Version: ver})
		if err != nil || tg.Awaiting != 0 {
			t.Fatalf("add after rotating %s: %+v %v", c.role, tg, err)
		}
		for _, cl := range []*struct{ name string }{{"saw"}, {"pinned"}} {
			cc := saw
			if cl.name == "pinned" {
				cc = client(t, srv, root)
			}
			got, err := cc.Lookup("pump/" + ver)
			if err != nil || got.RootVersion != v {
				t.Fatalf("%s client after rotating %s to %+v: %+v %v", cl.name, c.role, c.q, got, err)
			}
		}
	}
	rm, err := loadRoot(filepath.Join(keys, "root.json"))
	if err != nil {
		t.Fatal(err)
	}
	if r := rm.Signed.Roles["root"]; r.Threshold != 2 || len(r.KeyIDs) != 3 {
		t.Fatalf("root role after rotation: %+v", r)
	}
	// A root v5 signed by one of the three new root keys (and one stale
	// key twice): a gateway that trusts v4 refuses it.
	v5 := filepath.Join(data, "firmware", "metadata", "5.root.json")
	b, _ := os.ReadFile(filepath.Join(data, "firmware", "metadata", "4.root.json"))
	m, _ := metadata.Root().FromBytes(b)
	m.Signed.Version = 5
	nb, _ := m.ToBytes(false)
	os.WriteFile(v5, nb, 0o644)
	k1 := holderKey(t, keys, 1, "root")
	for _, signers := range [][]crypto.Signer{{k1}, {k1, k1}} {
		os.WriteFile(v5, nb, 0o644)
		resign(t, v5, loadRoot, signers...)
		_, err := saw.Lookup("pump/1.4.0")
		assertReason(t, err, firmware.ReasonMetadata)
	}
	os.WriteFile(v5, nb, 0o644)
	resign(t, v5, loadRoot, k1, holderKey(t, keys, 2, "root"))
	if got, err := client(t, srv, root).Lookup("pump/1.4.0"); err != nil || got.RootVersion != 5 {
		t.Fatalf("a root signed by two of the root keys: %+v %v", got, err)
	}
}

func TestParseQuorums(t *testing.T) {
	q := func(rt, rk, tt, tk int) tufrepo.Quorums {
		return tufrepo.Quorums{Root: tufrepo.Quorum{Threshold: rt, Keys: rk}, Targets: tufrepo.Quorum{Threshold: tt, Keys: tk}}
	}
	for _, c := range []struct {
		th, n string
		want  tufrepo.Quorums
		err   string
	}{
		{"", "", tufrepo.SingleKeys, ""},
		{"root=2,targets=2", "root=3,targets=3", q(2, 3, 2, 3), ""},
		{"root=2", "", q(2, 2, 1, 1), ""},
		{"", "targets=3", q(1, 1, 1, 3), ""},
		{" root=2 , targets=1", "root=2", q(2, 2, 1, 1), ""},
		{"root=3", "root=2", tufrepo.Quorums{}, "threshold 3 of 2"},
		{"root=0", "", tufrepo.Quorums{}, "from 1 to 16"},
		{"root=17", "", tufrepo.Quorums{}, "from 1 to 16"},
		{"snapshot=2", "", tufrepo.Quorums{}, "only the offline roles"},
		{"root=2,root=3", "", tufrepo.Quorums{}, "twice"},
		{"root", "", tufrepo.Quorums{}, "ROLE=N"},
		{"root=2x", "", tufrepo.Quorums{}, "from 1 to 16"},
		{"", "root=-1", tufrepo.Quorums{}, "from 1 to 16"},
	} {
		got, err := tufrepo.ParseQuorums(c.th, c.n)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%q %q: %v, want %q", c.th, c.n, err, c.err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("%q %q: %+v %v, want %+v", c.th, c.n, got, err, c.want)
		}
	}
}

func FuzzParseQuorums(f *testing.F) {
	for _, s := range []string{"root=2,targets=2", "root=3", "targets=16", "root=2,,", "=", "root=99999999999999999999"} {
		f.Add(s, s)
	}
	f.Fuzz(func(t *testing.T, th, n string) {
		qs, err := tufrepo.ParseQuorums(th, n)
		if err != nil {
			return
		}
		for _, q := range []tufrepo.Quorum{qs.Root, qs.Targets} {
			if q.Check("x") != nil {
				t.Fatalf("ParseQuorums(%q, %q) accepted %+v", th, n, q)
			}
		}
	})
}
