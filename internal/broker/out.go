package broker

import (
	"sync"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/broker/packet"
)

// outbox is one connection's outbound bytes. Anything may append (the
// connection's own reader, publishers' goroutines, the journal's
// acknowledgement callbacks); one writer at a time drains it. The writer
// is a goroutine started when bytes arrive and ending when the outbox is
// empty, so an idle connection costs no writer goroutine and no buffer,
// and under load every write call carries everything that accumulated
// while the previous one ran: many packets per TLS record and syscall,
// instead of one write per packet.
type outbox struct {
	mu       sync.Mutex
	buf      []byte // guarded by mu
	spare    []byte // the writer's previous buffer, reused; guarded by mu
	flushing bool   // a writer goroutine is running; guarded by mu
	closed   bool   // guarded by mu; nothing more is written
	closing  bool   // guarded by mu; the writer closes the socket once empty
	size     int    // len(buf) plus what the writer holds; guarded by mu
}

// pending returns the bytes not yet written.
func (o *outbox) pending() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.size
}

// maxSpare bounds the buffer an idle connection keeps for reuse.
const maxSpare = 64 << 10

// bufPool recycles write buffers between connections, so idle connections
// hold none.
var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 16<<10); return &b }}

func getBuf() []byte { return (*bufPool.Get().(*[]byte))[:0] }

func putBuf(b []byte) {
	if cap(b) == 0 || cap(b) > maxSpare {
		return
	}
	b = b[:0]
	bufPool.Put(&b)
}

// send appends what fill writes and starts the writer if none runs. It
// reports false if the connection is closed.
func (c *conn) send(fill func([]byte) []byte) bool {
	o := &c.out
	o.mu.Lock()
	if o.closed || o.closing {
		o.mu.Unlock()
		return false
	}
	if o.buf == nil {
		o.buf = getBuf()
	}
	n := len(o.buf)
	o.buf = fill(o.buf)
	o.size += len(o.buf) - n
	start := !o.flushing
	o.flushing = true
	o.mu.Unlock()
	if start {
		go c.flush()
	}
	return true
}

// flush writes until the outbox is empty.
func (c *conn) flush() {
	o := &c.out
	for {
		o.mu.Lock()
		if o.closed || len(o.buf) == 0 {
			o.flushing = false
			if len(o.buf) == 0 {
				putBuf(o.buf)
				o.buf = nil
			}
			closing := o.closing
			o.mu.Unlock()
			if closing {
				_ = c.nc.Close()
				return
			}
			c.written()
			return
		}
		w := o.buf
		o.buf = o.spare
		o.spare = nil
		o.mu.Unlock()

		_ = c.nc.SetWriteDeadline(time.Now().Add(writeTimeout))
		_, err := c.nc.Write(w)

		o.mu.Lock()
		o.size -= len(w)
		if o.spare == nil && cap(w) <= maxSpare {
			o.spare = w[:0]
		} else {
			putBuf(w)
		}
		o.mu.Unlock()
		if err != nil {
			c.fail(err)
			return
		}
		c.written()
	}
}

// finish appends final (may be empty), refuses further sends and lets the
// writer close the socket once everything is written. It reports false if
// there is nothing to write and no writer: the caller closes the socket.
func (c *conn) finish(final []byte) bool {
	o := &c.out
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return false
	}
	o.closing = true
	if len(final) > 0 {
		o.buf = append(o.buf, final...)
		o.size += len(final)
	}
	if o.flushing {
		return true
	}
	if len(o.buf) == 0 {
		return false
	}
	o.flushing = true
	go c.flush()
	return true
}

// closeOut discards what is unwritten and refuses further sends.
func (c *conn) closeOut() {
	o := &c.out
	o.mu.Lock()
	o.closed = true
	if !o.flushing {
		putBuf(o.buf)
		o.buf = nil
	}
	putBuf(o.spare)
	o.spare = nil
	o.mu.Unlock()
}

// written tells the session that output drained (backpressure relief).
func (c *conn) written() {
	s := c.sess.Load()
	if s == nil || !s.relief.Load() {
		return
	}
	s.mu.Lock()
	if s.conn == c {
		s.relieve()
	}
	s.mu.Unlock()
}

// writePublish encodes a delivery for this connection: subscription
// identifiers, the remaining message expiry and a topic alias (if the
// client accepts them) are per connection. It reports false if the packet
// exceeds what the client accepts (MQTT 5 Maximum Packet Size) or the
// message expired, in which case nothing was sent.
func (c *conn) writePublish(d *delivery, dup bool) bool {
	m := d.msg
	p := packet.Publish{Dup: dup && d.qos > 0, QoS: d.qos, Retain: d.retain, Topic: m.topic, PacketID: d.pid, Payload: m.payload}
	if c.version == packet.V5 {
		p.Props = m.props
		p.Props.SubscriptionIDs = d.subIDs
		if !m.expires.IsZero() {
			left := time.Until(m.expires)
			if left <= 0 {
				return false
			}
			p.Props.MessageExpiry = uint32((left + time.Second - 1) / time.Second)
			p.Props.Set(packet.PropMessageExpiry)
		}
	}
	ok := true
	sent := c.send(func(dst []byte) []byte {
		// Topic aliases are assigned under the outbox lock, so their order
		// on the wire is the order they were assigned in.
		if c.version == packet.V5 && c.aliasMax > 0 {
			if a, known := c.outAliases[m.topic]; known {
				p.Topic = ""
				p.Props.TopicAlias = a
				p.Props.Set(packet.PropTopicAlias)
			} else if len(c.outAliases) < int(c.aliasMax) {
				if c.outAliases == nil {
					c.outAliases = map[string]uint16{}
				}
				a := uint16(len(c.outAliases) + 1)
				c.outAliases[m.topic] = a
				p.Props.TopicAlias = a
				p.Props.Set(packet.PropTopicAlias)
			}
		}
		if c.maxOut > 0 && packet.PublishSize(c.version, &p) > c.maxOut {
			ok = false
			return dst
		}
		return packet.AppendPublish(dst, c.version, &p)
	})
	if ok && sent {
		c.b.metrics.messagesOut.WithLabelValues(qosLabel[d.qos]).Inc()
		c.b.messagesOut.Add(1)
	}
	return ok
}

// writeAck sends a PUBACK, PUBREC, PUBREL or PUBCOMP.
func (c *conn) writeAck(t packet.Type, pid uint16, reason byte) {
	c.send(func(dst []byte) []byte {
		return packet.AppendAck(dst, c.version, &packet.Ack{Type: t, PacketID: pid, Reason: reason})
	})
}
