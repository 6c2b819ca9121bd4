package gateway

import (
	"context"
	"crypto"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/bootstrap"
	"github.com/fieldtrust/fieldtrust/internal/est"
	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/tlspolicy"
)

// The gateway's state directory:
//
//	STATE/transport.key, transport.crt   operational transport key and chain
//	STATE/e2e.key, e2e.crt               end-to-end signing key and chain
//	STATE/e2e-ca.pem                     e2e CA certificates (from EST cacerts)
//	STATE/bootstrap.json                 the last bootstrap document
//	STATE/queue.db                       store-and-forward queue and chain heads
//
// Keys are generated here, written 0600 and never sent anywhere: EST gets
// a CSR, which proves possession without revealing the key.

// credential is one certificate chain and its key.
type credential struct {
	key   crypto.Signer
	chain []*x509.Certificate // leaf first
}

func (c *credential) leaf() *x509.Certificate { return c.chain[0] }

func (c *credential) tlsCert() *tls.Certificate {
	t := &tls.Certificate{PrivateKey: c.key, Leaf: c.chain[0]}
	for _, x := range c.chain {
		t.Certificate = append(t.Certificate, x.Raw)
	}
	return t
}

// due reports whether the credential should be renewed at now: once
// fraction of its lifetime has passed.
func (c *credential) due(now time.Time, fraction float64) bool {
	l := c.leaf()
	life := l.NotAfter.Sub(l.NotBefore)
	return now.After(l.NotBefore.Add(time.Duration(float64(life) * fraction)))
}

func (c *credential) expired(now time.Time) bool { return now.After(c.leaf().NotAfter) }

// credentials holds the gateway's current identities; renewal swaps them
// while connections keep using the old ones until they reconnect.
type credentials struct {
	dir        string
	platform   string         // https://host:port
	roots      *x509.CertPool // transport root
	anchors    []*x509.Certificate
	onboarding *tls.Certificate

	mu        sync.Mutex
	transport *credential // guarded by mu
	e2e       *credential // guarded by mu
	e2eCAs    []*x509.Certificate
}

func (c *credentials) current() (transport, e2e *credential) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.transport, c.e2e
}

// cas returns the e2e CA certificates (root first), which verify commands.
func (c *credentials) cas() []*x509.Certificate {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.e2eCAs
}

// load reads credentials saved by an earlier run; missing files leave the
// credential nil (to be enrolled). Files that exist but cannot be read
// are an error: the e2e CA certificates decide which commands and CRLs
// the gateway trusts, so it does not run on without them.
func (c *credentials) load() error {
	var err error
	if c.transport, err = loadCredential(c.dir, "transport"); err != nil {
		return err
	}
	if c.e2e, err = loadCredential(c.dir, "e2e"); err != nil {
		return err
	}
	file := filepath.Join(c.dir, "e2e-ca.pem")
	data, err := os.ReadFile(file)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil
	case err != nil:
		return fmt.Errorf("gateway state is damaged: %w; remove %s, e2e.key and e2e.crt to enroll the e2e identity again", err, file)
	}
	if c.e2eCAs, err = pki.ParseCertsPEM(data); err != nil {
		return fmt.Errorf("gateway state is damaged: %s: %w; remove it, e2e.key and e2e.crt to enroll the e2e identity again", file, err)
	}
	return nil
}

func loadCredential(dir, name string) (*credential, error) {
	keyFile, certFile := filepath.Join(dir, name+".key"), filepath.Join(dir, name+".crt")
	if _, err := os.Stat(certFile); errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	key, err := pki.ReadKeyFile(keyFile, nil)
	if err != nil {
		return nil, fmt.Errorf("gateway state is damaged: %w; remove %s and %s to enroll again", err, keyFile, certFile)
	}
	chain, err := pki.ReadCertsFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("gateway state is damaged: %w; remove %s and %s to enroll again", err, keyFile, certFile)
	}
	return &credential{key: key, chain: chain}, nil
}

// save writes a credential: key first (new file, 0600), then the chain.
func saveCredential(dir, name string, cr *credential) error {
	keyPEM, err := pki.MarshalKeyPEM(cr.key, nil)
	if err != nil {
		return err
	}
	if err := writeFileAtomic(filepath.Join(dir, name+".key"), keyPEM, 0o600); err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(dir, name+".crt"), pki.EncodeCertsPEM(cr.chain...), 0o644)
}

func writeFileAtomic(file string, data []byte, mode os.FileMode) error {
	tmp := file + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, file)
}

// estClient returns an EST client for a label, authenticating with cert.
func (c *credentials) estClient(label string, cert *tls.Certificate) *est.Client {
	conf := tlspolicy.Client(c.roots, cert)
	return &est.Client{URL: c.platform, Label: label, TLS: conf}
}

// enrollTransport obtains the transport identity: with the onboarding
// certificate the first time (or, by policy, after expiry), otherwise by
// re-enrolling with the current one. A fresh key every time: renewal is
// also key rotation.
func (c *credentials) enrollTransport(ctx context.Context, fromScratch bool) error {
	key, err := pki.GenerateKey(elliptic.P256())
	if err != nil {
		return err
	}
	cur, _ := c.current()
	var chain []*x509.Certificate
	if fromScratch || cur == nil {
		if c.onboarding == nil {
			return errors.New("no operational certificate and no onboarding certificate to enroll with")
		}
		chain, err = c.estClient("", c.onboarding).Enroll(ctx, key, nil)
	} else {
		chain, err = c.estClient("", cur.tlsCert()).Reenroll(ctx, key, nil)
	}
	if err != nil {
		return fmt.Errorf("enroll transport identity: %w", err)
	}
	cr := &credential{key: key, chain: chain}
	if err := saveCredential(c.dir, "transport", cr); err != nil {
		return err
	}
	c.mu.Lock()
	c.transport = cr
	c.mu.Unlock()
	return nil
}

// enrollE2E obtains the e2e identity twin of the transport identity,
// authenticated by the transport certificate.
func (c *credentials) enrollE2E(ctx context.Context) error {
	tr, cur := c.current()
	if tr == nil {
		return errors.New("enroll e2e identity: no transport identity yet")
	}
	key, err := pki.GenerateKey(elliptic.P256())
	if err != nil {
		return err
	}
	cl := c.estClient(est.LabelE2E, tr.tlsCert())
	var chain []*x509.Certificate
	if cur == nil {
		chain, err = cl.Enroll(ctx, key, nil)
	} else {
		chain, err = cl.Reenroll(ctx, key, nil)
	}
	if err != nil {
		return fmt.Errorf("enroll e2e identity: %w", err)
	}
	cas, err := cl.CACerts(ctx)
	if err != nil {
		return fmt.Errorf("fetch e2e CA certificates: %w", err)
	}
	cr := &credential{key: key, chain: chain}
	if err := saveCredential(c.dir, "e2e", cr); err != nil {
		return err
	}
	if err := writeFileAtomic(filepath.Join(c.dir, "e2e-ca.pem"), pki.EncodeCertsPEM(cas...), 0o644); err != nil {
		return err
	}
	c.mu.Lock()
	c.e2e, c.e2eCAs = cr, cas
	c.mu.Unlock()
	return nil
}

// maxBootstrapBody bounds the bootstrap document we read.
const maxBootstrapBody = 1 << 20

// fetchBootstrap gets the gateway's configuration from the platform and
// saves it, so a restart during an outage can use the last one.
func (c *credentials) fetchBootstrap(ctx context.Context) (*bootstrap.Document, error) {
	tr, _ := c.current()
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: tlspolicy.Client(c.roots, tr.tlsCert())}, Timeout: 30 * time.Second}
	defer client.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.platform+bootstrap.Path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("bootstrap: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBootstrapBody))
	if err != nil {
		return nil, fmt.Errorf("bootstrap: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("bootstrap: platform answered %s: %s", resp.Status, body)
	}
	doc, err := parseBootstrap(body)
	if err != nil {
		return nil, err
	}
	if err := writeFileAtomic(filepath.Join(c.dir, "bootstrap.json"), body, 0o644); err != nil {
		return nil, err
	}
	return doc, nil
}

func (c *credentials) savedBootstrap() (*bootstrap.Document, error) {
	body, err := os.ReadFile(filepath.Join(c.dir, "bootstrap.json"))
	if err != nil {
		return nil, err
	}
	return parseBootstrap(body)
}

func parseBootstrap(body []byte) (*bootstrap.Document, error) {
	var doc bootstrap.Document
	if err := json.Unmarshal(body, &doc); err != nil {
		return nil, fmt.Errorf("bootstrap document: %w", err)
	}
	if doc.Version != bootstrap.SchemaVersion {
		return nil, fmt.Errorf("bootstrap document version %d; this gateway understands %d", doc.Version, bootstrap.SchemaVersion)
	}
	if len(doc.Brokers) == 0 || len(doc.Recipients) == 0 || doc.PublishIntervalSeconds <= 0 || doc.RenewalFraction <= 0 || doc.RenewalFraction >= 1 {
		return nil, errors.New("bootstrap document lacks brokers, recipients, interval or renewal fraction")
	}
	return &doc, nil
}
