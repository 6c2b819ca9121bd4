package est

import (
	"context"
	"crypto/x509"
	"errors"
	"log/slog"
	"net/http"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/store"
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
// transport root, 403 if it is revoked or a service. It returns the
// verified credential.
func operational(r *http.Request, v OperationalVerifier) (*pki.Credential, *httpError) {
	leaf, inter, ok := peerChain(r)
	if !ok {
		return nil, &httpError{http.StatusUnauthorized, "no client certificate; present your operational transport certificate", nil}
	}
	id, chain, err := v.Verify(leaf, inter, time.Time{}, x509.ExtKeyUsageClientAuth)
	switch {
	case errors.Is(err, pki.ErrRevoked):
		return nil, &httpError{http.StatusForbidden, "client certificate is revoked", err}
	case err != nil:
		return nil, &httpError{http.StatusUnauthorized, "client certificate is not a valid operational transport certificate", err}
	case id.IsService():
		return nil, &httpError{http.StatusForbidden, "service certificates are issued by the operator ('fieldtrust pki issue --service'), not over EST", nil}
	case id.Site:
		// A site certificate proves an account but grants a site's rights
		// only; a renewal over EST would come back as the account's own
		// certificate. It speaks MQTT to the platform, nothing else.
		return nil, &httpError{http.StatusForbidden, "site certificates are issued and renewed by the operator ('fieldtrust pki issue --site'), and are for a site's MQTT connection only", nil}
	}
	return &pki.Credential{Domain: pki.Transport, Identity: id, Chain: chain}, nil
}

// onboardingCert is a verified manufacturer onboarding certificate and,
// once findClaim found it, its claim.
type onboardingCert struct {
	leaf   *x509.Certificate
	chains [][]*x509.Certificate // verified, each ending at a trusted manufacturer CA
	claim  store.Claim
}

// manufacturerCAs returns the CAs the certificate verified through, each
// once, its issuer first: a claim may name any of them (the trusted
// manufacturer root, or the production line's intermediate).
func (o *onboardingCert) manufacturerCAs() []*x509.Certificate {
	var out []*x509.Certificate
	seen := map[string]bool{}
	for depth := 1; ; depth++ {
		more := false
		for _, chain := range o.chains {
			if depth >= len(chain) {
				continue
			}
			more = true
			if k := pki.KeyID(chain[depth]); !seen[k] {
				seen[k] = true
				out = append(out, chain[depth])
			}
		}
		if !more {
			return out
		}
	}
}

// consumer names the certificate for ConsumeClaim.
func (o *onboardingCert) consumer() store.Consumer {
	return store.Consumer{Serial: pki.SerialHex(o.leaf.SerialNumber), Fingerprint: pki.Fingerprint(o.leaf)}
}

// consumed reports whether this very certificate consumed c: the same
// DER, or for a claim consumed before fingerprints were recorded (and
// since adopted by this manufacturer), the same serial.
func (o *onboardingCert) consumed(c store.Claim) bool {
	if !c.Consumed() {
		return false
	}
	if c.ConsumedByCert != "" {
		return c.ConsumedByCert == pki.Fingerprint(o.leaf)
	}
	return c.ConsumedBy == pki.SerialHex(o.leaf.SerialNumber)
}

// onboarding authenticates the client by a manufacturer onboarding
// certificate, verified against the manufacturer CAs trusted right now
// (read from the store on every enrollment, so 'fieldtrust manufacturer
// trust' takes effect at once).
func (s *Server) onboarding(ctx context.Context, r *http.Request) (*onboardingCert, *httpError) {
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
	chains, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	if err != nil {
		return nil, &httpError{http.StatusForbidden, "onboarding certificate is not issued by a trusted manufacturer CA", err}
	}
	if err := pki.CheckKey(leaf.PublicKey, pki.Transport); err != nil {
		return nil, &httpError{http.StatusForbidden, "onboarding certificate " + err.Error(), nil}
	}
	return &onboardingCert{leaf: leaf, chains: chains}, nil
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
			RefuseText(w, status, reason)
			return
		}
		if id.Site {
			log.Warn("request refused", "remote", r.RemoteAddr, "subject", id.String(), "path", r.URL.Path, "status", http.StatusForbidden, "reason", "site certificate")
			RefuseText(w, http.StatusForbidden, "a site certificate is for the site's MQTT connection only; use an account or service certificate")
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

// Challenge is the WWW-Authenticate value of every 401 (RFC 9110 §11.6.1:
// a 401 must carry a challenge). The platform authenticates clients only by
// TLS client certificate, so it offers no HTTP scheme a client could answer
// with credentials (Basic would invite passwords that are never checked):
// the scheme names what to do, and clients that do not know it (all of
// them) report an authentication failure instead of a malformed answer.
const Challenge = `TLS-Client-Certificate realm="fieldtrust", error="present a valid client certificate in the TLS handshake"`

// RefuseText answers a refusal as text/plain with Content-Length, and for
// 401 the WWW-Authenticate challenge. Every refusal of the platform's
// HTTPS listener that is about the client certificate goes through it.
func RefuseText(w http.ResponseWriter, status int, reason string) {
	if status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", Challenge)
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	writeBody(w, status, []byte(reason+"\n"))
}
