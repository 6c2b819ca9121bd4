package site_test

import (
	"context"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/fieldtrust/fieldtrust/internal/envelope"
	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/platform"
	"github.com/fieldtrust/fieldtrust/internal/platform/platformtest"
	"github.com/fieldtrust/fieldtrust/internal/site"
	"github.com/fieldtrust/fieldtrust/internal/snapshot"
	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/topic"
)

const account = "ms-1/acc-1"

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, within time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", within, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// issueSite writes a site certificate of acc (serving 127.0.0.1) into a new
// site directory, as 'fieldtrust pki issue ACC --site --ip 127.0.0.1 --out
// DIR' does.
func issueSite(t *testing.T, e *platformtest.Env, acc string) string {
	t.Helper()
	dir := t.TempDir()
	key, err := pki.GenerateKey(elliptic.P256())
	if err != nil {
		t.Fatal(err)
	}
	p, _ := pki.ParsePath(acc)
	iss, err := e.D.Transport.Issue(context.Background(), pki.LeafRequest{Path: p, Site: true, PublicKey: key.Public(), IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}})
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, _ := pki.MarshalKeyPEM(key, nil)
	for f, b := range map[string][]byte{site.CertFile: pki.EncodeCertsPEM(iss.Chain...), site.KeyFile: keyPEM, site.RootFile: pki.EncodeCertsPEM(iss.Root)} {
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// siteTLS loads the site certificate of dir as a TLS client certificate.
func siteTLS(t *testing.T, dir string) tls.Certificate {
	t.Helper()
	c, err := tls.LoadX509KeyPair(filepath.Join(dir, site.CertFile), filepath.Join(dir, site.KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// proxy is the site's WAN link: a TCP forwarder the test cuts and restores.
type proxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	cut    bool
	conns  map[net.Conn]struct{}
}

func startProxy(t *testing.T, target string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	t.Cleanup(func() { ln.Close(); p.setCut(true) })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go p.serve(c)
		}
	}()
	return p
}

func (p *proxy) addr() string { return p.ln.Addr().String() }

func (p *proxy) serve(c net.Conn) {
	p.mu.Lock()
	if p.cut {
		p.mu.Unlock()
		c.Close() // the link is down: nothing gets through
		return
	}
	up, err := net.Dial("tcp", p.target)
	if err != nil {
		p.mu.Unlock()
		c.Close()
		return
	}
	p.conns[c], p.conns[up] = struct{}{}, struct{}{}
	p.mu.Unlock()
	done := make(chan struct{}, 2)
	go func() { io.Copy(up, c); done <- struct{}{} }()
	go func() { io.Copy(c, up); done <- struct{}{} }()
	<-done
	c.Close()
	up.Close()
	p.mu.Lock()
	delete(p.conns, c)
	delete(p.conns, up)
	p.mu.Unlock()
}

// setCut drops every connection through the link (cut) or lets new ones
// through again.
func (p *proxy) setCut(cut bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = cut
	if cut {
		for c := range p.conns {
			c.Close()
		}
	}
}

// events records the site's events for the test to wait on.
type events struct {
	mu  sync.Mutex
	all []site.Event
}

func (ev *events) add(e site.Event) {
	ev.mu.Lock()
	ev.all = append(ev.all, e)
	ev.mu.Unlock()
}

func (ev *events) count(kind string) int {
	ev.mu.Lock()
	defer ev.mu.Unlock()
	n := 0
	for _, e := range ev.all {
		if e.Kind == kind {
			n++
		}
	}
	return n
}

// running is a site run by the test.
type running struct {
	addr   string
	cancel context.CancelFunc
	done   chan error
}

// startSite runs the site of dir until stop or the end of the test.
func startSite(t *testing.T, cfg site.Config) *running {
	t.Helper()
	ready := make(chan string, 1)
	cfg.Ready = func(a string) { ready <- a }
	if cfg.MQTTAddr == "" {
		cfg.MQTTAddr = "127.0.0.1:0"
	}
	if cfg.Logger == nil {
		cfg.Logger = testLogger()
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- site.Run(ctx, cfg) }()
	select {
	case r.addr = <-ready:
	case err := <-r.done:
		cancel()
		t.Fatalf("site: %v", err)
	case <-time.After(30 * time.Second):
		cancel()
		t.Fatal("site did not start within 30 s")
	}
	t.Cleanup(func() { r.stop(t) })
	return r
}

func (r *running) stop(t *testing.T) {
	t.Helper()
	r.cancel()
	select {
	case err := <-r.done:
		if err != nil {
			t.Errorf("site: %v", err)
		}
		r.done <- nil // stop is idempotent
	case <-time.After(30 * time.Second):
		t.Error("site did not stop within 30 s")
	}
}

func testLogger() *slog.Logger {
	if os.Getenv("FIELDTRUST_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	return slog.New(slog.DiscardHandler)
}

// gateway is a gateway behind the site: real transport and e2e
// credentials, sealed hash-chained snapshots published QoS 1 with a
// durable list of its own (a failed publish is sent again after a
// reconnect, as internal/gateway's queue does).
type gateway struct {
	t      *testing.T
	path   string
	id     platformtest.Identity
	sealer *envelope.Sealer
	b      snapshot.Builder
	roots  *x509.CertPool

	mu   sync.Mutex
	addr string
	c    mqtt.Client
	sent int
	n    int // snapshots sealed
}

func newGateway(t *testing.T, e *platformtest.Env, path string) *gateway {
	t.Helper()
	id := e.Identity(t, path, true)
	sealer, err := envelope.NewSealer(envelope.SealOptions{Recipients: []*x509.Certificate{e.IngestCert}, Signer: id.E2E})
	if err != nil {
		t.Fatal(err)
	}
	return &gateway{t: t, path: path, id: id, sealer: sealer, b: snapshot.Builder{Device: "pump", DeviceType: "pump"}, roots: e.Roots}
}

// connect (re)connects to the site at addr.
func (g *gateway) connect(addr string) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.c != nil {
		g.c.Disconnect(0)
	}
	g.addr = addr
	opts := mqtt.NewClientOptions().AddBroker("ssl://" + addr).SetClientID(g.path).SetCleanSession(true).
		SetAutoReconnect(false).SetOrderMatters(true).SetConnectTimeout(5 * time.Second).
		SetTLSConfig(&tls.Config{RootCAs: g.roots, Certificates: []tls.Certificate{g.id.TLS}})
	c := mqtt.NewClient(opts)
	tok := c.Connect()
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		return fmt.Errorf("connect %s to %s: %v", g.path, addr, tok.Error())
	}
	g.c = c
	return nil
}

// seal returns the next sealed snapshot.
func (g *gateway) seal() []byte {
	g.n++
	enc, _, err := g.b.Next(time.Now().UnixMilli(), []snapshot.Value{{Channel: "p", Value: float64(g.n)}})
	if err != nil {
		g.t.Fatal(err)
	}
	env, err := g.sealer.Seal(enc)
	if err != nil {
		g.t.Fatal(err)
	}

	return env
}

// publish sends env until the site acknowledges it, reconnecting to
// g.addr (which a restart of the site may change) after a failure.
func (g *gateway) publish(env []byte, addr func() string) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		g.mu.Lock()
		c := g.c
		g.mu.Unlock()
		if c != nil {
			tok := c.Publish(topic.SnapshotsOf(g.path), 1, false, env)
			if tok.WaitTimeout(10*time.Second) && tok.Error() == nil {
				g.mu.Lock()
				g.sent++
				g.mu.Unlock()
				return nil
			}
		}
		if time.Now().After(deadline) {
			return errors.New("no PUBACK from the site within 60 s")
		}
		if err := g.connect(addr()); err != nil {
			time.Sleep(50 * time.Millisecond) // the site is restarting; try again
		}
	}
}

func (g *gateway) close() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.c != nil {
		g.c.Disconnect(100)
	}
}

// storedChains checks the platform's store: every gateway's device has
// want snapshots, seq 1..want, each linked to the one before, received by
// ingest in sequence order, and ingest saw no integrity problem (a
// snapshot arriving after a later one is a gap event when the later one
// comes, a stale one when it does).
func storedChains(t *testing.T, e *platformtest.Env, gws []*gateway, want int) {
	t.Helper()
	ctx := context.Background()
	for _, g := range gws {
		recs, err := e.D.Store.QuerySnapshots(ctx, store.SnapshotQuery{Gateway: g.path, Device: "pump", Limit: store.MaxLimit})
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) != want {
			t.Fatalf("%s: %d snapshots stored, want %d", g.path, len(recs), want)
		}
		slices.SortFunc(recs, func(a, b store.SnapshotRecord) int { return int(a.Seq) - int(b.Seq) })
		for i, r := range recs {
			if r.Seq != uint64(i+1) {
				t.Fatalf("%s: seq %d at position %d: chain has a gap", g.path, r.Seq, i)
			}
			if i > 0 {
				if string(r.Prev) != string(recs[i-1].Hash) {
					t.Fatalf("%s: seq %d does not link to seq %d", g.path, r.Seq, r.Seq-1)
				}
				if r.ReceivedAt.Before(recs[i-1].ReceivedAt) {
					t.Fatalf("%s: seq %d arrived (%s) before seq %d (%s): order not kept", g.path, r.Seq, r.ReceivedAt, r.Seq-1, recs[i-1].ReceivedAt)
				}
			}
		}
	}
	if evs, err := e.D.Store.IntegrityEvents(ctx, "", time.Time{}, time.Time{}, 10); err != nil || len(evs) != 0 {
		t.Fatalf("integrity events: %+v %v", evs, err)
	}
}

func stored(t *testing.T, e *platformtest.Env) uint64 {
	devs, err := e.D.Store.ListDevices(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, d := range devs {
		n += d.Snapshots
	}
	return n
}

func startPlatform(t *testing.T) *platformtest.Env {
	t.Helper()
	return platformtest.Start(t, platform.Config{})
}

// brokerTiers are the platform's broker tiers a site's upstream link is
// tested against: the embedded broker and one node of the clustered tier
// (NATS, docs/scale.md).
var brokerTiers = []string{platform.BrokerEmbedded, platform.BrokerCluster}

// startPlatformOn starts the platform on broker tier broker.
func startPlatformOn(t *testing.T, broker string) *platformtest.Env {
	t.Helper()
	return platformtest.Start(t, platform.Config{Broker: broker})
}

// scaledClock is the site's backoff clock in the outage test: a wait of d
// passes in d/scale of real time, and the clock adds up the simulated
// waits, so a 2-minute outage runs in well under a second of waiting
// while every reconnect attempt is real (and fails at the cut link).
type scaledClock struct {
	scale int64
	mu    sync.Mutex
	waits []time.Duration
}

func (c *scaledClock) after(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	c.waits = append(c.waits, d)
	c.mu.Unlock()
	return time.After(d / time.Duration(c.scale))
}

// since returns the simulated time waited from wait number i on, and the
// longest of those waits.
func (c *scaledClock) since(i int) (sum, longest time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, w := range c.waits[min(i, len(c.waits)):] {
		sum += w
		longest = max(longest, w)
	}
	return sum, longest
}

func (c *scaledClock) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.waits)
}

func tlsConfig(e *platformtest.Env, cert tls.Certificate) *tls.Config {
	return &tls.Config{RootCAs: e.Roots, Certificates: []tls.Certificate{cert}}
}
