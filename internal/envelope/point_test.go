package envelope

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"testing"
)

// mapOriginators decodes env, replaces the ephemeral public key (the ECPoint
// bytes) of every KeyAgreeRecipientInfo with f(point) and re-encodes it. With
// f == nil it only collects the points.
func mapOriginators(t *testing.T, env []byte, f func([]byte) []byte) ([]byte, [][]byte) {
	t.Helper()
	var ci contentInfo
	if err := unmarshalAll(env, &ci, ""); err != nil {
		t.Fatal(err)
	}
	var aed authEnvelopedData
	if err := unmarshalAll(ci.Content.Bytes, &aed, ""); err != nil {
		t.Fatal(err)
	}
	var points [][]byte
	for i, ri := range aed.RecipientInfos {
		var kari keyAgreeRecipientInfo
		if err := unmarshalAll(ri.FullBytes, &kari, "tag:1"); err != nil {
			t.Fatal(err)
		}
		var opk originatorPublicKey
		if err := unmarshalAll(kari.Originator.Bytes, &opk, "tag:1"); err != nil {
			t.Fatal(err)
		}
		points = append(points, opk.PublicKey.Bytes)
		if f == nil {
			continue
		}
		p := f(bytes.Clone(opk.PublicKey.Bytes))
		opk.PublicKey = asn1.BitString{Bytes: p, BitLength: 8 * len(p)}
		kari.Originator = explicit0(mustMarshalWithParams(t, opk, "tag:1"))
		aed.RecipientInfos[i] = asn1.RawValue{FullBytes: mustMarshalWithParams(t, kari, "tag:1")}
	}
	if f == nil {
		return env, points
	}
	ci.Content = explicit0(mustMarshalWithParams(t, aed, ""))
	return mustMarshalWithParams(t, ci, ""), points
}

func mustMarshalWithParams(t *testing.T, v any, params string) []byte {
	t.Helper()
	b, err := asn1.MarshalWithParams(v, params)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// uncompress is what Seal wrote before it switched to compressed points
// (and what OpenSSL writes).
func uncompress(t *testing.T, c []byte) []byte {
	t.Helper()
	curve := elliptic.P256()
	if len(c) == 49 {
		curve = elliptic.P384()
	}
	x, y := elliptic.UnmarshalCompressed(curve, c)
	if x == nil {
		t.Fatalf("not a compressed point: %x", c)
	}
	size := (curve.Params().BitSize + 7) / 8
	u := make([]byte, 1+2*size)
	u[0] = 4
	x.FillBytes(u[1 : 1+size])
	y.FillBytes(u[1+size:])
	return u
}

// TestSealCompressedPoints: Seal writes the ephemeral keys as compressed
// points (33 bytes P-256, 49 P-384), and compressPoint agrees with the
// standard library's encoding.
func TestSealCompressedPoints(t *testing.T) {
	root := newTestRoot(t, "root")
	r256 := root.issueLeaf("r256", elliptic.P256())
	r384 := root.issueLeaf("r384", elliptic.P384())
	env, err := Seal([]byte("x"), SealOptions{Recipients: []*x509.Certificate{r256.cert, r384.cert}})
	if err != nil {
		t.Fatal(err)
	}
	_, points := mapOriginators(t, env, nil)
	if len(points) != 2 || len(points[0]) != 33 || len(points[1]) != 49 || points[0][0]&^1 != 2 || points[1][0]&^1 != 2 {
		t.Fatalf("originator points %x", points)
	}
	for _, c := range []ecdh.Curve{ecdh.P256(), ecdh.P384()} {
		for range 16 {
			k, err := c.GenerateKey(nil)
			if err != nil {
				t.Fatal(err)
			}
			got := compressPoint(k.PublicKey().Bytes())
			if !bytes.Equal(uncompress(t, got), k.PublicKey().Bytes()) {
				t.Fatalf("compressPoint(%x) = %x", k.PublicKey().Bytes(), got)
			}
			back, err := parsePoint(c, got)
			if err != nil || !back.Equal(k.PublicKey()) {
				t.Fatalf("parsePoint(%x) = %v, %v", got, back, err)
			}
		}
	}
}

// TestOpenOriginatorPointForms: Open reads the ephemeral key compressed
// (what Seal writes) and uncompressed (what OpenSSL and earlier versions of
// Seal write), and refuses points that are off the curve, hybrid or cut.
func TestOpenOriginatorPointForms(t *testing.T) {
	f := newHostileFixture(t)
	if env, _ := mapOriginators(t, f.env, func(p []byte) []byte { return p }); !bytes.Equal(env, f.env) {
		t.Fatal("re-encoding an unchanged envelope changed it")
	}
	notOnCurve := func(p []byte) []byte {
		for i := 0; i < 256; i++ {
			p[len(p)-1]++
			if x, _ := elliptic.UnmarshalCompressed(elliptic.P256(), p); x == nil {
				return p
			}
		}
		t.Fatal("no x without a square root found")
		return nil
	}
	tests := []struct {
		name  string
		point func([]byte) []byte
		want  error
	}{
		{"compressed, as sealed", func(p []byte) []byte { return p }, nil},
		{"uncompressed, as OpenSSL and earlier versions write", func(p []byte) []byte { return uncompress(t, p) }, nil},
		// -P has the same x, and ECDH uses only x: the same key, as with
		// a negated uncompressed point. Nothing new to forge.
		{"other parity (the negated point)", func(p []byte) []byte { p[0] ^= 1; return p }, nil},
		{"x not on the curve", notOnCurve, ErrMalformed},
		{"hybrid form 06/07", func(p []byte) []byte { u := uncompress(t, p); u[0] = 6 | u[len(u)-1]&1; return u }, ErrMalformed},
		{"compressed, cut by one byte", func(p []byte) []byte { return p[:len(p)-1] }, ErrMalformed},
		{"uncompressed prefix on a compressed point", func(p []byte) []byte { p[0] = 4; return p }, ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env, _ := mapOriginators(t, f.env, tt.point)
			got, err := f.opener.Open(context.Background(), env)
			if !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
			if err == nil && !bytes.Equal(got.Content, f.content) {
				t.Fatalf("got content %q", got.Content)
			}
		})
	}
}
