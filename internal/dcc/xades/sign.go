package xades

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/dcc/xmltree"
)

// SignOptions are the optional inputs of Sign.
type SignOptions struct {
	// Time is the SigningTime (default: now), written in UTC, whole seconds.
	Time time.Time
}

// Sign adds an enveloped XAdES baseline-B signature as the last child of
// the document's root and returns the signed document: the input bytes
// unchanged with the signature inserted before the root's end tag, so the
// document is never re-serialized. chain is the signer certificate
// followed by its intermediates; key is the signer's ECDSA P-256 or RSA key.
func Sign(src []byte, key crypto.Signer, chain []*x509.Certificate, opts SignOptions) ([]byte, error) {
	if len(chain) == 0 {
		return nil, errors.New("sign: no signer certificate")
	}
	leaf := chain[0]
	alg, err := signatureMethodFor(key, leaf)
	if err != nil {
		return nil, err
	}
	doc, err := xmltree.Parse(src, xmltree.DefaultLimits)
	if err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	if n := findSignatures(doc.Root); len(n) > 0 {
		return nil, fmt.Errorf("sign: the document is already signed (ds:Signature at line %d)", n[0].Line)
	}
	if doc.Root.EndTag == doc.Root.End {
		return nil, errors.New("sign: the root element is empty")
	}
	canon, err := doc.Canonical(xmltree.Method{Version11: true}, nil, nil)
	if err != nil {
		return nil, fmt.Errorf("sign: canonicalize the document: %w", err)
	}
	docDigest := sha256.Sum256(canon)
	t := opts.Time
	if t.IsZero() {
		t = time.Now()
	}
	var idb [16]byte
	if _, err := rand.Read(idb[:]); err != nil {
		return nil, err
	}
	id := "id-" + hex.EncodeToString(idb[:])
	issuerSerial, err := issuerSerialV2(leaf)
	if err != nil {
		return nil, err
	}
	certDigest := sha256.Sum256(leaf.Raw)

	var sp strings.Builder
	sp.WriteString(`<xades:SignedProperties Id="xades-` + id + `"><xades:SignedSignatureProperties>`)
	sp.WriteString(`<xades:SigningTime>` + t.UTC().Truncate(time.Second).Format(time.RFC3339) + `</xades:SigningTime>`)
	sp.WriteString(`<xades:SigningCertificateV2><xades:Cert><xades:CertDigest>`)
	sp.WriteString(`<ds:DigestMethod Algorithm="` + AlgSHA256 + `"/><ds:DigestValue>` + b64(certDigest[:]) + `</ds:DigestValue>`)
	sp.WriteString(`</xades:CertDigest><xades:IssuerSerialV2>` + b64(issuerSerial) + `</xades:IssuerSerialV2></xades:Cert></xades:SigningCertificateV2>`)
	sp.WriteString(`</xades:SignedSignatureProperties><xades:SignedDataObjectProperties>`)
	sp.WriteString(`<xades:DataObjectFormat ObjectReference="#r-` + id + `"><xades:MimeType>` + MimeTypeOfDCC + `</xades:MimeType></xades:DataObjectFormat>`)
	sp.WriteString(`</xades:SignedDataObjectProperties></xades:SignedProperties>`)

	var ki strings.Builder
	ki.WriteString(`<ds:KeyInfo><ds:X509Data>`)
	for _, c := range chain {
		ki.WriteString(`<ds:X509Certificate>` + b64(c.Raw) + `</ds:X509Certificate>`)
	}
	ki.WriteString(`</ds:X509Data></ds:KeyInfo>`)
	object := `<ds:Object><xades:QualifyingProperties xmlns:xades="` + NSXAdES + `" Target="#` + id + `">` + sp.String() + `</xades:QualifyingProperties></ds:Object>`

	signedInfo := func(spDigest string) string {
		return `<ds:SignedInfo><ds:CanonicalizationMethod Algorithm="` + xmltree.ExcC14N + `"/>` +
			`<ds:SignatureMethod Algorithm="` + alg + `"/>` +
			`<ds:Reference Id="r-` + id + `" URI=""><ds:Transforms>` +
			`<ds:Transform Algorithm="` + AlgEnveloped + `"/><ds:Transform Algorithm="` + xmltree.C14N11 + `"/>` +
			`</ds:Transforms><ds:DigestMethod Algorithm="` + AlgSHA256 + `"/><ds:DigestValue>` + b64(docDigest[:]) + `</ds:DigestValue></ds:Reference>` +
			`<ds:Reference Type="` + TypeSignedProperties + `" URI="#xades-` + id + `"><ds:Transforms>` +
			`<ds:Transform Algorithm="` + xmltree.ExcC14N + `"/></ds:Transforms>` +
			`<ds:DigestMethod Algorithm="` + AlgSHA256 + `"/><ds:DigestValue>` + spDigest + `</ds:DigestValue></ds:Reference></ds:SignedInfo>`
	}
	signature := func(si, value string) string {
		return `<ds:Signature xmlns:ds="` + NSDS + `" Id="` + id + `">` + si +
			`<ds:SignatureValue Id="value-` + id + `">` + value + `</ds:SignatureValue>` + ki.String() + object + `</ds:Signature>`
	}
	// Exclusive C14N of an element depends only on the namespaces it and
	// its descendants use, all declared inside ds:Signature: the
	// signature parsed on its own canonicalizes as it will in place.
	tmpl, err := xmltree.Parse([]byte(signature(signedInfo(""), "")), xmltree.DefaultLimits)
	if err != nil {
		return nil, fmt.Errorf("sign: template: %w", err)
	}
	spNode := tmpl.Root.Child(NSDS, "Object").Child(NSXAdES, "QualifyingProperties").Child(NSXAdES, "SignedProperties")
	spCanon, err := tmpl.Canonical(xmltree.Method{Exclusive: true}, spNode, nil)
	if err != nil {
		return nil, err
	}
	spDigest := sha256.Sum256(spCanon)
	si := signedInfo(b64(spDigest[:]))
	siDoc, err := xmltree.Parse([]byte(signature(si, "")), xmltree.DefaultLimits)
	if err != nil {
		return nil, err
	}
	siCanon, err := siDoc.Canonical(xmltree.Method{Exclusive: true}, siDoc.Root.Child(NSDS, "SignedInfo"), nil)
	if err != nil {
		return nil, err
	}
	value, err := signBytes(key, leaf, siCanon)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 0, len(src)+4096)
	out = append(out, src[:doc.Root.EndTag]...)
	out = append(out, signature(si, b64(value))...)
	out = append(out, src[doc.Root.EndTag:]...)
	return out, nil
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

func signatureMethodFor(key crypto.Signer, leaf *x509.Certificate) (string, error) {
	switch pub := key.Public().(type) {
	case *ecdsa.PublicKey:
		if pub.Curve.Params().BitSize != 256 {
			return "", fmt.Errorf("sign: ECDSA keys must be P-256, this one is %s", pub.Curve.Params().Name)
		}
		if !pub.Equal(leaf.PublicKey) {
			return "", errors.New("sign: the key does not belong to the signer certificate")
		}
		return AlgECDSA256, nil
	case *rsa.PublicKey:
		if pub.N.BitLen() < 2048 {
			return "", fmt.Errorf("sign: RSA keys must have at least 2048 bits, this one has %d", pub.N.BitLen())
		}
		if !pub.Equal(leaf.PublicKey) {
			return "", errors.New("sign: the key does not belong to the signer certificate")
		}
		return AlgRSA256, nil
	}
	return "", fmt.Errorf("sign: unsupported key type %T (ECDSA P-256 or RSA)", key.Public())
}

// signBytes signs with SHA-256; ECDSA signatures become r‖s.
func signBytes(key crypto.Signer, leaf *x509.Certificate, data []byte) ([]byte, error) {
	d := sha256.Sum256(data)
	sig, err := key.Sign(rand.Reader, d[:], crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	if _, ok := key.Public().(*ecdsa.PublicKey); !ok {
		return sig, nil
	}
	var rs struct{ R, S *big.Int }
	if rest, err := asn1.Unmarshal(sig, &rs); err != nil || len(rest) > 0 {
		return nil, errors.New("sign: the signer returned a malformed ECDSA signature")
	}
	out := make([]byte, 64)
	rs.R.FillBytes(out[:32])
	rs.S.FillBytes(out[32:])
	return out, nil
}

// issuerSerialV2 is the DER of RFC 5035's IssuerSerial: the issuer as a
// GeneralNames with one directoryName, and the serial number.
func issuerSerialV2(c *x509.Certificate) ([]byte, error) {
	dn := asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 4, IsCompound: true, Bytes: c.RawIssuer}
	names, err := asn1.Marshal([]asn1.RawValue{dn})
	if err != nil {
		return nil, err
	}
	return asn1.Marshal(struct {
		Issuer asn1.RawValue
		Serial *big.Int
	}{asn1.RawValue{FullBytes: names}, c.SerialNumber})
}

// parseIssuerSerialV2 returns the issuer Name DER and serial of an
// IssuerSerial with one directoryName.
func parseIssuerSerialV2(der []byte) ([]byte, *big.Int, error) {
	var v struct {
		Issuer []asn1.RawValue
		Serial *big.Int
	}
	if rest, err := asn1.Unmarshal(der, &v); err != nil || len(rest) > 0 {
		return nil, nil, errors.New("IssuerSerialV2 is not DER IssuerSerial")
	}
	for _, n := range v.Issuer {
		if n.Class == asn1.ClassContextSpecific && n.Tag == 4 {
			return n.Bytes, v.Serial, nil
		}
	}
	return nil, nil, errors.New("IssuerSerialV2 names no directoryName")
}

func findSignatures(root *xmltree.Node) []*xmltree.Node {
	var out []*xmltree.Node
	root.Walk(func(n *xmltree.Node) bool {
		if n.Is(NSDS, "Signature") {
			out = append(out, n)
		}
		return true
	})
	return out
}
