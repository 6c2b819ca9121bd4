package rules

import (
	"fmt"
	"testing"

	"github.com/fieldtrust/fieldtrust/internal/snapshot"
	"github.com/fieldtrust/fieldtrust/internal/store"
)

// benchSnapshot is a snapshot of the benchmarks' workload: 340 channels.
func benchSnapshot(i int) store.SnapshotRecord {
	rec := snap("ms-00/acc-0/gw-0", "dev-0", "test-bench", i, nil)
	for c := range 340 {
		rec.Values = append(rec.Values, snapshot.Value{Channel: fmt.Sprintf("ch%03d", c), Value: float64(c) + float64(i%7)})
	}
	return rec
}

// BenchmarkEngine measures the engine per snapshot of 340 values with 0,
// 1, 10 and 100 rules that all apply (the worst case: every rule in scope
// of every device), each a comparison on one channel plus a clear
// condition, none firing.
func BenchmarkEngine(b *testing.B) {
	for _, n := range []int{0, 1, 10, 100} {
		b.Run(fmt.Sprintf("rules=%d", n), func(b *testing.B) {
			e := NewEngine()
			var rs []*Rule
			for i := range n {
				src := fmt.Sprintf("version: 1\nname: r%d\nscope: ms-00\nwhen: values.ch%03d > 1000.0\nclear: values.ch%03d < 900.0\nactions:\n  - mqtt: {}\n", i, i%340, i%340)
				r, err := Load("b.yaml", []byte(src))
				if err != nil {
					b.Fatal(err)
				}
				r.ID, r.Revision = fmt.Sprint(i), 1
				rs = append(rs, r)
			}
			e.SetRules(rs)
			recs := make([]store.SnapshotRecord, 64)
			for i := range recs {
				recs[i] = benchSnapshot(i)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				var c store.RuleCommit
				e.Snapshot(recs[i%len(recs)], &c)
				if len(c.Alarms)+len(c.Errors) != 0 {
					b.Fatal(c)
				}
			}
			if n > 0 {
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/rule")
			}
		})
	}
}
