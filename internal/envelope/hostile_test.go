package envelope

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

// hostileFixture is one signer, one recipient and a trusting opener.
type hostileFixture struct {
	root, acc *testCA
	dev, rcpt *testLeaf
	opener    *Opener
	content   []byte
	env       []byte
}

func newHostileFixture(t testing.TB) *hostileFixture {
	t.Helper()
	f := &hostileFixture{content: []byte("seq=7 t=21.5")}
	f.root = newTestRoot(t, "root")
	f.acc = f.root.issueCA("acc-1")
	f.dev = f.acc.issueLeaf("dev-1", elliptic.P256())
	f.rcpt = f.root.issueLeaf("vendor", elliptic.P256())
	v := f.root.verifier(f.acc.crl())
	v.Intermediates = f.dev.chain
	f.opener = f.rcpt.opener(t, OpenOptions{VerifyOptions: VerifyOptions{Signers: NewCertPool(f.dev.cert), Verifier: v}})
	var err error
	f.env, err = Seal(f.content, SealOptions{Recipients: []*x509.Certificate{f.rcpt.cert}, Signer: f.dev.signer(false)})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// sealInner encrypts arbitrary inner bytes for the fixture's recipient, to
// test what Open does after the GCM tag checks out.
func (f *hostileFixture) sealInner(t testing.TB, inner []byte, typ asn1.ObjectIdentifier) []byte {
	t.Helper()
	s, err := NewSealer(SealOptions{Recipients: []*x509.Certificate{f.rcpt.cert}})
	if err != nil {
		t.Fatal(err)
	}
	env, err := s.encrypt(rand.Reader, inner, typ)
	if err != nil {
		t.Fatal(err)
	}
	return env
}

func TestTruncated(t *testing.T) {
	f := newHostileFixture(t)
	for n := 0; n < len(f.env); n++ {
		_, err := f.opener.Open(context.Background(), f.env[:n])
		if !errors.Is(err, ErrMalformed) {
			t.Fatalf("prefix of %d bytes: got %v, want ErrMalformed", n, err)
		}
	}
	// Trailing garbage is refused too.
	if _, err := f.opener.Open(context.Background(), append(bytes.Clone(f.env), 0)); !errors.Is(err, ErrMalformed) {
		t.Fatalf("trailing byte: got %v", err)
	}
}

// TestBitFlips flips bits at every byte position of a small envelope: every
// variant must fail cleanly, none may yield a plaintext. The one exception
// is the parity bit of the compressed ephemeral point: flipping it names -P,
// which has the same x, and ECDH uses only x, so the same content key is
// derived and the genuine, unchanged content opens (an attacker could always
// do the same by writing -P uncompressed; the ephemeral key is not
// authenticated in CMS). It must yield exactly the sealed content.
func TestBitFlips(t *testing.T) {
	f := newHostileFixture(t)
	_, points := mapOriginators(t, f.env, nil)
	parity := bytes.Index(f.env, points[0])
	if parity < 0 || points[0][0]&^1 != 2 {
		t.Fatalf("compressed originator point not found")
	}
	kinds := map[string]int{}
	for i := range f.env {
		for _, mask := range []byte{0x01, 0x02, 0x10, 0x80, 0xff} {
			env := bytes.Clone(f.env)
			env[i] ^= mask
			got, err := f.opener.Open(context.Background(), env)
			if i == parity && mask == 0x01 {
				if err != nil || !bytes.Equal(got.Content, f.content) {
					t.Fatalf("negated ephemeral point: got %v, %v; want the sealed content", got, err)
				}
				continue
			}
			if err == nil {
				t.Fatalf("byte %d ^ %#x: opened to %q", i, mask, got.Content)
			}
			for _, s := range []error{ErrMalformed, ErrNotForMe, ErrTampered, ErrUnsigned} {
				if errors.Is(err, s) {
					kinds[s.Error()]++
				}
			}
		}
	}
	t.Logf("%d bytes x 5 masks: %v", len(f.env), kinds)
}

func TestOversizedAndNested(t *testing.T) {
	f := newHostileFixture(t)
	big := make([]byte, MaxEnvelopeBytes+1)
	if _, err := f.opener.Open(context.Background(), big); !errors.Is(err, ErrMalformed) {
		t.Fatalf("oversized: got %v", err)
	}
	// 10,000 nested SEQUENCEs (each with a long-form length).
	nested := []byte{0x05, 0x00}
	for i := 0; i < 10000; i++ {
		nested = append(lengthPrefixed(0x30, len(nested)), nested...)
	}
	if _, err := f.opener.Open(context.Background(), nested); !errors.Is(err, ErrMalformed) {
		t.Fatalf("nested: got %v", err)
	}
	if _, err := Verify(context.Background(), nested, VerifyOptions{}); !errors.Is(err, ErrMalformed) {
		t.Fatalf("nested (verify): got %v", err)
	}
	// Deep nesting inside the encrypted SignedData.
	env := f.sealInner(t, nested[len(nested)-2000:], oidSignedData)
	if _, err := f.opener.Open(context.Background(), env); !errors.Is(err, ErrMalformed) {
		t.Fatalf("nested inner: got %v", err)
	}
	// BER indefinite length.
	ber := []byte{0x30, 0x80, 0x05, 0x00, 0x00, 0x00}
	if _, err := f.opener.Open(context.Background(), ber); !errors.Is(err, ErrMalformed) {
		t.Fatalf("BER: got %v", err)
	}
	// A length that claims 2 GiB.
	huge := []byte{0x30, 0x84, 0x7f, 0xff, 0xff, 0xff, 0x00}
	if _, err := f.opener.Open(context.Background(), huge); !errors.Is(err, ErrMalformed) {
		t.Fatalf("huge length: got %v", err)
	}
}

func lengthPrefixed(tag byte, n int) []byte {
	switch {
	case n < 0x80:
		return []byte{tag, byte(n)}
	case n < 0x100:
		return []byte{tag, 0x81, byte(n)}
	case n < 0x10000:
		return []byte{tag, 0x82, byte(n >> 8), byte(n)}
	default:
		return []byte{tag, 0x83, byte(n >> 16), byte(n >> 8), byte(n)}
	}
}

// replaceOID swaps one OID for another of the same encoded length.
func replaceOID(t *testing.T, der []byte, from, to asn1.ObjectIdentifier) []byte {
	t.Helper()
	a, _ := asn1.Marshal(from)
	b, _ := asn1.Marshal(to)
	if len(a) != len(b) || !bytes.Contains(der, a) {
		t.Fatalf("cannot replace %v by %v", from, to)
	}
	return bytes.Replace(der, a, b, 1)
}

func TestWrongOIDs(t *testing.T) {
	f := newHostileFixture(t)
	oidEnvelopedData := asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 3}
	oidAES256CBC := asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 42}
	oidSHA224KDF := asn1.ObjectIdentifier{1, 3, 132, 1, 11, 0}
	oidDSA := asn1.ObjectIdentifier{1, 2, 840, 10040, 4, 1}

	outer := []struct {
		name     string
		from, to asn1.ObjectIdentifier
		want     error
	}{
		{"EnvelopedData instead of AuthEnvelopedData", oidAuthEnvelopedData, asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 16, 1, 2}, ErrMalformed},
		{"AES-CBC instead of AES-GCM", oidAES256GCM, oidAES256CBC, ErrMalformed},
		{"SHA-224 KDF", oidDHSinglePassSHA256, oidSHA224KDF, ErrMalformed},
		{"AES-128 wrap for a 256-bit key", oidAES256Wrap, oidAES128Wrap, ErrTampered},
		{"DSA originator key", oidECPublicKey, oidDSA, ErrMalformed},
		{"enveloped data as inner content type", oidSignedData, oidEnvelopedData, ErrMalformed},
	}
	for _, tt := range outer {
		t.Run(tt.name, func(t *testing.T) {
			_, err := f.opener.Open(context.Background(), replaceOID(t, f.env, tt.from, tt.to))
			if !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
		})
	}

	// Inside the SignedData (re-encrypted, so GCM passes).
	sd, err := signData(rand.Reader, f.dev.signer(false), f.content, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	inner := []struct {
		name     string
		from, to asn1.ObjectIdentifier
		want     error
	}{
		{"unknown digest", oidSHA256, asn1.ObjectIdentifier{1, 3, 14, 3, 2, 26, 0, 0, 0, 0}, ErrMalformed},
		{"ECDSA with SHA-224", oidECDSAWithSHA256, asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 1}, ErrMalformed},
		{"signature/digest mismatch", oidECDSAWithSHA256, oidECDSAWithSHA384, ErrMalformed},
		{"content-type attribute differs", oidData, oidSignedData, ErrTampered},
	}
	for _, tt := range inner {
		t.Run(tt.name, func(t *testing.T) {
			// The last occurrence is the one in the SignerInfo (the
			// SignedData's digestAlgorithms set is only a hint, RFC 5652 §5.1).
			from := mustMarshal(tt.from)
			i := bytes.LastIndex(sd, from)
			mod := append(append(bytes.Clone(sd[:i]), mustMarshal(tt.to)...), sd[i+len(from):]...)
			_, err := f.opener.Open(context.Background(), f.sealInner(t, mod, oidSignedData))
			if !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
		})
	}
}

func TestTamperedSignedContent(t *testing.T) {
	f := newHostileFixture(t)
	sd, err := signData(rand.Reader, f.dev.signer(false), f.content, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	// Change one byte of the content inside the signature: the message
	// digest no longer matches.
	i := bytes.Index(sd, f.content)
	mod := bytes.Clone(sd)
	mod[i] ^= 1
	if _, err := f.opener.Open(context.Background(), f.sealInner(t, mod, oidSignedData)); !errors.Is(err, ErrTampered) {
		t.Fatalf("modified content: got %v, want ErrTampered", err)
	}
	// Change the signing time: the signature no longer verifies.
	mod = bytes.Clone(sd)
	tm, _ := marshalTime(time.Now())
	j := bytes.Index(mod, tm[:6])
	if j < 0 {
		t.Skip("signing time not found")
	}
	mod[j+5] ^= 1
	if _, err := f.opener.Open(context.Background(), f.sealInner(t, mod, oidSignedData)); !errors.Is(err, ErrTampered) && !errors.Is(err, ErrMalformed) {
		t.Fatalf("modified time: got %v, want ErrTampered", err)
	}
	// GCM tag.
	env := bytes.Clone(f.env)
	env[len(env)-1] ^= 1
	if _, err := f.opener.Open(context.Background(), env); !errors.Is(err, ErrTampered) {
		t.Fatalf("modified tag: got %v, want ErrTampered", err)
	}
}

func TestRecipientBound(t *testing.T) {
	f := newHostileFixture(t)
	// Seal refuses 10,000 recipients with a clear error.
	many := make([]*x509.Certificate, 10000)
	for i := range many {
		many[i] = f.rcpt.cert
	}
	_, err := Seal(f.content, SealOptions{Recipients: many})
	if err == nil || !strings.Contains(err.Error(), fmt.Sprint(MaxRecipients)) {
		t.Fatalf("10,000 recipients: got %v", err)
	}

	// Open refuses an envelope that lists 10,000 recipients, without
	// doing 10,000 key agreements.
	group := make([]recipient, 10000)
	for i := range group {
		k, err := ecdh.P256().GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		group[i] = recipient{ski: []byte(fmt.Sprintf("key-%05d", i)), pub: k.PublicKey()}
	}
	group[9999] = recipient{ski: f.rcpt.cert.SubjectKeyId, pub: mustECDH(t, f.rcpt.cert)}
	s := &Sealer{groups: [][]recipient{group}}
	env, err := s.encrypt(rand.Reader, f.content, oidData)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("10,000-recipient envelope: %d bytes", len(env))
	start := time.Now()
	_, err = f.opener.Open(context.Background(), env)
	if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "recipients") {
		t.Fatalf("got %v, want ErrMalformed about recipients", err)
	}
	t.Logf("refused in %v", time.Since(start))

	// Exactly MaxRecipients is fine, both ways.
	s = &Sealer{groups: [][]recipient{group[10000-MaxRecipients:]}}
	env, err = s.encrypt(rand.Reader, f.content, oidData)
	if err != nil {
		t.Fatal(err)
	}
	o := f.rcpt.opener(t, OpenOptions{AllowUnsigned: true})
	if got, err := o.Open(context.Background(), env); err != nil || !bytes.Equal(got.Content, f.content) {
		t.Fatalf("%d recipients: %v", MaxRecipients, err)
	}
}

func mustECDH(t testing.TB, c *x509.Certificate) *ecdh.PublicKey {
	t.Helper()
	k, err := c.PublicKey.(*ecdsa.PublicKey).ECDH()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestKeyAttemptsBound: our key id listed in many KARIs costs at most
// maxKeyAttempts ECDHs.
func TestKeyAttemptsBound(t *testing.T) {
	f := newHostileFixture(t)
	r := recipient{ski: f.rcpt.cert.SubjectKeyId, pub: mustECDH(t, f.rcpt.cert)}
	var groups [][]recipient
	for i := 0; i < maxKeyAttempts+1; i++ {
		groups = append(groups, []recipient{r})
	}
	// Break all wrapped keys by sealing with a different key id that
	// we then rename: simplest is sealing for a stranger and renaming.
	stranger, _ := ecdh.P256().GenerateKey(rand.Reader)
	for i := range groups {
		groups[i] = []recipient{{ski: r.ski, pub: stranger.PublicKey()}}
	}
	env, err := (&Sealer{groups: groups}).encrypt(rand.Reader, f.content, oidData)
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.opener.Open(context.Background(), env)
	if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "more than") {
		t.Fatalf("got %v", err)
	}
	env, err = (&Sealer{groups: groups[:maxKeyAttempts]}).encrypt(rand.Reader, f.content, oidData)
	if err != nil {
		t.Fatal(err)
	}
	if _, err = f.opener.Open(context.Background(), env); !errors.Is(err, ErrTampered) {
		t.Fatalf("got %v, want ErrTampered", err)
	}
}

func TestSignerTrust(t *testing.T) {
	f := newHostileFixture(t)
	ctx := context.Background()
	foreign := newTestRoot(t, "evil-root")
	evil := foreign.issueCA("acc-1").issueLeaf("dev-1", elliptic.P256())

	// A foreign-PKI signer with its chain embedded: signature fine, chain not.
	env, err := Seal(f.content, SealOptions{Recipients: []*x509.Certificate{f.rcpt.cert}, Signer: evil.signer(true)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.opener.Open(ctx, env); !errors.Is(err, ErrUntrustedSigner) {
		t.Fatalf("foreign PKI: got %v, want ErrUntrustedSigner", err)
	}

	// A foreign key posing under our device's key id, not embedded: the
	// directory's certificate does not verify the signature.
	imp := &Signer{Cert: cloneWithSKI(t, evil, f.dev.cert.SubjectKeyId), Key: evil.key}
	env, err = Seal(f.content, SealOptions{Recipients: []*x509.Certificate{f.rcpt.cert}, Signer: imp})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.opener.Open(ctx, env); !errors.Is(err, ErrTampered) {
		t.Fatalf("impostor: got %v, want ErrTampered", err)
	}
	// The same impostor embedding its certificate: untrusted.
	imp.EmbedCerts = true
	env, _ = Seal(f.content, SealOptions{Recipients: []*x509.Certificate{f.rcpt.cert}, Signer: imp})
	if _, err := f.opener.Open(ctx, env); !errors.Is(err, ErrUntrustedSigner) {
		t.Fatalf("embedded impostor: got %v, want ErrUntrustedSigner", err)
	}

	// Unknown signer.
	o := f.rcpt.opener(t, OpenOptions{VerifyOptions: VerifyOptions{Verifier: f.root.verifier()}})
	if _, err := o.Open(ctx, f.env); !errors.Is(err, ErrUnknownSigner) {
		t.Fatalf("unknown: got %v, want ErrUnknownSigner", err)
	}

	// Revoked leaf, revoked intermediate.
	for _, revoke := range []func(){
		func() { f.acc.revoke(f.dev.cert) },
		func() { f.root.revoke(f.acc.cert) },
	} {
		f.acc.revoked, f.root.revoked = nil, nil
		revoke()
		v := f.root.verifier(f.acc.crl(), f.root.crl())
		v.Intermediates = f.dev.chain
		o := f.rcpt.opener(t, OpenOptions{VerifyOptions: VerifyOptions{Signers: NewCertPool(f.dev.cert), Verifier: v}})
		if _, err := o.Open(ctx, f.env); !errors.Is(err, ErrRevokedSigner) {
			t.Fatalf("revoked: got %v, want ErrRevokedSigner", err)
		}
	}

	// A CRL forged by a foreign CA of the same name is ignored; with
	// RequireCRL, the chain then lacks a CRL.
	f.acc.revoked, f.root.revoked = nil, nil
	fakeAcc := foreign.issueCA("acc-1")
	fakeAcc.revoke(f.dev.cert)
	v := f.root.verifier(fakeAcc.crl(), f.root.crl())
	v.Intermediates = f.dev.chain
	o = f.rcpt.opener(t, OpenOptions{VerifyOptions: VerifyOptions{Signers: NewCertPool(f.dev.cert), Verifier: v}})
	if _, err := o.Open(ctx, f.env); err != nil {
		t.Fatalf("forged CRL: %v", err)
	}
	v.RequireCRL = true
	if _, err := o.Open(ctx, f.env); !errors.Is(err, ErrUntrustedSigner) {
		t.Fatalf("RequireCRL: got %v, want ErrUntrustedSigner", err)
	}
	v.CRLs = append(v.CRLs, f.acc.crl())
	if _, err := o.Open(ctx, f.env); err != nil {
		t.Fatalf("RequireCRL with CRLs: %v", err)
	}

	// Expired signer certificate (verification time after NotAfter).
	o = f.rcpt.opener(t, OpenOptions{VerifyOptions: VerifyOptions{Signers: NewCertPool(f.dev.cert), Verifier: v,
		Now: func() time.Time { return testNow.Add(2 * 365 * 24 * time.Hour) }}})
	if _, err := o.Open(ctx, f.env); !errors.Is(err, ErrUntrustedSigner) {
		t.Fatalf("expired: got %v, want ErrUntrustedSigner", err)
	}
}

// cloneWithSKI issues a certificate for l's key that claims subject key id ski.
func cloneWithSKI(t *testing.T, l *testLeaf, ski []byte) *x509.Certificate {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: l.cert.SerialNumber, Subject: pkix.Name{CommonName: "dev-1"},
		NotBefore: l.cert.NotBefore, NotAfter: l.cert.NotAfter,
		KeyUsage: x509.KeyUsageDigitalSignature, SubjectKeyId: ski,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, l.ca.cert, &l.key.PublicKey, l.ca.key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestReplay: a replayed envelope opens again (it is genuine); Open reports
// the same signing time and content hash, which is what callers key their
// replay detection on.
func TestReplay(t *testing.T) {
	f := newHostileFixture(t)
	a, err := f.opener.Open(context.Background(), f.env)
	if err != nil {
		t.Fatal(err)
	}
	b, err := f.opener.Open(context.Background(), bytes.Clone(f.env))
	if err != nil {
		t.Fatal(err)
	}
	if a.ContentHash != b.ContentHash || !a.SigningTime.Equal(b.SigningTime) || a.Signer != b.Signer || a.SigningTime.IsZero() {
		t.Fatalf("replay not recognisable: %+v vs %+v", a, b)
	}
	// The same content sealed again has the same hash but a new signing time.
	time.Sleep(1100 * time.Millisecond)
	env2, _ := Seal(f.content, SealOptions{Recipients: []*x509.Certificate{f.rcpt.cert}, Signer: f.dev.signer(false)})
	c, err := f.opener.Open(context.Background(), env2)
	if err != nil {
		t.Fatal(err)
	}
	if c.ContentHash != a.ContentHash || !c.SigningTime.After(a.SigningTime) {
		t.Fatalf("resealed: %+v vs %+v", c, a)
	}
}
