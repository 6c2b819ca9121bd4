package platform

import (
	"context"
	"crypto"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/pki"
)

// serviceCertValidity is the lifetime of the platform's own service
// certificates; each is renewed after two thirds of it, so a platform that
// runs for months keeps valid certificates without an operator.
const serviceCertValidity = 30 * 24 * time.Hour

// serviceCert holds one of the platform's own service certificates (its
// TLS server certificate, the ingest service's client and e2e
// certificates, the ledger and command signers), issued by the services CA
// of its domain, kept in DIR/platform/<service>-<domain>.{crt,key}, and
// renewed in place.
type serviceCert struct {
	auth    *pki.Authority
	service string
	dir     string   // DIR/platform
	dns     []string // server certificates only
	ips     []net.IP
	log     *slog.Logger
	cur     atomic.Pointer[tls.Certificate] // non-nil after load
	check   time.Duration                   // renewal check interval
	// keepKey renews the certificate on the same key. A recipient key must
	// not change under gateways: they seal for the certificate their last
	// bootstrap named, and queued envelopes must stay openable.
	keepKey bool
}

func newServiceCert(auth *pki.Authority, service, dataDir string, dns []string, ips []net.IP, log *slog.Logger) *serviceCert {
	return &serviceCert{auth: auth, service: service, dir: filepath.Join(dataDir, "platform"), dns: dns, ips: ips, log: log, check: time.Minute}
}

// GetCertificate implements tls.Config.GetCertificate.
func (s *serviceCert) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return s.cur.Load(), nil
}

// GetClientCertificate implements tls.Config.GetClientCertificate.
func (s *serviceCert) GetClientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	return s.cur.Load(), nil
}

// Current returns the certificate (chain, key and parsed leaf).
func (s *serviceCert) Current() *tls.Certificate { return s.cur.Load() }

func (s *serviceCert) keyFile() string {
	_, k := s.files()
	return k
}

func (s *serviceCert) files() (certFile, keyFile string) {
	base := filepath.Join(s.dir, s.service+"-"+string(s.auth.Domain()))
	return base + ".crt", base + ".key"
}

// load reuses the certificate on disk if it is still fresh and names every
// address; otherwise it issues a new one.
func (s *serviceCert) load(ctx context.Context) error {
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return err
	}
	certFile, keyFile := s.files()
	if c, err := tls.LoadX509KeyPair(certFile, keyFile); err == nil && s.fresh(c.Leaf, time.Now()) {
		s.cur.Store(&c)
		return nil
	}
	return s.renew(ctx)
}

// fresh reports whether leaf may keep serving: before two thirds of its
// life, covering every name and address, and chaining to the current root.
func (s *serviceCert) fresh(leaf *x509.Certificate, now time.Time) bool {
	if leaf == nil {
		return false
	}
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	if now.After(leaf.NotBefore.Add(life * 2 / 3)) {
		return false
	}
	for _, d := range s.dns {
		if !slices.Contains(leaf.DNSNames, d) {
			return false
		}
	}
	for _, ip := range s.ips {
		if !slices.ContainsFunc(leaf.IPAddresses, ip.Equal) {
			return false
		}
	}
	return true
}

func (s *serviceCert) renew(ctx context.Context) error {
	var key crypto.Signer
	if cur := s.cur.Load(); s.keepKey && cur != nil {
		key = cur.PrivateKey.(crypto.Signer)
	} else if s.keepKey {
		if k, err := pki.ReadKeyFile(s.keyFile(), nil); err == nil {
			key = k
		}
	}
	if key == nil {
		k, err := pki.GenerateKey(elliptic.P256())
		if err != nil {
			return err
		}
		key = k
	}
	iss, err := s.auth.Issue(ctx, pki.LeafRequest{
		Service: s.service, PublicKey: key.Public(), Validity: serviceCertValidity,
		DNSNames: s.dns, IPAddresses: s.ips,
	})
	if err != nil {
		return fmt.Errorf("issue %s certificate of service %s: %w", s.auth.Domain(), s.service, err)
	}
	keyPEM, err := pki.MarshalKeyPEM(key, nil)
	if err != nil {
		return err
	}
	certPEM := pki.EncodeCertsPEM(iss.Chain...)
	c, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return err
	}
	certFile, keyFile := s.files()
	if err := replaceFile(keyFile, keyPEM, 0o600); err != nil {
		return err
	}
	if err := replaceFile(certFile, certPEM, 0o644); err != nil {
		return err
	}
	s.cur.Store(&c)
	s.log.Info("service certificate issued", "service", s.service, "domain", s.auth.Domain(), "serial", pki.SerialHex(iss.Cert.SerialNumber), "not_after", iss.Cert.NotAfter)
	return nil
}

// renewServiceCerts renews each certificate when it ages, until ctx is
// done; a failed renewal is returned (the supervisor retries it with
// backoff while the certificate keeps serving).
func renewServiceCerts(ctx context.Context, certs []*serviceCert) error {
	check := time.Minute
	for _, c := range certs {
		check = min(check, c.check)
	}
	t := time.NewTicker(check)
	defer t.Stop()
	for {
		for _, c := range certs {
			if c.fresh(c.cur.Load().Leaf, time.Now()) {
				continue
			}
			if err := c.renew(ctx); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return fmt.Errorf("renew the %s certificate of service %s: %w", c.auth.Domain(), c.service, err)
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// serverAddresses returns the IP addresses a certificate for a listener on
// addr must name: the host itself, or for an unspecified host every local
// interface address.
func serverAddresses(addr string) ([]net.IP, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("address %q: %w", addr, err)
	}
	ip := net.ParseIP(host)
	if host != "" && ip == nil {
		return nil, nil // a DNS name; the caller adds it to the DNS names
	}
	if ip != nil && !ip.IsUnspecified() {
		return []net.IP{ip}, nil
	}
	ifaddrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	var out []net.IP
	for _, a := range ifaddrs {
		if n, ok := a.(*net.IPNet); ok {
			out = append(out, n.IP)
		}
	}
	return out, nil
}

func replaceFile(file string, data []byte, mode os.FileMode) error {
	tmp := file + ".tmp"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return err
	}
	return os.Rename(tmp, file)
}
