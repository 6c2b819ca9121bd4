package loadgen

import (
	"bufio"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Latencies summarizes query timings.
type Latencies []time.Duration

// Quantile returns the q-quantile (0 <= q <= 1), nearest rank.
func (l Latencies) Quantile(q float64) time.Duration {
	if len(l) == 0 {
		return 0
	}
	s := slices.Clone(l)
	slices.Sort(s)
	i := int(q*float64(len(s))+0.5) - 1
	return s[min(max(i, 0), len(s)-1)]
}

// Ms formats d in milliseconds with one decimal.
func Ms(d time.Duration) string { return strconv.FormatFloat(float64(d)/1e6, 'f', 1, 64) }

// Metrics is a Prometheus text exposition reduced to sums per metric
// name (labels summed over), e.g. "fieldtrust_ingest_rejects_total",
// and each labelled series as written, e.g.
// `fieldtrust_ingest_committer_seconds_total{stage="insert"}`.
type Metrics map[string]float64

// ParseMetrics reads the Prometheus text format.
func ParseMetrics(r io.Reader) (Metrics, error) {
	m := Metrics{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		sp := strings.LastIndexByte(line, ' ')
		if sp < 0 {
			continue
		}
		name := line[:sp]
		v, err := strconv.ParseFloat(line[sp+1:], 64)
		if err != nil {
			continue
		}
		if i := strings.IndexByte(name, '{'); i >= 0 {
			m[name] += v
			name = name[:i]
		}
		m[name] += v
	}
	return m, sc.Err()
}

// Names of the metrics the benchmark follows.
const (
	MetricReceived   = "fieldtrust_ingest_messages_total"
	MetricStored     = "fieldtrust_ingest_snapshots_stored_total"
	MetricDuplicates = "fieldtrust_ingest_duplicates_total"
	MetricRejects    = "fieldtrust_ingest_rejects_total"
	MetricEvents     = "fieldtrust_ingest_integrity_events_total"
	MetricBrokerIn   = "fieldtrust_broker_messages_in_total"
	MetricBrokerOut  = "fieldtrust_broker_messages_out_total"
)
