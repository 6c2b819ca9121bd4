package envelope

import (
	"bytes"
	"context"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"testing"
	"time"
)

// isSentinel reports whether err wraps one of the package's sentinel errors,
// as every error of Open and Verify must.
func isSentinel(err error) bool {
	for _, s := range []error{ErrMalformed, ErrNotForMe, ErrTampered, ErrUnsigned, ErrUnknownSigner, ErrUntrustedSigner, ErrRevokedSigner} {
		if errors.Is(err, s) {
			return true
		}
	}
	return false
}

// FuzzOpen feeds arbitrary bytes to Open. Without the content key the
// fuzzer cannot get past the GCM tag, so this exercises the outer parser:
// ContentInfo, AuthEnvelopedData, the recipient infos, key agreement and
// key unwrap. FuzzSignedData covers what lies behind the tag.
func FuzzOpen(f *testing.F) {
	fx := newHostileFixture(f)
	unsigned, err := Seal([]byte("u"), SealOptions{Recipients: []*x509.Certificate{fx.rcpt.cert}})
	if err != nil {
		f.Fatal(err)
	}
	other := fx.root.issueLeaf("p384", elliptic.P384())
	two, err := Seal(fx.content, SealOptions{Recipients: []*x509.Certificate{fx.rcpt.cert, other.cert}, Signer: fx.dev.signer(true)})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(fx.env)
	f.Add(unsigned)
	f.Add(two)
	f.Add(fx.env[:len(fx.env)/2])
	f.Add([]byte{0x30, 0x80, 0x00, 0x00})
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := fx.opener.Open(context.Background(), data)
		if err != nil {
			if !isSentinel(err) {
				t.Fatalf("error without sentinel: %v", err)
			}
			return
		}
		// Only a genuine envelope opens; the fuzzer cannot forge one.
		if !bytes.Equal(got.Content, fx.content) {
			t.Fatalf("opened to %q", got.Content)
		}
	})
}

// FuzzSignedData feeds arbitrary bytes to the SignedData parser and
// verifier, both bare (as found inside an envelope) and as a ContentInfo
// (as Verify takes it).
func FuzzSignedData(f *testing.F) {
	fx := newHostileFixture(f)
	for _, embed := range []bool{false, true} {
		sd, err := signData(rand.Reader, fx.dev.signer(embed), fx.content, time.Now())
		if err != nil {
			f.Fatal(err)
		}
		f.Add(sd)
		f.Add(mustMarshal(contentInfo{ContentType: oidSignedData, Content: explicit0(sd)}))
	}
	f.Add([]byte{0x30, 0x03, 0x02, 0x01, 0x03})
	pool := NewCertPool(fx.dev.cert)
	v := fx.root.verifier()
	v.Intermediates = fx.dev.chain
	opts := VerifyOptions{Signers: pool, Verifier: v}
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 1<<16 {
			return
		}
		if err := checkDER(data, maxASN1Depth); err == nil {
			if _, err := verifySignedData(context.Background(), data, pool); err != nil && !isSentinel(err) {
				t.Fatalf("error without sentinel: %v", err)
			}
		}
		got, err := Verify(context.Background(), data, opts)
		if err != nil {
			if !isSentinel(err) {
				t.Fatalf("error without sentinel: %v", err)
			}
			return
		}
		if !bytes.Equal(got.Content, fx.content) || got.Signer != "dev-1" {
			t.Fatalf("verified %q by %q", got.Content, got.Signer)
		}
	})
}

// FuzzCheckDER checks the DER pre-walk against encoding/asn1: whatever the
// walk accepts as one element must not make the decoder panic.
func FuzzCheckDER(f *testing.F) {
	f.Add([]byte{0x30, 0x00})
	f.Add([]byte{0x1f, 0x81, 0x00, 0x00})
	f.Add([]byte{0x30, 0x82, 0x00, 0x01, 0x00})
	f.Fuzz(func(t *testing.T, data []byte) {
		if checkDER(data, maxASN1Depth) != nil {
			return
		}
		var ci contentInfo
		_ = unmarshalAll(data, &ci, "")
		var aed authEnvelopedData
		_ = unmarshalAll(data, &aed, "")
		var kari keyAgreeRecipientInfo
		_ = unmarshalAll(data, &kari, "tag:1")
	})
}
