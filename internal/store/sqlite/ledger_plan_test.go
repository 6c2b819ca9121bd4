package sqlite

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
)

// TestLedgerSizeReadsNoTable: every ledger append asks for the number of
// leaves; answering must not read the whole table (count(*) did: a cost
// that grows with the log, per append).
func TestLedgerSizeReadsNoTable(t *testing.T) {
	s, err := Open(t.Context(), filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	leaves := make([][]byte, 1000)
	for i := range leaves {
		leaves[i] = fmt.Appendf(nil, "leaf %d", i)
	}
	if err := s.AppendLedger(t.Context(), 0, leaves, nil); err != nil {
		t.Fatal(err)
	}
	if n, err := s.LedgerSize(t.Context()); err != nil || n != 1000 {
		t.Fatalf("LedgerSize = %d, %v; want 1000", n, err)
	}
	rows, err := s.db.QueryContext(t.Context(), `EXPLAIN QUERY PLAN `+ledgerSizeQuery)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var plan []string
	for rows.Next() {
		var id, parent, unused int
		var detail string
		if err := rows.Scan(&id, &parent, &unused, &detail); err != nil {
			t.Fatal(err)
		}
		plan = append(plan, detail)
	}
	if p := strings.Join(plan, "; "); strings.Contains(p, "SCAN") {
		t.Errorf("the ledger size query reads the table: %s", p)
	}
}
