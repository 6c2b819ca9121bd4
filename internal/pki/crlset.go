package pki

import (
	"crypto/x509"
	"fmt"
	"maps"
	"sync"
	"time"
)

// CRLSet is the revocation state of one PKI domain as a party without the
// platform's store learns it: from CRL bundles (ParseCRLBundle) published
// by the platform. A CRL counts only if a CA the set knows (Learn) signed
// it, it is current, and it is not older than one already applied from
// that CA, so a replayed old bundle cannot roll a revocation back.
// Revocations only accumulate. It is safe for concurrent use.
type CRLSet struct {
	mu      sync.Mutex
	cas     map[string]*x509.Certificate // by subject key ID
	numbers map[string]int64             // CA subject key ID -> highest CRL number applied
	revoked map[string]int               // serial hex -> CRL reason
}

// NewCRLSet returns a set that trusts CRLs of the given CAs.
func NewCRLSet(cas ...*x509.Certificate) *CRLSet {
	s := &CRLSet{cas: map[string]*x509.Certificate{}, numbers: map[string]int64{}, revoked: map[string]int{}}
	s.Learn(cas...)
	return s
}

// Learn adds CAs whose CRLs the set accepts; non-CA certificates and CAs
// without a subject key ID are ignored.
func (s *CRLSet) Learn(certs ...*x509.Certificate) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range certs {
		if c.IsCA && len(c.SubjectKeyId) > 0 {
			s.cas[string(c.SubjectKeyId)] = c
		}
	}
}

// Apply applies the CRLs of a bundle at time now. It returns how many were
// applied and why the others were not (an unknown issuer is no error: a
// bundle carries every CA's CRL, most of them none of this party's
// business).
func (s *CRLSet) Apply(crls []*x509.RevocationList, now time.Time) (applied int, refused []error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, crl := range crls {
		issuer, ok := s.cas[string(crl.AuthorityKeyId)]
		if !ok {
			continue
		}
		if err := crl.CheckSignatureFrom(issuer); err != nil {
			refused = append(refused, fmt.Errorf("CRL of %q: bad signature: %w", issuer.Subject.CommonName, err))
			continue
		}
		if !crl.NextUpdate.IsZero() && now.After(crl.NextUpdate) {
			refused = append(refused, fmt.Errorf("CRL of %q: outdated (next update %s)", issuer.Subject.CommonName, crl.NextUpdate.UTC().Format(time.RFC3339)))
			continue
		}
		var n int64
		if crl.Number != nil {
			n = crl.Number.Int64()
		}
		if n < s.numbers[string(crl.AuthorityKeyId)] {
			refused = append(refused, fmt.Errorf("CRL of %q: number %d is older than the %d applied", issuer.Subject.CommonName, n, s.numbers[string(crl.AuthorityKeyId)]))
			continue
		}
		s.numbers[string(crl.AuthorityKeyId)] = n
		for _, e := range crl.RevokedCertificateEntries {
			s.revoked[SerialHex(e.SerialNumber)] = e.ReasonCode
		}
		applied++
	}
	return applied, refused
}

// Revoked returns a copy of the revoked serials (lowercase hex) and their
// reasons, as NewVerifier and Verifier.SetRevoked take them.
func (s *CRLSet) Revoked() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.revoked)
}
