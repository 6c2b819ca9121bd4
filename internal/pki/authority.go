// Package pki runs fieldtrust's certificate authorities and answers the one
// question every other part of the platform asks of a certificate chain:
// whose is it?
//
// There are two trust domains, kept apart so that the compromise of one
// (say the broker's TLS key) neither exposes payloads nor allows forged
// commands: the transport PKI for mutually authenticated TLS, and the e2e
// PKI for the keys that sign and seal payloads. Each has the same shape:
//
//	root CA (pathLen 2)
//	├── services CA (pathLen 0) ── service leaves (ingest, firmware, admin, ...)
//	└── master-account CA (pathLen 1)
//	    ├── master-level leaf            identity ms-acc-1
//	    └── account CA (pathLen 0)
//	        ├── account-level leaf       identity ms-acc-1/acc-1
//	        └── device leaf              identity ms-acc-1/acc-1/dev-1
//
// A CA's common name is its own path element; a leaf's common name is its
// full identity path. IdentityFromChain accepts a leaf's path only if it
// lies inside the namespace spelled by the CAs of its verified chain, so a
// compromised account CA can mint identities only inside its own account.
//
// On disk, DIR/pki/<domain>/ holds root.{crt,key}, services.{crt,key} and
// ca/<path with '/' as '+'>.{crt,key}; keys are 0600, optionally encrypted
// (see PassphraseEnv). Every certificate issued is recorded in the store,
// which is also the source of revocation state and CRL numbers.
package pki

import (
	"bytes"
	"context"
	"crypto"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/store"
)

// Domain names a trust domain.
type Domain string

// The trust domains.
const (
	Transport Domain = "transport"
	E2E       Domain = "e2e"
)

// Certificate kinds as recorded in the store.
const (
	KindRoot       = "root"
	KindServicesCA = "services-ca"
	KindMasterCA   = "master-ca"
	KindAccountCA  = "account-ca"
	KindLeaf       = "leaf"
	KindService    = "service"
)

// Lifetimes. A child never outlives its issuer: NotAfter is clamped.
const (
	RootValidity        = 20 * 365 * 24 * time.Hour
	MasterCAValidity    = 10 * 365 * 24 * time.Hour
	ServicesCAValidity  = 10 * 365 * 24 * time.Hour
	AccountCAValidity   = 5 * 365 * 24 * time.Hour
	DefaultLeafValidity = 90 * 24 * time.Hour
	// backdate absorbs clock skew between the platform and the field.
	backdate = 5 * time.Minute
)

// Records is the part of the store an Authority needs.
type Records interface {
	PutCertificate(ctx context.Context, c store.Certificate) error
	Certificate(ctx context.Context, domain, serial string) (store.Certificate, error)
	ListCertificates(ctx context.Context, f store.CertFilter) ([]store.Certificate, error)
	RevokeCertificate(ctx context.Context, domain, serial string, reason int, at time.Time) error
	NextCRLNumber(ctx context.Context, domain, issuerSerial string) (int64, error)
}

// PathRecords is the part of the store that revokes identity paths.
// store.Store has it; an Authority or Verifier whose records lack it cannot
// revoke paths (RevokePath fails), so no path is ever revoked in them, and
// a Verifier then rereads every revoked serial on each Refresh.
type PathRecords interface {
	RevokePath(ctx context.Context, r store.PathRevocation) error
	PathRevocation(ctx context.Context, domain, path string) (store.PathRevocation, error)
	PathRevocations(ctx context.Context, domain string) ([]store.PathRevocation, error)
	RevocationVersion(ctx context.Context, domain string) (int64, error)
}

// KeyVault keeps the master and account CAs, their keys sealed, in the
// database the nodes of a multi-node cluster share, so that a CA one node
// made issues on every node, and two nodes never make two CAs for one path
// (docs/scale.md "CA keys on several nodes"). The PostgreSQL store has it.
type KeyVault interface {
	// PutCAKey stores a CA's certificate and sealed key unless the domain
	// holds one of that name already, and returns the one stored then.
	PutCAKey(ctx context.Context, domain, name string, certDER, sealedKey []byte) (storedDER, storedKey []byte, err error)
	// CAKey returns a stored CA's certificate and sealed key, or
	// store.ErrNotFound.
	CAKey(ctx context.Context, domain, name string) (certDER, sealedKey []byte, err error)
}

// Sealer seals the CA keys a KeyVault keeps, bound to their names
// (secretbox.Box: the passphrase, or the data directory's secrets key that
// 'fieldtrust cluster add-node' copies to every node).
type Sealer interface {
	Seal(name string, secret []byte) ([]byte, error)
	Open(name string, sealed []byte) ([]byte, error)
}

// Options configure an Authority.
type Options struct {
	// Passphrase encrypts CA keys created from now on and decrypts
	// encrypted ones. Empty leaves new keys unencrypted.
	Passphrase []byte
	// Vault and Sealer, both set, share master and account CAs with the
	// other data directories on the same database (the nodes of a
	// cluster). Without them a CA lives in this directory only.
	Vault  KeyVault
	Sealer Sealer
	// Logger receives one line per CA created and certificate issued or
	// revoked. Never key material.
	Logger *slog.Logger
}

// Authority is the set of CAs of one trust domain. Its methods are safe for
// concurrent use within a process and across processes sharing the data
// directory: mutations hold an exclusive file lock.
type Authority struct {
	domain   Domain
	dir      string
	records  Records
	pass     []byte
	vault    KeyVault // nil: CAs in this directory only
	sealer   Sealer
	log      *slog.Logger
	root     *x509.Certificate // non-nil after Open
	services *x509.Certificate // non-nil after Open
}

// Open opens the domain's CAs under dataDir/pki/<domain>, creating the root
// and services CAs on first use. It is idempotent.
func Open(ctx context.Context, dataDir string, domain Domain, records Records, opts Options) (*Authority, error) {
	if domain != Transport && domain != E2E {
		return nil, fmt.Errorf("unknown trust domain %q", domain)
	}
	a := &Authority{
		domain:  domain,
		dir:     filepath.Join(dataDir, "pki", string(domain)),
		records: records,
		pass:    opts.Passphrase,
		log:     opts.Logger,
	}
	if (opts.Vault == nil) != (opts.Sealer == nil) {
		return nil, errors.New("pki: a key vault needs a sealer, and a sealer a vault")
	}
	a.vault, a.sealer = opts.Vault, opts.Sealer
	if a.log == nil {
		a.log = slog.New(slog.DiscardHandler)
	}
	a.log = a.log.With("pki", string(domain))
	if err := os.MkdirAll(filepath.Join(a.dir, "ca"), 0o700); err != nil {
		return nil, fmt.Errorf("%s PKI: %w", domain, err)
	}
	unlock, err := a.lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	if a.root, err = a.loadOrCreateCA(ctx, "root", nil, nil, KindRoot, "", RootValidity); err != nil {
		return nil, err
	}
	if a.services, err = a.loadOrCreateCA(ctx, "services", a.root, nil, KindServicesCA, "", ServicesCAValidity); err != nil {
		return nil, err
	}
	return a, nil
}

// ServicesCAName is the common name of a domain's services CA. Verifiers
// that have the CA itself recognize it by identity; only an offline
// verifier that has nothing but the root relies on the name (see
// IdentifyVerifiedChain).
func ServicesCAName(d Domain) string { return fmt.Sprintf("fieldtrust %s services CA", d) }

// Domain returns the authority's trust domain.
func (a *Authority) Domain() Domain { return a.domain }

// Root returns the root CA certificate.
func (a *Authority) Root() *x509.Certificate { return a.root }

// ServicesCA returns the CA that issues platform service certificates.
func (a *Authority) ServicesCA() *x509.Certificate { return a.services }

// LeafRequest asks for a leaf certificate. Exactly one of Path and Service
// is set.
type LeafRequest struct {
	Path      Path   // account identity (1 to 3 elements)
	Service   string // platform service name (an identity element)
	PublicKey crypto.PublicKey
	// Validity defaults to DefaultLeafValidity.
	Validity time.Duration
	// NotBefore defaults to now minus a few minutes of clock-skew slack.
	NotBefore time.Time
	// DNSNames and IPAddresses make a server certificate (transport only).
	DNSNames    []string
	IPAddresses []net.IP
	// Site issues the certificate of a customer site for the account Path
	// (master/account; transport only): the site policy (OIDSitePolicy)
	// makes IdentityFromChain name it Identity{Site: true}, whose rights
	// are a site's (tacs rule 5), not the account's. With DNSNames or
	// IPAddresses it also serves the site's local broker.
	Site bool

	// AuthenticatedBy is the verified credential the request was made
	// with (EST re-enrollment and e2e enrollment), or nil (the operator,
	// or an onboarding certificate, whose claim Authorize checks). Issue
	// refuses, reading the store under the domain's lock, if any
	// certificate of it is revoked, or if it was issued before its own
	// path or Path was revoked (ErrRevoked): a stolen certificate cannot
	// renew itself past a revocation, however fast it loops.
	AuthenticatedBy *Credential
	// Authorize, if set, is called under the domain's lock just before
	// signing, so that what it checks cannot change before the
	// certificate is recorded: RevokePath holds the same lock. EST
	// re-reads the claim there. An error refuses the request.
	Authorize func(ctx context.Context) error
}

// Credential is a verified certificate chain and the identity it proves.
type Credential struct {
	Domain   Domain
	Identity Identity
	Chain    []*x509.Certificate // leaf first, as Verifier.Verify returns it
}

// Issued is the result of issuing a leaf.
type Issued struct {
	Cert *x509.Certificate
	// Chain is the leaf followed by its intermediates, root excluded: what a
	// TLS peer sends.
	Chain []*x509.Certificate
	Root  *x509.Certificate
	// CreatedCAs lists the CA paths created on the way, in order.
	CreatedCAs []string
}

// Issue issues a leaf for req, creating the master-account and account CAs
// the path needs if they do not exist yet.
func (a *Authority) Issue(ctx context.Context, req LeafRequest) (*Issued, error) {
	if (req.Path == nil) == (req.Service == "") {
		return nil, errors.New("issue: set exactly one of an identity path and a service name")
	}
	if req.PublicKey == nil {
		return nil, errors.New("issue: no public key")
	}
	if err := CheckKey(req.PublicKey, a.domain); err != nil {
		return nil, fmt.Errorf("issue: %w", err)
	}
	if req.Service != "" {
		if err := ValidateElement(req.Service); err != nil {
			return nil, fmt.Errorf("issue: service name: %w", err)
		}
	} else if _, err := ParsePath(req.Path.String()); err != nil {
		return nil, fmt.Errorf("issue: %w", err)
	}
	if (len(req.DNSNames) > 0 || len(req.IPAddresses) > 0) && a.domain != Transport {
		return nil, errors.New("issue: server names only make sense in the transport PKI")
	}
	if req.Site && (a.domain != Transport || len(req.Path) != SitePathElements) {
		return nil, fmt.Errorf("issue: a site certificate is a transport certificate of an account (master/account), not %q in the %s PKI", req.Path, a.domain)
	}
	unlock, err := a.lock()
	if err != nil {
		return nil, err
	}
	defer unlock()

	out := &Issued{Root: a.root}
	var issuer *x509.Certificate
	var issuerName string
	var chain []*x509.Certificate
	if req.Service != "" {
		issuer, issuerName = a.services, "services"
		chain = []*x509.Certificate{a.services}
	} else {
		ip := req.Path.issuerPath()
		parent := a.root
		for i := 1; i <= len(ip); i++ {
			caPath := ip[:i]
			kind, validity := KindMasterCA, MasterCAValidity
			if i == 2 {
				kind, validity = KindAccountCA, AccountCAValidity
			}
			name := caFileName(caPath)
			created := !a.exists(name)
			ca, err := a.loadOrCreateCA(ctx, name, parent, caPath, kind, caPath[i-1], validity)
			if err != nil {
				return nil, err
			}
			if created {
				out.CreatedCAs = append(out.CreatedCAs, caPath.String())
			}
			if rec, err := a.records.Certificate(ctx, string(a.domain), SerialHex(ca.SerialNumber)); err == nil && rec.Revoked() {
				return nil, fmt.Errorf("issue %s: CA %s is revoked; nothing can be issued below it", req.Path, caPath)
			}
			chain = append([]*x509.Certificate{ca}, chain...)
			parent = ca
		}
		issuer, issuerName = parent, caFileName(ip)
	}
	signer, err := a.caKey(issuerName)
	if err != nil {
		return nil, err
	}
	notBefore, err := a.checkAuthority(ctx, req)
	if err != nil {
		return nil, err
	}
	if req.Authorize != nil {
		if err := req.Authorize(ctx); err != nil {
			return nil, err
		}
	}

	tmpl, err := a.leafTemplate(req, issuer, notBefore)
	if err != nil {
		return nil, err
	}
	cert, err := a.sign(tmpl, issuer, req.PublicKey, signer)
	if err != nil {
		return nil, fmt.Errorf("issue %s: %w", tmpl.Subject.CommonName, err)
	}
	kind := KindLeaf // a site's too: RevokePath of the account revokes it by serial
	if req.Service != "" {
		kind = KindService
	}
	if err := a.record(ctx, cert, kind, tmpl.Subject.CommonName, issuer); err != nil {
		return nil, err
	}
	a.log.Info("certificate issued", "kind", kind, "name", tmpl.Subject.CommonName, "serial", SerialHex(cert.SerialNumber), "not_after", cert.NotAfter)
	out.Cert = cert
	out.Chain = append([]*x509.Certificate{cert}, chain...)
	return out, nil
}

// checkAuthority checks, with the lock held, that nothing revoked since
// stands behind req, and returns the earliest NotBefore the new leaf may
// have: the revocation time of its path, if it was revoked (zero if not),
// so that revokedByPath never catches a certificate issued afterwards. It
// waits (at most a second) until that time has come, so the certificate
// is valid when it is handed out.
func (a *Authority) checkAuthority(ctx context.Context, req LeafRequest) (time.Time, error) {
	pr, ok := a.records.(PathRecords)
	if !ok || req.Path == nil {
		if cred := req.AuthenticatedBy; cred != nil {
			return time.Time{}, a.checkCredential(ctx, cred, nil)
		}
		return time.Time{}, nil
	}
	rev, err := pr.PathRevocation(ctx, string(a.domain), req.Path.String())
	switch {
	case errors.Is(err, store.ErrNotFound):
		rev = store.PathRevocation{}
	case err != nil:
		return time.Time{}, fmt.Errorf("issue %s: %w", req.Path, err)
	}
	if cred := req.AuthenticatedBy; cred != nil {
		if err := a.checkCredential(ctx, cred, pr); err != nil {
			return time.Time{}, err
		}
		if !rev.RevokedAt.IsZero() && revokedByPath(cred.Chain[0], rev.RevokedAt) {
			return time.Time{}, fmt.Errorf("issue %s: %w", req.Path, pathRevokedError(req.Path, cred.Chain[0], rev.RevokedAt))
		}
	}
	if wait := time.Until(rev.RevokedAt); wait > 0 {
		if wait > 2*time.Second {
			return time.Time{}, fmt.Errorf("issue %s: the path was revoked at %s, in the future; check the clock of the host that ran 'pki revoke'", req.Path, rev.RevokedAt.Format(time.RFC3339))
		}
		t := time.NewTimer(wait)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return time.Time{}, ctx.Err()
		}
	}
	return rev.RevokedAt, nil
}

// checkCredential refuses a credential any certificate of which the store
// records as revoked, or whose leaf was issued before its path was revoked
// (pr may be nil). It reads the store, not a Verifier's snapshot, which may
// be a second old.
func (a *Authority) checkCredential(ctx context.Context, cred *Credential, pr PathRecords) error {
	if len(cred.Chain) == 0 {
		return errors.New("issue: empty authenticating chain")
	}
	for _, c := range cred.Chain {
		rec, err := a.records.Certificate(ctx, string(cred.Domain), SerialHex(c.SerialNumber))
		if errors.Is(err, store.ErrNotFound) {
			continue // the root of a fixed-state domain, or a certificate of another store
		}
		if err != nil {
			return fmt.Errorf("issue: check the authenticating certificate: %w", err)
		}
		if rec.Revoked() {
			return fmt.Errorf("issue: %w: %q (serial %s, reason %s)", ErrRevoked, rec.Name, rec.Serial, ReasonName(rec.Reason))
		}
	}
	if pr == nil || cred.Identity.IsService() {
		return nil
	}
	rev, err := pr.PathRevocation(ctx, string(cred.Domain), cred.Identity.Path.String())
	switch {
	case errors.Is(err, store.ErrNotFound):
		return nil
	case err != nil:
		return fmt.Errorf("issue: check the authenticating certificate: %w", err)
	case revokedByPath(cred.Chain[0], rev.RevokedAt):
		return fmt.Errorf("issue: %w", pathRevokedError(cred.Identity.Path, cred.Chain[0], rev.RevokedAt))
	}
	return nil
}

func (a *Authority) leafTemplate(req LeafRequest, issuer *x509.Certificate, earliest time.Time) (*x509.Certificate, error) {
	validity := req.Validity
	if validity == 0 {
		validity = DefaultLeafValidity
	}
	if validity < 0 {
		return nil, fmt.Errorf("issue: negative validity %v", validity)
	}
	// NotAfter is validity from now; NotBefore is backdated for clock skew,
	// but by at most a tenth of the validity, so that a short-lived
	// certificate (tests, aggressive rotation) is not mostly in the past
	// and renewal at a fraction of the lifetime stays meaningful.
	now := time.Now()
	notBefore := req.NotBefore
	notAfter := now.Add(validity)
	if notBefore.IsZero() {
		notBefore = now.Add(-min(backdate, validity/10))
	} else {
		notAfter = notBefore.Add(validity)
	}
	if notBefore.Before(earliest) {
		// After a path revocation the backdating must not reach behind
		// it, or the new certificate would count as revoked.
		notBefore = earliest
	}
	cn := req.Service
	if req.Path != nil {
		cn = req.Path.String()
	}
	t := &x509.Certificate{
		Subject:               pkix.Name{CommonName: cn, Organization: []string{"fieldtrust"}, OrganizationalUnit: []string{string(a.domain)}},
		NotBefore:             notBefore,
		NotAfter:              clamp(notAfter, issuer.NotAfter),
		BasicConstraintsValid: true,
		IsCA:                  false,
		DNSNames:              req.DNSNames,
		IPAddresses:           req.IPAddresses,
	}
	if req.Site {
		t.Policies = []x509.OID{OIDSitePolicy}
	}
	switch a.domain {
	case Transport:
		t.KeyUsage = x509.KeyUsageDigitalSignature
		t.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
		if len(req.DNSNames) > 0 || len(req.IPAddresses) > 0 {
			t.ExtKeyUsage = append(t.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
		}
	case E2E:
		// Signing and ECDH key agreement for CMS envelopes. No extended key
		// usage: CMS peers (OpenSSL's smimesign check included) then accept
		// the key for any purpose the key usage allows.
		t.KeyUsage = x509.KeyUsageDigitalSignature | x509.KeyUsageKeyAgreement
	}
	return t, nil
}

// loadOrCreateCA returns the CA certificate stored under name, creating it
// (signed by parent, or self-signed if parent is nil) if it does not exist.
// The caller holds the lock.
func (a *Authority) loadOrCreateCA(ctx context.Context, name string, parent *x509.Certificate, path Path, kind, cn string, validity time.Duration) (*x509.Certificate, error) {
	certFile, keyFile := a.caFiles(name)
	if a.exists(name) {
		certs, err := ReadCertsFile(certFile)
		if err != nil {
			return nil, fmt.Errorf("%s PKI is damaged: %w; restore %s from a backup", a.domain, err, a.dir)
		}
		if _, err := os.Stat(keyFile); err != nil {
			return nil, fmt.Errorf("%s PKI is damaged: CA certificate %s has no key: %w; restore %s from a backup", a.domain, certFile, err, a.dir)
		}
		return certs[0], nil
	}
	if _, err := os.Stat(keyFile); err == nil {
		return nil, fmt.Errorf("%s PKI is damaged: key %s has no certificate; restore %s from a backup", a.domain, keyFile, a.dir)
	}
	shared := path != nil && a.vault != nil
	if shared {
		der, sealed, err := a.vault.CAKey(ctx, string(a.domain), name)
		switch {
		case err == nil:
			return a.adoptCA(name, parent, der, sealed)
		case !errors.Is(err, store.ErrNotFound):
			return nil, fmt.Errorf("%s CA %s: look it up in the shared store: %w", a.domain, name, err)
		}
	}
	if err := a.notMadeElsewhere(ctx, path, kind); err != nil {
		return nil, err
	}
	curve := elliptic.P384()
	key, err := GenerateKey(curve)
	if err != nil {
		return nil, err
	}
	now := time.Now().Add(-backdate)
	t := &x509.Certificate{
		NotBefore:             now,
		NotAfter:              now.Add(validity),
		BasicConstraintsValid: true,
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	subject := pkix.Name{Organization: []string{"fieldtrust"}, OrganizationalUnit: []string{string(a.domain)}}
	switch kind {
	case KindRoot:
		subject.CommonName = fmt.Sprintf("fieldtrust %s root CA", a.domain)
		t.MaxPathLen = 2
	case KindServicesCA:
		subject.CommonName = ServicesCAName(a.domain)
		t.MaxPathLen, t.MaxPathLenZero = 0, true
	case KindMasterCA:
		subject.CommonName = cn
		t.MaxPathLen = 1
	case KindAccountCA:
		subject.CommonName = cn
		t.MaxPathLen, t.MaxPathLenZero = 0, true
	default:
		return nil, fmt.Errorf("unknown CA kind %q", kind)
	}
	t.Subject = subject
	signer := crypto.Signer(key)
	issuerCert := t
	if parent != nil {
		issuerCert = parent
		t.NotAfter = clamp(t.NotAfter, parent.NotAfter)
		issuerName := "root"
		if len(path) > 1 {
			issuerName = caFileName(path[:len(path)-1])
		}
		if signer, err = a.caKey(issuerName); err != nil {
			return nil, err
		}
	}
	cert, err := a.sign(t, issuerCert, key.Public(), signer)
	if err != nil {
		return nil, fmt.Errorf("create %s CA %s: %w", kind, name, err)
	}
	keyPEM, err := MarshalKeyPEM(key, a.pass)
	if err != nil {
		return nil, fmt.Errorf("create CA %s: %w", name, err)
	}
	if shared {
		// The store decides which of the nodes that made a CA for this
		// path at the same time made the one: the others adopt it.
		sealed, err := a.sealer.Seal(vaultName(a.domain, name), keyPEM)
		if err != nil {
			return nil, fmt.Errorf("create CA %s: seal its key for the shared store: %w", name, err)
		}
		der, stored, err := a.vault.PutCAKey(ctx, string(a.domain), name, cert.Raw, sealed)
		if err != nil {
			return nil, fmt.Errorf("create CA %s: store it for the other nodes: %w", name, err)
		}
		if !bytes.Equal(der, cert.Raw) {
			a.log.Info("CA made by another node at the same time; using that one", "name", name)
			return a.adoptCA(name, parent, der, stored)
		}
	}
	// Key first: a certificate without its key marks a damaged directory.
	if err := writeNew(keyFile, keyPEM, 0o600); err != nil {
		return nil, fmt.Errorf("create CA %s: %w", name, err)
	}
	if err := writeNew(certFile, EncodeCertsPEM(cert), 0o644); err != nil {
		return nil, fmt.Errorf("create CA %s: %w", name, err)
	}
	recName := name
	if path != nil {
		recName = path.String()
	}
	var parentCert *x509.Certificate
	if parent != nil {
		parentCert = parent
	}
	if err := a.record(ctx, cert, kind, recName, parentCert); err != nil {
		return nil, err
	}
	a.log.Info("CA created", "kind", kind, "name", recName, "serial", SerialHex(cert.SerialNumber))
	return cert, nil
}

// vaultName binds a sealed CA key to its domain and CA (the sealer's
// additional data): a sealed key moved to another row does not open.
func vaultName(d Domain, name string) string { return "pki-ca-key:" + string(d) + ":" + name }

// openVaultCA opens a CA the shared store holds and checks it: the key
// must open with this directory's sealer and passphrase and be the key of
// the certificate, and the certificate must be a CA signed by parent (nil:
// any of this domain's; the caller then checks the issuer), so that whoever
// can write the database but holds no CA key cannot plant a CA.
func (a *Authority) openVaultCA(name string, parent *x509.Certificate, der, sealed []byte) (*x509.Certificate, []byte, crypto.Signer, error) {
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("%s CA %s in the shared store: %w", a.domain, name, err)
	}
	if !cert.IsCA {
		return nil, nil, nil, fmt.Errorf("%s CA %s in the shared store is not a CA certificate", a.domain, name)
	}
	if parent != nil {
		if err := cert.CheckSignatureFrom(parent); err != nil {
			return nil, nil, nil, fmt.Errorf("%s CA %s in the shared store is not signed by its parent CA: %w", a.domain, name, err)
		}
	}
	keyPEM, err := a.sealer.Open(vaultName(a.domain, name), sealed)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("%s CA %s in the shared store: %w (every node needs the first node's DIR/platform/secrets.key, or the same %s)", a.domain, name, err, PassphraseEnv)
	}
	key, err := ParseKeyPEM(keyPEM, a.pass)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("%s CA %s in the shared store: %w", a.domain, name, err)
	}
	if !publicKeysEqual(key.Public(), cert.PublicKey) {
		return nil, nil, nil, fmt.Errorf("%s CA %s in the shared store: the key is not the certificate's", a.domain, name)
	}
	return cert, keyPEM, key, nil
}

// adoptCA writes a CA the shared store holds (made by another node) into
// this directory. The caller holds the lock.
func (a *Authority) adoptCA(name string, parent *x509.Certificate, der, sealed []byte) (*x509.Certificate, error) {
	cert, keyPEM, _, err := a.openVaultCA(name, parent, der, sealed)
	if err != nil {
		return nil, err
	}
	certFile, keyFile := a.caFiles(name)
	if err := writeNew(keyFile, keyPEM, 0o600); err != nil {
		return nil, fmt.Errorf("adopt CA %s: %w", name, err)
	}
	if err := writeNew(certFile, EncodeCertsPEM(cert), 0o644); err != nil {
		return nil, fmt.Errorf("adopt CA %s: %w", name, err)
	}
	a.log.Info("CA adopted from the shared store", "name", name, "serial", SerialHex(cert.SerialNumber))
	return cert, nil
}

// publicKeysEqual compares two public keys of the kinds the PKI uses.
func publicKeysEqual(a, b crypto.PublicKey) bool {
	k, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(b)
}

// ErrCAElsewhere refuses to make a master or account CA that the store
// already holds, made by another data directory sharing the database (a
// node of several): a second CA for one path would split the account's
// identities between two issuers.
var ErrCAElsewhere = errors.New("the CA exists in the store but its key is not in this data directory")

// notMadeElsewhere fails with ErrCAElsewhere if the store holds a valid,
// unrevoked CA of this kind for path.
func (a *Authority) notMadeElsewhere(ctx context.Context, path Path, kind string) error {
	if path == nil {
		return nil // root and services CAs: made by Open, per directory
	}
	recs, err := a.records.ListCertificates(ctx, store.CertFilter{Domain: string(a.domain), Name: path.String(), Kinds: []string{kind}})
	if err != nil {
		return fmt.Errorf("create CA %s: look for an existing one: %w", path, err)
	}
	now := time.Now()
	for _, r := range recs {
		if !r.Revoked() && now.Before(r.NotAfter) {
			return fmt.Errorf("create %s CA %s: %w (serial %s): on a cluster of several nodes, share DIR/pki between the nodes or issue through the node that made it (docs/scale.md)",
				a.domain, path, ErrCAElsewhere, r.Serial)
		}
	}
	return nil
}

// sign fills serial and key identifiers and signs t.
func (a *Authority) sign(t, issuer *x509.Certificate, pub crypto.PublicKey, signer crypto.Signer) (*x509.Certificate, error) {
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	t.SerialNumber = serial
	if t.SubjectKeyId, err = subjectKeyID(pub); err != nil {
		return nil, err
	}
	der, err := x509.CreateCertificate(rand.Reader, t, issuer, pub, signer)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

func (a *Authority) record(ctx context.Context, cert *x509.Certificate, kind, name string, issuer *x509.Certificate) error {
	rec := store.Certificate{
		Domain:    string(a.domain),
		Serial:    SerialHex(cert.SerialNumber),
		Kind:      kind,
		Name:      name,
		NotBefore: cert.NotBefore,
		NotAfter:  cert.NotAfter,
		DER:       cert.Raw,
	}
	if issuer != nil {
		rec.IssuerSerial = SerialHex(issuer.SerialNumber)
	}
	if err := a.records.PutCertificate(ctx, rec); err != nil {
		return fmt.Errorf("record certificate %s: %w", name, err)
	}
	return nil
}

// caKey loads the private key of the CA stored under name.
func (a *Authority) caKey(name string) (crypto.Signer, error) {
	_, keyFile := a.caFiles(name)
	k, err := ReadKeyFile(keyFile, a.pass)
	if err != nil {
		return nil, fmt.Errorf("%s CA %s: %w", a.domain, name, err)
	}
	return k, nil
}

// issuerKey loads the key of the CA record rec: from this directory, or
// (a CA another node made and this one has not used yet) from the shared
// store.
func (a *Authority) issuerKey(ctx context.Context, rec store.Certificate) (crypto.Signer, error) {
	name := a.caNameOfRecord(rec)
	k, err := a.caKey(name)
	if err == nil || a.vault == nil || !errors.Is(err, fs.ErrNotExist) || (rec.Kind != KindMasterCA && rec.Kind != KindAccountCA) {
		return k, err
	}
	der, sealed, verr := a.vault.CAKey(ctx, string(a.domain), name)
	if verr != nil {
		return nil, fmt.Errorf("%w (and from the shared store: %w)", err, verr)
	}
	if !bytes.Equal(der, rec.DER) {
		return nil, fmt.Errorf("%s CA %s: the shared store holds another certificate than the record %s", a.domain, name, rec.Serial)
	}
	_, _, key, err := a.openVaultCA(name, nil, der, sealed)
	return key, err
}

// caNameOfRecord maps a CA record to its file name.
func (a *Authority) caNameOfRecord(rec store.Certificate) string {
	switch rec.Kind {
	case KindRoot:
		return "root"
	case KindServicesCA:
		return "services"
	default:
		return strings.ReplaceAll(rec.Name, "/", "+")
	}
}

func caFileName(p Path) string { return strings.Join(p, "+") }

func (a *Authority) caFiles(name string) (certFile, keyFile string) {
	dir := a.dir
	if name != "root" && name != "services" {
		dir = filepath.Join(a.dir, "ca")
	}
	return filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
}

func (a *Authority) exists(name string) bool {
	certFile, _ := a.caFiles(name)
	_, err := os.Stat(certFile)
	return !errors.Is(err, fs.ErrNotExist)
}

// lock takes the domain's exclusive lock, shared with other processes on the
// same data directory (the operator CLI next to 'fieldtrust up').
func (a *Authority) lock() (unlock func(), err error) {
	f, err := os.OpenFile(filepath.Join(a.dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock %s PKI: %w", a.domain, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s PKI: %w", a.domain, err)
	}
	return func() {
		syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}

// newSerial returns a random positive 128-bit serial number.
func newSerial() (*big.Int, error) {
	limit := new(big.Int).Lsh(big.NewInt(1), 128)
	for {
		n, err := rand.Int(rand.Reader, limit)
		if err != nil {
			return nil, fmt.Errorf("serial: %w", err)
		}
		if n.Sign() > 0 {
			return n, nil
		}
	}
}

// SerialHex formats a serial the way the store keys it: lowercase hex of
// whole bytes, as OpenSSL prints it (a leading zero where needed).
func SerialHex(n *big.Int) string { return fmt.Sprintf("%x", n.Bytes()) }

// ParseSerial accepts a serial as OpenSSL prints it: hex, any case, with or
// without colons, with or without a 0x prefix.
func ParseSerial(s string) (*big.Int, error) {
	h := strings.ToLower(strings.ReplaceAll(strings.TrimSpace(s), ":", ""))
	h = strings.TrimPrefix(h, "0x")
	n, ok := new(big.Int).SetString(h, 16)
	if !ok || h == "" || n.Sign() <= 0 {
		return nil, fmt.Errorf("serial %q is not a positive hexadecimal number (as 'openssl x509 -serial' prints it)", s)
	}
	return n, nil
}

func clamp(t, limit time.Time) time.Time {
	if t.After(limit) {
		return limit
	}
	return t
}
