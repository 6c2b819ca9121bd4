package pki

import (
	"strings"

	"github.com/fieldtrust/fieldtrust/internal/ident"
)

// MaxPathElements is the depth of the account hierarchy: master account,
// account, device.
const MaxPathElements = ident.MaxPathElements

// maxElementLen bounds one identity element.
const maxElementLen = ident.MaxElementLen

// ErrInvalidPath is wrapped by every error ParsePath and ValidateElement
// return. It is ident.ErrInvalid: the rule lives in package ident.
var ErrInvalidPath = ident.ErrInvalid

// Path is a validated identity path such as ms-acc-1/acc-1/dev-1: a master
// account, optionally an account below it, optionally a device below that.
// Construct it with ParsePath only.
type Path []string

// ParsePath parses and validates s. It is the only way untrusted text becomes
// a Path; every caller (CLI, broker, EST, ingest, web) goes through it. The
// syntax is ident.SplitPath's: 1 to 3 elements, each ValidateElement's, the
// master not one of the platform's own first topic levels ("pki").
func ParsePath(s string) (Path, error) {
	elems, err := ident.SplitPath(s)
	if err != nil {
		return nil, err
	}
	return Path(elems), nil
}

// ValidateElement reports whether e may be one element of an identity path
// or a service name: ident.ValidateElement.
func ValidateElement(e string) error { return ident.ValidateElement(e) }

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
