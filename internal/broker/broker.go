// Package broker is fieldtrust's embedded MQTT broker (MQTT 3.1.1 and 5):
// a strict mutual-TLS listener, every identity taken from the verified
// certificate chain, and every path a message can take (connect,
// subscribe, publish, will, retained delivery, live delivery, session
// resumption) checked by tacs.
//
// The broker does not know the PKI. It consumes an Identify function that
// turns a verified TLS connection state into a tacs.Subject (and refuses
// revoked or unknown chains), and Grants for service roles.
//
// It is its own MQTT implementation (wire format in package packet), not a
// library broker behind hooks: docs/broker.md, "Why our own data path",
// records the profile and the defects that decided it. The parts:
//
//   - listener.go: TLS handshake under a deadline, then one goroutine per
//     connection that reads and handles packets in order (conn.go);
//   - out.go: each connection's outbound bytes, coalesced into as few TLS
//     records and write calls as possible by a writer that runs only
//     while there is something to write;
//   - session.go: MQTT sessions (subscriptions, QoS 1/2 state, queues)
//     keyed by identity and client ID, so no identity can reach another's;
//   - route.go: the subscription tree, shared subscriptions, retained
//     messages, and delivery with backpressure;
//   - will.go: wills and their delays, re-checked against revocation;
//   - store.go: persistence of what a persistent session needs, through
//     one ordered, group-committing writer (journal.go).
package broker

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fieldtrust/fieldtrust/internal/broker/packet"
	"github.com/fieldtrust/fieldtrust/internal/tacs"
)

// Defaults for the limits in Config. Each is justified in docs/broker.md.
const (
	DefaultMaxConnections   = 200_000
	DefaultMaxPacketSize    = 1 << 20 // 1 MiB: sealed snapshots are a few KiB; firmware travels by URL.
	DefaultHandshakeTimeout = 10 * time.Second
	// DefaultMaxKeepAlive caps the keepalive a client may choose; a client
	// asking for none (0) or more gets this one (MQTT 5: told in CONNACK's
	// Server Keep Alive; MQTT 3.1.1 cannot be told and is held to it all
	// the same). Without a cap a silent peer would hold its connection,
	// session and will forever.
	DefaultMaxKeepAlive = 60 * time.Second
	// MaxClientIDLen bounds the client ID a CONNECT may carry. It keeps
	// session keys, log lines and storage keys small.
	MaxClientIDLen = 128
)

// IdentifyFunc derives the subject from a connection's verified chain. It
// is called once per connection, again by Revalidate, and before a will
// is sent. Returning an error refuses (or ends) the connection. After
// CONNECT it sees only what identityState keeps: HandshakeComplete,
// PeerCertificates and VerifiedChains.
type IdentifyFunc func(cs tls.ConnectionState) (tacs.Subject, error)

// VerifyClientFunc verifies a client certificate and the intermediates it
// presented, and returns the verified chain (leaf first, root last).
type VerifyClientFunc func(leaf *x509.Certificate, intermediates []*x509.Certificate) ([]*x509.Certificate, error)

// Config is what the broker consumes from the platform.
type Config struct {
	// Addr is the TCP listen address, e.g. "127.0.0.1:8883"; port 0 picks
	// a free port (see Broker.Addr).
	Addr string
	// TLS carries the server certificate and the client CA pool. The broker
	// clones it and enforces its policy on top (versions, cipher suites,
	// RequireAndVerifyClientCert); ClientCAs must be set and
	// GetConfigForClient must be nil, since it would bypass that policy.
	TLS *tls.Config
	// Identify maps a verified chain to a subject; required.
	Identify IdentifyFunc
	// VerifyClient, if set, verifies client chains instead of the TLS
	// layer's ClientCAs: with it, a client may present its leaf alone, as
	// long as VerifyClient knows the intermediate CAs. Verification still
	// happens during the handshake; the chain it returns is what Identify
	// sees.
	VerifyClient VerifyClientFunc
	// Grants holds the service roles; nil means tacs.DefaultGrants().
	Grants tacs.Grants
	// StateDir holds the session, queue and retained store; required.
	StateDir string
	// Logger receives the broker's logs; nil discards them.
	Logger *slog.Logger
	// Registerer receives the broker's metrics; nil keeps them private.
	Registerer prometheus.Registerer

	// Limits; zero means the Default* value.
	MaxConnections   int
	MaxPacketSize    uint32
	HandshakeTimeout time.Duration
	MaxKeepAlive     time.Duration
	// AccountLimits apply to account identities (devices, customers),
	// ServiceLimits to platform services; zero fields take
	// DefaultAccountLimits and DefaultServiceLimits.
	AccountLimits, ServiceLimits Limits

	// GoroutinePerConnection keeps one blocked reader goroutine per
	// connection instead of parking idle readers on the shared poller
	// (park.go; Linux). It is the model of other systems, kept for
	// comparison and as a fallback.
	GoroutinePerConnection bool
	// ParkAfter is how long a reader that found nothing to read waits for
	// the next packet before it parks (default 250 ms; negative: at once):
	// a connection that is busy keeps its reader, so parking costs nothing
	// per packet, and an idle one gives its goroutine up after it.
	ParkAfter time.Duration
	// StallTimer, if set, replaces the timer of stallAfter a publisher
	// held back by slow subscribers waits on before it marks them
	// stalled (tests fire it).
	StallTimer func() <-chan time.Time
}

// Broker is a running or runnable MQTT broker. Create it with New, run it
// with Serve.
type Broker struct {
	cfg            Config
	grants         tacs.Grants
	log            *slog.Logger
	metrics        *metrics
	ln             *tlsListener
	store          *store
	writers        writerPool // connections' outbox writers (out.go)
	accountLimits  Limits
	serviceLimits  Limits
	maxPacket      int
	started        time.Time
	closing        atomic.Bool
	serveOnce      sync.Once
	connWG         sync.WaitGroup // connections (a parked one has no goroutine)
	parker         *parker        // nil: one reader goroutine per connection; set before accepting
	readers        atomic.Int64   // reader goroutines running (parked connections have none)
	timersCtx      context.Context
	cancelTimers   context.CancelFunc
	subs           *subscriptions
	retained       *retainedStore
	messagesIn     atomic.Int64 // for $SYS
	messagesOut    atomic.Int64
	waitingPublish atomic.Int64  // publishers waiting on backpressure right now
	grantsGen      atomic.Uint64 // bumped by setGrants: invalidates cached read decisions

	mu         sync.Mutex
	sessions   map[string]*session  // key: identity|clientID; guarded by mu
	identities map[string]*identity // key: subject.String(); guarded by mu
	conns      map[*conn]struct{}   // live connections; guarded by mu
}

// New validates cfg, opens the state store, restores persisted sessions
// and retained messages, and binds the listener. The broker accepts no
// connection before Serve.
func New(cfg Config) (*Broker, error) {
	if cfg.TLS == nil {
		return nil, errors.New("broker: config: TLS is required")
	}
	if cfg.Identify == nil {
		return nil, errors.New("broker: config: Identify is required")
	}
	if cfg.StateDir == "" {
		return nil, errors.New("broker: config: StateDir is required")
	}
	if cfg.Grants == nil {
		cfg.Grants = tacs.DefaultGrants()
	}
	if err := cfg.Grants.Validate(); err != nil {
		return nil, fmt.Errorf("broker: config: %w", err)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.MaxConnections <= 0 {
		cfg.MaxConnections = DefaultMaxConnections
	}
	if cfg.MaxPacketSize == 0 {
		cfg.MaxPacketSize = DefaultMaxPacketSize
	}
	if cfg.MaxPacketSize > packet.MaxRemainingLength {
		return nil, fmt.Errorf("broker: config: MaxPacketSize %d exceeds MQTT's %d", cfg.MaxPacketSize, packet.MaxRemainingLength)
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if cfg.MaxKeepAlive <= 0 {
		cfg.MaxKeepAlive = DefaultMaxKeepAlive
	}
	if cfg.MaxKeepAlive > 65535*time.Second {
		return nil, fmt.Errorf("broker: config: MaxKeepAlive %v exceeds MQTT's 65535 s", cfg.MaxKeepAlive)
	}
	tlsCfg, err := serverTLSConfig(cfg.TLS, cfg.VerifyClient)
	if err != nil {
		return nil, fmt.Errorf("broker: config: %w", err)
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("broker: state dir: %w", err)
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, fmt.Errorf("broker: metrics: %w", err)
	}
	b := &Broker{
		cfg:           cfg,
		grants:        cfg.Grants,
		log:           cfg.Logger,
		metrics:       m,
		accountLimits: cfg.AccountLimits.withDefaults(DefaultAccountLimits),
		serviceLimits: cfg.ServiceLimits.withDefaults(DefaultServiceLimits),
		maxPacket:     int(cfg.MaxPacketSize),
		started:       time.Now(),
		subs:          newSubscriptions(),
		retained:      newRetainedStore(),
		sessions:      map[string]*session{},
		identities:    map[string]*identity{},
		conns:         map[*conn]struct{}{},
	}
	b.timersCtx, b.cancelTimers = context.WithCancel(context.Background())
	st, err := openStore(filepath.Join(cfg.StateDir, "broker.db"), b.log, storeTuning{observe: m.store})
	if err != nil {
		return nil, fmt.Errorf("broker: %w", err)
	}
	b.store = st
	if err := b.restore(); err != nil {
		st.close()
		return nil, fmt.Errorf("broker: restore state: %w", err)
	}
	ln, err := newTLSListener(cfg.Addr, tlsCfg, cfg.HandshakeTimeout, b)
	if err != nil {
		st.close()
		return nil, fmt.Errorf("broker: listen %s: %w", cfg.Addr, err)
	}
	b.ln = ln
	return b, nil
}

// Addr returns the bound listen address (useful with port 0).
func (b *Broker) Addr() string { return b.ln.Addr() }

// Serve accepts connections until ctx is done, then disconnects every
// client, flushes the store and returns. It may be called once.
func (b *Broker) Serve(ctx context.Context) error {
	err := errors.New("broker: Serve called twice")
	b.serveOnce.Do(func() { err = b.serve(ctx) })
	return err
}

func (b *Broker) serve(ctx context.Context) error {
	b.log.InfoContext(ctx, "broker serving", "addr", b.Addr())
	go b.sysLoop(ctx)
	if !b.cfg.GoroutinePerConnection {
		b.parker = newParker(b.log)
	}
	acceptErr := make(chan error, 1)
	go func() { acceptErr <- b.ln.serve() }()
	var runErr error
	select {
	case <-ctx.Done():
	case err := <-acceptErr:
		if !b.closing.Load() {
			runErr = fmt.Errorf("broker: accept: %w", err)
		}
	}
	b.log.Info("broker stopping", "addr", b.Addr())
	b.closing.Store(true)
	b.ln.close()
	b.cancelTimers()
	b.mu.Lock()
	live := make([]*conn, 0, len(b.conns))
	for c := range b.conns {
		live = append(live, c)
	}
	b.mu.Unlock()
	for _, c := range live {
		c.shutdown()
	}
	b.connWG.Wait()
	if b.parker != nil {
		b.parker.close()
	}
	if err := b.store.close(); err != nil && runErr == nil {
		runErr = fmt.Errorf("broker: close state: %w", err)
	}
	return runErr
}

// Publish injects a message from the platform itself (for example the CRL,
// retained on pki/crl/transport). It bypasses the write check, since the
// platform is not a client, but every delivery is still read-checked per
// subscriber. A QoS > 0 publish returns once it is durable for every
// persistent session that queued it (and for the retained store).
func (b *Broker) Publish(topic string, payload []byte, retain bool, qos byte) error {
	if err := tacs.ValidateTopic(topic); err != nil {
		return fmt.Errorf("broker: publish: %w", err)
	}
	if qos > 2 {
		return fmt.Errorf("broker: publish %s: qos %d", topic, qos)
	}
	m := newMessage(topic, append([]byte(nil), payload...), qos, retain, packet.Properties{}, "", time.Now())
	durable := false
	if retain {
		if b.retained.set(m, nil) {
			b.store.putRetained(m, nil)
			durable = true
		}
	}
	if b.route(context.Background(), m, nil) {
		durable = true
	}
	if durable && qos > 0 {
		if err := b.store.barrier(); err != nil {
			return fmt.Errorf("broker: publish %s: %w", topic, err)
		}
	}
	return nil
}

// Revalidate runs Identify again on every live connection's TLS state and
// disconnects those that now fail or map to a different subject (e.g. after
// a CRL update). Their wills are dropped, not sent: a revoked identity must
// not speak one last time. Pending delayed wills of offline sessions are
// re-checked the same way. It returns how many connections it ended.
func (b *Broker) Revalidate(ctx context.Context) int {
	b.mu.Lock()
	live := make([]*conn, 0, len(b.conns))
	for c := range b.conns {
		live = append(live, c)
	}
	offline := make([]*session, 0)
	for _, s := range b.sessions {
		offline = append(offline, s)
	}
	b.mu.Unlock()
	n := 0
	for _, c := range live {
		if ctx.Err() != nil {
			break
		}
		if c.closed.Load() {
			continue
		}
		subj, err := b.cfg.Identify(c.tlsState())
		reason := "identify_failed"
		if err == nil {
			if subj == c.subject {
				continue
			}
			reason = "identity_changed"
		}
		b.refuse(ctx, "revalidate", reason, c.subject, "client", c.clientID, "error", err)
		c.revoke(packet.NotAuthorized)
		n++
	}
	for _, s := range offline {
		if ctx.Err() != nil {
			break
		}
		s.recheckWill(ctx)
	}
	b.recheckRetained(ctx)
	return n
}

// recheckRetained deletes retained messages whose publisher's identity no
// longer holds: a revoked (or stolen and then revoked) credential must not
// keep speaking to every new subscriber through what it retained.
func (b *Broker) recheckRetained(ctx context.Context) {
	for _, rm := range b.retained.all() {
		if ctx.Err() != nil {
			return
		}
		if rm.cs == nil || rm.owner == sysOwner {
			continue // the platform's own
		}
		subj, err := b.cfg.Identify(*rm.cs)
		if err == nil && subj.String() == rm.owner {
			continue
		}
		del := newMessage(rm.msg.topic, nil, 0, true, packet.Properties{}, "", time.Now())
		if b.retained.deleteIf(rm) {
			b.store.putRetainedFor(del, "", nil)
			b.refuse(ctx, "revalidate", "retained_publisher_revoked", tacs.Subject{}, "owner", rm.owner, "topic", logTopic(rm.msg.topic))
		}
	}
}

// setGrants replaces the service grants (tests; configuration reloads).
func (b *Broker) setGrants(g tacs.Grants) {
	b.grants = g
	b.grantsGen.Add(1)
}

// refuse counts one refusal and logs it. stage is where it happened
// (connect, subscribe, publish, will, delivery, session_resume,
// revalidate); reason is a small fixed vocabulary, mostly tacs.Reason
// values.
func (b *Broker) refuse(ctx context.Context, stage, reason string, subj tacs.Subject, attrs ...any) {
	b.metrics.refusals.WithLabelValues(stage, reason).Inc()
	args := append([]any{"stage", stage, "reason", reason, "identity", subj.String()}, attrs...)
	b.log.WarnContext(ctx, "mqtt refused", args...)
}
