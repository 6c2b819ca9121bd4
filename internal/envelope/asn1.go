package envelope

import (
	"crypto"
	"crypto/x509/pkix"
	"encoding/asn1"
	"fmt"
	"math/big"
	"time"
)

// Object identifiers of the profile (see doc.go).
var (
	oidData                = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 1}
	oidSignedData          = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 2}
	oidAuthEnvelopedData   = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 16, 1, 23}
	oidAttrContentType     = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 3}
	oidAttrMessageDigest   = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 4}
	oidAttrSigningTime     = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 5}
	oidECPublicKey         = asn1.ObjectIdentifier{1, 2, 840, 10045, 2, 1}
	oidCurveP256           = asn1.ObjectIdentifier{1, 2, 840, 10045, 3, 1, 7}
	oidCurveP384           = asn1.ObjectIdentifier{1, 3, 132, 0, 34}
	oidECDSAWithSHA256     = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 2}
	oidECDSAWithSHA384     = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 3}
	oidECDSAWithSHA512     = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 4}
	oidSHA256              = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 1}
	oidSHA384              = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 2}
	oidSHA512              = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 3}
	oidAES128GCM           = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 6}
	oidAES192GCM           = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 26}
	oidAES256GCM           = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 46}
	oidAES128Wrap          = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 5}
	oidAES192Wrap          = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 25}
	oidAES256Wrap          = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 45}
	oidDHSinglePassSHA1KDF = asn1.ObjectIdentifier{1, 3, 133, 16, 840, 63, 0, 2}
	oidDHSinglePassSHA256  = asn1.ObjectIdentifier{1, 3, 132, 1, 11, 1}
	oidDHSinglePassSHA384  = asn1.ObjectIdentifier{1, 3, 132, 1, 11, 2}
	oidDHSinglePassSHA512  = asn1.ObjectIdentifier{1, 3, 132, 1, 11, 3}
)

// kdfHash maps a dhSinglePass-stdDH-*kdf-scheme OID to the hash of its
// ANSI X9.63 KDF. SHA-1 is accepted on Open only because it is what
// OpenSSL and older senders use by default; Seal always writes SHA-256.
func kdfHash(oid asn1.ObjectIdentifier) (crypto.Hash, bool) {
	switch {
	case oid.Equal(oidDHSinglePassSHA256):
		return crypto.SHA256, true
	case oid.Equal(oidDHSinglePassSHA1KDF):
		return crypto.SHA1, true
	case oid.Equal(oidDHSinglePassSHA384):
		return crypto.SHA384, true
	case oid.Equal(oidDHSinglePassSHA512):
		return crypto.SHA512, true
	}
	return 0, false
}

// wrapKeyLen maps an AES key wrap OID to its KEK length in bytes.
func wrapKeyLen(oid asn1.ObjectIdentifier) (int, bool) {
	switch {
	case oid.Equal(oidAES256Wrap):
		return 32, true
	case oid.Equal(oidAES192Wrap):
		return 24, true
	case oid.Equal(oidAES128Wrap):
		return 16, true
	}
	return 0, false
}

// gcmKeyLen maps an AES-GCM OID to its content key length in bytes.
func gcmKeyLen(oid asn1.ObjectIdentifier) (int, bool) {
	switch {
	case oid.Equal(oidAES256GCM):
		return 32, true
	case oid.Equal(oidAES192GCM):
		return 24, true
	case oid.Equal(oidAES128GCM):
		return 16, true
	}
	return 0, false
}

// digestHash maps a digest algorithm OID to its hash.
func digestHash(oid asn1.ObjectIdentifier) (crypto.Hash, bool) {
	switch {
	case oid.Equal(oidSHA256):
		return crypto.SHA256, true
	case oid.Equal(oidSHA384):
		return crypto.SHA384, true
	case oid.Equal(oidSHA512):
		return crypto.SHA512, true
	}
	return 0, false
}

// sigHash maps an ECDSA signature algorithm OID to its hash; id-ecPublicKey
// (seen from some senders) means "the digest algorithm's hash".
func sigHash(oid asn1.ObjectIdentifier) (crypto.Hash, bool) {
	switch {
	case oid.Equal(oidECDSAWithSHA256):
		return crypto.SHA256, true
	case oid.Equal(oidECDSAWithSHA384):
		return crypto.SHA384, true
	case oid.Equal(oidECDSAWithSHA512):
		return crypto.SHA512, true
	case oid.Equal(oidECPublicKey):
		return 0, true
	}
	return 0, false
}

// The ASN.1 types below follow the module definitions of RFC 5652, 5083,
// 5084 and 5753 field by field. CMS uses IMPLICIT tags; where encoding/asn1
// cannot express a tagged CHOICE, the field is an asn1.RawValue and is
// decoded by hand.

// contentInfo is RFC 5652 §3 ContentInfo.
type contentInfo struct {
	ContentType asn1.ObjectIdentifier
	Content     asn1.RawValue `asn1:"explicit,tag:0"` // the [0] element; Bytes holds the content
}

// authEnvelopedData is RFC 5083 §2.1 AuthEnvelopedData.
type authEnvelopedData struct {
	Version                  int
	OriginatorInfo           asn1.RawValue   `asn1:"optional,tag:0"`
	RecipientInfos           []asn1.RawValue `asn1:"set"`
	AuthEncryptedContentInfo encryptedContentInfo
	AuthAttrs                asn1.RawValue `asn1:"optional,tag:1"`
	MAC                      []byte
	UnauthAttrs              asn1.RawValue `asn1:"optional,tag:2"`
}

// encryptedContentInfo is RFC 5652 §6.1 EncryptedContentInfo; the
// encrypted content is [0] IMPLICIT OCTET STRING (primitive in DER). It is
// kept raw, so that opening does not copy the bulk of the message; decrypt
// refuses the constructed form, as a []byte field would.
type encryptedContentInfo struct {
	ContentType                asn1.ObjectIdentifier
	ContentEncryptionAlgorithm pkix.AlgorithmIdentifier
	EncryptedContent           asn1.RawValue `asn1:"optional,tag:0"`
}

// gcmParameters is RFC 5084 §3.2 GCMParameters.
type gcmParameters struct {
	Nonce  []byte
	ICVLen int `asn1:"optional,default:12"`
}

// keyAgreeRecipientInfo is RFC 5652 §6.2.2 KeyAgreeRecipientInfo; it is
// carried as RecipientInfo alternative kari, [1] IMPLICIT.
type keyAgreeRecipientInfo struct {
	Version                int
	Originator             asn1.RawValue `asn1:"explicit,tag:0"` // the [0] element; Bytes holds originatorKey [1] IMPLICIT OriginatorPublicKey
	UKM                    []byte        `asn1:"explicit,optional,tag:1"`
	KeyEncryptionAlgorithm pkix.AlgorithmIdentifier
	RecipientEncryptedKeys []recipientEncryptedKey
}

// originatorPublicKey is RFC 5652 §6.2.2 OriginatorPublicKey.
type originatorPublicKey struct {
	Algorithm pkix.AlgorithmIdentifier
	PublicKey asn1.BitString
}

// recipientEncryptedKey is RFC 5652 §6.2.2 RecipientEncryptedKey; RID is
// either issuerAndSerialNumber or rKeyId [0] IMPLICIT RecipientKeyIdentifier.
type recipientEncryptedKey struct {
	RID          asn1.RawValue
	EncryptedKey []byte
}

// recipientKeyIdentifier is RFC 5652 §6.2.2 RecipientKeyIdentifier.
type recipientKeyIdentifier struct {
	SubjectKeyIdentifier []byte
	Date                 asn1.RawValue `asn1:"optional"`
	Other                asn1.RawValue `asn1:"optional"`
}

// issuerAndSerialNumber is RFC 5652 §10.2.4 IssuerAndSerialNumber.
type issuerAndSerialNumber struct {
	Issuer       asn1.RawValue
	SerialNumber *big.Int
}

// eccCMSSharedInfo is RFC 5753 §7.2 ECC-CMS-SharedInfo, the input of the
// X9.63 KDF besides the shared secret.
type eccCMSSharedInfo struct {
	KeyInfo     asn1.RawValue // the key wrap AlgorithmIdentifier, as sent
	EntityUInfo []byte        `asn1:"explicit,optional,tag:0"`
	SuppPubInfo []byte        `asn1:"explicit,tag:2"`
}

// signedData is RFC 5652 §5.1 SignedData.
type signedData struct {
	Version          int
	DigestAlgorithms []pkix.AlgorithmIdentifier `asn1:"set"`
	EncapContentInfo encapsulatedContentInfo
	Certificates     asn1.RawValue   `asn1:"optional,tag:0"`
	CRLs             asn1.RawValue   `asn1:"optional,tag:1"`
	SignerInfos      []asn1.RawValue `asn1:"set"`
}

// encapsulatedContentInfo is RFC 5652 §5.2 EncapsulatedContentInfo; the
// eContent is [0] EXPLICIT OCTET STRING, kept raw to tell absent from empty.
type encapsulatedContentInfo struct {
	EContentType asn1.ObjectIdentifier
	EContent     asn1.RawValue `asn1:"optional,tag:0"`
}

// signerInfo is RFC 5652 §5.3 SignerInfo. SID is issuerAndSerialNumber
// (version 1) or subjectKeyIdentifier [0] IMPLICIT OCTET STRING (version 3).
type signerInfo struct {
	Version            int
	SID                asn1.RawValue
	DigestAlgorithm    pkix.AlgorithmIdentifier
	SignedAttrs        asn1.RawValue `asn1:"optional,tag:0"`
	SignatureAlgorithm pkix.AlgorithmIdentifier
	Signature          []byte
	UnsignedAttrs      asn1.RawValue `asn1:"optional,tag:1"`
}

// attribute is RFC 5652 §5.3 Attribute; Values is the raw SET OF.
type attribute struct {
	Type   asn1.ObjectIdentifier
	Values asn1.RawValue
}

// unmarshalAll decodes exactly one DER element from b into v and fails on
// trailing bytes, which encoding/asn1 would otherwise return silently.
func unmarshalAll(b []byte, v any, params string) error {
	rest, err := asn1.UnmarshalWithParams(b, v, params)
	if err != nil {
		return err
	}
	if len(rest) != 0 {
		return fmt.Errorf("%d trailing bytes", len(rest))
	}
	return nil
}

// splitElements splits the contents of a constructed element into its
// elements, refusing more than max of them.
func splitElements(b []byte, max int) ([]asn1.RawValue, error) {
	var out []asn1.RawValue
	for len(b) > 0 {
		if len(out) == max {
			return nil, fmt.Errorf("more than %d elements", max)
		}
		var rv asn1.RawValue
		rest, err := asn1.Unmarshal(b, &rv)
		if err != nil {
			return nil, err
		}
		out = append(out, rv)
		b = rest
	}
	return out, nil
}

// marshalTime encodes t as RFC 5652 §11.3 requires: UTCTime for the years
// 1950 to 2049, GeneralizedTime otherwise (encoding/asn1 does exactly this).
func marshalTime(t time.Time) ([]byte, error) {
	return asn1.Marshal(t.UTC().Truncate(time.Second))
}
