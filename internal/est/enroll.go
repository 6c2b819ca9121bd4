package est

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
	"io"
	"net/http"
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
		path    pki.Path
		release func()
		onboard *x509.Certificate
		claim   store.Claim
	)
	if domain == pki.Transport && op == opSimpleEnroll {
		var herr *httpError
		if onboard, herr = s.onboarding(ctx, r); herr != nil {
			return herr
		}
		if claim, herr = s.findClaim(ctx, onboard); herr != nil {
			return herr
		}
		p, err := pki.ParsePath(claim.Path)
		if err != nil || len(p) != pki.MaxPathElements {
			return &httpError{http.StatusInternalServerError, "internal error", fmt.Errorf("claim %s %s holds invalid path %q: %v", claim.Kind, claim.Value, claim.Path, err)}
		}
		path = p
	} else {
		id, herr := operational(r, s.verifier)
		if herr != nil {
			return herr
		}
		path = id.Path
	}

	// What is asked for: a CSR whose signature proves possession of its key.
	csr, herr := readCSR(r)
	if herr != nil {
		return herr
	}
	if err := csr.CheckSignature(); err != nil {
		return &httpError{http.StatusBadRequest, "CSR signature does not verify (no proof of possession of the private key)", err}
	}
	if err := checkKey(csr.PublicKey, domain); err != nil {
		return &httpError{http.StatusBadRequest, err.Error(), nil}
	}
	if herr := checkBinding(csr, r.TLS, s.policy.RequireChannelBinding); herr != nil {
		return herr
	}
	if csr.Subject.CommonName != "" && csr.Subject.CommonName != path.String() {
		s.log.Debug("CSR subject ignored; the identity comes from the platform", "csr_subject", csr.Subject.String(), "path", path.String())
	}

	// Consume the claim before issuing, so that of two concurrent
	// enrollments with one claim exactly one issues anything.
	if onboard != nil {
		serial := pki.SerialHex(onboard.SerialNumber)
		if !claim.Consumed() {
			err := s.records.ConsumeClaim(ctx, claim.Kind, claim.Value, serial, time.Now())
			if errors.Is(err, store.ErrConsumed) {
				return &httpError{http.StatusForbidden, "the claim for this device is already used; ask the operator for a new claim", err}
			}
			if err != nil {
				return &httpError{http.StatusInternalServerError, "internal error", err}
			}
			release = func() {
				// The request's context may be gone; the release must not be.
				rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
				defer cancel()
				if err := s.records.ReleaseClaim(rctx, claim.Kind, claim.Value); err != nil {
					s.log.Error("could not release claim after failed enrollment; re-create it with 'fieldtrust device claim'", "claim", claim.Kind+" "+claim.Value, "err", err)
				}
			}
		}
	}

	validity := s.policy.TransportValidity
	if domain == pki.E2E {
		validity = s.policy.E2EValidity
	}
	iss, err := issuer.Issue(ctx, pki.LeafRequest{Path: path, PublicKey: csr.PublicKey, Validity: validity})
	if err != nil {
		if release != nil {
			release()
		}
		return &httpError{http.StatusInternalServerError, "could not issue the certificate; try again later", err}
	}
	body, err := EncodeCerts(iss.Chain)
	if err != nil {
		return &httpError{http.StatusInternalServerError, "internal error", err}
	}
	attrs := []any{"remote", r.RemoteAddr, "subject", peerSubject(r), "op", op, "domain", string(domain), "path", path.String(), "serial", pki.SerialHex(iss.Cert.SerialNumber), "not_after", iss.Cert.NotAfter}
	if onboard != nil {
		attrs = append(attrs, "claim", claim.Kind+" "+claim.Value)
	}
	s.log.Info("EST certificate issued", attrs...)
	writeCerts(w, body)
	return nil
}

// findClaim finds the claim of an onboarding certificate: by serial first,
// then by subject common name. A consumed claim is refused unless the
// policy allows the same onboarding certificate to enroll again.
func (s *Server) findClaim(ctx context.Context, leaf *x509.Certificate) (store.Claim, *httpError) {
	serial := pki.SerialHex(leaf.SerialNumber)
	c, err := s.records.Claim(ctx, store.ClaimBySerial, serial)
	if errors.Is(err, store.ErrNotFound) && leaf.Subject.CommonName != "" {
		c, err = s.records.Claim(ctx, store.ClaimBySubject, leaf.Subject.CommonName)
	}
	if errors.Is(err, store.ErrNotFound) {
		return c, &httpError{http.StatusForbidden, "this device is not claimed; the operator must claim it first ('fieldtrust device claim')", nil}
	}
	if err != nil {
		return c, &httpError{http.StatusInternalServerError, "internal error", err}
	}
	if c.Consumed() && !(s.policy.AllowReenroll && c.ConsumedBy == serial) {
		return c, &httpError{http.StatusForbidden, "the claim for this device is already used; ask the operator for a new claim",
			fmt.Errorf("claim %s %s for %s consumed at %s by onboarding certificate %s", c.Kind, c.Value, c.Path, c.ConsumedAt.Format(time.RFC3339), c.ConsumedBy)}
	}
	return c, nil
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

// checkKey enforces the key types a domain issues for. E2E keys seal
// payloads with ECDH (package envelope), so only P-256 and P-384.
func checkKey(pub any, domain pki.Domain) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256(), elliptic.P384():
			return nil
		case elliptic.P521():
			if domain == pki.Transport {
				return nil
			}
		}
		return fmt.Errorf("CSR key on curve %s is not accepted for %s; use P-256 or P-384", k.Curve.Params().Name, domain)
	case *rsa.PublicKey:
		if domain == pki.Transport && k.N.BitLen() >= 2048 {
			return nil
		}
	case ed25519.PublicKey:
		if domain == pki.Transport {
			return nil
		}
	}
	if domain == pki.E2E {
		return errors.New("CSR key is not accepted for e2e: use ECDSA P-256 or P-384 (payloads are sealed with ECDH)")
	}
	return errors.New("CSR key is not accepted: use ECDSA P-256/P-384/P-521, Ed25519 or RSA of at least 2048 bits")
}

func writeCerts(w http.ResponseWriter, body []byte) {
	w.Header().Set("Content-Type", ContentTypeCertsOnly)
	w.Header().Set("Content-Transfer-Encoding", "base64")
	w.WriteHeader(http.StatusOK)
	w.Write(body)
}

// caCerts serves the root and the intermediates relevant to the caller: the
// services CA (which issues the platform's own certificates) and, for a
// client that authenticates with its operational transport certificate, the
// CAs of its identity path in issuer's domain.
func (s *Server) caCerts(w http.ResponseWriter, r *http.Request, issuer Issuer) *httpError {
	certs := []*x509.Certificate{issuer.Root(), issuer.ServicesCA()}
	if _, _, ok := peerChain(r); ok {
		if id, herr := operational(r, s.verifier); herr == nil {
			cas, err := pathCAs(r.Context(), s.records, issuer.Domain(), id.Path)
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
	w.WriteHeader(http.StatusOK)
	w.Write(base64Lines(der))
	return nil
}
