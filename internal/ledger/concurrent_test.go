package ledger

import (
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"

	"github.com/fieldtrust/fieldtrust/internal/store/postgres/pgtest"
	"github.com/fieldtrust/fieldtrust/internal/store/sqlite"
)

// TestConcurrentAppenders: several logs on one database (the ingest of
// several nodes on one PostgreSQL) append at once; they build one log:
// every leaf at its own index, and the stored tree is the tree of the
// leaves in index order.
func TestConcurrentAppenders(t *testing.T) {
	for _, db := range []string{"sqlite", "postgres"} {
		t.Run(db, func(t *testing.T) {
			var st Storage
			if db == "postgres" {
				st = pgtest.Open(t)
			} else {
				s, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "db"))
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { s.Close() })
				st = s
			}
			const appenders, batches, perBatch = 3, 30, 4
			var all [][]byte
			var logs []*Log
			var wg sync.WaitGroup
			errs := make(chan error, appenders*batches)
			for a := range appenders {
				l, err := Open(t.Context(), st)
				if err != nil {
					t.Fatal(err)
				}
				logs = append(logs, l)
				var mine [][]byte
				for b := range batches {
					var batch [][]byte
					for i := range perBatch {
						batch = append(batch, []byte(fmt.Sprintf("node%d/batch%d/leaf%d", a, b, i)))
					}
					mine = append(mine, batch...)
				}
				all = append(all, mine...)
				wg.Add(1)
				go func() {
					defer wg.Done()
					for b := range batches {
						if _, _, _, err := l.Append(t.Context(), mine[b*perBatch:(b+1)*perBatch]); err != nil {
							errs <- err
							return
						}
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatalf("append: %v", err)
			}
			fresh, err := Open(t.Context(), st)
			if err != nil {
				t.Fatal(err)
			}
			size, root, err := fresh.Size()
			if err != nil || size != uint64(len(all)) {
				t.Fatalf("size %d, want %d (%v)", size, len(all), err)
			}
			idx, err := fresh.FindAll(t.Context(), all)
			if err != nil {
				t.Fatal(err)
			}
			byIndex := make([][]byte, len(all))
			for _, d := range all {
				i, ok := idx[string(d)]
				if !ok || byIndex[i] != nil {
					t.Fatalf("leaf %s: index %d found %v, or taken twice", d, i, ok)
				}
				byIndex[i] = d
			}
			rf := &compact.RangeFactory{Hash: rfc6962.DefaultHasher.HashChildren}
			r := rf.NewEmptyRange(0)
			for _, d := range byIndex {
				if err := r.Append(rfc6962.DefaultHasher.HashLeaf(d), nil); err != nil {
					t.Fatal(err)
				}
			}
			want, err := r.GetRootHash(nil)
			if err != nil || !slices.Equal(want, root) {
				t.Fatalf("stored root %x, the leaves in index order give %x (%v)", root, want, err)
			}
			// Every appender proves against the whole log, also one whose
			// own view is older than the last append.
			for i, l := range logs {
				p, err := l.InclusionProof(t.Context(), 0, size)
				if err != nil {
					t.Fatalf("appender %d: proof against size %d: %v", i, size, err)
				}
				if err := proof.VerifyInclusion(rfc6962.DefaultHasher, 0, size, rfc6962.DefaultHasher.HashLeaf(byIndex[0]), p, root); err != nil {
					t.Fatalf("appender %d: proof does not verify: %v", i, err)
				}
			}
		})
	}
}
