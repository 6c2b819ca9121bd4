package broker

import (
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/broker/packet"
	"github.com/fieldtrust/fieldtrust/internal/tacs"
)

// sessionSep separates the identity namespace from the client's own ID in
// a session key: "ms-acc-1/acc-1/dev-1|gw-1". Subject strings never
// contain it, so the identity prefix is unambiguous, and two identities
// can never share (take over, resume, or kick) a session.
const sessionSep = "|"

// identity is what the broker accounts per subject, across all the
// subject's connections and sessions (see Limits).
type identity struct {
	key     string
	subject tacs.Subject
	limits  *Limits

	conns      int // live connections; guarded by Broker.mu
	persistent int // persistent sessions, live or offline; guarded by Broker.mu
	refs       int // connections + sessions holding this record; guarded by Broker.mu

	queued atomic.Int64 // bytes queued or unacknowledged for its sessions
}

// identityFor returns the accounting record of subj, creating it. The
// caller holds b.mu and takes a reference.
func (b *Broker) identityFor(subj tacs.Subject) *identity {
	key := subj.String()
	id := b.identities[key]
	if id == nil {
		id = &identity{key: key, subject: subj, limits: b.limitsFor(subj)}
		b.identities[key] = id
	}
	id.refs++
	return id
}

// releaseIdentity drops a reference; the caller holds b.mu.
func (b *Broker) releaseIdentity(id *identity) {
	if id.refs--; id.refs <= 0 {
		delete(b.identities, id.key)
	}
}

// message is one accepted publish, shared (read-only) by every delivery.
type message struct {
	topic   string
	payload []byte
	qos     byte
	retain  bool
	props   packet.Properties // as published, without topic alias and subscription identifiers
	expires time.Time         // zero: never (MQTT 5 message expiry)
	origin  string            // session key of the publisher ("" for the platform), for No Local
	created time.Time
	size    int // bytes accounted: topic, payload and properties

	mid  uint64 // storage id while persistent sessions hold it; guarded by store.pmu
	refs int    // stored deliveries referring to it; guarded by store.pmu

	acked *ackTracker // a QoS 1 publish's persistent deliveries not yet acknowledged; nil if its PUBACK waits for the journal only
	ack   ackTracker  // what acked points to (trackAcks)
}

func newMessage(topic string, payload []byte, qos byte, retain bool, props packet.Properties, origin string, now time.Time) *message {
	props.Clear(packet.PropTopicAlias)
	props.Clear(packet.PropSubscriptionID)
	m := &message{topic: topic, payload: payload, qos: qos, retain: retain, props: props, origin: origin, created: now}
	if props.Has(packet.PropMessageExpiry) {
		m.expires = now.Add(time.Duration(props.MessageExpiry) * time.Second)
	}
	m.size = len(topic) + len(payload) + props.Size()
	return m
}

func (m *message) expired(now time.Time) bool { return !m.expires.IsZero() && !now.Before(m.expires) }

// Delivery states of a QoS 1/2 message for one session.
const (
	stateQueued   = iota // not sent yet (window full, or offline)
	stateSent            // PUBLISH sent, awaiting PUBACK / PUBREC
	stateReleased        // QoS 2: PUBREL sent, awaiting PUBCOMP
)

// delivery is one message on its way to one session at QoS 1 or 2.
type delivery struct {
	msg    *message
	qos    byte
	retain bool     // the RETAIN flag to send
	subIDs []uint32 // MQTT 5 subscription identifiers to send
	pid    uint16   // packet identifier once sent
	state  uint8
	seq    uint64 // order of arrival; storage key of persistent sessions
	stored bool   // recorded in the store; guarded by store.pmu

	tracked bool // counted in msg.acked until forgotten; guarded by the session's mu
}

// deliveryQueue is a FIFO of deliveries not yet sent.
type deliveryQueue struct {
	items []*delivery
	head  int
	bytes int64 // of the messages in it
}

func (q *deliveryQueue) len() int { return len(q.items) - q.head }

func (q *deliveryQueue) push(d *delivery) {
	q.items = append(q.items, d)
	q.bytes += int64(d.msg.size)
}

func (q *deliveryQueue) pop() *delivery {
	d := q.items[q.head]
	q.items[q.head] = nil
	q.bytes -= int64(d.msg.size)
	q.head++
	if q.head == len(q.items) {
		q.items, q.head = q.items[:0], 0
	} else if q.head > 1024 && q.head > len(q.items)/2 {
		q.items = append(q.items[:0], q.items[q.head:]...)
		q.head = 0
	}
	return d
}

func (q *deliveryQueue) all() []*delivery { return q.items[q.head:] }

func (q *deliveryQueue) reset() { q.items, q.head, q.bytes = nil, 0, 0 }

// subscription is one granted filter of one session.
type subscription struct {
	filter                     string // as subscribed, including a $share/GROUP/ prefix
	topic                      string // the filter proper, without the share prefix
	group                      string // share group, "" for an ordinary subscription
	qos                        byte
	noLocal, retainAsPublished bool
	retainHandling             byte
	id                         uint32 // MQTT 5 subscription identifier, 0 if none
}

// session is an MQTT session: what survives a connection (for a
// persistent session) and what one connection works with.
type session struct {
	b        *Broker
	key      string
	clientID string // as the client sent it (or the one assigned)
	subject  tacs.Subject
	id       *identity

	mu             sync.Mutex
	conn           *conn // the live connection, nil while offline; guarded by mu
	version        byte
	persistent     bool          // outlives its connection
	expiry         time.Duration // session expiry interval once offline
	disconnectedAt time.Time
	subs           map[string]*subscription
	inflight       map[uint16]*delivery // sent and not yet acknowledged
	queue          deliveryQueue        // not yet sent
	nextPID        uint16
	nextSeq        uint64
	inQoS2         map[uint16]struct{} // inbound QoS 2 packet ids awaiting PUBREL
	will           *pendingWill        // will of the last connection, if pending
	willTimer      *time.Timer
	expiryTimer    *time.Timer
	ended          bool
	stalled        bool
	stalledSince   time.Time
	drained        chan struct{} // closed when the backlog falls below lowWater; nil if nobody waits
	relief         atomic.Bool   // drained != nil || stalled: writers must call relieve
	online         atomic.Bool   // conn != nil, readable without mu (shared-group choice)
	load           atomic.Int64  // bytes of inflight + queue, also counted in id.queued; changed under mu, read without it (shared-group choice)
	limMu          sync.Mutex    // guards drops and the read cache; taken with or without mu
	drops          rateLimit
	readOK         map[string]struct{} // topics mayRead allowed under grants generation readGen; nil until one is
	readBytes      int                 // of the topics in readOK
	readGen        uint64
}

// A session remembers at most readCacheTopics allowed topics of at most
// readCacheBytes in all (see mayRead), then starts afresh. A fixed eight
// missed on every delivery to a subscriber of more topics than that — an
// account's or the ingest's, of each of its devices' — and each miss was a
// full TACS decision (docs/benchmarks.md).
const (
	readCacheTopics = 1024
	readCacheBytes  = 64 << 10
)

func newSession(b *Broker, key, clientID string, subj tacs.Subject, id *identity) *session {
	// Maps are made on first use: most sessions of a fleet have one
	// subscription and never an inbound QoS 2 flow.
	return &session{b: b, key: key, clientID: clientID, subject: subj, id: id}
}

// window is how many QoS 1/2 messages may be unacknowledged on the live
// connection. The caller holds s.mu.
func (s *session) window() int {
	if s.conn == nil {
		return 0
	}
	return s.conn.sendWindow
}

// backlog is what the session's publishers wait for (highWater): the
// bytes of its messages not yet sent because its window is full, of those
// sent and not yet acknowledged beyond its in-flight credit, and its
// connection's unwritten output. Up to the credit, messages sent within
// the window are not counted: the client said it takes that many
// (Receive Maximum, or the 3.1.1 default) and may acknowledge them in
// batches, as ingest does once a batch is stored. The credit is in bytes
// because the window is in messages: 512 of 1 MiB would otherwise fill
// the session's byte limit before any publisher waited, and the limit
// drops what is beyond it. The caller holds s.mu.
func (s *session) backlog() int64 {
	n := s.queue.bytes
	if over := s.load.Load() - n - s.inflightCredit(); over > 0 {
		n += over
	}
	if s.conn != nil {
		n += int64(s.conn.out.pending())
	}
	return n
}

// inflightCredit is how many bytes sent and not yet acknowledged the
// session's backlog leaves out: an eighth of its byte limit, at most
// maxInflightCredit (an account 1 MiB, a service 8 MiB: ingest's stored
// batch of 256 sealed snapshots is about 3 MB), and at most a live
// session's share of what the identity has left of QueuedBytes (split
// over as many connections as it may have). The credit is per session,
// that limit per identity (an account's 16 MiB is two sessions' worth):
// without the share, the credits of an account's live sessions could
// spend its room, and the limit drop what their publishers were
// acknowledged, before any publisher waited (TestCreditWithinIdentityLimit).
// With it, an account's publishers are held back (equally loaded live
// sessions) with half the room left that they were before the credit.
func (s *session) inflightCredit() int64 {
	lim := s.id.limits
	share := (lim.QueuedBytes - s.id.queued.Load()) / int64(max(1, lim.Connections))
	return max(0, min(maxInflightCredit, lim.QueuedBytesPerSession/8, share))
}

// enqueue hands one message to the session at the given QoS. It reports
// whether a persistent-storage write was queued for it (the publisher's
// acknowledgement must then wait for the journal) and, if the live
// subscriber's backlog is above highWater, a channel the publisher should
// wait on (backpressure).
func (s *session) enqueue(m *message, qos byte, retain bool, subIDs []uint32) (persisted bool, wait chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended {
		return false, nil
	}
	if qos == 0 {
		if s.conn == nil {
			return false, nil // MQTT allows not queueing QoS 0 for offline sessions
		}
		if s.stalled && s.conn.out.pending() > hardWater {
			s.dropped(m, "write_queue_full")
			return false, nil
		}
		s.conn.writePublish(&delivery{msg: m, qos: 0, retain: retain, subIDs: subIDs}, false)
		return false, s.pressure()
	}
	lim := s.id.limits
	size := int64(m.size)
	if s.load.Load()+size > lim.QueuedBytesPerSession || s.id.queued.Load()+size > lim.QueuedBytes {
		s.dropped(m, "queue_full")
		return false, nil
	}
	d := &delivery{msg: m, qos: qos, retain: retain, subIDs: subIDs, seq: s.nextSeq}
	s.nextSeq++
	s.load.Add(size)
	s.id.queued.Add(size)
	if s.persistent {
		persisted = true
		if m.acked != nil {
			m.acked.add()
			d.tracked = true
		}
	}
	s.queue.push(d)
	s.fill()
	// A delivery fill sent is recorded (as sent) already: one store write
	// instead of a queued one it replaces at once. One still queued — still
	// the queue's last, as fill takes from the front — is recorded here.
	if s.persistent && !d.stored && s.queue.len() > 0 && s.queue.items[len(s.queue.items)-1] == d {
		s.b.store.putDelivery(s, d)
	}
	return persisted, s.pressure()
}

// pressure returns a channel to wait on when a live, not stalled session
// is above highWater. The caller holds s.mu.
func (s *session) pressure() chan struct{} {
	if s.conn == nil || s.stalled || s.backlog() <= highWater {
		return nil
	}
	if s.drained == nil {
		s.drained = make(chan struct{})
		s.relief.Store(true)
	}
	return s.drained
}

// relieve wakes waiting publishers once the backlog is below lowWater,
// and clears a stall. The caller holds s.mu.
func (s *session) relieve() {
	if s.drained == nil && !s.stalled {
		return
	}
	if s.conn != nil && s.backlog() > lowWater {
		return
	}
	if s.drained != nil {
		close(s.drained)
		s.drained = nil
	}
	s.stalled = false
	s.relief.Store(false)
}

// stall marks the session as not draining: publishers stop waiting for it.
func (s *session) stall() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stalled || s.conn == nil {
		return
	}
	s.stalled = true
	s.relief.Store(true)
	s.stalledSince = time.Now()
	if s.drained != nil {
		close(s.drained)
		s.drained = nil
	}
	s.b.log.Warn("mqtt slow subscriber: publishers stop waiting for it", "identity", s.subject.String(),
		"client", s.clientID, "backlog_bytes", s.backlog(), "unacknowledged", len(s.inflight), "waited", stallAfter)
}

// fill sends queued deliveries while the window allows. The caller holds
// s.mu.
func (s *session) fill() {
	c := s.conn
	if c == nil {
		return
	}
	now := time.Now()
	for s.queue.len() > 0 && len(s.inflight) < s.window() {
		d := s.queue.pop()
		if d.msg.expired(now) {
			s.forget(d)
			continue
		}
		d.pid = s.newPID()
		d.state = stateSent
		if s.inflight == nil {
			s.inflight = map[uint16]*delivery{}
		}
		s.inflight[d.pid] = d
		if s.persistent {
			s.b.store.putDelivery(s, d)
		}
		if !c.writePublish(d, false) {
			// Larger than the client accepts: as if delivered (MQTT 5
			// §3.1.2.11.4).
			delete(s.inflight, d.pid)
			s.forget(d)
		}
	}
}

// newPID returns a packet identifier not in use. The caller holds s.mu and
// keeps the window below 65535.
func (s *session) newPID() uint16 {
	for {
		s.nextPID++
		if s.nextPID == 0 {
			s.nextPID = 1
		}
		if _, used := s.inflight[s.nextPID]; !used {
			return s.nextPID
		}
	}
}

// forget releases a finished (or dropped) delivery's accounting and its
// stored copy. The caller holds s.mu.
func (s *session) forget(d *delivery) {
	size := int64(d.msg.size)
	s.load.Add(-size)
	s.id.queued.Add(-size)
	if s.persistent {
		s.b.store.deleteDelivery(s, d)
	}
	if d.tracked {
		d.tracked = false
		d.msg.acked.done()
	}
}

// ack handles PUBACK, PUBREC and PUBCOMP from the client. It returns the
// PUBREL to send for a PUBREC (nil otherwise).
func (s *session) ack(a *packet.Ack) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.inflight[a.PacketID]
	c := s.conn
	switch a.Type {
	case packet.PUBACK:
		if d == nil || d.qos != 1 {
			return // unknown or wrong flow: ignore (MQTT 5 §4.3.2)
		}
		delete(s.inflight, a.PacketID)
		s.forget(d)
	case packet.PUBREC:
		if d == nil || d.qos != 2 || d.state == stateQueued {
			if c != nil {
				c.writeAck(packet.PUBREL, a.PacketID, packet.PacketIDNotFound)
			}
			return
		}
		if a.Reason >= 0x80 { // the receiver refused it: the flow ends here
			delete(s.inflight, a.PacketID)
			s.forget(d)
			break
		}
		d.state = stateReleased
		if s.persistent {
			s.b.store.putDelivery(s, d)
		}
		if c != nil {
			c.writeAck(packet.PUBREL, a.PacketID, packet.Success)
		}
		s.relieve()
		return // still inflight until PUBCOMP
	case packet.PUBCOMP:
		if d == nil || d.state != stateReleased {
			return
		}
		delete(s.inflight, a.PacketID)
		s.forget(d)
	}
	s.fill()
	s.relieve()
}

// dropped counts and logs (rate-limited per session) one message not
// delivered to s. The caller holds s.mu.
func (s *session) dropped(m *message, reason string) {
	s.b.metrics.dropped.WithLabelValues(reason).Inc()
	s.limMu.Lock()
	n, ok := s.drops.allow(time.Now())
	s.limMu.Unlock()
	if ok {
		s.b.log.Warn("mqtt message dropped", "reason", reason, "identity", s.subject.String(),
			"client", s.clientID, "topic", logTopic(m.topic), "bytes", len(m.payload), "queued_bytes", s.load.Load(),
			"offline", s.conn == nil, "suppressed_since_last_log", n)
	}
}

// resume re-checks a resumed session against the subject's current rights
// (grants can change across a restart) and resends what was unacknowledged,
// in the original order, then what was queued. The caller holds s.mu and
// has just attached c.
func (s *session) resume(c *conn) {
	for filter, sub := range s.subs {
		if d := tacs.Authorize(s.b.grants, s.subject, tacs.Subscribe, filter); !d.Allowed {
			c.refuse("session_resume", string(d.Reason), "filter", logTopic(filter))
			s.b.subs.remove(s, sub)
			delete(s.subs, filter)
			if s.persistent {
				s.b.store.deleteSubscription(s, filter)
			}
		}
	}
	pending := make([]*delivery, 0, len(s.inflight))
	for _, d := range s.inflight {
		pending = append(pending, d)
	}
	slices.SortFunc(pending, func(a, b *delivery) int { return cmpUint64(a.seq, b.seq) })
	now := time.Now()
	for _, d := range pending {
		if !s.b.mayRead(s, d.msg.topic) {
			delete(s.inflight, d.pid)
			s.forget(d)
			continue
		}
		if d.state == stateReleased {
			c.writeAck(packet.PUBREL, d.pid, packet.Success)
			continue
		}
		if d.msg.expired(now) {
			delete(s.inflight, d.pid)
			s.forget(d)
			continue
		}
		if !c.writePublish(d, true) {
			delete(s.inflight, d.pid)
			s.forget(d)
		}
	}
	var keep []*delivery
	for _, d := range s.queue.all() {
		if s.b.mayRead(s, d.msg.topic) {
			keep = append(keep, d)
		} else {
			s.forget(d)
		}
	}
	s.queue.reset()
	for _, d := range keep {
		s.queue.push(d)
	}
	s.fill()
}

func cmpUint64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// rateLimit allows one log line per interval and counts what it
// suppressed. The zero value is ready; the caller serializes.
type rateLimit struct {
	last       time.Time
	suppressed int
}

const logEvery = time.Second

func (r *rateLimit) allow(now time.Time) (suppressed int, ok bool) {
	if now.Sub(r.last) < logEvery {
		r.suppressed++
		return 0, false
	}
	n := r.suppressed
	r.last, r.suppressed = now, 0
	return n, true
}

// logTopic bounds a topic (or filter) for a log line: a hostile client
// must not turn one packet into a large log record.
func logTopic(t string) string {
	const max = 256
	if len(t) <= max {
		return t
	}
	return t[:max] + "…(" + itoaInt(len(t)) + " bytes)"
}

func itoaInt(v int) string {
	var b [20]byte
	i := len(b)
	if v == 0 {
		return "0"
	}
	for v > 0 {
		i--
		b[i] = byte('0' + v%10)
		v /= 10
	}
	return string(b[i:])
}
