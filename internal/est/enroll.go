package est

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/store"
)

// enroll serves simpleenroll and simplereenroll for issuer's domain.
func (s *Server) enroll(w http.ResponseWriter, r *http.Request, issuer Issuer, op string) *httpError {
	ctx := r.Context()
	domain := issuer.Domain()

	// Who is asking, and for which identity.
	var (
		path pki.Path
		cred *pki.Credential // operational authentication
		ob   *onboardingCert // onboarding authentication
	)
	if domain == pki.Transport && op == opSimpleEnroll {
		var herr *httpError
		if ob, herr = s.onboarding(ctx, r); herr != nil {
			return herr
		}
		if herr = s.findClaim(ctx, ob); herr != nil {
			return herr
		}
		p, err := pki.ParsePath(ob.claim.Path)
		if err != nil || len(p) != pki.MaxPathElements {
			return &httpError{http.StatusInternalServerError, "internal error", fmt.Errorf("claim %s %s holds invalid path %q: %v", ob.claim.Kind, ob.claim.Value, ob.claim.Path, err)}
		}
		path = p
	} else {
		c, herr := operational(r, s.verifier)
		if herr != nil {
			return herr
		}
		cred, path = c, c.Identity.Path
	}

	// What is asked for: a CSR whose signature proves possession of its key.
	csr, herr := readCSR(r)
	if herr != nil {
		return herr
	}
	if err := csr.CheckSignature(); err != nil {
		return &httpError{http.StatusBadRequest, "CSR signature does not verify (no proof of possession of the private key)", err}
	}
	if err := pki.CheckKey(csr.PublicKey, domain); err != nil {
		return &httpError{http.StatusBadRequest, "CSR " + err.Error(), nil}
	}
	if herr := checkBinding(csr, r.TLS, s.policy.RequireChannelBinding); herr != nil {
		return herr
	}
	if csr.Subject.CommonName != "" && csr.Subject.CommonName != path.String() {
		s.log.Debug("CSR subject ignored; the identity comes from the platform", "csr_subject", csr.Subject.String(), "path", path.String())
	}

	req := pki.LeafRequest{Path: path, PublicKey: csr.PublicKey, Validity: s.policy.TransportValidity, AuthenticatedBy: cred}
	if domain == pki.E2E {
		req.Validity = s.policy.E2EValidity
	}
	var release func()
	if ob != nil {
		if ob.claim.Consumed() {
			// A retry by the onboarding certificate that consumed the
			// claim, with the key it enrolled: the same answer again, so
			// a client that lost or refused the response is not stuck.
			leaf, err := s.issuedFor(ctx, path, csr)
			if err != nil {
				return &httpError{http.StatusInternalServerError, "internal error", err}
			}
			if leaf != nil {
				s.log.Info("EST enrollment repeated; answering with the certificate already issued", "remote", r.RemoteAddr, "subject", peerSubject(r), "path", path.String(), "serial", pki.SerialHex(leaf.SerialNumber))
				return writeCertsBody(w, leaf)
			}
			if !s.policy.AllowReenroll {
				return &httpError{http.StatusForbidden, "the claim for this device is already used; retry with the key you enrolled, or ask the operator for a new claim",
					fmt.Errorf("claim %s %s for %s consumed at %s by this onboarding certificate, for another key", ob.claim.Kind, ob.claim.Value, ob.claim.Path, ob.claim.ConsumedAt.Format(time.RFC3339))}
			}
		} else {
			// Consume the claim before issuing, so that of two concurrent
			// enrollments with one claim exactly one issues anything.
			err := s.records.ConsumeClaim(ctx, ob.claim.ClaimKey, ob.consumer(), time.Now())
			switch {
			case errors.Is(err, store.ErrConsumed):
				return &httpError{http.StatusForbidden, "the claim for this device is already used; ask the operator for a new claim", err}
			case errors.Is(err, store.ErrClaimRevoked):
				return claimRevoked(ob.claim)
			case err != nil:
				return &httpError{http.StatusInternalServerError, "internal error", err}
			}
			key := ob.claim.ClaimKey
			release = func() {
				// The request's context may be gone; the release must not be.
				rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
				defer cancel()
				if err := s.records.ReleaseClaim(rctx, key); err != nil {
					s.log.Error("could not release claim after failed enrollment; re-create it with 'fieldtrust device claim'", "claim", key.Kind+" "+key.Value, "err", err)
				}
			}
		}
		// Under the PKI's lock, just before signing: the claim must still
		// be this certificate's and not revoked ('pki revoke PATH' holds
		// the same lock, so it lands entirely before or after).
		req.Authorize = func(ctx context.Context) error {
			c, err := s.records.Claim(ctx, ob.claim.ClaimKey)
			if err != nil {
				return err
			}
			if c.Revoked() {
				return fmt.Errorf("%w: claim %s %s for %s", store.ErrClaimRevoked, c.Kind, c.Value, c.Path)
			}
			if !ob.consumed(c) {
				return fmt.Errorf("%w: claim %s %s is no longer this onboarding certificate's", store.ErrConsumed, c.Kind, c.Value)
			}
			return nil
		}
	}

	iss, err := issuer.Issue(ctx, req)
	if err != nil {
		if release != nil {
			release()
		}
		switch {
		case errors.Is(err, pki.ErrRevoked):
			return &httpError{http.StatusForbidden, "client certificate is revoked", err}
		case errors.Is(err, store.ErrClaimRevoked):
			return claimRevoked(ob.claim)
		case errors.Is(err, store.ErrConsumed):
			return &httpError{http.StatusForbidden, "the claim for this device is already used; ask the operator for a new claim", err}
		}
		return &httpError{http.StatusInternalServerError, "could not issue the certificate; try again later", err}
	}
	attrs := []any{"remote", r.RemoteAddr, "subject", peerSubject(r), "op", op, "domain", string(domain), "path", path.String(), "serial", pki.SerialHex(iss.Cert.SerialNumber), "not_after", iss.Cert.NotAfter}
	if ob != nil {
		attrs = append(attrs, "claim", ob.claim.Kind+" "+ob.claim.Value, "manufacturer", ob.claim.ManufacturerSubject)
	}
	s.log.Info("EST certificate issued", attrs...)
	// RFC 7030 §4.2.3: "only the certificate that was issued"; the
	// intermediates come from /cacerts.
	return writeCertsBody(w, iss.Cert)
}

func writeCertsBody(w http.ResponseWriter, leaf *x509.Certificate) *httpError {
	body, err := EncodeCerts([]*x509.Certificate{leaf})
	if err != nil {
		return &httpError{http.StatusInternalServerError, "internal error", err}
	}
	writeCerts(w, body)
	return nil
}

func claimRevoked(c store.Claim) *httpError {
	return &httpError{http.StatusForbidden, "this device's identity was revoked; ask the operator for a new claim",
		fmt.Errorf("claim %s %s for %s revoked at %s", c.Kind, c.Value, c.Path, c.RevokedAt.Format(time.RFC3339))}
}

// issuedFor returns the newest valid transport leaf of path with the CSR's
// public key, or nil: what an earlier enrollment with the same key issued.
func (s *Server) issuedFor(ctx context.Context, path pki.Path, csr *x509.CertificateRequest) (*x509.Certificate, error) {
	list, err := s.records.ListCertificates(ctx, store.CertFilter{Domain: string(pki.Transport), Name: path.String(), Kinds: []string{pki.KindLeaf}})
	if err != nil {
		return nil, err
	}
	cas, err := pathCAs(ctx, s.records, pki.Transport, path)
	if err != nil {
		return nil, err
	}
	for i := len(list) - 1; i >= 0; i-- {
		rec := list[i]
		if rec.Kind != pki.KindLeaf || rec.Revoked() {
			continue
		}
		c, err := x509.ParseCertificate(rec.DER)
		if err != nil || !bytes.Equal(c.RawSubjectPublicKeyInfo, csr.RawSubjectPublicKeyInfo) {
			continue
		}
		// Valid now: unexpired, unrevoked (also by path), in namespace.
		if id, _, err := s.verifier.Verify(c, cas, time.Time{}, x509.ExtKeyUsageClientAuth); err == nil && id.Path.Equal(path) {
			return c, nil
		}
	}
	return nil, nil
}

// findClaim finds the claim of an onboarding certificate: by serial first,
// then by subject common name, each time under a manufacturer CA the
// certificate verified through (its issuer first). A claim of another
// manufacturer never matches, whatever serial or name a certificate
// copies. A consumed claim is refused unless this very certificate
// consumed it (then enroll answers a retry, or re-enrolls by policy).
func (s *Server) findClaim(ctx context.Context, ob *onboardingCert) *httpError {
	serial := pki.SerialHex(ob.leaf.SerialNumber)
	lookups := []struct{ kind, value string }{{store.ClaimBySerial, serial}}
	if cn := ob.leaf.Subject.CommonName; cn != "" {
		lookups = append(lookups, struct{ kind, value string }{store.ClaimBySubject, cn})
	}
	found := false
	for _, l := range lookups {
		for _, ca := range ob.manufacturerCAs() {
			c, err := s.records.Claim(ctx, store.ClaimKey{ManufacturerKeyID: pki.KeyID(ca), Kind: l.kind, Value: l.value})
			if errors.Is(err, store.ErrNotFound) {
				continue
			}
			if err != nil {
				return &httpError{http.StatusInternalServerError, "internal error", err}
			}
			ob.claim, found = c, true
			break
		}
		if found {
			break
		}
	}
	if !found {
		for _, l := range lookups {
			c, err := s.records.Claim(ctx, store.ClaimKey{Kind: l.kind, Value: l.value})
			if errors.Is(err, store.ErrNotFound) {
				continue
			}
			if err != nil {
				return &httpError{http.StatusInternalServerError, "internal error", err}
			}
			return &httpError{http.StatusForbidden, "this device's claim predates claims that name the manufacturer; the operator must renew it ('fieldtrust device adopt-claims' or 'fieldtrust device claim --manufacturer')",
				fmt.Errorf("legacy claim %s %s for %s matches no manufacturer", c.Kind, c.Value, c.Path)}
		}
		return &httpError{http.StatusForbidden, "this device is not claimed; the operator must claim it first ('fieldtrust device claim')", nil}
	}
	c := ob.claim
	if c.Revoked() {
		return claimRevoked(c)
	}
	if c.Consumed() && !ob.consumed(c) {
		return &httpError{http.StatusForbidden, "the claim for this device is already used; ask the operator for a new claim",
			fmt.Errorf("claim %s %s for %s consumed at %s by onboarding certificate %s", c.Kind, c.Value, c.Path, c.ConsumedAt.Format(time.RFC3339), c.ConsumedBy)}
	}
	return nil
}

// readCSR reads and decodes a bounded request body.
func readCSR(r *http.Request) (*x509.CertificateRequest, *httpError) {
	if err := checkContentType(r.Header.Get("Content-Type")); err != nil {
		return nil, &httpError{http.StatusUnsupportedMediaType, err.Error(), nil}
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, MaxRequestBody+1))
	if err != nil {
		return nil, &httpError{http.StatusBadRequest, "could not read the request body", err}
	}
	if len(body) > MaxRequestBody {
		return nil, &httpError{http.StatusRequestEntityTooLarge, fmt.Sprintf("request body exceeds %d bytes", MaxRequestBody), nil}
	}
	csr, err := DecodeCSR(body)
	if err != nil {
		return nil, &httpError{http.StatusBadRequest, err.Error(), nil}
	}
	return csr, nil
}

// writeCerts answers a certs-only body with an explicit Content-Length:
// without one, net/http sends bodies over 2 KiB chunked, which libest's
// client refuses.
func writeCerts(w http.ResponseWriter, body []byte) {
	w.Header().Set("Content-Type", ContentTypeCertsOnly)
	w.Header().Set("Content-Transfer-Encoding", "base64")
	writeBody(w, http.StatusOK, body)
}

// writeBody writes status and body with Content-Length set.
func writeBody(w http.ResponseWriter, status int, body []byte) {
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	w.Write(body)
}

// caCerts serves the root and the intermediates relevant to the caller: the
// services CA (which issues the platform's own certificates) and, for a
// client that authenticates with its operational transport certificate, the
// CAs of its identity path in issuer's domain.
func (s *Server) caCerts(w http.ResponseWriter, r *http.Request, issuer Issuer) *httpError {
	certs := []*x509.Certificate{issuer.Root(), issuer.ServicesCA()}
	if _, _, ok := peerChain(r); ok {
		if cred, herr := operational(r, s.verifier); herr == nil {
			cas, err := pathCAs(r.Context(), s.records, issuer.Domain(), cred.Identity.Path)
			if err != nil {
				return &httpError{http.StatusInternalServerError, "internal error", err}
			}
			certs = append(certs, cas...)
		}
	}
	body, err := EncodeCerts(certs)
	if err != nil {
		return &httpError{http.StatusInternalServerError, "internal error", err}
	}
	writeCerts(w, body)
	return nil
}

// pathCAs returns the valid, unrevoked master-account and account CAs of
// path in domain, master first.
func pathCAs(ctx context.Context, rec Records, domain pki.Domain, path pki.Path) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	now := time.Now()
	for i, kind := range []string{pki.KindMasterCA, pki.KindAccountCA} {
		if i >= len(path) {
			break
		}
		list, err := rec.ListCertificates(ctx, store.CertFilter{Domain: string(domain), Name: path[:i+1].String()})
		if err != nil {
			return nil, err
		}
		for _, c := range list {
			if c.Kind != kind || c.Revoked() || now.After(c.NotAfter) {
				continue
			}
			cert, err := x509.ParseCertificate(c.DER)
			if err != nil {
				return nil, fmt.Errorf("stored CA %s: %w", c.Name, err)
			}
			out = append(out, cert)
		}
	}
	return out, nil
}

var (
	oidECPublicKey     = asn1.ObjectIdentifier{1, 2, 840, 10045, 2, 1}
	oidP256            = asn1.ObjectIdentifier{1, 2, 840, 10045, 3, 1, 7}
	oidECDSAWithSHA256 = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 2}
)

// csrAttrs serves RFC 7030 §4.5 CSR attributes: an ECDSA P-256 key signed
// with SHA-256 (what the fieldtrust gateway generates, and what every
// domain accepts), and challengePassword when channel binding is required.
func (s *Server) csrAttrs(w http.ResponseWriter, _ Issuer) *httpError {
	type attr struct {
		Type   asn1.ObjectIdentifier
		Values []asn1.ObjectIdentifier `asn1:"set"`
	}
	var items []asn1.RawValue
	add := func(v any) error {
		b, err := asn1.Marshal(v)
		items = append(items, asn1.RawValue{FullBytes: b})
		return err
	}
	var errs []error
	if s.policy.RequireChannelBinding {
		errs = append(errs, add(oidChallengePassword))
	}
	errs = append(errs, add(attr{Type: oidECPublicKey, Values: []asn1.ObjectIdentifier{oidP256}}), add(oidECDSAWithSHA256))
	if err := errors.Join(errs...); err != nil {
		return &httpError{http.StatusInternalServerError, "internal error", err}
	}
	der, err := asn1.Marshal(items)
	if err != nil {
		return &httpError{http.StatusInternalServerError, "internal error", err}
	}
	w.Header().Set("Content-Type", ContentTypeCSRAttrs)
	w.Header().Set("Content-Transfer-Encoding", "base64")
	writeBody(w, http.StatusOK, base64Lines(der))
	return nil
}
