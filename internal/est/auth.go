package est

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/pki"
)

// The platform's HTTPS listener requests client certificates without
// verifying them in the TLS layer (tls.RequestClientCert), because two
// kinds reach it: manufacturer onboarding certificates, for EST enrollment
// only, and operational transport certificates, for everything else. Each
// route therefore verifies the presented chain itself: EST with the
// functions below, every other route through GuardOperational. The TLS
// handshake has already proven that the client holds the leaf's key
// (CertificateVerify).

// peerChain returns the client's leaf and the intermediates it sent.
func peerChain(r *http.Request) (*x509.Certificate, []*x509.Certificate, bool) {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return nil, nil, false
	}
	return r.TLS.PeerCertificates[0], r.TLS.PeerCertificates[1:], true
}

// operational authenticates the client by its operational transport
// certificate: 401 if it has none or one that does not chain to the
// transport root, 403 if it is revoked or a service.
func operational(r *http.Request, v OperationalVerifier) (pki.Identity, *httpError) {
	leaf, inter, ok := peerChain(r)
	if !ok {
		return pki.Identity{}, &httpError{http.StatusUnauthorized, "no client certificate; present your operational transport certificate", nil}
	}
	id, _, err := v.Verify(leaf, inter, time.Time{}, x509.ExtKeyUsageClientAuth)
	switch {
	case errors.Is(err, pki.ErrRevoked):
		return pki.Identity{}, &httpError{http.StatusForbidden, "client certificate is revoked", err}
	case err != nil:
		return pki.Identity{}, &httpError{http.StatusUnauthorized, "client certificate is not a valid operational transport certificate", err}
	case id.IsService():
		return pki.Identity{}, &httpError{http.StatusForbidden, "service certificates are issued by the operator ('fieldtrust pki issue --service'), not over EST", nil}
	}
	return id, nil
}

// onboarding authenticates the client by a manufacturer onboarding
// certificate, verified against the manufacturer CAs trusted right now
// (read from the store on every enrollment, so 'fieldtrust manufacturer
// trust' takes effect at once).
func (s *Server) onboarding(ctx context.Context, r *http.Request) (*x509.Certificate, *httpError) {
	leaf, inter, ok := peerChain(r)
	if !ok {
		return nil, &httpError{http.StatusUnauthorized, "no client certificate; present your manufacturer onboarding certificate (IDevID)", nil}
	}
	if _, _, err := s.verifier.Verify(leaf, inter, time.Time{}, x509.ExtKeyUsageClientAuth); err == nil || errors.Is(err, pki.ErrRevoked) {
		return nil, &httpError{http.StatusForbidden, "this is an operational certificate; renew it with simplereenroll", err}
	}
	mfrs, err := s.records.Manufacturers(ctx)
	if err != nil {
		return nil, &httpError{http.StatusInternalServerError, "internal error", err}
	}
	roots := x509.NewCertPool()
	for _, m := range mfrs {
		c, err := x509.ParseCertificate(m.DER)
		if err != nil {
			s.log.Error("stored manufacturer CA does not parse; skipping it", "fingerprint", m.Fingerprint, "err", err)
			continue
		}
		roots.AddCert(c)
	}
	pool := x509.NewCertPool()
	for _, c := range inter {
		pool.AddCert(c)
	}
	if len(mfrs) == 0 {
		return nil, &httpError{http.StatusForbidden, "onboarding certificate is not issued by a trusted manufacturer CA", errors.New("no manufacturer CA is trusted; add one with 'fieldtrust manufacturer trust'")}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return nil, &httpError{http.StatusForbidden, "onboarding certificate is not issued by a trusted manufacturer CA", err}
	}
	return leaf, nil
}

type identityKey struct{}

// IdentityFromContext returns the operational identity GuardOperational
// verified for the request, if the client presented a certificate.
func IdentityFromContext(ctx context.Context) (pki.Identity, bool) {
	id, ok := ctx.Value(identityKey{}).(pki.Identity)
	return id, ok
}

// GuardOperational wraps every platform route other than EST: a request
// that presents a client certificate must present a valid, unrevoked
// operational transport certificate (or a service certificate), else it is
// refused with 401 (untrusted, e.g. a manufacturer onboarding certificate)
// or 403 (revoked). Requests without a certificate pass, so public routes
// (/healthz, /ca) keep working; routes that need an identity read it with
// IdentityFromContext, or r.TLS.VerifiedChains, which the guard fills with
// the chain it verified. This is what keeps onboarding certificates, which
// the TLS layer lets through for EST, away from every other route.
func GuardOperational(v OperationalVerifier, log *slog.Logger, next http.Handler) http.Handler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		leaf, inter, ok := peerChain(r)
		if !ok {
			next.ServeHTTP(w, r)
			return
		}
		id, chain, err := v.Verify(leaf, inter, time.Time{}, x509.ExtKeyUsageClientAuth)
		if err != nil {
			status, reason := http.StatusUnauthorized, "client certificate is not a valid operational transport certificate"
			if errors.Is(err, pki.ErrRevoked) {
				status, reason = http.StatusForbidden, "client certificate is revoked"
			}
			log.Warn("request refused", "remote", r.RemoteAddr, "subject", peerSubject(r), "path", r.URL.Path, "status", status, "reason", reason, "err", err.Error())
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.WriteHeader(status)
			fmt.Fprintln(w, reason)
			return
		}
		// Downstream handlers written for a TLS layer that verifies (they
		// read r.TLS.VerifiedChains) keep working: hand them the chain
		// verified here.
		r2 := r.WithContext(context.WithValue(r.Context(), identityKey{}, id))
		cs := *r.TLS
		cs.VerifiedChains = [][]*x509.Certificate{chain}
		r2.TLS = &cs
		next.ServeHTTP(w, r2)
	})
}
