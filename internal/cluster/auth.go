package cluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/tacs"
)

// authenticator is the engine's authorization hook
// (server.Options.CustomClientAuthentication): it runs for every client
// connection after the TLS handshake and before the engine looks at the
// MQTT session, and hands the engine the subject's permissions.
type authenticator struct {
	cfg Config
	s   *server.Server

	mu         sync.Mutex
	conns      map[uint64]*conn // accepted and maybe still open, by engine client id
	bySubject  map[string]map[uint64]*conn
	byClientID map[string]uint64
	draining   bool // Node.Drain: every CONNECT is refused
	// held: the chain accepted under each client ID, kept while the
	// engine holds a persistent session under it (revoked.go).
	held map[string]*heldChain

	// The limits' views of the engine's state (limits.go), through the
	// node's own engine client.
	engine       engineClient
	sessions     sessionIndex
	sessFollower atomic.Pointer[follower] // nil until the node's engine client runs
	retained     retainedIndex
}

// conn is what revalidation and the limits need of an accepted connection.
type conn struct {
	chain    []*x509.Certificate
	subject  tacs.Subject
	clientID string
	clean    bool // its session is a clean one (seen in the engine's session stream)
	expiry   *time.Timer
}

// admitTimeout bounds Config.Admit: the engine waits for its hook (the
// client's CONNECT, within the engine's auth timeout).
const admitTimeout = 3 * time.Second

// Refusal reasons, logged (WARN "mqtt refused", as the embedded broker).
var (
	errNotMQTT      = errors.New("only MQTT clients may connect")
	errNoCert       = errors.New("no client certificate")
	errBadClientID  = errors.New("client ID must be the identity's name, optionally followed by ':' and a suffix")
	errNoClientInfo = errors.New("connection not found")
	errDraining     = errors.New("node draining: connect to another node of the cluster")
)

// Check implements server.Authentication.
func (a *authenticator) Check(c server.ClientAuthentication) bool {
	if a.engine.isEngineClient(c) {
		c.RegisterUser(&server.User{Username: "fieldtrust-limits", Permissions: enginePermissions()})
		return true
	}
	subj, chain, cid, err := a.check(c)
	if err != nil {
		a.cfg.Logger.Warn("mqtt refused", "stage", "connect", "node", a.cfg.Name, "reason", err.Error(),
			"identity", subj.String(), "remote", remote(c))
		return false
	}
	rights, err := tacs.Rights(a.cfg.Grants, subj)
	if err != nil {
		a.cfg.Logger.Warn("mqtt refused", "stage", "connect", "node", a.cfg.Name, "reason", err.Error(), "remote", remote(c))
		return false
	}
	id := c.GetID()
	cn := &conn{chain: chain, subject: subj, clientID: cid}
	if err := a.admitLimits(id, cn); err != nil {
		a.cfg.Logger.Warn("mqtt refused", "stage", "connect", "node", a.cfg.Name, "reason", err.Error(),
			"identity", subj.String(), "client_id", cid, "remote", remote(c))
		return false
	}
	// The username is the verified identity: the engine records it as the
	// source of the client's retained messages, which the retained limit
	// counts.
	c.RegisterUser(&server.User{Username: subj.String(), Permissions: permissions(rights)})
	// The connection ends when its first certificate expires, as on the
	// embedded broker.
	if exp := firstExpiry(chain); !exp.IsZero() {
		t := time.AfterFunc(exp.Sub(a.cfg.now()), func() {
			a.cfg.Logger.Warn("mqtt session ended", "stage", "revalidate", "reason", "certificate_expired", "identity", subj.String())
			a.s.DisconnectClientByID(id)
		})
		a.mu.Lock()
		cn.expiry = t
		a.mu.Unlock()
	}
	return true
}

// addLocked records an accepted connection. a.mu held.
func (a *authenticator) addLocked(id uint64, cn *conn) {
	a.conns[id] = cn
	name := cn.subject.String()
	if a.bySubject[name] == nil {
		a.bySubject[name] = map[uint64]*conn{}
	}
	a.bySubject[name][id] = cn
	a.byClientID[cn.clientID] = id
	if a.held != nil {
		a.held[cn.clientID] = &heldChain{chain: cn.chain, subject: cn.subject}
	}
}

func (a *authenticator) check(c server.ClientAuthentication) (tacs.Subject, []*x509.Certificate, string, error) {
	if c.Kind() != server.CLIENT {
		return tacs.Subject{}, nil, "", errNotMQTT
	}
	a.mu.Lock()
	draining := a.draining
	a.mu.Unlock()
	if draining {
		return tacs.Subject{}, nil, "", errDraining
	}
	cs := c.GetTLSConnectionState()
	if cs == nil || len(cs.PeerCertificates) == 0 {
		return tacs.Subject{}, nil, "", errNoCert
	}
	subj, err := a.cfg.Identify(cs.PeerCertificates)
	if err != nil {
		return tacs.Subject{}, nil, "", fmt.Errorf("identify: %w", err)
	}
	cid, err := a.mqttClientID(c.GetID())
	if err != nil {
		return subj, nil, "", err
	}
	if !ClientIDAllowed(subj, cid) {
		return subj, nil, "", fmt.Errorf("%w (identity %s, client ID %q)", errBadClientID, subj, cid)
	}
	if a.cfg.Admit != nil {
		ctx, cancel := context.WithTimeout(context.Background(), admitTimeout)
		defer cancel()
		if err := a.cfg.Admit(ctx, subj); err != nil {
			return subj, nil, "", fmt.Errorf("not admitted yet: %w", err)
		}
	}
	return subj, cs.PeerCertificates, cid, nil
}

// ClientIDAllowed is the session-binding rule of the cluster tier: the
// engine keys MQTT sessions by client ID alone, so a client ID must name
// its identity — the subject's name, or the name, ':' and any suffix
// (identity paths and service names cannot contain ':'). Then no identity
// can resume, take over or read another identity's session. The name is
// read back from the client ID by its namespace ("service:NAME",
// "site:PATH", else a path), not matched as a prefix: a master account may
// be named "service" or "site", and its identity must not take the client
// IDs of the platform's services ("service:ingest:p3") or of the
// customer sites.
func ClientIDAllowed(s tacs.Subject, clientID string) bool {
	return clientIDOwner(clientID) == s.String()
}

// clientIDOwner is the identity name a client ID belongs to.
func clientIDOwner(clientID string) string {
	ns := ""
	for _, p := range []string{"service:", "site:"} {
		if strings.HasPrefix(clientID, p) {
			ns, clientID = p, clientID[len(p):]
			break
		}
	}
	name, _, _ := strings.Cut(clientID, ":")
	return ns + name
}

// mqttClientID asks the engine for the MQTT client ID of a connection
// being authorized (the engine parsed CONNECT before calling the hook);
// NATS-protocol connections have none and are refused.
func (a *authenticator) mqttClientID(id uint64) (string, error) {
	cz, err := a.s.Connz(&server.ConnzOptions{CID: id})
	if err != nil {
		return "", fmt.Errorf("look up connection: %w", err)
	}
	if len(cz.Conns) != 1 {
		return "", errNoClientInfo
	}
	if cz.Conns[0].MQTTClient == "" {
		return "", errNotMQTT
	}
	return cz.Conns[0].MQTTClient, nil
}

// verifyRoute admits a route peer only with a service certificate of role
// RoleNode (any transport certificate chains to the same root: a device
// must not join the cluster).
func (a *authenticator) verifyRoute(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return errNoCert
	}
	subj, err := a.cfg.Identify(cs.PeerCertificates)
	if err != nil {
		return fmt.Errorf("route peer: %w", err)
	}
	if !subj.IsService() || subj.Role != RoleNode {
		return fmt.Errorf("route peer %s is not a broker node (role %s)", subj, RoleNode)
	}
	return nil
}

// revalidate re-identifies every accepted connection and disconnects the
// ones that fail or changed subject, then removes the revoked identities'
// persistent sessions from the engine (revoked.go).
func (a *authenticator) revalidate(ctx context.Context) int {
	a.prune()
	a.mu.Lock()
	snapshot := make(map[uint64]*conn, len(a.conns))
	for id, c := range a.conns {
		snapshot[id] = c
	}
	a.mu.Unlock()
	ended := 0
	for id, c := range snapshot {
		if ctx.Err() != nil {
			break
		}
		subj, err := a.cfg.Identify(c.chain)
		reason := "revoked"
		if err == nil && subj != c.subject {
			reason, err = "identity_changed", fmt.Errorf("now %s", subj)
		}
		if err == nil {
			continue
		}
		if a.s.DisconnectClientByID(id) == nil {
			ended++
			a.cfg.Logger.Warn("mqtt session ended", "stage", "revalidate", "node", a.cfg.Name, "reason", reason,
				"identity", c.subject.String(), "err", err)
		}
		a.forget(id)
	}
	a.removeRevokedSessions(ctx)
	return ended
}

// drain makes the hook refuse every CONNECT from now on and returns the
// connections it accepted (maybe closed since).
func (a *authenticator) drain() []uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.draining = true
	ids := make([]uint64, 0, len(a.conns))
	for id := range a.conns {
		ids = append(ids, id)
	}
	return ids
}

// prune forgets connections the engine has closed. It asks the engine
// about each connection it accepted, by id: listing every connection
// would make the engine read the MQTT client ID of connections still in
// their CONNECT, which it writes unlocked (a data race in nats-server's
// Connz, seen under -race in tacsprobe's TestClusterUp).
func (a *authenticator) prune() {
	a.mu.Lock()
	ids := make([]uint64, 0, len(a.conns))
	for id := range a.conns {
		ids = append(ids, id)
	}
	a.mu.Unlock()
	a.pruneIDs(ids)
}

func (a *authenticator) forget(id uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if c, ok := a.conns[id]; ok {
		if c.expiry != nil {
			c.expiry.Stop()
		}
		delete(a.conns, id)
		name := c.subject.String()
		delete(a.bySubject[name], id)
		if len(a.bySubject[name]) == 0 {
			delete(a.bySubject, name)
		}
		if a.byClientID[c.clientID] == id {
			delete(a.byClientID, c.clientID)
			// The chain is kept only while it may be needed to remove a
			// persistent session (revoked.go): held stays as small as
			// the connections and persistent sessions.
			if _, persistent := a.sessions.subject(c.clientID); !persistent {
				delete(a.held, c.clientID)
			}
		}
	}
}

func (a *authenticator) stopTimers() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, c := range a.conns {
		if c.expiry != nil {
			c.expiry.Stop()
		}
	}
}

func firstExpiry(chain []*x509.Certificate) time.Time {
	var t time.Time
	for _, c := range chain {
		if t.IsZero() || c.NotAfter.Before(t) {
			t = c.NotAfter
		}
	}
	return t
}

func remote(c server.ClientAuthentication) string {
	if a := c.RemoteAddress(); a != nil {
		return a.String()
	}
	return ""
}

// Identify builds Config.Identify from the platform's transport verifier
// (chain, revocation of any certificate in it or of its path, namespace,
// key rules; pki.IdentityFromChain) and its mapping of identities to
// subjects (service roles from the store).
func Identify(v *pki.Verifier, subjectOf func(pki.Identity) (tacs.Subject, error)) func([]*x509.Certificate) (tacs.Subject, error) {
	return func(chain []*x509.Certificate) (tacs.Subject, error) {
		if len(chain) == 0 {
			return tacs.Subject{}, errNoCert
		}
		id, _, err := v.Verify(chain[0], chain[1:], time.Time{}, x509.ExtKeyUsageClientAuth)
		if err != nil {
			return tacs.Subject{}, err
		}
		return subjectOf(id)
	}
}
