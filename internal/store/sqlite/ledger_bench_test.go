package sqlite

import (
	"crypto/sha256"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/fieldtrust/fieldtrust/internal/store"
)

// BenchmarkAppendLedger appends batches as ingest does in the end-to-end
// workload: 256 leaves of a ledger message's size and as many tree nodes.
// One op is one batch.
//
//	go test -run '^$' -bench AppendLedger -benchtime 200x ./internal/store/sqlite
func BenchmarkAppendLedger(b *testing.B) {
	s, err := Open(b.Context(), filepath.Join(b.TempDir(), "db"))
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	const batch = 256
	var size uint64
	b.ReportAllocs()
	for b.Loop() {
		leaves := make([][]byte, batch)
		nodes := make([]store.LedgerNode, batch)
		for i := range leaves {
			leaves[i] = fmt.Appendf(nil, `{"gateway":"ms-acc-1/acc-1/gw-%d","device":"dev-%d","seq":%d,"hash":"%064x"}`, i%200, i%5, size, size)
			h := sha256.Sum256(leaves[i])
			nodes[i] = store.LedgerNode{Level: uint(1 + i%8), Index: size + uint64(i), Hash: h[:]}
		}
		if err := s.AppendLedger(b.Context(), size, leaves, nodes); err != nil {
			b.Fatal(err)
		}
		size += batch
	}
}
