package ident

import (
	"errors"
	"strings"
	"testing"
)

func TestValidateElement(t *testing.T) {
	tests := []struct {
		in string
		ok bool
	}{
		{"ms-acc-1", true},
		{"A.b_c-9", true},
		{"...", true},
		{".hidden", true},
		{strings.Repeat("a", MaxElementLen), true},
		{"pki", true}, // reserved only as a master, not as an element
		{"", false},
		{".", false},
		{"..", false},
		{strings.Repeat("a", MaxElementLen+1), false},
		{"a/b", false},
		{"+", false},
		{"#", false},
		{"$SYS", false},
		{"a b", false},
		{"a\x00", false},
		{"ü", false},
		{"\xff", false},
		{"a:b", false},
		{"a\\b", false},
	}
	for _, tt := range tests {
		err := ValidateElement(tt.in)
		if (err == nil) != tt.ok {
			t.Errorf("ValidateElement(%q) = %v, want ok=%v", tt.in, err, tt.ok)
		}
		if err != nil && !errors.Is(err, ErrInvalid) {
			t.Errorf("ValidateElement(%q) error %v does not wrap ErrInvalid", tt.in, err)
		}
	}
}

func TestSplitPath(t *testing.T) {
	tests := []struct {
		in   string
		want int // elements; 0 for an error
		msg  string
	}{
		{"ms-acc-1", 1, ""},
		{"ms-acc-1/acc-1/dev-1", 3, ""},
		{"ms/pki/dev", 3, ""}, // "pki" below the master names nothing of the platform's
		{"", 0, "empty"},
		{"a/b/c/d", 0, "at most 3"},
		{"ms//dev", 0, "empty element"},
		{"ms/..", 0, "reserved"},
		{"ms/acc/.", 0, "reserved"},
		{"pki", 0, "reserved for the platform"},
		{"pki/crl/transport", 0, "reserved for the platform"},
		{"PKI/crl", 0, "reserved for the platform"},
		{"Pki", 0, "reserved for the platform"},
		{"$SYS/x", 0, "not allowed"},
	}
	for _, tt := range tests {
		elems, err := SplitPath(tt.in)
		if tt.want == 0 {
			if err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("SplitPath(%q) = %v, %v; want an ErrInvalid saying %q", tt.in, elems, err, tt.msg)
			}
			continue
		}
		if err != nil || len(elems) != tt.want || strings.Join(elems, "/") != tt.in {
			t.Errorf("SplitPath(%q) = %q, %v; want %d elements", tt.in, elems, err, tt.want)
		}
	}
}

// FuzzSplitPath checks that whatever SplitPath accepts is safe as a topic
// prefix, a file name and a URL segment, and splits canonically.
func FuzzSplitPath(f *testing.F) {
	for _, s := range []string{"ms-acc-1/acc-1/dev-1", "a/b/c/d", "ms//dev", "$SYS/x", "+", "#", "..", "ms/.", "a\x00", "", "pki/crl/transport", "PkI", "ms/acc/" + strings.Repeat("x", 65)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		elems, err := SplitPath(s)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("SplitPath(%q) error %v does not wrap ErrInvalid", s, err)
			}
			return
		}
		if strings.Join(elems, "/") != s || len(elems) < 1 || len(elems) > MaxPathElements {
			t.Fatalf("SplitPath(%q) = %q", s, elems)
		}
		if strings.ContainsAny(s, "+#$\x00 \t\n\\:") || strings.Contains(s, "//") || strings.EqualFold(elems[0], "pki") {
			t.Fatalf("SplitPath accepted %q", s)
		}
		for _, e := range elems {
			if e == "." || e == ".." || e == "" || len(e) > MaxElementLen || ValidateElement(e) != nil {
				t.Fatalf("SplitPath(%q) accepted element %q", s, e)
			}
		}
	})
}
