package storetest

import (
	"bytes"
	"errors"
	"fmt"
	"testing"

	"github.com/fieldtrust/fieldtrust/internal/store"
)

func testLedger(t *testing.T, s store.Store) {
	ctx := t.Context()
	if n, err := s.LedgerSize(ctx); err != nil || n != 0 {
		t.Fatalf("empty ledger size = %d, %v", n, err)
	}
	if _, err := s.LatestTreeHead(ctx); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("LatestTreeHead on empty ledger: %v", err)
	}
	nodes := []store.LedgerNode{{Level: 0, Index: 0, Hash: []byte("h0")}, {Level: 0, Index: 1, Hash: []byte("h1")}, {Level: 1, Index: 0, Hash: []byte("h01")}}
	if err := s.AppendLedger(ctx, 0, [][]byte{[]byte("a"), []byte("b")}, nodes); err != nil {
		t.Fatal(err)
	}
	// A writer with a stale view of the size is refused, and nothing changes.
	if err := s.AppendLedger(ctx, 1, [][]byte{[]byte("c")}, nil); err == nil {
		t.Fatal("append at a stale size succeeded")
	}
	if n, _ := s.LedgerSize(ctx); n != 2 {
		t.Fatalf("size = %d, want 2", n)
	}
	got, err := s.LedgerNodes(ctx, []store.LedgerNode{{Level: 1, Index: 0}, {Level: 0, Index: 1}})
	if err != nil || string(got[0]) != "h01" || string(got[1]) != "h1" {
		t.Fatalf("LedgerNodes = %q, %v", got, err)
	}
	if _, err := s.LedgerNodes(ctx, []store.LedgerNode{{Level: 3, Index: 0}}); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("missing node: %v", err)
	}
	// Leaves are found by their RFC 6962 leaf hash.
	lh := append([]byte{0}, 'b')
	idx, data, err := s.LedgerLeaf(ctx, sha256Sum(lh))
	if err != nil || idx != 1 || string(data) != "b" {
		t.Fatalf("LedgerLeaf = %d %q %v", idx, data, err)
	}
	// Many at once: present ones with their index, absent ones left out.
	idxs, err := s.LedgerLeafIndexes(ctx, [][]byte{sha256Sum([]byte{0, 'a'}), sha256Sum([]byte{0, 'x'}), sha256Sum([]byte{0, 'b'})})
	if err != nil || len(idxs) != 2 || idxs[string(sha256Sum([]byte{0, 'a'}))] != 0 || idxs[string(sha256Sum([]byte{0, 'b'}))] != 1 {
		t.Fatalf("LedgerLeafIndexes = %v, %v", idxs, err)
	}
	if idxs, err := s.LedgerLeafIndexes(ctx, nil); err != nil || len(idxs) != 0 {
		t.Fatalf("LedgerLeafIndexes(nil) = %v, %v", idxs, err)
	}
	for _, size := range []uint64{1, 2} {
		if err := s.PutTreeHead(ctx, store.TreeHead{Size: size, Root: []byte{byte(size)}, Checkpoint: []byte("cp"), Signature: []byte("sig"), CertChain: []byte("pem")}); err != nil {
			t.Fatal(err)
		}
	}
	th, err := s.LatestTreeHead(ctx)
	if err != nil || th.Size != 2 || !bytes.Equal(th.Root, []byte{2}) || string(th.CertChain) != "pem" {
		t.Fatalf("LatestTreeHead = %+v, %v", th, err)
	}
	testLedgerLargeAppend(t, s)
}

// testLedgerLargeAppend appends more leaves and nodes in one call than a
// store writes in one statement (SQLite: 256 rows): all of them are
// stored, each at its index; an append whose last node collides with a
// stored one stores nothing. Runs after testLedger's two leaves.
func testLedgerLargeAppend(t *testing.T, s store.Store) {
	ctx := t.Context()
	const n = 600
	leaves := make([][]byte, n)
	nodes := make([]store.LedgerNode, n+1)
	for i := range leaves {
		leaves[i] = []byte(fmt.Sprintf("leaf-%d", 2+i))
		nodes[i] = store.LedgerNode{Level: 2, Index: uint64(i), Hash: []byte(fmt.Sprintf("n-%d", i))}
	}
	nodes[n] = store.LedgerNode{Level: 9, Index: 0, Hash: []byte("top")}
	if err := s.AppendLedger(ctx, 2, leaves, nodes); err != nil {
		t.Fatal(err)
	}
	if size, err := s.LedgerSize(ctx); err != nil || size != 2+n {
		t.Fatalf("size after %d leaves = %d, %v; want %d", n, size, err, 2+n)
	}
	for _, i := range []int{0, 255, 256, 257, 511, 512, n - 1} {
		idx, data, err := s.LedgerLeaf(ctx, sha256Sum(append([]byte{0}, leaves[i]...)))
		if err != nil || idx != uint64(2+i) || !bytes.Equal(data, leaves[i]) {
			t.Fatalf("leaf %d: LedgerLeaf = %d %q %v", i, idx, data, err)
		}
	}
	got, err := s.LedgerNodes(ctx, []store.LedgerNode{nodes[0], nodes[256], nodes[n-1], nodes[n]})
	if err != nil || string(got[0]) != "n-0" || string(got[1]) != "n-256" || string(got[2]) != fmt.Sprintf("n-%d", n-1) || string(got[3]) != "top" {
		t.Fatalf("LedgerNodes = %q, %v", got, err)
	}
	// The last node of the next append exists already: nothing of it stays.
	more := make([][]byte, n)
	moreNodes := make([]store.LedgerNode, n)
	for i := range more {
		more[i] = []byte(fmt.Sprintf("more-%d", i))
		moreNodes[i] = store.LedgerNode{Level: 3, Index: uint64(i), Hash: []byte("m")}
	}
	moreNodes[n-1] = nodes[n]
	if err := s.AppendLedger(ctx, 2+n, more, moreNodes); err == nil {
		t.Fatal("an append with a node that exists succeeded")
	}
	if size, err := s.LedgerSize(ctx); err != nil || size != 2+n {
		t.Fatalf("size after a failed append = %d, %v; want %d", size, err, 2+n)
	}
	if _, _, err := s.LedgerLeaf(ctx, sha256Sum(append([]byte{0}, more[0]...))); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a leaf of the failed append: %v", err)
	}
}
