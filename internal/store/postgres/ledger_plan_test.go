package postgres

import (
	"crypto/sha256"
	"encoding/binary"
	"strings"
	"testing"
)

// TestLedgerLeafIndexesUsesTheIndex: ingest looks up a batch's 256 ledger
// leaves in one query; it must probe the (leaf_hash, idx) index for each,
// not scan the table (the "leaf_hash = ANY($1)" form was planned as a
// sequential scan with the array as filter, even after ANALYZE: a cost that
// grows with the log, per batch).
func TestLedgerLeafIndexesUsesTheIndex(t *testing.T) {
	ctx := t.Context()
	s, err := Open(ctx, freshSchema(t, testDSN(t)))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	leaf := func(i int) []byte {
		var b [8]byte
		binary.BigEndian.PutUint64(b[:], uint64(i))
		h := sha256.Sum256(b[:])
		return h[:]
	}
	const n = 20_000
	data := make([][]byte, n)
	for i := range data {
		data[i] = leaf(i)
	}
	if err := s.AppendLedger(ctx, 0, data, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := s.pool.Exec(ctx, `ANALYZE ledger_leaves`); err != nil {
		t.Fatal(err)
	}
	var hashes [][]byte
	for i := range 256 {
		d := leaf(n + i) // absent, as a batch of new snapshots is
		if i%2 == 0 {
			d = data[i*7]
		}
		hashes = append(hashes, leafHash(d))
	}
	rows, err := s.pool.Query(ctx, `EXPLAIN `+leafIndexesQuery, hashes)
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for rows.Next() {
		var l string
		if err := rows.Scan(&l); err != nil {
			t.Fatal(err)
		}
		lines = append(lines, l)
	}
	rows.Close()
	if plan := strings.Join(lines, "\n"); strings.Contains(plan, "Seq Scan") || !strings.Contains(plan, "ledger_leaves_hash_idx") {
		t.Errorf("the batch leaf lookup does not probe the index:\n%s", plan)
	}
	got, err := s.LedgerLeafIndexes(ctx, hashes)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 128 {
		t.Fatalf("found %d of 128 leaves", len(got))
	}
	for i := 0; i < 256; i += 2 {
		if idx, ok := got[string(hashes[i])]; !ok || idx != uint64(i*7) {
			t.Fatalf("leaf %d: index %d, %v; want %d", i, idx, ok, i*7)
		}
	}
}
