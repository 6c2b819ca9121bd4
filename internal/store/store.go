// Package store defines what the platform keeps in its database and the
// contract every implementation (SQLite by default, PostgreSQL later) meets.
// The shared conformance suite in storetest holds each implementation to it.
package store

import (
	"context"
	"errors"
	"time"
)

// ErrNotFound is returned (wrapped) when a requested record does not exist.
var ErrNotFound = errors.New("not found")

// ErrExists is returned (wrapped) when a record with the same key exists.
var ErrExists = errors.New("already exists")

// ErrLedgerMoved is returned (wrapped) by AppendLedger when the ledger no
// longer ends where the caller read it: another process on the same
// database (another node's ingest) appended meanwhile.
var ErrLedgerMoved = errors.New("the ledger grew since it was read")

// Certificate is the record of one certificate a fieldtrust CA issued.
type Certificate struct {
	Domain       string // trust domain: "transport" or "e2e"
	Serial       string // lowercase hex, no colons; unique within a domain
	Kind         string // root, master-ca, account-ca, services-ca, leaf, service
	Name         string // identity path, CA path or service name
	IssuerSerial string // serial of the issuing CA; empty for a root
	NotBefore    time.Time
	NotAfter     time.Time
	DER          []byte
	RevokedAt    time.Time // zero unless revoked
	Reason       int       // RFC 5280 CRLReason, meaningful when RevokedAt is set
}

// Revoked reports whether the certificate has been revoked.
func (c Certificate) Revoked() bool { return !c.RevokedAt.IsZero() }

// CertFilter selects certificates in ListCertificates. Zero fields match all.
type CertFilter struct {
	Domain       string
	Name         string
	IssuerSerial string
	RevokedOnly  bool
	// Kinds, if set, selects certificates of any of these kinds.
	Kinds []string
}

// PathRevocation records that an identity path was revoked: every
// certificate of the path issued before RevokedAt is refused wherever it is
// presented, and nothing is issued for the path on the authority of such a
// certificate (see pki.Authority.RevokePath).
type PathRevocation struct {
	Domain    string
	Path      string
	RevokedAt time.Time // whole seconds
	Reason    int       // RFC 5280 CRLReason
	// RevokeClaims also marks every device claim of Path revoked, in the
	// same transaction, so that the onboarding certificate that bought
	// the identity cannot buy it again (transport). Not stored.
	RevokeClaims bool
}

// Store is everything the platform persists. Implementations are safe for
// concurrent use, and several processes may open the same database (the
// operator CLI runs next to 'fieldtrust up').
type Store interface {
	// PutCertificate records a newly issued certificate. It returns
	// ErrExists if the domain already has one with that serial.
	PutCertificate(ctx context.Context, c Certificate) error
	// Certificate returns the certificate with the serial, or ErrNotFound.
	Certificate(ctx context.Context, domain, serial string) (Certificate, error)
	// ListCertificates returns matching certificates ordered by issue time.
	ListCertificates(ctx context.Context, f CertFilter) ([]Certificate, error)
	// RevokeCertificate marks a certificate revoked. Revoking a revoked
	// certificate keeps the first revocation and returns nil. It returns
	// ErrNotFound if there is no such certificate.
	RevokeCertificate(ctx context.Context, domain, serial string, reason int, at time.Time) error
	// NextCRLNumber returns a number larger than any it returned before for
	// the same CA, starting at 1 (RFC 5280 §5.2.3: CRL numbers increase).
	NextCRLNumber(ctx context.Context, domain, issuerSerial string) (int64, error)

	// RevokePath records a path revocation. Revoking a revoked path again
	// moves RevokedAt to the later time (it covers more certificates).
	// With r.RevokeClaims, the path's claims are marked revoked in the
	// same transaction.
	RevokePath(ctx context.Context, r PathRevocation) error
	// PathRevocation returns the revocation of path in domain, or
	// ErrNotFound.
	PathRevocation(ctx context.Context, domain, path string) (PathRevocation, error)
	// PathRevocations returns every path revocation of domain.
	PathRevocations(ctx context.Context, domain string) ([]PathRevocation, error)
	// RevocationVersion is a number that changes (grows) whenever
	// RevokeCertificate or RevokePath changes domain's revocation state,
	// so that a running platform can poll one row instead of every
	// certificate. 0 before the first revocation.
	RevocationVersion(ctx context.Context, domain string) (int64, error)

	// SetServiceRole records the role a platform service is granted.
	SetServiceRole(ctx context.Context, service, role string) error
	// ServiceRoles returns every service's role.
	ServiceRoles(ctx context.Context) (map[string]string, error)

	Ledger

	Enrollments

	Snapshots

	Console

	Live

	Series
	Firmware
	Rules
	Agents

	Close() error
}
