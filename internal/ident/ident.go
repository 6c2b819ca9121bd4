// Package ident is the one definition of what may name an identity in
// fieldtrust: the syntax of an identity element (a master account, an
// account, a device, a service, a role) and of an identity path
// (master[/account[/device]]).
//
// The rule lives here, in a package that imports nothing but the standard
// library, so that every package that must check a name uses the same
// code: pki (certificate subjects), tacs (MQTT subjects and topics), store
// (query scopes) and snapshot (device and channel names). Copies drift;
// the last one accepted a device named "..".
package ident

import (
	"errors"
	"fmt"
	"strings"
)

// MaxPathElements is the depth of the account hierarchy: master account,
// account, device.
const MaxPathElements = 3

// MaxElementLen bounds one element. It keeps topics, file names and
// certificate subjects short and predictable.
const MaxElementLen = 64

// ErrInvalid is wrapped by every error this package returns.
var ErrInvalid = errors.New("invalid identity path")

// reservedMasters are first topic levels that belong to the platform
// (pki/crl/transport, pki/crl/e2e). An account identity named like one of
// them would own the platform's subtree through the "own subtree" rule of
// topic access control, and the HTTPS API and bootstrap would serve it, so
// no identity path may start with one. Compared without regard to case:
// "PKI" is a different MQTT topic, but it would confuse every human who
// reads a log.
var reservedMasters = [...]string{"pki"}

// ValidateElement reports whether e may be one element of an identity path
// (or a service or role name): 1 to 64 characters from [A-Za-z0-9._-], and
// not "." or "..".
//
// The character class excludes every MQTT metacharacter ('/', '+', '#',
// '$'), NUL, whitespace and non-ASCII, so an element can be pasted into a
// topic filter, a file name or a URL segment without escaping. "." and ".."
// match the class but are refused: they would be path traversal wherever
// an element names a file or a URL segment.
func ValidateElement(e string) error {
	if problem := elementProblem(e); problem != "" {
		return fmt.Errorf("%w: %q: %s", ErrInvalid, e, problem)
	}
	return nil
}

// SplitPath validates an identity path and returns its elements: 1 to
// MaxPathElements valid elements joined by '/', the first not reserved for
// the platform.
func SplitPath(s string) ([]string, error) {
	if s == "" {
		return nil, fmt.Errorf("%w: empty", ErrInvalid)
	}
	elems := strings.Split(s, "/")
	if len(elems) > MaxPathElements {
		return nil, fmt.Errorf("%w: %q has %d elements; at most %d (master/account/device)", ErrInvalid, s, len(elems), MaxPathElements)
	}
	for i, e := range elems {
		if problem := elementProblem(e); problem != "" {
			return nil, fmt.Errorf("%w: %q element %d: %s", ErrInvalid, s, i+1, problem)
		}
	}
	if ReservedMaster(elems[0]) {
		return nil, fmt.Errorf("%w: %q: the name %q is reserved for the platform's own topics (pki/crl/...); choose another master account name", ErrInvalid, s, elems[0])
	}
	return elems, nil
}

// ReservedMaster reports whether e is a first topic level the platform
// uses for itself, which no identity path may start with.
func ReservedMaster(e string) bool {
	for _, r := range reservedMasters {
		if strings.EqualFold(e, r) {
			return true
		}
	}
	return false
}

// elementProblem says what is wrong with e, or "" if nothing is.
func elementProblem(e string) string {
	if e == "" {
		return "empty element"
	}
	if len(e) > MaxElementLen {
		return fmt.Sprintf("element is %d characters long; at most %d", len(e), MaxElementLen)
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
