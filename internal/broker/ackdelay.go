package broker

import (
	"sync/atomic"

	"github.com/fieldtrust/fieldtrust/internal/broker/packet"
)

// A persistent publish's acknowledgement waits for the journal to make its
// deliveries durable — or until its subscribers have acknowledged every one
// of them, if that comes first: a delivered and acknowledged message needs
// nothing on disk (its writes are cancelled or deleted anyway). Waiting
// for the journal alone, a stalled fdatasync held back every PUBACK queued
// behind it, and a publisher whose window filled stopped sending; that set
// the persistent-session p99 under load (docs/benchmarks.md).

// ackTracker counts a QoS 1 publish's deliveries to persistent sessions
// that their subscribers have not acknowledged yet, plus one while the
// publish is being routed and acknowledged. It is part of its message (no
// allocation of its own). Queued deliveries of offline sessions keep it
// (through their message) for as long as they wait, so it refers to the
// publisher's connection only until the acknowledgement has gone.
type ackTracker struct {
	left   atomic.Int32
	target atomic.Pointer[pendingAck] // set before the routing's count is released; nil once sent
}

// trackAcks starts m's tracker and returns it.
func (m *message) trackAcks() *ackTracker {
	m.ack.left.Store(1)
	m.acked = &m.ack
	return m.acked
}

func (t *ackTracker) add() { t.left.Add(1) }

// done releases one count; the last makes the acknowledgement ready.
func (t *ackTracker) done() {
	if t.left.Add(-1) == 0 {
		if a := t.target.Swap(nil); a != nil {
			a.c.ackReady(a, nil)
		}
	}
}

// pendingAck is the PUBACK or PUBREC of one inbound publish, sent at once
// or waiting in its connection's queue. It is the journal's notifier
// itself: one allocation per waiting acknowledgement, none for one sent at
// once.
type pendingAck struct {
	c      *conn
	tr     *ackTracker // forgets its target once ready; nil without one
	size   int         // payload bytes counted in c.inBytes
	pid    uint16
	t      packet.Type // PUBACK or PUBREC
	reason byte
	ready  bool // guarded by conn.ackMu
	failed bool // the journal failed: not sent, the connection closes instead; guarded by conn.ackMu
}

// send writes the acknowledgement and releases what the inbound flow held.
func (a *pendingAck) send() {
	c := a.c
	c.writeAck(a.t, a.pid, a.reason)
	if a.t == packet.PUBACK || a.reason >= 0x80 {
		c.releaseInbound(a.size)
		return
	}
	c.inBytes.Add(-int64(a.size)) // QoS 2 stays inflight until PUBREL
	c.wakeInbound()
}

// durable is the journal's notification.
func (a *pendingAck) durable(err error) { a.c.ackReady(a, err) }

// queueAck sends a now, or queues it until the journal has made what the
// publish needs durable (durable) or its tracker's deliveries are all
// acknowledged, behind every acknowledgement queued before it.
func (c *conn) queueAck(a pendingAck, durable bool) {
	tr := a.tr
	c.ackMu.Lock()
	if !durable && len(c.acks) == 0 {
		c.ackMu.Unlock()
		a.send()
		if tr != nil {
			tr.done()
		}
		return
	}
	pa := new(pendingAck)
	*pa = a
	c.acks = append(c.acks, pa)
	c.ackMu.Unlock()
	if !durable { // only the order waits
		c.ackReady(pa, nil)
	} else {
		if tr != nil {
			tr.target.Store(pa)
		}
		c.b.store.notifyDurable(pa)
	}
	if tr != nil {
		tr.done()
	}
}

// ackReady marks a ready (the first of the journal and the tracker wins)
// and sends every ready acknowledgement at the head of the queue, in
// order. A journal failure closes the connection instead: the message may
// not survive a crash, so the client must resend it.
func (c *conn) ackReady(a *pendingAck, err error) {
	c.ackMu.Lock()
	if a.ready {
		c.ackMu.Unlock()
		return
	}
	a.ready = true
	a.failed = err != nil
	if a.tr != nil {
		a.tr.target.Store(nil)
	}
	for len(c.acks) > 0 && c.acks[0].ready {
		if !c.acks[0].failed {
			c.acks[0].send()
		}
		c.acks[0] = nil
		c.acks = c.acks[1:]
	}
	if len(c.acks) == 0 {
		c.acks = nil
	}
	c.ackMu.Unlock()
	if err != nil {
		c.b.log.Error("broker store write failed; closing the publisher's connection so it resends", "identity", c.subject.String(), "client", c.clientID, "error", err)
		c.terminate(packet.UnspecifiedError)
	}
}
