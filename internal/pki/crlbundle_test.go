package pki

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestCRLBundle(t *testing.T) {
	p := newTestPKI(t, Options{})
	ctx := t.Context()
	d, _ := issue(t, p.t, "ms-1/acc-1/dev-1")
	if _, err := p.t.RevokeName(ctx, "ms-1/acc-1/dev-1", false, 1); err != nil {
		t.Fatal(err)
	}
	crls, err := p.t.CRLs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	der, err := EncodeCRLBundle(crls)
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseCRLBundle(der)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(crls) {
		t.Fatalf("%d CRLs back, want %d", len(got), len(crls))
	}
	for i := range got {
		if !bytes.Equal(got[i].Raw, crls[i].Raw) {
			t.Fatalf("CRL %d differs", i)
		}
	}
	// OpenSSL reads the bundle and sees the revoked serial.
	openssl := requireTool(t, "openssl")
	f := filepath.Join(t.TempDir(), "bundle.der")
	os.WriteFile(f, der, 0o644)
	out, err := exec.Command(openssl, "pkcs7", "-inform", "DER", "-in", f, "-print_certs", "-text", "-noout").CombinedOutput()
	if err != nil {
		t.Fatalf("openssl pkcs7: %v\n%s", err, out)
	}
	if !strings.Contains(strings.ToUpper(string(out)), strings.ToUpper(SerialHex(d.Cert.SerialNumber))) {
		t.Fatalf("openssl does not list the revoked serial:\n%s", out)
	}
	// And we read what 'openssl crl2pkcs7' writes (it takes one CRL).
	last := crls[len(crls)-1]
	in := filepath.Join(t.TempDir(), "crl.pem")
	os.WriteFile(in, EncodeCRLPEM(last), 0o644)
	cmd := exec.Command(openssl, "crl2pkcs7", "-in", in, "-outform", "DER")
	theirs, err := cmd.Output()
	if err != nil {
		t.Fatalf("openssl crl2pkcs7: %v", err)
	}
	got, err = ParseCRLBundle(theirs)
	if err != nil || len(got) != 1 || !bytes.Equal(got[0].Raw, last.Raw) {
		t.Fatalf("parse openssl bundle: %d CRLs, %v", len(got), err)
	}
}

func FuzzParseCRLBundle(f *testing.F) {
	f.Add([]byte{0x30, 0x00})
	f.Add([]byte{})
	empty, _ := EncodeCRLBundle(nil)
	f.Add(empty)
	f.Fuzz(func(t *testing.T, der []byte) {
		crls, err := ParseCRLBundle(der)
		if err == nil {
			for _, c := range crls {
				if c == nil {
					t.Fatal("nil CRL without error")
				}
			}
		}
	})
}
