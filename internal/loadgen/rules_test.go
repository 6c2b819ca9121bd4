package loadgen_test

import (
	"crypto/tls"
	"fmt"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/loadgen"
	"github.com/fieldtrust/fieldtrust/internal/rules"
)

const metricRulesSnapshots = "fieldtrust_rules_snapshots_total"

// addBenchRules adds n rules over the whole fleet, the worst case for the
// engine: every rule applies to every device. Each compares one channel
// (the workload's channels in turn) against a bound it never reaches, with
// a clear condition, so the engine evaluates all of them on every
// snapshot and nothing fires. It waits until the platform runs them.
func addBenchRules(t *testing.T, e *env, admin tls.Certificate, n, channels int) {
	t.Helper()
	if n == 0 {
		return
	}
	for i := range n {
		ch := loadgen.Channel(i % channels)
		src := fmt.Sprintf("version: 1\nname: bench-%03d\nscope: \"*\"\nwhen: '%q in values && values[%q] > 1e12'\nclear: 'values[%q] < 1e11'\nseverity: info\nactions:\n  - mqtt: {}\n", i, ch, ch, ch)
		if _, err := rules.Add(t.Context(), e.d.Store, rules.Author{Vendor: true, Path: "bench"}, "bench.yaml", []byte(src), time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for e.metrics(t, admin)["fieldtrust_rules_enabled"] != float64(n) {
		if time.Now().After(deadline) {
			t.Fatalf("the platform does not run the %d rules", n)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("rules: %d over the whole fleet", n)
}

func stored(e *env, t *testing.T, admin tls.Certificate, m0 loadgen.Metrics) float64 {
	return e.metrics(t, admin)[loadgen.MetricStored] - m0[loadgen.MetricStored]
}
