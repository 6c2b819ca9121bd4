package envelope

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"
)

// Signer is the originator of sealed content: its certificate (which must
// carry a subject key identifier, by which the signature names it) and the
// matching ECDSA private key.
type Signer struct {
	Cert *x509.Certificate
	Key  crypto.Signer
	// Chain holds the intermediate CA certificates, leaf first excluded.
	Chain []*x509.Certificate
	// EmbedCerts puts Cert and Chain into the SignedData, so that
	// openers need no signer directory. It costs the certificates' size
	// (typically 450 to 600 bytes each) in every envelope.
	EmbedCerts bool
}

func (s *Signer) check() error {
	if s.Cert == nil || s.Key == nil {
		return errors.New("signer needs a certificate and a key")
	}
	if len(s.Cert.SubjectKeyId) == 0 {
		return fmt.Errorf("signer certificate %q has no subject key identifier; reissue it with one", s.Cert.Subject.CommonName)
	}
	pub, ok := s.Key.Public().(*ecdsa.PublicKey)
	if !ok {
		return fmt.Errorf("signer key is %T, need an ECDSA key", s.Key.Public())
	}
	if !pub.Equal(s.Cert.PublicKey) {
		return fmt.Errorf("signer key does not match certificate %q", s.Cert.Subject.CommonName)
	}
	return nil
}

// signData builds a bare SignedData (RFC 5652 §5) over content of type
// id-data, ECDSA with SHA-256, signer named by subject key identifier.
func signData(rand io.Reader, s *Signer, content []byte, at time.Time) ([]byte, error) {
	digest := sha256.Sum256(content)
	ctAttr, err := encodeAttribute(oidAttrContentType, oidData)
	if err != nil {
		return nil, err
	}
	mdAttr, err := encodeAttribute(oidAttrMessageDigest, digest[:])
	if err != nil {
		return nil, err
	}
	tm, err := marshalTime(at)
	if err != nil {
		return nil, fmt.Errorf("encode signing time: %w", err)
	}
	stAttr, err := encodeAttribute(oidAttrSigningTime, asn1.RawValue{FullBytes: tm})
	if err != nil {
		return nil, err
	}
	// DER orders the elements of a SET OF by their encodings.
	attrs := [][]byte{ctAttr, mdAttr, stAttr}
	slices.SortFunc(attrs, bytes.Compare)
	attrSet, err := asn1.Marshal(asn1.RawValue{Class: asn1.ClassUniversal, Tag: asn1.TagSet, IsCompound: true, Bytes: bytes.Join(attrs, nil)})
	if err != nil {
		return nil, fmt.Errorf("encode signed attributes: %w", err)
	}
	h := sha256.Sum256(attrSet) // RFC 5652 §5.4: signed over the SET OF encoding
	sig, err := s.Key.Sign(rand, h[:], crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	si := signerInfo{
		Version:            3,
		SID:                asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, Bytes: s.Cert.SubjectKeyId},
		DigestAlgorithm:    pkix.AlgorithmIdentifier{Algorithm: oidSHA256},
		SignedAttrs:        asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: bytes.Join(attrs, nil)},
		SignatureAlgorithm: pkix.AlgorithmIdentifier{Algorithm: oidECDSAWithSHA256},
		Signature:          sig,
	}
	siDER, err := asn1.Marshal(si)
	if err != nil {
		return nil, fmt.Errorf("encode signer info: %w", err)
	}
	eContent, err := asn1.Marshal(content)
	if err != nil {
		return nil, fmt.Errorf("encode content: %w", err)
	}
	sd := signedData{
		Version:          3, // RFC 5652 §5.1: a version 3 SignerInfo is present
		DigestAlgorithms: []pkix.AlgorithmIdentifier{{Algorithm: oidSHA256}},
		EncapContentInfo: encapsulatedContentInfo{
			EContentType: oidData,
			EContent:     asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: eContent},
		},
		SignerInfos: []asn1.RawValue{{FullBytes: siDER}},
	}
	if s.EmbedCerts {
		var certs []byte
		certs = append(certs, s.Cert.Raw...)
		for _, c := range s.Chain {
			certs = append(certs, c.Raw...)
		}
		sd.Certificates = asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: certs}
	}
	out, err := asn1.Marshal(sd)
	if err != nil {
		return nil, fmt.Errorf("encode signed data: %w", err)
	}
	return out, nil
}

func encodeAttribute(typ asn1.ObjectIdentifier, value any) ([]byte, error) {
	v, err := asn1.Marshal(value)
	if err != nil {
		return nil, fmt.Errorf("encode attribute %v: %w", typ, err)
	}
	b, err := asn1.Marshal(attribute{Type: typ, Values: asn1.RawValue{Class: asn1.ClassUniversal, Tag: asn1.TagSet, IsCompound: true, Bytes: v}})
	if err != nil {
		return nil, fmt.Errorf("encode attribute %v: %w", typ, err)
	}
	return b, nil
}

// verified is what a successful signature check yields.
type verified struct {
	content     []byte
	signer      *x509.Certificate
	embedded    []*x509.Certificate
	signingTime time.Time
	contentHash [sha256.Size]byte // SHA-256 of content
}

// verifySignedData parses a bare SignedData and checks its one signature.
// It does not judge the signer's chain; the caller does, after this.
func verifySignedData(ctx context.Context, der []byte, lookup SignerLookup) (*verified, error) {
	var sd signedData
	if err := unmarshalAll(der, &sd, ""); err != nil {
		return nil, fmt.Errorf("%w: signed data: %v", ErrMalformed, err)
	}
	if sd.Version < 1 || sd.Version > 5 {
		return nil, fmt.Errorf("%w: signed data version %d", ErrMalformed, sd.Version)
	}
	if !sd.EncapContentInfo.EContentType.Equal(oidData) {
		return nil, fmt.Errorf("%w: signed content type %v, only id-data is supported", ErrMalformed, sd.EncapContentInfo.EContentType)
	}
	ec := sd.EncapContentInfo.EContent
	if len(ec.FullBytes) == 0 {
		return nil, fmt.Errorf("%w: detached signature (no content) is not supported", ErrMalformed)
	}
	// The OCTET STRING's bytes, not a copy of them (the content is most of
	// the message): primitive, as DER has it.
	var octets asn1.RawValue
	if err := unmarshalAll(ec.Bytes, &octets, ""); err != nil {
		return nil, fmt.Errorf("%w: signed content: %v", ErrMalformed, err)
	}
	if octets.Class != asn1.ClassUniversal || octets.Tag != asn1.TagOctetString || octets.IsCompound {
		return nil, fmt.Errorf("%w: signed content is not a primitive OCTET STRING", ErrMalformed)
	}
	content := octets.Bytes
	if len(sd.SignerInfos) == 0 {
		return nil, fmt.Errorf("%w: signed data has no signer", ErrMalformed)
	}
	if len(sd.SignerInfos) > maxSignerInfos {
		return nil, fmt.Errorf("%w: %d signers, at most %d supported", ErrMalformed, len(sd.SignerInfos), maxSignerInfos)
	}
	var embedded []*x509.Certificate
	if len(sd.Certificates.FullBytes) > 0 {
		raws, err := splitElements(sd.Certificates.Bytes, maxCertificates)
		if err != nil {
			return nil, fmt.Errorf("%w: certificates: %v", ErrMalformed, err)
		}
		for _, r := range raws {
			if r.Class != asn1.ClassUniversal || r.Tag != asn1.TagSequence {
				continue // attribute certificates and other choices: not ours
			}
			c, err := x509.ParseCertificate(r.FullBytes)
			if err != nil {
				return nil, fmt.Errorf("%w: embedded certificate: %v", ErrMalformed, err)
			}
			embedded = append(embedded, c)
		}
	}

	var si signerInfo
	if err := unmarshalAll(sd.SignerInfos[0].FullBytes, &si, ""); err != nil {
		return nil, fmt.Errorf("%w: signer info: %v", ErrMalformed, err)
	}
	id, err := parseSignerID(si)
	if err != nil {
		return nil, err
	}
	dh, ok := digestHash(si.DigestAlgorithm.Algorithm)
	if !ok {
		return nil, fmt.Errorf("%w: unsupported digest algorithm %v", ErrMalformed, si.DigestAlgorithm.Algorithm)
	}
	sh, ok := sigHash(si.SignatureAlgorithm.Algorithm)
	if !ok {
		return nil, fmt.Errorf("%w: unsupported signature algorithm %v (need ECDSA)", ErrMalformed, si.SignatureAlgorithm.Algorithm)
	}
	if sh != 0 && sh != dh {
		return nil, fmt.Errorf("%w: signature algorithm %v does not match digest algorithm %v", ErrMalformed, si.SignatureAlgorithm.Algorithm, si.DigestAlgorithm.Algorithm)
	}
	if len(si.SignedAttrs.FullBytes) == 0 {
		return nil, fmt.Errorf("%w: signature without signed attributes is not supported", ErrMalformed)
	}
	d := dh.New()
	d.Write(content)
	digest := d.Sum(nil)
	signingTime, err := checkSignedAttrs(si.SignedAttrs.Bytes, sd.EncapContentInfo.EContentType, digest)
	if err != nil {
		return nil, err
	}

	var signer *x509.Certificate
	for _, c := range embedded {
		if id.Matches(c) {
			signer = c
			break
		}
	}
	if signer == nil && lookup != nil {
		c, err := lookup.LookupSigner(ctx, id)
		if err != nil {
			return nil, fmt.Errorf("look up signer %v: %w", id, err)
		}
		if c != nil && id.Matches(c) {
			signer = c
		}
	}
	if signer == nil {
		return nil, fmt.Errorf("%w: %v is neither embedded nor in the signer directory", ErrUnknownSigner, id)
	}
	pub, ok := signer.PublicKey.(*ecdsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("%w: signer key is %T, only ECDSA is supported", ErrMalformed, signer.PublicKey)
	}
	// RFC 5652 §5.4: the signature covers the DER of the signed
	// attributes with an EXPLICIT SET OF tag instead of [0] IMPLICIT.
	signedOver := append([]byte{0x31}, si.SignedAttrs.FullBytes[1:]...)
	d = dh.New()
	d.Write(signedOver)
	if !ecdsa.VerifyASN1(pub, d.Sum(nil), si.Signature) {
		return nil, fmt.Errorf("%w: signature by %q does not verify", ErrTampered, signer.Subject.CommonName)
	}
	var others []*x509.Certificate
	for _, c := range embedded {
		if c != signer {
			others = append(others, c)
		}
	}
	v := &verified{content: content, signer: signer, embedded: others, signingTime: signingTime}
	if dh == crypto.SHA256 {
		v.contentHash = [sha256.Size]byte(digest) // computed once, for the message digest and Opened.ContentHash
	} else {
		v.contentHash = sha256.Sum256(content)
	}
	return v, nil
}

func parseSignerID(si signerInfo) (SignerID, error) {
	sid := si.SID
	switch {
	case sid.Class == asn1.ClassContextSpecific && sid.Tag == 0 && !sid.IsCompound:
		if len(sid.Bytes) == 0 {
			return SignerID{}, fmt.Errorf("%w: empty signer key identifier", ErrMalformed)
		}
		return SignerID{SubjectKeyID: sid.Bytes}, nil
	case sid.Class == asn1.ClassUniversal && sid.Tag == asn1.TagSequence:
		var ias issuerAndSerialNumber
		if err := unmarshalAll(sid.FullBytes, &ias, ""); err != nil {
			return SignerID{}, fmt.Errorf("%w: signer issuer and serial number: %v", ErrMalformed, err)
		}
		return SignerID{RawIssuer: ias.Issuer.FullBytes, SerialNumber: ias.SerialNumber}, nil
	}
	return SignerID{}, fmt.Errorf("%w: unsupported signer identifier", ErrMalformed)
}

// checkSignedAttrs checks the content-type and message-digest attributes
// (RFC 5652 §11.1, §11.2) and returns the signing time (§11.3), zero if
// absent. Each must have exactly one value and appear at most once.
// digest is the content's digest with the signer's digest algorithm.
func checkSignedAttrs(b []byte, contentType asn1.ObjectIdentifier, digest []byte) (time.Time, error) {
	raws, err := splitElements(b, maxSignedAttrs)
	if err != nil {
		return time.Time{}, fmt.Errorf("%w: signed attributes: %v", ErrMalformed, err)
	}
	var haveCT, haveMD, haveST bool
	var signingTime time.Time
	for _, r := range raws {
		var a attribute
		if err := unmarshalAll(r.FullBytes, &a, ""); err != nil {
			return time.Time{}, fmt.Errorf("%w: signed attribute: %v", ErrMalformed, err)
		}
		var dst *bool
		switch {
		case a.Type.Equal(oidAttrContentType):
			dst = &haveCT
		case a.Type.Equal(oidAttrMessageDigest):
			dst = &haveMD
		case a.Type.Equal(oidAttrSigningTime):
			dst = &haveST
		default:
			continue // e.g. OpenSSL's SMIMECapabilities
		}
		if *dst {
			return time.Time{}, fmt.Errorf("%w: attribute %v appears twice", ErrMalformed, a.Type)
		}
		*dst = true
		if a.Values.Class != asn1.ClassUniversal || a.Values.Tag != asn1.TagSet {
			return time.Time{}, fmt.Errorf("%w: attribute %v values are not a SET", ErrMalformed, a.Type)
		}
		switch {
		case a.Type.Equal(oidAttrContentType):
			var ct asn1.ObjectIdentifier
			if err := unmarshalAll(a.Values.Bytes, &ct, ""); err != nil {
				return time.Time{}, fmt.Errorf("%w: content-type attribute: %v", ErrMalformed, err)
			}
			if !ct.Equal(contentType) {
				return time.Time{}, fmt.Errorf("%w: signed content type %v differs from %v", ErrTampered, ct, contentType)
			}
		case a.Type.Equal(oidAttrMessageDigest):
			var md []byte
			if err := unmarshalAll(a.Values.Bytes, &md, ""); err != nil {
				return time.Time{}, fmt.Errorf("%w: message-digest attribute: %v", ErrMalformed, err)
			}
			if !bytes.Equal(md, digest) {
				return time.Time{}, fmt.Errorf("%w: message digest does not match the content", ErrTampered)
			}
		case a.Type.Equal(oidAttrSigningTime):
			if err := unmarshalAll(a.Values.Bytes, &signingTime, ""); err != nil {
				return time.Time{}, fmt.Errorf("%w: signing-time attribute: %v", ErrMalformed, err)
			}
		}
	}
	if !haveCT || !haveMD {
		return time.Time{}, fmt.Errorf("%w: signed attributes lack content type or message digest", ErrMalformed)
	}
	return signingTime, nil
}

// Sign returns a DER ContentInfo holding SignedData over content (id-data,
// ECDSA with SHA-256, signer by key id, signing time now or at): the form
// Verify and `openssl cms -verify -inform DER` read. DCC sealing signs its
// AuthEnvelopedData with it, so that a relay can check the sender without
// reading the content.
func Sign(content []byte, s *Signer, at time.Time) ([]byte, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	if at.IsZero() {
		at = time.Now()
	}
	sd, err := signData(rand.Reader, s, content, at)
	if err != nil {
		return nil, err
	}
	return asn1.Marshal(contentInfo{ContentType: oidSignedData, Content: explicit0(sd)})
}
