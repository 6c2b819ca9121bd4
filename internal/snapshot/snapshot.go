// Package snapshot defines the wire format of a snapshot: one reading of a
// measurement device's channels at one time, as a field gateway seals it
// and the platform's ingest opens it.
//
// # Wire format (version 1)
//
// A snapshot is a CBOR map with small integer keys (RFC 8949), encoded in
// core deterministic form (§4.2.1: shortest lengths, sorted keys, no
// indefinite lengths), so that the bytes, and thus their hash, are a
// function of the content alone:
//
//	{
//	  1: uint   version, always 1
//	  2: text   device: the measurement device's id behind the gateway (an
//	            identity element, [A-Za-z0-9._-]{1,64})
//	  3: text   device type, e.g. "test-bench" (same syntax), may be absent
//	  4: uint   seq: per-device sequence number, 1 for the first snapshot
//	  5: int    time: milliseconds since the Unix epoch (UTC)
//	  6: bytes  prev: SHA-256 of the previous snapshot's encoding (32 bytes),
//	            absent for seq 1
//	  7: array  values, each a map {1: channel, 2: value, 3: unit, 4: group}
//	            channel text (element syntax), value float (16/32/64-bit as
//	            shortest exact), unit text (UCUM-style, may be absent),
//	            group text (channel group, may be absent)
//	}
//
// The hash of a snapshot (Hash) is SHA-256 over exactly these bytes; the
// next snapshot of the same device carries it as prev, forming a hash chain
// in which a gap, a reorder or a deletion is visible to whoever checks it.
//
// # Evolving the format
//
// Decoders reject unknown keys, duplicate keys, tags and indefinite
// lengths: a version-1 decoder never half-understands a message. A change
// that adds meaning gets a new version number; the version key stays 1.
//
// The snapshot is the content of a CMS SignedData inside an
// AuthEnvelopedData (package envelope); this package knows nothing of that.
package snapshot

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"hash/maphash"
	"math"
	"time"

	"github.com/fxamacker/cbor/v2"

	"github.com/fieldtrust/fieldtrust/internal/ident"
)

// Version is the wire format version this package writes and reads.
const Version = 1

// Limits. They bound what a hostile message can make a decoder allocate.
const (
	// MaxValues bounds the channels of one snapshot. The design thesis's
	// heaviest test bench sends 340; 4096 leaves room without inviting
	// a million-entry array.
	MaxValues = 4096
	// MaxEncoded bounds an encoded snapshot: 4096 values of at most about
	// 200 bytes each fit in 1 MiB.
	MaxEncoded = 1 << 20
	// maxText bounds channel, unit, group, device and type strings.
	maxText = 64
)

// ErrMalformed is wrapped by every decoding and validation error.
var ErrMalformed = errors.New("malformed snapshot")

// Snapshot is one reading of a device's channels.
type Snapshot struct {
	Version    uint64  `cbor:"1,keyasint"`
	Device     string  `cbor:"2,keyasint"`
	DeviceType string  `cbor:"3,keyasint,omitempty"`
	Seq        uint64  `cbor:"4,keyasint"`
	TimeMillis int64   `cbor:"5,keyasint"`
	Prev       []byte  `cbor:"6,keyasint,omitempty"`
	Values     []Value `cbor:"7,keyasint"`
}

// Value is one channel's reading.
type Value struct {
	Channel string  `cbor:"1,keyasint"`
	Value   float64 `cbor:"2,keyasint"`
	Unit    string  `cbor:"3,keyasint,omitempty"`
	Group   string  `cbor:"4,keyasint,omitempty"`
}

// Time returns the snapshot's time.
func (s *Snapshot) Time() time.Time { return time.UnixMilli(s.TimeMillis).UTC() }

// encMode writes the deterministic encoding. Decode (decode.go) reads it
// without reflection.
var encMode cbor.EncMode

func init() {
	var err error
	opts := cbor.CoreDetEncOptions()
	opts.ShortestFloat = cbor.ShortestFloat16
	opts.NaNConvert = cbor.NaNConvertReject
	opts.InfConvert = cbor.InfConvertReject
	if encMode, err = opts.EncMode(); err != nil {
		panic(err)
	}
}

// Encode validates s and returns its deterministic encoding.
func Encode(s *Snapshot) ([]byte, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	b, err := encMode.Marshal(s)
	if err != nil {
		return nil, fmt.Errorf("encode snapshot: %w", err)
	}
	if len(b) > MaxEncoded {
		return nil, fmt.Errorf("%w: encoding is %d bytes; at most %d", ErrMalformed, len(b), MaxEncoded)
	}
	return b, nil
}

// Hash returns the SHA-256 of an encoded snapshot: its identity in the hash
// chain and the ledger.
func Hash(encoded []byte) [32]byte { return sha256.Sum256(encoded) }

// Validate checks the invariants of a version-1 snapshot.
func (s *Snapshot) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrMalformed}, args...)...)
	}
	if s.Version != Version {
		return bad("version %d; want %d", s.Version, Version)
	}
	if err := checkName("device", s.Device, false); err != nil {
		return err
	}
	if err := checkName("device type", s.DeviceType, true); err != nil {
		return err
	}
	if s.Seq == 0 {
		return bad("seq must start at 1")
	}
	if (s.Seq == 1) != (len(s.Prev) == 0) {
		return bad("seq %d with a %d-byte prev hash; only seq 1 has none", s.Seq, len(s.Prev))
	}
	if len(s.Prev) != 0 && len(s.Prev) != sha256.Size {
		return bad("prev hash of %d bytes; want %d", len(s.Prev), sha256.Size)
	}
	if len(s.Values) == 0 || len(s.Values) > MaxValues {
		return bad("%d values; want 1 to %d", len(s.Values), MaxValues)
	}
	var small [1024]uint16
	seen := newChannelSet(len(s.Values), small[:])
	for i, v := range s.Values {
		if err := checkName("channel", v.Channel, false); err != nil {
			return fmt.Errorf("value %d: %w", i, err)
		}
		if !seen.add(s.Values, i) {
			return bad("channel %q appears twice", v.Channel)
		}
		if math.IsNaN(v.Value) || math.IsInf(v.Value, 0) {
			return bad("channel %q: value is not finite", v.Channel)
		}
		if err := checkText("unit", v.Unit); err != nil {
			return fmt.Errorf("channel %q: %w", v.Channel, err)
		}
		if err := checkName("group", v.Group, true); err != nil {
			return fmt.Errorf("channel %q: %w", v.Channel, err)
		}
	}
	return nil
}

// checkName checks an identifier (or, if optional, the empty string):
// the identity-element syntax of ident.ValidateElement, so names are safe in
// topics, URLs and file names, and "." and ".." never name a directory.
func checkName(what, s string, optional bool) error {
	if s == "" && optional {
		return nil
	}
	if err := ident.ValidateElement(s); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrMalformed, what, err)
	}
	return nil
}

// checkText checks free text such as a unit: printable, no control bytes.
func checkText(what, s string) error {
	if len(s) > maxText {
		return fmt.Errorf("%w: %s is %d bytes; at most %d", ErrMalformed, what, len(s), maxText)
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("%w: %s contains a control character", ErrMalformed, what)
		}
	}
	return nil
}

// channelSet finds a channel named twice among a snapshot's values: an
// open-addressing table of value indexes under a per-call random hash seed
// (so no message can aim at collisions), in the caller's array for up to
// 512 values. Validate runs for every snapshot ingest receives, and a map
// of the channel names was a third of its time.
type channelSet struct {
	slots []uint16 // value index + 1; 0 is empty
	seed  maphash.Seed
}

// newChannelSet returns a set for n values, in small if it is large enough
// (twice n, rounded up to a power of two).
func newChannelSet(n int, small []uint16) channelSet {
	size := 2
	for size < 2*n {
		size <<= 1
	}
	c := channelSet{seed: maphash.MakeSeed()}
	if size <= len(small) {
		c.slots = small[:size]
	} else {
		c.slots = make([]uint16, size)
	}
	return c
}

// add records vals[i] and reports false if an earlier value, vals[j] for j
// < i, has the same channel. i < MaxValues.
func (c channelSet) add(vals []Value, i int) bool {
	mask := uint64(len(c.slots) - 1)
	name := vals[i].Channel
	for h := maphash.String(c.seed, name) & mask; ; h = (h + 1) & mask {
		switch j := c.slots[h]; {
		case j == 0:
			c.slots[h] = uint16(i + 1)
			return true
		case vals[j-1].Channel == name:
			return false
		}
	}
}
