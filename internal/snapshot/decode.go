package snapshot

import (
	"errors"
	"fmt"
	"io"
	"math"
	"unicode/utf8"
)

// Decode parses and validates an encoded snapshot. It accepts only the
// deterministic encoding, so that Hash(b) is the one hash of the content.
//
// It reads the fixed layout of the wire format directly and checks
// deterministic form while it reads (shortest heads, keys in order, absent
// rather than empty optional fields, shortest exact floats), instead of
// unmarshalling through reflection and comparing a re-encoding: ingest
// decodes every snapshot that arrives, and the reflective round trip was a
// quarter of its CPU. It accepts exactly what Encode produces for a valid
// snapshot; FuzzDecodeMatchesReflection holds it to the reflective decoder
// it replaced.
func Decode(b []byte) (*Snapshot, error) { return (*Decoder)(nil).Decode(b) }

// Decoder decodes snapshots as Decode does, keeping the channel names it
// made for the snapshots after: a gateway's snapshots repeat the same few
// hundred names, and making them was one allocation per value (340 per
// snapshot of the workload). A Decoder is for one goroutine; the zero
// value is ready, and a nil one keeps nothing.
//
// The cache is bounded (MaxCachedNames names of at most MaxCachedName
// bytes; further names are made as before), so hostile snapshots with
// ever new names cost it no more memory than a few snapshots do. It holds
// only names, never a decision: a cached string is used only when its
// bytes equal the encoding's.
//
// It also keeps the channel, unit and group strings of the last snapshot
// it decoded, by value index: snapshots of one device type list the same
// channels in the same order, so comparing a value's bytes with the string
// at its index usually finds the string without a hash lookup (a third of
// decoding's time went to those lookups). Again only strings whose bytes
// equal the encoding's are used, and the last snapshot's are all it keeps.
type Decoder struct {
	names map[string]string
	last  []Value // by value index, the strings of the last snapshots decoded
}

// The bounds of a Decoder's name cache: about 1 MiB at most.
const (
	MaxCachedNames = 8192
	MaxCachedName  = 64
)

// Decode is Decode, sharing the channel names with earlier snapshots.
func (dc *Decoder) Decode(b []byte) (*Snapshot, error) {
	if len(b) > MaxEncoded {
		return nil, fmt.Errorf("%w: %d bytes; at most %d", ErrMalformed, len(b), MaxEncoded)
	}
	d := decoder{b: b, names: dc}
	s, err := d.snapshot()
	if err == nil && d.off != len(b) {
		err = fmt.Errorf("extraneous data: %d bytes after the snapshot", len(b)-d.off)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if err := s.Validate(); err != nil {
		return nil, err
	}
	if d.loose {
		return nil, fmt.Errorf("%w: not in deterministic encoding", ErrMalformed)
	}
	return s, nil
}

// CBOR major types (RFC 8949 §3.1).
const (
	majorUint   = 0
	majorNegInt = 1
	majorBytes  = 2
	majorText   = 3
	majorArray  = 4
	majorMap    = 5
	majorTag    = 6
	majorSimple = 7
)

var majorNames = [8]string{"unsigned integer", "negative integer", "byte string", "text string", "array", "map", "tag", "float or simple value"}

// decoder reads one snapshot from b.
type decoder struct {
	b   []byte
	off int
	// loose is set by what Encode would have written differently. It is
	// reported after structure and validation, as the reflective decoder
	// did (it compared a re-encoding last), so a message's first error
	// stays the same.
	loose bool
	// shared holds unit and group strings already made, by a hash of
	// their bytes: the values of a snapshot repeat a few of them, and
	// sharing them saves two allocations per value.
	shared [1 << sharedBits]string
	names  *Decoder // channel names across snapshots; nil: none
}

// name returns the string of a channel name's bytes, from the cache of
// the Decoder if it has it, adding it if there is room.
func (dc *Decoder) name(c []byte) string {
	if dc == nil || len(c) > MaxCachedName {
		return string(c)
	}
	if s, ok := dc.names[string(c)]; ok { // no allocation for the lookup
		return s
	}
	s := string(c)
	if len(dc.names) < MaxCachedNames {
		if dc.names == nil {
			dc.names = make(map[string]string, 512)
		}
		dc.names[s] = s
	}
	return s
}

// remember keeps the strings of value i of the snapshot being decoded.
// They are mostly the ones it has at i already (found there): comparing
// before writing spares the garbage collector's write barriers.
func (dc *Decoder) remember(i int, v Value) {
	if i >= len(dc.last) {
		dc.last = append(dc.last, Value{Channel: v.Channel, Unit: v.Unit, Group: v.Group})
		return
	}
	p := &dc.last[i]
	if p.Channel != v.Channel {
		p.Channel = v.Channel
	}
	if p.Unit != v.Unit {
		p.Unit = v.Unit
	}
	if p.Group != v.Group {
		p.Group = v.Group
	}
}

const sharedBits = 6

// head reads an item's initial byte and argument (§3). It refuses
// indefinite lengths, reserved additional information and tags, and notes
// arguments not in their shortest form. For major type 7 it returns the
// additional information as is (the float width) and reads no argument.
func (d *decoder) head() (major byte, arg uint64, err error) {
	if d.off >= len(d.b) {
		if d.off == 0 {
			return 0, 0, io.EOF
		}
		return 0, 0, io.ErrUnexpectedEOF
	}
	ib := d.b[d.off]
	d.off++
	major, ai := ib>>5, ib&0x1f
	if ai < 24 && major != majorTag {
		return major, uint64(ai), nil // the argument in the initial byte: most items
	}
	switch {
	case major == majorTag:
		return 0, 0, errors.New("CBOR tags are not allowed")
	case ai == 31:
		return 0, 0, errors.New("indefinite-length items and break codes are not allowed")
	case ai >= 28:
		return 0, 0, fmt.Errorf("reserved additional information %d in the initial byte 0x%02x", ai, ib)
	case major == majorSimple:
		return major, uint64(ai), nil
	}
	n := 1 << (ai - 24) // 1, 2, 4 or 8 argument bytes
	if len(d.b)-d.off < n {
		return 0, 0, io.ErrUnexpectedEOF
	}
	for _, c := range d.b[d.off : d.off+n] {
		arg = arg<<8 | uint64(c)
	}
	d.off += n
	// Shortest form: each width only for what the narrower one cannot hold.
	if least := [4]uint64{24, 1 << 8, 1 << 16, 1 << 32}[ai-24]; arg < least {
		d.loose = true
	}
	return major, arg, nil
}

// expect reads a head of the given major type.
func (d *decoder) expect(want byte, what string) (uint64, error) {
	major, arg, err := d.head()
	if err != nil {
		return 0, err
	}
	if major != want {
		return 0, fmt.Errorf("cannot unmarshal %s into %s (%s)", majorNames[major], what, majorNames[want])
	}
	return arg, nil
}

// content returns the n bytes of a string's content.
func (d *decoder) content(n uint64) ([]byte, error) {
	if n > uint64(len(d.b)-d.off) {
		return nil, io.ErrUnexpectedEOF
	}
	c := d.b[d.off : d.off+int(n)]
	d.off += int(n)
	return c, nil
}

// text reads a text string; optional fields are omitted when empty, so
// present ones must not be.
func (d *decoder) text(what string, optional bool) ([]byte, error) {
	n, err := d.expect(majorText, what)
	if err != nil {
		return nil, err
	}
	if n == 0 && optional {
		d.loose = true
	}
	c, err := d.content(n)
	if err != nil {
		return nil, err
	}
	for _, x := range c {
		if x >= utf8.RuneSelf {
			if !utf8.Valid(c) {
				return nil, fmt.Errorf("invalid UTF-8 string in %s", what)
			}
			break
		}
	}
	return c, nil
}

// string reads a text string into a new string.
func (d *decoder) string(what string, optional bool) (string, error) {
	c, err := d.text(what, optional)
	return string(c), err
}

// sharedString reads an optional text string, sharing the string with
// earlier values that had the same one: last, the string at this value's
// index in the Decoder's last snapshot, if its bytes are the same, or one
// of this snapshot's.
func (d *decoder) sharedString(what, last string) (string, error) {
	c, err := d.text(what, true)
	if err != nil || len(c) == 0 {
		return "", err
	}
	if last == string(c) { // no allocation for the comparison
		return last, nil
	}
	// A cheap hash: a collision only costs an allocation.
	n := len(c)
	h := (uint32(n) | uint32(c[0])<<8 | uint32(c[max(n-2, 0)])<<16 | uint32(c[n-1])<<24) * 0x9e3779b1
	i := h >> (32 - sharedBits)
	for _, j := range [2]uint32{i, i ^ 1} { // two ways
		if d.shared[j] == string(c) {
			return d.shared[j], nil
		}
	}
	if d.shared[i] != "" {
		i ^= 1
	}
	d.shared[i] = string(c)
	return d.shared[i], nil
}

// uint reads an unsigned integer.
func (d *decoder) uint(what string) (uint64, error) {
	return d.expect(majorUint, what)
}

// int reads an integer that fits int64.
func (d *decoder) int(what string) (int64, error) {
	major, arg, err := d.head()
	if err != nil {
		return 0, err
	}
	switch {
	case major != majorUint && major != majorNegInt:
		return 0, fmt.Errorf("cannot unmarshal %s into %s (integer)", majorNames[major], what)
	case arg > math.MaxInt64:
		return 0, fmt.Errorf("%s overflows int64", what)
	case major == majorNegInt:
		return -1 - int64(arg), nil
	}
	return int64(arg), nil
}

// key reads the next key of a map whose keys are the small integers
// 1..max, each at most once and in increasing order (deterministic form
// sorts them). seen records the keys read so far, bit k for key k.
func (d *decoder) key(max uint64, seen *uint32) (uint64, error) {
	major, k, err := d.head()
	if err != nil {
		return 0, err
	}
	if major != majorUint || k == 0 || k > max {
		return 0, errors.New("unknown field in a map")
	}
	switch {
	case *seen&(1<<k) != 0:
		return 0, fmt.Errorf("duplicate map key %d", k)
	case *seen>>k != 0:
		d.loose = true // a greater key came first
	}
	*seen |= 1 << k
	return k, nil
}

// snapshot reads the top-level map.
func (d *decoder) snapshot() (*Snapshot, error) {
	pairs, err := d.expect(majorMap, "a snapshot")
	if err != nil {
		return nil, err
	}
	s := &Snapshot{}
	var seen uint32
	for range pairs {
		k, err := d.key(7, &seen)
		if err != nil {
			return nil, err
		}
		switch k {
		case 1:
			s.Version, err = d.uint("version")
		case 2:
			s.Device, err = d.string("device", false)
		case 3:
			s.DeviceType, err = d.string("device type", true)
		case 4:
			s.Seq, err = d.uint("seq")
		case 5:
			s.TimeMillis, err = d.int("time")
		case 6:
			s.Prev, err = d.prev()
		case 7:
			s.Values, err = d.values()
		}
		if err != nil {
			return nil, err
		}
	}
	// Encode writes the time whatever it is; the other fields it always
	// writes are refused by Validate when missing (zero).
	if seen&(1<<5) == 0 {
		d.loose = true
	}
	return s, nil
}

func (d *decoder) prev() ([]byte, error) {
	n, err := d.expect(majorBytes, "prev")
	if err != nil {
		return nil, err
	}
	if n == 0 {
		d.loose = true // an empty prev is omitted
		return nil, nil
	}
	c, err := d.content(n)
	if err != nil {
		return nil, err
	}
	return append([]byte(nil), c...), nil
}

// minValueBytes is the size of the smallest encoded value, {1: "c", 2: 0.0}:
// a bound on how many values the rest of the input can hold, so that a
// forged array length cannot make the decoder allocate.
const minValueBytes = 8

func (d *decoder) values() ([]Value, error) {
	n, err := d.expect(majorArray, "values")
	if err != nil {
		return nil, err
	}
	if n > MaxValues {
		return nil, fmt.Errorf("array of %d values exceeded max number of elements %d", n, MaxValues)
	}
	vals := make([]Value, 0, min(int(n), (len(d.b)-d.off)/minValueBytes))
	var last []Value
	if d.names != nil {
		last = d.names.last
	}
	for i := range n {
		var prev Value // the strings at this index in the last snapshot
		if i < uint64(len(last)) {
			prev = last[i]
		}
		v, err := d.value(&prev)
		if err != nil {
			return nil, err
		}
		if d.names != nil {
			d.names.remember(int(i), v)
		}
		vals = append(vals, v)
	}
	return vals, nil
}

// value reads a value; prev holds the strings of the value at the same
// index in the Decoder's last snapshot (empty if none), used when the bytes
// match.
func (d *decoder) value(prev *Value) (Value, error) {
	var v Value
	pairs, err := d.expect(majorMap, "a value")
	if err != nil {
		return v, err
	}
	var seen uint32
	for range pairs {
		k, err := d.key(4, &seen)
		if err != nil {
			return v, err
		}
		switch k {
		case 1:
			var c []byte
			c, err = d.text("channel", false)
			if prev.Channel == string(c) {
				v.Channel = prev.Channel
			} else {
				v.Channel = d.names.name(c)
			}
		case 2:
			v.Value, err = d.float()
		case 3:
			v.Unit, err = d.sharedString("unit", prev.Unit)
		case 4:
			v.Group, err = d.sharedString("group", prev.Group)
		}
		if err != nil {
			return v, err
		}
	}
	if seen&(1<<2) == 0 {
		d.loose = true // Encode writes every value, 0 too
	}
	return v, nil
}

// float reads a value, which Encode writes as the shortest of float16,
// float32 and float64 that holds it exactly (RFC 8949 §4.2.2 preferred
// serialization); a wider one is refused.
func (d *decoder) float() (float64, error) {
	major, ai, err := d.head()
	if err != nil {
		return 0, err
	}
	if major != majorSimple || ai < 25 {
		return 0, fmt.Errorf("cannot unmarshal %s into a value (float)", majorNames[major])
	}
	c, err := d.content(1 << (ai - 24))
	if err != nil {
		return 0, err
	}
	switch ai {
	case 25:
		return halfToFloat64(uint16(c[0])<<8 | uint16(c[1])), nil
	case 26:
		f := math.Float32frombits(uint32(c[0])<<24 | uint32(c[1])<<16 | uint32(c[2])<<8 | uint32(c[3]))
		if fitsHalf(f) {
			d.loose = true
		}
		return float64(f), nil
	}
	var u uint64
	for _, x := range c {
		u = u<<8 | uint64(x)
	}
	f := math.Float64frombits(u)
	if float64(float32(f)) == f {
		d.loose = true // float32 holds it (or float16)
	}
	return f, nil
}

// halfToFloat64 converts an IEEE 754 binary16 (RFC 8949 Appendix D).
func halfToFloat64(h uint16) float64 {
	exp, mant := int(h>>10)&0x1f, float64(h&0x3ff)
	var f float64
	switch exp {
	case 0:
		f = math.Ldexp(mant, -24) // zero and subnormals
	case 31:
		f = math.Inf(1)
		if mant != 0 {
			f = math.NaN()
		}
	default:
		f = math.Ldexp(mant+1024, exp-25)
	}
	if h&0x8000 != 0 {
		f = -f
	}
	return f
}

// fitsHalf reports whether binary16 holds the finite float32 f exactly:
// a zero; a normal binary16 (exponent -14 to 15) when the 13 low mantissa
// bits are zero; a subnormal (a multiple of 2^-24 below 2^-14) when the
// bits below 2^-24 are. Infinities and NaNs report false (Validate refuses
// them however they are encoded).
func fitsHalf(f float32) bool {
	u := math.Float32bits(f)
	exp, mant := int(u>>23&0xff)-127, u&0x7fffff
	switch {
	case u&0x7fffffff == 0:
		return true
	case exp < -24 || exp > 15:
		return false // also float32 subnormals, infinities and NaNs
	case exp >= -14:
		return mant&0x1fff == 0
	}
	// 1.mant × 2^exp with exp in [-24, -15]: exp+24 fraction bits stay.
	return mant&(1<<(23-(exp+24))-1) == 0
}
