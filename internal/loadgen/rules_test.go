package loadgen_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/loadgen"
	"github.com/fieldtrust/fieldtrust/internal/mail"
	"github.com/fieldtrust/fieldtrust/internal/mailcatcher"
	"github.com/fieldtrust/fieldtrust/internal/platform"
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

// notifyConfig starts a mail catcher for FIELDTRUST_E2E_NOTIFY.
func notifyConfig(t *testing.T, cfg benchConfig) (platform.Notifications, *mailcatcher.Catcher) {
	if !cfg.notify {
		return platform.Notifications{}, nil
	}
	c, err := mailcatcher.Start(mailcatcher.Config{Addr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	smtp, err := mail.ParseURL("smtp://" + c.Addr() + "?from=bench@fieldtrust.example")
	if err != nil {
		t.Fatal(err)
	}
	return platform.Notifications{SMTP: &smtp}, c
}

// addNotifyRule mails every snapshot of one gateway's devices.
func addNotifyRule(t *testing.T, e *env, gateway string) {
	src := fmt.Sprintf("version: 1\nname: bench-mail\nscope: %s\nmode: each\nwhen: \"true\"\nrate_limit: 100000/h\nactions:\n  - email: [bench@fieldtrust.example]\n", gateway)
	if _, err := rules.Add(t.Context(), e.d.Store, rules.Author{Vendor: true, Path: "bench"}, "mail.yaml", []byte(src), time.Now()); err != nil {
		t.Fatal(err)
	}
	// The engine rereads rules every 2 s; publishing starts later than that
	// (sealing takes longer), and the first snapshots would be caught up
	// from the store anyway.
}

// reportNotifyLatency waits for want mails and reports the latency from
// each snapshot's arrival at ingest to the SMTP server's acceptance.
func reportNotifyLatency(t *testing.T, e *env, c *mailcatcher.Catcher, want int) {
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	msgs, err := c.Wait(ctx, want)
	if err != nil {
		t.Errorf("notifications: %v", err)
	}
	var lat loadgen.Latencies
	for _, m := range msgs {
		id := strings.TrimSuffix(strings.Trim(m.Header.Get("Message-Id"), "<>"), "@fieldtrust")
		om, err := e.d.Store.OutboxMessage(ctx, id)
		if err != nil {
			t.Fatalf("mail %s: %v", id, err)
		}
		lat = append(lat, m.At.Sub(om.CreatedAt))
	}
	t.Logf("notify: %d mails, snapshot arrival to SMTP acceptance median %s ms, p99 %s ms, max %s ms (target p99 < 2000 ms)",
		len(msgs), loadgen.Ms(lat.Quantile(0.5)), loadgen.Ms(lat.Quantile(0.99)), loadgen.Ms(lat.Quantile(1)))
}
