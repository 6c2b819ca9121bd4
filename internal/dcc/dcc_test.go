package dcc

import (
	"bytes"
	"context"
	"crypto/x509"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/dcc/dcctest"
	"github.com/fieldtrust/fieldtrust/internal/dcc/xades"
	"github.com/fieldtrust/fieldtrust/internal/envelope"
)

func TestExtract(t *testing.T) {
	doc, err := Parse(dcctest.Sample(t, "testdata", "DCC-1", "SN-42"))
	if err != nil {
		t.Fatal(err)
	}
	md, err := Extract(doc)
	if err != nil {
		t.Fatal(err)
	}
	if md.ID != "DCC-1" || md.SchemaVersion != "3.2.0" || md.Lab == "" || md.PerformanceDate == "" {
		t.Fatalf("%+v", md)
	}
	found := false
	for _, e := range md.Equipment {
		found = found || (e == EquipmentID{Issuer: "manufacturer", Value: "SN-42"})
	}
	if !found {
		t.Fatalf("equipment %+v", md.Equipment)
	}
}

func TestSignRefusesOldOrInvalid(t *testing.T) {
	l := dcctest.NewLab(t, "Lab A", false)
	old, _ := os.ReadFile("testdata/pydcc/dcc_gp_temperature_typical_v12.xml")
	if _, err := Sign(old, l.Key, []*x509.Certificate{l.Leaf}, l.Leaf.NotBefore); err == nil || !strings.Contains(err.Error(), "3.2.0") {
		t.Errorf("3.1.1: %v", err)
	}
	bad := bytes.Replace(dcctest.Sample(t, "testdata", "", ""), []byte("<dcc:coreData>"), []byte("<dcc:coreData><dcc:x/>"), 1)
	if _, err := Sign(bad, l.Key, []*x509.Certificate{l.Leaf}, l.Leaf.NotBefore); err == nil || !strings.Contains(err.Error(), "does not validate") {
		t.Errorf("invalid: %v", err)
	}
	// Verify reports schema errors of a signed but invalid document.
	if r := Verify(bad, xades.VerifyOptions{}); r.Status != xades.SchemaInvalid || len(r.SchemaErrors) == 0 || r.SchemaErrors[0].Line == 0 {
		t.Errorf("verify invalid: %+v", r)
	}
	if r := Verify([]byte(`<!DOCTYPE x [<!ENTITY a "b">]><x/>`), xades.VerifyOptions{}); r.Status != xades.Unsupported {
		t.Errorf("DTD: %+v", r)
	}
}

// TestSealOpen: sign, seal for the client (and the registry), open and
// verify both signatures; OpenSSL verifies the lab's envelope signature
// and decrypts the envelope to the very bytes that were signed.
func TestSealOpen(t *testing.T) {
	l := dcctest.NewLab(t, "Lab A", false)
	client, clientKey := l.Recipient(t, "client")
	reg, regKey := l.Recipient(t, "registry")
	signed, err := Sign(dcctest.Sample(t, "testdata", "", ""), l.Key, []*x509.Certificate{l.Leaf, l.Sub}, l.Leaf.NotBefore.Add(10*60e9))
	if err != nil {
		t.Fatal(err)
	}
	lab := &envelope.Signer{Cert: l.Leaf, Key: l.Key, Chain: []*x509.Certificate{l.Sub}, EmbedCerts: true}
	sealed, err := Seal(signed, []*x509.Certificate{client, reg}, lab)
	if err != nil {
		t.Fatal(err)
	}
	opts := xades.VerifyOptions{Roots: []*x509.Certificate{l.Root}}
	for _, k := range []struct {
		c *x509.Certificate
		k any
	}{{client, clientKey}, {reg, regKey}} {
		o, err := Open(context.Background(), sealed, k.c, k.k, opts)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(o.DCC, signed) || o.Report.Status != xades.Valid {
			t.Fatalf("opened %s", o.Report.Status)
		}
	}
	other := dcctest.NewLab(t, "Lab B", false)
	if _, err := Open(context.Background(), sealed, client, clientKey, xades.VerifyOptions{Roots: []*x509.Certificate{other.Root}}); err == nil {
		t.Fatal("opened with a foreign root")
	}

	bin, err := exec.LookPath("openssl")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("openssl is needed")
		}
		t.Skip("no openssl")
	}
	dir := t.TempDir()
	in := filepath.Join(dir, "sealed.der")
	os.WriteFile(in, sealed, 0o600)
	root := dcctest.WritePEM(t, dir, "root.pem", l.Root)
	cp := dcctest.WritePEM(t, dir, "client.pem", client)
	kp := dcctest.WritePEM(t, dir, "client.key", clientKey)
	env := filepath.Join(dir, "env.der")
	if out, err := exec.Command(bin, "cms", "-verify", "-inform", "DER", "-in", in, "-binary", "-CAfile", root, "-purpose", "any", "-out", env).CombinedOutput(); err != nil {
		t.Fatalf("openssl cms -verify: %v\n%s", err, out)
	}
	plain := filepath.Join(dir, "dcc.xml")
	if out, err := exec.Command(bin, "cms", "-decrypt", "-inform", "DER", "-in", env, "-recip", cp, "-inkey", kp, "-out", plain).CombinedOutput(); err != nil {
		t.Fatalf("openssl cms -decrypt: %v\n%s", err, out)
	}
	got, _ := os.ReadFile(plain)
	if !bytes.Equal(got, signed) {
		t.Fatal("OpenSSL's plaintext differs from the signed DCC")
	}
}

// FuzzDCCVerify: the whole verification — parse, metadata extraction
// (which reads any well-formed document, before the schema), schema
// validation and the signature — never panics, always gives a status, and
// says valid only with the metadata the registry records.
func FuzzDCCVerify(f *testing.F) {
	l := dcctest.NewLab(f, "Fuzz Lab", false)
	src := dcctest.Sample(f, "testdata", "DCC-F", "SN-F")
	f.Add(src)
	if signed, err := Sign(src, l.Key, []*x509.Certificate{l.Leaf, l.Sub}, l.Leaf.NotBefore.Add(time.Minute)); err == nil {
		f.Add(signed)
	}
	for _, p := range []string{"signed.xml", "signed_manipulated.xml"} {
		if b, err := os.ReadFile("testdata/pydcc/dcc_gp_temperature_typical_v12_v3.2.0_" + p); err == nil {
			f.Add(b)
		}
	}
	roots := []*x509.Certificate{l.Root}
	f.Fuzz(func(t *testing.T, b []byte) {
		r := Verify(b, xades.VerifyOptions{Roots: roots})
		if r.Status == "" {
			t.Fatal("no status")
		}
		if r.Status == xades.Valid && r.Metadata == nil {
			t.Fatal("valid without metadata")
		}
		if md := r.Metadata; md != nil {
			md.Performed()
			md.Due()
		}
	})
}
