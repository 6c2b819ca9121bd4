package snapshot

import (
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"reflect"
	"slices"
	"strings"
	"testing"
	"unsafe"

	"github.com/fxamacker/cbor/v2"
)

// reflectDecMode and decodeReflect are the decoder Decode replaced: a
// strict reflective unmarshal, validation, and a re-encoding that must
// give back the input. They are the oracle Decode is held to.
var reflectDecMode = func() cbor.DecMode {
	m, err := cbor.DecOptions{
		DupMapKey:         cbor.DupMapKeyEnforcedAPF,
		IndefLength:       cbor.IndefLengthForbidden,
		TagsMd:            cbor.TagsForbidden,
		MaxNestedLevels:   4,
		MaxArrayElements:  MaxValues,
		MaxMapPairs:       16,
		ExtraReturnErrors: cbor.ExtraDecErrorUnknownField,
		UTF8:              cbor.UTF8RejectInvalid,
	}.DecMode()
	if err != nil {
		panic(err)
	}
	return m
}()

func decodeReflect(b []byte) (*Snapshot, error) {
	if len(b) > MaxEncoded {
		return nil, fmt.Errorf("%w: %d bytes; at most %d", ErrMalformed, len(b), MaxEncoded)
	}
	var s Snapshot
	if err := reflectDecMode.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if err := s.Validate(); err != nil {
		return nil, err
	}
	again, err := encMode.Marshal(&s)
	if err != nil || string(again) != string(b) {
		return nil, fmt.Errorf("%w: not in deterministic encoding", ErrMalformed)
	}
	return &s, nil
}

// sameDecision fails t unless Decode and decodeReflect both accept data
// with equal results, or both refuse it with ErrMalformed.
func sameDecision(t *testing.T, data []byte) {
	t.Helper()
	got, err := Decode(data)
	want, wantErr := decodeReflect(data)
	switch {
	case (err == nil) != (wantErr == nil):
		t.Fatalf("%x: Decode err = %v, reflective decoder err = %v", data, err, wantErr)
	case err != nil && !errors.Is(err, ErrMalformed):
		t.Fatalf("%x: error %v does not wrap ErrMalformed", data, err)
	case err == nil && !reflect.DeepEqual(got, want):
		t.Fatalf("%x: Decode = %+v, reflective decoder = %+v", data, got, want)
	case err == nil:
		// Both use Validate; hold its duplicate check to a plain map.
		seen := map[string]bool{}
		for _, v := range got.Values {
			if seen[v.Channel] {
				t.Fatalf("%x: accepted with channel %q twice", data, v.Channel)
			}
			seen[v.Channel] = true
		}
	}
}

// TestValidateDuplicateChannels: a channel named twice is refused wherever
// the two are and however many values there are (the set Validate uses
// lives on the stack up to 512 values, on the heap beyond).
func TestValidateDuplicateChannels(t *testing.T) {
	for _, n := range []int{2, 3, 511, 512, 513, 1000, MaxValues} {
		vals := make([]Value, n)
		for i := range vals {
			vals[i] = Value{Channel: fmt.Sprintf("c%d", i), Value: 1}
		}
		s := &Snapshot{Version: 1, Device: "d", Seq: 1, Values: vals}
		if err := s.Validate(); err != nil {
			t.Fatalf("%d distinct channels: %v", n, err)
		}
		for _, pair := range [][2]int{{0, 1}, {0, n - 1}, {n / 2, n - 1}, {n - 2, n - 1}} {
			if pair[0] == pair[1] {
				continue
			}
			dup := slices.Clone(vals)
			dup[pair[1]].Channel = dup[pair[0]].Channel
			err := (&Snapshot{Version: 1, Device: "d", Seq: 1, Values: dup}).Validate()
			if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "appears twice") {
				t.Errorf("%d channels, value %d named like value %d: %v", n, pair[1], pair[0], err)
			}
		}
	}
}

// decodeSeeds are encodings near every rule: valid ones of each shape and
// the hostile ones of TestDecodeRejects.
func decodeSeeds(tb testing.TB) [][]byte {
	var seeds [][]byte
	b := &Builder{Device: "dev-1", DeviceType: "bench"}
	for i := range 3 {
		enc, _, err := b.Next(int64(i)*1000-1, []Value{
			{Channel: "temp", Value: 20.5 + float64(i), Unit: "Cel", Group: "env"},
			{Channel: "hours", Value: 1e6}, {Channel: "x", Value: 0.1}, {Channel: "neg", Value: -math.MaxFloat64, Unit: "µm"},
		})
		if err != nil {
			tb.Fatal(err)
		}
		seeds = append(seeds, enc)
	}
	const v = "0781a2016163" + "02f93c00"
	for _, h := range []string{
		"", "01", "a0", "a5" + "0101" + "026164" + "0401" + "0501" + v,
		"a6" + "0101" + "026164" + "0401" + "0501" + v + "0801",
		"a6" + "0101" + "026164" + "026164" + "0401" + "0501" + v,
		"a5" + "0101" + "026164" + "0401" + "05c11a01020304" + v,
		"a5" + "0101" + "026164" + "0401" + "0501" + "079fa2016163" + "02f93c00" + "ff",
		"a5" + "0101" + "026164" + "041801" + "0501" + v,
		"a5" + "026164" + "0101" + "0401" + "0501" + v,
		"a5" + "0101" + "026164" + "0401" + "0501" + "0781a2016163" + "02fb3ff0000000000000",
		"a5" + "0101" + "026164" + "0401" + "0501" + "079b00000000ffffffff",
		"a5" + "0101" + "026164" + "0401" + "0501" + "0782a2016163" + "02f93c00" + "a2016163" + "02f94000",
		"a4" + "0101" + "026164" + "0401" + "0781a2016163" + "02f93c00",                   // no time
		"a5" + "0101" + "026164" + "0401" + "0501" + "0781a1016163",                       // no value
		"a6" + "0101" + "026164" + "0360" + "0401" + "0501" + v,                           // empty device type
		"a6" + "0101" + "026164" + "0401" + "0501" + "0640" + v,                           // empty prev
		"a5" + "0101" + "026164" + "0401" + "0501" + "0781a3016163" + "02f93c00" + "0360", // empty unit
		"a5" + "0101" + "026164" + "0401" + "053b7fffffffffffffff" + v,                    // time -2^63
		"a5" + "0101" + "026164" + "0401" + "053b8000000000000000" + v,                    // time below -2^63
		"a5" + "0101" + "026164" + "0401" + "0501" + "0781a2016163" + "02fa3fc00000",      // 1.5 as float32
		"a5" + "0101" + "026164" + "0401" + "0501" + "0781a2016163" + "0201",              // integer value
	} {
		b, err := hex.DecodeString(h)
		if err != nil {
			tb.Fatal(err)
		}
		seeds = append(seeds, b)
	}
	return seeds
}

// TestDecodeMatchesReflection: on the seeds and on every truncation and
// one-byte change of a valid encoding, Decode decides as the reflective
// decoder it replaced did.
func TestDecodeMatchesReflection(t *testing.T) {
	for _, s := range decodeSeeds(t) {
		sameDecision(t, s)
	}
	good := decodeSeeds(t)[0]
	for n := range good {
		sameDecision(t, good[:n])
	}
	mutated := make([]byte, len(good))
	for i := range good {
		for _, x := range []byte{0x00, 0x01, 0x17, 0x18, 0x1f, 0x20, 0x40, 0x5f, 0x60, 0x7f, 0x80, 0xa0, 0xc0, 0xf9, 0xfa, 0xfb, 0xff} {
			copy(mutated, good)
			mutated[i] ^= x
			sameDecision(t, mutated)
		}
	}
}

// TestDecodeFloatWidths holds Decode's rule for the shortest exact float
// to the encoder's: every binary16 value, and float32 and float64 values
// around every binary16 exponent.
func TestDecodeFloatWidths(t *testing.T) {
	encoded := func(v float64) []byte {
		b, err := encMode.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for h := range 1 << 16 {
		v := halfToFloat64(uint16(h))
		if math.IsNaN(v) || math.IsInf(v, 0) {
			continue
		}
		if got, want := encoded(v), []byte{0xf9, byte(h >> 8), byte(h)}; string(got) != string(want) {
			t.Fatalf("binary16 %04x (%g): encoder writes %x", h, v, got)
		}
	}
	for exp := -40; exp <= 20; exp++ {
		for top := range 1 << 11 {
			for _, low := range []uint32{0, 1, 1 << 12, 1<<13 - 1, 1 << 7} {
				for _, sign := range []uint32{0, 1 << 31} {
					bits := sign | uint32(exp+127)<<23 | uint32(top)<<12 | low
					f := math.Float32frombits(bits)
					if got, want := fitsHalf(f), encoded(float64(f))[0] == 0xf9; got != want {
						t.Fatalf("float32 %08x (%g): fitsHalf %v, encoder writes binary16 %v", bits, f, got, want)
					}
					d := float64(f) * (1 + 0x1p-40)
					if got, want := float64(float32(d)) != d, encoded(d)[0] == 0xfb; got != want {
						t.Fatalf("float64 %g: needs float64 %v, encoder %v", d, got, want)
					}
				}
			}
		}
	}
}

// TestDecodeAllocations bounds what decoding the workload's snapshot
// allocates: the snapshot, its values, and a string per channel name;
// units and groups are shared among the values that repeat them.
func TestDecodeAllocations(t *testing.T) {
	vals := make([]Value, 340)
	for i := range vals {
		vals[i] = Value{Channel: fmt.Sprintf("ch-%03d", i), Value: float64(i) / 3, Unit: []string{"Cel", "bar", "V"}[i%3], Group: fmt.Sprintf("group-%02d", i%12)}
	}
	enc, _, err := (&Builder{Device: "dev-1", DeviceType: "bench"}).Next(1, vals)
	if err != nil {
		t.Fatal(err)
	}
	allocs := testing.AllocsPerRun(20, func() {
		if _, err := Decode(enc); err != nil {
			t.Fatal(err)
		}
	})
	if limit := float64(len(vals) + 40); allocs > limit {
		t.Errorf("Decode of %d values made %.0f allocations; want at most %.0f", len(vals), allocs, limit)
	}
}

// FuzzDecodeMatchesReflection: Decode accepts exactly what the reflective
// decoder it replaced accepted, with the same result.
func FuzzDecodeMatchesReflection(f *testing.F) {
	for _, s := range decodeSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		sameDecision(t, data)
	})
}

// BenchmarkDecodeReflect is the decoder Decode replaced, for comparison
// with BenchmarkDecode.
func BenchmarkDecodeReflect(b *testing.B) {
	vals := make([]Value, 340)
	for i := range vals {
		vals[i] = Value{Channel: fmt.Sprintf("ch-%03d", i), Value: float64(i*7919%1000) / 1000, Unit: []string{"Cel", "bar", "V"}[i%3], Group: fmt.Sprintf("group-%02d", i%12)}
	}
	enc, _, err := (&Builder{Device: "dev-1", DeviceType: "bench"}).Next(1, vals)
	if err != nil {
		b.Fatal(err)
	}
	for _, bench := range []struct {
		name   string
		decode func([]byte) (*Snapshot, error)
	}{{"reflect", decodeReflect}, {"direct", Decode}} {
		b.Run(bench.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := bench.decode(enc); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// workloadSnapshot is a snapshot of the benchmark workload's shape.
func workloadSnapshot(tb testing.TB, seq int64, names func(i int) string) []byte {
	tb.Helper()
	vals := make([]Value, 340)
	for i := range vals {
		vals[i] = Value{Channel: names(i), Value: float64(i) / 3, Unit: []string{"Cel", "bar", "V"}[i%3], Group: fmt.Sprintf("group-%02d", i%12)}
	}
	enc, _, err := (&Builder{Device: "dev-1", DeviceType: "bench"}).Next(seq, vals)
	if err != nil {
		tb.Fatal(err)
	}
	return enc
}

// TestDecoderSharesChannelNames: a Decoder makes a snapshot's channel
// names once and shares them with the snapshots after (before, each
// decode made a string per value); the result is Decode's.
func TestDecoderSharesChannelNames(t *testing.T) {
	enc := workloadSnapshot(t, 1, func(i int) string { return fmt.Sprintf("ch-%03d", i) })
	var dc Decoder
	first, err := dc.Decode(enc)
	if err != nil {
		t.Fatal(err)
	}
	allocs := testing.AllocsPerRun(20, func() {
		s, err := dc.Decode(enc)
		if err != nil {
			t.Fatal(err)
		}
		if unsafe.StringData(s.Values[7].Channel) != unsafe.StringData(first.Values[7].Channel) {
			t.Fatal("a channel name was made again")
		}
	})
	if allocs > 40 {
		t.Errorf("Decoder.Decode of 340 known channels made %.0f allocations; want at most 40", allocs)
	}
	want, err := Decode(enc)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := dc.Decode(enc); !reflect.DeepEqual(got, want) {
		t.Fatalf("Decoder.Decode = %+v, Decode = %+v", got, want)
	}
}

// TestDecoderCacheIsBounded: snapshots with ever new channel names (what
// a hostile gateway can send) fill a Decoder's cache only up to its
// bound, and names longer than MaxCachedName are not kept; beyond the
// bound decoding still works, making the names as Decode does.
func TestDecoderCacheIsBounded(t *testing.T) {
	var dc Decoder
	for n := 0; n*340 < 2*MaxCachedNames; n++ {
		enc := workloadSnapshot(t, int64(n), func(i int) string { return fmt.Sprintf("n%d-c%d", n, i) })
		s, err := dc.Decode(enc)
		if err != nil {
			t.Fatal(err)
		}
		if want := fmt.Sprintf("n%d-c%d", n, 339); s.Values[339].Channel != want {
			t.Fatalf("channel %q, want %q", s.Values[339].Channel, want)
		}
	}
	if len(dc.names) != MaxCachedNames {
		t.Errorf("%d names cached, want the bound %d", len(dc.names), MaxCachedNames)
	}
	// A name too long to be valid (the decoder reads it before Validate
	// refuses it) is not kept, even with room in the cache.
	dc = Decoder{}
	if long := strings.Repeat("x", MaxCachedName+1); dc.name([]byte(long)) != long || len(dc.names) != 0 {
		t.Errorf("a name of %d bytes is cached (at most %d)", MaxCachedName+1, MaxCachedName)
	}
}

// FuzzDecoderMatchesDecode: a Decoder that has decoded other snapshots
// before (its cache warm) accepts and returns exactly what Decode does.
func FuzzDecoderMatchesDecode(f *testing.F) {
	seeds := decodeSeeds(f)
	for _, s := range seeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var dc Decoder
		for _, s := range seeds {
			dc.Decode(s) // some seeds are malformed on purpose
		}
		got, err := dc.Decode(data)
		want, wantErr := Decode(data)
		if (err == nil) != (wantErr == nil) || (err != nil && err.Error() != wantErr.Error()) {
			t.Fatalf("%x: Decoder err = %v, Decode err = %v", data, err, wantErr)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%x: Decoder = %+v, Decode = %+v", data, got, want)
		}
		// Again, after itself (the strings of the last snapshot at
		// each index are its own now), then a seed after it.
		if again, err := dc.Decode(data); (err == nil) != (wantErr == nil) || !reflect.DeepEqual(again, want) {
			t.Fatalf("%x: Decoder again = %+v, %v; Decode = %+v, %v", data, again, err, want, wantErr)
		}
		for _, s := range seeds {
			got, err := dc.Decode(s)
			want, wantErr := Decode(s)
			if (err == nil) != (wantErr == nil) || !reflect.DeepEqual(got, want) {
				t.Fatalf("%x after %x: Decoder = %+v, %v; Decode = %+v, %v", s, data, got, err, want, wantErr)
			}
		}
	})
}

// TestDecoderReusesTheLastSnapshotsStrings: the snapshot after another of
// the same channels takes its channel, unit and group strings from the one
// before, by index, with no allocation per value (main: 79 allocations per
// snapshot, a unit and a group string per distinct one and a hash lookup
// for each); a snapshot whose strings differ at the same indexes still
// decodes as Decode does, and so does the one after it.
func TestDecoderReusesTheLastSnapshotsStrings(t *testing.T) {
	names := func(i int) string { return fmt.Sprintf("ch-%03d", i) }
	enc := workloadSnapshot(t, 1, names)
	var dc Decoder
	first, err := dc.Decode(enc)
	if err != nil {
		t.Fatal(err)
	}
	allocs := testing.AllocsPerRun(20, func() {
		s, err := dc.Decode(enc)
		if err != nil {
			t.Fatal(err)
		}
		for _, i := range []int{0, 7, 339} {
			a, b := s.Values[i], first.Values[i]
			if unsafe.StringData(a.Unit) != unsafe.StringData(b.Unit) || unsafe.StringData(a.Group) != unsafe.StringData(b.Group) {
				t.Fatalf("value %d: unit or group made again", i)
			}
		}
	})
	if allocs > 8 {
		t.Errorf("Decoder.Decode of a snapshot like the one before made %.0f allocations; want at most 8", allocs)
	}
	// Other strings at the same indexes, then the first snapshot again.
	other := func(i int) string { return fmt.Sprintf("x-%03d", (i+1)%340) }
	vals := make([]Value, 340)
	for i := range vals {
		vals[i] = Value{Channel: other(i), Value: 1, Unit: []string{"K", "", "mbar"}[i%3], Group: fmt.Sprintf("g%d", i%5)}
	}
	encOther, _, err := (&Builder{Device: "dev-2"}).Next(2, vals)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range [][]byte{encOther, enc, encOther} {
		got, err := dc.Decode(e)
		if err != nil {
			t.Fatal(err)
		}
		want, err := Decode(e)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("Decoder.Decode = %+v, Decode = %+v", got, want)
		}
	}
}
