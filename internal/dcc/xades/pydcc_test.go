package xades

import (
	"crypto/x509"
	"encoding/pem"
	"os"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/dcc/xmltree"
)

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if p, _ := pem.Decode(b); p != nil {
		b = p.Bytes
	}
	c, err := x509.ParseCertificate(b)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func parseFile(t *testing.T, path string) *xmltree.Document {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	d, err := xmltree.Parse(b, xmltree.DefaultLimits)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestPublicSignedDCCs: the signed DCCs PTB's community published with
// pydcc verify with the outcome their names promise.
func TestPublicSignedDCCs(t *testing.T) {
	const dir = "../testdata/pydcc/"
	root := readCert(t, dir+"root.crt")
	sub := readCert(t, dir+"sub.crt")
	for _, tc := range []struct {
		file string
		want Status
		at   time.Time
	}{
		{"dcc_gp_temperature_typical_v12_v3.2.0_signed.xml", Valid, time.Time{}},
		{"dcc_gp_temperature_typical_v12_signed.xml", Valid, time.Time{}},
		{"dcc_gp_temperature_typical_v12_v3.2.0_signed_lt.xml", Valid, time.Time{}},
		{"dcc_gp_temperature_typical_v12_v3.2.0_signed_lt_revoked.xml", Revoked, time.Time{}},
		{"dcc_gp_temperature_typical_v12_v3.2.0_signed_manipulated.xml", Manipulated, time.Time{}},
		{"dcc_gp_temperature_typical_v12_signed_manipulated.xml", Manipulated, time.Time{}},
		// Today the lab certificates have expired: verifying now, not at
		// the signing time, is untrusted.
		{"dcc_gp_temperature_typical_v12_v3.2.0_signed.xml", Untrusted, time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)},
	} {
		r := Verify(parseFile(t, dir+tc.file), VerifyOptions{Roots: []*x509.Certificate{root}, Intermediates: []*x509.Certificate{sub}, At: tc.at})
		if r.Status != tc.want {
			t.Errorf("%s: %s (%s), want %s", tc.file, r.Status, r.Reason, tc.want)
		} else {
			t.Logf("%s: %s: %s", tc.file, r.Status, r.Reason)
		}
	}
}
