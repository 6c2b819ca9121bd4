// Package cluster runs fieldtrust's clustered broker tier on an existing,
// production-proven engine: the NATS server (embedded as a Go module) with
// its MQTT 3.1.1 listener, routes between nodes and JetStream replication
// for sessions, QoS 1/2 messages and retained messages. No cluster
// protocol of our own: the engine replicates; this package configures it
// from the data directory and is its authorization hook.
//
// Security properties kept from the embedded broker (docs/scale.md):
//
//   - identity from the verified chain: the hook (authenticator.Check)
//     calls Config.Identify, which the platform implements with
//     pki.Verifier (chain, revocation, namespace, key rules) and
//     pki.IdentityFromChain; the CONNECT username and password are ignored;
//   - TACS: the subject's rights are tacs.Rights (the same rules as
//     tacs.Authorize, stated as data) translated to the engine's
//     permission lists, which it checks on every publish (wills included,
//     when they are sent), subscription, and delivery of a deny subject;
//     the engine's own subject spaces ($JS, $MQTT, ...) are fenced off;
//   - sessions bound to identities: the engine keys sessions by client ID
//     alone, so the hook accepts only a client ID that is the subject's
//     name ("ms/acc/gw", "service:ingest") or that name followed by ':'
//     and anything: no identity can resume or take over another's session;
//   - live revocation: Revalidate re-identifies every connection of this
//     node and disconnects those that no longer verify (the platform calls
//     it within a second of a revocation); connections end when their
//     first certificate expires;
//   - routes between nodes are mTLS with the transport PKI, and only a
//     service certificate whose role is RoleNode may join.
package cluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/fieldtrust/fieldtrust/internal/broker"
	"github.com/fieldtrust/fieldtrust/internal/tacs"
	"github.com/fieldtrust/fieldtrust/internal/tlspolicy"
)

// RoleNode is the service role of a broker node's certificate: the only
// identity that may open a route to another node.
const RoleNode = "cluster-node"

// ClusterName names the engine's cluster (one per data directory).
const ClusterName = "fieldtrust"

// Config configures one node.
type Config struct {
	// Name is the node's name (an identity element), unique in the
	// cluster; its certificate is the transport service "node-NAME".
	Name string
	// MQTTAddr is where devices and services connect (MQTT 3.1.1 over
	// mTLS); port 0 picks a free port (see Node.MQTTAddr).
	MQTTAddr string
	// ClusterAddr is the listener for routes from the other nodes; empty
	// for a single node.
	ClusterAddr string
	// Routes are the other nodes' cluster addresses (host:port).
	Routes []string
	// StoreDir holds the engine's JetStream state.
	StoreDir string
	// Replicas is how many nodes hold each MQTT stream (sessions, QoS 1/2
	// messages, retained messages): 3 in a 3-node cluster survives the
	// loss of one node; 1 for a single node.
	Replicas int
	// Certificate is the node's transport service certificate (server and
	// client auth, IP SANs for its addresses): for MQTT, routes in and
	// routes out.
	Certificate func() (*tls.Certificate, error)
	// Roots is the transport root: what the node trusts for route peers.
	Roots *x509.CertPool
	// Identify maps a client's presented chain (leaf first, as sent) to
	// its subject, verifying it: the platform's pki.Verifier plus the
	// service roles. An error refuses the connection.
	Identify func(chain []*x509.Certificate) (tacs.Subject, error)
	// Grants are the service roles' grants.
	Grants tacs.Grants
	// Admit, if set, decides after identification whether the node takes
	// the connection now; an error refuses it (CONNACK "not authorized":
	// the engine has no other refusal for its hook), logged as a refusal,
	// and the client tries again or the next broker of its list. A node
	// of several refuses an account's gateways until an ingest session
	// covers the account, so nothing they publish is acknowledged and
	// dropped (docs/scale.md "The window of a brand-new account").
	Admit func(ctx context.Context, s tacs.Subject) error
	// IdentityCerts returns the leaf certificates recorded for an
	// identity name (a leaf's common name: path or service name), not
	// revoked nor expired (pki.Authority.ValidLeaves). A persistent
	// session accepted under a chain now revoked is removed from the
	// engine only if none of them passes Identify: a gateway whose older
	// certificate was revoked after a renewal keeps its session. Nil: no
	// session is removed (revoked.go).
	IdentityCerts func(ctx context.Context, name string) ([]*x509.Certificate, error)
	// AckWait is how long a QoS 1/2 delivery waits for its acknowledgement
	// before the engine redelivers it (default 10 s).
	AckWait time.Duration
	// JSAPITimeout is how long the engine's MQTT layer waits for a
	// JetStream request, above all the store of a QoS 1 publish before its
	// PUBACK (default DefaultJSAPITimeout). When the leader of the
	// messages stream dies, the store waits for the election of a new one
	// (NATS: 4–9 s, longer on a loaded machine); beyond this timeout the
	// engine closes the publisher's connection, on whichever node it is
	// (docs/scale.md "Failover after kill -9").
	JSAPITimeout time.Duration
	// MaxStore bounds the node's JetStream disk use (default 8 GiB).
	MaxStore int64
	// AccountLimits and ServiceLimits bound what one identity makes the
	// engine hold (connections per node, persistent sessions cluster-wide,
	// retained messages and bytes; limits.go); zero: the embedded broker's
	// defaults (broker.DefaultAccountLimits, DefaultServiceLimits).
	AccountLimits, ServiceLimits broker.Limits
	Logger                       *slog.Logger
	// now is the clock for certificate expiry (tests).
	now func() time.Time
}

// DefaultAckWait is Config.AckWait's default.
const DefaultAckWait = 10 * time.Second

// DefaultJSAPITimeout is Config.JSAPITimeout's default: three times the
// engine's own (5 s), beyond its longest election timeout, and above the
// gateways' PUBACK timeout (10 s), which then decides.
const DefaultJSAPITimeout = 15 * time.Second

// Node is a running broker node.
type Node struct {
	cfg        Config
	s          *server.Server
	opts       *server.Options
	auth       *authenticator
	stopLimits func()
	stopOnce   sync.Once
}

// Start starts a node and waits until it accepts MQTT connections (in a
// cluster: until JetStream has a leader, so MQTT sessions can be stored).
func Start(ctx context.Context, cfg Config) (*Node, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.now == nil {
		cfg.now = time.Now
	}
	if cfg.Replicas <= 0 {
		cfg.Replicas = 1
	}
	if cfg.AckWait <= 0 {
		cfg.AckWait = DefaultAckWait
	}
	if cfg.JSAPITimeout <= 0 {
		cfg.JSAPITimeout = DefaultJSAPITimeout
	}
	if cfg.MaxStore <= 0 {
		cfg.MaxStore = 8 << 30
	}
	if cfg.AccountLimits == (broker.Limits{}) {
		cfg.AccountLimits = broker.DefaultAccountLimits
	}
	if cfg.ServiceLimits == (broker.Limits{}) {
		cfg.ServiceLimits = broker.DefaultServiceLimits
	}
	if cfg.Identify == nil || cfg.Certificate == nil || cfg.Roots == nil {
		return nil, errors.New("cluster node: Identify, Certificate and Roots are required")
	}
	if err := cfg.Grants.Validate(); err != nil {
		return nil, fmt.Errorf("cluster node: grants: %w", err)
	}
	mhost, mport, err := splitAddr(cfg.MQTTAddr)
	if err != nil {
		return nil, fmt.Errorf("cluster node: --mqtt-addr: %w", err)
	}
	getCert := func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return cfg.Certificate() }
	token, err := newEngineToken()
	if err != nil {
		return nil, fmt.Errorf("cluster node: %w", err)
	}
	a := &authenticator{cfg: cfg, conns: map[uint64]*conn{}, bySubject: map[string]map[uint64]*conn{},
		byClientID: map[string]uint64{}, held: map[string]*heldChain{}, engine: engineClient{token: token},
		sessions: sessionIndex{byOwner: map[string]map[string]struct{}{}},
		retained: retainedIndex{bySubject: map[string]retained{}, bySource: map[string]map[string]struct{}{},
			warned: map[string]time.Time{}, removed: map[string]int{}}}
	// Devices may present their leaf alone (as with the embedded broker):
	// the TLS layer asks for a certificate, the hook verifies it with the
	// platform's verifier, which knows every account CA.
	mqttTLS := tlspolicy.Server(getCert, nil, tls.RequireAnyClientCert, nil)
	opts := &server.Options{
		ServerName:         cfg.Name,
		Host:               "127.0.0.1",
		Port:               server.RANDOM_PORT, // NATS protocol: refused by the hook, loopback only
		NoSigs:             true,
		MaxPayload:         1 << 20,
		JetStream:          true,
		StoreDir:           cfg.StoreDir,
		JetStreamMaxMemory: 256 << 20,
		JetStreamMaxStore:  cfg.MaxStore,
		MQTT: server.MQTTOpts{
			Host: mhost, Port: mport, TLSConfig: mqttTLS, TLSTimeout: 10, AuthTimeout: 10,
			StreamReplicas: cfg.Replicas, AckWait: cfg.AckWait, JSAPITimeout: cfg.JSAPITimeout,
		},
		CustomClientAuthentication: a,
	}
	if cfg.ClusterAddr != "" {
		chost, cport, err := splitAddr(cfg.ClusterAddr)
		if err != nil {
			return nil, fmt.Errorf("cluster node: --cluster-addr: %w", err)
		}
		routeTLS := tlspolicy.Server(getCert, cfg.Roots, tls.RequireAndVerifyClientCert, a.verifyRoute)
		routeTLS.RootCAs = cfg.Roots
		routeTLS.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cfg.Certificate() }
		opts.Cluster = server.ClusterOpts{Name: ClusterName, Host: chost, Port: cport, TLSConfig: routeTLS, TLSTimeout: 10,
			ConnectRetries: -1}
		for _, r := range cfg.Routes {
			opts.Routes = append(opts.Routes, &url.URL{Scheme: "nats-route", Host: r})
		}
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("cluster node %s: %w", cfg.Name, err)
	}
	s.SetLoggerV2(natsLogger{cfg.Logger.With("component", "nats", "node", cfg.Name)}, false, false, false)
	a.s = s
	go s.Start()
	n := &Node{cfg: cfg, s: s, opts: opts, auth: a}
	if err := n.waitReady(ctx); err != nil {
		s.Shutdown()
		return nil, err
	}
	if err := n.followLimits(); err != nil {
		s.Shutdown()
		s.WaitForShutdown()
		return nil, fmt.Errorf("cluster node %s: %w", cfg.Name, err)
	}
	return n, nil
}

// followLimits connects the node's engine client and starts following the
// engine's session and retained streams for the limits (limits.go).
func (n *Node) followLimits() error {
	a := n.auth
	if err := a.engine.connect(n.s); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	log := n.cfg.Logger.With("node", n.cfg.Name)
	sf := &follower{js: a.engine.js, stream: sessStream, filter: sessSubjects, apply: a.applySession, log: log}
	rf := &follower{js: a.engine.js, stream: rmsgsStream, filter: rmsgsSubjects, apply: a.applyRetained, log: log,
		headersOnly: true}
	a.sessFollower.Store(sf)
	done := make(chan struct{}, 2)
	for _, f := range []*follower{sf, rf} {
		go func() { f.run(ctx); done <- struct{}{} }()
	}
	n.stopLimits = func() {
		cancel()
		<-done
		<-done
		a.engine.nc.Close()
	}
	return nil
}

// waitReady waits for the listeners and, in a cluster, for JetStream to be
// current (a meta leader elected and known): before that the engine
// cannot store an MQTT session and refuses the connection.
func (n *Node) waitReady(ctx context.Context) error {
	for {
		if n.s.ReadyForConnections(100*time.Millisecond) && n.opts.MQTT.Port > 0 &&
			(n.cfg.ClusterAddr == "" || n.s.JetStreamIsCurrent()) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster node %s not ready: %w", n.cfg.Name, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// MQTTAddr is the address the MQTT listener is bound to.
func (n *Node) MQTTAddr() string {
	return net.JoinHostPort(n.opts.MQTT.Host, strconv.Itoa(n.opts.MQTT.Port))
}

// ClusterAddr is the address the route listener is bound to ("" for a
// single node).
func (n *Node) ClusterAddr() string {
	if a := n.s.ClusterAddr(); a != nil {
		return a.String()
	}
	return ""
}

// Revalidate re-identifies every MQTT connection of this node and
// disconnects those that no longer verify or now map to another subject
// (revocation, a role change); it returns how many it ended.
func (n *Node) Revalidate(ctx context.Context) int { return n.auth.revalidate(ctx) }

// Connections is the number of connections the hook accepted and that are
// still open.
func (n *Node) Connections() int {
	n.auth.prune()
	n.auth.mu.Lock()
	defer n.auth.mu.Unlock()
	return len(n.auth.conns)
}

// Drain takes the node out of the cluster without losing what its
// clients sent: from now on the hook refuses every CONNECT ("node
// draining"), the node's MQTT connections are closed one at a time over
// spread (their clients, gateways above all, move to the next broker of
// their list and resend what was not acknowledged; what was acknowledged
// is in the replicated streams), then the engine hands the JetStream
// leaderships it holds to the other nodes (its lame-duck mode) and shuts
// down. It returns when the node has shut down. The platform stops the
// node's ingest partitions and roles before (docs/scale.md "Draining a
// node").
func (n *Node) Drain(ctx context.Context, spread time.Duration) error {
	ids := n.auth.drain()
	n.cfg.Logger.Warn("node draining: refusing new connections, closing the open ones", "node", n.cfg.Name,
		"connections", len(ids), "over", spread)
	step := time.Duration(0)
	if len(ids) > 0 {
		step = spread / time.Duration(len(ids))
	}
	for _, id := range ids {
		// An error is a connection that closed meanwhile: nothing to do.
		_ = n.s.DisconnectClientByID(id)
		n.auth.forget(id)
		select {
		case <-ctx.Done():
			return fmt.Errorf("drain node %s: %w", n.cfg.Name, ctx.Err())
		case <-time.After(step):
		}
	}
	n.stopOnce.Do(n.stopLimits)
	go n.s.LameDuckShutdown()
	select {
	case <-ctx.Done():
		return fmt.Errorf("drain node %s: %w", n.cfg.Name, ctx.Err())
	case <-n.Done():
		return nil
	}
}

// Shutdown stops the node.
func (n *Node) Shutdown() {
	n.stopOnce.Do(n.stopLimits)
	n.s.Shutdown()
	n.s.WaitForShutdown()
	n.auth.stopTimers()
}

// Done is closed when the node has shut down.
func (n *Node) Done() <-chan struct{} {
	ch := make(chan struct{})
	go func() { n.s.WaitForShutdown(); close(ch) }()
	return ch
}

func splitAddr(addr string) (string, int, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 0 || p > 65535 {
		return "", 0, fmt.Errorf("port %q is not a port number", port)
	}
	if p == 0 {
		p = server.RANDOM_PORT
	}
	if host == "" {
		host = "0.0.0.0"
	}
	return host, p, nil
}

// natsLogger forwards the engine's log to slog: notices at debug level
// (the engine is chatty about routine events), warnings and errors as
// such.
type natsLogger struct{ l *slog.Logger }

func (n natsLogger) Noticef(format string, v ...any) { n.l.Debug(fmt.Sprintf(format, v...)) }
func (n natsLogger) Warnf(format string, v ...any)   { n.l.Warn(fmt.Sprintf(format, v...)) }
func (n natsLogger) Fatalf(format string, v ...any)  { n.l.Error(fmt.Sprintf(format, v...)) }
func (n natsLogger) Errorf(format string, v ...any)  { n.l.Error(fmt.Sprintf(format, v...)) }
func (n natsLogger) Debugf(format string, v ...any)  {}
func (n natsLogger) Tracef(format string, v ...any)  {}
