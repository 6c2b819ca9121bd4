package envelope

import "errors"

// Sentinel errors. Every error returned by Open and Verify wraps exactly one
// of these, so callers can decide with errors.Is what to do (drop, alert,
// ask for a CRL refresh) while the wrapped message carries the detail for
// the log. Nothing in this package panics on hostile input.
var (
	// ErrMalformed: the input is not a well-formed envelope of the profile
	// described in doc.go: bad DER, wrong or unsupported OIDs, a bound from
	// limits.go exceeded, trailing data. The sender (or something in
	// between) is broken; retrying will not help.
	ErrMalformed = errors.New("malformed envelope")

	// ErrNotForMe: the envelope is well formed but names no recipient
	// matching our certificate (by subject key identifier or issuer and
	// serial number).
	ErrNotForMe = errors.New("envelope not addressed to this recipient")

	// ErrTampered: a cryptographic check failed: the AES-GCM tag, the key
	// unwrap integrity check, the message digest or the signature. The
	// envelope was modified in transit or forged.
	ErrTampered = errors.New("envelope tampered with")

	// ErrUnsigned: the envelope carries no SignedData but the caller did
	// not allow unsigned content.
	ErrUnsigned = errors.New("envelope is not signed")

	// ErrUnknownSigner: the signature names a signer whose certificate is
	// neither embedded nor known to the SignerLookup.
	ErrUnknownSigner = errors.New("unknown signer")

	// ErrUntrustedSigner: the signer certificate does not chain to a trusted
	// root (foreign PKI, expired, wrong key usage, missing CRL when CRLs are
	// required).
	ErrUntrustedSigner = errors.New("untrusted signer")

	// ErrRevokedSigner: the signer certificate or one of its issuing CAs is
	// on a CRL of its issuer.
	ErrRevokedSigner = errors.New("revoked signer")
)
