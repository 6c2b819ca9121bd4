package xades

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/dcc/xmltree"
)

// lab is a test PKI: root → sub CA → signer.
type lab struct {
	root, sub, leaf *x509.Certificate
	subKey          crypto.Signer
	key             crypto.Signer
}

func mkcert(t testing.TB, tmpl, parent *x509.Certificate, pub crypto.PublicKey, signer crypto.Signer) *x509.Certificate {
	t.Helper()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c
}

var serial int64 = 100

func newLab(t testing.TB, name string, rsaLeaf bool) *lab {
	t.Helper()
	now := time.Now()
	ca := func(cn string) *x509.Certificate {
		serial++
		return &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn, Organization: []string{name}},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
			KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	}
	rk, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	rt := ca(name + " Root")
	root := mkcert(t, rt, rt, rk.Public(), rk)
	sk, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	sub := mkcert(t, ca(name+" Sub CA"), root, sk.Public(), rk)
	var key crypto.Signer
	if rsaLeaf {
		key, _ = rsa.GenerateKey(rand.Reader, 2048)
	} else {
		key, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	}
	serial++
	lt := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name + " signer", Organization: []string{name}},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(12 * time.Hour), KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageContentCommitment}
	leaf := mkcert(t, lt, sub, key.Public(), sk)
	return &lab{root: root, sub: sub, leaf: leaf, subKey: sk, key: key}
}

func (l *lab) opts() VerifyOptions {
	return VerifyOptions{Roots: []*x509.Certificate{l.root}}
}

func sample(t testing.TB) []byte {
	b, err := os.ReadFile("../testdata/pydcc/dcc_gp_temperature_typical_v12.xml")
	if err != nil {
		t.Fatal(err)
	}
	// As a 3.2.0 document (the version with a signature slot).
	return []byte(strings.ReplaceAll(string(b), "3.1.1", "3.2.0"))
}

func mustParse(t testing.TB, b []byte) *xmltree.Document {
	t.Helper()
	d, err := xmltree.Parse(b, xmltree.DefaultLimits)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestSignVerifyRoundTrip(t *testing.T) {
	for _, rsaKey := range []bool{false, true} {
		l := newLab(t, "Lab A", rsaKey)
		src := sample(t)
		signed, err := Sign(src, l.key, []*x509.Certificate{l.leaf, l.sub}, SignOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(string(signed), string(src[:len(src)-60])) {
			t.Fatal("signing re-serialized the document")
		}
		r := Verify(mustParse(t, signed), l.opts())
		if r.Status != Valid {
			t.Fatalf("rsa=%v: %s: %s", rsaKey, r.Status, r.Reason)
		}
		// Another lab's root does not vouch for it.
		other := newLab(t, "Lab B", false)
		if r := Verify(mustParse(t, signed), other.opts()); r.Status != Untrusted {
			t.Errorf("foreign root: %s %s", r.Status, r.Reason)
		}
		if _, err := Sign(signed, l.key, []*x509.Certificate{l.leaf}, SignOptions{}); err == nil {
			t.Error("signed a signed document again")
		}
	}
}

// TestManipulationCaught: changing any element, attribute or text of a
// signed DCC, or of its signed properties, is caught and the failing
// reference named.
func TestManipulationCaught(t *testing.T) {
	l := newLab(t, "Lab A", false)
	signed, err := Sign(sample(t), l.key, []*x509.Certificate{l.leaf, l.sub}, SignOptions{})
	if err != nil {
		t.Fatal(err)
	}
	doc := mustParse(t, signed)
	// Every text node of the document (outside the signature) changed in
	// turn must fail the document reference.
	var texts []*xmltree.Node
	sig := findSignatures(doc.Root)[0]
	doc.Root.Walk(func(n *xmltree.Node) bool {
		if n == sig {
			return false
		}
		for _, c := range n.Children {
			if c.Kind == xmltree.Text && strings.TrimSpace(c.Data) != "" {
				texts = append(texts, c)
			}
		}
		return true
	})
	if len(texts) < 50 {
		t.Fatalf("only %d texts", len(texts))
	}
	for i, tx := range texts {
		orig := tx.Data
		tx.Data = orig + "x"
		r := Verify(doc, l.opts())
		tx.Data = orig
		if r.Status != Manipulated || r.Reference != "" {
			t.Fatalf("text %d (line %d) changed: %s %q %s", i, tx.Line, r.Status, r.Reference, r.Reason)
		}
	}
	s := string(signed)
	for _, tc := range []struct {
		name, old, new, ref string
		want                Status
	}{
		{"attribute", `schemaVersion="3.2.0"`, `schemaVersion="3.2.1"`, "", Manipulated},
		{"signing time", "<xades:SigningTime>", "<xades:SigningTime>1", "#xades-", Manipulated},
		{"signature value", `<ds:SignatureValue Id="value-id-`, `<ds:SignatureValue Id="value-id-x`, "", Valid}, // Id of SignatureValue is not signed
		{"SHA-1 digest", AlgSHA256 + `"/><ds:DigestValue>`, AlgSHA1 + `"/><ds:DigestValue>`, "", Unsupported},
		{"unknown signature method", AlgECDSA256, "urn:x-unknown", "", Unsupported},
	} {
		m := strings.Replace(s, tc.old, tc.new, 1)
		if m == s {
			t.Fatalf("%s: nothing replaced", tc.name)
		}
		r := Verify(mustParse(t, []byte(m)), l.opts())
		if r.Status != tc.want || (tc.ref != "" && !strings.HasPrefix(r.Reference, tc.ref)) {
			t.Errorf("%s: %s %q (%s), want %s %q", tc.name, r.Status, r.Reference, r.Reason, tc.want, tc.ref)
		}
	}
}

// TestSignatureWrapping: moved references, a second signed element, a
// SignedProperties elsewhere and a second signature are refused.
func TestSignatureWrapping(t *testing.T) {
	l := newLab(t, "Lab A", false)
	signed, err := Sign(sample(t), l.key, []*x509.Certificate{l.leaf, l.sub}, SignOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s := string(signed)
	spID := regexp.MustCompile(`SignedProperties Id="([^"]+)"`).FindStringSubmatch(s)[1]
	sigStart := strings.Index(s, "<ds:Signature ")
	sigEnd := strings.Index(s, "</ds:Signature>") + len("</ds:Signature>")
	sigXML := s[sigStart:sigEnd]
	sp := regexp.MustCompile(`<xades:SignedProperties .*</xades:SignedProperties>`).FindString(s)
	coreData := "<dcc:coreData>"
	for _, tc := range []struct{ name, doc, want string }{
		{"second signature", strings.Replace(s, coreData, coreData+strings.Replace(sigXML, "Id=\"id-", "Id=\"x-", -1), 1), "2 ds:Signature"},
		{"signature not last", strings.Replace(s[:sigStart]+s[sigEnd:], "</dcc:administrativeData>", "</dcc:administrativeData>"+sigXML, 1), "not the last child"},
		{"copied SignedProperties with the same Id", strings.Replace(s, coreData, coreData+`<x xmlns:ds="`+NSDS+`" xmlns:xades="`+NSXAdES+`">`+sp+`</x>`, 1), "names 2 elements"},
		{"SignedProperties moved out of the signature", strings.Replace(strings.Replace(s, sp, "", 1), coreData, coreData+`<x xmlns:ds="`+NSDS+`" xmlns:xades="`+NSXAdES+`">`+sp+`</x>`, 1), "does not name this signature"},
		{"reference to a missing element", strings.Replace(s, `URI="#`+spID+`"`, `URI="#nothing"`, 1), "names no element"},
		{"external reference", strings.Replace(s, `URI="#`+spID+`"`, `URI="http://127.0.0.1/x"`, 1), "same-document"},
		{"QualifyingProperties for another signature", strings.Replace(s, `Target="#id-`, `Target="#other-`, 1), "targets"},
	} {
		r := Verify(mustParse(t, []byte(tc.doc)), l.opts())
		if r.Status == Valid || !strings.Contains(r.Reason, tc.want) {
			t.Errorf("%s: %s: %s (want %q)", tc.name, r.Status, r.Reason, tc.want)
		}
	}
}

// TestRevokedAtSigningTime: a CRL revoking the signer after the signing
// time leaves the DCC valid; revoked before, it is revoked since then.
func TestRevokedAtSigningTime(t *testing.T) {
	l := newLab(t, "Lab A", false)
	st := time.Now().Add(-30 * time.Minute).Truncate(time.Second)
	signed, err := Sign(sample(t), l.key, []*x509.Certificate{l.leaf, l.sub}, SignOptions{Time: st})
	if err != nil {
		t.Fatal(err)
	}
	crl := func(at time.Time) *x509.RevocationList {
		der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{Number: big.NewInt(1), ThisUpdate: time.Now().Add(-time.Minute), NextUpdate: time.Now().Add(time.Hour),
			RevokedCertificateEntries: []x509.RevocationListEntry{{SerialNumber: l.leaf.SerialNumber, RevocationTime: at, ReasonCode: 1}}}, l.sub, l.subKey)
		if err != nil {
			t.Fatal(err)
		}
		c, _ := x509.ParseRevocationList(der)
		return c
	}
	o := l.opts()
	o.CRLs = []*x509.RevocationList{crl(st.Add(time.Minute))}
	if r := Verify(mustParse(t, signed), o); r.Status != Valid {
		t.Errorf("revoked after signing: %s %s", r.Status, r.Reason)
	}
	o.CRLs = []*x509.RevocationList{crl(st.Add(-time.Minute))}
	if r := Verify(mustParse(t, signed), o); r.Status != Revoked || !r.RevokedAt.Equal(st.Add(-time.Minute)) {
		t.Errorf("revoked before signing: %s %s", r.Status, r.Reason)
	}
	// A CRL not signed by the issuer is ignored.
	other := newLab(t, "Lab B", false)
	der, _ := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{Number: big.NewInt(1), ThisUpdate: time.Now(), NextUpdate: time.Now().Add(time.Hour),
		RevokedCertificateEntries: []x509.RevocationListEntry{{SerialNumber: l.leaf.SerialNumber, RevocationTime: st.Add(-time.Hour)}}}, other.sub, other.subKey)
	forged, _ := x509.ParseRevocationList(der)
	o.CRLs = []*x509.RevocationList{forged}
	if r := Verify(mustParse(t, signed), o); r.Status != Valid {
		t.Errorf("forged CRL: %s %s", r.Status, r.Reason)
	}
}

func writePEM(t testing.TB, path, typ string, der ...[]byte) {
	t.Helper()
	var b []byte
	for _, d := range der {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: d})...)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func xmlsec1(t testing.TB) string {
	p, err := exec.LookPath("xmlsec1")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("xmlsec1 is needed: run scripts/deps.sh")
		}
		t.Skip("xmlsec1 not installed")
	}
	return p
}

// TestXmlsec1 proves interoperability both ways with xmlsec1 (libxmlsec1,
// OpenSSL backend): it verifies our signatures, and we verify the
// signatures it computes over a XAdES template.
func TestXmlsec1(t *testing.T) {
	bin := xmlsec1(t)
	dir := t.TempDir()
	for _, rsaKey := range []bool{false, true} {
		l := newLab(t, "Lab A", rsaKey)
		writePEM(t, filepath.Join(dir, "root.pem"), "CERTIFICATE", l.root.Raw)
		writePEM(t, filepath.Join(dir, "sub.pem"), "CERTIFICATE", l.sub.Raw)
		writePEM(t, filepath.Join(dir, "leaf.pem"), "CERTIFICATE", l.leaf.Raw)
		pk, _ := x509.MarshalPKCS8PrivateKey(l.key)
		writePEM(t, filepath.Join(dir, "key.pem"), "PRIVATE KEY", pk)
		signed, err := Sign(sample(t), l.key, []*x509.Certificate{l.leaf, l.sub}, SignOptions{})
		if err != nil {
			t.Fatal(err)
		}
		ours := filepath.Join(dir, "ours.xml")
		os.WriteFile(ours, signed, 0o600)
		idAttr := "--id-attr:Id"
		spNode := NSXAdES + ":SignedProperties"
		out, err := exec.Command(bin, "--verify", "--trusted-pem", filepath.Join(dir, "root.pem"), "--untrusted-pem", filepath.Join(dir, "sub.pem"),
			idAttr, spNode, ours).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "OK") {
			t.Fatalf("rsa=%v: xmlsec1 does not verify ours: %v\n%s", rsaKey, err, out)
		}
		// A manipulated copy fails in xmlsec1 too (so the check above
		// means something).
		os.WriteFile(ours, []byte(strings.Replace(string(signed), "<dcc:countryCodeISO3166_1>", "<dcc:countryCodeISO3166_1>X", 1)), 0o600)
		if out, err := exec.Command(bin, "--verify", "--trusted-pem", filepath.Join(dir, "root.pem"), "--untrusted-pem", filepath.Join(dir, "sub.pem"), idAttr, spNode, ours).CombinedOutput(); err == nil {
			t.Fatalf("xmlsec1 verified a manipulated document:\n%s", out)
		}

		// xmlsec1 signs: our signed document as a template.
		tmpl := xmlsec1Template(signed, l.leaf)
		in, theirs := filepath.Join(dir, "tmpl.xml"), filepath.Join(dir, "theirs.xml")
		os.WriteFile(in, []byte(tmpl), 0o600)
		out, err = exec.Command(bin, "--sign", "--privkey-pem", filepath.Join(dir, "key.pem")+","+filepath.Join(dir, "leaf.pem"),
			idAttr, spNode, "--output", theirs, in).CombinedOutput()
		if err != nil {
			t.Fatalf("xmlsec1 --sign: %v\n%s", err, out)
		}
		b, _ := os.ReadFile(theirs)
		sv := regexp.MustCompile(`<ds:SignatureValue[^>]*>([^<]+)<`)
		if m := sv.FindSubmatch(b); m == nil || string(m[1]) == string(sv.FindSubmatch(signed)[1]) {
			t.Fatal("xmlsec1 did not sign")
		}
		o := l.opts()
		o.Intermediates = []*x509.Certificate{l.sub}
		if r := Verify(mustParse(t, b), o); r.Status != Valid {
			t.Fatalf("rsa=%v: we do not verify xmlsec1's signature: %s %s", rsaKey, r.Status, r.Reason)
		}
	}
}

// xmlsec1Template is a document we signed as a template for xmlsec1
// --sign: its digests, signature value and certificates emptied (the
// SigningCertificateV2 digest stays: it is content, not computed by
// xmlsec1).
func xmlsec1Template(signed []byte, leaf *x509.Certificate) string {
	tmpl := regexp.MustCompile(`<ds:DigestValue>[^<]*</ds:DigestValue>`).ReplaceAllStringFunc(string(signed), func(m string) string {
		if strings.Contains(m, "DigestValue>"+b64sha256(leaf.Raw)) {
			return m
		}
		return "<ds:DigestValue></ds:DigestValue>"
	})
	tmpl = regexp.MustCompile(`(<ds:SignatureValue[^>]*>)[^<]*`).ReplaceAllString(tmpl, "$1")
	return regexp.MustCompile(`<ds:X509Data>.*</ds:X509Data>`).ReplaceAllString(tmpl, "<ds:X509Data><ds:X509Certificate/></ds:X509Data>")
}

func b64sha256(b []byte) string {
	h := crypto.SHA256.New()
	h.Write(b)
	return b64(h.Sum(nil))
}

// FuzzVerify: the verifier never panics on any document, and a signed
// document changed anywhere never verifies as valid unless unchanged in
// what is signed.
func FuzzVerify(f *testing.F) {
	l := newLab(f, "Fuzz Lab", false)
	signed, err := Sign(sample(f), l.key, []*x509.Certificate{l.leaf, l.sub}, SignOptions{})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(signed)
	for _, p := range []string{"lt", "lt_revoked", "manipulated"} {
		if b, err := os.ReadFile("../testdata/pydcc/dcc_gp_temperature_typical_v12_v3.2.0_signed_" + p + ".xml"); err == nil {
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		doc, err := xmltree.Parse(b, xmltree.DefaultLimits)
		if err != nil {
			return
		}
		r := Verify(doc, l.opts())
		if r.Status == "" {
			t.Fatal("no status")
		}
	})
}
