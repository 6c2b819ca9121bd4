package registry

import (
	"context"
	"sync"

	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/store/registrystore"
)

// Bounds of cachedNodes: nodes at level ≥ cachedLevel (each covers 64
// leaves or more) are kept, at most maxCachedNodes of them (at 10^6
// leaves all 31,000 such nodes, about 3 MB; the bound is reached at
// 8·10^6 leaves, beyond which the lower of them are read from storage).
const (
	cachedLevel    = 6
	maxCachedNodes = 1 << 17
)

// cachedNodes is the registry log's storage with its upper tree nodes
// kept in memory. A stored node is a perfect subtree's hash, which an
// append-only log never changes, so a cached node is never stale; every
// inclusion proof needs the upper ones (about two thirds of a proof's
// nodes at 10^6 leaves), and reading them for each lookup was a third of
// a lookup's CPU on SQLite.
type cachedNodes struct {
	*registrystore.Store

	mu    sync.RWMutex
	nodes map[nodeID][]byte // guarded by mu
}

type nodeID struct {
	level uint
	index uint64
}

func newCachedNodes(st *registrystore.Store) *cachedNodes {
	return &cachedNodes{Store: st, nodes: map[nodeID][]byte{}}
}

// LedgerNodes implements ledger.Storage: the cached nodes from memory,
// the others in one storage query.
func (c *cachedNodes) LedgerNodes(ctx context.Context, ids []store.LedgerNode) ([][]byte, error) {
	out := make([][]byte, len(ids))
	var miss []store.LedgerNode
	var at []int
	c.mu.RLock()
	for i, id := range ids {
		if h, ok := c.nodes[nodeID{id.Level, id.Index}]; ok {
			out[i] = h
			continue
		}
		miss, at = append(miss, id), append(at, i)
	}
	c.mu.RUnlock()
	if len(miss) == 0 {
		return out, nil
	}
	hs, err := c.Store.LedgerNodes(ctx, miss)
	if err != nil {
		return nil, err
	}
	upper := false
	for j, h := range hs {
		out[at[j]] = h
		upper = upper || miss[j].Level >= cachedLevel
	}
	if !upper {
		return out, nil // the usual case once warm: no write lock per lookup
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for j, h := range hs {
		if id := miss[j]; id.Level >= cachedLevel && len(c.nodes) < maxCachedNodes {
			c.nodes[nodeID{id.Level, id.Index}] = h
		}
	}
	return out, nil
}
