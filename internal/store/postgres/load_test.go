package postgres

import (
	"os"
	"strconv"
	"testing"

	"github.com/fieldtrust/fieldtrust/internal/store/storetest"
)

// TestStoreLoad is the storage load test of docs/benchmarks.md against
// PostgreSQL. It runs only with FIELDTRUST_STORE_BENCH set to the fraction
// of the design thesis's workload (1 = 100,000 snapshots × 340 values) and
// FIELDTRUST_TEST_POSTGRES set:
//
//	FIELDTRUST_TEST_POSTGRES="$(./scripts/postgres-test.sh)" FIELDTRUST_STORE_BENCH=1 \
//	    go test -run TestStoreLoad -timeout 60m -v ./internal/store/postgres
func TestStoreLoad(t *testing.T) {
	v := os.Getenv("FIELDTRUST_STORE_BENCH")
	if v == "" {
		t.Skip("set FIELDTRUST_STORE_BENCH=1 (or a fraction such as 0.1) to run the storage load test")
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || f <= 0 || f > 10 {
		t.Fatalf("FIELDTRUST_STORE_BENCH=%q: want a fraction of the workload, e.g. 1 or 0.1", v)
	}
	shape := storetest.LoadShape{Masters: max(1, int(20*f+0.5)), PerDevice: 100, Batch: 200}
	s, err := Open(t.Context(), freshSchema(t, testDSN(t)))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	report := storetest.RunLoad(t, s, shape, func() int64 {
		// Fresh statistics for the planner, as autovacuum would gather.
		if _, err := s.pool.Exec(t.Context(), `ANALYZE`); err != nil {
			t.Fatal(err)
		}
		var n int64
		if err := s.pool.QueryRow(t.Context(), `SELECT sum(pg_total_relation_size(c.oid))::bigint FROM pg_class c
			JOIN pg_namespace n ON n.oid = c.relnamespace
			WHERE n.nspname = current_schema() AND c.relkind = 'r'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		var snaps int64
		if err := s.pool.QueryRow(t.Context(), `SELECT pg_total_relation_size('snapshots')`).Scan(&snaps); err != nil {
			t.Fatal(err)
		}
		t.Logf("load: snapshots table with indexes and TOAST: %d bytes of %d", snaps, n)
		return n
	})
	t.Log("report (PostgreSQL):\n" + report)
}
