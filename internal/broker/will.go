package broker

import (
	"context"
	"crypto/tls"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/broker/packet"
	"github.com/fieldtrust/fieldtrust/internal/tacs"
)

// pendingWill is a will waiting for its delay (MQTT 5 Will Delay
// Interval) or for its session to end. It keeps the TLS state of the
// connection that set it: the will speaks for that identity, so it is
// identified again — against the current revocation state — before it is
// sent, and whenever revocation changes (Revalidate). A revoked identity
// does not get to speak after its revocation.
type pendingWill struct {
	will    *packet.Will
	subject tacs.Subject
	origin  string // session key, for No Local
	cs      tls.ConnectionState
	due     time.Time
}

// scheduleWill sends c's will now, or holds it for its delay: the
// smaller of the will delay, the session expiry and the identity's
// WillDelay limit. sessionEnds: the session ends with this connection, so
// the will goes now (MQTT 5 §3.1.2.5: the will is sent when the delay
// elapses or the session ends, whichever is first).
func (b *Broker) scheduleWill(s *session, c *conn, w *packet.Will, sessionEnds bool) {
	pw := &pendingWill{will: w, subject: c.subject, origin: s.key, cs: c.tlsState()}
	delay := time.Duration(w.Props.WillDelay) * time.Second
	if c.version != packet.V5 {
		delay = 0
	}
	delay = min(delay, c.id.limits.WillDelay)
	s.mu.Lock()
	delay = min(delay, s.expiry)
	if sessionEnds || delay <= 0 || s.ended {
		s.mu.Unlock()
		b.sendWill(pw)
		return
	}
	pw.due = time.Now().Add(delay)
	s.cancelWill()
	s.will = pw
	s.willTimer = time.AfterFunc(delay, func() {
		s.mu.Lock()
		if s.will != pw {
			s.mu.Unlock()
			return
		}
		s.will, s.willTimer = nil, nil
		if s.persistent {
			b.store.putSession(s)
		}
		s.mu.Unlock()
		b.sendWill(pw)
	})
	s.mu.Unlock()
}

// cancelWill drops a pending will. The caller holds s.mu.
func (s *session) cancelWill() {
	if s.willTimer != nil {
		s.willTimer.Stop()
		s.willTimer = nil
	}
	s.will = nil
}

// takeWill removes and returns a pending will. The caller holds s.mu.
func (s *session) takeWill() *pendingWill {
	w := s.will
	s.cancelWill()
	return w
}

// recheckWill drops the pending will if its identity no longer holds.
func (s *session) recheckWill(ctx context.Context) {
	s.mu.Lock()
	pw := s.will
	s.mu.Unlock()
	if pw == nil {
		return
	}
	if subj, err := s.b.cfg.Identify(pw.cs); err == nil && subj == pw.subject {
		return
	}
	s.mu.Lock()
	if s.will == pw {
		s.cancelWill()
		if s.persistent {
			s.b.store.putSession(s)
		}
	}
	s.mu.Unlock()
	s.b.refuse(ctx, "will", "revoked", pw.subject, "client", clientOf(pw.origin), "topic", logTopic(pw.will.Topic))
}

// sendWill publishes a will after checking, once more, that its identity
// holds and may publish on the topic.
func (b *Broker) sendWill(pw *pendingWill) {
	ctx := context.Background()
	w := pw.will
	if subj, err := b.cfg.Identify(pw.cs); err != nil || subj != pw.subject {
		b.refuse(ctx, "will", "revoked", pw.subject, "client", clientOf(pw.origin), "topic", logTopic(w.Topic), "error", err)
		return
	}
	if d := tacs.Authorize(b.grants, pw.subject, tacs.Publish, w.Topic); !d.Allowed {
		b.refuse(ctx, "will", string(d.Reason), pw.subject, "client", clientOf(pw.origin), "topic", logTopic(w.Topic))
		return
	}
	var props packet.Properties
	for _, id := range []byte{packet.PropPayloadFormat, packet.PropMessageExpiry, packet.PropContentType,
		packet.PropResponseTopic, packet.PropCorrelationData} {
		if w.Props.Has(id) {
			props.Set(id)
		}
	}
	props.PayloadFormat, props.MessageExpiry, props.ContentType = w.Props.PayloadFormat, w.Props.MessageExpiry, w.Props.ContentType
	props.ResponseTopic, props.CorrelationData, props.User = w.Props.ResponseTopic, w.Props.CorrelationData, w.Props.User
	m := newMessage(w.Topic, w.Payload, w.QoS, w.Retain, props, pw.origin, time.Now())
	durable := false
	if w.Retain {
		b.mu.Lock()
		id := b.identityFor(pw.subject)
		b.mu.Unlock()
		err := b.retained.check(id, m)
		if err == nil && b.retained.setFor(m, id.key, &pw.cs) {
			b.store.putRetainedFor(m, id.key, &pw.cs)
			durable = true
		}
		b.mu.Lock()
		b.releaseIdentity(id)
		b.mu.Unlock()
		if err != nil {
			b.refuse(ctx, "will", "retained_quota", pw.subject, "topic", logTopic(w.Topic))
		}
	}
	b.metrics.in[w.QoS].Inc()
	if b.route(ctx, m, nil) {
		durable = true
	}
	if durable && w.QoS > 0 {
		_ = b.store.barrier()
	}
}

// clientOf returns the client ID part of a session key.
func clientOf(key string) string {
	for i := 0; i < len(key); i++ {
		if key[i] == '|' {
			return key[i+1:]
		}
	}
	return key
}
