package ingest

import "testing"

// TestPreparedKeepsNoChain: a batch's classification refers to the one of
// the batch before it only while it is being prepared. Before, each kept a
// pointer to the one before, so the chain held every batch since the
// connection started, with its snapshots (1.6 GiB after 33,000 snapshots
// in the PostgreSQL benchmark).
func TestPreparedKeepsNoChain(t *testing.T) {
	p := newProcessor(Config{})
	var prev *batch
	var prevPrep *prepared
	for i := range 3 {
		b := &batch{}
		if err := p.prepare(t.Context(), b, prev, prevPrep, false); err != nil {
			t.Fatal(err)
		}
		if b.prep.after != nil {
			t.Fatalf("batch %d: its classification still refers to the one before", i)
		}
		if i > 0 && b.prep.afterID != prevPrep.id {
			t.Fatalf("batch %d: prepared after %d, want %d", i, b.prep.afterID, prevPrep.id)
		}
		prev, prevPrep = b, b.prep
	}
}
