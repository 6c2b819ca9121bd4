package cluster

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/fieldtrust/fieldtrust/internal/broker"
	"github.com/fieldtrust/fieldtrust/internal/tacs"
)

// The cluster tier bounds what one identity makes the engine hold with the
// embedded broker's per-identity limits (broker.Limits, the one place of
// the numbers; docs/scale.md "Limits on the cluster tier"):
//
//   - connections: counted by the hook per node (cluster-wide at most
//     nodes × the limit);
//   - persistent sessions: counted cluster-wide from the engine's own
//     replicated session stream, followed by every node; a CONNECT with a
//     client ID the identity holds no session under is refused when the
//     identity holds the limit;
//   - retained messages and their bytes: the engine does not show the
//     hook the retain flag, so every node follows the replicated retained
//     stream and deletes an identity's newest messages beyond the limits
//     as they arrive.

// Refusals at a limit.
var (
	errTooManyConnections = errors.New("too many connections of this identity on this node")
	errTooManySessions    = errors.New("too many persistent sessions of this identity: end one with a clean CONNECT under its client ID")
	errNodeStarting       = errors.New("node starting: try again")
)

// limitCheckTimeout bounds how long a CONNECT at a limit waits for the
// node's view of the engine's sessions to catch up.
const limitCheckTimeout = 2 * time.Second

// limitsOf picks the limits of a subject: broker.ServiceLimited decides,
// as on the embedded broker.
func (c Config) limitsOf(s tacs.Subject) broker.Limits {
	if broker.ServiceLimited(s) {
		return c.ServiceLimits
	}
	return c.AccountLimits
}

// subjectOfName reads a subject back from its String() (the retained
// messages' source): enough to pick its limits.
func subjectOfName(name string) tacs.Subject {
	if s, ok := strings.CutPrefix(name, "service:"); ok {
		return tacs.Subject{Service: s}
	}
	if p, ok := strings.CutPrefix(name, "site:"); ok {
		return tacs.Subject{Path: p, Site: true}
	}
	return tacs.Subject{Path: name}
}

// admitLimits decides, at CONNECT, whether the identity may have one more
// connection on this node and, for a client ID it holds no session under,
// one more persistent session; if so it records the connection. A
// client ID the identity has open or holds a session under is never
// refused for sessions: a gateway reconnecting is taking its own session.
func (a *authenticator) admitLimits(id uint64, cn *conn) error {
	lim := a.cfg.limitsOf(cn.subject)
	name := cn.subject.String()
	a.mu.Lock()
	others := a.othersOf(name, cn.clientID)
	a.mu.Unlock()
	if len(others) >= lim.Connections {
		// Some may have closed since the engine told us: ask it (as many
		// lookups as the limit, not as the node's connections).
		a.pruneIDs(others)
	}
	if n, known := a.sessionCount(name, cn.clientID); !known && (n >= lim.PersistentSessions || !a.following()) {
		ctx, cancel := context.WithTimeout(context.Background(), limitCheckTimeout)
		err := errNodeStarting
		if f := a.sessFollower.Load(); f != nil {
			err = f.sync(ctx)
		}
		cancel()
		if err != nil {
			return fmt.Errorf("cannot count the identity's sessions: %w", err)
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.othersOf(name, cn.clientID)) >= lim.Connections {
		return fmt.Errorf("%w (limit %d)", errTooManyConnections, lim.Connections)
	}
	if n, known := a.sessionCountLocked(name, cn.clientID); !known && n >= lim.PersistentSessions {
		return fmt.Errorf("%w (limit %d, cluster-wide)", errTooManySessions, lim.PersistentSessions)
	}
	a.addLocked(id, cn)
	return nil
}

// othersOf lists the identity's recorded connections on this node under
// other client IDs (one under the same ID is being replaced by the engine).
// a.mu held.
func (a *authenticator) othersOf(name, clientID string) []uint64 {
	var out []uint64
	for id, c := range a.bySubject[name] {
		if c.clientID != clientID {
			out = append(out, id)
		}
	}
	return out
}

// pruneIDs forgets those of ids the engine has closed.
func (a *authenticator) pruneIDs(ids []uint64) {
	for _, id := range ids {
		cz, err := a.s.Connz(&server.ConnzOptions{CID: id})
		if err == nil && len(cz.Conns) == 0 {
			a.forget(id)
		}
	}
}

func (a *authenticator) sessionCount(name, clientID string) (int, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.sessionCountLocked(name, clientID)
}

// sessionCountLocked is how many persistent sessions the identity holds
// besides clientID, and whether clientID is its own already (a session in
// the engine, or a connection open here): the sessions the engine holds
// (the followed stream, cluster-wide) and this node's connections not
// known there yet (their CONNECT is being processed) unless known to be
// clean. a.mu held.
func (a *authenticator) sessionCountLocked(name, clientID string) (int, bool) {
	held := a.sessions.of(name)
	if _, ok := held[clientID]; ok {
		return len(held) - 1, true
	}
	n := len(held)
	for _, c := range a.bySubject[name] {
		if c.clientID == clientID {
			return n, true
		}
		if _, ok := held[c.clientID]; !ok && !c.clean {
			n++
		}
	}
	return n, false
}

func (a *authenticator) following() bool {
	f := a.sessFollower.Load()
	return f != nil && f.following()
}

// following reports whether the consumer runs and the view caught up
// with the stream once; if not, a CONNECT with a new client ID waits for
// it (sync).
func (f *follower) following() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.cc != nil && f.synced
}

// sessionIndex is the node's view of the engine's persistent sessions, by
// owning identity (clientIDOwner: a client ID names its identity).
type sessionIndex struct {
	mu      sync.Mutex
	byOwner map[string]map[string]struct{}
	// subjects: each persistent client ID's subject in $MQTT_sess, where
	// its record is read back to remove it (revoked.go).
	subjects map[string]string
}

// of returns a copy of the identity's persistent client IDs.
func (x *sessionIndex) of(name string) map[string]struct{} {
	x.mu.Lock()
	defer x.mu.Unlock()
	out := make(map[string]struct{}, len(x.byOwner[name]))
	for id := range x.byOwner[name] {
		out[id] = struct{}{}
	}
	return out
}

// subject is a persistent client ID's subject in $MQTT_sess.
func (x *sessionIndex) subject(clientID string) (string, bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	s, ok := x.subjects[clientID]
	return s, ok
}

// forget drops a session removed from the engine (the engine tells its
// consumers nothing of a deleted record).
func (x *sessionIndex) forget(clientID string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.forgetLocked(clientID)
}

func (x *sessionIndex) forgetLocked(clientID string) {
	owner := clientIDOwner(clientID)
	delete(x.byOwner[owner], clientID)
	if len(x.byOwner[owner]) == 0 {
		delete(x.byOwner, owner)
	}
	delete(x.subjects, clientID)
}

// set records what a saved session (the record data at subject) says; it
// reports the client ID.
func (x *sessionIndex) set(subject string, data []byte) (clientID string, clean bool, ok bool) {
	var ps struct {
		ID    string `json:"id"`
		Clean bool   `json:"clean"`
	}
	if err := json.Unmarshal(data, &ps); err != nil || ps.ID == "" {
		return "", false, false
	}
	owner := clientIDOwner(ps.ID)
	x.mu.Lock()
	defer x.mu.Unlock()
	if ps.Clean {
		x.forgetLocked(ps.ID)
		return ps.ID, true, true
	}
	if x.byOwner[owner] == nil {
		x.byOwner[owner] = map[string]struct{}{}
	}
	x.byOwner[owner][ps.ID] = struct{}{}
	if x.subjects == nil {
		x.subjects = map[string]string{}
	}
	x.subjects[ps.ID] = subject
	return ps.ID, false, true
}

// applySession is the session follower's apply.
func (a *authenticator) applySession(m jetstream.Msg) {
	cid, clean, ok := a.sessions.set(m.Subject(), m.Data())
	if !ok || !clean {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if id, ok := a.byClientID[cid]; ok {
		if c := a.conns[id]; c != nil {
			c.clean = true
		}
	}
}

// retainedIndex is the node's view of the engine's retained messages, by
// the identity that published them (the source header: the username the
// hook registered, i.e. the verified identity).
type retainedIndex struct {
	mu        sync.Mutex
	bySubject map[string]retained
	bySource  map[string]map[string]struct{}
	warned    map[string]time.Time // source → last WARN (one a minute)
	removed   map[string]int       // source → removed since that WARN
}

type retained struct {
	subject string
	source  string
	topic   string
	seq     uint64
	size    int
}

// put records a retained message and returns, newest first, those of its
// source beyond lim.
func (x *retainedIndex) put(subject string, r retained, lim broker.Limits) []retained {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.removeLocked(subject)
	x.bySubject[subject] = r
	if x.bySource[r.source] == nil {
		x.bySource[r.source] = map[string]struct{}{}
	}
	x.bySource[r.source][subject] = struct{}{}
	held := x.bySource[r.source]
	total := 0
	for s := range held {
		total += x.bySubject[s].size
	}
	if len(held) <= lim.Retained && int64(total) <= lim.RetainedBytes {
		return nil
	}
	all := make([]retained, 0, len(held))
	for s := range held {
		all = append(all, x.bySubject[s])
	}
	slices.SortFunc(all, func(p, q retained) int { return cmp.Compare(p.seq, q.seq) })
	var excess []retained
	kept, bytes := 0, int64(0)
	for _, e := range all {
		if kept < lim.Retained && bytes+int64(e.size) <= lim.RetainedBytes {
			kept++
			bytes += int64(e.size)
			continue
		}
		excess = append(excess, e)
		x.removeLocked(e.subject)
	}
	slices.Reverse(excess)
	return excess
}

func (x *retainedIndex) remove(subject string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.removeLocked(subject)
}

func (x *retainedIndex) removeLocked(subject string) {
	old, ok := x.bySubject[subject]
	if !ok {
		return
	}
	delete(x.bySubject, subject)
	delete(x.bySource[old.source], subject)
	if len(x.bySource[old.source]) == 0 {
		delete(x.bySource, old.source)
	}
}

// count is the retained messages of a source (tests).
func (x *retainedIndex) count(source string) int {
	x.mu.Lock()
	defer x.mu.Unlock()
	return len(x.bySource[source])
}

// noteRemoved counts a removal and says whether to log now (at most one
// WARN per identity a minute, with the count since the last).
func (x *retainedIndex) noteRemoved(source string, now time.Time) (int, bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.removed[source]++
	if now.Sub(x.warned[source]) < time.Minute {
		return 0, false
	}
	n := x.removed[source]
	x.warned[source], x.removed[source] = now, 0
	return n, true
}

// applyRetained is the retained follower's apply: it records the message
// and deletes its source's messages beyond the limits from the stream
// (every node does; the first delete wins, the others find nothing).
func (a *authenticator) applyRetained(m jetstream.Msg) {
	subject, ok := strings.CutPrefix(m.Subject(), rmsgsPrefix)
	if !ok {
		return
	}
	h := m.Headers()
	size, err := strconv.Atoi(h.Get(nats.MsgSize))
	if err != nil || size == 0 || strings.HasPrefix(h.Get(rmsgsFlagsHdr), rmsgsDelMarker) {
		a.retained.remove(subject)
		return
	}
	source := h.Get(rmsgsSourceHdr)
	meta, err := m.Metadata()
	if source == "" || err != nil {
		return // not published by an MQTT client of ours (no identity to count it against)
	}
	r := retained{subject: subject, source: source, topic: h.Get(rmsgsTopicHdr), seq: meta.Sequence.Stream, size: size}
	lim := a.cfg.limitsOf(subjectOfName(source))
	for _, e := range a.retained.put(subject, r, lim) {
		a.deleteRetained(e, lim)
	}
}

func (a *authenticator) deleteRetained(e retained, lim broker.Limits) {
	ctx, cancel := context.WithTimeout(context.Background(), limitCheckTimeout)
	defer cancel()
	s, err := a.engine.js.Stream(ctx, rmsgsStream)
	if err == nil {
		err = s.DeleteMsg(ctx, e.seq)
	}
	if err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
		a.cfg.Logger.Warn("cluster limits: retained message beyond the limit not removed", "node", a.cfg.Name,
			"identity", e.source, "topic", e.topic, "err", err)
		return
	}
	if err != nil {
		return // another node removed it
	}
	if n, ok := a.retained.noteRemoved(e.source, a.cfg.now()); ok {
		a.cfg.Logger.Warn("mqtt retained message removed", "stage", "limits", "node", a.cfg.Name,
			"reason", "retained limit", "identity", e.source, "topic", e.topic, "removed", n,
			"limit", lim.Retained, "limit_bytes", lim.RetainedBytes)
	}
}
