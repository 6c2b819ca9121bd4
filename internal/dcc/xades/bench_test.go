package xades

import (
	"crypto/x509"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fieldtrust/fieldtrust/internal/dcc/xmltree"
)

// bigSample is the sample DCC with its measurement result repeated until
// the document has at least size bytes: a DCC with many measurement
// results (each a table of reference and measured values with
// uncertainties), as a lab's large certificate is.
func bigSample(tb testing.TB, size int) []byte {
	s := string(sample(tb))
	i := strings.Index(s, `<dcc:result refType="gp_measuringResult1">`)
	j := strings.Index(s, "</dcc:results>")
	if i < 0 || j < i {
		tb.Fatal("sample without a result")
	}
	var b strings.Builder
	b.WriteString(s[:j])
	for b.Len()+len(s)-j < size {
		b.WriteString(s[i:j])
	}
	b.WriteString(s[j:])
	return []byte(b.String())
}

var benchSizes = []struct {
	name string
	size int
}{{"50KB", 50 << 10}, {"500KB", 500 << 10}, {"5MB", 5 << 20}}

// benchFixture is a lab, a large DCC signed by us, a template of it for
// xmlsec1, and the files xmlsec1 reads.
type benchFixture struct {
	lab                                *lab
	src, signed                        []byte
	dir, root, sub, key, ours, tmplXML string
}

func newBenchFixture(b *testing.B, size int) *benchFixture {
	b.Helper()
	f := &benchFixture{lab: newLab(b, "Bench Lab", false), src: bigSample(b, size), dir: b.TempDir()}
	var err error
	if f.signed, err = Sign(f.src, f.lab.key, []*x509.Certificate{f.lab.leaf, f.lab.sub}, SignOptions{}); err != nil {
		b.Fatal(err)
	}
	if r := Verify(mustParse(b, f.signed), f.lab.opts()); r.Status != Valid {
		b.Fatalf("%s %s", r.Status, r.Reason)
	}
	f.root, f.sub, f.key = filepath.Join(f.dir, "root.pem"), filepath.Join(f.dir, "sub.pem"), filepath.Join(f.dir, "key.pem")
	writePEM(b, f.root, "CERTIFICATE", f.lab.root.Raw)
	writePEM(b, f.sub, "CERTIFICATE", f.lab.sub.Raw)
	writePEM(b, filepath.Join(f.dir, "leaf.pem"), "CERTIFICATE", f.lab.leaf.Raw)
	pk, _ := x509.MarshalPKCS8PrivateKey(f.lab.key)
	writePEM(b, f.key, "PRIVATE KEY", pk)
	f.ours, f.tmplXML = filepath.Join(f.dir, "ours.xml"), filepath.Join(f.dir, "tmpl.xml")
	os.WriteFile(f.ours, f.signed, 0o600)
	os.WriteFile(f.tmplXML, []byte(xmlsec1Template(f.signed, f.lab.leaf)), 0o600)
	return f
}

// BenchmarkSign: our XAdES baseline-B signing (ECDSA P-256) of a 50 KB
// and a 5 MB DCC: canonicalization and digest of the whole document,
// the SignedProperties and SignedInfo, one signature.
func BenchmarkSign(b *testing.B) {
	for _, sz := range benchSizes {
		b.Run(sz.name, func(b *testing.B) {
			f := newBenchFixture(b, sz.size)
			b.SetBytes(int64(len(f.src)))
			for b.Loop() {
				if _, err := Sign(f.src, f.lab.key, []*x509.Certificate{f.lab.leaf, f.lab.sub}, SignOptions{}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkVerify: parse (the hardened parser) and verify (references,
// signature, chain at the signing time), as xmlsec1 --verify does.
func BenchmarkVerify(b *testing.B) {
	for _, sz := range benchSizes {
		b.Run(sz.name, func(b *testing.B) {
			f := newBenchFixture(b, sz.size)
			b.SetBytes(int64(len(f.signed)))
			for b.Loop() {
				doc, err := xmltree.Parse(f.signed, xmltree.DefaultLimits)
				if err != nil {
					b.Fatal(err)
				}
				if r := Verify(doc, f.lab.opts()); r.Status != Valid {
					b.Fatal(r.Reason)
				}
			}
		})
	}
}

// runXmlsec1 runs xmlsec1 and fails unless it succeeds.
func runXmlsec1(b *testing.B, bin string, args ...string) {
	if out, err := exec.Command(bin, args...).CombinedOutput(); err != nil {
		b.Fatalf("xmlsec1 %v: %v\n%s", args, err, out)
	}
}

// BenchmarkXmlsec1: xmlsec1 (libxmlsec1, OpenSSL backend) signing and
// verifying the same documents in the same run, one process per
// operation (as a lab's tooling runs it); "start" is the process start
// alone (xmlsec1 --version), to subtract.
func BenchmarkXmlsec1(b *testing.B) {
	bin := xmlsec1(b)
	b.Run("start", func(b *testing.B) {
		for b.Loop() {
			runXmlsec1(b, bin, "--version")
		}
	})
	for _, sz := range benchSizes {
		f := newBenchFixture(b, sz.size)
		theirs := filepath.Join(f.dir, "theirs.xml")
		sign := []string{"--sign", "--privkey-pem", f.key + "," + filepath.Join(f.dir, "leaf.pem"), "--id-attr:Id", NSXAdES + ":SignedProperties", "--output", theirs, f.tmplXML}
		verify := []string{"--verify", "--trusted-pem", f.root, "--untrusted-pem", f.sub, "--id-attr:Id", NSXAdES + ":SignedProperties", f.ours}
		// What it signs, we verify (so the timing is of real work).
		runXmlsec1(b, bin, sign...)
		got, _ := os.ReadFile(theirs)
		o := f.lab.opts()
		o.Intermediates = []*x509.Certificate{f.lab.sub}
		if r := Verify(mustParse(b, got), o); r.Status != Valid {
			b.Fatalf("xmlsec1's %s signature: %s %s", sz.name, r.Status, r.Reason)
		}
		b.Run(fmt.Sprintf("sign/%s", sz.name), func(b *testing.B) {
			b.SetBytes(int64(len(f.src)))
			for b.Loop() {
				runXmlsec1(b, bin, sign...)
			}
		})
		b.Run(fmt.Sprintf("verify/%s", sz.name), func(b *testing.B) {
			b.SetBytes(int64(len(f.signed)))
			for b.Loop() {
				runXmlsec1(b, bin, verify...)
			}
		})
	}
}
