package loadtest

import (
	"fmt"
	"strings"
	"time"
)

// Scenario names one row group: a workload run against each broker.
type Scenario struct {
	Name    string
	Results []Result // the first Mosquitto result is the reference for ratios
}

// ThroughputTable renders scenarios as a markdown table, each broker's
// throughput and p99 also as a ratio to the scenario's reference
// (mosquitto) run.
func ThroughputTable(scenarios []Scenario) string {
	var b strings.Builder
	b.WriteString("| scenario | broker | delivered msg/s | × mosquitto | p50 | p90 | p99 | p99 × mosquitto | max | delivered / expected | dupes |\n")
	b.WriteString("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, s := range scenarios {
		var ref *Result
		for i := range s.Results {
			if strings.HasPrefix(s.Results[i].Broker, "mosquitto") {
				ref = &s.Results[i]
				break
			}
		}
		for _, r := range s.Results {
			ratio, p99ratio := "—", "—"
			if ref != nil && ref.Throughput > 0 && ref.P99 > 0 {
				ratio = fmt.Sprintf("%.2f", r.Throughput/ref.Throughput)
				p99ratio = fmt.Sprintf("%.2f", float64(r.P99)/float64(ref.P99))
			}
			fmt.Fprintf(&b, "| %s | %s | %.0f | %s | %s | %s | %s | %s | %s | %d / %d | %d |\n",
				s.Name, r.Broker, r.Throughput, ratio, ms(r.P50), ms(r.P90), ms(r.P99), p99ratio, ms(r.Max),
				r.Delivered, r.Expected, r.Dupes)
		}
	}
	return b.String()
}

// IdleTable renders idle-connection results as a markdown table.
func IdleTable(rs []IdleResult) string {
	var b strings.Builder
	b.WriteString("| broker | client chain | idle mTLS connections | connects/s | RSS before | RSS after | bytes / connection | × mosquitto | CPU while idle (keepalive pings) |\n")
	b.WriteString("|---|---|---:|---:|---:|---:|---:|---:|---:|\n")
	var ref float64
	for _, r := range rs {
		if strings.HasPrefix(r.Broker, "mosquitto") {
			ref = r.PerConn()
		}
	}
	for _, r := range rs {
		ratio := "—"
		if ref > 0 {
			ratio = fmt.Sprintf("%.2f", r.PerConn()/ref)
		}
		chain := "leaf + 2 CAs"
		if r.LeafOnly {
			chain = "leaf only"
		}
		cpu := "—"
		if r.Pings > 0 {
			cpu = fmt.Sprintf("%.1f %% of a core (%d pings)", 100*r.CPUIdle, r.Pings)
		}
		fmt.Fprintf(&b, "| %s | %s | %d | %.0f | %.1f MiB | %.1f MiB | %.0f | %s | %s |\n",
			r.Broker, chain, r.Conns, r.ConnectRate, mib(r.RSSBefore), mib(r.RSSAfter), r.PerConn(), ratio, cpu)
	}
	return b.String()
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond)) }

func mib(n int64) float64 { return float64(n) / (1 << 20) }

// MemoryClasses are brokerd's runtime/metrics memory figures
// (/debug/memory), by metric name.
type MemoryClasses map[string]uint64

// ParseMemoryClasses reads /debug/memory's "NAME VALUE" lines.
func ParseMemoryClasses(text string) (MemoryClasses, error) {
	m := MemoryClasses{}
	for _, line := range strings.Split(strings.TrimSpace(text), "\n") {
		var name string
		var v uint64
		if _, err := fmt.Sscan(line, &name, &v); err != nil {
			return nil, fmt.Errorf("memory classes: line %q: %w", line, err)
		}
		m[name] = v
	}
	return m, nil
}

// MemoryTable splits the growth from before to after per connection:
// heap objects as found (live or garbage not yet collected) and after a
// forced GC (live), heap spans resident but unused or free, stacks, the
// runtime's other structures, and what the runtime holds from the OS
// (mapped minus released, about its RSS).
func MemoryTable(label string, conns int, before, after, afterGC MemoryClasses) string {
	const (
		objects  = "/memory/classes/heap/objects:bytes"
		unused   = "/memory/classes/heap/unused:bytes"
		free     = "/memory/classes/heap/free:bytes"
		released = "/memory/classes/heap/released:bytes"
		stacks   = "/memory/classes/heap/stacks:bytes"
		total    = "/memory/classes/total:bytes"
	)
	other := func(m MemoryClasses) int64 {
		return int64(m[total]) - int64(m[objects]+m[unused]+m[free]+m[released]+m[stacks])
	}
	held := func(m MemoryClasses) int64 { return int64(m[total]) - int64(m[released]) }
	per := func(a, b int64) string { return fmt.Sprintf("%.0f", float64(a-b)/float64(conns)) }
	g := func(m MemoryClasses, n string) int64 { return int64(m[n]) }
	var b strings.Builder
	b.WriteString("| " + label + ", bytes per connection | heap objects | live (after a forced GC) | heap unused in spans | heap free, not released | stacks | runtime other | held from the OS (mapped − released) | GC heap goal |\n")
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	fmt.Fprintf(&b, "| growth from before the connections | %s | %s | %s | %s | %s | %s | %s | %s |\n",
		per(g(after, objects), g(before, objects)), per(g(afterGC, objects), g(before, objects)),
		per(g(after, unused), g(before, unused)), per(g(after, free), g(before, free)),
		per(g(after, stacks), g(before, stacks)), per(other(after), other(before)),
		per(held(after), held(before)), per(g(after, "/gc/heap/goal:bytes"), g(before, "/gc/heap/goal:bytes")))
	return b.String()
}
