package tacs

import (
	"errors"
	"fmt"

	"github.com/fieldtrust/fieldtrust/internal/ident"
)

// MaxPathElements is the depth of the account hierarchy: master account,
// account, device (ident.MaxPathElements).
const MaxPathElements = ident.MaxPathElements

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
// Service; a path as ident.SplitPath accepts it (1–3 valid elements, the
// master not reserved for the platform, so an account "pki" cannot own
// pki/crl/#); a service with a valid name and role.
func (s Subject) Validate() error {
	switch {
	case s.Path != "" && s.Service != "":
		return fmt.Errorf("%w: both path and service set", ErrInvalidSubject)
	case s.Path == "" && s.Service == "":
		return fmt.Errorf("%w: neither path nor service set", ErrInvalidSubject)
	case s.IsService():
		if err := ident.ValidateElement(s.Service); err != nil {
			return fmt.Errorf("%w: service name: %v", ErrInvalidSubject, err)
		}
		if err := ident.ValidateElement(s.Role); err != nil {
			return fmt.Errorf("%w: service %s role: %v", ErrInvalidSubject, s.Service, err)
		}
		return nil
	}
	if s.Role != "" {
		return fmt.Errorf("%w: account identity %q has a role", ErrInvalidSubject, s.Path)
	}
	if _, err := ident.SplitPath(s.Path); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidSubject, err)
	}
	return nil
}
