package rules

import (
	"fmt"
	"syscall"
	"testing"
	"time"

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
// condition, none firing. The shapes: "plain" (values.ch007 > 1000.0) and
// "guarded", the end-to-end benchmark's rules (internal/loadgen):
// '"ch007" in values && values["ch007"] > 1e12'.
func BenchmarkEngine(b *testing.B) {
	shapes := []struct{ name, when, clear string }{
		{"plain", "values.%[1]s > 1000.0", "values.%[1]s < 900.0"},
		{"guarded", `'"%[1]s" in values && values["%[1]s"] > 1e12'`, `'values["%[1]s"] < 1e11'`},
	}
	for _, sh := range shapes {
		for _, n := range []int{0, 1, 10, 100} {
			if n == 0 && sh.name != "plain" {
				continue
			}
			b.Run(fmt.Sprintf("%s/rules=%d", sh.name, n), func(b *testing.B) { benchEngine(b, n, sh.when, sh.clear) })
		}
	}
}

func benchEngine(b *testing.B, n int, when, clear string) {
	e := NewEngine()
	var rs []*Rule
	for i := range n {
		ch := fmt.Sprintf("ch%03d", i%340)
		src := fmt.Sprintf("version: 1\nname: r%d\nscope: ms-00\nwhen: %s\nclear: %s\nactions:\n  - mqtt: {}\n", i, fmt.Sprintf(when, ch), fmt.Sprintf(clear, ch))
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
	cpu0 := processCPU()
	for i := range b.N {
		var c store.RuleCommit
		e.Snapshot(recs[i%len(recs)], &c)
		if len(c.Alarms)+len(c.Errors) != 0 {
			b.Fatal(c)
		}
	}
	// The machine the numbers come from is shared: the process's CPU
	// time per operation says more than the wall clock (GC included).
	cpu := float64(processCPU()-cpu0) / float64(b.N)
	b.ReportMetric(cpu, "cpu-ns/op")
	if n > 0 {
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/rule")
		b.ReportMetric(cpu/float64(n), "cpu-ns/rule")
	}
}

// processCPU is the user and system CPU time the process has used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
