package broker

import (
	"errors"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/broker/packet"
)

var (
	errConnectionQuota = errors.New("connection_quota")
	errSessionQuota    = errors.New("session_quota")
	errServerFull      = errors.New("server_full")
	errShuttingDown    = errors.New("shutting_down")
)

// attach binds a freshly identified connection to its session: the
// existing one (resumed unless clean start) or a new one. A live
// connection of the same session is taken over. onAttached runs with the
// session locked right after the connection is attached (it writes the
// CONNACK); then the session resends what it owes. On a refusal it returns
// the CONNACK reason code and an error naming the refusal reason.
func (b *Broker) attach(c *conn, persistent bool, expiry time.Duration, clean bool, onAttached func(present bool)) (bool, byte, error) {
	key := c.subject.String() + sessionSep + c.clientID
	b.mu.Lock()
	if b.closing.Load() {
		b.mu.Unlock()
		return false, packet.ServerShuttingDown, errShuttingDown
	}
	if len(b.conns) >= b.cfg.MaxConnections {
		b.mu.Unlock()
		return false, packet.ServerBusy, errServerFull
	}
	id := b.identityFor(c.subject)
	if id.conns >= id.limits.Connections {
		b.releaseIdentity(id)
		b.mu.Unlock()
		return false, packet.QuotaExceeded, errConnectionQuota
	}
	old := b.sessions[key]
	// The key names the identity, not a service's role: a session kept
	// under another role (changed in the store) is not resumed, as if
	// clean, since its subscriptions and delivery checks (s.subject,
	// fixed for a session) hold the old role's rights.
	resumable := old != nil && !clean && old.persistent && old.subject == c.subject
	wasPersistent := old != nil && old.persistent
	if persistent && !wasPersistent && id.persistent >= id.limits.PersistentSessions {
		b.releaseIdentity(id)
		b.mu.Unlock()
		return false, packet.QuotaExceeded, errSessionQuota
	}
	var s *session
	if resumable {
		s = old
		b.releaseIdentity(id) // the session already holds one
		id = s.id
	} else {
		s = newSession(b, key, c.clientID, c.subject, id)
		b.sessions[key] = s
		if old != nil {
			b.endSessionLocked(old, true)
		}
	}
	if persistent && !s.persistent {
		id.persistent++
	} else if !persistent && s.persistent {
		id.persistent--
	}
	id.conns++
	id.refs++ // the connection's own reference
	c.id = id
	b.conns[c] = struct{}{}
	b.mu.Unlock()

	s.mu.Lock()
	prev := s.conn
	if prev != nil {
		prev.takeover.Store(true)
	}
	s.conn = c
	s.online.Store(true)
	s.version = c.version
	s.persistent = persistent
	s.expiry = expiry
	s.stalled = false
	if s.expiryTimer != nil {
		s.expiryTimer.Stop()
		s.expiryTimer = nil
	}
	// A new connection for the session cancels a pending delayed will
	// (MQTT 5 §3.1.2.5).
	s.cancelWill()
	c.sess.Store(s)
	if persistent {
		b.store.putSession(s)
	}
	onAttached(resumable)
	if resumable {
		s.resume(c)
	}
	s.mu.Unlock()
	if prev != nil {
		prev.terminate(packet.SessionTakenOver)
	}
	b.metrics.connects.WithLabelValues().Inc()
	b.metrics.connections.WithLabelValues().Inc()
	if persistent {
		if err := b.store.barrier(); err != nil {
			b.log.Error("broker store write failed; session may not survive a crash", "identity", c.subject.String(), "error", err)
		}
	}
	return resumable, packet.Success, nil
}

// ended handles the end of an attached connection: the session goes
// offline (persistent) or ends, and the will is sent, scheduled or dropped.
func (c *conn) ended(cause error) {
	b := c.b
	b.metrics.connections.WithLabelValues().Dec()
	s := c.sess.Load()
	c.willMu.Lock()
	will := c.will
	c.will = nil
	c.willMu.Unlock()

	s.mu.Lock()
	current := s.conn == c
	if current {
		s.conn = nil
		s.online.Store(false)
		s.disconnectedAt = time.Now()
		if s.drained != nil {
			close(s.drained)
			s.drained = nil
		}
		s.stalled = false
		s.relief.Store(false)
		// Sent-but-unacknowledged QoS 1/2 messages stay inflight: they are
		// resent with their packet identifiers on resumption.
	}
	persistent := s.persistent
	s.mu.Unlock()

	b.mu.Lock()
	delete(b.conns, c)
	c.id.conns--
	b.releaseIdentity(c.id)
	shuttingDown := b.closing.Load()
	if current && !persistent && !shuttingDown {
		b.endSessionLocked(s, false)
	}
	b.mu.Unlock()

	switch {
	case will == nil:
	case c.revoked.Load():
		c.refuse("will", "revoked", "topic", logTopic(will.Topic))
	case shuttingDown:
		// Kept with a persistent session (sent after the restart if the
		// client does not come back); an ephemeral session ends with it.
	case c.takeover.Load() && will.Props.WillDelay > 0:
		// The new connection arrived before the delay elapsed.
	default:
		b.scheduleWill(s, c, will, !current || !persistent)
	}
	if current && persistent && !shuttingDown {
		s.mu.Lock()
		if !s.ended && s.conn == nil {
			b.store.putSession(s)
			s.armExpiry()
		}
		s.mu.Unlock()
	}
}

// armExpiry schedules the end of an offline persistent session. The
// caller holds s.mu.
func (s *session) armExpiry() {
	if s.expiryTimer != nil {
		s.expiryTimer.Stop()
	}
	left := s.expiry - time.Since(s.disconnectedAt)
	if left < 0 {
		left = 0
	}
	s.expiryTimer = time.AfterFunc(left, func() {
		b := s.b
		b.mu.Lock()
		s.mu.Lock()
		live := s.conn != nil || s.ended
		s.mu.Unlock()
		if !live && b.sessions[s.key] == s {
			b.endSessionLocked(s, false)
		}
		b.mu.Unlock()
	})
}

// setExpiry changes the session expiry (MQTT 5 DISCONNECT property).
func (b *Broker) setExpiry(s *session, d time.Duration) {
	s.mu.Lock()
	s.expiry = d
	s.mu.Unlock()
	b.mu.Lock()
	s.mu.Lock()
	switch {
	case d == 0 && s.persistent:
		s.persistent = false
		s.id.persistent--
		b.store.forgetSession(s)
	case d > 0 && !s.persistent:
		// Only reachable from a non-zero expiry at CONNECT (checked by the
		// caller); keep the accounting right anyway.
		s.persistent = true
		s.id.persistent++
	}
	s.mu.Unlock()
	b.mu.Unlock()
}

// endSessionLocked ends a session: subscriptions leave the tree, queued
// messages are released, its stored state is deleted, and a pending will
// is sent (the session's end is one of the will's triggers). The caller
// holds b.mu and not s.mu. replaced: a new session took its key.
func (b *Broker) endSessionLocked(s *session, replaced bool) {
	s.mu.Lock()
	if s.ended {
		s.mu.Unlock()
		return
	}
	s.ended = true
	wasPersistent := s.persistent
	if wasPersistent {
		b.store.forgetSession(s) // before the deliveries go: it releases their messages
	}
	for _, sub := range s.subs {
		b.subs.remove(s, sub)
	}
	s.subs = nil
	for _, d := range s.inflight {
		s.id.queued.Add(-int64(d.msg.size))
	}
	for _, d := range s.queue.all() {
		s.id.queued.Add(-int64(d.msg.size))
	}
	s.inflight = nil
	s.load.Store(0)
	s.queue.reset()
	if s.expiryTimer != nil {
		s.expiryTimer.Stop()
	}
	will := s.takeWill()
	prev := s.conn
	s.persistent = false
	s.mu.Unlock()
	if wasPersistent {
		s.id.persistent--
	}
	if !replaced && b.sessions[s.key] == s {
		delete(b.sessions, s.key)
	}
	b.releaseIdentity(s.id)
	if prev != nil {
		prev.takeover.Store(true)
		go prev.terminate(packet.SessionTakenOver)
	}
	if will != nil && !replaced {
		go b.sendWill(will)
	}
}
