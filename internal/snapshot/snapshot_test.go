package snapshot

import (
	"encoding/hex"
	"errors"
	"math"
	"strings"
	"testing"
)

// TestGolden pins the wire bytes of a small snapshot, field by field.
func TestGolden(t *testing.T) {
	s := &Snapshot{
		Version: 1, Device: "pump-1", DeviceType: "pump", Seq: 2, TimeMillis: 1700000000000,
		Prev:   make([]byte, 32),
		Values: []Value{{Channel: "temp", Value: 21.5, Unit: "Cel", Group: "env"}},
	}
	b, err := Encode(s)
	if err != nil {
		t.Fatal(err)
	}
	want := strings.Join([]string{
		"a7",       // map(7)
		"01", "01", // 1: version 1
		"02", "66", "70756d702d31", // 2: device "pump-1"
		"03", "64", "70756d70", // 3: device type "pump"
		"04", "02", // 4: seq 2
		"05", "1b0000018bcfe56800", // 5: time 1700000000000 ms
		"06", "5820" + strings.Repeat("00", 32), // 6: prev, 32 zero bytes
		"07", "81", // 7: array(1)
		"a4",               //   map(4)
		"01", "6474656d70", //   1: channel "temp"
		"02", "f94d60", //   2: 21.5 as float16
		"03", "6343656c", //   3: unit "Cel"
		"04", "63656e76", //   4: group "env"
	}, "")
	if got := hex.EncodeToString(b); got != want {
		t.Fatalf("encoding changed:\n got %s\nwant %s", got, want)
	}
	back, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if back.Device != "pump-1" || back.Seq != 2 || back.Values[0].Value != 21.5 || back.Time().UnixMilli() != 1700000000000 {
		t.Fatalf("round trip: %+v", back)
	}
}

func TestDecodeRejects(t *testing.T) {
	good := mustEncode(t, &Snapshot{Version: 1, Device: "d", Seq: 1, TimeMillis: 1, Values: []Value{{Channel: "c", Value: 1}}})
	const v = "0781a2016163" + "02f93c00" // values: [{channel "c", value 1.0}]
	tests := []struct {
		name, hex, want string
	}{
		{"empty", "", "EOF"},
		{"not a map", "01", "cannot unmarshal"},
		{"truncated", hex.EncodeToString(good[:len(good)-1]), "unexpected EOF"},
		{"trailing data", hex.EncodeToString(good) + "00", "extraneous data"},
		{"unknown key", "a6" + "0101" + "026164" + "0401" + "0501" + v + "0801", "unknown field"},
		{"duplicate key", "a6" + "0101" + "026164" + "026164" + "0401" + "0501" + v, "duplicate map key"},
		{"version 2", "a5" + "0102" + "026164" + "0401" + "0501" + v, "version 2"},
		{"seq 0", "a5" + "0101" + "026164" + "0400" + "0501" + v, "seq must start at 1"},
		{"seq 2 without prev", "a5" + "0101" + "026164" + "0402" + "0501" + v, "only seq 1 has none"},
		{"no values", "a5" + "0101" + "026164" + "0401" + "0501" + "0780", "0 values"},
		{"bad device name", "a5" + "0101" + "02612f" + "0401" + "0501" + v, "not allowed"},
		{"NaN value", "a5" + "0101" + "026164" + "0401" + "0501" + "0781a2016163" + "02f97e00", "not finite"},
		{"tagged time", "a5" + "0101" + "026164" + "0401" + "05c11a01020304" + v, "tag"},
		{"indefinite array", "a5" + "0101" + "026164" + "0401" + "0501" + "079fa2016163" + "02f93c00" + "ff", "indefinite"},
		{"non-shortest integer", "a5" + "0101" + "026164" + "041801" + "0501" + v, "deterministic"},
		{"unsorted keys", "a5" + "026164" + "0101" + "0401" + "0501" + v, "deterministic"},
		{"float64 where float16 is exact", "a5" + "0101" + "026164" + "0401" + "0501" + "0781a2016163" + "02fb3ff0000000000000", "deterministic"},
		{"huge array header", "a5" + "0101" + "026164" + "0401" + "0501" + "079b00000000ffffffff", "exceeded max number of elements"},
		{"duplicate channel", "a5" + "0101" + "026164" + "0401" + "0501" + "0782a2016163" + "02f93c00" + "a2016163" + "02f94000", "appears twice"},
	}
	for _, tt := range tests {
		b, err := hex.DecodeString(tt.hex)
		if err != nil {
			t.Fatalf("%s: bad test hex: %v", tt.name, err)
		}
		_, err = Decode(b)
		if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: Decode err = %v, want ErrMalformed mentioning %q", tt.name, err, tt.want)
		}
	}
	if _, err := Decode(good); err != nil {
		t.Fatalf("the good encoding fails: %v", err)
	}
}

func TestEncodeRejects(t *testing.T) {
	vals := func(n int) []Value {
		v := make([]Value, n)
		for i := range v {
			v[i] = Value{Channel: "c" + strings.Repeat("x", i%50) + string(rune('a'+i%26)) + hex.EncodeToString([]byte{byte(i >> 8), byte(i)}), Value: float64(i)}
		}
		return v
	}
	for _, s := range []*Snapshot{
		{Version: 1, Device: "d", Seq: 1, Values: vals(MaxValues + 1)},
		{Version: 1, Device: "d", Seq: 1, Values: []Value{{Channel: "c", Value: math.Inf(1)}}},
		{Version: 1, Device: "d", Seq: 1, Values: []Value{{Channel: "c", Unit: "a\x00b"}}},
		{Version: 1, Device: strings.Repeat("d", 65), Seq: 1, Values: vals(1)},
		// "." and ".." match the character class, but name a directory
		// wherever a device name becomes a file or URL segment.
		{Version: 1, Device: ".", Seq: 1, Values: vals(1)},
		{Version: 1, Device: "..", Seq: 1, Values: vals(1)},
		{Version: 1, Device: "d", Seq: 1, Values: []Value{{Channel: "..", Value: 1}}},
		{Version: 1, Device: "d", Seq: 3, Prev: []byte{1, 2}, Values: vals(1)},
	} {
		if _, err := Encode(s); !errors.Is(err, ErrMalformed) {
			t.Errorf("Encode(%.60v) err = %v, want ErrMalformed", s, err)
		}
	}
	if _, err := Encode(&Snapshot{Version: 1, Device: "d", Seq: 1, Values: vals(MaxValues)}); err != nil {
		t.Fatalf("MaxValues values: %v", err)
	}
}

func TestClassify(t *testing.T) {
	b := &Builder{Device: "d"}
	var encs [][]byte
	var snaps []*Snapshot
	for i := range 4 {
		enc, s, err := b.Next(int64(i), []Value{{Channel: "c", Value: float64(i)}})
		if err != nil {
			t.Fatal(err)
		}
		encs, snaps = append(encs, enc), append(snaps, s)
	}
	head := func(i int) *Head { return &Head{Seq: snaps[i].Seq, Hash: Hash(encs[i])} }
	other, _, _ := (&Builder{Device: "d", Head: head(0)}).Next(99, []Value{{Channel: "c", Value: 42}}) // a different seq 2
	otherSnap, _ := Decode(other)
	tests := []struct {
		name string
		head *Head
		i    int // index into snaps, or -1 for the forked seq 2
		want Link
	}{
		{"first", nil, 0, LinkFirst},
		{"starts mid-stream", nil, 2, LinkGap},
		{"next", head(0), 1, LinkNext},
		{"redelivery", head(1), 1, LinkDuplicate},
		{"gap", head(0), 2, LinkGap},
		{"stale", head(2), 0, LinkStale},
		{"same seq other content", head(1), -1, LinkFork},
		{"wrong prev", &Head{Seq: 1, Hash: [32]byte{1}}, 1, LinkFork},
	}
	for _, tt := range tests {
		s, enc := otherSnap, other
		if tt.i >= 0 {
			s, enc = snaps[tt.i], encs[tt.i]
		}
		if got := Classify(tt.head, s, Hash(enc)); got != tt.want {
			t.Errorf("%s: Classify = %v, want %v", tt.name, got, tt.want)
		}
	}
}

func mustEncode(t *testing.T, s *Snapshot) []byte {
	t.Helper()
	b, err := Encode(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// FuzzDecode: Decode never panics, and whatever it accepts re-encodes to
// the same bytes (so its hash is canonical) and validates.
func FuzzDecode(f *testing.F) {
	b := &Builder{Device: "dev-1", DeviceType: "bench"}
	for i := range 3 {
		enc, _, _ := b.Next(int64(i)*1000, []Value{{Channel: "temp", Value: 20.5 + float64(i), Unit: "Cel", Group: "env"}, {Channel: "hours", Value: 1e6}})
		f.Add(enc)
	}
	f.Add([]byte{0xa0})
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := Decode(data)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		again, err := Encode(s)
		if err != nil {
			t.Fatalf("accepted snapshot does not re-encode: %v", err)
		}
		if string(again) != string(data) {
			t.Fatalf("accepted a non-canonical encoding")
		}
	})
}
