// Package broker is fieldtrust's embedded MQTT broker: mochi-mqtt behind a
// strict mutual-TLS listener, with every identity taken from the verified
// certificate chain and every path a message can take (connect, subscribe,
// publish, will, retained delivery, live delivery, session resumption)
// checked by tacs.
//
// The broker does not know the PKI. It consumes an Identify function that
// turns a verified TLS connection state into a tacs.Subject (and refuses
// revoked or unknown chains), and Grants for service roles. See
// docs/broker.md for the policy in prose.
package broker

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/fieldtrust/fieldtrust/internal/tacs"
)

// Defaults for the limits in Config. Each is justified in docs/broker.md.
const (
	DefaultMaxConnections   = 50_000
	DefaultMaxPacketSize    = 1 << 20 // 1 MiB: sealed snapshots are a few KiB; firmware travels by URL.
	DefaultSessionExpiry    = 7 * 24 * time.Hour
	DefaultHandshakeTimeout = 10 * time.Second
	// MaxClientIDLen bounds the client ID a CONNECT may carry. It keeps
	// session keys, log lines and storage keys small.
	MaxClientIDLen = 128
)

// IdentifyFunc derives the subject from a connection's verified chain. It
// is called once per connection and again by Revalidate. Returning an
// error refuses (or, on revalidation, ends) the connection.
type IdentifyFunc func(cs tls.ConnectionState) (tacs.Subject, error)

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
	// Grants holds the service roles; nil means tacs.DefaultGrants().
	Grants tacs.Grants
	// StateDir holds the session, inflight and retained store; required.
	StateDir string
	// Logger receives the broker's and mochi's logs; nil discards them.
	Logger *slog.Logger
	// Registerer receives the broker's metrics; nil keeps them private.
	Registerer prometheus.Registerer

	// Limits; zero means the Default* value.
	MaxConnections   int
	MaxPacketSize    uint32
	SessionExpiry    time.Duration
	HandshakeTimeout time.Duration
}

// Broker is a running or runnable MQTT broker. Create it with New, run it
// with Serve.
type Broker struct {
	cfg     Config
	grants  tacs.Grants
	log     *slog.Logger
	server  *mqtt.Server
	store   *store
	access  *accessHook
	flow    *flow
	gate    *sessionGate
	metrics *metrics
	ln      *tlsListener

	serveOnce sync.Once
}

// New validates cfg, opens the state store, binds the listener and wires
// the hooks. The broker accepts no connection before Serve.
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
	if cfg.SessionExpiry <= 0 {
		cfg.SessionExpiry = DefaultSessionExpiry
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = DefaultHandshakeTimeout
	}
	tlsCfg, err := serverTLSConfig(cfg.TLS)
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

	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumClients = int64(cfg.MaxConnections)
	caps.MaximumPacketSize = cfg.MaxPacketSize
	caps.MaximumSessionExpiryInterval = uint32(cfg.SessionExpiry / time.Second)
	caps.Compatibilities.ObscureNotAuthorized = false
	caps.MaximumClientWritesPending = writeQueue

	b := &Broker{cfg: cfg, grants: cfg.Grants, log: cfg.Logger, metrics: m, gate: newSessionGate()}
	b.server = mqtt.New(&mqtt.Options{
		Capabilities:           caps,
		Logger:                 cfg.Logger.With("component", "mochi"),
		InlineClient:           true,
		SysTopicResendInterval: 10,
	})

	st, err := openStore(filepath.Join(cfg.StateDir, "broker.db"), b.log)
	if err != nil {
		return nil, fmt.Errorf("broker: %w", err)
	}
	b.store = st
	b.access = &accessHook{b: b}
	b.flow = &flow{b: b, maxInflight: int(caps.MaximumInflight)}
	st.admit = b.flow.admit
	// Order matters: mochi calls hooks in the order added and stops at
	// the first OnPublish error, so access control runs before anything
	// is persisted (the store's OnPublish also runs flow control); the
	// access hook's OnDisconnect takes the session gate before the store
	// forgets anything.
	if err := b.server.AddHook(b.access, nil); err != nil {
		st.close()
		return nil, fmt.Errorf("broker: access hook: %w", err)
	}
	if err := b.server.AddHook(b.flow, nil); err != nil {
		st.close()
		return nil, fmt.Errorf("broker: flow hook: %w", err)
	}
	if err := b.server.AddHook(st, nil); err != nil {
		st.close()
		return nil, fmt.Errorf("broker: store hook: %w", err)
	}
	b.ln = newTLSListener("mtls", cfg.Addr, tlsCfg, cfg.HandshakeTimeout, b.log, m)
	b.ln.ended = b.gate.release
	if err := b.server.AddListener(b.ln); err != nil {
		st.close()
		return nil, fmt.Errorf("broker: listen %s: %w", cfg.Addr, err)
	}
	return b, nil
}

// Addr returns the bound listen address (useful with port 0).
func (b *Broker) Addr() string { return b.ln.Address() }

// Serve restores persisted state, accepts connections until ctx is done,
// then disconnects every client, flushes the store and returns. It may be
// called once.
func (b *Broker) Serve(ctx context.Context) error {
	err := errors.New("broker: Serve called twice")
	b.serveOnce.Do(func() { err = b.serve(ctx) })
	return err
}

func (b *Broker) serve(ctx context.Context) error {
	if err := b.server.Serve(); err != nil {
		b.ln.Close(func(string) {})
		b.store.close()
		return fmt.Errorf("broker: start: %w", err)
	}
	b.store.replayPending(b.server)
	b.log.InfoContext(ctx, "broker serving", "addr", b.Addr())
	<-ctx.Done()
	b.log.Info("broker stopping", "addr", b.Addr())
	if err := b.server.Close(); err != nil {
		return fmt.Errorf("broker: stop: %w", err)
	}
	return nil
}

// Publish injects a message from the platform itself (for example the CRL,
// retained on pki/crl/transport). It bypasses the write check, since the
// platform is not a client, but every delivery is still read-checked per
// subscriber.
func (b *Broker) Publish(topic string, payload []byte, retain bool, qos byte) error {
	if err := tacs.ValidateTopic(topic); err != nil {
		return fmt.Errorf("broker: publish: %w", err)
	}
	if qos > 2 {
		return fmt.Errorf("broker: publish %s: qos %d", topic, qos)
	}
	if err := b.server.Publish(topic, payload, retain, qos); err != nil {
		return fmt.Errorf("broker: publish %s: %w", topic, err)
	}
	return nil
}

// Revalidate runs Identify again on every live connection's TLS state and
// disconnects those that now fail or map to a different subject (e.g. after
// a CRL update). Their wills are dropped, not sent: a revoked identity must
// not speak one last time. It returns how many connections it ended.
func (b *Broker) Revalidate(ctx context.Context) int {
	n := 0
	for _, cl := range b.server.Clients.GetAll() {
		if ctx.Err() != nil {
			break
		}
		st := b.access.live(cl)
		if st == nil || cl.Closed() {
			continue
		}
		subj, err := b.cfg.Identify(st.tls)
		reason := "identify_failed"
		if err == nil {
			if subj == st.subject {
				continue
			}
			reason = "identity_changed"
		}
		st.revoked.Store(true)
		dropWill(cl)
		b.refuse(ctx, "revalidate", reason, st.subject, "client", rawClientID(cl.ID), "error", err)
		_ = b.server.DisconnectClient(cl, packets.ErrNotAuthorized)
		n++
	}
	return n
}

// refuse logs and counts one refusal. stage is where it happened (connect,
// subscribe, publish, will, delivery, session_resume, revalidate); reason is
// a small fixed vocabulary, mostly tacs.Reason values.
func (b *Broker) refuse(ctx context.Context, stage, reason string, subj tacs.Subject, attrs ...any) {
	b.metrics.refusals.WithLabelValues(stage, reason).Inc()
	args := append([]any{"stage", stage, "reason", reason, "identity", subj.String()}, attrs...)
	b.log.WarnContext(ctx, "mqtt refused", args...)
}
