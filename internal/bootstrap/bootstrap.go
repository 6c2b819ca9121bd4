// Package bootstrap serves GET /api/v1/bootstrap: the operational
// configuration a freshly enrolled gateway needs, so that nothing about it
// is typed in the field. The gateway authenticates with its operational
// transport certificate (obtained over EST); the answer is derived from
// its identity path and the platform configuration (Config).
package bootstrap

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/est"
	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/topic"
)

// Path is where the handler is mounted.
const Path = "/api/v1/bootstrap"

// SchemaVersion is the version of Document. Rules for evolving it: adding
// a field keeps the version (gateways ignore fields they do not know);
// removing a field or changing its meaning or type bumps it, and the
// platform then serves the version a gateway asks for (?version=N) until
// old gateways are gone.
const SchemaVersion = 1

// DefaultCRLTopic is the retained MQTT topic of the transport CRL bundle.
const DefaultCRLTopic = topic.CRLTransport

// Document is the bootstrap answer (JSON).
type Document struct {
	Version  int    `json:"version"`  // SchemaVersion
	Identity string `json:"identity"` // the gateway's identity path
	// Brokers lists every broker, the assigned one first, then the rest in
	// failover order; both orders are rendezvous-hashing orders of the
	// identity, so they are stable and spread evenly (see Assign).
	Brokers []string `json:"brokers"`
	// PublishIntervalSeconds is how often the gateway publishes snapshots.
	PublishIntervalSeconds float64 `json:"publish_interval_seconds"`
	// RenewalFraction: renew a certificate once this fraction of its
	// lifetime (NotAfter - NotBefore) has passed, in (0, 1).
	RenewalFraction float64 `json:"renewal_fraction"`
	// CRLTopic is the retained topic carrying the transport CRL bundle.
	CRLTopic string `json:"crl_topic"`
	// Recipients are who the gateway seals snapshots for, ingest first.
	Recipients []Recipient `json:"recipients"`
}

// Recipient is one party snapshots are sealed for.
type Recipient struct {
	Role     string `json:"role"`     // "ingest", "account" or "master"
	Identity string `json:"identity"` // "service:ingest" or an identity path
	// Certificate is the recipient's e2e certificate, PEM.
	Certificate string `json:"certificate"`
}

// Recipient roles.
const (
	RoleIngest  = "ingest"
	RoleAccount = "account"
	RoleMaster  = "master"
)

// TransportVerifier verifies operational transport certificates
// (*pki.Verifier of the transport domain).
type TransportVerifier interface {
	Verify(leaf *x509.Certificate, intermediates []*x509.Certificate, at time.Time, usage x509.ExtKeyUsage) (pki.Identity, []*x509.Certificate, error)
}

// E2EVerifier verifies e2e certificates (*pki.Verifier of the e2e domain),
// so that a recipient certificate whose CA was revoked is never handed out.
type E2EVerifier interface {
	Verify(leaf *x509.Certificate, intermediates []*x509.Certificate, at time.Time, usage x509.ExtKeyUsage) (pki.Identity, []*x509.Certificate, error)
}

// Records is the part of the store bootstrap reads.
type Records interface {
	ListCertificates(ctx context.Context, f store.CertFilter) ([]store.Certificate, error)
}

// Config is what the platform fills in.
type Config struct {
	Brokers         []Broker      // at least one
	PublishInterval time.Duration // > 0
	RenewalFraction float64       // in (0, 1), e.g. 2.0/3
	CRLTopic        string        // default DefaultCRLTopic
	// IngestE2E returns the ingest service's current e2e certificate.
	// Without it a gateway cannot seal, so an error makes bootstrap answer
	// 503 (try again later).
	IngestE2E func(ctx context.Context) (*x509.Certificate, error)
	Transport TransportVerifier // required
	E2E       E2EVerifier       // required
	Records   Records           // required
	Logger    *slog.Logger
}

// Handler serves Path.
type Handler struct {
	cfg Config
	log *slog.Logger
}

// New validates cfg and returns the handler.
func New(cfg Config) (*Handler, error) {
	if len(cfg.Brokers) == 0 {
		return nil, errors.New("bootstrap: no broker configured")
	}
	if err := validateBrokers(cfg.Brokers); err != nil {
		return nil, fmt.Errorf("bootstrap: %w", err)
	}
	if cfg.PublishInterval <= 0 {
		return nil, fmt.Errorf("bootstrap: publish interval %v must be positive", cfg.PublishInterval)
	}
	if !(cfg.RenewalFraction > 0 && cfg.RenewalFraction < 1) {
		return nil, fmt.Errorf("bootstrap: renewal fraction %v must be between 0 and 1 (e.g. 0.66: renew after two thirds of the lifetime)", cfg.RenewalFraction)
	}
	if cfg.IngestE2E == nil || cfg.Transport == nil || cfg.E2E == nil || cfg.Records == nil {
		return nil, errors.New("bootstrap: IngestE2E, Transport, E2E and Records are required")
	}
	if cfg.CRLTopic == "" {
		cfg.CRLTopic = DefaultCRLTopic
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Handler{cfg: cfg, log: log.With("component", "bootstrap")}, nil
}

// ServeHTTP answers GET with the caller's Document.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		h.fail(w, r, http.StatusMethodNotAllowed, "use GET", nil)
		return
	}
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		h.fail(w, r, http.StatusUnauthorized, "no client certificate; present your operational transport certificate", nil)
		return
	}
	id, _, err := h.cfg.Transport.Verify(r.TLS.PeerCertificates[0], r.TLS.PeerCertificates[1:], time.Time{}, x509.ExtKeyUsageClientAuth)
	switch {
	case errors.Is(err, pki.ErrRevoked):
		h.fail(w, r, http.StatusForbidden, "client certificate is revoked", err)
		return
	case err != nil:
		h.fail(w, r, http.StatusUnauthorized, "client certificate is not a valid operational transport certificate", err)
		return
	case id.IsService():
		h.fail(w, r, http.StatusForbidden, "bootstrap is for gateways; services are configured by the platform", nil)
		return
	}
	doc, status, err := h.Document(r.Context(), id.Path)
	if err != nil {
		if status == http.StatusServiceUnavailable {
			w.Header().Set("Retry-After", "30")
		}
		h.fail(w, r, status, http.StatusText(status)+"; try again later", err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	json.NewEncoder(w).Encode(doc)
}

// Document builds the bootstrap document of path. On error it also returns
// the HTTP status that fits.
func (h *Handler) Document(ctx context.Context, path pki.Path) (*Document, int, error) {
	doc := &Document{
		Version:                SchemaVersion,
		Identity:               path.String(),
		Brokers:                Assign(h.cfg.Brokers, path.String()),
		PublishIntervalSeconds: h.cfg.PublishInterval.Seconds(),
		RenewalFraction:        h.cfg.RenewalFraction,
		CRLTopic:               h.cfg.CRLTopic,
	}
	ingest, err := h.cfg.IngestE2E(ctx)
	if err != nil || ingest == nil {
		return nil, http.StatusServiceUnavailable, fmt.Errorf("ingest e2e certificate: %v", err)
	}
	doc.Recipients = append(doc.Recipients, Recipient{Role: RoleIngest, Identity: "service:ingest", Certificate: string(pki.EncodeCertsPEM(ingest))})
	// The account, then the master account, when the path has them above it.
	for _, up := range []struct {
		n    int
		role string
	}{{2, RoleAccount}, {1, RoleMaster}} {
		if len(path) <= up.n {
			continue
		}
		p := path[:up.n]
		c, err := h.latestE2E(ctx, p)
		if err != nil {
			return nil, http.StatusInternalServerError, err
		}
		if c != nil {
			doc.Recipients = append(doc.Recipients, Recipient{Role: up.role, Identity: p.String(), Certificate: string(pki.EncodeCertsPEM(c))})
		}
	}
	return doc, http.StatusOK, nil
}

// latestE2E returns the newest e2e leaf of path that verifies now, or nil.
func (h *Handler) latestE2E(ctx context.Context, path pki.Path) (*x509.Certificate, error) {
	return LatestE2E(ctx, h.cfg.Records, h.cfg.E2E, path, h.log)
}

// LatestE2E returns the newest e2e leaf of path that verifies now (not
// expired, not revoked, CA chain intact), or nil if there is none: the
// certificate to seal for path, as bootstrap names recipients and the
// platform seals commands and campaign notices.
func LatestE2E(ctx context.Context, records Records, e2e E2EVerifier, path pki.Path, log *slog.Logger) (*x509.Certificate, error) {
	recs, err := records.ListCertificates(ctx, store.CertFilter{Domain: string(pki.E2E), Name: path.String()})
	if err != nil {
		return nil, fmt.Errorf("e2e certificates of %s: %w", path, err)
	}
	var inter []*x509.Certificate
	revokedCA := map[string]bool{}
	for i := 1; i <= len(path) && i <= 2; i++ {
		cas, err := records.ListCertificates(ctx, store.CertFilter{Domain: string(pki.E2E), Name: path[:i].String()})
		if err != nil {
			return nil, fmt.Errorf("e2e CAs of %s: %w", path, err)
		}
		for _, c := range cas {
			// A revoked CA disqualifies everything below it, even if the
			// verifier's revocation snapshot is older than the store.
			if c.Revoked() {
				revokedCA[c.Serial] = true
			}
			if (c.Kind == pki.KindMasterCA || c.Kind == pki.KindAccountCA) && !c.Revoked() {
				if cert, err := x509.ParseCertificate(c.DER); err == nil {
					inter = append(inter, cert)
				}
			}
		}
	}
	var best *x509.Certificate
	now := time.Now()
	for _, rec := range recs {
		if rec.Kind != pki.KindLeaf || rec.Revoked() || now.After(rec.NotAfter) || now.Before(rec.NotBefore) {
			continue
		}
		c, err := x509.ParseCertificate(rec.DER)
		if err != nil {
			log.Error("stored e2e certificate does not parse", "path", path.String(), "serial", rec.Serial, "err", err)
			continue
		}
		id, chain, err := e2e.Verify(c, inter, now, x509.ExtKeyUsageAny)
		if err != nil || !id.Path.Equal(path) || slices.ContainsFunc(chain, func(c *x509.Certificate) bool { return revokedCA[pki.SerialHex(c.SerialNumber)] }) {
			continue
		}
		if best == nil || c.NotBefore.After(best.NotBefore) {
			best = c
		}
	}
	return best, nil
}

func (h *Handler) fail(w http.ResponseWriter, r *http.Request, status int, reason string, err error) {
	subject := "-"
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		c := r.TLS.PeerCertificates[0]
		subject = c.Subject.String() + " serial=" + pki.SerialHex(c.SerialNumber)
	}
	attrs := []any{"remote", r.RemoteAddr, "subject", subject, "status", status, "reason", reason}
	if err != nil {
		attrs = append(attrs, "err", err.Error())
	}
	h.log.Warn("bootstrap refused", attrs...)
	est.RefuseText(w, status, reason)
}
