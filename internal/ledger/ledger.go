// Package ledger is the platform's tamper-evident record of what arrived: an
// append-only Merkle log (RFC 6962 / RFC 9162 hashing, via
// github.com/transparency-dev/merkle) of every accepted snapshot, with
// periodically signed tree heads and inclusion and consistency proofs.
//
// A customer who keeps a signed tree head can later prove that a snapshot
// was received (inclusion proof) and that the log was only ever appended
// to, never rewritten (consistency proof between two heads), without
// trusting the platform's database.
//
// # Leaves
//
// A leaf's data is LeafData(path, hash): the gateway identity path, a zero
// byte, and the 32-byte SHA-256 of the snapshot's encoding (package
// snapshot). The leaf hash is SHA-256(0x00 || data), the node hash
// SHA-256(0x01 || left || right), as RFC 6962 §2.1 defines.
//
// # Storage
//
// The log keeps every leaf hash and every perfect subtree node it completes
// (reported by the compact range as leaves are appended), so any inclusion
// or consistency proof is a handful of node reads, never a recomputation
// over the leaves. One process appends (the platform holds the data
// directory's lock); readers may be many.
package ledger

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"sync"

	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"

	"github.com/fieldtrust/fieldtrust/internal/store"
)

// Storage is what the log needs from the store.
type Storage interface {
	LedgerSize(ctx context.Context) (uint64, error)
	AppendLedger(ctx context.Context, start uint64, leafData [][]byte, nodes []store.LedgerNode) error
	LedgerNodes(ctx context.Context, ids []store.LedgerNode) ([][]byte, error)
	LedgerLeaf(ctx context.Context, leafHash []byte) (uint64, []byte, error)
	LedgerLeafIndexes(ctx context.Context, leafHashes [][]byte) (map[string]uint64, error)
}

var hasher = rfc6962.New(crypto.SHA256)

// LeafData is the data of the leaf recording a snapshot of identity path
// with the given snapshot hash.
func LeafData(path string, snapshotHash [32]byte) []byte {
	b := make([]byte, 0, len(path)+1+len(snapshotHash))
	b = append(b, path...)
	b = append(b, 0)
	return append(b, snapshotHash[:]...)
}

// LeafHash is the RFC 6962 hash of leaf data.
func LeafHash(data []byte) []byte { return hasher.HashLeaf(data) }

// Log is the append-only Merkle log.
type Log struct {
	st Storage
	rf *compact.RangeFactory

	mu  sync.Mutex
	rng *compact.Range // [0, size); guarded by mu
	// stale is set when an append failed: the storage may or may not have
	// committed it (a commit error does not say), so the range is reloaded
	// from storage before the next append. Guarded by mu.
	stale bool
}

// Open loads the log's compact range from storage.
func Open(ctx context.Context, st Storage) (*Log, error) {
	l := &Log{st: st, rf: &compact.RangeFactory{Hash: hasher.HashChildren}}
	if err := l.load(ctx); err != nil {
		return nil, err
	}
	return l, nil
}

// load reads the compact range of the stored log.
func (l *Log) load(ctx context.Context) error {
	size, err := l.st.LedgerSize(ctx)
	if err != nil {
		return fmt.Errorf("ledger: size: %w", err)
	}
	ids := compact.RangeNodes(0, size, nil)
	hashes, err := l.st.LedgerNodes(ctx, toStore(ids))
	if err != nil {
		return fmt.Errorf("ledger: load compact range of size %d: %w", size, err)
	}
	rng, err := l.rf.NewRange(0, size, hashes)
	if err != nil {
		return fmt.Errorf("ledger: %w", err)
	}
	l.rng, l.stale = rng, false
	return nil
}

// Append adds leaves (LeafData values) durably and returns the index of the
// first one and the new size and root. After a failed append the next one
// first reloads the log's state from storage, so a storage outage (or a
// commit whose outcome was lost) never leaves the log unable to append.
// When another process appended to the same storage meanwhile (several
// nodes' ingest on one PostgreSQL), the storage refuses the append
// (store.ErrLedgerMoved, decided under its lock): the log reloads and
// appends after what the other wrote, so the nodes build one log.
func (l *Log) Append(ctx context.Context, leaves [][]byte) (first, size uint64, root []byte, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for attempt := 0; ; attempt++ {
		if l.stale {
			if err := l.load(ctx); err != nil {
				return 0, 0, nil, err
			}
		}
		first, size, root, err = l.appendLocked(ctx, leaves)
		if !errors.Is(err, store.ErrLedgerMoved) || attempt == maxMovedRetries {
			return first, size, root, err
		}
	}
}

// maxMovedRetries bounds the reloads of one Append that others keep
// overtaking (each retry is one short transaction of the storage).
const maxMovedRetries = 64

func (l *Log) appendLocked(ctx context.Context, leaves [][]byte) (first, size uint64, root []byte, err error) {
	start := l.rng.End()
	next := l.rf.NewEmptyRange(start)
	var nodes []store.LedgerNode
	visit := func(id compact.NodeID, hash []byte) {
		nodes = append(nodes, store.LedgerNode{Level: id.Level, Index: id.Index, Hash: hash})
	}
	for _, d := range leaves {
		if err := next.Append(hasher.HashLeaf(d), visit); err != nil {
			return 0, 0, nil, err
		}
	}
	merged := l.rf.NewEmptyRange(0)
	if err := merged.AppendRange(l.rng, nil); err != nil {
		return 0, 0, nil, err
	}
	// Merging reports the perfect nodes that span the old and new leaves.
	if err := merged.AppendRange(next, visit); err != nil {
		return 0, 0, nil, err
	}
	if err := l.st.AppendLedger(ctx, start, leaves, nodes); err != nil {
		l.stale = true
		return 0, 0, nil, fmt.Errorf("ledger append: %w", err)
	}
	l.rng = merged
	root, err = l.root()
	return start, merged.End(), root, err
}

// RootAfter returns the size and root the log would have after appending
// leaves, without appending them: a mirror checks what a source sent
// against the source's signed head before anything is stored.
func (l *Log) RootAfter(leaves [][]byte) (size uint64, root []byte, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	r := l.rf.NewEmptyRange(0)
	if err := r.AppendRange(l.rng, nil); err != nil {
		return 0, nil, err
	}
	for _, d := range leaves {
		if err := r.Append(hasher.HashLeaf(d), nil); err != nil {
			return 0, nil, err
		}
	}
	if r.End() == 0 {
		return 0, hasher.EmptyRoot(), nil
	}
	root, err = r.GetRootHash(nil)
	return r.End(), root, err
}

// Reload reads the log's state from storage again: another process on
// the same database (an operator command) appended to it.
func (l *Log) Reload(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.load(ctx)
}

// Size returns the number of leaves and the current root hash.
func (l *Log) Size() (uint64, []byte, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	root, err := l.root()
	return l.rng.End(), root, err
}

func (l *Log) root() ([]byte, error) {
	if l.rng.End() == 0 {
		return hasher.EmptyRoot(), nil
	}
	return l.rng.GetRootHash(nil)
}

// Find returns the index of the leaf with the given data.
func (l *Log) Find(ctx context.Context, leafData []byte) (uint64, error) {
	idx, _, err := l.st.LedgerLeaf(ctx, hasher.HashLeaf(leafData))
	return idx, err
}

// FindAll returns the index of each leaf (LeafData values) that is in the
// log, keyed by string(leafData); absent leaves are left out. One storage
// query for the whole set.
func (l *Log) FindAll(ctx context.Context, leaves [][]byte) (map[string]uint64, error) {
	hashes := make([][]byte, len(leaves))
	for i, d := range leaves {
		hashes[i] = hasher.HashLeaf(d)
	}
	byHash, err := l.st.LedgerLeafIndexes(ctx, hashes)
	if err != nil {
		return nil, err
	}
	out := make(map[string]uint64, len(byHash))
	for i, h := range hashes {
		if idx, ok := byHash[string(h)]; ok {
			out[string(leaves[i])] = idx
		}
	}
	return out, nil
}

// InclusionProof proves that leaf index is in the tree of the given size.
func (l *Log) InclusionProof(ctx context.Context, index, size uint64) ([][]byte, error) {
	p, err := l.InclusionProofs(ctx, []uint64{index}, size)
	if err != nil {
		return nil, err
	}
	return p[0], nil
}

// InclusionProofs proves that each leaf of indexes is in the tree of the
// given size, reading the nodes of all proofs from storage at once (one
// query, not one per proof: a lookup proving several records costs one
// round trip to the database).
func (l *Log) InclusionProofs(ctx context.Context, indexes []uint64, size uint64) ([][][]byte, error) {
	if err := l.checkSize(ctx, size); err != nil {
		return nil, err
	}
	ns := make([]proof.Nodes, len(indexes))
	var ids []compact.NodeID
	for i, index := range indexes {
		n, err := proof.Inclusion(index, size)
		if err != nil {
			return nil, err
		}
		ns[i] = n
		ids = append(ids, n.IDs...)
	}
	hashes, err := l.st.LedgerNodes(ctx, toStore(ids))
	if err != nil {
		return nil, err
	}
	out := make([][][]byte, len(ns))
	for i, n := range ns {
		own := hashes[:len(n.IDs):len(n.IDs)]
		hashes = hashes[len(n.IDs):]
		if out[i], err = n.Rehash(own, hasher.HashChildren); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// ConsistencyProof proves that the tree of size1 is a prefix of the tree of
// size2.
func (l *Log) ConsistencyProof(ctx context.Context, size1, size2 uint64) ([][]byte, error) {
	if err := l.checkSize(ctx, size2); err != nil {
		return nil, err
	}
	n, err := proof.Consistency(size1, size2)
	if err != nil {
		return nil, err
	}
	return l.fetch(ctx, n)
}

// ErrBeyondTree is wrapped by the error of a proof asked for a tree larger
// than the ledger: the asker's mistake, not the ledger's.
var ErrBeyondTree = errors.New("beyond the ledger")

// checkSize refuses a proof beyond the stored ledger. The storage decides
// when the log in memory is shorter: other nodes on the same database
// append too, and their nodes are stored like this one's.
func (l *Log) checkSize(ctx context.Context, size uint64) error {
	l.mu.Lock()
	end := l.rng.End()
	l.mu.Unlock()
	if size <= end {
		return nil
	}
	stored, err := l.st.LedgerSize(ctx)
	if err != nil {
		return fmt.Errorf("ledger: size: %w", err)
	}
	if size > stored {
		return fmt.Errorf("tree size %d is larger than the ledger (%d): %w", size, stored, ErrBeyondTree)
	}
	return nil
}

func (l *Log) fetch(ctx context.Context, n proof.Nodes) ([][]byte, error) {
	hashes, err := l.st.LedgerNodes(ctx, toStore(n.IDs))
	if err != nil {
		return nil, err
	}
	return n.Rehash(hashes, hasher.HashChildren)
}

// VerifyInclusion checks an inclusion proof of leaf data against a root.
func VerifyInclusion(leafData []byte, index, size uint64, proofHashes [][]byte, root []byte) error {
	return proof.VerifyInclusion(hasher, index, size, hasher.HashLeaf(leafData), proofHashes, root)
}

// VerifyConsistency checks that root1 (of size1) is a prefix of root2.
func VerifyConsistency(size1, size2 uint64, proofHashes [][]byte, root1, root2 []byte) error {
	return proof.VerifyConsistency(hasher, size1, size2, proofHashes, root1, root2)
}

func toStore(ids []compact.NodeID) []store.LedgerNode {
	out := make([]store.LedgerNode, len(ids))
	for i, id := range ids {
		out[i] = store.LedgerNode{Level: id.Level, Index: id.Index}
	}
	return out
}
