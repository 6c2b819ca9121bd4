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
