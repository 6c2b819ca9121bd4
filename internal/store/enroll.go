package store

import (
	"context"
	"errors"
	"time"
)

// ErrConsumed is returned (wrapped) by ConsumeClaim when the claim was
// already used by an earlier enrollment.
var ErrConsumed = errors.New("claim already consumed")

// ErrClaimRevoked is returned (wrapped) by ConsumeClaim when the claim's
// path was revoked (RevokePath with RevokeClaims).
var ErrClaimRevoked = errors.New("claim revoked")

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

// ClaimKey names a claim: which manufacturer CA must have issued the
// onboarding certificate, and which of its certificates (by serial or
// subject common name). Serials and subjects are unique only within one
// manufacturer, so the manufacturer is part of the key.
type ClaimKey struct {
	// ManufacturerKeyID is the key ID (pki.KeyID: SHA-256 of the
	// SubjectPublicKeyInfo, lowercase hex) of a manufacturer CA the
	// onboarding certificate must chain through. Empty only for claims
	// made before claims named their manufacturer; enrollment refuses
	// those until AdoptLegacyClaims assigns them.
	ManufacturerKeyID string
	Kind              string // ClaimBySerial or ClaimBySubject
	Value             string
}

// Claim pre-assigns a device, named by its onboarding certificate, to an
// identity path (master/account/device). An enrollment consumes it, so one
// onboarding certificate buys exactly one transport identity.
type Claim struct {
	ClaimKey
	// ManufacturerSubject is the manufacturer CA's subject, as text, for
	// humans (the key ID is what is matched).
	ManufacturerSubject string
	Path                string // identity path the device enrolls as
	CreatedAt           time.Time
	// ConsumedAt is zero until an enrollment used the claim.
	ConsumedAt time.Time
	// ConsumedBy is the serial (lowercase hex) of the onboarding
	// certificate that consumed the claim; empty until then.
	ConsumedBy string
	// ConsumedByCert is the SHA-256 fingerprint (lowercase hex) of that
	// onboarding certificate: what a retry or a permitted re-enrollment
	// must present. Empty for claims consumed before it was recorded.
	ConsumedByCert string
	// RevokedAt is set when the claim's path was revoked: the claim can
	// enroll nothing any more, and a new claim for the same device
	// replaces it.
	RevokedAt time.Time
}

// Consumed reports whether an enrollment has used the claim.
func (c Claim) Consumed() bool { return !c.ConsumedAt.IsZero() }

// Revoked reports whether the claim's path was revoked.
func (c Claim) Revoked() bool { return !c.RevokedAt.IsZero() }

// Legacy reports whether the claim was made before claims named their
// manufacturer.
func (c Claim) Legacy() bool { return c.ManufacturerKeyID == "" }

// Consumer is the onboarding certificate that consumes a claim.
type Consumer struct {
	Serial      string // lowercase hex
	Fingerprint string // SHA-256 of the DER, lowercase hex
}

// Enrollments is what zero-touch onboarding persists: trusted manufacturer
// CAs and device claims.
type Enrollments interface {
	// AddManufacturer trusts a manufacturer CA. It returns ErrExists if a
	// CA with the same fingerprint is already trusted.
	AddManufacturer(ctx context.Context, m Manufacturer) error
	// Manufacturers returns every trusted manufacturer CA in the order
	// they were added.
	Manufacturers(ctx context.Context) ([]Manufacturer, error)

	// PutClaims records claims all or nothing: if any key is already
	// claimed by a claim that is not revoked, or appears twice in claims,
	// nothing is written and the error wraps ErrExists and names the
	// value. A revoked claim with the same key is replaced.
	PutClaims(ctx context.Context, claims []Claim) error
	// Claims returns every claim in the order they were created.
	Claims(ctx context.Context) ([]Claim, error)
	// Claim returns the claim with key k, or ErrNotFound.
	Claim(ctx context.Context, k ClaimKey) (Claim, error)
	// ConsumeClaim marks an unconsumed claim as used by the onboarding
	// certificate by. It is atomic: of concurrent calls for the same claim
	// exactly one succeeds; the others, and any later call, return
	// ErrConsumed. ErrClaimRevoked if the claim is revoked, ErrNotFound
	// if there is no such claim.
	ConsumeClaim(ctx context.Context, k ClaimKey, by Consumer, at time.Time) error
	// ReleaseClaim undoes ConsumeClaim when the enrollment failed after
	// consuming it (nothing was issued). Releasing an unconsumed claim is a
	// no-op; ErrNotFound if there is no such claim.
	ReleaseClaim(ctx context.Context, k ClaimKey) error
	// AdoptLegacyClaims assigns every legacy claim (no manufacturer) to
	// the manufacturer CA with key ID keyID, all or nothing, and returns
	// how many it assigned. ErrExists if one would collide with a claim
	// of that manufacturer.
	AdoptLegacyClaims(ctx context.Context, keyID, subject string) (int, error)
}
