package store

import "context"

// LedgerNode is one node of the ledger's Merkle tree: level 0 are leaf
// hashes, level L index I covers leaves [I·2^L, (I+1)·2^L).
type LedgerNode struct {
	Level uint
	Index uint64
	Hash  []byte
}

// TreeHead is a signed statement of the ledger's size and root.
type TreeHead struct {
	Size       uint64
	Root       []byte
	Checkpoint []byte // the signed text
	Signature  []byte
	CertChain  []byte // PEM, signer first
}

// Ledger stores the append-only Merkle log. A single writer appends.
type Ledger interface {
	// LedgerSize returns the number of leaves.
	LedgerSize(ctx context.Context) (uint64, error)
	// AppendLedger appends leaves (with their data) and the tree nodes they
	// complete, atomically. It fails without change if the ledger does not
	// currently have exactly start leaves.
	AppendLedger(ctx context.Context, start uint64, leafData [][]byte, nodes []LedgerNode) error
	// LedgerNodes returns the hashes of the nodes, in order, or an error
	// wrapping ErrNotFound if one is missing.
	LedgerNodes(ctx context.Context, ids []LedgerNode) ([][]byte, error)
	// LedgerLeaf returns the index and data of the leaf with the given leaf
	// hash, or ErrNotFound.
	LedgerLeaf(ctx context.Context, leafHash []byte) (uint64, []byte, error)
	// LedgerLeafIndexes looks up many leaf hashes at once (one query, not
	// one per hash): it returns the smallest index of each hash that is in
	// the ledger, keyed by string(hash); hashes not found are absent.
	LedgerLeafIndexes(ctx context.Context, leafHashes [][]byte) (map[string]uint64, error)
	// PutTreeHead records a signed tree head; one per size.
	PutTreeHead(ctx context.Context, th TreeHead) error
	// LatestTreeHead returns the largest signed tree head, or ErrNotFound.
	LatestTreeHead(ctx context.Context) (TreeHead, error)
}
