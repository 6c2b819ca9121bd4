package site

import (
	"bytes"
	"testing"
)

func TestItemRoundTrip(t *testing.T) {
	for _, m := range []message{
		{Topic: "ms/acc/gw/snapshots", Payload: []byte{0x30, 1, 2}},
		{Topic: "ms/acc/gw/status", Payload: nil, Retain: true},
	} {
		got, err := decodeItem(encodeItem(m))
		if err != nil || got.Topic != m.Topic || !bytes.Equal(got.Payload, m.Payload) || got.Retain != m.Retain {
			t.Errorf("%+v: got %+v, %v", m, got, err)
		}
	}
	for _, bad := range [][]byte{nil, {1}, {2, 0, 1, 'a'}, {1, 4, 1, 'a'}, {1, 0, 9, 'a'}, {1, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, {1, 0, 1, '#'}, {1, 0, 0}} {
		if m, err := decodeItem(bad); err == nil {
			t.Errorf("%x: decoded %+v", bad, m)
		}
	}
}

// FuzzDecodeItem: decoding never panics, and what decodes encodes back to
// the same bytes.
func FuzzDecodeItem(f *testing.F) {
	f.Add(encodeItem(message{Topic: "a/b/c/snapshots", Payload: []byte("x")}))
	f.Add(encodeItem(message{Topic: "a/b/c/status", Retain: true}))
	f.Add([]byte{1, 0, 0x80})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decodeItem(b)
		if err != nil {
			return
		}
		if again := encodeItem(m); !bytes.Equal(again, b) {
			t.Fatalf("%x decodes to %+v, which encodes to %x", b, m, again)
		}
	})
}
