package xmltree

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// tricky exercises what canonical forms are particular about: attribute
// order and normalization, namespace rendering and superfluous
// declarations, default namespace undeclaration, character references,
// CDATA, comments and PIs inside and outside the root, line ends.
const tricky = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\r\n" +
	"<?xml-stylesheet   href=\"x.xsl\"?>\n<!-- prolog -->\n" +
	"<r:root xmlns:r=\"urn:r\" xmlns=\"urn:d\" xmlns:unused=\"urn:u\" b=\"2\" a=\"1\t&#9;x\r\ny\" xml:lang=\"de\">\r\n" +
	"  <child r:z=\"&lt;&amp;&quot;&#13;\" y='&apos;'>t &amp; &lt; &gt; &#13; <![CDATA[<cdata&>]]></child>\n" +
	"  <r:e xmlns:r=\"urn:r\" xmlns:n=\"urn:n\"><n:x xmlns=\"\" n:q=\"v\"/><plain xmlns=\"\"/></r:e>\n" +
	"  <!-- inner --><?pi  data ?>\n" +
	"  <sig:S xmlns:sig=\"urn:sig\"><sig:I Id=\"i1\">x</sig:I></sig:S>\n" +
	"</r:root>\n<!-- epilog --><?end?>\n"

func xmllint(t *testing.T, args ...string) []byte {
	t.Helper()
	bin, err := exec.LookPath("xmllint")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("xmllint (libxml2-utils) is needed: run scripts/deps.sh")
		}
		t.Skip("xmllint not installed")
	}
	out, err := exec.Command(bin, args...).Output()
	if err != nil {
		t.Fatalf("xmllint %v: %v", args, err)
	}
	return out
}

// TestCanonicalMatchesLibxml2 compares the whole-document canonical forms
// with libxml2's (an independent implementation), on the tricky document
// and on the public DCC samples.
func TestCanonicalMatchesLibxml2(t *testing.T) {
	dir := t.TempDir()
	files := map[string][]byte{"tricky.xml": []byte(tricky)}
	samples, _ := filepath.Glob("../testdata/pydcc/*.xml")
	for _, s := range samples {
		b, err := os.ReadFile(s)
		if err != nil {
			t.Fatal(err)
		}
		files[filepath.Base(s)] = b
	}
	for name, src := range files {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, src, 0o600); err != nil {
			t.Fatal(err)
		}
		doc, err := Parse(src, DefaultLimits)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for _, tc := range []struct {
			flag string
			m    Method
		}{
			{"--c14n", Method{WithComments: true}},
			{"--c14n11", Method{Version11: true, WithComments: true}},
			{"--exc-c14n", Method{Exclusive: true, WithComments: true}},
		} {
			want := xmllint(t, tc.flag, p)
			got, err := doc.Canonical(tc.m, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("%s %s differs from libxml2's:\n got %q\nwant %q", name, tc.flag, clip(got), clip(want))
			}
		}
	}
}

func clip(b []byte) string {
	if len(b) > 600 {
		return string(b[:600]) + "…"
	}
	return string(b)
}

// TestCanonicalSubset checks subset canonicalization (apex, excluded
// subtree) against forms worked out by hand from the C14N specifications.
func TestCanonicalSubset(t *testing.T) {
	doc, err := Parse([]byte(tricky), DefaultLimits)
	if err != nil {
		t.Fatal(err)
	}
	var e, sig, item *Node
	doc.Root.Walk(func(n *Node) bool {
		switch {
		case n.Is("urn:r", "e"):
			e = n
		case n.Is("urn:sig", "S"):
			sig = n
		case n.Is("urn:sig", "I"):
			item = n
		}
		return true
	})
	for _, tc := range []struct {
		name        string
		m           Method
		apex, excl  *Node
		wantContain string
		want        string
	}{
		{name: "inclusive apex renders every namespace in scope and xml:lang",
			m: Method{}, apex: e,
			want: `<r:e xmlns="urn:d" xmlns:n="urn:n" xmlns:r="urn:r" xmlns:unused="urn:u" xml:lang="de"><n:x xmlns="" n:q="v"></n:x><plain xmlns=""></plain></r:e>`},
		{name: "exclusive apex renders only what is used",
			m: Method{Exclusive: true}, apex: e,
			want: `<r:e xmlns:r="urn:r"><n:x xmlns:n="urn:n" n:q="v"></n:x><plain></plain></r:e>`},
		{name: "exclusive with an inclusive prefix list",
			m: Method{Exclusive: true, InclusivePrefixes: []string{"#default", "unused"}}, apex: item,
			want: `<sig:I xmlns="urn:d" xmlns:sig="urn:sig" xmlns:unused="urn:u" Id="i1">x</sig:I>`},
		{name: "enveloped: the excluded subtree is gone, its surroundings stay",
			m: Method{Version11: true}, excl: sig,
			wantContain: "<?pi data ?>\n  \n</r:root>"},
	} {
		got, err := doc.Canonical(tc.m, tc.apex, tc.excl)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if tc.want != "" && string(got) != tc.want {
			t.Errorf("%s:\n got %s\nwant %s", tc.name, got, tc.want)
		}
		if tc.wantContain != "" && !strings.Contains(string(got), tc.wantContain) {
			t.Errorf("%s: %q does not contain %q", tc.name, got, tc.wantContain)
		}
	}
}

// TestHostileInput: each hostile or broken input is refused with its
// typed error and the line it is on; nothing is fetched or expanded.
func TestHostileInput(t *testing.T) {
	lim := DefaultLimits
	deep := strings.Repeat("<a>", 200) + strings.Repeat("</a>", 200)
	for _, tc := range []struct {
		name, src string
		want      error
		text      string
	}{
		{"billion laughs", `<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;">]><lolz>&lol2;</lolz>`, ErrRefused, "document type"},
		{"external entity", "<?xml version=\"1.0\"?>\n<!DOCTYPE r [<!ENTITY x SYSTEM \"file:///etc/passwd\">]><r>&x;</r>", ErrRefused, "line 2"},
		{"external DTD", `<!DOCTYPE r SYSTEM "http://127.0.0.1:1/evil.dtd"><r/>`, ErrRefused, "no DTDs"},
		{"undeclared entity", "<r>\n&x;</r>", ErrMalformed, "line 2"},
		{"deep nesting", deep, ErrRefused, "nested deeper"},
		{"foreign encoding", `<?xml version="1.0" encoding="ISO-8859-1"?><r/>`, ErrRefused, "UTF-8"},
		{"XML 1.1", `<?xml version="1.1"?><r/>`, ErrRefused, "1.0"},
		{"not UTF-8", "<r>\xff</r>", ErrRefused, "UTF-8"},
		{"undeclared prefix", "<r>\n\n<p:x/></r>", ErrMalformed, "line 3"},
		{"duplicate attribute via prefixes", `<r xmlns:a="u" xmlns:b="u" a:x="1" b:x="2"/>`, ErrMalformed, "duplicate attribute"},
		{"mismatched end", "<r><a></b></r>", ErrMalformed, "does not match"},
		{"two roots", "<r/><s/>", ErrMalformed, "second root"},
		{"text after root", "<r/>x", ErrMalformed, "outside"},
		{"truncated", "<r><a>", ErrMalformed, "end of document"},
		{"rebinding xml", `<r xmlns:xml="urn:x"/>`, ErrMalformed, "reserved"},
		{"empty", "", ErrMalformed, "no root"},
	} {
		_, err := Parse([]byte(tc.src), lim)
		if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.text) {
			t.Errorf("%s: got %v, want %v containing %q", tc.name, err, tc.want, tc.text)
		}
	}
	small := lim
	small.MaxBytes = 10
	if _, err := Parse([]byte("<r>0123456789</r>"), small); !errors.Is(err, ErrRefused) {
		t.Errorf("oversized document: %v", err)
	}
	small = lim
	small.MaxNodes = 3
	if _, err := Parse([]byte("<r><a/><b/><c/></r>"), small); !errors.Is(err, ErrRefused) {
		t.Errorf("too many nodes: %v", err)
	}
}

func TestOffsets(t *testing.T) {
	src := []byte("<r>\n <a x='1'>t</a><b/></r>")
	doc, err := Parse(src, DefaultLimits)
	if err != nil {
		t.Fatal(err)
	}
	a, b := doc.Root.Elements()[0], doc.Root.Elements()[1]
	if got := string(src[a.Start:a.End]); got != "<a x='1'>t</a>" || a.Line != 2 {
		t.Errorf("a: %q line %d", got, a.Line)
	}
	if got := string(src[b.Start:b.End]); got != "<b/>" || b.EndTag != b.End {
		t.Errorf("b: %q", got)
	}
	if got := string(src[doc.Root.EndTag:doc.Root.End]); got != "</r>" {
		t.Errorf("root end tag %q", got)
	}
}

// TestParseLinear: parsing reads the document a bounded number of times,
// whatever its number of nodes (finding each node's line used to count
// the newlines from the start, for every node: a 5 MB DCC took minutes,
// an attacker's 16 MB one on the registry's public verify route far
// longer). Counted in bytes, not timed.
func TestParseLinear(t *testing.T) {
	var b strings.Builder
	b.WriteString("<r>\n")
	for range 20000 {
		b.WriteString("<a x='1'>t</a>\n<!-- c -->\n")
	}
	b.WriteString("</r>\n")
	src := []byte(b.String())
	p, err := parse(src, DefaultLimits)
	if err != nil {
		t.Fatal(err)
	}
	if p.scanned > 2*len(src) {
		t.Fatalf("line numbering scanned %d bytes of a %d-byte document", p.scanned, len(src))
	}
	last := p.doc.Root.Children[len(p.doc.Root.Children)-1]
	if want := 2 + 2*20000 - 1; last.Line != want {
		t.Fatalf("last node on line %d, want %d", last.Line, want)
	}
}

// FuzzParse: the parser never panics, and whatever it accepts
// canonicalizes in every method, twice to the same bytes.
func FuzzParse(f *testing.F) {
	f.Add([]byte(tricky))
	f.Add([]byte(`<!DOCTYPE a [<!ENTITY b "c">]><a>&b;</a>`))
	f.Add([]byte(`<a xmlns:p="u"><p:b p:c="&#x10FFFF;"/><![CDATA[x]]></a>`))
	f.Add([]byte("\xef\xbb\xbf<a>\r\n</a>"))
	if b, err := os.ReadFile("../testdata/pydcc/dcc_gp_temperature_typical_v12_v3.2.0_signed.xml"); err == nil {
		f.Add(b)
	}
	lim := Limits{MaxBytes: 1 << 20, MaxDepth: 64, MaxNodes: 10000, MaxAttributes: 64}
	f.Fuzz(func(t *testing.T, src []byte) {
		doc, err := Parse(src, lim)
		if err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrRefused) {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		for _, m := range []Method{{}, {Version11: true}, {Exclusive: true, WithComments: true}} {
			a, err1 := doc.Canonical(m, nil, nil)
			b, err2 := doc.Canonical(m, nil, nil)
			if (err1 == nil) != (err2 == nil) || !bytes.Equal(a, b) {
				t.Fatal("canonicalization is not deterministic")
			}
		}
	})
}
