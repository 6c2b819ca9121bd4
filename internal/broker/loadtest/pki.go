package loadtest

import (
	"context"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"

	"github.com/fieldtrust/fieldtrust/internal/broker"
	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/tacs"
	"github.com/fieldtrust/fieldtrust/internal/tlspolicy"
)

// PKI is a real transport PKI (internal/pki on a temporary data directory)
// with the certificates a run needs: the broker's server certificate, the
// account identity that subscribes and the device identities that publish.
// Both brokers use the same files, so they verify the same chains:
//
//	root ─┬─ services CA ── server leaf "broker" (IP 127.0.0.1)
//	      └─ master CA ms-1 ── account CA ms-1/acc-1 ─┬─ leaf CN "ms-1/acc-1"
//	                                                   └─ leaves CN "ms-1/acc-1/dev-N"
type PKI struct {
	// RootFile, ServicesFile (the services CA, which brokerd needs to
	// tell services from accounts), ServerCertFile (leaf + chain) and
	// ServerKeyFile are PEM files for the brokers.
	RootFile, ServicesFile, ServerCertFile, ServerKeyFile string
	Roots                                                 *x509.CertPool

	auth *pki.Authority
	recs *records

	mu    sync.Mutex
	certs map[string]tls.Certificate // by identity path
	dir   string
}

// IntermediatesFile writes the master-account and account CAs issued so
// far (issue the identities first) to a PEM file for brokerd -intermediates,
// and returns its path.
func (p *PKI) IntermediatesFile(ctx context.Context) (string, error) {
	list, err := p.recs.ListCertificates(ctx, store.CertFilter{Domain: string(pki.Transport)})
	if err != nil {
		return "", err
	}
	var certs []*x509.Certificate
	for _, r := range list {
		if r.Kind != pki.KindMasterCA && r.Kind != pki.KindAccountCA {
			continue
		}
		c, err := x509.ParseCertificate(r.DER)
		if err != nil {
			return "", err
		}
		certs = append(certs, c)
	}
	f := filepath.Join(p.dir, "intermediates.pem")
	return f, os.WriteFile(f, pki.EncodeCertsPEM(certs...), 0o600)
}

// LeafOnly returns c without its intermediates: what a client presents
// to a broker that knows the account CAs (the platform's does).
func LeafOnly(c tls.Certificate) tls.Certificate {
	c.Certificate = c.Certificate[:1]
	return c
}

// Master and Account are the identity paths the workload uses.
const (
	Master  = "ms-1"
	Account = Master + "/acc-1"
)

// DevicePath returns the identity path of device i.
func DevicePath(i int) string { return fmt.Sprintf("%s/dev-%d", Account, i) }

// NewPKI creates the PKI under dir (CA keys and certificates on disk, the
// certificate records in memory) and issues the server certificate.
func NewPKI(ctx context.Context, dir string) (*PKI, error) {
	recs := newRecords()
	auth, err := pki.Open(ctx, dir, pki.Transport, recs, pki.Options{})
	if err != nil {
		return nil, err
	}
	p := &PKI{auth: auth, recs: recs, certs: map[string]tls.Certificate{}, dir: dir}
	p.Roots = x509.NewCertPool()
	p.Roots.AddCert(auth.Root())

	key, err := pki.GenerateKey(elliptic.P256())
	if err != nil {
		return nil, err
	}
	iss, err := auth.Issue(ctx, pki.LeafRequest{Service: "broker", PublicKey: key.Public(),
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}})
	if err != nil {
		return nil, fmt.Errorf("issue server certificate: %w", err)
	}
	p.RootFile = filepath.Join(dir, "root.pem")
	p.ServicesFile = filepath.Join(dir, "services.pem")
	p.ServerCertFile = filepath.Join(dir, "server.pem")
	p.ServerKeyFile = filepath.Join(dir, "server.key")
	keyPEM, err := pki.MarshalKeyPEM(key, nil)
	if err != nil {
		return nil, err
	}
	for _, f := range []struct {
		name string
		data []byte
	}{
		{p.RootFile, pki.EncodeCertsPEM(auth.Root())},
		{p.ServicesFile, pki.EncodeCertsPEM(auth.ServicesCA())},
		{p.ServerCertFile, pki.EncodeCertsPEM(iss.Chain...)},
		{p.ServerKeyFile, keyPEM},
	} {
		if err := os.WriteFile(f.name, f.data, 0o600); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// Identity returns a client certificate (with its chain) for an account
// identity path, issuing it on first use.
func (p *PKI) Identity(ctx context.Context, path string) (tls.Certificate, error) {
	parsed, err := pki.ParsePath(path)
	if err != nil {
		return tls.Certificate{}, err
	}
	return p.issue(ctx, path, pki.LeafRequest{Path: parsed})
}

// issue returns the certificate cached under key, issuing req on first use.
func (p *PKI) issue(ctx context.Context, key string, req pki.LeafRequest) (tls.Certificate, error) {
	p.mu.Lock()
	c, ok := p.certs[key]
	p.mu.Unlock()
	if ok {
		return c, nil
	}
	k, err := pki.GenerateKey(elliptic.P256())
	if err != nil {
		return tls.Certificate{}, err
	}
	req.PublicKey = k.Public()
	iss, err := p.auth.Issue(ctx, req)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("issue %s: %w", key, err)
	}
	c = tls.Certificate{PrivateKey: k, Leaf: iss.Cert}
	for _, cert := range iss.Chain {
		c.Certificate = append(c.Certificate, cert.Raw)
	}
	p.mu.Lock()
	p.certs[key] = c
	p.mu.Unlock()
	return c, nil
}

// AdminService is the service the fan-out publisher connects as (role
// admin: it may write pki/crl/#).
const AdminService = "admin"

// Service returns a client certificate for a platform service.
func (p *PKI) Service(ctx context.Context, name string) (tls.Certificate, error) {
	return p.issue(ctx, "service:"+name, pki.LeafRequest{Service: name})
}

// ClientTLS returns the client configuration for an identity: the
// platform's client policy, trusting the PKI's root.
func (p *PKI) ClientTLS(c tls.Certificate) *tls.Config {
	cfg := tlspolicy.Client(p.Roots, &c)
	cfg.ServerName = "127.0.0.1"
	return cfg
}

// Verifier returns a transport verifier for the PKI with no revocations,
// as brokerd builds it from the PEM files.
func (p *PKI) Verifier() *pki.Verifier {
	return pki.NewVerifier(pki.Transport, p.auth.Root(), p.auth.ServicesCA(), nil)
}

// Identify is the platform's broker Identify (internal/platform): the
// verified chain's identity path becomes the TACS subject; the one service
// of the benchmark, AdminService, has the admin role (the platform reads
// roles from its store).
func Identify(v *pki.Verifier) broker.IdentifyFunc {
	return func(cs tls.ConnectionState) (tacs.Subject, error) {
		id, err := v.IdentifyTLS(cs)
		if err != nil {
			return tacs.Subject{}, err
		}
		if id.IsService() {
			if id.Service == AdminService {
				return tacs.ServiceSubject(id.Service, tacs.RoleAdmin), nil
			}
			return tacs.Subject{}, fmt.Errorf("service %q has no role in the benchmark", id.Service)
		}
		return tacs.Account(id.Path.String()), nil
	}
}
