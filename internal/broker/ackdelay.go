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
// publish is being routed and acknowledged. Queued deliveries of offline
// sessions keep it (through their message) for as long as they wait, so
// it refers to the publisher's connection only until the acknowledgement
// has gone.
type ackTracker struct {
	left   atomic.Int32
	target atomic.Pointer[ackTarget] // set before the routing's count is released; nil once sent
}

type ackTarget struct {
	c    *conn
	a    *pendingAck
	done func()
}

func newAckTracker() *ackTracker {
	t := &ackTracker{}
	t.left.Store(1)
	return t
}

func (t *ackTracker) add() { t.left.Add(1) }

// done releases one count; the last makes the acknowledgement ready.
func (t *ackTracker) done() {
	if t.left.Add(-1) == 0 {
		if g := t.target.Swap(nil); g != nil {
			g.c.ackReady(g.a, g.done, nil)
		}
	}
}

// pendingAck is one acknowledgement waiting in its connection's queue.
type pendingAck struct {
	send  func()      // nil if the connection is closed instead; guarded by conn.ackMu
	ready bool        // guarded by conn.ackMu
	tr    *ackTracker // forgets its target once ready
}

// queueAck sends done now, or queues it until the journal has made what
// the publish needs durable (durable) or its tracker's deliveries are all
// acknowledged, behind every acknowledgement queued before it.
func (c *conn) queueAck(done func(), durable bool, tr *ackTracker) {
	c.ackMu.Lock()
	if !durable && len(c.acks) == 0 {
		c.ackMu.Unlock()
		done()
		if tr != nil {
			tr.done()
		}
		return
	}
	a := &pendingAck{tr: tr}
	c.acks = append(c.acks, a)
	c.ackMu.Unlock()
	if !durable { // only the order waits
		c.ackReady(a, done, nil)
	} else {
		if tr != nil {
			tr.target.Store(&ackTarget{c: c, a: a, done: done})
		}
		c.b.store.afterDurable(func(err error) { c.ackReady(a, done, err) })
	}
	if tr != nil {
		tr.done()
	}
}

// ackReady marks a ready (the first of the journal and the tracker wins)
// and sends every ready acknowledgement at the head of the queue, in
// order. A journal failure closes the connection instead: the message may
// not survive a crash, so the client must resend it.
func (c *conn) ackReady(a *pendingAck, done func(), err error) {
	c.ackMu.Lock()
	if a.ready {
		c.ackMu.Unlock()
		return
	}
	a.ready = true
	if err == nil {
		a.send = done
	}
	if a.tr != nil {
		a.tr.target.Store(nil)
	}
	for len(c.acks) > 0 && c.acks[0].ready {
		if send := c.acks[0].send; send != nil {
			send()
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
