package console

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strconv"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/store"
)

// appendSnapshotEvent appends the live feed's JSON of a snapshot to b:
//
//	{"device":…,"gateway":…,"hash":…,"ledger_index":…,"path":…,
//	 "received":…,"seq":…,"time":…,"values":[{"c":…,"v":…,"u":…},…]}
//
// byte for byte what encoding/json makes of the same map, which the
// browser's code reads (TestSnapshotEventMatchesEncodingJSON and its fuzz
// target hold the two together), without the reflection: a snapshot has
// hundreds of values, and while anyone watches the feed encodes every
// snapshot the ledger records. Strings that need escaping, which channel
// names and units rarely do, go through encoding/json itself, so there is
// one escaping rule.
func appendSnapshotEvent(b []byte, r *store.SnapshotRecord) ([]byte, error) {
	var err error
	b = slices.Grow(b, 256+len(r.Gateway)*2+len(r.Device)*2+len(r.Values)*48)
	b = append(b, `{"device":`...)
	b = appendJSONString(b, r.Device)
	b = append(b, `,"gateway":`...)
	b = appendJSONString(b, r.Gateway)
	b = append(b, `,"hash":"`...)
	b = hex.AppendEncode(b, r.Hash)
	b = append(b, `","ledger_index":`...)
	b = strconv.AppendUint(b, r.LedgerIndex, 10)
	b = append(b, `,"path":`...)
	b = appendJSONString(b, r.Path())
	b = append(b, `,"received":`...)
	if b, err = appendJSONTime(b, r.ReceivedAt); err != nil {
		return nil, err
	}
	b = append(b, `,"seq":`...)
	b = strconv.AppendUint(b, r.Seq, 10)
	b = append(b, `,"time":`...)
	if b, err = appendJSONTime(b, r.Time); err != nil {
		return nil, err
	}
	b = append(b, `,"values":[`...)
	for i, v := range r.Values {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"c":`...)
		b = appendJSONString(b, v.Channel)
		b = append(b, `,"v":`...)
		if b, err = appendJSONFloat(b, v.Value); err != nil {
			return nil, fmt.Errorf("channel %q: %w", v.Channel, err)
		}
		if v.Unit != "" {
			b = append(b, `,"u":`...)
			b = appendJSONString(b, v.Unit)
		}
		b = append(b, '}')
	}
	return append(b, "]}"...), nil
}

// appendJSONString appends s as a JSON string, escaped as encoding/json
// escapes it (HTML-safe).
func appendJSONString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x80 || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s) // a string always encodes
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// appendJSONTime appends t as encoding/json does (time.Time.MarshalJSON):
// RFC 3339 with nanoseconds, quoted; a year outside 0–9999 is an error.
func appendJSONTime(b []byte, t time.Time) ([]byte, error) {
	b = append(b, '"')
	b, err := t.AppendText(b)
	if err != nil {
		return nil, fmt.Errorf("time %v: %w", t, err)
	}
	return append(b, '"'), nil
}

// appendJSONFloat appends f as encoding/json writes a float64: the
// shortest decimal that reads back as f, in exponent form below 1e-6 and
// from 1e21 on with a one-digit exponent where that suffices (as
// ECMAScript's Number.prototype.toString). NaN and infinities have no JSON
// form (a stored value is finite: snapshot.Validate).
func appendJSONFloat(b []byte, f float64) ([]byte, error) {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return nil, fmt.Errorf("value %v has no JSON form", f)
	}
	format := byte('f')
	if a := math.Abs(f); a != 0 && (a < 1e-6 || a >= 1e21) {
		format = 'e'
	}
	b = strconv.AppendFloat(b, f, format, -1, 64)
	if format == 'e' {
		// strconv writes e-07 where JSON's form is e-7.
		if n := len(b); n >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
			b[n-2] = b[n-1]
			b = b[:n-1]
		}
	}
	return b, nil
}
