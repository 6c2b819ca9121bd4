package sqlite

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/fieldtrust/fieldtrust/internal/store/storetest"
)

// TestStoreLoad is the storage load test of docs/benchmarks.md. It runs
// only with FIELDTRUST_STORE_BENCH set to the fraction of the design
// thesis's workload to insert (1 = 100,000 snapshots × 340 values):
//
//	FIELDTRUST_STORE_BENCH=1 go test -run TestStoreLoad -timeout 60m -v ./internal/store/sqlite
func TestStoreLoad(t *testing.T) {
	shape := loadShape(t)
	file := filepath.Join(t.TempDir(), "load.db")
	if dir := os.Getenv("FIELDTRUST_STORE_BENCH_DIR"); dir != "" {
		file = filepath.Join(dir, "load.db")
		os.Remove(file)
		os.Remove(file + "-wal")
		os.Remove(file + "-shm")
	}
	s, err := Open(t.Context(), file)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	report := storetest.RunLoad(t, s, shape, func() int64 {
		if _, err := s.db.ExecContext(t.Context(), `PRAGMA wal_checkpoint(TRUNCATE)`); err != nil {
			t.Fatal(err)
		}
		var n int64
		for _, f := range []string{file, file + "-wal"} {
			if fi, err := os.Stat(f); err == nil {
				n += fi.Size()
			}
		}
		return n
	})
	t.Log("report (SQLite):\n" + report)
}

func loadShape(t *testing.T) storetest.LoadShape {
	v := os.Getenv("FIELDTRUST_STORE_BENCH")
	if v == "" {
		t.Skip("set FIELDTRUST_STORE_BENCH=1 (or a fraction such as 0.1) to run the storage load test")
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || f <= 0 || f > 10 {
		t.Fatalf("FIELDTRUST_STORE_BENCH=%q: want a fraction of the workload, e.g. 1 or 0.1", v)
	}
	return storetest.LoadShape{Masters: max(1, int(20*f+0.5)), PerDevice: 100, Batch: 200}
}
