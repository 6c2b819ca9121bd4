// Package queue is the field gateway's store-and-forward queue: a bounded,
// durable FIFO on disk that survives restarts and WAN outages.
//
// Items leave the queue only when the caller acknowledges them (after the
// broker's PUBACK), so a crash between send and acknowledgement sends the
// item again: at-least-once, which the platform's idempotent ingest turns
// into exactly-once storage. Order is kept: Peek returns the oldest items.
//
// The queue is bounded by item count and by bytes. When a new item would
// exceed a bound, the policy decides: DropOldest evicts the oldest items to
// make room (a gateway that must keep recent data), RejectNew refuses the
// new one (a gateway that must keep a gap-free history). Either way the
// caller learns exactly which items were lost, and Stats counts them: the
// queue never drops silently.
package queue

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

// ErrFull is returned by Put under RejectNew when the item does not fit.
var ErrFull = errors.New("queue full")

// Policy says what Put does when the queue is full.
type Policy int

const (
	DropOldest Policy = iota // evict the oldest items to make room
	RejectNew                // refuse the new item with ErrFull
)

// Options bound the queue.
type Options struct {
	MaxItems int   // default 100,000
	MaxBytes int64 // default 256 MiB
	Policy   Policy
}

// Item is one queued message.
type Item struct {
	ID   uint64 // increasing; order of Put
	Data []byte
}

// Stats describe the queue.
type Stats struct {
	Items     int
	Bytes     int64  // payload bytes queued
	Dropped   uint64 // items evicted or refused since the queue was created
	DiskBytes int64  // bytes of the file in use (the file may be larger: bbolt grows it ahead)
}

var (
	bucketItems = []byte("items")
	bucketMeta  = []byte("meta")
	bucketState = []byte("state")
	keyBytes    = []byte("bytes")
	keyCount    = []byte("count")
	keyDropped  = []byte("dropped")
)

// Queue is a durable FIFO. It is safe for concurrent use.
type Queue struct {
	db   *bolt.DB
	opts Options
	mu   sync.Mutex // serializes Put's check-then-evict
}

// Open opens or creates the queue file.
func Open(file string, opts Options) (*Queue, error) {
	if opts.MaxItems <= 0 {
		opts.MaxItems = 100_000
	}
	if opts.MaxBytes <= 0 {
		opts.MaxBytes = 256 << 20
	}
	db, err := bolt.Open(file, 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("open queue %s: %w (is another gateway using this --state directory?)", file, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		if _, err := tx.CreateBucketIfNotExists(bucketItems); err != nil {
			return err
		}
		if _, err := tx.CreateBucketIfNotExists(bucketState); err != nil {
			return err
		}
		_, err := tx.CreateBucketIfNotExists(bucketMeta)
		return err
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open queue %s: %w", file, err)
	}
	return &Queue{db: db, opts: opts}, nil
}

// Close closes the file.
func (q *Queue) Close() error { return q.db.Close() }

// Put appends data durably (the call returns after fsync). It returns the
// items dropped to make room (DropOldest) — the caller reports them — or
// ErrFull (RejectNew). An item larger than the byte bound is refused with
// ErrFull under either policy.
func (q *Queue) Put(data []byte) (dropped []Item, err error) {
	return q.PutWithState(data, nil)
}

// KV is a key and value of the queue's state, which PutWithState updates in
// the same transaction as the enqueue.
type KV struct {
	Key   string
	Value []byte
}

// PutWithState is Put that also sets state keys atomically with the
// enqueue: the gateway keeps each device's hash-chain head this way, so a
// crash can never leave a queued snapshot without its head, or a head
// without its snapshot (which would fork the device's chain).
func (q *Queue) PutWithState(data []byte, state []KV) (dropped []Item, err error) {
	if int64(len(data)) > q.opts.MaxBytes {
		q.countDrop(1)
		return nil, fmt.Errorf("%w: item of %d bytes exceeds the queue's %d-byte bound", ErrFull, len(data), q.opts.MaxBytes)
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	err = q.db.Update(func(tx *bolt.Tx) error {
		items, meta := tx.Bucket(bucketItems), tx.Bucket(bucketMeta)
		n := int(getInt(meta, keyCount))
		size := getInt(meta, keyBytes)
		c := items.Cursor()
		for n+1 > q.opts.MaxItems || size+int64(len(data)) > q.opts.MaxBytes {
			if q.opts.Policy == RejectNew {
				return fmt.Errorf("%w: %d items, %d bytes queued (bounds %d items, %d bytes)", ErrFull, n, size, q.opts.MaxItems, q.opts.MaxBytes)
			}
			k, v := c.First()
			if k == nil {
				break
			}
			dropped = append(dropped, Item{ID: binary.BigEndian.Uint64(k), Data: append([]byte(nil), v...)})
			size -= int64(len(v))
			n--
			if err := c.Delete(); err != nil {
				return err
			}
		}
		// Keys only ever grow: fill pages completely when they split, or
		// bbolt's default (half full) doubles the file for a FIFO.
		items.FillPercent = 1.0
		id, err := items.NextSequence()
		if err != nil {
			return err
		}
		if err := items.Put(key(id), data); err != nil {
			return err
		}
		st := tx.Bucket(bucketState)
		for _, kv := range state {
			if err := st.Put([]byte(kv.Key), kv.Value); err != nil {
				return err
			}
		}
		putInt(meta, keyBytes, size+int64(len(data)))
		putInt(meta, keyCount, int64(n+1))
		if len(dropped) > 0 {
			putInt(meta, keyDropped, getInt(meta, keyDropped)+int64(len(dropped)))
		}
		return nil
	})
	if err != nil && !errors.Is(err, ErrFull) {
		return nil, fmt.Errorf("queue put: %w", err)
	}
	if err != nil {
		q.countDrop(1) // the refusing transaction rolled back; count in its own
	}
	return dropped, err
}

func (q *Queue) countDrop(n int64) {
	q.db.Update(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		putInt(meta, keyDropped, getInt(meta, keyDropped)+n)
		return nil
	})
}

// SetState sets state keys without queueing anything.
func (q *Queue) SetState(state ...KV) error {
	return q.db.Update(func(tx *bolt.Tx) error {
		st := tx.Bucket(bucketState)
		for _, kv := range state {
			if err := st.Put([]byte(kv.Key), kv.Value); err != nil {
				return err
			}
		}
		return nil
	})
}

// State returns the value of a state key, or nil if it was never set.
func (q *Queue) State(k string) ([]byte, error) {
	var v []byte
	err := q.db.View(func(tx *bolt.Tx) error {
		v = append([]byte(nil), tx.Bucket(bucketState).Get([]byte(k))...)
		return nil
	})
	if len(v) == 0 {
		v = nil
	}
	return v, err
}

// Peek returns up to n of the oldest items, oldest first, without removing
// them.
func (q *Queue) Peek(n int) ([]Item, error) {
	var out []Item
	err := q.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketItems).Cursor()
		for k, v := c.First(); k != nil && len(out) < n; k, v = c.Next() {
			out = append(out, Item{ID: binary.BigEndian.Uint64(k), Data: append([]byte(nil), v...)})
		}
		return nil
	})
	return out, err
}

// Ack removes the items with the given IDs (acknowledged by the broker).
// Unknown IDs are ignored: an item may have been evicted meanwhile.
func (q *Queue) Ack(ids ...uint64) error {
	return q.db.Update(func(tx *bolt.Tx) error {
		items, meta := tx.Bucket(bucketItems), tx.Bucket(bucketMeta)
		size, n := getInt(meta, keyBytes), getInt(meta, keyCount)
		for _, id := range ids {
			if v := items.Get(key(id)); v != nil {
				size -= int64(len(v))
				n--
				if err := items.Delete(key(id)); err != nil {
					return err
				}
			}
		}
		putInt(meta, keyBytes, size)
		putInt(meta, keyCount, n)
		return nil
	})
}

// Stats returns the queue's size and drop count.
func (q *Queue) Stats() (Stats, error) {
	var s Stats
	err := q.db.View(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		s.Items = int(getInt(meta, keyCount))
		s.Bytes = getInt(meta, keyBytes)
		s.Dropped = uint64(getInt(meta, keyDropped))
		s.DiskBytes = tx.Size()
		return nil
	})
	return s, err
}

func key(id uint64) []byte {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], id)
	return b[:]
}

func getInt(b *bolt.Bucket, k []byte) int64 {
	v := b.Get(k)
	if len(v) != 8 {
		return 0
	}
	return int64(binary.BigEndian.Uint64(v))
}

func putInt(b *bolt.Bucket, k []byte, v int64) {
	var buf [8]byte
	binary.BigEndian.PutUint64(buf[:], uint64(v))
	b.Put(k, buf[:])
}
