// Package est is fieldtrust's RFC 7030 Enrollment over Secure Transport
// (EST) server, with the RFC 8951 clarifications, and the client side a
// field gateway uses. It is how a gateway that leaves the factory with only
// a manufacturer-issued onboarding certificate (IDevID) obtains its
// operational identities without a person typing anything: the gateway
// generates its keys, sends certificate requests, and its private keys
// never leave it.
//
// Who may enroll, by operation (see docs/onboarding.md):
//
//	/.well-known/est/simpleenroll        onboarding certificate that chains to a
//	                                     trusted manufacturer CA and matches an
//	                                     unconsumed claim of that CA -> transport
//	                                     leaf for the claimed path; the claim is
//	                                     consumed (a retry by the same
//	                                     certificate for the same key gets the
//	                                     same leaf)
//	/.well-known/est/simplereenroll      current, unrevoked operational transport
//	                                     certificate -> new transport leaf, same
//	                                     identity (same or new key)
//	/.well-known/est/e2e/simpleenroll    operational transport certificate ->
//	/.well-known/est/e2e/simplereenroll  e2e leaf for the same identity path
//	/.well-known/est[/e2e]/cacerts       anyone: the root and intermediates
//	/.well-known/est[/e2e]/csrattrs      anyone: what a CSR should contain
//
// The onboarding certificate buys exactly one transport identity; the
// transport identity buys its e2e twin. An onboarding certificate is never
// an operational identity: it chains to a manufacturer CA, not to the
// transport root, so the broker (which trusts only the transport root)
// refuses it, and so does every platform route other than EST (see
// GuardOperational).
//
// Enrollment answers hold only the issued certificate (RFC 7030 §4.2.3);
// clients get the intermediates from cacerts. Every answer has a
// Content-Length, and every 401 a WWW-Authenticate challenge.
//
// The identity of an issued certificate is decided by the platform (the
// claim, or the certificate the client authenticated with), never by the
// CSR: its subject and subjectAltName are ignored, not refused, because a
// gateway cannot know its path before it enrolls (and 'openssl req' insists
// on some subject). The CSR contributes its public key, and its signature
// proves possession of the private key.
package est

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/store"
)

// PathPrefix is where the server is mounted (RFC 7030 §3.2.2).
const PathPrefix = "/.well-known/est/"

// LabelE2E is the CA label that selects the end-to-end PKI. No label
// selects the transport PKI.
const LabelE2E = "e2e"

// Issuer issues leaves of one trust domain. *pki.Authority satisfies it.
type Issuer interface {
	Domain() pki.Domain
	Root() *x509.Certificate
	ServicesCA() *x509.Certificate
	Issue(ctx context.Context, req pki.LeafRequest) (*pki.Issued, error)
}

// OperationalVerifier verifies operational transport certificates: chain to
// the transport root, validity, namespace and revocation. *pki.Verifier
// (of the transport domain) satisfies it.
type OperationalVerifier interface {
	Verify(leaf *x509.Certificate, intermediates []*x509.Certificate, at time.Time, usage x509.ExtKeyUsage) (pki.Identity, []*x509.Certificate, error)
}

// Records is the part of the store enrollment reads and writes. The
// SQLite store satisfies it.
type Records interface {
	Manufacturers(ctx context.Context) ([]store.Manufacturer, error)
	Claim(ctx context.Context, k store.ClaimKey) (store.Claim, error)
	ConsumeClaim(ctx context.Context, k store.ClaimKey, by store.Consumer, at time.Time) error
	ReleaseClaim(ctx context.Context, k store.ClaimKey) error
	ListCertificates(ctx context.Context, f store.CertFilter) ([]store.Certificate, error)
}

// Policy holds the enrollment policy options. The zero value is the secure
// default.
type Policy struct {
	// AllowReenroll lets an onboarding certificate whose claim it already
	// consumed enroll again with a new key (e.g. a gateway that lost its
	// flash). Only the very certificate that consumed the claim may (same
	// DER: same manufacturer CA, same serial); default off: an onboarding
	// certificate buys exactly one transport certificate, and a lost
	// gateway needs a new claim from the operator. A retry with the same
	// key is always answered with the certificate already issued.
	AllowReenroll bool
	// RequireChannelBinding refuses CSRs that do not carry the TLS channel
	// binding (see ChannelBinding) in their challengePassword. Off by
	// default because curl + openssl cannot compute it; the fieldtrust
	// gateway always sends it. A binding that is present is always checked,
	// whatever this says.
	RequireChannelBinding bool
	// TransportValidity and E2EValidity are the lifetimes of issued
	// leaves; zero means pki.DefaultLeafValidity.
	TransportValidity time.Duration
	E2EValidity       time.Duration
}

// Options configure a Server.
type Options struct {
	Transport Issuer              // required
	E2E       Issuer              // optional; nil disables the e2e label (404)
	Verifier  OperationalVerifier // transport verifier; required
	Records   Records             // required
	Policy    Policy
	// Logger receives one line per refusal (remote, subject, reason) and
	// per certificate issued. Never key material.
	Logger *slog.Logger
}

// Server is the EST endpoint, an http.Handler for PathPrefix. It is safe
// for concurrent use.
type Server struct {
	transport Issuer
	e2e       Issuer // nil: no e2e label
	verifier  OperationalVerifier
	records   Records
	policy    Policy
	log       *slog.Logger
}

// New returns a Server.
func New(opts Options) (*Server, error) {
	if opts.Transport == nil || opts.Verifier == nil || opts.Records == nil {
		return nil, errors.New("est: Transport, Verifier and Records are required")
	}
	if opts.Transport.Domain() != pki.Transport {
		return nil, fmt.Errorf("est: Transport issuer is of the %s domain", opts.Transport.Domain())
	}
	if opts.E2E != nil && opts.E2E.Domain() != pki.E2E {
		return nil, fmt.Errorf("est: E2E issuer is of the %s domain", opts.E2E.Domain())
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{
		transport: opts.Transport,
		e2e:       opts.E2E,
		verifier:  opts.Verifier,
		records:   opts.Records,
		policy:    opts.Policy,
		log:       log.With("component", "est"),
	}, nil
}

// Operations.
const (
	opCACerts        = "cacerts"
	opSimpleEnroll   = "simpleenroll"
	opSimpleReenroll = "simplereenroll"
	opCSRAttrs       = "csrattrs"
)

// ServeHTTP routes /.well-known/est/[label/]operation.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rest, ok := strings.CutPrefix(r.URL.Path, PathPrefix)
	if !ok {
		s.fail(w, r, "", "", &httpError{http.StatusNotFound, "not an EST path; use " + PathPrefix + "...", nil})
		return
	}
	label, op := "", rest
	if i := strings.IndexByte(rest, '/'); i >= 0 {
		label, op = rest[:i], rest[i+1:]
	}
	issuer := s.transport
	switch label {
	case "":
	case LabelE2E:
		if s.e2e == nil {
			s.fail(w, r, label, op, &httpError{http.StatusNotFound, "the e2e CA label is not enabled on this server", nil})
			return
		}
		issuer = s.e2e
	default:
		s.fail(w, r, label, op, &httpError{http.StatusNotFound, fmt.Sprintf("unknown CA label %q; use none (transport) or %q", label, LabelE2E), nil})
		return
	}
	var err *httpError
	switch op {
	case opCACerts, opCSRAttrs:
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			err = &httpError{http.StatusMethodNotAllowed, op + " takes GET", nil}
		} else if op == opCACerts {
			err = s.caCerts(w, r, issuer)
		} else {
			err = s.csrAttrs(w, issuer)
		}
	case opSimpleEnroll, opSimpleReenroll:
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", "POST")
			err = &httpError{http.StatusMethodNotAllowed, op + " takes POST with an application/pkcs10 body", nil}
		} else {
			err = s.enroll(w, r, issuer, op)
		}
	case "serverkeygen", "fullcmc":
		err = &httpError{http.StatusNotImplemented, op + " is not offered: private keys never leave the device, and simpleenroll covers enrollment", nil}
	default:
		err = &httpError{http.StatusNotFound, fmt.Sprintf("unknown EST operation %q; use cacerts, simpleenroll, simplereenroll or csrattrs", op), nil}
	}
	if err != nil {
		s.fail(w, r, label, op, err)
	}
}

// httpError is a refusal: Status and Reason go to the client (safe to
// show), Err is detail for the log only.
type httpError struct {
	Status int
	Reason string
	Err    error
}

// fail logs a refusal and answers it.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, label, op string, e *httpError) {
	attrs := []any{"remote", r.RemoteAddr, "subject", peerSubject(r), "label", label, "op", op, "status", e.Status, "reason", e.Reason}
	if e.Err != nil {
		attrs = append(attrs, "err", e.Err.Error())
	}
	lvl := slog.LevelWarn
	if e.Status >= 500 {
		lvl = slog.LevelError
	}
	s.log.Log(r.Context(), lvl, "EST request refused", attrs...)
	RefuseText(w, e.Status, e.Reason)
}

// peerSubject names the client certificate for logs, or "-" if none.
func peerSubject(r *http.Request) string {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return "-"
	}
	c := r.TLS.PeerCertificates[0]
	return c.Subject.String() + " serial=" + pki.SerialHex(c.SerialNumber)
}
