package tacs

import (
	"errors"
	"fmt"

	"github.com/fieldtrust/fieldtrust/internal/ident"
	"github.com/fieldtrust/fieldtrust/internal/pki"
)

// MaxPathElements is the depth of the account hierarchy: master account,
// account, device (ident.MaxPathElements).
const MaxPathElements = ident.MaxPathElements

// SitePathElements is the depth of a site's path: the account it forwards
// for, master/account.
const SitePathElements = 2

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
	// Site marks the forwarding broker of a customer site (fieldtrust
	// site): Path is then its account, master/account, and its rights are
	// RoleSite's grants inside that subtree (rule 5), not the account's.
	// pki.IdentityFromChain sets it from the certificate.
	Site bool
}

// Account returns the subject of an account identity path.
func Account(path string) Subject { return Subject{Path: path} }

// ServiceSubject returns the subject of a platform service with the given role.
func ServiceSubject(name, role string) Subject { return Subject{Service: name, Role: role} }

// SiteSubject returns the subject of the customer site of an account
// (master/account).
func SiteSubject(account string) Subject { return Subject{Path: account, Site: true} }

// role is the Grants entry that decides for a service or a site.
func (s Subject) role() string {
	if s.Site {
		return RoleSite
	}
	return s.Role
}

// IsService reports whether s is a service identity.
func (s Subject) IsService() bool { return s.Service != "" }

// String is a stable, unambiguous rendering used as the MQTT username, in
// logs and as the session namespace: the path for an account, and
// "service:NAME" for a service, "site:PATH" for a site (so a site's
// sessions never mix with those of an ordinary certificate of the same
// account). None contains '|', which the broker uses to namespace client
// IDs, and ':' never occurs in an account path.
func (s Subject) String() string {
	if s.IsService() {
		return "service:" + s.Service
	}
	if s.Site {
		return "site:" + s.Path
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
	case s.Site && s.Service != "":
		return fmt.Errorf("%w: a site is an account's, not a service's", ErrInvalidSubject)
	case s.IsService():
		if err := ident.ValidateElement(s.Service); err != nil {
			return fmt.Errorf("%w: service name: %v", ErrInvalidSubject, err)
		}
		if err := ident.ValidateElement(s.Role); err != nil {
			return fmt.Errorf("%w: service %s role: %v", ErrInvalidSubject, s.Service, err)
		}
		if s.Role == RoleSite {
			// Its grants hold only inside a site's own subtree (rule 5);
			// a service has none, so they would reach every tenant.
			return fmt.Errorf("%w: service %s: role %q belongs to customer sites, not to services", ErrInvalidSubject, s.Service, RoleSite)
		}
		return nil
	}
	if s.Role != "" {
		return fmt.Errorf("%w: account identity %q has a role", ErrInvalidSubject, s.Path)
	}
	elems, err := ident.SplitPath(s.Path)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidSubject, err)
	}
	if s.Site && len(elems) != SitePathElements {
		return fmt.Errorf("%w: site %q: a site belongs to an account, master/account", ErrInvalidSubject, s.Path)
	}
	return nil
}

// SubjectOf is the subject of an identity the PKI verified from the
// client's chain (pki.IdentityFromChain): a customer site, an account
// identity, or a service with the role roleOf gives it. A service without
// a role is refused: it has no rights to derive.
func SubjectOf(id pki.Identity, roleOf func(service string) (role string, ok bool)) (Subject, error) {
	switch {
	case id.Site:
		return SiteSubject(id.Path.String()), nil
	case !id.IsService():
		return Account(id.Path.String()), nil
	}
	role, ok := roleOf(id.Service)
	if !ok {
		return Subject{}, fmt.Errorf("service %q has no role; grant one with 'fieldtrust pki issue --service %s --role ROLE'", id.Service, id.Service)
	}
	return ServiceSubject(id.Service, role), nil
}
