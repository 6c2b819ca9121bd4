package broker

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/maphash"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/bbolt"
)

const (
	// checkpointEvery is how often logged mutations are applied to bbolt.
	// Longer gathers more per bbolt commit, and a delivery acknowledged
	// within it costs no bbolt write at all (its put and delete cancel);
	// the log then holds that much more to replay after a crash. Measured
	// both ways (docs/benchmarks.md): at 100 ms, 2–10 % of the log's
	// fdatasyncs overlap a bbolt commit and are slower (store_seconds
	// {stage="sync",checkpoint="yes"}); at 1 s, a round applies ten times
	// as much in one burst (20–56 ms of CPU on one of two cores), which
	// delayed deliveries more. 100 ms stays.
	checkpointEvery = 100 * time.Millisecond
	// checkpointBacklog and checkpointBacklogBytes: a round starts at once
	// when this many mutations, or bytes of them, wait.
	checkpointBacklog      = 64 << 10
	checkpointBacklogBytes = 16 << 20
)

// checkpointer applies the mutations the journal has logged to bbolt, in
// LSN order, in one transaction per round, and records in the same
// transaction the LSN it has applied (keyWALApplied): replay starts after
// it. bbolt's two fdatasyncs per commit happen here, off the PUBACK path.
type checkpointer struct {
	db    *bbolt.DB
	log   *slog.Logger
	every time.Duration
	crash func(step string) // test hook, see wal.crash
	obs   *storeMetrics     // nil: not measured
	// rounds counts checkpoint transactions' starts and ends: odd while one
	// runs (the log's sync is measured against it).
	rounds atomic.Uint64

	mu      sync.Mutex
	cond    *sync.Cond
	queue   []walMut      // logged, not yet applied; guarded by mu
	qbytes  int           // bytes of keys and values in queue; guarded by mu
	queued  uint64        // LSN of the last batch in queue; guarded by mu
	applied uint64        // every LSN up to this one is in bbolt; guarded by mu
	closing bool          // guarded by mu
	stopped bool          // guarded by mu
	kick    chan struct{} // something was queued: a round within every
	urgent  chan struct{} // a round now (backlog, a waiter, close)
	done    chan struct{}
}

func newCheckpointer(db *bbolt.DB, applied uint64, every time.Duration, crash func(string), log *slog.Logger) *checkpointer {
	c := &checkpointer{db: db, log: log, every: every, crash: crash, applied: applied, queued: applied,
		kick: make(chan struct{}, 1), urgent: make(chan struct{}, 1), done: make(chan struct{})}
	c.cond = sync.NewCond(&c.mu)
	go c.loop()
	return c
}

func (c *checkpointer) hook(step string) {
	if c.crash != nil {
		c.crash(step)
	}
}

// add queues a logged batch (muts are copied; their bytes are not).
func (c *checkpointer) add(muts []walMut, lsn uint64) {
	c.mu.Lock()
	first := len(c.queue) == 0
	c.queue = append(c.queue, muts...)
	for _, m := range muts {
		c.qbytes += len(m.key) + len(m.val)
	}
	c.queued = lsn
	full := len(c.queue) >= checkpointBacklog || c.qbytes >= checkpointBacklogBytes
	c.mu.Unlock()
	if full {
		signal(c.urgent)
	} else if first {
		signal(c.kick)
	}
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// waitApplied returns once every record up to lsn is in bbolt.
func (c *checkpointer) waitApplied(lsn uint64) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.applied < lsn {
		if c.stopped {
			return errStoreClosed
		}
		signal(c.urgent)
		c.cond.Wait()
	}
	return nil
}

// close applies what is queued, then stops.
func (c *checkpointer) close() {
	c.mu.Lock()
	c.closing = true
	c.mu.Unlock()
	signal(c.urgent)
	<-c.done
}

func (c *checkpointer) loop() {
	defer close(c.done)
	// Idle, the loop sleeps until something is queued; then a round
	// gathers for every (or less, if urgent).
	t := time.NewTimer(c.every)
	t.Stop()
	for {
		select {
		case <-c.kick:
			t.Reset(c.every)
			select {
			case <-t.C:
			case <-c.urgent:
				t.Stop()
			}
		case <-c.urgent:
		}
		c.mu.Lock()
		muts, lsn, closing := c.queue, c.queued, c.closing
		c.queue, c.qbytes = nil, 0
		c.mu.Unlock()
		var err error
		if len(muts) > 0 {
			if err = c.apply(muts, lsn); err != nil {
				// The log still holds them: retry, and replay after a
				// restart if it never succeeds.
				c.log.Error("broker store checkpoint failed; retrying", "mutations", len(muts), "error", err)
			}
		}
		c.mu.Lock()
		if err != nil {
			c.queue = append(muts, c.queue...)
			for _, m := range muts {
				c.qbytes += len(m.key) + len(m.val)
			}
		} else if len(muts) > 0 {
			c.applied = lsn
		}
		stop := closing && (len(c.queue) == 0 || err != nil)
		c.stopped = stop
		c.cond.Broadcast()
		c.mu.Unlock()
		if stop {
			return
		}
		if err != nil { // the queue is not empty: retry within every
			signal(c.kick)
		}
	}
}

// apply writes muts to bbolt in one durable transaction with lsn.
func (c *checkpointer) apply(muts []walMut, lsn uint64) error {
	c.rounds.Add(1)
	t0 := time.Now()
	defer func() {
		c.rounds.Add(1)
		if c.obs != nil {
			c.obs.checkpoint.Observe(time.Since(t0).Seconds())
		}
	}()
	err := c.db.Update(func(tx *bbolt.Tx) error {
		if err := applyMuts(tx.Bucket([]byte(bucketName)), muts, lsn); err != nil {
			return err
		}
		c.hook("checkpoint:in-tx")
		return nil
	})
	if err != nil {
		return err
	}
	c.hook("checkpoint:after-commit")
	return nil
}

// applyMuts applies muts in order and records lsn as applied. A put or
// delete that a later put or delete of the same key overrides is skipped:
// the key's final state does not depend on it (a prefix deletion in
// between could only delete it too).
//
// The overrides are found by the keys' hashes (a string key per mutation
// was one allocation each): a mutation is skipped only if the last one
// with its hash has its very key, so a collision costs a redundant write,
// never a lost one.
func applyMuts(b *bbolt.Bucket, muts []walMut, lsn uint64) error {
	seed := maphash.MakeSeed()
	last := make(map[uint64]int, len(muts))
	for i, m := range muts {
		if m.op != mutDeletePrefix {
			last[maphash.Bytes(seed, m.key)] = i
		}
	}
	overridden := func(i int, key []byte) bool {
		j := last[maphash.Bytes(seed, key)]
		return j != i && bytes.Equal(muts[j].key, key)
	}
	for i, m := range muts {
		var err error
		switch m.op {
		case mutPut:
			if overridden(i, m.key) {
				continue
			}
			err = b.Put(m.key, m.val)
		case mutDelete:
			if overridden(i, m.key) {
				continue
			}
			err = b.Delete(m.key)
		case mutDeletePrefix:
			err = deletePrefix(b, m.key)
		default:
			err = fmt.Errorf("unknown mutation %d", m.op)
		}
		if err != nil {
			return fmt.Errorf("apply %q: %w", logTopic(string(m.key)), err)
		}
	}
	var v [8]byte
	binary.BigEndian.PutUint64(v[:], lsn)
	return b.Put([]byte(keyWALApplied), v[:])
}

func deletePrefix(b *bbolt.Bucket, p []byte) error {
	c := b.Cursor()
	var doomed [][]byte
	for k, _ := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, _ = c.Next() {
		doomed = append(doomed, append([]byte(nil), k...))
	}
	for _, k := range doomed {
		if err := b.Delete(k); err != nil {
			return err
		}
	}
	return nil
}
