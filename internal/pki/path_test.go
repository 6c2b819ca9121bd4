package pki

import (
	"errors"
	"strings"
	"testing"
)

func TestParsePath(t *testing.T) {
	tests := []struct {
		in   string
		ok   bool
		want string
	}{
		{"ms-acc-1", true, "ms-acc-1"},
		{"ms-acc-1/acc-1", true, "ms-acc-1/acc-1"},
		{"ms-acc-1/acc-1/dev-1", true, "ms-acc-1/acc-1/dev-1"},
		{"A.b_c-9/x/y", true, "A.b_c-9/x/y"},
		{strings.Repeat("a", 64), true, strings.Repeat("a", 64)},
		{"", false, ""},
		{"a/b/c/d", false, ""},
		{"ms//dev", false, ""},
		{"/ms", false, ""},
		{"ms/", false, ""},
		{"$SYS/x", false, ""},
		{"+", false, ""},
		{"#", false, ""},
		{"ms/+/dev", false, ""},
		{"ms/acc/#", false, ""},
		{"a\x00b", false, ""},
		{"ü", false, ""},
		{"\xff", false, ""},
		{"a b", false, ""},
		{".", false, ""},
		{"ms/..", false, ""},
		{"ms/../x", false, ""},
		{strings.Repeat("a", 65), false, ""},
		{"$share/g/x", false, ""},
		// The platform's own first topic level is no identity.
		{"pki", false, ""},
		{"pki/crl/transport", false, ""},
		{"PKI/crl", false, ""},
		{"ms/pki/dev", true, "ms/pki/dev"},
	}
	for _, tt := range tests {
		p, err := ParsePath(tt.in)
		if tt.ok != (err == nil) {
			t.Errorf("ParsePath(%q) error = %v, want ok=%v", tt.in, err, tt.ok)
			continue
		}
		if err != nil {
			if !errors.Is(err, ErrInvalidPath) {
				t.Errorf("ParsePath(%q) error %v does not wrap ErrInvalidPath", tt.in, err)
			}
			continue
		}
		if p.String() != tt.want {
			t.Errorf("ParsePath(%q) = %q, want %q", tt.in, p, tt.want)
		}
	}
}

func TestPathHasPrefix(t *testing.T) {
	tests := []struct {
		p, q string
		want bool
	}{
		{"ms-acc-1/acc-1/dev-1", "ms-acc-1", true},
		{"ms-acc-1/acc-1/dev-1", "ms-acc-1/acc-1", true},
		{"ms-acc-1/acc-1/dev-1", "ms-acc-1/acc-1/dev-1", true},
		{"ms-acc-10/acc-1", "ms-acc-1", false},
		{"ms-acc-1", "ms-acc-1/acc-1", false},
		{"ms-acc-1/acc-2", "ms-acc-1/acc-1", false},
	}
	for _, tt := range tests {
		p, q := mustPath(t, tt.p), mustPath(t, tt.q)
		if got := p.HasPrefix(q); got != tt.want {
			t.Errorf("%s.HasPrefix(%s) = %v, want %v", tt.p, tt.q, got, tt.want)
		}
	}
}

func mustPath(t testing.TB, s string) Path {
	t.Helper()
	p, err := ParsePath(s)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// FuzzParsePath checks that whatever ParsePath accepts is safe to use as a
// topic prefix and file name, and that parsing is canonical.
func FuzzParsePath(f *testing.F) {
	for _, s := range []string{"ms-acc-1/acc-1/dev-1", "a/b/c/d", "ms//dev", "$SYS/x", "+", "#", "..", "a\x00", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParsePath(s)
		if err != nil {
			return
		}
		if p.String() != s {
			t.Fatalf("ParsePath(%q).String() = %q", s, p)
		}
		if len(p) < 1 || len(p) > MaxPathElements {
			t.Fatalf("ParsePath(%q) has %d elements", s, len(p))
		}
		if strings.ContainsAny(s, "+#$\x00 \t\n\\") || strings.Contains(s, "//") {
			t.Fatalf("ParsePath accepted %q", s)
		}
		for _, e := range p {
			if e == "." || e == ".." || e == "" || len(e) > maxElementLen {
				t.Fatalf("ParsePath accepted element %q", e)
			}
		}
	})
}
