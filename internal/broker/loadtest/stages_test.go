package loadtest

import (
	"testing"

	dto "github.com/prometheus/client_model/go"
)

// TestSummarise: percentiles are the upper bounds of the buckets that
// hold them (nearest rank), so they are never under-reported.
func TestSummarise(t *testing.T) {
	bucket := func(le float64, n uint64) *dto.Bucket { return &dto.Bucket{UpperBound: &le, CumulativeCount: &n} }
	for _, c := range []struct {
		name          string
		buckets       []*dto.Bucket
		count         uint64
		p50, p99, max float64
	}{
		{"empty", nil, 0, 0, 0, 0},
		{"one bucket", []*dto.Bucket{bucket(1, 10)}, 10, 1, 1, 1},
		// 100 observations: 98 ≤ 1, one more ≤ 2, the last ≤ 4.
		{"tail", []*dto.Bucket{bucket(1, 98), bucket(2, 99), bucket(4, 100)}, 100, 1, 2, 4},
		// the 99th of 100 is the last one ≤ 1: p99 stays in that bucket
		{"p99 at the edge", []*dto.Bucket{bucket(1, 99), bucket(8, 100)}, 100, 1, 1, 8},
	} {
		s := Summarise(c.name, &dto.Histogram{SampleCount: &c.count, Bucket: c.buckets})
		if s.Count != c.count || s.P50 != c.p50 || s.P99 != c.p99 || s.Max != c.max {
			t.Errorf("%s: got %+v; want count %d p50 %v p99 %v max %v", c.name, s, c.count, c.p50, c.p99, c.max)
		}
	}
}
