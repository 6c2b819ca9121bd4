// Package schema validates Digital Calibration Certificates against PTB's
// DCC XML schemas, every published version from 3.1.0 to 3.3.0, vendored
// in xsd/ with the D-SI, QUDT and XML Signature schemas they import (PTB's
// licence, LGPL v3, in xsd/COPYING.LESSER; where each file came from in
// xsd/SOURCES.md). Validation is offline: libxml2 resolves imports only
// from the vendored files and never opens a file or a network connection.
//
// Why libxml2 (through cgo, Debian's libxml2-dev): no maintained Go module
// implements XML Schema 1.0 validation completely enough for the DCC
// schemas (substitution groups, xs:any, identity constraints, the D-SI
// patterns); libxml2 is the validator the DCC community itself uses
// (through lxml in Python), so "valid" here means what it means there.
//
// The document is parsed first by package xmltree, which refuses DTDs,
// entities and oversized input; only documents it accepts reach libxml2.
package schema

import (
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"sort"
	"strings"
	"sync"

	"github.com/fieldtrust/fieldtrust/internal/dcc/xmltree"
)

//go:embed xsd/dcc
var vendored embed.FS

// Namespace is the DCC namespace.
const Namespace = "https://ptb.de/dcc"

// base is the URL under which the vendored tree is registered with
// libxml2; relative imports resolve below it.
const base = "fieldtrust-xsd:///"

// imports maps the absolute schema locations that vendored schemas import
// to vendored files (PTB's 3.1.x schemas name D-SI by its public URL).
var imports = map[string]string{
	"https://ptb.de/si/v2.1.0/SI_Format.xsd": "dcc/dsi/v2.1.0.xsd",
	"https://ptb.de/si/v2.2.1/SI_Format.xsd": "dcc/dsi/v2.2.1.xsd",
}

// Versions are the schema versions validation supports, oldest first.
var Versions = []string{"3.1.0", "3.1.1", "3.1.2", "3.2.0", "3.2.1", "3.3.0"}

// ErrUnsupportedVersion is wrapped when a document names a schema version
// not in Versions.
var ErrUnsupportedVersion = errors.New("unsupported DCC schema version")

// ErrNotDCC is wrapped when the root is not dcc:digitalCalibrationCertificate.
var ErrNotDCC = errors.New("not a Digital Calibration Certificate")

// Error is one schema violation.
type Error struct {
	Line    int    `json:"line,omitempty"`
	Message string `json:"message"`
}

func (e Error) String() string {
	if e.Line > 0 {
		return fmt.Sprintf("line %d: %s", e.Line, e.Message)
	}
	return e.Message
}

// SignatureSince is the first schema version with a ds:Signature slot:
// signed DCCs are issued only at this version or later.
const SignatureSince = "3.2.0"

// AtLeast reports whether version v is at least w (both x.y.z).
func AtLeast(v, w string) bool {
	pv, pw := strings.Split(v, "."), strings.Split(w, ".")
	for i := 0; i < 3; i++ {
		a, b := part(pv, i), part(pw, i)
		if a != b {
			return a > b
		}
	}
	return true
}

func part(p []string, i int) int {
	if i >= len(p) {
		return 0
	}
	n := 0
	for _, c := range p[i] {
		if c < '0' || c > '9' {
			return -1
		}
		n = n*10 + int(c-'0')
	}
	return n
}

var (
	loadOnce sync.Once
	mu       sync.Mutex
	schemas  = map[string]*compiled{}
)

func load() {
	loadOnce.Do(func() {
		files := map[string][]byte{}
		fs.WalkDir(vendored, "xsd", func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || !strings.HasSuffix(p, ".xsd") {
				return err
			}
			b, err := vendored.ReadFile(p)
			if err != nil {
				return err
			}
			files[base+strings.TrimPrefix(p, "xsd/")] = b
			return nil
		})
		for url, p := range imports {
			files[url] = files[base+p]
		}
		register(files)
	})
}

// For returns the compiled schema of a version (compiled once, on first use).
func schemaFor(version string) (*compiled, error) {
	i := sort.SearchStrings(Versions, version)
	if i == len(Versions) || Versions[i] != version {
		return nil, fmt.Errorf("%w %q (supported: %s)", ErrUnsupportedVersion, version, strings.Join(Versions, ", "))
	}
	load()
	mu.Lock()
	defer mu.Unlock()
	if s := schemas[version]; s != nil {
		return s, nil
	}
	s, err := compile(base + "dcc/v" + version + "/dcc.xsd")
	if err != nil {
		return nil, err
	}
	schemas[version] = s
	return s, nil
}

// Version returns the schemaVersion a parsed DCC declares.
func Version(doc *xmltree.Document) (string, error) {
	if !doc.Root.Is(Namespace, "digitalCalibrationCertificate") {
		return "", fmt.Errorf("%w: the root element is {%s}%s", ErrNotDCC, doc.Root.Space, doc.Root.Local)
	}
	v, ok := doc.Root.Attr("schemaVersion")
	if !ok {
		return "", fmt.Errorf("%w: the root has no schemaVersion", ErrNotDCC)
	}
	return v, nil
}

// Validate validates a parsed DCC against the schema of the version it
// declares. It returns the violations (none when valid); an error means the
// document could not be validated at all (not a DCC, an unsupported
// version).
func Validate(doc *xmltree.Document) (version string, errs []Error, err error) {
	version, err = Version(doc)
	if err != nil {
		return "", nil, err
	}
	s, err := schemaFor(version)
	if err != nil {
		return version, nil, err
	}
	valid, errs, err := s.validate(doc.Src)
	if err != nil {
		return version, nil, err
	}
	if valid {
		return version, nil, nil
	}
	return version, errs, nil
}
