package gateway

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/pki"
)

// crlState holds the revocation state the platform pushes as retained CRL
// bundles (topic.CRLTransport, topic.CRLE2E), by PKI domain: one
// pki.CRLSet per domain (a CRL is applied only if it is signed by a CA the
// gateway knows — from its trust anchor, its own chains, EST cacerts or the
// platform's verified server chain —, is current, and is not older than
// one already applied: no rollback to a CRL that predates a revocation).
type crlState struct {
	creds *credentials
	log   *slog.Logger
	sets  map[pki.Domain]*pki.CRLSet
}

func newCRLState(creds *credentials, log *slog.Logger) *crlState {
	s := &crlState{creds: creds, log: log, sets: map[pki.Domain]*pki.CRLSet{pki.Transport: pki.NewCRLSet(), pki.E2E: pki.NewCRLSet()}}
	tr, e2e := creds.current()
	s.learn(append(append(append([]*x509.Certificate{}, creds.anchors...), tr.chain[1:]...), e2e.chain[1:]...)...)
	s.learn(creds.e2eCAs...)
	return s
}

// learn makes CAs known to both domains' sets: a CA signs CRLs of its own
// domain only, so knowing it in the other does no harm.
func (s *crlState) learn(cs ...*x509.Certificate) {
	for _, set := range s.sets {
		set.Learn(cs...)
	}
}

// verifyPeer is the TLS VerifyConnection hook for the broker connection:
// it refuses a platform whose certificate (or a CA above it) is on a CRL
// the gateway holds, and learns the platform's CAs for checking CRLs.
func (s *crlState) verifyPeer(cs tls.ConnectionState) error {
	if len(cs.VerifiedChains) == 0 {
		return errors.New("platform certificate not verified")
	}
	s.learn(cs.VerifiedChains[0]...)
	revoked := s.sets[pki.Transport].Revoked()
	for _, c := range cs.VerifiedChains[0] {
		if reason, ok := revoked[pki.SerialHex(c.SerialNumber)]; ok {
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
	applied, refused := s.sets[domain].Apply(crls, time.Now())
	for _, err := range refused {
		s.log.Warn("ignoring a CRL", "domain", domain, "err", err)
	}
	next := s.sets[domain].Revoked()
	tr, e2e := s.creds.current()
	for _, own := range []*credential{tr, e2e} {
		if _, ok := next[pki.SerialHex(own.leaf().SerialNumber)]; ok {
			s.log.Error("this gateway's own certificate is revoked; the platform will refuse it", "subject", own.leaf().Subject.CommonName, "serial", pki.SerialHex(own.leaf().SerialNumber))
		}
	}
	s.log.Info("CRLs applied", "domain", domain, "crls", applied, "revoked", len(next))
}

// revokedOf returns a copy of the revoked serials of a domain.
func (s *crlState) revokedOf(domain pki.Domain) map[string]int { return s.sets[domain].Revoked() }
