// Package xades signs and verifies enveloped XML signatures in the XAdES
// baseline-B profile that DCC tooling produces (ETSI EN 319 132-1): the
// signature is the last child of the root; SignedInfo is canonicalized with
// exclusive C14N; one reference covers the whole document (enveloped-
// signature transform, then C14N 1.1), one the XAdES SignedProperties
// (SigningTime, SigningCertificateV2, DataObjectFormat); KeyInfo carries the
// signer certificate and its intermediates. ECDSA signature values are r‖s
// (XMLDSig 1.1 §6.4.3), never DER.
//
// It is written on the standard library and package xmltree rather than on
// an XML-DSig library: the maintained Go library (goxmldsig) writes ECDSA
// signatures as DER, which other XMLDSig implementations (xmlsec1, the DCC
// tools built on signxml) refuse, supports neither C14N 1.1 references nor
// XAdES, and resolves references in ways this verifier refuses (signature
// wrapping).
//
// Verification is strict and its outcome typed (Status): every reference
// is checked; exactly one ds:Signature may exist and it must be the root's
// last child; a reference by Id must name exactly one element in the
// document, and the SignedProperties reference must name the
// SignedProperties inside this signature's QualifyingProperties; the
// SigningCertificateV2 digest must match the certificate whose key
// verifies the signature; the chain must verify to a trusted root and no
// certificate of it may be revoked at the verification time, which is the
// signing time unless the caller names another (lab certificates expire,
// the certificates they signed stay valid). CRLs and OCSP responses
// embedded in XAdES long-term forms (RevocationValues) count like the ones
// the caller gives.
package xades

import (
	"crypto"
	_ "crypto/sha256" // registers SHA-256 for crypto.Hash
	_ "crypto/sha512" // registers SHA-384/512
)

// Namespaces.
const (
	NSDS    = "http://www.w3.org/2000/09/xmldsig#"
	NSXAdES = "http://uri.etsi.org/01903/v1.3.2#"
	NSExcC  = "http://www.w3.org/2001/10/xml-exc-c14n#"
	// TypeSignedProperties is the Type of the reference to SignedProperties.
	TypeSignedProperties = "http://uri.etsi.org/01903#SignedProperties"
)

// Algorithm identifiers.
const (
	AlgEnveloped  = "http://www.w3.org/2000/09/xmldsig#enveloped-signature"
	AlgSHA256     = "http://www.w3.org/2001/04/xmlenc#sha256"
	AlgSHA384     = "http://www.w3.org/2001/04/xmldsig-more#sha384"
	AlgSHA512     = "http://www.w3.org/2001/04/xmlenc#sha512"
	AlgSHA1       = "http://www.w3.org/2000/09/xmldsig#sha1"
	AlgECDSA256   = "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha256"
	AlgECDSA384   = "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha384"
	AlgECDSA512   = "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha512"
	AlgRSA256     = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
	AlgRSA384     = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha384"
	AlgRSA512     = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha512"
	AlgRSASHA1    = "http://www.w3.org/2000/09/xmldsig#rsa-sha1"
	AlgECDSASHA1  = "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha1"
	AlgDSASHA1    = "http://www.w3.org/2000/09/xmldsig#dsa-sha1"
	AlgHMACSHA1   = "http://www.w3.org/2000/09/xmldsig#hmac-sha1"
	MimeTypeOfDCC = "text/xml"
)

var digests = map[string]crypto.Hash{AlgSHA256: crypto.SHA256, AlgSHA384: crypto.SHA384, AlgSHA512: crypto.SHA512}

type sigAlg struct {
	hash  crypto.Hash
	ecdsa bool
}

var signatureAlgs = map[string]sigAlg{
	AlgECDSA256: {crypto.SHA256, true}, AlgECDSA384: {crypto.SHA384, true}, AlgECDSA512: {crypto.SHA512, true},
	AlgRSA256: {crypto.SHA256, false}, AlgRSA384: {crypto.SHA384, false}, AlgRSA512: {crypto.SHA512, false},
}

// weak are algorithms refused by name, so the reason says why.
var weak = map[string]string{
	AlgSHA1: "SHA-1 digests", AlgRSASHA1: "RSA with SHA-1", AlgECDSASHA1: "ECDSA with SHA-1",
	AlgDSASHA1: "DSA with SHA-1", AlgHMACSHA1: "HMAC signatures",
}
