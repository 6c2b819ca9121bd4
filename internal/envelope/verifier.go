package envelope

import (
	"bytes"
	"context"
	"crypto/x509"
	"fmt"
	"math/big"
	"sync"
	"time"
)

// SignerVerifier decides whether a signer certificate is trusted and who it
// is. The envelope only proves that the holder of leaf's key signed the
// content; which chains count and what identity a chain carries is PKI
// policy, so it lives behind this interface (internal/pki implements it for
// the platform; ChainVerifier is the plain implementation).
//
// VerifySigner must return an error wrapping ErrUntrustedSigner or
// ErrRevokedSigner when it refuses the certificate, so that Open's callers
// can tell the two apart with errors.Is. intermediates are the certificates
// embedded in the message (untrusted hints, possibly empty); at is the time
// to verify at.
type SignerVerifier interface {
	VerifySigner(leaf *x509.Certificate, intermediates []*x509.Certificate, at time.Time) (identity string, err error)
}

// SignerID names a signer the way SignerInfo does: by subject key
// identifier (version 3, what Seal writes) or by issuer and serial number
// (version 1, OpenSSL's default). Exactly one of the two forms is set.
type SignerID struct {
	SubjectKeyID []byte
	RawIssuer    []byte // DER of the issuer Name
	SerialNumber *big.Int
}

// Matches reports whether c is the certificate id names.
func (id SignerID) Matches(c *x509.Certificate) bool {
	if id.SubjectKeyID != nil {
		return len(c.SubjectKeyId) > 0 && bytes.Equal(id.SubjectKeyID, c.SubjectKeyId)
	}
	return id.SerialNumber != nil && bytes.Equal(id.RawIssuer, c.RawIssuer) &&
		c.SerialNumber != nil && id.SerialNumber.Cmp(c.SerialNumber) == 0
}

func (id SignerID) String() string {
	if id.SubjectKeyID != nil {
		return fmt.Sprintf("key id %x", id.SubjectKeyID)
	}
	return fmt.Sprintf("serial %v", id.SerialNumber)
}

// SignerLookup finds signer certificates that do not ride along in the
// message (the default: devices sign by key id to keep envelopes small).
// LookupSigner returns (nil, nil) when it does not know the signer; an error
// means the lookup itself failed (a database down) and aborts Open.
type SignerLookup interface {
	LookupSigner(ctx context.Context, id SignerID) (*x509.Certificate, error)
}

// CertPool is a map-backed SignerLookup, safe for concurrent use.
type CertPool struct {
	mu    sync.RWMutex
	bySKI map[string]*x509.Certificate // guarded by mu
	all   []*x509.Certificate          // guarded by mu; for issuer+serial lookups
}

// NewCertPool returns a pool holding certs.
func NewCertPool(certs ...*x509.Certificate) *CertPool {
	p := &CertPool{bySKI: make(map[string]*x509.Certificate)}
	for _, c := range certs {
		p.Add(c)
	}
	return p
}

// Add adds c to the pool. A later certificate with the same subject key
// identifier replaces an earlier one (a renewed certificate for the same key).
func (p *CertPool) Add(c *x509.Certificate) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(c.SubjectKeyId) > 0 {
		p.bySKI[string(c.SubjectKeyId)] = c
	}
	p.all = append(p.all, c)
}

// Len returns the number of certificates added.
func (p *CertPool) Len() int {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return len(p.all)
}

// LookupSigner implements SignerLookup.
func (p *CertPool) LookupSigner(_ context.Context, id SignerID) (*x509.Certificate, error) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if id.SubjectKeyID != nil {
		return p.bySKI[string(id.SubjectKeyID)], nil
	}
	for _, c := range p.all {
		if id.Matches(c) {
			return c, nil
		}
	}
	return nil, nil
}

// ChainVerifier is the plain SignerVerifier: x509.Certificate.Verify against
// Roots, then every certificate of the chain below the root against the CRLs
// of its issuer. The identity is what Identify makes of the verified
// chains, or without it the leaf's Subject CommonName.
type ChainVerifier struct {
	// Identify names the signer of a verified chain (leaf first, root
	// last). Every chain the leaf verifies through must name the same
	// identity. An error refuses the signer as untrusted. Nil means the
	// leaf's common name, which says nothing about whether its issuers
	// may vouch for that name: fieldtrust's tools set this to the PKI's
	// namespace rule (pki.IdentifyVerifiedChain).
	Identify func(chain []*x509.Certificate) (string, error)
	// Roots are the trust anchors of the e2e PKI. Required.
	Roots *x509.CertPool
	// Intermediates are CA certificates known out of band, used besides
	// those embedded in the message.
	Intermediates []*x509.Certificate
	// CRLs are checked for every certificate of the chain; a CRL counts
	// for a certificate only if its issuer name matches and its
	// signature verifies with the issuing CA's key.
	CRLs []*x509.RevocationList
	// RequireCRL refuses a chain when some CA in it has no CRL current at
	// the verification time. Without it, a CA without CRL means "no
	// revocations known".
	RequireCRL bool
}

// VerifySigner implements SignerVerifier.
func (v *ChainVerifier) VerifySigner(leaf *x509.Certificate, intermediates []*x509.Certificate, at time.Time) (string, error) {
	if v.Roots == nil {
		return "", fmt.Errorf("%w: no trust roots configured", ErrUntrustedSigner)
	}
	if leaf.KeyUsage != 0 && leaf.KeyUsage&(x509.KeyUsageDigitalSignature|x509.KeyUsageContentCommitment) == 0 {
		return "", fmt.Errorf("%w: certificate %q is not for digital signatures (key usage)", ErrUntrustedSigner, leaf.Subject.CommonName)
	}
	inter := x509.NewCertPool()
	for _, c := range v.Intermediates {
		inter.AddCert(c)
	}
	for _, c := range intermediates {
		inter.AddCert(c)
	}
	chains, err := leaf.Verify(x509.VerifyOptions{
		Roots:         v.Roots,
		Intermediates: inter,
		CurrentTime:   at,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	if err != nil {
		return "", fmt.Errorf("%w: %q: %v", ErrUntrustedSigner, leaf.Subject.CommonName, err)
	}
	// Every chain must be clean: a revoked CA cannot be routed around by
	// a second path through a cross-certificate.
	for _, chain := range chains {
		if err := v.checkRevocation(chain, at); err != nil {
			return "", err
		}
	}
	if v.Identify == nil {
		return leaf.Subject.CommonName, nil
	}
	var id string
	for i, chain := range chains {
		name, err := v.Identify(chain)
		if err != nil {
			return "", fmt.Errorf("%w: %q: %v", ErrUntrustedSigner, leaf.Subject.CommonName, err)
		}
		if i > 0 && name != id {
			return "", fmt.Errorf("%w: %q verifies as both %q and %q through different chains", ErrUntrustedSigner, leaf.Subject.CommonName, id, name)
		}
		id = name
	}
	return id, nil
}

func (v *ChainVerifier) checkRevocation(chain []*x509.Certificate, at time.Time) error {
	for i := 0; i+1 < len(chain); i++ {
		cert, issuer := chain[i], chain[i+1]
		current := false
		for _, crl := range v.CRLs {
			if !bytes.Equal(crl.RawIssuer, cert.RawIssuer) || crl.CheckSignatureFrom(issuer) != nil {
				continue
			}
			for _, e := range crl.RevokedCertificateEntries {
				if e.SerialNumber != nil && e.SerialNumber.Cmp(cert.SerialNumber) == 0 {
					return fmt.Errorf("%w: %q (serial %v) revoked by %q on %s",
						ErrRevokedSigner, cert.Subject.CommonName, cert.SerialNumber,
						issuer.Subject.CommonName, e.RevocationTime.UTC().Format(time.RFC3339))
				}
			}
			if !crl.ThisUpdate.After(at) && (crl.NextUpdate.IsZero() || !crl.NextUpdate.Before(at)) {
				current = true
			}
		}
		if v.RequireCRL && !current {
			return fmt.Errorf("%w: no current CRL from %q (fetch a fresh CRL)", ErrUntrustedSigner, issuer.Subject.CommonName)
		}
	}
	return nil
}
