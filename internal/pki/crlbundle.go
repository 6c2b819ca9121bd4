package pki

import (
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
)

// A CRL bundle carries every CRL of a trust domain in one DER message, so a
// gateway gets the whole revocation state from one retained MQTT message
// (pki/crl/transport). The container is the standard one for this: a
// degenerate PKCS#7/CMS SignedData (RFC 5652 §5) with no signers, no
// certificates and the CRLs in its crls field — what 'openssl crl2pkcs7
// -nocert' writes and 'openssl pkcs7 -inform DER -print' reads. Each CRL is
// signed by its CA, so the container itself needs no signature.

var (
	oidSignedData = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 2}
	oidData       = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 1}
)

// MaxCRLBundle bounds a bundle we parse: 4 MiB holds about 50,000 revoked
// entries, far beyond a fleet's, and keeps a hostile message from costing
// more than that.
const MaxCRLBundle = 4 << 20

// contentInfo is RFC 5652 ContentInfo; Content is the [0] EXPLICIT
// wrapper, checked by hand because encoding/asn1 ignores tag parameters on
// a RawValue that carries FullBytes.
type contentInfo struct {
	ContentType asn1.ObjectIdentifier
	Content     asn1.RawValue
}

type degenerateSignedData struct {
	Version          int
	DigestAlgorithms asn1.RawValue // SET OF, empty
	EncapContentInfo struct {
		ContentType asn1.ObjectIdentifier
	}
	CRLs        asn1.RawValue // [1] IMPLICIT SET OF CertificateList
	SignerInfos asn1.RawValue // SET OF, empty
}

// EncodeCRLBundle packs CRLs into a degenerate SignedData.
func EncodeCRLBundle(crls []*x509.RevocationList) ([]byte, error) {
	var body []byte
	for _, c := range crls {
		body = append(body, c.Raw...)
	}
	sd := degenerateSignedData{
		Version:          1,
		DigestAlgorithms: asn1.RawValue{Class: asn1.ClassUniversal, Tag: asn1.TagSet, IsCompound: true},
		CRLs:             asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 1, IsCompound: true, Bytes: body},
		SignerInfos:      asn1.RawValue{Class: asn1.ClassUniversal, Tag: asn1.TagSet, IsCompound: true},
	}
	sd.EncapContentInfo.ContentType = oidData
	inner, err := asn1.Marshal(sd)
	if err != nil {
		return nil, fmt.Errorf("encode CRL bundle: %w", err)
	}
	return asn1.Marshal(contentInfo{ContentType: oidSignedData, Content: asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: inner}})
}

// ParseCRLBundle unpacks a bundle made by EncodeCRLBundle (or openssl
// crl2pkcs7). It does not check the CRLs' signatures: callers check each
// against its issuer (x509.RevocationList.CheckSignatureFrom).
func ParseCRLBundle(der []byte) ([]*x509.RevocationList, error) {
	if len(der) > MaxCRLBundle {
		return nil, fmt.Errorf("CRL bundle of %d bytes exceeds %d", len(der), MaxCRLBundle)
	}
	var ci contentInfo
	if rest, err := asn1.Unmarshal(der, &ci); err != nil || len(rest) > 0 {
		return nil, fmt.Errorf("CRL bundle: not a ContentInfo: %v", errOrTrailing(err))
	}
	if ci.Content.Class != asn1.ClassContextSpecific || ci.Content.Tag != 0 || !ci.Content.IsCompound {
		return nil, errors.New("CRL bundle: content is not [0] EXPLICIT")
	}
	if !ci.ContentType.Equal(oidSignedData) {
		return nil, fmt.Errorf("CRL bundle: content type %v is not signedData", ci.ContentType)
	}
	var sd struct {
		Version          int
		DigestAlgorithms asn1.RawValue
		EncapContentInfo asn1.RawValue
		Certificates     asn1.RawValue `asn1:"optional,tag:0"`
		CRLs             asn1.RawValue `asn1:"optional,tag:1"`
		SignerInfos      asn1.RawValue
	}
	if rest, err := asn1.Unmarshal(ci.Content.Bytes, &sd); err != nil || len(rest) > 0 {
		return nil, fmt.Errorf("CRL bundle: bad SignedData: %v", errOrTrailing(err))
	}
	var out []*x509.RevocationList
	for rest := sd.CRLs.Bytes; len(rest) > 0; {
		var raw asn1.RawValue
		var err error
		if rest, err = asn1.Unmarshal(rest, &raw); err != nil {
			return nil, fmt.Errorf("CRL bundle: CRL %d: %w", len(out)+1, err)
		}
		crl, err := x509.ParseRevocationList(raw.FullBytes)
		if err != nil {
			return nil, fmt.Errorf("CRL bundle: CRL %d: %w", len(out)+1, err)
		}
		out = append(out, crl)
	}
	return out, nil
}

func errOrTrailing(err error) error {
	if err != nil {
		return err
	}
	return errors.New("trailing data")
}
