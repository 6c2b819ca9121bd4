// Package gateway is the field gateway: it onboards itself over EST with
// nothing but a manufacturer onboarding certificate, gets its configuration
// from the platform's bootstrap service, reads measurements (a simulator
// or a loopback HTTP input for real equipment), builds hash-chained
// snapshots, signs and seals them for exactly the recipients the platform
// names, and delivers them over mutually authenticated MQTT through a
// durable store-and-forward queue. It renews its certificates before they
// expire, applies CRLs pushed by the platform, and follows signed, sealed
// re-bootstrap commands.
package gateway

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/bootstrap"
	"github.com/fieldtrust/fieldtrust/internal/command"
	"github.com/fieldtrust/fieldtrust/internal/firmware/abslot"
	"github.com/fieldtrust/fieldtrust/internal/firmware/tufclient"
	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/queue"
)

// Config configures a gateway.
type Config struct {
	Platform   string              // https://host:port of the platform
	CA         []*x509.Certificate // the transport root(s): the trust anchor for the platform
	Onboarding *tls.Certificate    // manufacturer onboarding certificate and key; nil once enrolled
	StateDir   string              // keys, certificates, queue
	Simulate   int                 // number of simulated devices
	// SimulateEvery overrides the bootstrap publish interval for the
	// simulator (0: use the platform's).
	SimulateEvery time.Duration
	ListenLocal   string // loopback address of the local HTTP input; "" disables it
	Queue         queue.Options
	// ReenrollExpired allows enrolling from scratch with the onboarding
	// certificate when the operational certificate expired while offline.
	ReenrollExpired bool
	Logger          *slog.Logger
	// Ready, if non-nil, is called once the gateway is connected the first
	// time, with its identity path.
	Ready func(path string)

	// FirmwareRoot is the firmware trust anchor pinned at installation:
	// TUF root metadata (KEYS/root.json). Nil: the gateway installs no
	// firmware (notices are refused and reported).
	FirmwareRoot []byte
	// FirmwareTypes are the device types the gateway installs firmware
	// for; default: the types of its simulated devices.
	FirmwareTypes []string
	// Installer installs firmware; default A/B slots (package abslot) in
	// StateDir/firmware/slots.
	Installer Installer
	// FirmwareHealth, if set, decides whether a newly installed version
	// is healthy (nil error) before its context ends; default: a reading
	// from a device of that type after the switch.
	FirmwareHealth func(ctx context.Context, deviceType, version string) error
	// HealthTimeout bounds the health check (default 2 min); then the
	// installer rolls back.
	HealthTimeout time.Duration
	// Commands are handlers for commands beyond the built-ins (reboot,
	// clean, set-interval, rebootstrap), by name.
	Commands map[string]CommandHandler
	// Failback is about how often a gateway connected to a broker that is
	// not the first of its bootstrap list checks whether an earlier one
	// takes connections again (an MQTT CONNECT with its own identity and
	// the client ID PATH:probe), and then moves back to it: the
	// rebalancing of a cluster after a node returns (docs/scale.md
	// "Rebalancing"). Each wait is drawn from [Failback/2, 3*Failback/2),
	// so that the gateways of a node do not all move at once. Default
	// 5 min; negative: never.
	Failback time.Duration

	hooks testHooks
}

// testHooks let the package's tests break and observe the gateway.
type testHooks struct {
	crash        func(step string) bool    // a simulated power cut before a firmware step
	downloadBody func(io.Reader) io.Reader // wraps a download's body
	result       func(command.Result)      // sees every command result and refusal
	tufNow       func() time.Time          // the TUF client's reference time
}

// Gateway is a running gateway.
type Gateway struct {
	cfg   Config
	log   *slog.Logger
	creds *credentials
	q     *queue.Queue
	// replay holds the last command's signing time; the queue, except in
	// tests that make it fail.
	replay replayState
	pipe   *pipeline
	crl    *crlState

	mu   sync.Mutex
	doc  *bootstrap.Document // guarded by mu
	path string              // identity path; set after enrollment

	orders chan sessionOrder

	// publisher publishes on the current MQTT session (nil between).
	publisher atomic.Pointer[func(topic string, payload []byte) error]
	refusals  refusals
	cmdMu     sync.Mutex // serializes nonce bookkeeping
	interval  chan time.Duration

	installer Installer
	tuf       *tufclient.Client
	fwMu      sync.Mutex // guards the firmware job state
	fwWake    chan struct{}
	readingAt sync.Map // device type -> time.Time of its last reading
}

// Run runs the gateway until ctx ends.
func Run(ctx context.Context, cfg Config) error {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if len(cfg.CA) == 0 {
		return errors.New("gateway: no trust anchor (--ca)")
	}
	roots := x509.NewCertPool()
	for _, c := range cfg.CA {
		roots.AddCert(c)
	}
	// Configuration mistakes fail before anything is enrolled or sent.
	if cfg.ListenLocal != "" {
		if err := checkLoopback(cfg.ListenLocal); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return fmt.Errorf("gateway state %s: %w", cfg.StateDir, err)
	}
	g := &Gateway{cfg: cfg, log: cfg.Logger, orders: make(chan sessionOrder, 1), fwWake: make(chan struct{}, 1), interval: make(chan time.Duration, 1)}
	g.creds = &credentials{dir: cfg.StateDir, platform: cfg.Platform, roots: roots, anchors: cfg.CA, onboarding: cfg.Onboarding}
	if err := g.creds.load(); err != nil {
		return err
	}
	q, err := queue.Open(filepath.Join(cfg.StateDir, "queue.db"), cfg.Queue)
	if err != nil {
		return err
	}
	defer q.Close()
	g.q, g.replay = q, q

	if err := g.onboard(ctx); err != nil {
		return err
	}
	g.crl = newCRLState(g.creds, g.log)
	g.setupFirmware()
	g.pipe = newPipeline(g.path, q, g.creds, g.log)
	if err := g.applyBootstrap(g.docNow()); err != nil {
		return err
	}
	if st, err := q.Stats(); err == nil && st.Items > 0 {
		g.log.Info("queued snapshots from before the restart will be sent first", "queued", st.Items, "bytes", st.Bytes)
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	if cfg.Simulate > 0 {
		wg.Go(func() { g.simulate(ctx) })
	}
	if cfg.ListenLocal != "" {
		ln, err := listenLoopback(cfg.ListenLocal)
		if err != nil {
			return err
		}
		srv := &http.Server{Handler: localHandler(g.submitReading, g.log), ReadHeaderTimeout: 10 * time.Second}
		wg.Go(func() { srv.Serve(ln) })
		wg.Go(func() { <-ctx.Done(); srv.Close() })
		g.log.Info("local input listening", "addr", "http://"+ln.Addr().String()+"/v1/readings")
	}
	wg.Go(func() { g.renewLoop(ctx) })
	wg.Go(func() { g.firmwareLoop(ctx) })
	g.wakeFirmware() // a job from before a restart (or a power cut) resumes
	err = g.connectLoop(ctx)
	cancel()
	wg.Wait()
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	st, _ := q.Stats()
	g.log.Info("gateway stopped", "queued", st.Items, "sent", g.pipe.sent.Load(), "dropped", st.Dropped)
	return err
}

// setupFirmware builds the installer and the TUF client.
func (g *Gateway) setupFirmware() {
	g.installer = g.cfg.Installer
	if g.installer == nil {
		g.installer = &abslot.Installer{Dir: filepath.Join(g.cfg.StateDir, "firmware", "slots")}
	}
	if len(g.cfg.FirmwareRoot) > 0 {
		g.tuf = &tufclient.Client{Platform: g.cfg.Platform, HTTP: g.httpClient(), Dir: filepath.Join(g.cfg.StateDir, "firmware", "tuf"), PinnedRoot: g.cfg.FirmwareRoot, Now: g.cfg.hooks.tufNow}
	}
}

// onboard makes sure the gateway has a valid transport and e2e identity
// and a bootstrap document.
func (g *Gateway) onboard(ctx context.Context) error {
	now := time.Now()
	tr, e2e := g.creds.current()
	// fresh: the transport identity was enrolled from scratch, so the e2e
	// twin is enrolled again too, even if it has a moment left (both expire
	// together while offline; one left to expire seconds later would sign
	// readings ingest refuses on arrival).
	fresh := tr == nil || tr.expired(now)
	switch {
	case tr == nil:
		g.log.Info("enrolling with the onboarding certificate", "platform", g.cfg.Platform)
		if err := retry(ctx, g.log, "enroll", func() error { return g.creds.enrollTransport(ctx, true) }); err != nil {
			return err
		}
	case tr.expired(now):
		if !g.cfg.ReenrollExpired {
			return fmt.Errorf("the operational certificate expired at %s and re-enrollment from scratch is disabled; remove %s to enroll again", tr.leaf().NotAfter, filepath.Join(g.cfg.StateDir, "transport.crt"))
		}
		g.log.Warn("operational certificate expired while offline; enrolling again with the onboarding certificate", "expired", tr.leaf().NotAfter)
		if err := retry(ctx, g.log, "re-enroll", func() error { return g.creds.enrollTransport(ctx, true) }); err != nil {
			return err
		}
	}
	tr, _ = g.creds.current()
	id, err := identityOf(tr.chain)
	if err != nil {
		return err
	}
	g.path = id
	if e2e == nil || fresh || e2e.expired(now) {
		if err := retry(ctx, g.log, "enroll e2e", func() error { return g.creds.enrollE2E(ctx) }); err != nil {
			return err
		}
	}
	doc, err := g.creds.fetchBootstrap(ctx)
	if err != nil {
		saved, serr := g.creds.savedBootstrap()
		if serr != nil {
			g.log.Warn("bootstrap failed and none saved; retrying", "err", err)
			if err := retry(ctx, g.log, "bootstrap", func() error { doc, err = g.creds.fetchBootstrap(ctx); return err }); err != nil {
				return err
			}
		} else {
			g.log.Warn("bootstrap failed; using the saved configuration", "err", err)
			doc = saved
		}
	}
	if doc.Identity != g.path {
		return fmt.Errorf("bootstrap document is for %q, but this gateway is %q", doc.Identity, g.path)
	}
	g.mu.Lock()
	g.doc = doc
	g.mu.Unlock()
	tr, e2e = g.creds.current()
	g.log.Info("onboarded", "identity", g.path, "transport_expires", tr.leaf().NotAfter, "e2e_expires", e2e.leaf().NotAfter, "brokers", doc.Brokers)
	return nil
}

func (g *Gateway) docNow() *bootstrap.Document {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.doc
}

// applyBootstrap takes the recipients from a bootstrap document.
func (g *Gateway) applyBootstrap(doc *bootstrap.Document) error {
	var rcpts []*x509.Certificate
	for _, r := range doc.Recipients {
		certs, err := pki.ParseCertsPEM([]byte(r.Certificate))
		if err != nil {
			return fmt.Errorf("bootstrap recipient %s: %w", r.Identity, err)
		}
		rcpts = append(rcpts, certs[0])
	}
	g.pipe.setRecipients(rcpts)
	return nil
}

// identityOf is the identity path of the gateway's own transport chain,
// as the platform assigned it (the leaf's common name).
func identityOf(chain []*x509.Certificate) (string, error) {
	p, err := pki.ParsePath(chain[0].Subject.CommonName)
	if err != nil || len(p) != 3 {
		return "", fmt.Errorf("operational certificate names %q, not a gateway identity master/account/gateway", chain[0].Subject.CommonName)
	}
	return p.String(), nil
}

func listenLoopback(addr string) (net.Listener, error) {
	if err := checkLoopback(addr); err != nil {
		return nil, err
	}
	return net.Listen("tcp", addr)
}

// checkLoopback refuses a local-input address beyond loopback: the input
// is plain HTTP and must never be reachable from the network.
func checkLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("--listen-local %q: %w", addr, err)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return fmt.Errorf("--listen-local %q: the local input is plain HTTP and must listen on a loopback address", addr)
	}
	return nil
}

// retry runs f with exponential backoff (1 s to 1 min) until it succeeds,
// fails permanently (a 4xx from the platform), or ctx ends.
func retry(ctx context.Context, log *slog.Logger, what string, f func() error) error {
	wait := time.Second
	for {
		err := f()
		if err == nil {
			return nil
		}
		if permanent(err) {
			return err
		}
		log.Warn(what+" failed; retrying", "err", err, "in", wait)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		wait = min(2*wait, time.Minute)
	}
}
