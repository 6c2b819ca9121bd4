package schema

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fieldtrust/fieldtrust/internal/dcc/xmltree"
)

func parse(t *testing.T, b []byte) *xmltree.Document {
	t.Helper()
	d, err := xmltree.Parse(b, xmltree.DefaultLimits)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestEveryVersionCompiles: each vendored schema compiles offline.
func TestEveryVersionCompiles(t *testing.T) {
	for _, v := range Versions {
		if _, err := schemaFor(v); err != nil {
			t.Errorf("%s: %v", v, err)
		}
	}
}

// TestPublicSamples: PTB's community samples (pydcc) validate at their
// declared version; a changed sample reports the line.
func TestPublicSamples(t *testing.T) {
	files, _ := filepath.Glob("../testdata/pydcc/*.xml")
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		v, errs, err := Validate(parse(t, b))
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		// PTB's 3.1.1 samples carry a signature the 3.1.1 schema has no
		// slot for: invalid at line 474, as the issue expects.
		wantInvalid := strings.Contains(f, "_signed") && v == "3.1.1"
		if wantInvalid != (len(errs) > 0) {
			t.Errorf("%s (%s): errors %v", filepath.Base(f), v, errs)
		}
		if wantInvalid && (errs[0].Line != 474 || !strings.Contains(errs[0].Message, "Signature")) {
			t.Errorf("%s: %v", filepath.Base(f), errs)
		}
	}
}

func TestInvalid(t *testing.T) {
	b, err := os.ReadFile("../testdata/pydcc/dcc_gp_temperature_typical_v12.xml")
	if err != nil {
		t.Fatal(err)
	}
	bad := strings.Replace(string(b), "<dcc:coreData>", "<dcc:coreData><dcc:bogus/>", 1)
	_, errs, err := Validate(parse(t, []byte(bad)))
	if err != nil || len(errs) == 0 || errs[0].Line == 0 || !strings.Contains(errs[0].Message, "bogus") {
		t.Fatalf("got %v, %v", errs, err)
	}
	_, _, err = Validate(parse(t, []byte(`<dcc:digitalCalibrationCertificate xmlns:dcc="https://ptb.de/dcc" schemaVersion="2.4.0"/>`)))
	if err == nil || !strings.Contains(err.Error(), "unsupported") {
		t.Fatalf("2.4.0: %v", err)
	}
}

// TestOffline: a schema location outside the vendored set is not fetched.
func TestOffline(t *testing.T) {
	load()
	if _, err := compile("http://127.0.0.1:1/evil.xsd"); err == nil {
		t.Fatal("compiled a schema from the network")
	}
	if _, err := compile("file:///etc/passwd"); err == nil {
		t.Fatal("compiled a schema from a file")
	}
}
