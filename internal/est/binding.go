package est

import (
	"crypto"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
)

// Channel binding ties a CSR to the TLS session it is sent on, so a CSR
// cannot be replayed through another, authenticated connection (RFC 7030
// §3.5). RFC 7030 uses tls-unique, which TLS 1.3 does not have; we use its
// successor, the tls-exporter binding of RFC 9266: the TLS exporter (RFC
// 8446 §7.5, RFC 5705 for TLS 1.2 with extended master secret) with label
// ExporterLabel, an empty context and 32 bytes. The client puts the value,
// base64 (standard alphabet, padded: 44 characters), in the CSR's
// challengePassword attribute (PKCS#9, OID 1.2.840.113549.1.9.7, a
// UTF8String), as RFC 7030 §3.5 prescribes for tls-unique. The CSR
// signature covers the attribute, so the binding proves that the holder of
// the CSR's private key saw this TLS session.

// ExporterLabel is the RFC 9266 exporter label for channel binding.
const ExporterLabel = "EXPORTER-Channel-Binding"

// channelBindingLen is the RFC 9266 length in bytes.
const channelBindingLen = 32

var oidChallengePassword = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 7}

// ChannelBinding returns the tls-exporter channel binding of a connection.
// Client and server compute the same value. It fails on TLS 1.2 without
// the extended master secret extension (Go always negotiates it).
func ChannelBinding(cs *tls.ConnectionState) ([]byte, error) {
	if cs == nil {
		return nil, errors.New("channel binding: not a TLS connection")
	}
	b, err := cs.ExportKeyingMaterial(ExporterLabel, []byte{}, channelBindingLen)
	if err != nil {
		return nil, fmt.Errorf("channel binding: %w", err)
	}
	return b, nil
}

// tbsCSR is RFC 2986 CertificationRequestInfo with its parts kept raw.
type tbsCSR struct {
	Version    int
	Subject    asn1.RawValue
	PublicKey  asn1.RawValue
	Attributes []asn1.RawValue `asn1:"tag:0"`
}

// csrEnvelope is RFC 2986 CertificationRequest.
type csrEnvelope struct {
	Info      asn1.RawValue
	Algorithm pkix.AlgorithmIdentifier
	Signature asn1.BitString
}

// attribute is RFC 2986 Attribute.
type attribute struct {
	Type   asn1.ObjectIdentifier
	Values []asn1.RawValue `asn1:"set"`
}

// NewCSR creates a DER certificate request signed by key from template, as
// x509.CreateCertificateRequest does, and, if binding is non-nil, adds it
// base64-encoded as the challengePassword attribute. The gateway passes
// the result of ChannelBinding for the connection it will send the CSR on.
//
// Go's x509 package cannot write a challengePassword (its Attributes field
// encodes values as type-and-value pairs, not as a DirectoryString), so the
// attribute is added to the request info that x509 produced, and the
// result is signed again with the same algorithm.
func NewCSR(random io.Reader, key crypto.Signer, template *x509.CertificateRequest, binding []byte) ([]byte, error) {
	der, err := x509.CreateCertificateRequest(random, template, key)
	if err != nil {
		return nil, fmt.Errorf("create CSR: %w", err)
	}
	if binding == nil {
		return der, nil
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("create CSR: %w", err)
	}
	var env csrEnvelope
	if _, err := asn1.Unmarshal(der, &env); err != nil {
		return nil, fmt.Errorf("create CSR: %w", err)
	}
	var info tbsCSR
	if rest, err := asn1.Unmarshal(csr.RawTBSCertificateRequest, &info); err != nil || len(rest) > 0 {
		return nil, fmt.Errorf("create CSR: request info: %v", err)
	}
	value, err := asn1.MarshalWithParams(base64.StdEncoding.EncodeToString(binding), "utf8")
	if err != nil {
		return nil, err
	}
	attr, err := asn1.Marshal(attribute{Type: oidChallengePassword, Values: []asn1.RawValue{{FullBytes: value}}})
	if err != nil {
		return nil, err
	}
	info.Attributes = append(info.Attributes, asn1.RawValue{FullBytes: attr})
	tbs, err := asn1.Marshal(info)
	if err != nil {
		return nil, fmt.Errorf("create CSR: %w", err)
	}
	hash, err := signatureHash(csr.SignatureAlgorithm)
	if err != nil {
		return nil, err
	}
	digest := tbs
	if hash != 0 {
		h := hash.New()
		h.Write(tbs)
		digest = h.Sum(nil)
	}
	sig, err := key.Sign(random, digest, hash)
	if err != nil {
		return nil, fmt.Errorf("sign CSR: %w", err)
	}
	out, err := asn1.Marshal(csrEnvelope{
		Info:      asn1.RawValue{FullBytes: tbs},
		Algorithm: env.Algorithm,
		Signature: asn1.BitString{Bytes: sig, BitLength: 8 * len(sig)},
	})
	if err != nil {
		return nil, fmt.Errorf("create CSR: %w", err)
	}
	// Never hand out a request the server would refuse.
	check, err := x509.ParseCertificateRequest(out)
	if err != nil {
		return nil, fmt.Errorf("create CSR: %w", err)
	}
	if err := check.CheckSignature(); err != nil {
		return nil, fmt.Errorf("create CSR: signature: %w", err)
	}
	return out, nil
}

// signatureHash is the digest x509 uses for a signature algorithm it
// created; 0 for Ed25519, which signs the message itself.
func signatureHash(alg x509.SignatureAlgorithm) (crypto.Hash, error) {
	switch alg {
	case x509.ECDSAWithSHA256, x509.SHA256WithRSA:
		return crypto.SHA256, nil
	case x509.ECDSAWithSHA384, x509.SHA384WithRSA:
		return crypto.SHA384, nil
	case x509.ECDSAWithSHA512, x509.SHA512WithRSA:
		return crypto.SHA512, nil
	case x509.PureEd25519:
		return 0, nil
	}
	return 0, fmt.Errorf("create CSR: signature algorithm %v is not supported with channel binding; use an ECDSA, Ed25519 or RSA PKCS#1 v1.5 key", alg)
}

// ChallengePassword returns the challengePassword attribute of csr, and
// whether it has one. It accepts the DirectoryString forms OpenSSL and
// others write (UTF8String, PrintableString, IA5String, TeletexString).
func ChallengePassword(csr *x509.CertificateRequest) (string, bool, error) {
	var info tbsCSR
	if _, err := asn1.Unmarshal(csr.RawTBSCertificateRequest, &info); err != nil {
		return "", false, fmt.Errorf("CSR attributes: %w", err)
	}
	for _, raw := range info.Attributes {
		var a attribute
		if rest, err := asn1.Unmarshal(raw.FullBytes, &a); err != nil || len(rest) > 0 {
			return "", false, fmt.Errorf("CSR attribute is malformed: %v", err)
		}
		if !a.Type.Equal(oidChallengePassword) {
			continue
		}
		if len(a.Values) != 1 {
			return "", false, fmt.Errorf("challengePassword has %d values; want 1", len(a.Values))
		}
		v := a.Values[0]
		if v.Class != asn1.ClassUniversal || (v.Tag != asn1.TagUTF8String && v.Tag != asn1.TagPrintableString && v.Tag != asn1.TagIA5String && v.Tag != asn1.TagT61String) {
			return "", false, fmt.Errorf("challengePassword is of ASN.1 tag %d; want a string", v.Tag)
		}
		return string(v.Bytes), true, nil
	}
	return "", false, nil
}

// checkBinding enforces the channel-binding policy on csr received over cs:
// a binding that is present must match; a missing one is refused if
// required.
func checkBinding(csr *x509.CertificateRequest, cs *tls.ConnectionState, required bool) *httpError {
	got, ok, err := ChallengePassword(csr)
	if err != nil {
		return &httpError{400, "CSR attributes are malformed", err}
	}
	if !ok {
		if required {
			return &httpError{403, "CSR carries no channel binding; put the base64 tls-exporter value (label " + ExporterLabel + ") in challengePassword", nil}
		}
		return nil
	}
	want, err := ChannelBinding(cs)
	if err != nil {
		return &httpError{403, "channel binding is unavailable on this TLS connection; use TLS 1.3", err}
	}
	if subtle.ConstantTimeCompare([]byte(got), []byte(base64.StdEncoding.EncodeToString(want))) != 1 {
		return &httpError{403, "CSR channel binding does not match this TLS session (the CSR was made for another connection)", nil}
	}
	return nil
}
