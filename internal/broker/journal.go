package broker

import (
	"errors"
	"log/slog"
	"sync"
	"time"

	"go.etcd.io/bbolt"
)

// groupCommit is how long a batch gathers before it is committed.
const groupCommit = 2 * time.Millisecond

// maxJournalBatch bounds the operations committed in one transaction, so a
// backlog becomes several fsyncs of bounded size rather than one huge one.
const maxJournalBatch = 8192

var errStoreClosed = errors.New("broker store closed")

// journal is the store's single writer. Operations are applied in the
// order they were submitted, grouped into one durable (fsync'd) bbolt
// transaction per batch: while one batch commits, the next accumulates.
//
// Order is the point: an asynchronous operation (submit with wait=false)
// is durable no later than every operation submitted after it. So writers
// never wait: a publish queues its subscribers' entries, and its
// acknowledgement is a barrier callback (then) that runs once they — and
// everything before them — are on disk. Many publishers' acknowledgements
// share one fsync (group commit).
type journal struct {
	db  *bbolt.DB
	log *slog.Logger

	mu     sync.Mutex
	queue  []journalOp // guarded by mu
	closed bool        // guarded by mu
	wake   chan struct{}
	done   chan struct{} // closed when the loop has drained and exited
}

type journalOp struct {
	what  string
	apply func(b *bbolt.Bucket) error // nil for a barrier
	done  chan error                  // nil for fire-and-forget
	then  func(error)                 // called once durable (or failed); may be nil
}

func newJournal(db *bbolt.DB, log *slog.Logger) *journal {
	j := &journal{db: db, log: log, wake: make(chan struct{}, 1), done: make(chan struct{})}
	go j.loop()
	return j
}

// submit queues fn. With wait it returns once fn is durable (or failed);
// without, it returns at once and failures are only logged.
func (j *journal) submit(what string, fn func(b *bbolt.Bucket) error, wait bool) error {
	op := journalOp{what: what, apply: fn}
	if wait {
		op.done = make(chan error, 1)
	}
	return j.enqueue(op)
}

// then queues a barrier whose callback runs, on the journal's goroutine,
// once everything submitted before it is durable (or failed).
func (j *journal) then(what string, cb func(error)) {
	if err := j.enqueue(journalOp{what: what, then: cb}); err != nil {
		cb(err)
	}
}

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

// close lets the loop commit everything queued, then stops it.
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
	for range j.wake {
		// Group commit: let a batch gather for a moment. Writes that are
		// undone meanwhile (a delivery acknowledged before its record hit
		// the disk) then cost nothing, and one fsync covers every
		// publisher that arrived in the window. Only acknowledgements to
		// publishers wait for it; deliveries do not.
		for {
			j.mu.Lock()
			n := min(len(j.queue), maxJournalBatch)
			batch = append(batch[:0], j.queue[:n]...)
			j.queue = append(j.queue[:0], j.queue[n:]...)
			closed := j.closed
			j.mu.Unlock()
			if len(batch) == 0 {
				if closed {
					return
				}
				break
			}
			j.commit(batch)
			clear(batch) // drop references to payloads
		}
	}
}

// commit applies a batch in one transaction. If that fails, every op is
// retried in its own transaction so one bad op cannot take the others
// down with it (bbolt's Batch does the same).
func (j *journal) commit(batch []journalOp) {
	writes := false
	for _, op := range batch {
		writes = writes || op.apply != nil
	}
	if !writes { // only barriers: what they wait for is already durable
		for _, op := range batch {
			op.finish(nil)
		}
		return
	}
	err := j.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket([]byte(bucketName))
		for _, op := range batch {
			if op.apply == nil {
				continue
			}
			if err := op.apply(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil {
		for _, op := range batch {
			op.finish(nil)
		}
		return
	}
	// Retry one by one so one bad op cannot take the others down; a
	// barrier reports the first failure before it.
	var failed error
	for _, op := range batch {
		var err error
		if op.apply != nil {
			err = j.db.Update(func(tx *bbolt.Tx) error { return op.apply(tx.Bucket([]byte(bucketName))) })
			if err != nil {
				j.log.Error("broker store write failed", "op", op.what, "error", err)
				failed = err
			}
		} else {
			err = failed
		}
		op.finish(err)
	}
}

func (op journalOp) finish(err error) {
	if op.done != nil {
		op.done <- err
	}
	if op.then != nil {
		op.then(err)
	}
}
