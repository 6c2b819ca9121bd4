package pki

import (
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
)

// ErrNotInNamespace is returned (wrapped) when a leaf claims an identity
// outside the namespace of the CAs that issued it.
var ErrNotInNamespace = errors.New("identity outside the issuing CA's namespace")

// Identity is who a verified certificate chain belongs to: an account
// identity (Path set) or a platform service (Service set), never both.
type Identity struct {
	Path    Path
	Service string
	// Site: the certificate of a customer site (LeafRequest.Site) of the
	// account Path. It proves the account, but grants only what a site may
	// do (tacs rule 5).
	Site bool
}

// SitePathElements is the length of a site's path: its account,
// master/account.
const SitePathElements = 2

// OIDSitePolicy is the certificate policy that marks a customer site's
// certificate. It is a UUID OID (ITU-T X.667, 2.25.<uuid>), so it needs no
// registered arc and cannot collide. Only the platform's CAs issue it; a
// leaf carrying it anywhere but on an account's own path is refused.
var OIDSitePolicy = mustOID("2.25.86438104989870845629744330660337910894")

func mustOID(s string) x509.OID {
	o, err := x509.ParseOID(s)
	if err != nil {
		panic(err)
	}
	return o
}

// hasSitePolicy reports whether c carries OIDSitePolicy.
func hasSitePolicy(c *x509.Certificate) bool {
	for _, p := range c.Policies {
		if p.Equal(OIDSitePolicy) {
			return true
		}
	}
	return false
}

// IsService reports whether the identity is a platform service.
func (id Identity) IsService() bool { return id.Service != "" }

// String returns the path of an account identity, or "service:NAME".
func (id Identity) String() string {
	if id.IsService() {
		return "service:" + id.Service
	}
	if id.Site {
		return "site:" + id.Path.String()
	}
	return id.Path.String()
}

// IdentityFromChain derives the identity of a chain that has already been
// verified against a fieldtrust root: chain[0] is the leaf, the last element
// the root, as in x509.Certificate.Verify's result and
// tls.ConnectionState.VerifiedChains. servicesCA is the domain's services CA.
//
// It is the one place where a certificate becomes an identity; the broker,
// EST, ingest and the web API all call it (usually through Verifier). The
// leaf's common name must be a valid identity path (or, below the services
// CA, a service name), and that path must lie inside the namespace the CAs
// of the chain spell out: a leaf issued by account CA ms-acc-1/acc-1 may be
// ms-acc-1/acc-1 or ms-acc-1/acc-1/<device>, nothing else. Nothing the leaf
// says about itself is trusted beyond what its issuers allow.
func IdentityFromChain(chain []*x509.Certificate, servicesCA *x509.Certificate) (Identity, error) {
	if len(chain) < 3 {
		return Identity{}, fmt.Errorf("%w: chain of %d certificates; a leaf must be issued by an intermediate CA, not the root", ErrNotInNamespace, len(chain))
	}
	leaf, cas := chain[0], chain[1:len(chain)-1]
	for _, c := range chain[:len(chain)-1] {
		if n := commonNames(c); n != 1 {
			return Identity{}, fmt.Errorf("%w: %q has %d common name attributes; exactly one names an identity", ErrNotInNamespace, c.Subject.CommonName, n)
		}
	}
	if leaf.IsCA {
		return Identity{}, fmt.Errorf("%w: certificate %q is a CA, not a leaf", ErrNotInNamespace, leaf.Subject.CommonName)
	}
	for _, ca := range cas {
		if !ca.IsCA {
			return Identity{}, fmt.Errorf("%w: %q in the chain is not a CA", ErrNotInNamespace, ca.Subject.CommonName)
		}
	}
	site := hasSitePolicy(leaf)
	if servicesCA != nil && cas[0].Equal(servicesCA) {
		if site {
			return Identity{}, fmt.Errorf("%w: service certificate %q carries the site policy", ErrNotInNamespace, leaf.Subject.CommonName)
		}
		if len(cas) != 1 {
			return Identity{}, fmt.Errorf("%w: services CA below another CA", ErrNotInNamespace)
		}
		if err := ValidateElement(leaf.Subject.CommonName); err != nil {
			return Identity{}, fmt.Errorf("service certificate: %w", err)
		}
		return Identity{Service: leaf.Subject.CommonName}, nil
	}
	if len(cas) > 2 {
		return Identity{}, fmt.Errorf("%w: %d intermediate CAs; at most master and account", ErrNotInNamespace, len(cas))
	}
	// The namespace is spelled from the CA below the root downwards.
	ns := make(Path, 0, len(cas))
	for i := len(cas) - 1; i >= 0; i-- {
		if servicesCA != nil && cas[i].Equal(servicesCA) {
			return Identity{}, fmt.Errorf("%w: services CA inside an account chain", ErrNotInNamespace)
		}
		e := cas[i].Subject.CommonName
		if err := ValidateElement(e); err != nil {
			return Identity{}, fmt.Errorf("%w: CA name %q: %v", ErrNotInNamespace, e, err)
		}
		ns = append(ns, e)
	}
	p, err := ParsePath(leaf.Subject.CommonName)
	if err != nil {
		return Identity{}, fmt.Errorf("leaf identity: %w", err)
	}
	if !p.HasPrefix(ns) || len(p)-len(ns) > 1 {
		return Identity{}, fmt.Errorf("%w: leaf %q issued by CA %q", ErrNotInNamespace, p, ns)
	}
	if site && (len(p) != SitePathElements || !p.Equal(ns)) {
		return Identity{}, fmt.Errorf("%w: leaf %q carries the site policy; only an account's own certificate (master/account, issued by its account CA) may be a site", ErrNotInNamespace, p)
	}
	return Identity{Path: p, Site: site}, nil
}

// IdentifyVerifiedChain names the holder of a chain that was verified
// against the domain's root (leaf first, root last) where nothing but the
// root is known, as in an auditor's 'fieldtrust open': IdentityFromChain,
// with the services CA recognized as the CA directly below the root whose
// common name is ServicesCAName(domain), and the domain's key rule
// (CheckKey). The name is safe to rely on: master-account CA names are
// identity elements, which cannot contain the spaces of the services CA's
// name, so no account CA can pass for it. Revocation is the caller's (CRLs).
func IdentifyVerifiedChain(domain Domain, chain []*x509.Certificate) (Identity, error) {
	var services *x509.Certificate
	if len(chain) == 3 && chain[1].IsCA && chain[1].Subject.CommonName == ServicesCAName(domain) {
		services = chain[1]
	}
	id, err := IdentityFromChain(chain, services)
	if err != nil {
		return Identity{}, err
	}
	if err := CheckKey(chain[0].PublicKey, domain); err != nil {
		return Identity{}, fmt.Errorf("certificate %q: %w", chain[0].Subject.CommonName, err)
	}
	return id, nil
}

var oidCommonName = asn1.ObjectIdentifier{2, 5, 4, 3}

// commonNames counts the CN attributes of c's subject. Exactly one is
// accepted: with two, Go's Subject.CommonName is the last while other
// software (an external broker's use_identity_as_username, OpenSSL's
// -subject output) may read the first, and the two would disagree about
// whose certificate it is.
func commonNames(c *x509.Certificate) int {
	n := 0
	for _, a := range c.Subject.Names {
		if a.Type.Equal(oidCommonName) {
			n++
		}
	}
	return n
}
