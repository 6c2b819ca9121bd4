package pki

import (
	"errors"
	"fmt"
	"strings"
)

// MaxPathElements is the depth of the account hierarchy: master account,
// account, device.
const MaxPathElements = 3

// maxElementLen bounds one identity element. It keeps topics, file names and
// certificate subjects short and predictable.
const maxElementLen = 64

// ErrInvalidPath is wrapped by every error ParsePath and ValidateElement return.
var ErrInvalidPath = errors.New("invalid identity path")

// Path is a validated identity path such as ms-acc-1/acc-1/dev-1: a master
// account, optionally an account below it and a device below that. The zero
// Path is not valid; obtain one from ParsePath.
//
// A Path is safe to use as an MQTT topic prefix, a file name component and a
// URL path: its elements never contain '/', '+', '#', '$', NUL, whitespace or
// non-ASCII bytes, and are never "." or "..".
type Path []string

// ParsePath parses and validates s. It is the only way untrusted text becomes
// a Path; every caller (CLI, broker, EST, ingest, web) goes through it.
func ParsePath(s string) (Path, error) {
	if s == "" {
		return nil, fmt.Errorf("%w: empty", ErrInvalidPath)
	}
	elems := strings.Split(s, "/")
	if len(elems) > MaxPathElements {
		return nil, fmt.Errorf("%w: %q has %d elements; at most %d (master/account/device)", ErrInvalidPath, s, len(elems), MaxPathElements)
	}
	for i, e := range elems {
		if problem := elementProblem(e); problem != "" {
			return nil, fmt.Errorf("%w: %q element %d: %s", ErrInvalidPath, s, i+1, problem)
		}
	}
	return Path(elems), nil
}

// ValidateElement reports whether e may be one element of an identity path:
// 1 to 64 characters from [A-Za-z0-9._-], and not "." or "..".
//
// "." and ".." match the character class but are refused: they would be
// path traversal wherever an element names a file or a URL segment.
func ValidateElement(e string) error {
	if problem := elementProblem(e); problem != "" {
		return fmt.Errorf("%w: %q: %s", ErrInvalidPath, e, problem)
	}
	return nil
}

// elementProblem says what is wrong with e, or "" if nothing is.
func elementProblem(e string) string {
	if e == "" {
		return "empty element"
	}
	if len(e) > maxElementLen {
		return fmt.Sprintf("element is %d characters long; at most %d", len(e), maxElementLen)
	}
	if e == "." || e == ".." {
		return fmt.Sprintf("element %q is reserved", e)
	}
	for i := 0; i < len(e); i++ {
		c := e[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '.', c == '_', c == '-':
		default:
			return fmt.Sprintf("character %q at offset %d is not allowed; use only A-Z a-z 0-9 . _ -", c, i)
		}
	}
	return ""
}

// String returns the path in its canonical form, elements joined by '/'.
func (p Path) String() string { return strings.Join(p, "/") }

// Master returns the master-account element.
func (p Path) Master() string { return p[0] }

// HasPrefix reports whether q is p or an ancestor of p, element by element
// (so ms-acc-1 is not a prefix of ms-acc-10).
func (p Path) HasPrefix(q Path) bool {
	if len(q) > len(p) {
		return false
	}
	for i := range q {
		if p[i] != q[i] {
			return false
		}
	}
	return true
}

// Equal reports whether p and q are the same path.
func (p Path) Equal(q Path) bool { return len(p) == len(q) && p.HasPrefix(q) }

// issuerPath is the path of the CA that issues leaves for p: the master CA
// for a master-level identity, the account CA for account and device
// identities.
func (p Path) issuerPath() Path {
	if len(p) >= 2 {
		return p[:2]
	}
	return p[:1]
}
