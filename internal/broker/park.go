package broker

import (
	"container/heap"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/broker/packet"
)

// Parked readers: an idle connection holds no goroutine.
//
// A connection's reader goroutine, when it finds nothing more to read,
// does not block in tls.Conn.Read (a blocked goroutine keeps a 4 KiB stack
// per idle connection). It registers the socket with the broker's one
// readiness poller (epoll on Linux: pollset_linux.go) and the poller's one
// deadline heap, and exits. When the socket becomes readable, or the
// connection's read deadline (keepalive, certificate expiry) passes, or
// the server ends the connection (terminate, fail), the poller removes the
// socket and starts a new reader goroutine, which carries on where the old
// one stopped. Systems without a poller keep one blocked reader per
// connection (Config.GoroutinePerConnection forces that model anywhere).
//
// Invariants, all under parker.mu: a socket is registered with the pollset
// from its connection's first park until the connection closes (re-armed,
// one-shot, at each park: one epoll_ctl per idle period); only parked
// connections are in the descriptor index, so a late event for a running
// or gone connection is ignored; a connection parks only while it is not
// closed; every path that closes a socket first marks the connection
// closed and then unparks it (which unregisters the socket), so a closed
// descriptor is never in the pollset. A reused descriptor number can at
// worst receive a stale event: its connection wakes, finds nothing to
// read and parks again.

// pollSet is the OS readiness notification the parker needs: one-shot
// read readiness of a descriptor, reported by a blocking wait.
type pollSet interface {
	// add registers fd and arms it for one readiness report.
	add(fd int) error
	// rearm arms a registered fd for one more report.
	rearm(fd int) error
	// del removes fd; it must run before fd is closed.
	del(fd int) error
	// wait blocks until descriptors are ready and calls ready for each;
	// it returns when interrupt is called.
	wait(ready func(fd int)) error
	// interrupt ends wait.
	interrupt() error
	// release frees the pollset once wait has returned.
	release() error
}

// parker holds the parked connections: the pollset, the descriptor index
// and one deadline heap with one timer for all of them.
type parker struct {
	ps  pollSet
	log *slog.Logger

	mu      sync.Mutex
	byFD    map[int]*conn // parked connections by descriptor; guarded by mu
	parks   atomic.Uint64 // connections that went to park (tests)
	resumes atomic.Uint64 // parked connections whose reader resumed (tests)
	pongs   atomic.Uint64 // PINGRESPs the poller wrote itself (tests)
	rearms  atomic.Uint64 // times the deadline timer was set (tests)
	// pongBatch is the write batch of the PINGRESPs the poller writes
	// itself (pong); the poller's goroutine only.
	pongBatch [][]byte
	// beforePong runs in pong between taking the PINGRESP from the
	// outbox and writing it (tests: what other goroutines append in
	// that moment).
	beforePong atomic.Pointer[func(*conn)]
	heap       parkHeap    // parked connections by read deadline; guarded by mu
	timer      *time.Timer // fires at heap[0]'s deadline; guarded by mu
	timerAt    time.Time   // when timer fires; guarded by mu
	closed     bool        // guarded by mu

	done chan struct{} // closed when the wait loop returned

	// Resumed readers run on idle workers when there are any: a new
	// goroutine per wake-up would grow a fresh stack each time (the
	// read path needs about 4 KiB), which costs more CPU than the wake-up
	// itself. Workers exit after workerIdle without work.
	work    chan *conn
	quit    chan struct{}
	workers sync.WaitGroup
}

// workerIdle is how long a resume worker waits for the next connection
// before it exits. Idle connections pinging every few seconds keep a few
// workers; a quiet broker keeps none.
const workerIdle = 10 * time.Second

// newParker starts the poller's wait loop; it returns nil (and logs why)
// where parking is not available, and the broker keeps one reader
// goroutine per connection.
func newParker(log *slog.Logger) *parker {
	ps, err := newPollSet()
	if err != nil {
		if !errors.Is(err, errNoPollSet) {
			log.Warn("broker: no readiness poller; one reader goroutine per connection", "error", err)
		}
		return nil
	}
	p := &parker{ps: ps, log: log, byFD: map[int]*conn{}, done: make(chan struct{}), work: make(chan *conn), quit: make(chan struct{})}
	go func() {
		defer close(p.done)
		if err := ps.wait(p.ready); err != nil {
			// The wait loop failed: wake everyone and refuse new parkers,
			// so no connection waits for a poller that is gone.
			log.Error("broker: readiness poller failed; parked connections resumed", "error", err)
			p.shut()
		}
	}()
	return p
}

// errNoPollSet: this system has no pollset implementation.
var errNoPollSet = errors.New("no readiness poller on this system")

// close wakes what is still parked, stops the wait loop and waits for it.
func (p *parker) close() {
	p.shut()
	select {
	case <-p.done: // the wait loop failed earlier
	default:
		if err := p.ps.interrupt(); err != nil {
			p.log.Warn("broker: stop readiness poller", "error", err)
		}
	}
	<-p.done
	if err := p.ps.release(); err != nil {
		p.log.Warn("broker: release readiness poller", "error", err)
	}
	close(p.quit)
	p.workers.Wait()
}

// resume runs a woken connection's reader: on an idle worker if one is
// waiting, else on a new one.
func (p *parker) resume(c *conn) {
	p.resumes.Add(1)
	select {
	case p.work <- c:
	default:
		p.workers.Add(1)
		go p.worker(c)
	}
}

// worker runs resumed readers until none came for workerIdle.
func (p *parker) worker(c *conn) {
	defer p.workers.Done()
	idle := time.NewTimer(workerIdle)
	defer idle.Stop()
	for {
		c.resume()
		idle.Reset(workerIdle)
		select {
		case c = <-p.work:
		case <-idle.C:
			return
		case <-p.quit:
			return
		}
	}
}

// shut refuses further parking and resumes every parked connection.
func (p *parker) shut() {
	p.mu.Lock()
	p.closed = true
	var woken []*conn
	for _, c := range p.byFD {
		p.removeLocked(c)
		p.unregisterLocked(c)
		woken = append(woken, c)
	}
	p.mu.Unlock()
	for _, c := range woken {
		p.resume(c)
	}
}

// park registers c, whose reader found nothing to read, and reports
// whether it is parked: then the calling goroutine must return at once
// and never touch c's reader state again. It refuses (false) when c is
// closed or the poller is closing or failed; the caller then reads as if
// there were no poller.
func (p *parker) park(c *conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || c.closed.Load() {
		return false
	}
	fd := c.pc.fd
	arm := p.ps.add
	if c.registered {
		arm = p.ps.rearm
	}
	if err := arm(fd); err != nil {
		p.log.Warn("broker: cannot park connection; its reader blocks", "error", err)
		return false
	}
	c.registered = true
	c.parked = true
	p.byFD[fd] = c
	heap.Push(&p.heap, c)
	p.rearmLocked()
	return true
}

// unpark unregisters c's socket and resumes c if it is parked; it is how
// terminate, fail and the shutdown reach a connection that has no
// goroutine. c is closed already (it will not park again), and once
// unpark returns its socket may be closed.
func (p *parker) unpark(c *conn) {
	p.mu.Lock()
	parked := c.parked
	if parked {
		p.removeLocked(c)
	}
	p.unregisterLocked(c)
	p.mu.Unlock()
	if parked {
		p.resume(c)
	}
}

// unregisterLocked removes c's socket from the pollset. The caller holds
// mu.
func (p *parker) unregisterLocked(c *conn) {
	if !c.registered {
		return
	}
	c.registered = false
	if err := p.ps.del(c.pc.fd); err != nil {
		// Only a bug gets here (the descriptor was closed while registered).
		p.log.Error("broker: unregister connection from the poller", "error", err)
	}
}

// ready is the wait loop's callback: fd is readable (data, EOF, reset).
func (p *parker) ready(fd int) {
	p.mu.Lock()
	c := p.byFD[fd]
	if c == nil { // woken by someone else since the event was queued
		p.mu.Unlock()
		return
	}
	p.removeLocked(c)
	p.mu.Unlock()
	if c.answerPings() {
		return
	}
	p.resume(c)
}

// expire runs on the heap's timer: connections whose read deadline has
// passed resume, and their reader ends them (keepalive timeout,
// certificate expiry) exactly as a blocked read's deadline would.
func (p *parker) expire() {
	now := time.Now()
	var woken []*conn
	p.mu.Lock()
	for len(p.heap) > 0 && !p.heap[0].deadline.After(now) {
		c := p.heap[0]
		p.removeLocked(c)
		woken = append(woken, c)
	}
	p.timerAt = time.Time{}
	p.rearmLocked()
	p.mu.Unlock()
	for _, c := range woken {
		p.resume(c)
	}
}

// removeLocked takes c out of the parked set (its socket stays
// registered, disarmed or armed: a late event finds c not parked). The
// caller holds mu.
func (p *parker) removeLocked(c *conn) {
	delete(p.byFD, c.pc.fd)
	heap.Remove(&p.heap, int(c.heapIdx))
	c.parked = false
	p.rearmLocked()
}

// rearmLocked makes sure the one timer fires no later than the earliest
// deadline. It only ever moves the timer earlier: when the earliest
// connection leaves (what nearly every keepalive ping does: the
// connection that pinged longest ago has the earliest deadline), the
// timer stays where it was, fires early, finds nothing due and moves to
// the heap's new earliest deadline (expire) — one timer change per fire
// instead of one per ping. The caller holds mu.
func (p *parker) rearmLocked() {
	if len(p.heap) == 0 {
		if p.timer != nil && !p.timerAt.IsZero() {
			p.timer.Stop()
			p.timerAt = time.Time{}
		}
		return
	}
	next := p.heap[0].deadline
	if !p.timerAt.IsZero() && !next.Before(p.timerAt) {
		return
	}
	p.timerAt = next
	p.rearms.Add(1)
	if p.timer == nil {
		p.timer = time.AfterFunc(time.Until(next), p.expire)
		return
	}
	p.timer.Reset(time.Until(next))
}

// parkedCount is the number of parked connections (tests, metrics).
func (p *parker) parkedCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.byFD)
}

// parkHeap orders parked connections by read deadline.
type parkHeap []*conn

func (h parkHeap) Len() int           { return len(h) }
func (h parkHeap) Less(i, j int) bool { return h[i].deadline.Before(h[j].deadline) }
func (h parkHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].heapIdx = int32(i)
	h[j].heapIdx = int32(j)
}
func (h *parkHeap) Push(x any) {
	c := x.(*conn)
	c.heapIdx = int32(len(*h))
	*h = append(*h, c)
}
func (h *parkHeap) Pop() any {
	old := *h
	c := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	c.heapIdx = -1
	return c
}

// pollConn is the TCP connection under a parking connection's tls.Conn.
// While probing, its Read makes one non-blocking read attempt and reports
// errWouldBlock instead of waiting, so the reader learns whether crypto/tls
// or the socket has anything for it without blocking.
type pollConn struct {
	*net.TCPConn
	raw syscall.RawConn
	fd  int
	// The fields below belong to the connection's reader, or to the poller
	// while it answers pings (answerPings).
	probing bool
	// drained: a probing read came back short, so the socket was empty a
	// moment ago; while set, a probing read reports errWouldBlock without
	// a system call (answerPings only: a re-armed level-triggered epoll
	// registration reports whatever arrives after that moment).
	drained, skipDrained bool
}

// newPollConn wraps an accepted TCP connection.
func newPollConn(tc *net.TCPConn) (*pollConn, error) {
	raw, err := tc.SyscallConn()
	if err != nil {
		return nil, err
	}
	pc := &pollConn{TCPConn: tc, raw: raw, fd: -1}
	if err := raw.Control(func(fd uintptr) { pc.fd = int(fd) }); err != nil {
		return nil, err
	}
	return pc, nil
}

// errWouldBlock is the probe's "nothing to read now". crypto/tls keeps
// what it buffered on a temporary error, which this is.
var errWouldBlock error = wouldBlock{}

type wouldBlock struct{}

func (wouldBlock) Error() string   { return "read would block" }
func (wouldBlock) Timeout() bool   { return true }
func (wouldBlock) Temporary() bool { return true }

func (pc *pollConn) Read(b []byte) (int, error) {
	if !pc.probing {
		return pc.TCPConn.Read(b)
	}
	if pc.drained {
		return 0, errWouldBlock
	}
	var n int
	var rerr error
	err := pc.raw.Read(func(fd uintptr) bool {
		n, rerr = syscall.Read(int(fd), b)
		return true // one attempt: never wait
	})
	switch {
	case err != nil:
		return 0, err // closed, or the read deadline passed
	case rerr == syscall.EAGAIN:
		return 0, errWouldBlock
	case rerr == syscall.EINTR:
		return 0, errWouldBlock // the poller reports it again: nothing lost
	case rerr != nil:
		return 0, &net.OpError{Op: "read", Net: "tcp", Source: pc.LocalAddr(), Addr: pc.RemoteAddr(), Err: os.NewSyscallError("read", rerr)}
	case n == 0 && len(b) > 0:
		return 0, io.EOF
	}
	pc.drained = pc.skipDrained && n < len(b)
	return n, nil
}

// probe looks for the next packet's first byte without blocking: first in
// what crypto/tls has buffered (several records may have come in one
// read), then in the socket. If there is none it parks the connection and
// reports true: the caller's goroutine must return. On false with a nil
// error, the next byte is in c.first or c's socket must be read blocking
// (parking was refused).
func (c *conn) probe() (parked bool, err error) {
	if c.nAhead > 0 {
		return false, nil
	}
	c.pc.probing = true
	n, err := c.nc.Read(c.ahead[:1])
	c.pc.probing = false
	if n == 1 {
		// A byte came (with it, crypto/tls may report an error found while
		// looking ahead, e.g. a close_notify: the next read reports it
		// again).
		c.nAhead = 1
		return false, nil
	}
	if !errors.Is(err, errWouldBlock) {
		if err == nil {
			err = io.EOF
		}
		return false, err
	}
	if !time.Now().Before(c.deadline) {
		return false, os.ErrDeadlineExceeded // as the blocked read would have
	}
	if wait := min(c.b.parkAfter(), time.Until(c.deadline)); wait > 0 {
		// Busy connections keep their reader: wait a moment for the next
		// packet, blocking, before parking. A timed-out read leaves
		// crypto/tls usable (a timeout is temporary there).
		_ = c.nc.SetReadDeadline(time.Now().Add(wait))
		if c.closed.Load() { // terminate's deadline came before ours
			return false, errConnClosed
		}
		n, err := c.nc.Read(c.ahead[:1])
		if n == 1 {
			c.nAhead = 1
			_ = c.nc.SetReadDeadline(c.deadline)
			return false, nil
		}
		switch {
		case c.closed.Load():
			return false, errConnClosed
		case !errors.Is(err, os.ErrDeadlineExceeded):
			if err == nil {
				err = io.EOF
			}
			return false, err
		case !time.Now().Before(c.deadline):
			return false, os.ErrDeadlineExceeded
		}
	}
	c.b.parker.parks.Add(1)
	// Parked, the one deadline that counts is the heap's: the socket's
	// runtime timer is disarmed until the reader resumes.
	_ = c.nc.SetReadDeadline(time.Time{})
	if c.b.parker.park(c) {
		return true, nil
	}
	_ = c.nc.SetReadDeadline(c.deadline)
	if c.closed.Load() { // terminate may have set its deadline before ours
		return false, errConnClosed
	}
	return false, nil
}

// parkAfter is Config.ParkAfter with its default.
func (b *Broker) parkAfter() time.Duration {
	switch {
	case b.cfg.ParkAfter < 0:
		return 0
	case b.cfg.ParkAfter == 0:
		return 250 * time.Millisecond
	}
	return b.cfg.ParkAfter
}

// resume continues a parked connection's reader (on a parker worker).
func (c *conn) resume() {
	_ = c.nc.SetReadDeadline(c.deadline)
	c.serve()
}

// connReader is the reader's view of the connection: the bytes the probe
// or answerPings took, then the TLS stream.
type connReader conn

func (r *connReader) Read(b []byte) (int, error) {
	c := (*conn)(r)
	if c.nAhead > 0 && len(b) > 0 {
		n := copy(b, c.ahead[:c.nAhead])
		copy(c.ahead[:], c.ahead[n:c.nAhead])
		c.nAhead -= uint8(n)
		return n, nil
	}
	return c.nc.Read(b)
}

// pong answers a PINGREQ for answerPings. When nothing else is queued or
// being written and the socket's send queue is empty, the poller writes
// the PINGRESP itself: one small TLS record into an empty send buffer
// does not block, and starting a writer goroutine (and waking a thread
// for it) cost more than the write. Otherwise the answer goes through
// the outbox like any packet (handle), so a client that does not read
// what it is sent can never hold the poller in a write.
func (c *conn) pong() {
	o := &c.out
	o.mu.Lock()
	if o.closed || o.closing || o.flushing || len(o.chunks) > 0 || !c.pc.sendQueueEmpty() {
		o.mu.Unlock()
		_ = c.handle(&packet.Pingreq{}) // never fails for a PINGREQ
		return
	}
	o.appendLocked(smallPacket, packet.AppendPingresp)
	// The poller writes only the PINGRESP: what other goroutines append
	// while it writes (deliveries, a DISCONNECT) goes to a writer.
	p := c.b.parker
	batch := append(p.pongBatch[:0], o.chunks...)
	clear(o.chunks)
	o.chunks = o.chunks[:0]
	o.flushing = true
	o.mu.Unlock()
	p.pongs.Add(1)
	if h := p.beforePong.Load(); h != nil {
		(*h)(c)
	}
	ok := c.writeBatch(batch)
	p.pongBatch = batch[:0]
	if !ok {
		return
	}
	o.mu.Lock()
	more := o.closed || o.closing || len(o.chunks) > 0
	if !more {
		o.flushing = false
	}
	o.mu.Unlock()
	if more {
		c.b.writers.run(c) // its flush writes the rest, or closes
	}
}

// sendQueueEmpty reports whether the kernel holds no unsent or
// unacknowledged bytes of the socket (SIOCOUTQ), so a small write cannot
// wait for the peer. On error it answers false.
func (pc *pollConn) sendQueueEmpty() bool {
	n, qerr := -1, error(nil)
	if err := pc.raw.Control(func(fd uintptr) { n, qerr = sendQueued(int(fd)) }); err != nil || qerr != nil {
		return false
	}
	return n == 0
}

// pingsPerWake bounds how many PINGREQs the poller answers for one
// connection per wake-up; a client that sends more goes to its reader,
// so one client cannot hold the poller.
const pingsPerWake = 4

// pingreq is a PINGREQ on the wire, both protocol versions: type 12, no
// flags, no body.
var pingreq = [2]byte{byte(packet.PINGREQ) << 4, 0}

// answerPings runs on the poller's goroutine for a connection that has
// just been woken by input (it is no longer parked, and no reader runs
// for it). Keepalive PINGREQs, what an idle connection sends, are
// answered here and the connection parks again at once: no reader
// goroutine, no hand-off to a worker, no Config.ParkAfter wait and no
// socket deadline per ping. It reports whether c is parked again; on
// false the caller resumes c's reader, which finds in c.ahead what was
// read here (the first bytes of a packet that is not a ping) and reads
// any error again from crypto/tls. Only what a reader would do with a
// ping happens here: the same handle, the same deadline rule.
func (c *conn) answerPings() bool {
	if c.pc == nil || c.nAhead > 0 || c.closed.Load() || c.inboundFull() || !time.Now().Before(c.deadline) {
		return false
	}
	idle := c.readPings()
	c.pc.probing, c.pc.skipDrained, c.pc.drained = false, false, false
	if !idle {
		return false
	}
	c.b.parker.parks.Add(1)
	return c.b.parker.park(c) // from here on c is not ours to touch
}

// readPings answers the PINGREQs that are there (at most pingsPerWake)
// and reports whether nothing else is: then c may park again.
func (c *conn) readPings() bool {
	c.pc.probing, c.pc.skipDrained = true, true
	for range pingsPerWake {
		for c.nAhead < 2 {
			n, err := c.nc.Read(c.ahead[c.nAhead:2])
			c.nAhead += uint8(n)
			if err != nil {
				// Nothing more at a packet boundary: idle again. Anything
				// else (half a packet, an error) is the reader's.
				return c.nAhead == 0 && errors.Is(err, errWouldBlock)
			}
		}
		if c.ahead != pingreq || c.closed.Load() {
			return false
		}
		c.nAhead = 0
		c.pong()
		c.advanceDeadline()
	}
	return false
}
