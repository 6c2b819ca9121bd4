package sqlite

import (
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/snapshot"
	"github.com/fieldtrust/fieldtrust/internal/snapshot/synth"
	"github.com/fieldtrust/fieldtrust/internal/store"
)

// BenchmarkInsertSnapshots inserts batches as ingest commits them in the
// end-to-end workload: 256 snapshots of 340 values, each of another of
// 1,000 devices. One op is one batch.
//
//	go test -run '^$' -bench InsertSnapshots -benchtime 200x ./internal/store/sqlite
func BenchmarkInsertSnapshots(b *testing.B) {
	s, err := Open(b.Context(), filepath.Join(b.TempDir(), "db"))
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	const devices, batch = 1000, 256
	chans := synth.Channels(340)
	builders := make([]snapshot.Builder, devices)
	for d := range builders {
		builders[d] = snapshot.Builder{Device: fmt.Sprintf("dev-%d", d%5), DeviceType: "test-bench"}
	}
	rng := synth.NewRand(1)
	start := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	next := 0
	recs := make([]store.SnapshotRecord, batch)
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		for j := range recs {
			d := next % devices
			k := next / devices
			next++
			vals := slices.Clone(chans)
			synth.Fill(vals, rng, d, k)
			at := start.Add(time.Duration(k) * 15 * time.Minute)
			enc, sn, err := builders[d].Next(at.UnixMilli(), vals)
			if err != nil {
				b.Fatal(err)
			}
			h := snapshot.Hash(enc)
			gw := fmt.Sprintf("ms-%02d/acc-%d/gw-%d", d/250, d/50%5, d/5%10)
			recs[j] = store.SnapshotRecord{Gateway: gw, Device: sn.Device, DeviceType: sn.DeviceType, Seq: sn.Seq, Time: sn.Time(),
				Hash: h[:], Prev: sn.Prev, Values: sn.Values, Signer: "e2e:" + gw, SignedAt: at, ReceivedAt: at, LedgerIndex: uint64(next)}
		}
		b.StartTimer()
		if _, err := s.InsertSnapshots(b.Context(), recs); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*batch), "µs/snapshot")
}
