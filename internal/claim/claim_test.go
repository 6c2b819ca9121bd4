package claim

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/store"
)

func manufacturer(t testing.TB, cn string) store.Manufacturer {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return store.Manufacturer{Fingerprint: pki.Fingerprint(c), Subject: c.Subject.String(), NotAfter: c.NotAfter, DER: der}
}

func TestReadCSV(t *testing.T) {
	acme, other := manufacturer(t, "Acme IDevID CA"), manufacturer(t, "Other CA")
	existing := []store.Claim{
		{ClaimKey: store.ClaimKey{Kind: store.ClaimBySubject, Value: "OLD-1", ManufacturerKeyID: mustKeyID(t, acme)}, Path: "ms-1/acc-1/old"},
	}
	one, two := []store.Manufacturer{acme}, []store.Manufacturer{acme, other}
	tests := []struct {
		name     string
		mfrs     []store.Manufacturer
		in       string
		paths    []string // claims accepted, or
		problems []string // every bad line, or
		err      string   // the file is refused as a whole
	}{
		{"serial and subject", one, "path,onboarding_serial,onboarding_subject\nms-1/acc-1/gw-1,0A:0B,\nms-1/acc-1/gw-2,,GW-2\n", []string{"ms-1/acc-1/gw-1", "ms-1/acc-1/gw-2"}, nil, ""},
		{"bom, case, comments, spaces", one, "\ufeffPath, Onboarding_Serial\n# a comment\nms-1/acc-1/gw-1, 01\n", []string{"ms-1/acc-1/gw-1"}, nil, ""},
		{"manufacturer per line with two trusted", two, "path,onboarding_serial,manufacturer\nms-1/acc-1/gw-1,01,Other CA\nms-1/acc-1/gw-2,02," + acme.Fingerprint[:12] + "\n", []string{"ms-1/acc-1/gw-1", "ms-1/acc-1/gw-2"}, nil, ""},
		{"every bad line", one, "path,onboarding_serial,onboarding_subject\n" +
			"ms-1/acc-1/gw-1,0a0b,\n" + // 2 ok
			"ms-1/acc-1,01,\n" + // 3 too short
			"ms-1/acc-1/gw-4,zz,\n" + // 4 bad hex
			"ms-1/acc-1/gw-5,01,GW-5\n" + // 5 both
			"ms-1/acc-1/gw-6,0A0B,\n" + // 6 duplicate of 2
			"ms-1/acc-1/gw-7,,OLD-1\n" + // 7 claimed before
			"ms-1/acc-1/gw-8,,\n" + // 8 neither
			"ms-1/acc-1/gw-9\n" + // 9 fields
			"ms-1/acc-1/gw-10,\"0\"1,\n", // 10 bare quote
			nil, []string{
				"line 3: path \"ms-1/acc-1\" has 2 element(s)",
				"line 4: ",
				"line 5: give either an onboarding serial or an onboarding subject, not both",
				"line 6: onboarding serial 0a0b is also on line 2",
				"line 7: onboarding subject OLD-1 is already claimed for ms-1/acc-1/old",
				"line 8: no onboarding serial or subject",
				"line 9: 1 fields, the header has 3",
				"line 10: ",
			}, ""},
		{"default manufacturer ambiguous", two, "path,onboarding_serial\nms-1/acc-1/gw-1,01\n", nil, []string{"line 2: 2 manufacturer CAs are trusted"}, ""},
		{"unknown manufacturer", one, "path,onboarding_serial,manufacturer\nms-1/acc-1/gw-1,01,Nobody\n", nil, []string{"line 2: manufacturer \"Nobody\" names no trusted manufacturer CA"}, ""},
		{"none trusted", nil, "path,onboarding_serial\nms-1/acc-1/gw-1,01\n", nil, []string{"line 2: no manufacturer CA is trusted"}, ""},
		{"empty", one, "", nil, nil, "f: no header row"},
		{"header only", one, "path,onboarding_serial\n", nil, nil, "f: no claims after the header row"},
		{"unknown column", one, "path,serial\n", nil, nil, "f line 1: unknown column \"serial\""},
		{"column twice", one, "path,path,onboarding_serial\n", nil, nil, "f line 1: column \"path\" twice"},
		{"no path", one, "onboarding_serial\n01\n", nil, nil, "f line 1: no \"path\" column"},
		{"no certificate column", one, "path,manufacturer\n", nil, nil, "f line 1: need a \"onboarding_serial\" or \"onboarding_subject\" column"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, err := ReadCSV(strings.NewReader(tc.in), "f", existing, tc.mfrs, "", time.Now())
			if tc.err != "" {
				if err == nil || !strings.HasPrefix(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(f.Problems) != len(tc.problems) {
				t.Fatalf("problems = %q, want %q", f.Problems, tc.problems)
			}
			for i, p := range tc.problems {
				if !strings.HasPrefix(f.Problems[i], p) {
					t.Errorf("problem %d = %q, want %q…", i, f.Problems[i], p)
				}
			}
			var paths []string
			for _, c := range f.Claims {
				paths = append(paths, c.Path)
				if c.ManufacturerKeyID == "" || c.ManufacturerSubject == "" {
					t.Errorf("claim %s names no manufacturer", c.Path)
				}
			}
			if !slices.Equal(paths, tc.paths) || len(f.Lines) != len(f.Claims) {
				t.Errorf("claims %q (lines %v), want %q", paths, f.Lines, tc.paths)
			}
		})
	}
}

func TestResolveManufacturer(t *testing.T) {
	acme, other := manufacturer(t, "Acme IDevID CA"), manufacturer(t, "Other CA")
	two := []store.Manufacturer{acme, other}
	tests := []struct {
		spec    string
		want    string // subject, or "" for a SpecError
		specErr bool
	}{
		{"Acme IDevID CA", acme.Subject, false},
		{acme.Subject, acme.Subject, false},
		{strings.ToUpper(acme.Fingerprint[:8]), acme.Subject, false},
		{acme.Fingerprint[:7], "", true}, // too short a prefix
		{"", "", true},                   // two trusted
		{"Nobody", "", true},
	}
	for _, tc := range tests {
		m, err := ResolveManufacturer(two, tc.spec)
		_, isSpec := err.(*SpecError)
		if m.Subject != tc.want || isSpec != tc.specErr {
			t.Errorf("ResolveManufacturer(%q) = %q, %v; want %q (spec error %v)", tc.spec, m.Subject, err, tc.want, tc.specErr)
		}
	}
	if m, err := ResolveManufacturer(two[:1], ""); err != nil || m.KeyID != mustKeyID(t, acme) {
		t.Errorf("the only trusted one: %+v, %v", m, err)
	}
	if _, err := ResolveManufacturer(nil, "x"); err == nil {
		t.Error("nothing trusted: no error")
	}
}

func mustKeyID(t testing.TB, m store.Manufacturer) string {
	c, err := x509.ParseCertificate(m.DER)
	if err != nil {
		t.Fatal(err)
	}
	return pki.KeyID(c)
}

// FuzzReadCSV: any file is judged (claims, problems or an error), never a
// panic, and never claims alongside problems.
func FuzzReadCSV(f *testing.F) {
	for _, s := range []string{
		"path,onboarding_serial,onboarding_subject,manufacturer\nms-1/acc-1/gw-1,0a,,\nms-1/acc-1/gw-2,,GW,Acme IDevID CA\n",
		"path,onboarding_serial\nms-1/acc-1/gw-1,\"0\"1\n\"unterminated\n",
		"\ufeffpath,onboarding_subject\n# c\nms-1/acc-1/gw-1, x \nms-1/acc-1/gw-1,x,y\n",
	} {
		f.Add(s)
	}
	mfrs := []store.Manufacturer{manufacturer(f, "Acme IDevID CA")}
	f.Fuzz(func(t *testing.T, in string) {
		cf, err := ReadCSV(strings.NewReader(in), "f", nil, mfrs, "", time.Now())
		if err != nil {
			return
		}
		if len(cf.Problems) > 0 && len(cf.Claims) > 0 {
			t.Fatalf("claims %d alongside problems %q", len(cf.Claims), cf.Problems)
		}
		for _, c := range cf.Claims {
			if _, err := pki.ParsePath(c.Path); err != nil {
				t.Fatalf("claim with a bad path %q: %v", c.Path, err)
			}
		}
	})
}
