package gateway

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/pki"
)

// crlState holds the revocation state the platform pushes as retained CRL
// bundles (topic.CRLTransport, topic.CRLE2E), by PKI domain. A CRL is applied only if it is
// signed by a CA the gateway knows (from its trust anchor, its own chains,
// EST cacerts or the platform's verified server chain), is current, and is
// not older than one already applied (no rollback to a CRL that predates a
// revocation).
type crlState struct {
	creds *credentials
	log   *slog.Logger

	mu      sync.Mutex
	cas     map[string]*x509.Certificate  // by subject key ID
	numbers map[string]int64              // issuer SKI -> highest CRL number applied
	revoked map[pki.Domain]map[string]int // domain -> serial -> reason
}

func newCRLState(creds *credentials, log *slog.Logger) *crlState {
	s := &crlState{creds: creds, log: log, cas: map[string]*x509.Certificate{}, numbers: map[string]int64{}, revoked: map[pki.Domain]map[string]int{}}
	tr, e2e := creds.current()
	for _, c := range append(append(append([]*x509.Certificate{}, creds.anchors...), tr.chain[1:]...), e2e.chain[1:]...) {
		s.learn(c)
	}
	for _, c := range creds.e2eCAs {
		s.learn(c)
	}
	return s
}

func (s *crlState) learn(c *x509.Certificate) {
	if c.IsCA && len(c.SubjectKeyId) > 0 {
		s.cas[string(c.SubjectKeyId)] = c
	}
}

// verifyPeer is the TLS VerifyConnection hook for the broker connection:
// it refuses a platform whose certificate (or a CA above it) is on a CRL
// the gateway holds, and learns the platform's CAs for checking CRLs.
func (s *crlState) verifyPeer(cs tls.ConnectionState) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(cs.VerifiedChains) == 0 {
		return errors.New("platform certificate not verified")
	}
	for _, c := range cs.VerifiedChains[0] {
		s.learn(c)
		if reason, ok := s.revoked[pki.Transport][pki.SerialHex(c.SerialNumber)]; ok {
			return fmt.Errorf("platform certificate %q is revoked (%s)", c.Subject.CommonName, pki.ReasonName(reason))
		}
	}
	return nil
}

// apply verifies and applies a CRL bundle of a domain's PKI.
func (s *crlState) apply(domain pki.Domain, payload []byte) {
	crls, err := pki.ParseCRLBundle(payload)
	if err != nil {
		s.log.Warn("ignoring a malformed CRL bundle", "domain", domain, "err", err)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	next := map[string]int{}
	for serial, reason := range s.revoked[domain] {
		next[serial] = reason
	}
	applied := 0
	now := time.Now()
	for _, crl := range crls {
		issuer, ok := s.cas[string(crl.AuthorityKeyId)]
		if !ok {
			continue // a CA the gateway has no business with
		}
		if err := crl.CheckSignatureFrom(issuer); err != nil {
			s.log.Warn("ignoring a CRL with a bad signature", "issuer", issuer.Subject.CommonName, "err", err)
			continue
		}
		if !crl.NextUpdate.IsZero() && now.After(crl.NextUpdate) {
			s.log.Warn("ignoring an outdated CRL", "issuer", issuer.Subject.CommonName, "next_update", crl.NextUpdate)
			continue
		}
		n := crl.Number.Int64()
		if n < s.numbers[string(crl.AuthorityKeyId)] {
			s.log.Warn("ignoring an older CRL than the one applied", "issuer", issuer.Subject.CommonName, "number", n)
			continue
		}
		s.numbers[string(crl.AuthorityKeyId)] = n
		for _, e := range crl.RevokedCertificateEntries {
			next[pki.SerialHex(e.SerialNumber)] = e.ReasonCode
		}
		applied++
	}
	s.revoked[domain] = next
	tr, e2e := s.creds.current()
	for _, own := range []*credential{tr, e2e} {
		if _, ok := next[pki.SerialHex(own.leaf().SerialNumber)]; ok {
			s.log.Error("this gateway's own certificate is revoked; the platform will refuse it", "subject", own.leaf().Subject.CommonName, "serial", pki.SerialHex(own.leaf().SerialNumber))
		}
	}
	s.log.Info("CRLs applied", "domain", domain, "crls", applied, "revoked", len(next))
}

// revokedOf returns a copy of the revoked serials of a domain.
func (s *crlState) revokedOf(domain pki.Domain) map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]int, len(s.revoked[domain]))
	for k, v := range s.revoked[domain] {
		out[k] = v
	}
	return out
}
