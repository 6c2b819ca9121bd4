package xades

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"

	"fmt"
	"math/big"
	"strings"
	"time"

	"golang.org/x/crypto/ocsp"

	"github.com/fieldtrust/fieldtrust/internal/dcc/xmltree"
)

// Status is the typed outcome of a verification.
type Status string

// Outcomes. SchemaInvalid is set by callers that validate the schema
// (package dcc); this package never returns it.
const (
	Valid         Status = "valid"
	Manipulated   Status = "manipulated"
	Untrusted     Status = "untrusted"
	Revoked       Status = "revoked"
	SchemaInvalid Status = "schema-invalid"
	Unsupported   Status = "unsupported"
)

// Result is what a verification found. Reason is a sentence for people;
// Reference names the reference (its URI, or Id) that failed for
// Manipulated; RevokedAt and RevokedSerial say which certificate was
// revoked and since when.
type Result struct {
	Status        Status
	Reason        string
	Reference     string
	RevokedAt     time.Time
	RevokedSerial string
	RevokedReason int
	SigningTime   time.Time
	VerifiedAt    time.Time
	Signer        *x509.Certificate
	Chain         []*x509.Certificate // signer first, root last (when trusted)
}

// VerifyOptions are the trust inputs.
type VerifyOptions struct {
	Roots         []*x509.Certificate
	Intermediates []*x509.Certificate
	CRLs          []*x509.RevocationList
	// At is the verification time; zero means the signing time.
	At time.Time
}

func fail(s Status, format string, args ...any) *Result {
	return &Result{Status: s, Reason: fmt.Sprintf(format, args...)}
}

// Verify verifies the enveloped signature of a parsed document.
func Verify(doc *xmltree.Document, opts VerifyOptions) *Result {
	sigs := findSignatures(doc.Root)
	switch {
	case len(sigs) == 0:
		return fail(Unsupported, "the document is not signed (no ds:Signature)")
	case len(sigs) > 1:
		return fail(Manipulated, "signature wrapping: %d ds:Signature elements (lines %d and %d); a DCC has one, the last child of the root", len(sigs), sigs[0].Line, sigs[1].Line)
	}
	sig := sigs[0]
	if sig.Parent != doc.Root || lastElement(doc.Root) != sig {
		return fail(Manipulated, "signature wrapping: the ds:Signature at line %d is not the last child of the root", sig.Line)
	}
	v := &verifier{doc: doc, sig: sig, opts: opts}
	return v.run()
}

type verifier struct {
	doc  *xmltree.Document
	sig  *xmltree.Node
	opts VerifyOptions
	ids  map[string][]*xmltree.Node
}

func lastElement(n *xmltree.Node) *xmltree.Node {
	els := n.Elements()
	if len(els) == 0 {
		return nil
	}
	return els[len(els)-1]
}

// elementsByID indexes the elements by their Id, ID or id attribute (no DTD
// or schema says which attributes are IDs; XMLDSig tools use these).
func (v *verifier) byID(id string) []*xmltree.Node {
	if v.ids == nil {
		v.ids = map[string][]*xmltree.Node{}
		v.doc.Root.Walk(func(n *xmltree.Node) bool {
			for _, a := range n.Attrs {
				if a.Space == "" && (a.Local == "Id" || a.Local == "ID" || a.Local == "id") {
					v.ids[a.Value] = append(v.ids[a.Value], n)
				}
			}
			return true
		})
	}
	return v.ids[id]
}

func (v *verifier) run() *Result {
	els := v.sig.Elements()
	if len(els) < 2 || !els[0].Is(NSDS, "SignedInfo") || !els[1].Is(NSDS, "SignatureValue") {
		return fail(Manipulated, "ds:Signature at line %d lacks SignedInfo and SignatureValue in that order", v.sig.Line)
	}
	si, sv := els[0], els[1]
	var keyInfo *xmltree.Node
	var objects []*xmltree.Node
	for _, e := range els[2:] {
		switch {
		case e.Is(NSDS, "KeyInfo") && keyInfo == nil && len(objects) == 0:
			keyInfo = e
		case e.Is(NSDS, "Object"):
			objects = append(objects, e)
		default:
			return fail(Manipulated, "unexpected element %s in ds:Signature at line %d", e.Local, e.Line)
		}
	}
	siEls := si.Elements()
	if len(siEls) < 3 || !siEls[0].Is(NSDS, "CanonicalizationMethod") || !siEls[1].Is(NSDS, "SignatureMethod") {
		return fail(Manipulated, "SignedInfo at line %d is not CanonicalizationMethod, SignatureMethod, Reference+", si.Line)
	}
	siMethod, r := c14nMethod(siEls[0])
	if r != nil {
		return r
	}
	sigAlgURI, _ := siEls[1].Attr("Algorithm")
	alg, ok := signatureAlgs[sigAlgURI]
	if !ok {
		if w, isWeak := weak[sigAlgURI]; isWeak {
			return fail(Unsupported, "signature method %s: %s are not accepted", sigAlgURI, w)
		}
		return fail(Unsupported, "signature method %q is not supported (ECDSA or RSA with SHA-256/384/512)", sigAlgURI)
	}
	if len(siEls[1].Elements()) > 0 {
		return fail(Unsupported, "SignatureMethod parameters (HMACOutputLength) are not supported")
	}

	// QualifyingProperties of this signature: the one whose Target names it.
	sigID, _ := v.sig.Attr("Id")
	var qp, sp *xmltree.Node
	for _, o := range objects {
		for _, q := range o.Elements() {
			if q.Is(NSXAdES, "QualifyingProperties") {
				if qp != nil {
					return fail(Manipulated, "signature wrapping: a second xades:QualifyingProperties at line %d", q.Line)
				}
				qp = q
			}
		}
	}
	if qp == nil {
		return fail(Unsupported, "not a XAdES signature: no xades:QualifyingProperties in ds:Object")
	}
	if t, _ := qp.Attr("Target"); sigID == "" || t != "#"+sigID {
		return fail(Manipulated, "xades:QualifyingProperties at line %d targets %q, not this signature (Id %q)", qp.Line, t, sigID)
	}
	sp = qp.Child(NSXAdES, "SignedProperties")

	// Structure first (what each reference names), digests second, so
	// that a wrapping attack is reported as such.
	docRefs, spRefs := 0, 0
	refIDs := map[string]bool{}
	for _, digest := range []bool{false, true} {
		docRefs, spRefs = 0, 0
		for _, ref := range siEls[2:] {
			if !ref.Is(NSDS, "Reference") {
				return fail(Manipulated, "unexpected element %s in SignedInfo at line %d", ref.Local, ref.Line)
			}
			if r := v.reference(ref, sp, &docRefs, &spRefs, digest); r != nil {
				return r
			}
			if id, ok := ref.Attr("Id"); ok {
				refIDs[id] = true
			}
		}
	}
	if sp == nil {
		return fail(Unsupported, "not a XAdES signature: no xades:SignedProperties")
	}
	if docRefs != 1 {
		return fail(Unsupported, "the signature has %d references to the whole document (URI=\"\"), want exactly 1", docRefs)
	}
	if spRefs != 1 {
		return fail(Manipulated, "the signature has %d references to its SignedProperties, want exactly 1", spRefs)
	}
	// DataObjectFormat must describe a reference of this signature.
	if sdop := sp.Child(NSXAdES, "SignedDataObjectProperties"); sdop != nil {
		for _, f := range sdop.Elements() {
			if f.Is(NSXAdES, "DataObjectFormat") {
				or, _ := f.Attr("ObjectReference")
				if !strings.HasPrefix(or, "#") || !refIDs[or[1:]] {
					return fail(Manipulated, "xades:DataObjectFormat at line %d names %q, not a reference of this signature", f.Line, or)
				}
			}
		}
	}

	ssp := sp.Child(NSXAdES, "SignedSignatureProperties")
	if ssp == nil {
		return fail(Unsupported, "xades:SignedProperties without SignedSignatureProperties")
	}
	stNode := ssp.Child(NSXAdES, "SigningTime")
	if stNode == nil {
		return fail(Unsupported, "no xades:SigningTime (XAdES baseline-B requires it)")
	}
	signingTime, err := time.Parse(time.RFC3339, strings.TrimSpace(stNode.Text()))
	if err != nil {
		return fail(Unsupported, "xades:SigningTime %q is not an RFC 3339 time", stNode.Text())
	}

	// Candidate certificates: KeyInfo, CertificateValues, the caller's.
	var certs []*x509.Certificate
	if keyInfo != nil {
		for _, xd := range keyInfo.Elements() {
			if !xd.Is(NSDS, "X509Data") {
				continue
			}
			for _, xc := range xd.Elements() {
				if xc.Is(NSDS, "X509Certificate") {
					c, r := parseCertB64(xc)
					if r != nil {
						return r
					}
					certs = append(certs, c)
				}
			}
		}
	}
	var embeddedCRLs []*x509.RevocationList
	var ocsps [][]byte
	if up := qp.Child(NSXAdES, "UnsignedProperties"); up != nil {
		if usp := up.Child(NSXAdES, "UnsignedSignatureProperties"); usp != nil {
			for _, p := range usp.Elements() {
				switch {
				case p.Is(NSXAdES, "CertificateValues"):
					for _, e := range p.Elements() {
						if e.Is(NSXAdES, "EncapsulatedX509Certificate") {
							c, r := parseCertB64(e)
							if r != nil {
								return r
							}
							certs = append(certs, c)
						}
					}
				case p.Is(NSXAdES, "RevocationValues"):
					for _, group := range p.Elements() {
						for _, e := range group.Elements() {
							der, err := decodeB64(e.Text())
							if err != nil {
								return fail(Manipulated, "%s at line %d is not base64", e.Local, e.Line)
							}
							switch {
							case e.Is(NSXAdES, "EncapsulatedCRLValue"):
								crl, err := x509.ParseRevocationList(der)
								if err != nil {
									return fail(Manipulated, "embedded CRL at line %d: %v", e.Line, err)
								}
								embeddedCRLs = append(embeddedCRLs, crl)
							case e.Is(NSXAdES, "EncapsulatedOCSPValue"):
								ocsps = append(ocsps, der)
							}
						}
					}
				}
			}
		}
	}

	signer, r := v.signingCertificate(ssp, append(append([]*x509.Certificate(nil), certs...), v.opts.Intermediates...))
	if r != nil {
		return r
	}
	value, err := decodeB64(sv.Text())
	if err != nil {
		return fail(Manipulated, "SignatureValue is not base64")
	}
	siCanon, err := v.doc.Canonical(siMethod, si, nil)
	if err != nil {
		return fail(Unsupported, "SignedInfo: %v", err)
	}
	if r := checkSignature(signer, alg, siCanon, value); r != nil {
		return r
	}

	res := &Result{SigningTime: signingTime, Signer: signer}
	at := v.opts.At
	if at.IsZero() {
		at = signingTime
	}
	res.VerifiedAt = at
	if at.Before(signer.NotBefore) || at.After(signer.NotAfter) {
		res.Status, res.Reason = Untrusted, fmt.Sprintf("the signer certificate is valid from %s to %s, not at %s", signer.NotBefore.UTC().Format(time.RFC3339), signer.NotAfter.UTC().Format(time.RFC3339), at.UTC().Format(time.RFC3339))
		return res
	}
	if signer.KeyUsage != 0 && signer.KeyUsage&(x509.KeyUsageDigitalSignature|x509.KeyUsageContentCommitment) == 0 {
		res.Status, res.Reason = Untrusted, "the signer certificate's key usage allows neither digitalSignature nor nonRepudiation"
		return res
	}
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, c := range v.opts.Roots {
		roots.AddCert(c)
	}
	for _, c := range certs {
		inter.AddCert(c)
	}
	for _, c := range v.opts.Intermediates {
		inter.AddCert(c)
	}
	chains, err := signer.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: at, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	if err != nil {
		res.Status, res.Reason = Untrusted, fmt.Sprintf("the signer %q does not chain to a trusted lab root at %s: %v", signer.Subject.String(), at.UTC().Format(time.RFC3339), err)
		return res
	}
	res.Chain = chains[0]
	crls := append(append([]*x509.RevocationList(nil), v.opts.CRLs...), embeddedCRLs...)
	for i := 0; i+1 < len(res.Chain); i++ {
		c, issuer := res.Chain[i], res.Chain[i+1]
		if when, reason, ok := revokedBy(c, issuer, crls, ocsps); ok && !when.After(at) {
			res.Status = Revoked
			res.RevokedAt, res.RevokedSerial, res.RevokedReason = when, fmt.Sprintf("%x", c.SerialNumber), reason
			res.Reason = fmt.Sprintf("certificate %q (serial %x) was revoked at %s, before the verification time %s", c.Subject.String(), c.SerialNumber, when.UTC().Format(time.RFC3339), at.UTC().Format(time.RFC3339))
			return res
		}
	}
	res.Status = Valid
	res.Reason = fmt.Sprintf("signed by %q at %s", signer.Subject.String(), signingTime.UTC().Format(time.RFC3339))
	return res
}

// revokedBy reports when c was revoked according to a CRL or OCSP response
// signed by its issuer.
func revokedBy(c, issuer *x509.Certificate, crls []*x509.RevocationList, ocsps [][]byte) (time.Time, int, bool) {
	var first time.Time
	reason, found := 0, false
	note := func(t time.Time, r int) {
		if !found || t.Before(first) {
			first, reason, found = t, r, true
		}
	}
	for _, crl := range crls {
		if !bytes.Equal(crl.RawIssuer, issuer.RawSubject) || crl.CheckSignatureFrom(issuer) != nil {
			continue
		}
		for _, e := range crl.RevokedCertificateEntries {
			if e.SerialNumber.Cmp(c.SerialNumber) == 0 {
				note(e.RevocationTime, e.ReasonCode)
			}
		}
	}
	for _, der := range ocsps {
		resp, err := ocsp.ParseResponseForCert(der, c, issuer)
		if err == nil && resp.Status == ocsp.Revoked {
			note(resp.RevokedAt, resp.RevocationReason)
		}
	}
	return first, reason, found
}

func (v *verifier) reference(ref, sp *xmltree.Node, docRefs, spRefs *int, digest bool) *Result {
	uri, hasURI := ref.Attr("URI")
	name := uri
	if id, ok := ref.Attr("Id"); ok {
		name = fmt.Sprintf("%s (Id %s)", uri, id)
	}
	if uri == "" {
		name = `"" (the whole document)`
	}
	els := ref.Elements()
	i := 0
	var transforms []*xmltree.Node
	if i < len(els) && els[i].Is(NSDS, "Transforms") {
		transforms = els[i].Elements()
		i++
	}
	if i+2 != len(els) || !els[i].Is(NSDS, "DigestMethod") || !els[i+1].Is(NSDS, "DigestValue") {
		return fail(Manipulated, "reference %s at line %d is not Transforms?, DigestMethod, DigestValue", name, ref.Line)
	}
	dm, _ := els[i].Attr("Algorithm")
	h, ok := digests[dm]
	if !ok {
		if w, isWeak := weak[dm]; isWeak {
			return fail(Unsupported, "reference %s: %s are not accepted", name, w)
		}
		return fail(Unsupported, "reference %s: digest method %q is not supported", name, dm)
	}
	want, err := decodeB64(els[i+1].Text())
	if err != nil {
		return fail(Manipulated, "reference %s: DigestValue is not base64", name)
	}
	var target *xmltree.Node // nil: the whole document
	switch {
	case !hasURI:
		return fail(Unsupported, "reference at line %d has no URI", ref.Line)
	case uri == "":
		*docRefs++
	case strings.HasPrefix(uri, "#") && !strings.HasPrefix(uri, "#xpointer("):
		nodes := v.byID(uri[1:])
		switch len(nodes) {
		case 0:
			return fail(Manipulated, "reference %s names no element", name)
		case 1:
			target = nodes[0]
		default:
			return fail(Manipulated, "signature wrapping: reference %s names %d elements (lines %d and %d)", name, len(nodes), nodes[0].Line, nodes[1].Line)
		}
	default:
		return fail(Unsupported, "reference %s: only same-document references are supported", name)
	}
	if t, _ := ref.Attr("Type"); t == TypeSignedProperties {
		if target == nil || target != sp {
			return fail(Manipulated, "signature wrapping: the SignedProperties reference %s does not name this signature's xades:SignedProperties", name)
		}
		*spRefs++
	} else if target == sp && target != nil {
		return fail(Manipulated, "reference %s names the SignedProperties without Type %s", name, TypeSignedProperties)
	}
	method := xmltree.Method{} // default: C14N 1.0 without comments
	var exclude *xmltree.Node
	for k, tr := range transforms {
		if !tr.Is(NSDS, "Transform") {
			return fail(Manipulated, "reference %s: unexpected %s in Transforms", name, tr.Local)
		}
		a, _ := tr.Attr("Algorithm")
		switch {
		case a == AlgEnveloped && k == 0:
			exclude = v.sig
		default:
			m, r := c14nMethod(tr)
			if r != nil {
				r.Reason = "reference " + name + ": " + r.Reason
				return r
			}
			if k != len(transforms)-1 {
				return fail(Unsupported, "reference %s: transforms after canonicalization are not supported", name)
			}
			method = m
		}
	}
	if target == nil && exclude == nil {
		return fail(Manipulated, "reference %s covers the document without the enveloped-signature transform", name)
	}
	if !digest {
		return nil
	}
	// Same-document references are without comments, whatever the
	// canonicalization (XMLDSig §4.4.3.3); #xpointer forms are refused.
	method.WithComments = false
	data, err := v.doc.Canonical(method, target, exclude)
	if err != nil {
		return fail(Unsupported, "reference %s: %v", name, err)
	}
	hh := h.New()
	hh.Write(data)
	if !bytes.Equal(hh.Sum(nil), want) {
		return &Result{Status: Manipulated, Reference: uri, Reason: fmt.Sprintf("the digest of reference %s does not match: the content was changed after signing", name)}
	}
	return nil
}

func c14nMethod(n *xmltree.Node) (xmltree.Method, *Result) {
	a, _ := n.Attr("Algorithm")
	m, err := xmltree.MethodFor(a)
	if err != nil {
		return m, fail(Unsupported, "%s %q is not a supported canonicalization or transform", n.Local, a)
	}
	for _, c := range n.Elements() {
		if m.Exclusive && c.Is(NSExcC, "InclusiveNamespaces") {
			pl, _ := c.Attr("PrefixList")
			m.InclusivePrefixes = strings.Fields(pl)
			continue
		}
		return m, fail(Unsupported, "%s: unexpected parameter %s", n.Local, c.Local)
	}
	return m, nil
}

// signingCertificate finds the certificate SigningCertificateV2 names.
func (v *verifier) signingCertificate(ssp *xmltree.Node, certs []*x509.Certificate) (*x509.Certificate, *Result) {
	scv2 := ssp.Child(NSXAdES, "SigningCertificateV2")
	if scv2 == nil {
		if ssp.Child(NSXAdES, "SigningCertificate") != nil {
			return nil, fail(Unsupported, "xades:SigningCertificate (v1, SHA-1 era) is not accepted; XAdES baseline-B uses SigningCertificateV2")
		}
		return nil, fail(Unsupported, "no xades:SigningCertificateV2")
	}
	cert := scv2.Child(NSXAdES, "Cert")
	if cert == nil || len(scv2.Elements()) != 1 {
		return nil, fail(Manipulated, "xades:SigningCertificateV2 at line %d must name exactly one certificate", scv2.Line)
	}
	cd := cert.Child(NSXAdES, "CertDigest")
	if cd == nil {
		return nil, fail(Manipulated, "xades:Cert without CertDigest")
	}
	dmNode, dvNode := cd.Child(NSDS, "DigestMethod"), cd.Child(NSDS, "DigestValue")
	if dmNode == nil || dvNode == nil {
		return nil, fail(Manipulated, "xades:CertDigest without DigestMethod and DigestValue")
	}
	dm, _ := dmNode.Attr("Algorithm")
	h, ok := digests[dm]
	if !ok {
		if w, isWeak := weak[dm]; isWeak {
			return nil, fail(Unsupported, "SigningCertificateV2: %s are not accepted", w)
		}
		return nil, fail(Unsupported, "SigningCertificateV2 digest method %q is not supported", dm)
	}
	want, err := decodeB64(dvNode.Text())
	if err != nil {
		return nil, fail(Manipulated, "SigningCertificateV2 DigestValue is not base64")
	}
	var signer *x509.Certificate
	for _, c := range certs {
		hh := h.New()
		hh.Write(c.Raw)
		if bytes.Equal(hh.Sum(nil), want) {
			signer = c
			break
		}
	}
	if signer == nil {
		if len(certs) == 0 {
			return nil, fail(Untrusted, "no signer certificate: KeyInfo and CertificateValues carry none; give it with --intermediates")
		}
		return nil, &Result{Status: Manipulated, Reference: "SigningCertificateV2", Reason: "the SigningCertificateV2 digest matches no certificate of the signature"}
	}
	if isn := cert.Child(NSXAdES, "IssuerSerialV2"); isn != nil {
		der, err := decodeB64(isn.Text())
		if err != nil {
			return nil, fail(Manipulated, "IssuerSerialV2 is not base64")
		}
		issuer, serial, err := parseIssuerSerialV2(der)
		if err != nil {
			return nil, fail(Manipulated, "%v", err)
		}
		if serial.Cmp(signer.SerialNumber) != 0 || !bytes.Equal(issuer, signer.RawIssuer) {
			return nil, &Result{Status: Manipulated, Reference: "SigningCertificateV2", Reason: "IssuerSerialV2 does not name the signer certificate"}
		}
	}
	return signer, nil
}

func checkSignature(c *x509.Certificate, alg sigAlg, data, value []byte) *Result {
	hh := alg.hash.New()
	hh.Write(data)
	d := hh.Sum(nil)
	switch pub := c.PublicKey.(type) {
	case *ecdsa.PublicKey:
		if !alg.ecdsa {
			return fail(Manipulated, "the signature method is RSA but the signer key is ECDSA")
		}
		n := (pub.Curve.Params().BitSize + 7) / 8
		if len(value) != 2*n {
			return fail(Unsupported, "the ECDSA signature value has %d bytes, want r‖s of %d (a DER signature is not XMLDSig)", len(value), 2*n)
		}
		r, s := new(big.Int).SetBytes(value[:n]), new(big.Int).SetBytes(value[n:])
		if !ecdsa.Verify(pub, d, r, s) {
			return &Result{Status: Manipulated, Reference: "SignedInfo", Reason: "the signature value does not verify: SignedInfo was changed or signed by another key"}
		}
	case *rsa.PublicKey:
		if alg.ecdsa {
			return fail(Manipulated, "the signature method is ECDSA but the signer key is RSA")
		}
		if pub.N.BitLen() < 2048 {
			return fail(Untrusted, "the signer's RSA key has %d bits, at least 2048 are required", pub.N.BitLen())
		}
		if rsa.VerifyPKCS1v15(pub, crypto.Hash(alg.hash), d, value) != nil {
			return &Result{Status: Manipulated, Reference: "SignedInfo", Reason: "the signature value does not verify: SignedInfo was changed or signed by another key"}
		}
	default:
		return fail(Unsupported, "signer key type %T is not supported", c.PublicKey)
	}
	return nil
}

func decodeB64(s string) ([]byte, error) {
	s = strings.Map(func(r rune) rune {
		if r == ' ' || r == '\t' || r == '\n' || r == '\r' {
			return -1
		}
		return r
	}, s)
	return base64.StdEncoding.DecodeString(s)
}

func parseCertB64(n *xmltree.Node) (*x509.Certificate, *Result) {
	der, err := decodeB64(n.Text())
	if err != nil {
		return nil, fail(Manipulated, "%s at line %d is not base64", n.Local, n.Line)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fail(Manipulated, "%s at line %d: %v", n.Local, n.Line, err)
	}
	return c, nil
}
