package ledger

import (
	"context"
	"crypto"
	"crypto/elliptic"
	"crypto/sha256"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/transparency-dev/merkle/testonly"

	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/store/sqlite"
)

func openLog(t *testing.T) (*Log, *sqlite.Store, string) {
	t.Helper()
	dir := t.TempDir()
	db, err := sqlite.Open(t.Context(), filepath.Join(dir, "db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	l, err := Open(t.Context(), db)
	if err != nil {
		t.Fatal(err)
	}
	return l, db, dir
}

func leaf(i int) []byte {
	return LeafData("ms/acc/gw", sha256.Sum256(fmt.Appendf(nil, "snapshot %d", i)))
}

// TestAgainstReference appends in uneven batches and checks every root,
// inclusion proof and consistency proof against the library's reference
// tree, and that a reopened log continues where it stopped.
func TestAgainstReference(t *testing.T) {
	ctx := t.Context()
	l, db, _ := openLog(t)
	ref := testonly.New(hasher)
	n := 0
	for _, batch := range []int{1, 1, 3, 7, 1, 16, 5, 33, 2} {
		var leaves [][]byte
		for range batch {
			leaves = append(leaves, leaf(n))
			ref.AppendData(leaf(n))
			n++
		}
		first, size, root, err := l.Append(ctx, leaves)
		if err != nil {
			t.Fatal(err)
		}
		if first != uint64(n-batch) || size != uint64(n) || string(root) != string(ref.Hash()) {
			t.Fatalf("after %d leaves: first %d size %d, root mismatch=%v", n, first, size, string(root) != string(ref.Hash()))
		}
		if batch == 5 { // reopen mid-way
			if l, err = Open(ctx, db); err != nil {
				t.Fatal(err)
			}
		}
	}
	for size := uint64(1); size <= uint64(n); size++ {
		for idx := uint64(0); idx < size; idx += 7 {
			p, err := l.InclusionProof(ctx, idx, size)
			if err != nil {
				t.Fatal(err)
			}
			if err := VerifyInclusion(leaf(int(idx)), idx, size, p, ref.HashAt(size)); err != nil {
				t.Fatalf("inclusion %d in %d: %v", idx, size, err)
			}
			// A proof for one leaf does not prove another.
			if err := VerifyInclusion(leaf(int(idx)+1), idx, size, p, ref.HashAt(size)); err == nil {
				t.Fatalf("inclusion proof of %d accepted for another leaf", idx)
			}
		}
		for size1 := uint64(1); size1 <= size; size1 += 5 {
			p, err := l.ConsistencyProof(ctx, size1, size)
			if err != nil {
				t.Fatal(err)
			}
			if err := VerifyConsistency(size1, size, p, ref.HashAt(size1), ref.HashAt(size)); err != nil {
				t.Fatalf("consistency %d→%d: %v", size1, size, err)
			}
		}
	}
	if idx, err := l.Find(ctx, leaf(42)); err != nil || idx != 42 {
		t.Fatalf("Find = %d, %v", idx, err)
	}
	if _, err := l.InclusionProof(ctx, 0, uint64(n+1)); err == nil {
		t.Fatal("proof for a size beyond the log")
	}
}

// TestRewriteDetected: a platform that rewrites history cannot produce a
// consistency proof to the old head.
func TestRewriteDetected(t *testing.T) {
	ctx := t.Context()
	honest, _, _ := openLog(t)
	for i := range 10 {
		honest.Append(ctx, [][]byte{leaf(i)})
	}
	_, oldRoot, _ := honest.Size()
	forged, _, _ := openLog(t)
	for i := range 20 {
		if i == 3 {
			forged.Append(ctx, [][]byte{leaf(1000)}) // leaf 3 altered
			continue
		}
		forged.Append(ctx, [][]byte{leaf(i)})
	}
	_, newRoot, _ := forged.Size()
	p, err := forged.ConsistencyProof(ctx, 10, 20)
	if err != nil {
		t.Fatal(err)
	}
	if err := VerifyConsistency(10, 20, p, oldRoot, newRoot); err == nil {
		t.Fatal("a rewritten log proved consistent with the old head")
	}
}

func TestSignedCheckpoint(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	db, err := sqlite.Open(ctx, filepath.Join(dir, "db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	e2e, err := pki.Open(ctx, dir, pki.E2E, db, pki.Options{})
	if err != nil {
		t.Fatal(err)
	}
	issue := func(service string) (*pki.Issued, crypto.Signer) {
		key, _ := pki.GenerateKey(elliptic.P256())
		iss, err := e2e.Issue(ctx, pki.LeafRequest{Service: service, PublicKey: key.Public()})
		if err != nil {
			t.Fatal(err)
		}
		return iss, key
	}
	ledgerCert, key := issue("ledger")
	otherCert, otherKey := issue("ingest")
	v, err := e2e.Verifier(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cp := Checkpoint{Size: 5, Root: make([]byte, 32), Time: time.Now().Truncate(time.Second)}
	text, sig, err := Sign(cp, key)
	if err != nil {
		t.Fatal(err)
	}
	got, err := VerifyCheckpoint(text, sig, ledgerCert.Chain, v)
	if err != nil || got.Size != 5 {
		t.Fatalf("VerifyCheckpoint = %+v, %v", got, err)
	}
	// Tampered text, a signature by another service, a foreign chain.
	tampered := append([]byte(nil), text...)
	tampered[len(Origin)+1] = '6'
	if _, err := VerifyCheckpoint(tampered, sig, ledgerCert.Chain, v); err == nil {
		t.Fatal("tampered checkpoint verified")
	}
	_, otherSig, _ := Sign(cp, otherKey)
	if _, err := VerifyCheckpoint(text, otherSig, otherCert.Chain, v); err == nil {
		t.Fatal("checkpoint signed by the ingest service verified")
	}
	if _, err := VerifyCheckpoint(text, otherSig, ledgerCert.Chain, v); err == nil {
		t.Fatal("signature by another key verified")
	}
	e2e.RevokeName(ctx, "ledger", false, 1)
	v.Refresh(ctx)
	if _, err := VerifyCheckpoint(text, sig, ledgerCert.Chain, v); !errors.Is(err, pki.ErrRevoked) {
		t.Fatalf("revoked signer: %v", err)
	}
	for _, bad := range []string{"", "x\n1\nAA==\n2026-01-01T00:00:00Z\n", Origin + "\n01\n" + string(text[len(Origin)+3:])} {
		if _, err := ParseCheckpoint([]byte(bad)); err == nil {
			t.Errorf("ParseCheckpoint(%q) succeeded", bad)
		}
	}
}

// lossyStorage plays a script of append outcomes: "lost" commits the
// append but reports it failed (a commit acknowledgement lost on the
// way), "down" fails without change (an outage); then it works.
type lossyStorage struct {
	*sqlite.Store
	script []string
}

func (s *lossyStorage) AppendLedger(ctx context.Context, start uint64, leafData [][]byte, nodes []store.LedgerNode) error {
	var next string
	if len(s.script) > 0 {
		next, s.script = s.script[0], s.script[1:]
	}
	if next == "down" {
		return errors.New("database unavailable")
	}
	if err := s.Store.AppendLedger(ctx, start, leafData, nodes); err != nil {
		return err
	}
	if next == "lost" {
		return errors.New("commit outcome lost")
	}
	return nil
}

// TestAppendRecoversFromStorageFailure: after a failed append (an outage,
// or a commit that happened but was reported failed) the log reloads its
// state from storage and appends again, with the right tree; a leaf whose
// append was reported failed but committed is found, not appended twice.
func TestAppendRecoversFromStorageFailure(t *testing.T) {
	_, db, _ := openLog(t)
	st := &lossyStorage{Store: db, script: []string{"lost", "down", "down"}}
	l, err := Open(t.Context(), st)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	ref := testonly.New(hasher)
	if _, _, _, err := l.Append(ctx, [][]byte{leaf(0), leaf(1)}); err == nil {
		t.Fatal("append reported success although the commit outcome was lost")
	}
	// The caller looks the leaves up before retrying: they are there.
	found, err := l.FindAll(ctx, [][]byte{leaf(0), leaf(1), leaf(2)})
	if err != nil || len(found) != 2 || found[string(leaf(0))] != 0 || found[string(leaf(1))] != 1 {
		t.Fatalf("FindAll after a lost commit = %v, %v", found, err)
	}
	ref.AppendData(leaf(0))
	ref.AppendData(leaf(1))
	for range 2 {
		if _, _, _, err := l.Append(ctx, [][]byte{leaf(2)}); err == nil {
			t.Fatal("append during the outage succeeded")
		}
	}
	first, size, root, err := l.Append(ctx, [][]byte{leaf(2), leaf(3)})
	if err != nil {
		t.Fatalf("append after the outage: %v", err)
	}
	ref.AppendData(leaf(2))
	ref.AppendData(leaf(3))
	if first != 2 || size != 4 || string(root) != string(ref.Hash()) {
		t.Fatalf("after recovery: first %d size %d root %x, want 2, 4, %x", first, size, root, ref.Hash())
	}
}

// TestRootAfterAndReload: RootAfter predicts the root an append gives
// without storing anything, and Reload sees what another handle on the
// same storage appended.
func TestRootAfterAndReload(t *testing.T) {
	ctx := t.Context()
	l, db, _ := openLog(t)
	ref := testonly.New(hasher)
	if size, root, err := l.RootAfter(nil); err != nil || size != 0 || string(root) != string(ref.Hash()) {
		t.Fatalf("empty: %d %x %v", size, root, err)
	}
	n := 0
	for _, batch := range []int{1, 4, 3, 9} {
		var leaves [][]byte
		for range batch {
			leaves = append(leaves, leaf(n))
			ref.AppendData(leaf(n))
			n++
		}
		size, root, err := l.RootAfter(leaves)
		if err != nil || size != uint64(n) || string(root) != string(ref.Hash()) {
			t.Fatalf("RootAfter at %d: %d %v", n, size, err)
		}
		if s, _, _ := l.Size(); s != uint64(n-batch) {
			t.Fatalf("RootAfter changed the log: size %d", s)
		}
		if _, _, got, err := l.Append(ctx, leaves); err != nil || string(got) != string(root) {
			t.Fatalf("append at %d: %v", n, err)
		}
	}
	other, err := Open(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := other.Append(ctx, [][]byte{leaf(n)}); err != nil {
		t.Fatal(err)
	}
	// Proofs need only the stored nodes: the storage, not l's view, says
	// how large the ledger is (another node appended).
	if _, err := l.InclusionProof(ctx, 0, uint64(n+1)); err != nil {
		t.Fatalf("before Reload: %v", err)
	}
	if _, err := l.InclusionProof(ctx, 0, uint64(n+2)); !errors.Is(err, ErrBeyondTree) {
		t.Fatalf("beyond the stored ledger: %v", err)
	}
	if err := l.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	if s, _, _ := l.Size(); s != uint64(n+1) {
		t.Fatalf("after Reload: size %d", s)
	}
	if _, err := l.InclusionProof(ctx, 0, uint64(n+1)); err != nil {
		t.Fatal(err)
	}
}
