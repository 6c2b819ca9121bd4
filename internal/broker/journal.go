package broker

import (
	"bytes"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// maxJournalBatch bounds the operations logged in one batch, so a backlog
// becomes several syncs of bounded size rather than one huge one.
const maxJournalBatch = 8192

var errStoreClosed = errors.New("broker store closed")

// journal is the store's single writer. Operations are resolved into
// mutations in the order they were submitted and logged, a batch at a
// time, with one fdatasync of the write-ahead log (wal.go): while one batch
// syncs, the next accumulates — across every connection (group commit).
// The checkpointer applies logged batches to bbolt in the background.
//
// Order is the point: an asynchronous operation (submit with wait=false)
// is durable no later than every operation submitted after it. So writers
// never wait: a publish queues its subscribers' entries, and its
// acknowledgement is a barrier callback (then) that runs once they — and
// everything before them — are on disk.
type journal struct {
	log  *slog.Logger
	wal  *wal
	ckpt *checkpointer
	obs  *storeMetrics // nil: not measured

	mu     sync.Mutex
	queue  []journalOp // guarded by mu
	closed bool        // guarded by mu
	wake   chan struct{}
	done   chan struct{} // closed when the loop has drained and exited

	logged atomic.Uint64 // LSN of the last record made durable

	arena walArena // the current batch's keys and values; the loop's only
}

// resolver appends an operation's mutations to dst at the moment its batch
// is logged (so a write cancelled before then costs nothing), building
// their keys and values in a.
type resolver interface {
	resolve(dst []walMut, a *walArena) []walMut
}

// resolveFunc is a resolver that allocates its own bytes (submit's).
type resolveFunc func(dst []walMut) []walMut

func (f resolveFunc) resolve(dst []walMut, _ *walArena) []walMut { return f(dst) }

// notifier is told once everything queued before it is durable (or failed).
type notifier interface{ durable(err error) }

// notifyFunc is a notifier calling a function (then's).
type notifyFunc func(error)

func (f notifyFunc) durable(err error) { f(err) }

// walArena holds the keys and values a batch's mutations refer to, so the
// journal allocates one chunk per arenaChunk bytes instead of a key and a
// value per mutation. The mutations (and the checkpointer, until it has
// applied them) keep a chunk alive; none is ever overwritten or reused.
// The record scratch fields are reused across records (the journal's
// goroutine only).
type walArena struct {
	chunk    []byte
	enc      bytes.Buffer   // a record's CBOR
	publish  []byte         // a message's PUBLISH
	message  messageRecord  // the record being encoded (pointers, not boxed copies, go to the encoder)
	delivery deliveryRecord // the record being encoded
}

const arenaChunk = 64 << 10

// take returns an empty slice with room for n bytes that nothing else
// refers to.
func (a *walArena) take(n int) []byte {
	if n > arenaChunk/8 {
		return make([]byte, 0, n)
	}
	if cap(a.chunk)-len(a.chunk) < n {
		a.chunk = make([]byte, 0, arenaChunk)
	}
	l := len(a.chunk)
	a.chunk = a.chunk[:l+n]
	return a.chunk[l : l : l+n]
}

// reset drops scratch buffers a huge record grew.
func (a *walArena) reset() {
	if a.enc.Cap() > 1<<20 {
		a.enc = bytes.Buffer{}
	}
	if cap(a.publish) > 1<<20 {
		a.publish = nil
	}
}

type journalOp struct {
	what    string
	resolve resolver   // nil for a barrier
	done    chan error // nil for fire-and-forget
	then    notifier   // told once durable (or failed); may be nil
	at      time.Time  // when a barrier was queued (measured journals only)
}

func newJournal(w *wal, ckpt *checkpointer, obs *storeMetrics, log *slog.Logger) *journal {
	j := &journal{log: log, wal: w, ckpt: ckpt, obs: obs, wake: make(chan struct{}, 1), done: make(chan struct{})}
	go j.loop()
	return j
}

// submit queues fn. With wait it returns once fn is durable (or failed);
// without, it returns at once and failures are only logged.
func (j *journal) submit(what string, fn func(dst []walMut) []walMut, wait bool) error {
	op := journalOp{what: what}
	if fn != nil {
		op.resolve = resolveFunc(fn)
	}
	if wait {
		op.done = make(chan error, 1)
	}
	return j.enqueue(op)
}

// then queues a barrier whose callback runs, on the journal's goroutine,
// once everything submitted before it is durable (or failed).
func (j *journal) then(what string, cb func(error)) { j.notify(what, notifyFunc(cb)) }

// notify is then for a notifier (no closure per barrier).
func (j *journal) notify(what string, n notifier) {
	op := journalOp{what: what, then: n}
	if j.obs != nil {
		op.at = time.Now()
	}
	if err := j.enqueue(op); err != nil {
		n.durable(err)
	}
}

// push queues r without waiting; failures are only logged.
func (j *journal) push(what string, r resolver) { _ = j.enqueue(journalOp{what: what, resolve: r}) }

func (j *journal) enqueue(op journalOp) error {
	what := op.what
	j.mu.Lock()
	if j.closed {
		j.mu.Unlock()
		j.log.Error("broker store closed; write lost", "op", what)
		return errStoreClosed
	}
	j.queue = append(j.queue, op)
	j.mu.Unlock()
	select {
	case j.wake <- struct{}{}:
	default:
	}
	if op.done == nil {
		return nil
	}
	return <-op.done
}

// close lets the loop log everything queued, then stops it.
func (j *journal) close() {
	j.mu.Lock()
	if !j.closed {
		j.closed = true
		select {
		case j.wake <- struct{}{}:
		default:
		}
	}
	j.mu.Unlock()
	<-j.done
}

func (j *journal) loop() {
	defer close(j.done)
	var batch []journalOp
	var errs []error
	var muts []walMut
	for range j.wake {
		for {
			j.mu.Lock()
			n, old := min(len(j.queue), maxJournalBatch), len(j.queue)
			batch = append(batch[:0], j.queue[:n]...)
			j.queue = append(j.queue[:0], j.queue[n:]...)
			clear(j.queue[len(j.queue):old]) // drop the moved ops' references
			closed := j.closed
			j.mu.Unlock()
			if len(batch) == 0 {
				if closed {
					return
				}
				break
			}
			muts, errs = j.commit(batch, muts[:0], errs[:0])
			clear(batch) // drop references to payloads
			clear(muts)
			j.arena.reset()
		}
	}
}

// commit resolves a batch, logs it with one sync, hands it to the
// checkpointer and completes its ops. An op whose mutations bbolt would
// refuse fails alone; a failed log write fails the batch.
func (j *journal) commit(batch []journalOp, muts []walMut, errs []error) ([]walMut, []error) {
	var taken time.Time
	if j.obs != nil {
		taken = time.Now()
		j.obs.batch.Observe(float64(len(batch)))
		for _, op := range batch {
			if !op.at.IsZero() {
				j.obs.queue.Observe(taken.Sub(op.at).Seconds())
			}
		}
	}
	for _, op := range batch {
		var err error
		if op.resolve != nil {
			n0 := len(muts)
			muts = op.resolve.resolve(muts, &j.arena)
			for _, m := range muts[n0:] {
				if err = validMut(m); err != nil {
					break
				}
			}
			if err != nil {
				j.log.Error("broker store write refused", "op", op.what, "error", err)
				clear(muts[n0:])
				muts = muts[:n0]
			}
		}
		errs = append(errs, err)
	}
	if j.obs != nil {
		j.obs.resolve.Observe(time.Since(taken).Seconds())
	}
	var logErr error
	if len(muts) > 0 { // else only barriers or cancelled writes: what they wait for is durable
		lsn, err := j.wal.write(muts)
		if err != nil {
			j.log.Error("broker store write failed", "ops", len(batch), "error", err)
			logErr = err
		} else {
			j.logged.Store(lsn)
			j.ckpt.add(muts, lsn)
		}
	}
	// A barrier reports the last failure before it in its batch.
	var failed error
	for i, op := range batch {
		err := errs[i]
		if err == nil && op.resolve != nil {
			err = logErr
		}
		if err != nil {
			failed = err
		} else if op.resolve == nil {
			err = failed
		}
		if j.obs != nil && !op.at.IsZero() { // before the op's PUBACK can leave
			j.obs.wait.Observe(time.Since(op.at).Seconds())
		}
		op.finish(err)
	}
	return muts, errs
}

func (op journalOp) finish(err error) {
	if op.done != nil {
		op.done <- err
	}
	if op.then != nil {
		op.then.durable(err)
	}
}
