package cluster

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/tacs"
)

// A revoked identity can never resume its persistent sessions (the hook
// refuses it at CONNECT), but the engine would keep them: each QoS 1
// subscription of an offline session is a durable consumer on $MQTT_msgs
// that keeps every matching message, bounded only by the node's
// JetStream store, whose exhaustion stops QoS 1 for everyone. So when
// revalidation finds an identity revoked, the node removes its persistent
// sessions from the engine as the engine does on a clean CONNECT
// (nats-server mqtt.go, mqttSession.clear): the session's durable
// consumers on $MQTT_msgs, its PUBREL consumer on $MQTT_out, then its
// record in $MQTT_sess (TestClusterRevokedSessionsRemoved).
//
// The decision is the hook's own check, Config.Identify on the chain the
// identity presented: each node remembers the chain of every client ID it
// accepted while the engine holds a persistent session under it. Only an
// error wrapping pki.ErrRevoked removes anything, and only if the
// identity holds no other valid certificate (Config.IdentityCerts, verified with Identify: a
// renewed gateway whose old certificate is revoked keeps its session, and
// its chain on another node may be the old one): an expired certificate
// (the device renews and resumes) or a check that cannot be made keeps
// the session. A node restarted forgets the chains it had: a session last
// used on it before is removed by another node that accepted the identity
// since, or stays (docs/scale.md "Limits on the cluster tier").
const (
	msgsStream = "$MQTT_msgs"
	outStream  = "$MQTT_out"
)

// sessionRemoveTimeout bounds the engine requests that remove one
// session.
const sessionRemoveTimeout = 10 * time.Second

// heldChain is what a node accepted under a client ID.
type heldChain struct {
	chain   []*x509.Certificate
	subject tacs.Subject
	warned  bool // logged once that the chain no longer verifies, not revoked
}

// persistedSession is the part of the engine's session record
// (nats-server mqttPersistedSession) that names what it holds.
type persistedSession struct {
	ID    string `json:"id"`
	Clean bool   `json:"clean"`
	Cons  map[string]*struct {
		Durable string `json:"durable_name"`
	} `json:"cons"`
	PubRel *struct {
		Durable string `json:"durable_name"`
	} `json:"pubrel"`
}

// removeRevokedSessions checks the chains of the client IDs this node
// accepted that have no connection here now and hold a persistent session
// in the engine; it removes the sessions of those revoked. It returns how
// many it removed.
func (a *authenticator) removeRevokedSessions(ctx context.Context) int {
	type cand struct {
		cid string
		h   *heldChain
	}
	var cands []cand
	a.mu.Lock()
	for cid, h := range a.held {
		if _, open := a.byClientID[cid]; open {
			continue
		}
		if _, ok := a.sessions.subject(cid); !ok {
			delete(a.held, cid) // no persistent session (ended, or a clean one)
			continue
		}
		cands = append(cands, cand{cid, h})
	}
	a.mu.Unlock()
	removed := 0
	for _, c := range cands {
		if ctx.Err() != nil {
			break
		}
		_, err := a.cfg.Identify(c.h.chain)
		if err == nil {
			continue
		}
		if !errors.Is(err, pki.ErrRevoked) {
			a.mu.Lock()
			warn := !c.h.warned
			c.h.warned = true
			a.mu.Unlock()
			if warn {
				a.cfg.Logger.Info("mqtt persistent session kept: its identity no longer verifies, but is not revoked",
					"stage", "revalidate", "node", a.cfg.Name, "identity", c.h.subject.String(), "client_id", c.cid, "err", err)
			}
			continue
		}
		if keep, why := a.stillCredentialed(ctx, c.h); keep {
			a.mu.Lock()
			warn := !c.h.warned
			c.h.warned = true
			a.mu.Unlock()
			if warn {
				a.cfg.Logger.Info("mqtt persistent session kept: the chain it was accepted under is revoked, but its identity "+why,
					"stage", "revalidate", "node", a.cfg.Name, "identity", c.h.subject.String(), "client_id", c.cid)
			}
			continue
		}
		subject, ok := a.sessions.subject(c.cid)
		if !ok {
			continue
		}
		dctx, cancel := context.WithTimeout(ctx, sessionRemoveTimeout)
		err = a.deleteSession(dctx, c.cid, subject)
		cancel()
		if err != nil {
			a.cfg.Logger.Warn("mqtt persistent session of a revoked identity not removed; retried at the next revocation",
				"stage", "revalidate", "node", a.cfg.Name, "identity", c.h.subject.String(), "client_id", c.cid, "err", err)
			continue
		}
		a.sessions.forget(c.cid)
		a.mu.Lock()
		delete(a.held, c.cid)
		a.mu.Unlock()
		removed++
		a.cfg.Logger.Warn("mqtt persistent session removed", "stage", "revalidate", "node", a.cfg.Name,
			"reason", "revoked", "identity", c.h.subject.String(), "client_id", c.cid)
	}
	return removed
}

// errSessionNotFound: the engine holds no session record under the
// client ID (ended, or removed by another node).
var errSessionNotFound = errors.New("session record not found")

// sessionRecord reads the engine's current record of a session (subject:
// its subject in $MQTT_sess, as the follower saw it).
func (a *authenticator) sessionRecord(ctx context.Context, clientID, subject string) (persistedSession, uint64, error) {
	s, err := a.engine.js.Stream(ctx, sessStream)
	if err != nil {
		return persistedSession{}, 0, fmt.Errorf("session stream: %w", err)
	}
	m, err := s.GetLastMsgForSubject(ctx, subject)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return persistedSession{}, 0, errSessionNotFound
	}
	if err != nil {
		return persistedSession{}, 0, fmt.Errorf("read session record: %w", err)
	}
	ps, err := parseSessionRecord(m.Data, clientID)
	if err != nil {
		return persistedSession{}, 0, err
	}
	return ps, m.Sequence, nil
}

// parseSessionRecord reads the engine's record of clientID's session:
// errSessionNotFound if it is another client ID's (the subject is a
// hash) or was saved clean since; an error if a consumer name it gives is
// not a single subject token (then nothing is deleted).
func parseSessionRecord(data []byte, clientID string) (persistedSession, error) {
	var ps persistedSession
	if err := json.Unmarshal(data, &ps); err != nil {
		return persistedSession{}, fmt.Errorf("parse session record: %w", err)
	}
	if ps.ID != clientID || ps.Clean {
		return persistedSession{}, errSessionNotFound
	}
	names := make([]string, 0, len(ps.Cons)+1)
	for _, cc := range ps.Cons {
		if cc != nil {
			names = append(names, cc.Durable)
		}
	}
	if ps.PubRel != nil {
		names = append(names, ps.PubRel.Durable)
	}
	for _, n := range names {
		if strings.ContainsAny(n, ".*> \t\r\n") {
			return persistedSession{}, fmt.Errorf("session record of %s: consumer name %q is not a subject token", clientID, n)
		}
	}
	return ps, nil
}

// deleteSession removes a persistent session from the engine as
// mqttSession.clear does: its durable consumers, then its record. Several
// nodes may do it at once: a consumer or record already gone is not an
// error.
func (a *authenticator) deleteSession(ctx context.Context, clientID, subject string) error {
	ps, seq, err := a.sessionRecord(ctx, clientID, subject)
	if errors.Is(err, errSessionNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("session %s: %w", clientID, err)
	}
	del := func(stream, dur string) error {
		if dur == "" {
			return nil
		}
		err := a.engine.js.DeleteConsumer(ctx, stream, dur)
		if err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
			return fmt.Errorf("session %s: delete consumer %s of %s: %w", clientID, dur, stream, err)
		}
		return nil
	}
	for _, cc := range ps.Cons {
		if cc == nil {
			continue
		}
		if err := del(msgsStream, cc.Durable); err != nil {
			return err
		}
	}
	if ps.PubRel != nil {
		if err := del(outStream, ps.PubRel.Durable); err != nil {
			return err
		}
	}
	s, err := a.engine.js.Stream(ctx, sessStream)
	if err == nil {
		err = s.DeleteMsg(ctx, seq)
	}
	if err != nil {
		// The engine's refusal does not say "already deleted" in a form
		// to test: read the record again (another node may have won).
		if _, _, rerr := a.sessionRecord(ctx, clientID, subject); errors.Is(rerr, errSessionNotFound) {
			return nil
		}
		return fmt.Errorf("session %s: delete record %d: %w", clientID, seq, err)
	}
	return nil
}

// stillCredentialed reports whether the identity of a revoked chain may
// still connect — one of its recorded certificates passes the hook's
// check, Identify, as the same identity (renewed) — and why the session is
// kept; a check that cannot be made keeps it (fail closed).
func (a *authenticator) stillCredentialed(ctx context.Context, h *heldChain) (bool, string) {
	if a.cfg.IdentityCerts == nil {
		return true, "cannot be checked for other certificates (no IdentityCerts)"
	}
	if len(h.chain) == 0 {
		return true, "has no chain"
	}
	certs, err := a.cfg.IdentityCerts(ctx, h.chain[0].Subject.CommonName)
	if err != nil {
		a.cfg.Logger.Warn("mqtt persistent session kept: cannot check the identity's certificates", "stage", "revalidate",
			"node", a.cfg.Name, "identity", h.subject.String(), "err", err)
		return true, "cannot be checked"
	}
	for _, c := range certs {
		if subj, err := a.cfg.Identify([]*x509.Certificate{c}); err == nil && subj.String() == h.subject.String() {
			return true, "holds another valid certificate"
		}
	}
	return false, ""
}
