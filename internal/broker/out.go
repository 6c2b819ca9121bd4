package broker

import (
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/broker/packet"
)

// outbox is one connection's outbound bytes. Anything may append (the
// connection's own reader, publishers' goroutines, the journal's
// acknowledgement callbacks); one writer at a time drains it. The writer
// is a goroutine started when bytes arrive and ending when the outbox is
// empty, so an idle connection costs no writer goroutine and no buffer,
// and under load every write carries everything that accumulated while
// the previous one ran: many packets per TLS record and syscall, instead
// of one write per packet.
//
// Bytes are kept in chunks of chunkSize, the largest TLS record
// plaintext, so a chunk is one record and one write, and a backlog never
// re-grows (and copies) one large buffer.
type outbox struct {
	mu       sync.Mutex
	chunks   [][]byte // guarded by mu; each of capacity chunkSize
	flushing bool     // a writer goroutine is running; guarded by mu
	closed   bool     // guarded by mu; nothing more is written
	closing  bool     // guarded by mu; the writer closes the socket once empty
	size     int      // bytes not yet written, including the writer's; guarded by mu
}

// chunkSize is TLS's maximum record plaintext (RFC 8446 §5.1).
const chunkSize = 16 << 10

// pending returns the bytes not yet written.
func (o *outbox) pending() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.size
}

// chunkPool recycles chunks between connections, so idle connections hold
// none.
var chunkPool = sync.Pool{New: func() any { b := make([]byte, 0, chunkSize); return &b }}

func getChunk() []byte { return (*chunkPool.Get().(*[]byte))[:0] }

func putChunk(b []byte) {
	if cap(b) != chunkSize {
		return
	}
	b = b[:0]
	chunkPool.Put(&b)
}

// scratchPool holds buffers for packets that do not fit the current chunk.
var scratchPool = sync.Pool{New: func() any { b := make([]byte, 0, chunkSize); return &b }}

// appendLocked adds what fill encodes, at most max bytes, to the chunks.
// The caller holds o.mu.
func (o *outbox) appendLocked(max int, fill func([]byte) []byte) {
	if max <= chunkSize {
		n := len(o.chunks)
		if n == 0 || chunkSize-len(o.chunks[n-1]) < max {
			o.chunks = append(o.chunks, getChunk())
			n++
		}
		last := o.chunks[n-1]
		out := fill(last)
		o.size += len(out) - len(last)
		o.chunks[n-1] = out
		return
	}
	sp := scratchPool.Get().(*[]byte)
	b := fill((*sp)[:0])
	o.spill(b)
	if cap(b) <= 4*chunkSize {
		*sp = b[:0]
		scratchPool.Put(sp)
	}
}

// spill copies b into the chunks, filling the last one first.
func (o *outbox) spill(b []byte) {
	o.size += len(b)
	for len(b) > 0 {
		n := len(o.chunks)
		if n == 0 || len(o.chunks[n-1]) == chunkSize {
			o.chunks = append(o.chunks, getChunk())
			n++
		}
		last := o.chunks[n-1]
		k := copy(last[len(last):chunkSize], b)
		o.chunks[n-1] = last[:len(last)+k]
		b = b[k:]
	}
}

// smallPacket bounds what the broker's own control packets (CONNACK,
// acknowledgements, SUBACK of a few filters, PINGRESP) encode to.
const smallPacket = 512

// send appends what fill writes (at most smallPacket bytes) and starts the
// writer if none runs. It reports false if the connection is closed.
func (c *conn) send(fill func([]byte) []byte) bool { return c.sendMax(smallPacket, fill) }

// sendMax is send for a packet of at most max bytes.
func (c *conn) sendMax(max int, fill func([]byte) []byte) bool {
	o := &c.out
	o.mu.Lock()
	if o.closed || o.closing {
		o.mu.Unlock()
		return false
	}
	o.appendLocked(max, fill)
	start := !o.flushing
	o.flushing = true
	o.mu.Unlock()
	if start {
		c.b.writers.run(c)
	}
	return true
}

// writerPool runs outboxes' writers on reused goroutines. A goroutine per
// burst (started when bytes arrive, ending when the outbox is empty) cost
// its creation, its exit and, on its first TLS write, the growth of its
// fresh stack, every time: at the paced benchmark's rates most bursts are
// one packet, and that was 5 % of the broker's CPU (docs/benchmarks.md).
// An idle writer waits on its own channel for the next outbox and exits
// after writerIdle without one, so a quiet broker holds no writer
// goroutine, and at most maxIdleWriters wait at any time. The pool's lock
// is only ever tried on the hot path: when many outboxes start at once (a
// fan-out to a thousand subscribers), a writer that cannot have it at once
// is simply a new goroutine, as before, rather than a queue on one mutex.
// The zero value is ready.
type writerPool struct {
	mu   sync.Mutex
	idle []chan *conn // waiting writers, most recent last; guarded by mu
	live atomic.Int32 // writer goroutines (tests)
	made atomic.Int64 // writer goroutines started (tests)
}

const (
	writerIdle     = 200 * time.Millisecond
	maxIdleWriters = 64
)

// run hands c's outbox to an idle writer, or starts one.
func (w *writerPool) run(c *conn) {
	if !w.mu.TryLock() {
		w.start(c)
		return
	}
	if n := len(w.idle); n > 0 {
		ch := w.idle[n-1]
		w.idle[n-1] = nil
		w.idle = w.idle[:n-1]
		w.mu.Unlock()
		ch <- c // buffered: never blocks
		return
	}
	w.mu.Unlock()
	w.start(c)
}

func (w *writerPool) start(c *conn) {
	w.live.Add(1)
	w.made.Add(1)
	go w.work(c)
}

// work flushes c, then whatever outbox run hands it next.
func (w *writerPool) work(c *conn) {
	defer w.live.Add(-1)
	ch := make(chan *conn, 1)
	idle := time.NewTimer(writerIdle)
	defer idle.Stop()
	var batch [][]byte
	for {
		batch = c.flush(batch)
		c = nil
		if !w.mu.TryLock() {
			return
		}
		if len(w.idle) >= maxIdleWriters {
			w.mu.Unlock()
			return
		}
		w.idle = append(w.idle, ch)
		w.mu.Unlock()
		idle.Reset(writerIdle)
		select {
		case c = <-ch:
			idle.Stop()
		case <-idle.C:
			w.mu.Lock()
			if i := slices.Index(w.idle, ch); i >= 0 {
				w.idle = slices.Delete(w.idle, i, i+1)
				w.mu.Unlock()
				return
			}
			w.mu.Unlock()
			c = <-ch // run took this writer just now: its outbox is coming
		}
	}
}

// flush writes until the outbox is empty; batch is the caller's scratch.
func (c *conn) flush(batch [][]byte) [][]byte {
	o := &c.out
	for {
		o.mu.Lock()
		if o.closed || len(o.chunks) == 0 {
			o.flushing = false
			closing := o.closing
			o.mu.Unlock()
			if closing {
				c.closeWrite() // the reader lingers, then closes
				return batch
			}
			c.written()
			return batch
		}
		batch = append(batch[:0], o.chunks...)
		clear(o.chunks)
		o.chunks = o.chunks[:0]
		o.mu.Unlock()
		if !c.writeBatch(batch) {
			return batch
		}
	}
}

// writeBatch writes chunks taken from the outbox and returns them to the
// pool; it reports false if the write failed (the connection is ended).
func (c *conn) writeBatch(batch [][]byte) bool {
	o := &c.out
	_ = c.nc.SetWriteDeadline(time.Now().Add(writeTimeout))
	var err error
	written := 0
	for _, ch := range batch {
		if err == nil {
			_, err = c.nc.Write(ch)
		}
		written += len(ch)
		putChunk(ch)
	}
	clear(batch)
	o.mu.Lock()
	o.size -= written
	o.mu.Unlock()
	if err != nil {
		c.fail(err)
		return false
	}
	c.written()
	return true
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
		o.spill(final)
	}
	if o.flushing {
		return true
	}
	if len(o.chunks) == 0 {
		return false
	}
	o.flushing = true
	c.b.writers.run(c)
	return true
}

// closeOut discards what is unwritten and refuses further sends.
func (c *conn) closeOut() {
	o := &c.out
	o.mu.Lock()
	o.closed = true
	if !o.flushing {
		for _, ch := range o.chunks {
			putChunk(ch)
		}
		o.chunks = nil
	}
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
	// A topic alias adds at most 3 bytes (identifier and value).
	sent := c.sendMax(packet.PublishSize(c.version, &p)+3, func(dst []byte) []byte {
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
		c.b.metrics.out[d.qos].Inc()
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
