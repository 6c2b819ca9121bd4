package broker

import (
	"context"
	"crypto/tls"
	"errors"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/tacs"
)

// subscriptions is the tree of every session's subscription filters, one
// level per node. Shared subscriptions ($share/GROUP/FILTER) sit at their
// filter's node, by group.
type subscriptions struct {
	mu   sync.RWMutex
	root subNode
}

type subNode struct {
	children map[string]*subNode
	subs     map[*session]*subscription
	shared   map[string]map[*session]*subscription // group → members
}

func newSubscriptions() *subscriptions { return &subscriptions{} }

func (t *subscriptions) add(s *session, sub *subscription) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := &t.root
	for _, l := range strings.Split(sub.topic, "/") {
		if n.children == nil {
			n.children = map[string]*subNode{}
		}
		next := n.children[l]
		if next == nil {
			next = &subNode{}
			n.children[l] = next
		}
		n = next
	}
	if sub.group == "" {
		if n.subs == nil {
			n.subs = map[*session]*subscription{}
		}
		n.subs[s] = sub
		return
	}
	if n.shared == nil {
		n.shared = map[string]map[*session]*subscription{}
	}
	g := n.shared[sub.group]
	if g == nil {
		g = map[*session]*subscription{}
		n.shared[sub.group] = g
	}
	g[s] = sub
}

func (t *subscriptions) remove(s *session, sub *subscription) {
	t.mu.Lock()
	defer t.mu.Unlock()
	levels := strings.Split(sub.topic, "/")
	path := make([]*subNode, 0, len(levels)+1)
	n := &t.root
	path = append(path, n)
	for _, l := range levels {
		n = n.children[l]
		if n == nil {
			return
		}
		path = append(path, n)
	}
	if sub.group == "" {
		if n.subs[s] == sub {
			delete(n.subs, s)
		}
	} else if g := n.shared[sub.group]; g != nil && g[s] == sub {
		delete(g, s)
		if len(g) == 0 {
			delete(n.shared, sub.group)
		}
	}
	// Prune empty nodes so unique filters do not accumulate forever.
	for i := len(path) - 1; i > 0; i-- {
		p := path[i]
		if len(p.children) > 0 || len(p.subs) > 0 || len(p.shared) > 0 {
			break
		}
		delete(path[i-1].children, levels[i-1])
	}
}

// target is one session a message goes to, with the merged options of
// every subscription of that session that matched.
type target struct {
	s                 *session
	qos               byte
	retainAsPublished bool
	subIDs            []uint32
}

// match appends to out the sessions topic goes to. Overlapping
// subscriptions of one session give one delivery at the highest QoS with
// every subscription identifier (MQTT 5 §3.3.4); No Local subscriptions
// skip the publisher's own session; each shared group gives one member.
func (t *subscriptions) match(out []target, topic, origin string) []target {
	add := func(s *session, sub *subscription) {
		if sub.noLocal && s.key == origin {
			return
		}
		for i := range out {
			if out[i].s == s {
				out[i].qos = max(out[i].qos, sub.qos)
				out[i].retainAsPublished = out[i].retainAsPublished || sub.retainAsPublished
				if sub.id != 0 {
					out[i].subIDs = append(out[i].subIDs, sub.id)
				}
				return
			}
		}
		tg := target{s: s, qos: sub.qos, retainAsPublished: sub.retainAsPublished}
		if sub.id != 0 {
			tg.subIDs = []uint32{sub.id}
		}
		out = append(out, tg)
	}
	visit := func(n *subNode) {
		for s, sub := range n.subs {
			add(s, sub)
		}
		for _, members := range n.shared {
			if s, sub := pickShared(members); s != nil {
				add(s, sub)
			}
		}
	}
	dollar := strings.HasPrefix(topic, "$")
	t.mu.RLock()
	walkSubs(&t.root, topic, true, dollar, visit)
	t.mu.RUnlock()
	return out
}

// walkSubs visits every node whose filter matches the rest of the topic.
// Filters starting with a wildcard do not match $-topics (MQTT 5 §4.7.2).
func walkSubs(n *subNode, rest string, first, dollar bool, visit func(*subNode)) {
	if n.children == nil {
		return
	}
	wild := !(first && dollar)
	if wild {
		if h := n.children["#"]; h != nil {
			visit(h) // "a/#" matches "a/b/c" and, below, "a" itself
		}
	}
	level, tail, more := strings.Cut(rest, "/")
	if c := n.children[level]; c != nil {
		if more {
			walkSubs(c, tail, false, dollar, visit)
		} else {
			visit(c)
			if h := c.children["#"]; h != nil {
				visit(h)
			}
		}
	}
	if wild {
		if c := n.children["+"]; c != nil {
			if more {
				walkSubs(c, tail, false, dollar, visit)
			} else {
				visit(c)
				if h := c.children["#"]; h != nil {
					visit(h)
				}
			}
		}
	}
}

// pickShared chooses the member of a shared group a message goes to: the
// live member with the smallest backlog, an offline (persistent) one only
// if no member is live.
func pickShared(members map[*session]*subscription) (*session, *subscription) {
	var best *session
	var bestSub *subscription
	var bestLoad int64
	for s, sub := range members {
		load := s.load.Load()
		if !s.online.Load() {
			load += 1 << 50
		}
		if best == nil || load < bestLoad {
			best, bestSub, bestLoad = s, sub, load
		}
	}
	return best, bestSub
}

// route delivers m to every matching session. It reports whether a
// persistent session queued it (the publisher's acknowledgement then waits
// for the journal). A live subscriber above highWater makes the publisher
// wait here (backpressure), except the publisher's own session.
func (b *Broker) route(ctx context.Context, m *message, origin *session) (persisted bool) {
	tp := targetPool.Get().(*[]target)
	targets := b.subs.match((*tp)[:0], m.topic, m.origin)
	defer func() {
		clear(targets) // no session or subscription identifiers kept alive
		if cap(targets) <= maxPooledTargets {
			*tp = targets[:0]
			targetPool.Put(tp)
		}
	}()
	var waits []waiter
	for _, t := range targets {
		if !b.mayRead(t.s, m.topic) {
			continue
		}
		p, wait := t.s.enqueue(m, min(m.qos, t.qos), m.retain && t.retainAsPublished, t.subIDs)
		persisted = persisted || p
		if wait != nil && t.s != origin {
			waits = append(waits, waiter{t.s, wait})
		}
	}
	if len(waits) > 0 {
		b.backpressure(ctx, waits)
	}
	return persisted
}

// waiter is a session a publisher waits for, and the channel closed when
// it has drained.
type waiter struct {
	s  *session
	ch chan struct{}
}

// targetPool recycles route's target lists: a fresh list grew three times
// for four subscribers, on every publish.
var targetPool = sync.Pool{New: func() any { t := make([]target, 0, 16); return &t }}

// maxPooledTargets bounds what a large fan-out leaves in the pool.
const maxPooledTargets = 1024

// backpressure waits until every session of waits has drained, or until
// stallAfter has passed: then those still above their bound are marked
// stalled. One bound for the whole publish, not one per session: k stuck
// subscribers of a topic (k connections of one customer) held each of its
// publishers k × stallAfter, the platform's CRL publication included
// (TestOneStallBoundPerPublish).
func (b *Broker) backpressure(ctx context.Context, waits []waiter) {
	b.metrics.backpressure.WithLabelValues().Add(float64(len(waits)))
	b.waitingPublish.Add(1)
	defer b.waitingPublish.Add(-1)
	expired := b.stallTimer()
	for i, w := range waits {
		select {
		case <-w.ch:
		case <-expired:
			for _, r := range waits[i:] {
				select {
				case <-r.ch: // drained meanwhile
				default:
					r.s.stall()
				}
			}
			return
		case <-ctx.Done():
			return
		case <-b.timersCtx.Done():
			return
		}
	}
}

// stallTimer returns the channel a held-back publisher's wait ends on.
func (b *Broker) stallTimer() <-chan time.Time {
	if b.cfg.StallTimer != nil {
		return b.cfg.StallTimer()
	}
	return time.After(stallAfter)
}

// mayRead is the delivery check: every message written to a session,
// live, queued or retained, is checked against the subscriber's current
// rights, whatever the matcher decided at subscribe time.
//
// The decision depends only on the subject (fixed for a session), the
// topic and the grants, so the topics last allowed are remembered per
// session until the grants change (setGrants).
func (b *Broker) mayRead(s *session, topic string) bool {
	gen := b.grantsGen.Load()
	s.limMu.Lock()
	if s.readGen != gen {
		clear(s.readOK)
		s.readBytes, s.readGen = 0, gen
	}
	_, ok := s.readOK[topic]
	s.limMu.Unlock()
	if ok {
		return true
	}
	d := tacs.Authorize(b.grants, s.subject, tacs.Subscribe, topic)
	if d.Allowed {
		s.limMu.Lock()
		if s.readGen == gen {
			if s.readOK == nil {
				s.readOK = map[string]struct{}{}
			} else if len(s.readOK) >= readCacheTopics || s.readBytes+len(topic) > readCacheBytes {
				clear(s.readOK)
				s.readBytes = 0
			}
			s.readOK[topic] = struct{}{}
			s.readBytes += len(topic)
		}
		s.limMu.Unlock()
		return true
	}
	b.metrics.refusals.WithLabelValues("delivery", string(d.Reason)).Inc()
	s.limMu.Lock()
	n, ok := s.drops.allow(time.Now())
	s.limMu.Unlock()
	if ok {
		b.log.Warn("mqtt refused", "stage", "delivery", "reason", string(d.Reason), "identity", s.subject.String(),
			"client", s.clientID, "topic", logTopic(topic), "suppressed_since_last_log", n)
	}
	return false
}

// mayPublish is the publish check of c's subject for topic. The decision
// depends only on the subject (fixed for a connection), the topic and the
// grants, so the topic last allowed is remembered until the grants change:
// a device publishes to one or a few topics, and a full decision on every
// publish was 3 % of the broker's CPU (docs/benchmarks.md). The caller is
// c's reader.
func (c *conn) mayPublish(topic string) tacs.Decision {
	gen := c.b.grantsGen.Load()
	if c.pubOK.Allowed && c.pubGen == gen && c.pubTopic == topic {
		return c.pubOK
	}
	d := tacs.Authorize(c.b.grants, c.subject, tacs.Publish, topic)
	if d.Allowed {
		c.pubOK, c.pubTopic, c.pubGen = d, topic, gen
	}
	return d
}

// sendRetained delivers the retained messages matching a new subscription
// (RETAIN set, QoS the lower of the two), without backpressure: this runs
// on the subscriber's own connection.
func (b *Broker) sendRetained(s *session, sub *subscription) {
	var ids []uint32
	if sub.id != 0 {
		ids = []uint32{sub.id}
	}
	now := time.Now()
	for _, rm := range b.retained.match(sub.topic) {
		if rm.msg.expired(now) || !b.mayRead(s, rm.msg.topic) {
			continue
		}
		s.enqueue(rm.msg, min(rm.msg.qos, sub.qos), true, ids)
	}
}

// retainedMsg is a retained message and who retained it.
type retainedMsg struct {
	msg   *message
	owner string               // identity key of the publisher, "" for the platform
	cs    *tls.ConnectionState // the publisher's connection, to identify it again; nil for the platform
}

// retainedStore holds retained messages by topic, in a tree for filter
// matching, and what each identity retains (Limits.Retained*).
type retainedStore struct {
	mu     sync.RWMutex
	root   retNode
	count  int
	owners map[string]*retainUsage
}

type retNode struct {
	children map[string]*retNode
	rm       *retainedMsg
}

type retainUsage struct {
	count int
	bytes int64
}

func newRetainedStore() *retainedStore { return &retainedStore{owners: map[string]*retainUsage{}} }

var errRetainedQuota = errors.New("retained quota exceeded")

// check reports whether id may retain m (an empty payload, which deletes,
// always may).
func (r *retainedStore) check(id *identity, m *message) error {
	if len(m.payload) == 0 {
		return nil
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	u := r.owners[id.key]
	var count int
	var bytes int64
	if u != nil {
		count, bytes = u.count, u.bytes
	}
	if old := r.lookup(m.topic); old != nil && old.owner == id.key {
		count--
		bytes -= int64(old.msg.size)
	}
	if count+1 > id.limits.Retained || bytes+int64(m.size) > id.limits.RetainedBytes {
		return errRetainedQuota
	}
	return nil
}

func (r *retainedStore) lookup(topic string) *retainedMsg {
	n := &r.root
	for _, l := range strings.Split(topic, "/") {
		n = n.children[l]
		if n == nil {
			return nil
		}
	}
	return n.rm
}

// set retains m for c's identity (c nil: the platform) or, for an empty
// payload, deletes the topic's retained message. It reports whether
// anything changed.
func (r *retainedStore) set(m *message, c *conn) bool {
	if c == nil {
		return r.setFor(m, "", nil)
	}
	cs := c.tlsState()
	return r.setFor(m, c.id.key, &cs)
}

func (r *retainedStore) setFor(m *message, owner string, cs *tls.ConnectionState) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(m.payload) == 0 {
		return r.removeLocked(m.topic, nil)
	}
	n := &r.root
	for _, l := range strings.Split(m.topic, "/") {
		next := n.children[l]
		if next == nil {
			if n.children == nil {
				n.children = map[string]*retNode{}
			}
			next = &retNode{}
			n.children[l] = next
		}
		n = next
	}
	if old := n.rm; old != nil {
		r.account(old.owner, -1, -int64(old.msg.size))
		r.count--
	}
	n.rm = &retainedMsg{msg: m, owner: owner, cs: cs}
	r.account(owner, 1, int64(m.size))
	r.count++
	return true
}

// deleteIf deletes the topic's retained message if it is still rm (a
// newer one published meanwhile stays).
func (r *retainedStore) deleteIf(rm *retainedMsg) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.removeLocked(rm.msg.topic, rm)
}

// removeLocked deletes topic's retained message (only if it is only, when
// set) and prunes empty nodes. The caller holds r.mu.
func (r *retainedStore) removeLocked(topic string, only *retainedMsg) bool {
	levels := strings.Split(topic, "/")
	path := make([]*retNode, 0, len(levels)+1)
	n := &r.root
	path = append(path, n)
	for _, l := range levels {
		if n = n.children[l]; n == nil {
			return false
		}
		path = append(path, n)
	}
	old := n.rm
	if old == nil || (only != nil && old != only) {
		return false
	}
	r.account(old.owner, -1, -int64(old.msg.size))
	r.count--
	n.rm = nil
	for i := len(path) - 1; i > 0; i-- {
		p := path[i]
		if len(p.children) > 0 || p.rm != nil {
			break
		}
		delete(path[i-1].children, levels[i-1])
	}
	return true
}

func (r *retainedStore) account(owner string, dc int, db int64) {
	u := r.owners[owner]
	if u == nil {
		u = &retainUsage{}
		r.owners[owner] = u
	}
	u.count += dc
	u.bytes += db
	if u.count <= 0 {
		delete(r.owners, owner)
	}
}

// match returns the retained messages a filter matches, by topic.
func (r *retainedStore) match(filter string) []*retainedMsg {
	var out []*retainedMsg
	r.mu.RLock()
	walkRetained(&r.root, filter, true, &out)
	r.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i].msg.topic < out[j].msg.topic })
	return out
}

func walkRetained(n *retNode, rest string, first bool, out *[]*retainedMsg) {
	level, tail, more := strings.Cut(rest, "/")
	switch level {
	case "#":
		if !first {
			collectRetained(n, out, false) // "a/#" includes "a"
		} else {
			collectRetained(n, out, true)
		}
		return
	case "+":
		for name, c := range n.children {
			if first && strings.HasPrefix(name, "$") {
				continue
			}
			if more {
				walkRetained(c, tail, false, out)
			} else if c.rm != nil {
				*out = append(*out, c.rm)
			}
		}
		return
	}
	c := n.children[level]
	if c == nil {
		return
	}
	if more {
		walkRetained(c, tail, false, out)
		return
	}
	if c.rm != nil {
		*out = append(*out, c.rm)
	}
}

// collectRetained adds n's message and every descendant's; at the top
// level, $-topics are skipped.
func collectRetained(n *retNode, out *[]*retainedMsg, top bool) {
	if n.rm != nil && !top {
		*out = append(*out, n.rm)
	}
	for name, c := range n.children {
		if top && strings.HasPrefix(name, "$") {
			continue
		}
		collectRetained(c, out, false)
	}
}

// all returns every retained message (for persistence and revalidation).
func (r *retainedStore) all() []*retainedMsg {
	var out []*retainedMsg
	r.mu.RLock()
	collectRetained(&r.root, &out, false)
	r.mu.RUnlock()
	return out
}
