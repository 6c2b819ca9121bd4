package broker

import (
	"time"

	"github.com/fieldtrust/fieldtrust/internal/tacs"
)

// Limits bound what one identity can make the broker hold, so that no
// device (or stolen device credential) can exhaust memory, disk or
// connections for everyone else. Every bound is per identity (the subject
// from the verified certificate chain, shared by all its connections and
// sessions) or per session; the rationale for each default is in
// docs/broker.md, "Limits".
//
// What happens at a limit is always a clean, counted refusal that loses no
// other client's data: CONNACK or SUBACK "quota exceeded" (MQTT 3.1.1:
// "server unavailable" / 0x80), PUBACK/PUBREC "quota exceeded" (3.1.1:
// the connection is closed, the only refusal 3.1.1 has for QoS 1/2), or a
// message not queued for one offline session (fieldtrust_broker_dropped_total).
type Limits struct {
	// Connections is the number of live connections of the identity.
	Connections int
	// PersistentSessions is the number of sessions the identity may keep
	// beyond a connection (MQTT 3.1.1 clean session 0, MQTT 5 session
	// expiry > 0), live or offline. Each can queue up to QueuedBytesPerSession.
	PersistentSessions int
	// SubscriptionsPerSession bounds the filters of one session.
	SubscriptionsPerSession int
	// Retained bounds the retained messages the identity published, and
	// RetainedBytes their payload bytes.
	Retained      int
	RetainedBytes int64
	// QueuedBytesPerSession and QueuedBytes bound the bytes (topic +
	// payload + properties) waiting for the identity's sessions: queued
	// for an offline session, or not yet acknowledged by a live one.
	// Counted in bytes, not messages: a thousand 1 MB messages are not
	// a thousand 100 B ones.
	QueuedBytesPerSession int64
	QueuedBytes           int64
	// SessionExpiry caps the session expiry a client may ask for (and is
	// what an MQTT 3.1.1 persistent session gets).
	SessionExpiry time.Duration
	// WillDelay caps a will's delay interval; a will is also never held
	// longer than its session.
	WillDelay time.Duration
	// WillPayload bounds a will's payload: a delayed will is held in
	// memory until it is sent.
	WillPayload int
}

// Default limits. Accounts are devices, gateways and customer consumers;
// services are the platform's own clients (ingest, admin tools), whose
// sessions may have to absorb a fleet's backlog while they restart.
var (
	DefaultAccountLimits = Limits{
		Connections:             8,
		PersistentSessions:      4,
		SubscriptionsPerSession: 64,
		Retained:                64,
		RetainedBytes:           1 << 20,
		QueuedBytesPerSession:   8 << 20,
		QueuedBytes:             16 << 20,
		SessionExpiry:           7 * 24 * time.Hour,
		WillDelay:               time.Hour,
		WillPayload:             16 << 10,
	}
	DefaultServiceLimits = Limits{
		Connections:             64,
		PersistentSessions:      64,
		SubscriptionsPerSession: 1024,
		Retained:                4096,
		RetainedBytes:           64 << 20,
		QueuedBytesPerSession:   1 << 30,
		QueuedBytes:             4 << 30,
		SessionExpiry:           7 * 24 * time.Hour,
		WillDelay:               time.Hour,
		WillPayload:             64 << 10,
	}
)

// withDefaults fills zero fields from def.
func (l Limits) withDefaults(def Limits) Limits {
	orDefault(&l.Connections, def.Connections)
	orDefault(&l.PersistentSessions, def.PersistentSessions)
	orDefault(&l.SubscriptionsPerSession, def.SubscriptionsPerSession)
	orDefault(&l.Retained, def.Retained)
	orDefault(&l.RetainedBytes, def.RetainedBytes)
	orDefault(&l.QueuedBytesPerSession, def.QueuedBytesPerSession)
	orDefault(&l.QueuedBytes, def.QueuedBytes)
	orDefault(&l.SessionExpiry, def.SessionExpiry)
	orDefault(&l.WillDelay, def.WillDelay)
	orDefault(&l.WillPayload, def.WillPayload)
	return l
}

func orDefault[T int | int64 | time.Duration](v *T, def T) {
	if *v <= 0 {
		*v = def
	}
}

// Flow-control bounds for live subscribers (see docs/broker.md, "Delivery
// guarantees and flow control").
const (
	// highWater: a publisher whose message takes a live subscriber's
	// backlog (bytes written but not yet sent, QoS 1/2 messages queued
	// behind a full window, and those sent but not yet acknowledged
	// beyond the session's in-flight credit: session.backlog) above this
	// waits until the subscriber is back below lowWater. This is
	// backpressure, for every QoS: the subscriber's slowness reaches the
	// publisher's socket, and nothing is dropped.
	highWater = 512 << 10
	lowWater  = highWater / 2
	// maxInflightCredit bounds session.inflightCredit.
	maxInflightCredit = 8 << 20
	// stallAfter bounds one publisher's wait for one subscriber. A
	// subscriber that does not drain for this long is marked stalled:
	// publishers stop waiting for it (one stuck client must not halt
	// every publisher) until it drains below lowWater; meanwhile its
	// QoS 1/2 messages are queued up to its limits and QoS 0 messages
	// beyond hardWater of unsent bytes are dropped and counted.
	stallAfter = 5 * time.Second
	hardWater  = 4 * highWater
	// defaultWindow is how many QoS 1/2 messages a client may have
	// unacknowledged when it states no Receive Maximum (MQTT 3.1.1).
	defaultWindow = 512
	// receiveMaximum is what the broker accepts unacknowledged from a
	// client (advertised to MQTT 5 clients, whose excess is a protocol
	// violation); maxInboundBytes bounds the bytes of such publishes held
	// while their acknowledgement waits for the disk. Beyond either the
	// broker stops reading from the client until acknowledgements catch up.
	receiveMaximum  = 1024
	maxInboundBytes = 4 << 20
	// topicAliasMaximum is how many topic aliases a client may define.
	topicAliasMaximum = 64
	// writeTimeout bounds one write to a client's socket; a client that
	// does not read for that long is disconnected.
	writeTimeout = 30 * time.Second
)

// limitsFor picks the limits of a subject (ServiceLimited).
func (b *Broker) limitsFor(subj tacs.Subject) *Limits {
	if ServiceLimited(subj) {
		return &b.serviceLimits
	}
	return &b.accountLimits
}

// ServiceLimited reports whether the service limits apply to a subject
// rather than the accounts': services, and customer sites, which forward
// for all the gateways of their account (their retained status messages,
// their queues) rather than for one device. The cluster tier applies the
// same choice (internal/cluster).
func ServiceLimited(subj tacs.Subject) bool { return subj.IsService() || subj.Site }
