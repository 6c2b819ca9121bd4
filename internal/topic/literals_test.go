package topic

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// schemeUsers are the packages (with their tests) that use topics of the
// scheme. They must build and parse them with this package, never spell
// them: the scheme is written down once, here. (tacs is not listed: its
// tests spell topics on purpose, as inputs to the validator; nor is the
// broker, which knows no scheme.)
var schemeUsers = []string{"gateway", "ingest", "web", "platform", "demo", "loadgen", "command", "bootstrap", "devicemsg", "firmware", "../cmd"}

// spelled matches a string literal that spells a piece of the scheme: a
// channel as a topic level next to a '/', a CRL topic, or a shared
// subscription. API routes (/api/..., /firmware/v1/...), /proc files and
// import paths are paths, not topics.
var spelled = regexp.MustCompile(`(^|[^/]/|^/)(snapshots|events|status|firmware|commands)(/|$)|pki/crl|\$share`)

func TestNoTopicLiterals(t *testing.T) {
	for _, dir := range schemeUsers {
		root := filepath.Join("..", dir)
		err := filepath.WalkDir(root, func(file string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || !strings.HasSuffix(file, ".go") {
				return err
			}
			fset := token.NewFileSet()
			f, err := parser.ParseFile(fset, file, nil, parser.SkipObjectResolution)
			if err != nil {
				return err
			}
			ast.Inspect(f, func(n ast.Node) bool {
				if _, ok := n.(*ast.ImportSpec); ok {
					return false
				}
				lit, ok := n.(*ast.BasicLit)
				if !ok || lit.Kind != token.STRING {
					return true
				}
				s, err := strconv.Unquote(lit.Value)
				if err != nil || strings.Contains(s, "/api/") || strings.HasPrefix(s, "/firmware/v1/") || strings.HasPrefix(s, "/proc/") || !strings.Contains(s, "/") && !strings.Contains(s, "$share") {
					return true
				}
				if spelled.MatchString(s) {
					t.Errorf("%s: topic spelled as a literal %s; build it with package topic", fset.Position(lit.Pos()), lit.Value)
				}
				return true
			})
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}
