package store

import (
	"context"
	"errors"
	"time"
)

// ErrConsumed is returned (wrapped) by ConsumeClaim when the claim was
// already used by an earlier enrollment.
var ErrConsumed = errors.New("claim already consumed")

// Manufacturer is a trusted manufacturer onboarding CA: devices whose
// factory certificate (IDevID) chains to it may call EST enrollment, and
// nothing else.
type Manufacturer struct {
	Fingerprint string // SHA-256 of DER, lowercase hex; the key
	Subject     string // the CA's subject, as text, for humans
	NotAfter    time.Time
	DER         []byte
	AddedAt     time.Time
}

// Claim kinds: how a claim names the onboarding certificate it matches.
const (
	ClaimBySerial  = "serial"  // Value is the certificate serial, lowercase hex (pki.SerialHex)
	ClaimBySubject = "subject" // Value is the subject common name, exact
)

// Claim pre-assigns a device, named by its onboarding certificate, to an
// identity path (master/account/device). An enrollment consumes it, so one
// onboarding certificate buys exactly one transport identity.
type Claim struct {
	Kind      string // ClaimBySerial or ClaimBySubject
	Value     string
	Path      string // identity path the device enrolls as
	CreatedAt time.Time
	// ConsumedAt is zero until an enrollment used the claim.
	ConsumedAt time.Time
	// ConsumedBy is the serial (lowercase hex) of the onboarding
	// certificate that consumed the claim; empty until then.
	ConsumedBy string
}

// Consumed reports whether an enrollment has used the claim.
func (c Claim) Consumed() bool { return !c.ConsumedAt.IsZero() }

// Enrollments is what zero-touch onboarding persists: trusted manufacturer
// CAs and device claims.
type Enrollments interface {
	// AddManufacturer trusts a manufacturer CA. It returns ErrExists if a
	// CA with the same fingerprint is already trusted.
	AddManufacturer(ctx context.Context, m Manufacturer) error
	// Manufacturers returns every trusted manufacturer CA in the order
	// they were added.
	Manufacturers(ctx context.Context) ([]Manufacturer, error)

	// PutClaims records claims all or nothing: if any (Kind, Value) is
	// already claimed, or appears twice in claims, nothing is written and
	// the error wraps ErrExists and names the value.
	PutClaims(ctx context.Context, claims []Claim) error
	// Claims returns every claim in the order they were created.
	Claims(ctx context.Context) ([]Claim, error)
	// Claim returns the claim of (kind, value), or ErrNotFound.
	Claim(ctx context.Context, kind, value string) (Claim, error)
	// ConsumeClaim marks an unconsumed claim as used by the onboarding
	// certificate with serial by. It is atomic: of concurrent calls for the
	// same claim exactly one succeeds; the others, and any later call,
	// return ErrConsumed. ErrNotFound if there is no such claim.
	ConsumeClaim(ctx context.Context, kind, value, by string, at time.Time) error
	// ReleaseClaim undoes ConsumeClaim when the enrollment failed after
	// consuming it (nothing was issued). Releasing an unconsumed claim is a
	// no-op; ErrNotFound if there is no such claim.
	ReleaseClaim(ctx context.Context, kind, value string) error
}
