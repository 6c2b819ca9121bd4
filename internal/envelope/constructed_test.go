package envelope

import (
	"context"
	"crypto/rand"
	"encoding/asn1"
	"errors"
	"testing"
	"time"
)

// constructedOctets is the BER constructed form of an OCTET STRING holding
// b, which DER does not allow.
func constructedOctets(t *testing.T, b []byte) []byte {
	t.Helper()
	inner, err := asn1.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	return inner
}

// TestOpenRefusesConstructedStrings: the encrypted content and the signed
// content are read in place (not copied out through encoding/asn1), and
// still only in their primitive DER form.
func TestOpenRefusesConstructedStrings(t *testing.T) {
	f := newHostileFixture(t)
	ctx := context.Background()

	// Encrypted content as [0] constructed { OCTET STRING }.
	var ci contentInfo
	if err := unmarshalAll(f.env, &ci, ""); err != nil {
		t.Fatal(err)
	}
	var aed authEnvelopedData
	if err := unmarshalAll(ci.Content.Bytes, &aed, ""); err != nil {
		t.Fatal(err)
	}
	ct := aed.AuthEncryptedContentInfo.EncryptedContent.Bytes
	aed.AuthEncryptedContentInfo.EncryptedContent = asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: constructedOctets(t, ct)}
	aedDER, err := asn1.Marshal(aed)
	if err != nil {
		t.Fatal(err)
	}
	env, err := asn1.Marshal(contentInfo{ContentType: oidAuthEnvelopedData, Content: explicit0(aedDER)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.opener.Open(ctx, env); !errors.Is(err, ErrMalformed) {
		t.Errorf("constructed encrypted content: %v, want ErrMalformed", err)
	}

	// Signed content as [0] EXPLICIT constructed OCTET STRING { OCTET STRING }.
	sd, err := signData(rand.Reader, f.dev.signer(false), f.content, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	var s signedData
	if err := unmarshalAll(sd, &s, ""); err != nil {
		t.Fatal(err)
	}
	outer, err := asn1.Marshal(asn1.RawValue{Class: asn1.ClassUniversal, Tag: asn1.TagOctetString, IsCompound: true, Bytes: constructedOctets(t, f.content)})
	if err != nil {
		t.Fatal(err)
	}
	s.EncapContentInfo.EContent = asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: outer}
	sd, err = asn1.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.opener.Open(ctx, f.sealInner(t, sd, oidSignedData)); !errors.Is(err, ErrMalformed) {
		t.Errorf("constructed signed content: %v, want ErrMalformed", err)
	}
}
