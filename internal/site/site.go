// Package site is a customer-site broker (fieldtrust site): the gateways
// of one customer account connect to it over mTLS on the site's LAN, and it
// forwards their messages to the platform over one outbound mTLS
// connection with the account's site certificate (pki.LeafRequest.Site),
// buffering durably through WAN outages. Messages from the platform to the
// site's gateways (commands, firmware notices) and the platform's CRL
// bundles come back down the same connection.
//
// The parts, and why each is safe:
//
//   - The local broker is fieldtrust's own (package broker): chain
//     verification, TACS on every publish, subscription and delivery. Its
//     Identify (identify) accepts only gateways of the site's account
//     (master/account/gateway, verified against the platform's root and the
//     account's CAs from the site certificate's chain) and the site's own
//     bridge; every other identity is refused at CONNECT.
//   - What goes up and what comes down is the site's rights under TACS
//     (tacs.Rights of tacs.SiteSubject): the gateway→platform channels of
//     the account are subscribed locally and published upstream, the
//     platform→gateway channels subscribed upstream and published locally.
//     The two sets are disjoint, so nothing forwarded comes back. The
//     platform enforces the same rule on the site's connection (tacs rule
//     5): a stolen site certificate reaches nothing outside its account,
//     and cannot publish a command.
//   - Upward messages are appended to a durable queue (package queue,
//     RejectNew) before the local broker gets its PUBACK, and leave the
//     queue only after the platform's PUBACK, in order: nothing acknowledged
//     to a gateway is lost through an outage or a restart of the site, and
//     each gateway's order is kept (at least once; ingest is idempotent).
//     When the queue is full the bridge stops taking messages: the local
//     broker's backpressure slows the gateways, which keep their own
//     durable queues; nothing is dropped by the site.
//   - The site cannot forge what it forwards: snapshots and command results
//     are signed by the gateways' e2e keys and verified by ingest and the
//     platform; commands by the platform's and verified by the gateways.
//   - CRL bundles from the platform (pki/crl/transport) are verified
//     (pki.CRLSet), kept on disk, applied to the local verifier at once and
//     the local broker revalidates every connection: a gateway revoked on
//     the platform is disconnected at the site too, and stays refused after
//     a restart of the site while the WAN is down.
package site

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/atomicfile"
	"github.com/fieldtrust/fieldtrust/internal/broker"
	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/queue"
	"github.com/fieldtrust/fieldtrust/internal/tacs"
	"github.com/fieldtrust/fieldtrust/internal/tlspolicy"
)

// Files of a site directory. CertFile, KeyFile and RootFile are what
// 'fieldtrust pki issue --site --out DIR' writes.
const (
	CertFile  = "cert.pem" // the site certificate and its CA chain
	KeyFile   = "key.pem"
	RootFile  = "ca.pem"            // the platform's transport root
	QueueFile = "queue.db"          // upward messages not yet acknowledged by the platform
	CRLFile   = "crl-transport.der" // the last applied transport CRL bundle
	BrokerDir = "broker"            // the local broker's state
	bridgeID  = "site-bridge"       // the bridge's local client ID
	roleLocal = "site-bridge"       // the bridge's role at the local broker
	maxBatch  = 256                 // upward publishes in flight
	ackWait   = 30 * time.Second    // how long a publish may wait for the platform's PUBACK
	dialWait  = 15 * time.Second    // connect timeout, both sides
	keepAlive = 30 * time.Second    // both sides
	localWait = 10 * time.Second    // a local publish or subscribe
	fullLog   = time.Minute         // at most one "queue full" line per interval
	expiry    = 7 * 24 * time.Hour  // the bridge's local session
	backoff0  = time.Second         // first reconnect wait
	backoffN  = 30 * time.Second    // default longest reconnect wait
	siteQueue = 1_000_000           // default queue bound, items
	siteBytes = int64(1 << 30)      // default queue bound, bytes
	// bridgeSessionBytes bounds the bridge's session at the local broker.
	bridgeSessionBytes = 64 << 20
)

// Config configures a site.
type Config struct {
	// Dir holds CertFile, KeyFile, RootFile and the site's state.
	Dir string
	// Upstream is the platform's MQTT address, host:port; the platform's
	// certificate must name the host (ServerName overrides it).
	Upstream   string
	ServerName string
	// MQTTAddr is the local listen address for the site's gateways.
	MQTTAddr string
	// Name tells several sites of one account apart at the platform: the
	// upstream client ID is the site's subject name, ':' and Name (the
	// form both broker tiers bind to the identity), so their persistent
	// sessions do not take each other over. Empty: the subject name alone.
	Name string
	// Queue bounds the upward queue; zero fields take 1,000,000 items and
	// 1 GiB. The policy is always RejectNew: the site never drops.
	Queue queue.Options
	// Grants are the platform's grants (for RoleSite); nil means
	// tacs.DefaultGrants(). The site subscribes and forwards by them.
	Grants tacs.Grants
	// MaxBackoff is the longest wait between upstream connection attempts
	// (default 30 s); the wait doubles from 1 s.
	MaxBackoff time.Duration
	Logger     *slog.Logger
	// After is the clock of the reconnect backoff (default time.After).
	// Tests inject it to run a long outage in short real time.
	After func(time.Duration) <-chan time.Time
	// Ready, if set, is called with the local broker's address once it
	// accepts connections.
	Ready func(localAddr string)
	// Events, if set, receives what tests wait for (see Event).
	Events func(Event)
}

// Event is something the site reports to Config.Events.
type Event struct {
	Kind   string // "upstream-connected", "upstream-lost", "forwarded", "queued", "queue-full", "crl-applied", "backoff"
	N      int    // forwarded/queued: how many; backoff: the wait in ms
	Err    error
	Queued int // items in the queue after the event
}

// Site is a running customer site.
type Site struct {
	cfg      Config
	log      *slog.Logger
	account  pki.Path
	subject  tacs.Subject // the site at the platform
	grants   tacs.Grants  // the platform's
	cert     tls.Certificate
	root     *x509.Certificate
	verifier *pki.Verifier // local devices, transport domain
	crls     *pki.CRLSet
	q        *queue.Queue
	brk      *broker.Broker
	up, down []string // filters: local subscribe (up), upstream subscribe (down)
	// localGrants is the bridge's role at the local broker: the mirror
	// of the site's rights at the platform.
	localGrants tacs.Grants

	wake  chan struct{} // a message was queued
	acked chan struct{} // the platform acknowledged messages: the queue has room
	mu    sync.Mutex
	// local is the bridge's live local publisher, nil while none.
	local   *localClient
	full    bool // the queue refused the last message
	fullLog time.Time
}

// Run starts the site and serves until ctx ends.
func Run(ctx context.Context, cfg Config) error {
	s, err := open(cfg)
	if err != nil {
		return err
	}
	defer s.q.Close()
	return s.run(ctx)
}

func open(cfg Config) (*Site, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.After == nil {
		cfg.After = time.After
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = backoffN
	}
	if cfg.Grants == nil {
		cfg.Grants = tacs.DefaultGrants()
	}
	if cfg.Name != "" {
		if err := pki.ValidateElement(cfg.Name); err != nil {
			return nil, fmt.Errorf("site: --name: %w", err)
		}
	}
	if cfg.Upstream == "" {
		return nil, errors.New("site: no upstream address (--upstream HOST:PORT of the platform's MQTT listener)")
	}
	if cfg.ServerName == "" {
		host, _, err := net.SplitHostPort(cfg.Upstream)
		if err != nil {
			return nil, fmt.Errorf("site: --upstream %q: %w", cfg.Upstream, err)
		}
		cfg.ServerName = host
	}
	s := &Site{cfg: cfg, log: cfg.Logger, grants: cfg.Grants, wake: make(chan struct{}, 1), acked: make(chan struct{}, 1)}
	if err := s.loadCredentials(); err != nil {
		return nil, err
	}
	if err := s.planDirections(); err != nil {
		return nil, err
	}
	opts := cfg.Queue
	if opts.MaxItems <= 0 {
		opts.MaxItems = siteQueue
	}
	if opts.MaxBytes <= 0 {
		opts.MaxBytes = siteBytes
	}
	opts.Policy = queue.RejectNew
	q, err := queue.Open(filepath.Join(cfg.Dir, QueueFile), opts)
	if err != nil {
		return nil, fmt.Errorf("site: %w", err)
	}
	s.q = q
	if err := s.loadCRL(); err != nil {
		q.Close()
		return nil, err
	}
	return s, nil
}

// loadCredentials reads the site certificate, key and the platform's root,
// and checks that the certificate is a site certificate of an account.
func (s *Site) loadCredentials() error {
	dir := s.cfg.Dir
	chain, err := pki.ReadCertsFile(filepath.Join(dir, CertFile))
	if err != nil {
		return fmt.Errorf("site: read the site certificate: %w (issue it with 'fieldtrust pki issue ACCOUNT --site --ip LAN-IP --out %s')", err, dir)
	}
	key, err := pki.ReadKeyFile(filepath.Join(dir, KeyFile), nil)
	if err != nil {
		return fmt.Errorf("site: read the site key: %w", err)
	}
	roots, err := pki.ReadCertsFile(filepath.Join(dir, RootFile))
	if err != nil || len(roots) != 1 {
		return fmt.Errorf("site: read the platform's transport root %s: %v", filepath.Join(dir, RootFile), err)
	}
	s.root = roots[0]
	s.verifier = pki.NewVerifier(pki.Transport, s.root, nil, nil)
	s.verifier.AddCAs(chain[1:]...)
	id, verified, err := s.verifier.Verify(chain[0], chain[1:], time.Time{}, x509.ExtKeyUsageClientAuth)
	if err != nil {
		return fmt.Errorf("site: the certificate in %s does not verify against %s: %w", CertFile, RootFile, err)
	}
	if !id.Site {
		return fmt.Errorf("site: %s is the certificate of %s, not a site certificate; issue one with 'fieldtrust pki issue %s --site'", CertFile, id, id.Path)
	}
	if _, _, err := s.verifier.Verify(chain[0], chain[1:], time.Time{}, x509.ExtKeyUsageServerAuth); err != nil {
		return fmt.Errorf("site: the site certificate cannot serve the local broker (issue it with --ip and/or --dns of the site's LAN address): %w", err)
	}
	s.account, s.subject = id.Path, tacs.SiteSubject(id.Path.String())
	s.cert = tls.Certificate{PrivateKey: key, Leaf: chain[0]}
	for _, c := range chain {
		s.cert.Certificate = append(s.cert.Certificate, c.Raw)
	}
	// CRLs of the root and of the CAs above the site's gateways count.
	s.crls = pki.NewCRLSet(verified[1:]...)
	return nil
}

// planDirections derives what the site forwards from its rights at the
// platform: what it may publish there it takes from its gateways, what it
// may read there it hands to them. One rule (tacs rule 5) decides both.
func (s *Site) planDirections() error {
	rights, err := tacs.Rights(s.grants, s.subject)
	if err != nil {
		return fmt.Errorf("site: %w", err)
	}
	var local []tacs.Grant
	for _, r := range rights {
		if r.Deny || r.Filter == tacs.CRLFilter {
			continue
		}
		if r.Write {
			s.up = append(s.up, r.Filter)
			local = append(local, tacs.Grant{Filter: r.Filter, Read: true})
		}
		if r.Read {
			s.down = append(s.down, r.Filter)
			local = append(local, tacs.Grant{Filter: r.Filter, Write: true})
		}
	}
	if len(s.up) == 0 {
		return fmt.Errorf("site: the grants give %s nothing to forward (role %q)", s.subject, tacs.RoleSite)
	}
	// The bridge republishes the platform's CRL bundles for the gateways.
	local = append(local, tacs.Grant{Filter: tacs.CRLFilter, Write: true})
	s.localGrants = tacs.Grants{roleLocal: local}
	return s.localGrants.Validate()
}

// identify is the local broker's Identify: the site's gateways and its own
// bridge, nobody else.
func (s *Site) identify(cs tls.ConnectionState) (tacs.Subject, error) {
	id, err := s.verifier.IdentifyTLS(cs)
	if err != nil {
		return tacs.Subject{}, err
	}
	switch {
	case id.Site && id.Path.Equal(s.account) && len(cs.PeerCertificates) > 0 && cs.PeerCertificates[0].Equal(s.cert.Leaf):
		return tacs.ServiceSubject(bridgeID, roleLocal), nil
	case id.IsService() || id.Site:
		return tacs.Subject{}, fmt.Errorf("%s may not connect to the site of %s: only its gateways may", id, s.account)
	case len(id.Path) != tacs.MaxPathElements || !id.Path.HasPrefix(s.account):
		return tacs.Subject{}, fmt.Errorf("%s is not a gateway of %s, whose site this is", id, s.account)
	}
	return tacs.Account(id.Path.String()), nil
}

func (s *Site) run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	brk, err := broker.New(broker.Config{
		Addr: s.cfg.MQTTAddr,
		TLS: tlspolicy.Server(func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return &s.cert, nil },
			s.verifier.Roots(), tls.RequireAndVerifyClientCert, nil),
		VerifyClient: func(leaf *x509.Certificate, inter []*x509.Certificate) ([]*x509.Certificate, error) {
			_, chain, err := s.verifier.Verify(leaf, inter, time.Time{}, x509.ExtKeyUsageClientAuth)
			return chain, err
		},
		Identify: s.identify,
		Grants:   s.localGrants,
		StateDir: filepath.Join(s.cfg.Dir, BrokerDir),
		Logger:   s.log.With("component", "site-broker"),
		// The bridge's session holds what the full queue cannot take yet
		// (in memory and on disk): bounded here, not at the 1 GiB of a
		// platform service. Beyond it the local broker drops and counts.
		ServiceLimits: broker.Limits{QueuedBytesPerSession: bridgeSessionBytes, QueuedBytes: 2 * bridgeSessionBytes},
	})
	if err != nil {
		return fmt.Errorf("site: start the local broker on %s: %w", s.cfg.MQTTAddr, err)
	}
	s.brk = brk
	served := make(chan error, 1)
	go func() { served <- brk.Serve(ctx) }()
	s.log.Info("site serving", "account", s.account.String(), "local", brk.Addr(), "upstream", s.cfg.Upstream, "forwards_up", s.up, "forwards_down", s.down)
	if s.cfg.Ready != nil {
		s.cfg.Ready(brk.Addr())
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); s.localLoop(ctx) }()
	go func() { defer wg.Done(); s.upstreamLoop(ctx) }()
	err = <-served
	cancel()
	wg.Wait()
	return err
}

// event reports e to Config.Events.
func (s *Site) event(e Event) {
	if s.cfg.Events != nil {
		if st, err := s.q.Stats(); err == nil {
			e.Queued = st.Items
		}
		s.cfg.Events(e)
	}
}

// loadCRL applies the CRL bundle kept from the last run, so revocations
// hold from the first connection, before the platform is reachable.
func (s *Site) loadCRL() error {
	b, err := os.ReadFile(filepath.Join(s.cfg.Dir, CRLFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("site: %w", err)
	}
	if _, err := s.applyCRL(b, false); err != nil {
		return fmt.Errorf("site: the kept CRL bundle %s: %w", CRLFile, err)
	}
	return nil
}

// applyCRL verifies and applies a transport CRL bundle, keeps it on disk
// (when keep) and ends local connections that no longer verify.
func (s *Site) applyCRL(bundle []byte, keep bool) (int, error) {
	crls, err := pki.ParseCRLBundle(bundle)
	if err != nil {
		return 0, err
	}
	applied, refused := s.crls.Apply(crls, time.Now())
	for _, e := range refused {
		s.log.Warn("CRL not applied", "err", e)
	}
	if applied == 0 {
		return 0, nil
	}
	s.verifier.SetRevoked(s.crls.Revoked())
	if keep {
		if err := atomicfile.Write(filepath.Join(s.cfg.Dir, CRLFile), bundle, 0o600); err != nil {
			return applied, fmt.Errorf("keep the CRL bundle: %w", err)
		}
	}
	n := 0
	if s.brk != nil {
		n = s.brk.Revalidate(context.Background())
	}
	s.log.Info("CRLs applied", "crls", applied, "revoked", len(s.crls.Revoked()), "disconnected", n)
	s.event(Event{Kind: "crl-applied", N: n})
	return applied, nil
}
