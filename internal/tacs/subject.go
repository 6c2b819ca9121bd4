package tacs

import (
	"errors"
	"fmt"
	"strings"
)

// MaxPathElements is the depth of the account hierarchy: master account,
// account, device.
const MaxPathElements = 3

// maxElementLen bounds one identity element (and a service name, a role name
// and a shared-subscription group name). It keeps topics and certificate
// subjects short and predictable.
const maxElementLen = 64

// reservedMasters are first topic levels that belong to the platform. An
// account identity named like one of them would otherwise own the platform's
// subtree through the "own subtree" rule (a master account "pki" would own
// pki/crl/#), so such identities are refused outright.
var reservedMasters = []string{"pki"}

// ErrInvalidSubject is wrapped by every error Subject.Validate returns.
var ErrInvalidSubject = errors.New("invalid subject")

// Subject is who asks: either an account identity (Path set) or a platform
// service (Service and Role set), never both. The broker builds it from the
// verified certificate chain; tacs never trusts anything the client says
// about itself.
type Subject struct {
	// Path is the account identity path, "master[/account[/device]]", e.g.
	// "ms-acc-1/acc-1/dev-1". Empty for a service.
	Path string
	// Service is the service name (ingest, firmware, admin, ...). Empty for
	// an account identity.
	Service string
	// Role names the service's entry in Grants. Only meaningful with Service.
	Role string
}

// Account returns the subject of an account identity path.
func Account(path string) Subject { return Subject{Path: path} }

// ServiceSubject returns the subject of a platform service with the given role.
func ServiceSubject(name, role string) Subject { return Subject{Service: name, Role: role} }

// IsService reports whether s is a service identity.
func (s Subject) IsService() bool { return s.Service != "" }

// String is a stable, unambiguous rendering used as the MQTT username, in
// logs and as the session namespace: the path for an account, and
// "service:NAME" for a service. Neither form contains '|', which the broker
// uses to namespace client IDs, and ':' never occurs in an account path.
func (s Subject) String() string {
	if s.IsService() {
		return "service:" + s.Service
	}
	return s.Path
}

// Validate reports whether s is well formed: exactly one of Path and
// Service; a path of 1–3 valid elements whose master is not reserved; a
// service with a valid name and role.
func (s Subject) Validate() error {
	switch {
	case s.Path != "" && s.Service != "":
		return fmt.Errorf("%w: both path and service set", ErrInvalidSubject)
	case s.Path == "" && s.Service == "":
		return fmt.Errorf("%w: neither path nor service set", ErrInvalidSubject)
	case s.IsService():
		if err := validateElement(s.Service); err != nil {
			return fmt.Errorf("%w: service name: %v", ErrInvalidSubject, err)
		}
		if err := validateElement(s.Role); err != nil {
			return fmt.Errorf("%w: service %s role: %v", ErrInvalidSubject, s.Service, err)
		}
		return nil
	}
	if s.Role != "" {
		return fmt.Errorf("%w: account identity %q has a role", ErrInvalidSubject, s.Path)
	}
	elems := strings.Split(s.Path, "/")
	if len(elems) > MaxPathElements {
		return fmt.Errorf("%w: path has %d elements; at most %d", ErrInvalidSubject, len(elems), MaxPathElements)
	}
	for i, e := range elems {
		if err := validateElement(e); err != nil {
			return fmt.Errorf("%w: path element %d: %v", ErrInvalidSubject, i+1, err)
		}
	}
	for _, r := range reservedMasters {
		if elems[0] == r {
			return fmt.Errorf("%w: master %q is reserved for the platform", ErrInvalidSubject, r)
		}
	}
	return nil
}

// validateElement checks one identity element: 1–64 characters from
// [A-Za-z0-9._-], not "." or "..". The character class excludes every MQTT
// metacharacter ('/', '+', '#', '$'), NUL and non-ASCII, so an element can be
// pasted into a topic filter without escaping.
func validateElement(e string) error {
	if e == "" {
		return errors.New("empty")
	}
	if len(e) > maxElementLen {
		return fmt.Errorf("%d bytes long; at most %d", len(e), maxElementLen)
	}
	if e == "." || e == ".." {
		return fmt.Errorf("%q is reserved", e)
	}
	for i := 0; i < len(e); i++ {
		c := e[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '.', c == '_', c == '-':
		default:
			return fmt.Errorf("byte %q at offset %d not in [A-Za-z0-9._-]", c, i)
		}
	}
	return nil
}
