package web

import (
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/dcc"
	"github.com/fieldtrust/fieldtrust/internal/dcc/calibration"
	"github.com/fieldtrust/fieldtrust/internal/dcc/registry"
	"github.com/fieldtrust/fieldtrust/internal/ledger"
	"github.com/fieldtrust/fieldtrust/internal/tacs"
)

// openAPIFile is the API's description. It is written as JSON, which is
// YAML 1.2, so encoding/json reads it without a YAML dependency.
const openAPIFile = "../../docs/openapi.yaml"

type openAPIDoc struct {
	OpenAPI    string                                `json:"openapi"`
	Paths      map[string]map[string]json.RawMessage `json:"paths"`
	Components struct {
		SecuritySchemes map[string]struct {
			Type string `json:"type"`
		} `json:"securitySchemes"`
		Schemas map[string]struct {
			Properties map[string]json.RawMessage `json:"properties"`
			Required   []string                   `json:"required"`
		} `json:"schemas"`
	} `json:"components"`
	Security []map[string][]string `json:"security"`
}

func readOpenAPI(t *testing.T) (openAPIDoc, []byte) {
	t.Helper()
	raw, err := os.ReadFile(openAPIFile)
	if err != nil {
		t.Fatal(err)
	}
	var doc openAPIDoc
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatalf("%s: %v", openAPIFile, err)
	}
	return doc, raw
}

// registeredRoutes returns the "METHOD /path" patterns that api.go
// registers, the DCC registry's (which the platform mounts at
// /api/v1/registry/), and the /api/v1 routes the platform mounts itself
// (bootstrap and gateway commands).
func registeredRoutes(t *testing.T) []string {
	t.Helper()
	routes := literalRoutes(t, "api.go")
	if len(routes) < 9 {
		t.Fatalf("found only %d routes in api.go: %v", len(routes), routes)
	}
	if reg := literalRoutes(t, registryRoutesFile); len(reg) < 8 {
		t.Fatalf("found only %d routes in %s: %v", len(reg), registryRoutesFile, reg)
	} else {
		routes = append(routes, reg...)
	}
	for _, file := range []string{filepath.Join("..", "platform", "platform.go"), filepath.Join("..", "firmware", "campaignapi", "campaignapi.go")} {
		src, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range regexp.MustCompile(`"((?:GET|POST|PUT|DELETE) /api/v1/[^"]*)"`).FindAllStringSubmatch(string(src), -1) {
			routes = append(routes, m[1])
		}
	}
	// Mounted by the platform as bootstrap.Path (package bootstrap imports
	// nothing of web's, but naming the constant here would tie the tests
	// together for one string).
	return append(routes, "GET /api/v1/bootstrap")
}

// registryRoutesFile registers the DCC registry's routes.
const registryRoutesFile = "../dcc/registry/http.go"

// literalRoutes returns the patterns a file registers with Handle or
// HandleFunc.
func literalRoutes(t *testing.T, file string) []string {
	t.Helper()
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, file, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	var routes []string
	ast.Inspect(f, func(n ast.Node) bool {
		call, ok := n.(*ast.CallExpr)
		if !ok || len(call.Args) == 0 {
			return true
		}
		sel, ok := call.Fun.(*ast.SelectorExpr)
		if !ok || (sel.Sel.Name != "HandleFunc" && sel.Sel.Name != "Handle") {
			return true
		}
		lit, ok := call.Args[0].(*ast.BasicLit)
		if !ok {
			t.Errorf("%s: a route registered with a non-literal pattern; this test cannot see it", fset.Position(call.Pos()))
			return true
		}
		p, _ := strconv.Unquote(lit.Value)
		routes = append(routes, p)
		return true
	})
	return routes
}

// patternRegexp turns a ServeMux pattern's path into a regexp over
// OpenAPI paths whose parameters are written {name}.
func patternRegexp(path string) *regexp.Regexp {
	var b strings.Builder
	b.WriteString("^")
	for _, seg := range strings.Split(strings.TrimPrefix(path, "/"), "/") {
		b.WriteString("/")
		switch {
		case strings.HasPrefix(seg, "{") && strings.HasSuffix(seg, "...}"):
			b.WriteString(".+")
		case strings.HasPrefix(seg, "{"):
			b.WriteString("[^/]+")
		default:
			b.WriteString(regexp.QuoteMeta(seg))
		}
	}
	b.WriteString("$")
	return regexp.MustCompile(b.String())
}

// TestOpenAPICoversRoutes: every /api/v1 route is documented with its
// method, every documented route is served, every $ref resolves, and the
// mTLS scheme applies to everything.
func TestOpenAPICoversRoutes(t *testing.T) {
	doc, raw := readOpenAPI(t)
	if !strings.HasPrefix(doc.OpenAPI, "3.1.") {
		t.Fatalf("openapi %q, want 3.1.x", doc.OpenAPI)
	}
	if doc.Components.SecuritySchemes["mutualTLS"].Type != "mutualTLS" || len(doc.Security) != 1 || doc.Security[0]["mutualTLS"] == nil {
		t.Fatal("the mutualTLS security scheme is not defined and applied globally")
	}
	registered := registeredRoutes(t)
	for _, route := range registered {
		method, path, ok := strings.Cut(route, " ")
		if !ok {
			t.Errorf("route %q has no method", route)
			continue
		}
		re := patternRegexp(path)
		found := false
		for p, ops := range doc.Paths {
			if re.MatchString(p) && ops[strings.ToLower(method)] != nil {
				found = true
			}
		}
		if !found {
			t.Errorf("route %s is not in %s", route, openAPIFile)
		}
	}

	// The other way round: the API serves every documented route (an
	// unauthenticated request gets 401 from the route, not 404 or 405
	// from the mux). Bootstrap, gateway commands, firmware campaigns and
	// agents are mounted by the platform, not this package.
	api := &API{Identify: func(*http.Request) (tacs.Subject, bool) { return tacs.Subject{}, false }}
	h := New(Options{API: api})
	for p, ops := range doc.Paths {
		if strings.HasPrefix(p, "/api/v1/registry/") {
			// Public: each operation says so (security: []), and is one
			// the registry registers (its own tests serve them).
			for method, raw := range ops {
				var op struct {
					Security *[]any `json:"security"`
				}
				json.Unmarshal(raw, &op)
				if op.Security == nil || len(*op.Security) != 0 {
					t.Errorf("%s %s: the registry is public; give it security: []", method, p)
				}
				if !slices.ContainsFunc(registered, func(r string) bool {
					m, rp, _ := strings.Cut(r, " ")
					return strings.EqualFold(m, method) && patternRegexp(rp).MatchString(p)
				}) {
					t.Errorf("%s %s is documented but %s does not register it", method, p, registryRoutesFile)
				}
			}
			continue
		}
		if p == "/api/v1/bootstrap" || strings.HasPrefix(p, "/api/v1/gateways/") || strings.HasPrefix(p, "/api/v1/firmware/") || strings.HasPrefix(p, "/api/v1/agents") {
			continue
		}
		url := regexp.MustCompile(`\{hash\}`).ReplaceAllString(p, strings.Repeat("0", 64))
		url = regexp.MustCompile(`\{[a-z]+\}`).ReplaceAllString(url, "x")
		for method := range ops {
			if method == "parameters" {
				continue
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(strings.ToUpper(method), url, nil))
			if rec.Code != http.StatusUnauthorized {
				t.Errorf("%s %s (documented as %s): status %d, want 401 from the route", strings.ToUpper(method), url, p, rec.Code)
			}
		}
	}

	// Every $ref resolves.
	var all map[string]any
	json.Unmarshal(raw, &all)
	var walk func(v any)
	walk = func(v any) {
		switch x := v.(type) {
		case map[string]any:
			if ref, ok := x["$ref"].(string); ok {
				parts := strings.Split(strings.TrimPrefix(ref, "#/"), "/")
				var cur any = all
				for _, p := range parts {
					m, _ := cur.(map[string]any)
					cur = m[p]
				}
				if cur == nil {
					t.Errorf("$ref %s does not resolve", ref)
				}
			}
			for _, e := range x {
				walk(e)
			}
		case []any:
			for _, e := range x {
				walk(e)
			}
		}
	}
	walk(all)
}

// TestOpenAPISchemasMatchJSON: the documented schemas have exactly the
// members the code emits, and require those it always emits.
func TestOpenAPISchemasMatchJSON(t *testing.T) {
	doc, _ := readOpenAPI(t)
	tests := []struct {
		schema string
		types  []any
		extra  []string // members written by hand, not from a struct
	}{
		{"Device", []any{deviceJSON{}}, nil},
		{"Snapshot", []any{snapshotJSON{}}, nil},
		{"Value", []any{valueJSON{}}, nil},
		{"TreeHead", []any{TreeHeadJSON{}}, nil},
		{"InclusionProof", []any{ProofJSON{}}, nil},
		{"ConsistencyProof", []any{ledger.ConsistencyProof{}}, nil},
		{"ExportSnapshot", []any{ledger.ExportSnapshot{}}, nil},
		{"ExportMessage", []any{ledger.ExportMessage{}}, nil},
		{"Export", []any{ledger.ExportHeader{}, ledger.ExportTrailer{}, ledger.ExportMessagesTrailer{}}, []string{"snapshots"}},
		{"EquipmentID", []any{dcc.EquipmentID{}}, nil},
		{"CalibrationFlag", []any{calibration.Flag{}}, nil},
		{"CalibrationBinding", []any{calibration.Binding{}}, nil},
		{"CalibrationReport", []any{calibration.Report{}}, nil},
		{"DCCMetadata", []any{dcc.Metadata{}}, nil},
		{"RegistryHead", []any{registry.Head{}}, nil},
		{"RegistryProof", []any{registry.Proof{}}, nil},
		{"RegistryRecord", []any{registry.Record{}}, nil},
		{"RegistryLookup", []any{registry.Lookup{}}, nil},
		{"Rule", []any{RuleJSON{}}, nil},
		{"Alarm", []any{AlarmJSON{}}, nil},
		{"Task", []any{TaskJSON{}}, nil},
		{"TaskComment", []any{CommentJSON{}}, nil},
		{"OutboxMessage", []any{OutboxJSON{}}, nil},
	}
	for _, tt := range tests {
		s, ok := doc.Components.Schemas[tt.schema]
		if !ok {
			t.Errorf("schema %s missing", tt.schema)
			continue
		}
		names, required := append([]string(nil), tt.extra...), append([]string(nil), tt.extra...)
		for _, v := range tt.types {
			typ := reflect.TypeOf(v)
			for i := range typ.NumField() {
				tag := typ.Field(i).Tag.Get("json")
				name, opts, _ := strings.Cut(tag, ",")
				names = append(names, name)
				if !strings.Contains(opts, "omitempty") {
					required = append(required, name)
				}
			}
		}
		var props []string
		for p := range s.Properties {
			props = append(props, p)
		}
		slices.Sort(names)
		slices.Sort(props)
		slices.Sort(required)
		got := slices.Clone(s.Required)
		slices.Sort(got)
		if !slices.Equal(names, props) {
			t.Errorf("schema %s has properties %v; the code emits %v", tt.schema, props, names)
		}
		if !slices.Equal(required, got) {
			t.Errorf("schema %s requires %v; the code always emits %v", tt.schema, got, required)
		}
	}
}

// TestOpenAPIExportLimits: the export's documented page size and rate
// limits are the code's.
func TestOpenAPIExportLimits(t *testing.T) {
	doc, _ := readOpenAPI(t)
	var op struct {
		Description string `json:"description"`
		Parameters  []struct {
			Name        string `json:"name"`
			Description string `json:"description"`
			Schema      struct {
				Maximum int `json:"maximum"`
			} `json:"schema"`
		} `json:"parameters"`
		Responses map[string]json.RawMessage `json:"responses"`
	}
	if err := json.Unmarshal(doc.Paths["/api/v1/export"]["get"], &op); err != nil {
		t.Fatal(err)
	}
	var limit, after bool
	for _, p := range op.Parameters {
		switch p.Name {
		case "limit":
			limit = p.Schema.Maximum == MaxExportLimit && strings.Contains(p.Description, "default "+strconv.Itoa(DefaultExportLimit))
		case "after":
			after = true
		}
	}
	if !limit || !after {
		t.Errorf("export parameters %+v: want limit (default %d, maximum %d) and after", op.Parameters, DefaultExportLimit, MaxExportLimit)
	}
	for _, want := range []string{
		"default " + strconv.Itoa(DefaultExportLimit), "at most " + strconv.Itoa(MaxExportLimit),
		"stream " + strconv.Itoa(DefaultExportConcurrent) + " pages at once", strconv.Itoa(int(time.Second/DefaultExportEvery)) + " page per second",
		"bursts of " + strconv.Itoa(DefaultExportBurst), "429",
	} {
		if !strings.Contains(op.Description, want) {
			t.Errorf("export description does not say %q: %s", want, op.Description)
		}
	}
	if op.Responses["429"] == nil {
		t.Error("export does not document 429")
	}
	// docs/ledger.md, the customer's walkthrough, states them too.
	md, err := os.ReadFile("../../docs/ledger.md")
	if err != nil {
		t.Fatal(err)
	}
	grouped := func(n int) string { // 10000 -> "10 000", as the doc writes numbers
		s := strconv.Itoa(n)
		for i := len(s) - 3; i > 0; i -= 3 {
			s = s[:i] + " " + s[i:]
		}
		return s
	}
	for _, want := range []string{
		"default **" + grouped(DefaultExportLimit) + "**", "at most **" + grouped(MaxExportLimit) + "**",
		"stream **" + strconv.Itoa(DefaultExportConcurrent) + "** export pages at once",
		"**" + strconv.Itoa(int(time.Second/DefaultExportEvery)) + " page per second**", "bursts of **" + strconv.Itoa(DefaultExportBurst) + "**",
		"429 Too Many Requests", "Retry-After",
	} {
		if !strings.Contains(string(md), want) {
			t.Errorf("docs/ledger.md does not say %q", want)
		}
	}
}
