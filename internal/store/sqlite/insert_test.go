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

// TestInsertReusesChannelIDsOnlyForTheSameChannel: a batch whose
// snapshots share some channels, in other orders or with other units,
// reads back as it was written (InsertSnapshots reuses the ids of the
// snapshot before for the same channel at the same position).
func TestInsertReusesChannelIDsOnlyForTheSameChannel(t *testing.T) {
	s, err := Open(t.Context(), filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	layouts := [][]snapshot.Value{
		{{Channel: "a", Unit: "V", Value: 1}, {Channel: "b", Unit: "A", Value: 2}},
		{{Channel: "a", Unit: "V", Value: 3}, {Channel: "c", Unit: "A", Value: 4}},
		{{Channel: "b", Unit: "A", Value: 5}, {Channel: "a", Unit: "V", Value: 6}},
		{{Channel: "b", Unit: "mA", Value: 7}, {Channel: "a", Unit: "V", Group: "g", Value: 8}, {Channel: "z", Value: 9}},
		{{Channel: "b", Unit: "mA", Value: 10}},
	}
	var recs []store.SnapshotRecord
	for i, vals := range layouts {
		b := snapshot.Builder{Device: fmt.Sprintf("dev-%d", i)}
		enc, sn, err := b.Next(int64(i), vals)
		if err != nil {
			t.Fatal(err)
		}
		h := snapshot.Hash(enc)
		recs = append(recs, store.SnapshotRecord{Gateway: "ms-1/acc-1/gw-1", Device: sn.Device, Seq: 1, Time: sn.Time(), Hash: h[:],
			Values: sn.Values, Signer: "s", SignedAt: sn.Time(), ReceivedAt: sn.Time(), LedgerIndex: uint64(i)})
	}
	if _, err := s.InsertSnapshots(t.Context(), recs); err != nil {
		t.Fatal(err)
	}
	for i, r := range recs {
		got, err := s.SnapshotByHash(t.Context(), "", r.Hash)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got.Values, layouts[i]) {
			t.Errorf("snapshot %d reads back as %+v, want %+v", i, got.Values, layouts[i])
		}
	}
}
