package loadtest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"sort"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// SaveProfile writes brokerd's runtime profile name (-debug-addr
// /debug/pprof/NAME, e.g. "allocs": every allocation since the broker
// started) to path, for go tool pprof.
func (b *Broker) SaveProfile(ctx context.Context, name, path string) error {
	if b.DebugAddr == "" {
		return errors.New(b.Name + ": started without -debug-addr")
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+b.DebugAddr+"/debug/pprof/"+name, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s profile: %w", b.Name, name, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s %s profile: %s", b.Name, name, resp.Status)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, 256<<20))
	if err != nil {
		return fmt.Errorf("%s %s profile: %w", b.Name, name, err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		return fmt.Errorf("%s %s profile: %w", b.Name, name, err)
	}
	return nil
}

// Metrics reads brokerd's Prometheus series (-debug-addr /metrics): the
// broker's own and the runtime's GC and scheduler histograms.
func (b *Broker) Metrics(ctx context.Context) (map[string]*dto.MetricFamily, error) {
	if b.DebugAddr == "" {
		return nil, errors.New(b.Name + ": started without -debug-addr")
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+b.DebugAddr+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "text/plain; version=0.0.4")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s metrics: %w", b.Name, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s metrics: %s", b.Name, resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, fmt.Errorf("%s metrics: %w", b.Name, err)
	}
	return fams, nil
}

// HistogramStats summarises one histogram: its count, and the upper bounds
// of the buckets holding the median, the 99th percentile and the largest
// observation (so each is "at most").
type HistogramStats struct {
	Name          string
	Count         uint64
	P50, P99, Max float64 // seconds, or the histogram's unit
}

// Summarise reads h's cumulative buckets.
func Summarise(name string, h *dto.Histogram) HistogramStats {
	s := HistogramStats{Name: name, Count: h.GetSampleCount()}
	if s.Count == 0 {
		return s
	}
	at := func(rank uint64) float64 {
		for _, b := range h.GetBucket() {
			if b.GetCumulativeCount() >= rank {
				return b.GetUpperBound()
			}
		}
		return math.Inf(1)
	}
	s.P50 = at((s.Count + 1) / 2)
	s.P99 = at(uint64(math.Ceil(float64(s.Count) * 0.99)))
	s.Max = at(s.Count)
	return s
}

// StageRows returns the histograms the attribution table shows, in order:
// the store's stages (fieldtrust_broker_store_seconds), the ops per
// batch, and the runtime's GC pauses and scheduling latency.
func StageRows(fams map[string]*dto.MetricFamily) []HistogramStats {
	var rows []HistogramStats
	if f := fams["fieldtrust_broker_store_seconds"]; f != nil {
		order := map[string]int{"queue": 0, "resolve": 1, "write": 2, "sync": 3, "wait": 4, "checkpoint": 5}
		ms := append([]*dto.Metric(nil), f.GetMetric()...)
		label := func(m *dto.Metric, name string) string {
			for _, l := range m.GetLabel() {
				if l.GetName() == name {
					return l.GetValue()
				}
			}
			return ""
		}
		sort.SliceStable(ms, func(i, j int) bool { return order[label(ms[i], "stage")] < order[label(ms[j], "stage")] })
		for _, m := range ms {
			name := "store " + label(m, "stage")
			if c := label(m, "checkpoint"); c != "" {
				name += " (checkpoint running: " + c + ")"
			}
			rows = append(rows, Summarise(name, m.GetHistogram()))
		}
	}
	for _, n := range []struct{ metric, name string }{
		{"fieldtrust_broker_store_batch_ops", "ops per batch"},
		{"go_sched_pauses_total_gc_seconds", "GC stop-the-world pauses"},
		{"go_sched_latencies_seconds", "goroutine scheduling latency"},
	} {
		if f := fams[n.metric]; f != nil && len(f.GetMetric()) == 1 {
			rows = append(rows, Summarise(n.name, f.GetMetric()[0].GetHistogram()))
		}
	}
	return rows
}

// counter returns a counter's (or gauge's) value, 0 if absent.
func counter(fams map[string]*dto.MetricFamily, name string) float64 {
	f := fams[name]
	if f == nil || len(f.GetMetric()) != 1 {
		return 0
	}
	m := f.GetMetric()[0]
	if c := m.GetCounter(); c != nil {
		return c.GetValue()
	}
	return m.GetGauge().GetValue()
}

// StageTable is the markdown table of StageRows for one run; published
// is the number of messages the broker accepted in the process's life
// (its CPU time is shown per message).
func StageTable(label string, fams map[string]*dto.MetricFamily, published int) string {
	var b strings.Builder
	logged, cancelled := 0.0, 0.0
	if f := fams["fieldtrust_broker_store_delivery_writes_total"]; f != nil {
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				switch {
				case l.GetName() == "result" && l.GetValue() == "logged":
					logged = m.GetCounter().GetValue()
				case l.GetName() == "result" && l.GetValue() == "cancelled":
					cancelled = m.GetCounter().GetValue()
				}
			}
		}
	}
	fmt.Fprintf(&b, "Where the time goes (%s; bucket upper bounds; GC cycles %.0f; broker CPU %.1f µs per published message; message and delivery writes logged %.0f, cancelled before logging %.0f):\n\n",
		label, counter(fams, "go_gc_cycles_total_gc_cycles_total"), counter(fams, "process_cpu_seconds_total")*1e6/float64(max(published, 1)), logged, cancelled)
	b.WriteString("| histogram | count | p50 ≤ | p99 ≤ | max ≤ |\n|---|---:|---:|---:|---:|\n")
	for _, r := range StageRows(fams) {
		if r.Count == 0 {
			continue
		}
		v := func(x float64) string {
			if math.IsInf(x, 1) {
				return "beyond the last bucket"
			}
			if r.Name == "ops per batch" {
				return fmt.Sprintf("%.0f", x)
			}
			return ms(time.Duration(x * float64(time.Second)))
		}
		fmt.Fprintf(&b, "| %s | %d | %s | %s | %s |\n", r.Name, r.Count, v(r.P50), v(r.P99), v(r.Max))
	}
	return b.String()
}
