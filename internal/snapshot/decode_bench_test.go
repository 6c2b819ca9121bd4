package snapshot_test

import (
	"testing"

	"github.com/fieldtrust/fieldtrust/internal/snapshot"
	"github.com/fieldtrust/fieldtrust/internal/snapshot/synth"
)

// benchEncoding is a snapshot of the end-to-end workload: 340 channels in
// 12 groups with units, instrument-like values.
func benchEncoding(tb testing.TB) []byte {
	tb.Helper()
	vals := synth.Channels(340)
	synth.Fill(vals, synth.NewRand(1), 7, 42)
	b := &snapshot.Builder{Device: "dev-07", DeviceType: "test-bench", Head: &snapshot.Head{Seq: 41, Hash: [32]byte{1}}}
	enc, _, err := b.Next(1_700_000_000_000, vals)
	if err != nil {
		tb.Fatal(err)
	}
	return enc
}

func BenchmarkDecode(b *testing.B) {
	enc := benchEncoding(b)
	b.SetBytes(int64(len(enc)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := snapshot.Decode(enc); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDecoder is Decode through a Decoder, as each ingest worker
// decodes: the channel names are made once.
func BenchmarkDecoder(b *testing.B) {
	enc := benchEncoding(b)
	b.SetBytes(int64(len(enc)))
	b.ReportAllocs()
	var dc snapshot.Decoder
	for b.Loop() {
		if _, err := dc.Decode(enc); err != nil {
			b.Fatal(err)
		}
	}
}
