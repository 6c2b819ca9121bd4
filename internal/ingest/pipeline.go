package ingest

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/fieldtrust/fieldtrust/internal/ledger"
	"github.com/fieldtrust/fieldtrust/internal/snapshot"
	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/topic"
)

// message is one delivery, as received.
type message struct {
	topic   string
	payload []byte
	qos     byte
	ack     func()
	at      time.Time
}

// queue carries deliveries from paho's router to the pipeline. It never
// blocks the router: QoS 1 deliveries fit by the broker's in-flight
// bound, QoS 0 ones have a share of their own (qos0Cap) and are dropped
// beyond it.
type queue struct {
	ch      chan *message
	qos0    atomic.Int64 // QoS 0 messages in ch
	qos0Cap int64
	// pending holds the receive times of messages received and not yet
	// acknowledged, oldest first: the ingest lag is the age of the first.
	mu      sync.Mutex
	pending []time.Time
}

func newQueue(size, qos0 int) *queue {
	return &queue{ch: make(chan *message, size+qos0), qos0Cap: int64(qos0)}
}

// done removes the first n pending messages (acknowledged or abandoned).
func (q *queue) done(n int) {
	q.mu.Lock()
	q.pending = q.pending[min(n, len(q.pending)):]
	q.mu.Unlock()
}

// lag returns the number of pending messages and the receive time of the
// oldest.
func (q *queue) lag() (int, time.Time) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.pending) == 0 {
		return 0, time.Time{}
	}
	return len(q.pending), q.pending[0]
}

// errQueueFull ends a connection on which the broker sent more QoS 1
// messages than ingest's queue holds.
var errQueueFull = errors.New("the broker sent more unacknowledged messages than ingest's queue holds; reconnecting (it redelivers what was not acknowledged)")

// enqueue is paho's handler: it must not block.
func (p *processor) enqueue(q *queue, in mqtt.Message) error {
	p.m.received.Inc()
	m := &message{topic: in.Topic(), payload: in.Payload(), qos: in.Qos(), ack: in.Ack, at: p.cfg.Now()}
	if m.qos == 0 {
		if q.qos0.Add(1) > q.qos0Cap {
			q.qos0.Add(-1)
			p.m.dropped.Inc()
			p.dropLog.Do(func() {
				p.log.Warn("ingest drops QoS 0 snapshot messages beyond its queue; gateways publish QoS 1", "topic", m.topic)
			})
			return nil
		}
	}
	q.mu.Lock()
	select {
	case q.ch <- m:
		q.pending = append(q.pending, m.at)
		q.mu.Unlock()
		return nil
	default:
		q.mu.Unlock()
		if m.qos == 0 {
			q.qos0.Add(-1)
			p.m.dropped.Inc()
			return nil
		}
		return errQueueFull
	}
}

// item is a message on its way through a batch.
type item struct {
	msg *message
	// opened is closed when a worker is done with the message; unopened
	// says it skipped it (the connection ended), so that it never counts
	// as processed.
	opened   chan struct{}
	unopened bool
	// Set by open (in parallel).
	gw       string
	snap     *snapshot.Snapshot
	hash     [32]byte
	signer   string
	signedAt time.Time
	rerr     *rejectErr // the message is to be rejected
	// Set by commit.
	done   bool // every effect of the message is durable
	stored bool // rec is stored
	rec    *store.SnapshotRecord
	leaf   []byte
	events []store.IntegrityEvent // to record
	dup    bool
	held   bool // a gap within Config.HoldGaps: not stored, not acknowledged
}

// batch is what is committed in one go.
type batch struct {
	items []*item
	// prep is the batch's classification, set by the committer before the
	// store stage takes the batch (nil: classify when storing).
	prep *prepared
	// merged is the classification whose heads the batch's commit kept
	// (nil after a fork found at insert, which drops the cached heads);
	// headsDone is set once the heads are kept, so a batch prepared later
	// sees them in the cache.
	merged    *prepared
	headsDone atomic.Bool
	// stored: the snapshots are stored and the classification final;
	// what is left are events and rejects.
	stored bool
	// What the batch recorded, for Config.Committed.
	events  []store.IntegrityEvent
	rejects []store.Reject
}

// pipeline runs one connection's messages until connCtx ends. A feeder
// hands each delivery, in arrival order, to the workers, which open and
// decode it as soon as it arrives, and to the committer (the caller),
// which takes the opened messages in arrival order in batches, commits
// and acknowledges them. So the workers open what arrives while a batch
// commits, and a batch's messages are opened by the time it is complete
// (before, a batch was opened only once it was complete, and the last
// message's open held both the next batch and the committer up).
func (p *processor) pipeline(ctx, connCtx context.Context, q *queue) {
	// order holds what is received and not yet in a batch: the next batch
	// being opened (and one more), as many as the earlier pipeline held
	// beyond the queue. When it is full the feeder waits, and the queue
	// bounds the rest as before.
	order := make(chan *item, 2*p.cfg.BatchSize)
	work := make(chan *item, 3*p.cfg.BatchSize)
	var wg sync.WaitGroup
	wg.Go(func() {
		defer close(work)
		defer close(order)
		for {
			var m *message
			select {
			case <-connCtx.Done():
				return
			case m = <-q.ch:
			}
			if m.qos == 0 {
				q.qos0.Add(-1)
			}
			it := &item{msg: m, opened: make(chan struct{})}
			for _, ch := range []chan *item{order, work} {
				select {
				case ch <- it:
				case <-connCtx.Done():
					return
				}
			}
		}
	})
	for range p.cfg.Workers {
		wg.Go(func() {
			var dc snapshot.Decoder // the worker's channel names
			for it := range work {
				if connCtx.Err() == nil {
					p.open(ctx, it, &dc)
				} else {
					it.unopened = true // never committed: nextBatch ends first
				}
				close(it.opened)
			}
		})
	}
	defer wg.Wait()
	// The committer is three stages: this goroutine takes each batch and
	// prepares it (classification against the chain heads the batch
	// before it leaves, and the ledger lookup) while the store stage
	// writes the batch before it (ledger append, insert, events and
	// rejects), and the ack stage acknowledges the batches stored (paho
	// writes a packet per acknowledgement: 256 writes per batch, which
	// held the store stage up). Batches are stored one at a time, in
	// order, and a batch is acknowledged only after its own commit.
	toStore := make(chan *batch)
	toAck := make(chan *batch, 2)
	var sg sync.WaitGroup
	sg.Go(func() {
		defer close(toAck)
		p.storeStage(ctx, connCtx, toStore, toAck)
	})
	sg.Go(func() { p.ackStage(q, toAck) })
	defer sg.Wait()
	defer close(toStore)
	var prev *batch        // the batch handed to the store stage last
	var prevPrep *prepared // its classification (the store stage owns prev.prep)
	prevAppended := true   // its new leaves were in the ledger when handed over
	for {
		b := p.nextBatch(connCtx, order)
		if b == nil {
			return
		}
		// A batch that cannot be prepared now is prepared again by the
		// store stage, in order (its error is that stage's to retry).
		// With a store that takes concurrent writers, the batch's new
		// leaves are appended now, while the one before is inserted, if
		// that one's leaves are in the ledger already: leaves stay in
		// arrival order.
		ahead := p.appendAhead && (prevAppended || prev.headsDone.Load())
		if err := p.prepare(ctx, b, prev, prevPrep, ahead); err != nil {
			b.prep = nil
		}
		t, pr := time.Now(), b.prep
		appended := pr != nil && pr.appended
		select {
		case toStore <- b:
			prev, prevPrep, prevAppended = b, pr, appended
			p.m.stage(stageHandoff, t)
		case <-connCtx.Done():
			return
		}
	}
	// What is left is not acknowledged on this connection (the broker
	// redelivers it); the feeder and the workers end with connCtx.
}

// storeStage stores the prepared batches in order, and acknowledges each
// once its outcome is durable. A batch prepared against the chain heads
// of a batch before it that did not commit as prepared (a failed attempt,
// a fork found at insert) is classified again.
func (p *processor) storeStage(ctx, connCtx context.Context, in <-chan *batch, acks chan<- *batch) {
	var prev *batch
	t := time.Now()
	for b := range in {
		p.m.stage(stageStoreWait, t)
		if prev != nil && b.prep != nil && !b.prep.sawDone && (b.prep.afterID == 0 || prev.merged == nil || b.prep.afterID != prev.merged.id) {
			// Prepared against heads the batch before did not keep.
			b.prep = nil
		}
		if !p.commitWithRetry(ctx, connCtx, b) {
			for range in { // the committer stops with connCtx
			}
			return
		}
		t = time.Now()
		p.committed(b)
		t = p.m.stage(stageCommitted, t)
		acks <- b // the ack stage never waits for anything but paho
		t = p.m.stage(stageAckHandoff, t)
		prev = b
	}
}

// ackStage acknowledges the stored batches, in order.
func (p *processor) ackStage(q *queue, in <-chan *batch) {
	for b := range in {
		t := time.Now()
		for _, it := range b.items {
			if !it.held { // held: the broker delivers it again
				it.msg.ack() // a no-op for QoS 0, and on a lost connection (the broker redelivers)
			}
		}
		q.done(len(b.items))
		p.m.stage(stageAck, t)
	}
}

// nextBatch takes up to BatchSize opened messages in arrival order,
// waiting at most BatchWait after the first for more to arrive (and for
// those that arrived to be opened); nil when connCtx ends.
func (p *processor) nextBatch(connCtx context.Context, order <-chan *item) *batch {
	var items []*item
	take := func(it *item, ok bool) bool {
		if !ok {
			return false
		}
		select {
		case <-it.opened:
		case <-connCtx.Done():
			return false
		}
		if it.unopened || connCtx.Err() != nil {
			return false
		}
		items = append(items, it)
		return true
	}
	t := time.Now()
	select {
	case it, ok := <-order:
		if !take(it, ok) {
			return nil
		}
	case <-connCtx.Done():
		return nil
	}
	t = p.m.stage(stageIdle, t)
	defer p.m.stage(stageWait, t)
	timer := time.NewTimer(p.cfg.BatchWait)
	defer timer.Stop()
	for len(items) < p.cfg.BatchSize {
		select {
		case it, ok := <-order:
			if !take(it, ok) {
				return nil
			}
		case <-timer.C:
			return &batch{items: items}
		case <-connCtx.Done():
			return nil
		}
	}
	return &batch{items: items}
}

// committed tells Config.Committed what the batch made durable: the
// snapshots stored for the first time, the integrity events and the
// rejects of messages that named their gateway.
func (p *processor) committed(b *batch) {
	if p.cfg.Committed == nil {
		return
	}
	var snaps []store.SnapshotRecord
	for _, it := range b.items {
		if it.stored && it.rec != nil {
			snaps = append(snaps, *it.rec)
		}
	}
	p.cfg.Committed(snaps, b.events, b.rejects)
}

// open is the per-message work that needs no state: topic, envelope,
// signer, snapshot decoding.
func (p *processor) open(ctx context.Context, it *item, dc *snapshot.Decoder) {
	reject := func(reason, gw string, err error) { it.rerr = &rejectErr{reason, gw, err} }
	gw, err := gatewayOf(it.msg.topic)
	if err != nil {
		reject(ReasonBadTopic, "", err)
		return
	}
	it.gw = gw
	opened, err := p.cfg.Opener.Open(ctx, it.msg.payload)
	if err != nil {
		reject(reasonOfOpen(err), gw, err)
		return
	}
	if opened.Signer != gw {
		reject(ReasonWrongDevice, gw, fmt.Errorf("signed by %q but published on %s's topic", opened.Signer, gw))
		return
	}
	s, err := dc.Decode(opened.Content)
	if err != nil {
		reject(ReasonMalformedSnapshot, gw, err)
		return
	}
	// snapshot.Hash is SHA-256 of the encoding, which Open computed
	// already (TestIngestRejectsAndIsolation holds the two together).
	it.snap, it.hash = s, opened.ContentHash
	it.signer, it.signedAt = signerName(opened.SignerCert), opened.SigningTime
}

// commitWithRetry commits the batch, retrying with backoff while the
// connection lasts. It reports whether the batch is done (and may be
// acknowledged).
func (p *processor) commitWithRetry(ctx, connCtx context.Context, batch *batch) bool {
	delay := p.cfg.RetryMin
	for attempt := 1; ; attempt++ {
		err := p.commit(ctx, batch)
		if err == nil {
			p.cfg.Status.committed()
			return true
		}
		if ctx.Err() != nil {
			return false
		}
		p.m.batchFailures.Inc()
		p.cfg.Status.failed(attempt)
		p.log.Error("ingest: storing a batch failed; retrying (its messages stay unacknowledged)",
			"messages", len(batch.items), "attempt", attempt, "retry_in", delay, "err", err)
		select {
		case <-connCtx.Done():
			return false
		case <-time.After(delay):
		}
		delay = min(2*delay, p.cfg.RetryMax)
	}
}

type deviceKey struct{ gateway, device string }

// processor holds what lives across batches and connections: the chain
// heads (a cache of the store's), the reject budgets and the metrics. It
// is used by one committer at a time, whose two stages share the heads
// (headsMu): the stage that prepares a batch reads them while the one
// that stores the batch before it moves them.
type processor struct {
	cfg      Config
	log      *slog.Logger
	m        *metrics
	headsMu  sync.Mutex
	heads    map[deviceKey]*snapshot.Head
	headsGen uint64 // counts clearHeads: a head read before is not cached
	budget   *rejectBudget
	dropLog  sync.Once
	// appendAhead: the store takes concurrent writers (ConcurrentWrites),
	// so a batch's ledger append may run while the batch before it is
	// inserted.
	appendAhead bool
	preps       atomic.Uint64 // numbers the classifications (prepared.id)
	// holdUntil ends the current connection's Config.HoldGaps; set by
	// the connection before its pipeline runs, read by its committer.
	holdUntil time.Time
}

// ConcurrentWrites is what a Store implements that runs write
// transactions concurrently (PostgreSQL; SQLite has one writer, where a
// second waits for the first's lock).
type ConcurrentWrites interface{ ConcurrentWrites() bool }

func newProcessor(cfg Config) *processor {
	cw, ok := cfg.Store.(ConcurrentWrites)
	return &processor{
		appendAhead: ok && cw.ConcurrentWrites(),
		cfg:         cfg, log: cfg.Logger, m: newMetrics(cfg.Registerer, cfg.Status),
		heads:  map[deviceKey]*snapshot.Head{},
		budget: newRejectBudget(cfg.RejectBurst, cfg.RejectEvery),
	}
}

// commit makes the outcome of every message of the batch durable: stored
// snapshots (ledger first), integrity events, rejects. Effects that
// succeeded are not repeated when a failed commit is retried.
func (p *processor) commit(ctx context.Context, b *batch) error {
	if err := p.storeSnapshots(ctx, b); err != nil {
		return err
	}
	defer p.m.stage(stageRecord, time.Now())
	now := p.cfg.Now()
	recorded := false
	for _, it := range b.items {
		if it.done {
			continue
		}
		for len(it.events) > 0 {
			if err := p.cfg.Store.RecordIntegrityEvent(ctx, it.events[0]); err != nil {
				return fmt.Errorf("record integrity event: %w", err)
			}
			b.events = append(b.events, it.events[0])
			p.m.events.WithLabelValues(it.events[0].Kind).Inc()
			it.events = it.events[1:]
		}
		switch {
		case it.rerr != nil:
			rec, err := p.reject(ctx, it, now)
			if err != nil {
				return err
			}
			recorded = recorded || rec
			if it.rerr.gateway != "" {
				sum := sha256.Sum256(it.msg.payload)
				b.rejects = append(b.rejects, store.Reject{Topic: it.msg.topic, Gateway: it.rerr.gateway, Reason: it.rerr.reason, RawHash: sum[:], Size: len(it.msg.payload), At: it.msg.at})
			}
		case it.dup:
			p.m.duplicates.Inc()
		case it.stored:
			p.m.accepted.Inc()
		}
		it.done = true
	}
	if err := p.flushSummaries(ctx); err != nil {
		return err
	}
	if recorded {
		if n, err := p.cfg.Store.TrimRejects(ctx, p.cfg.MaxRejects); err != nil {
			return err
		} else if n > 0 {
			p.log.Info("ingest: oldest rejects deleted to keep the table bounded", "deleted", n, "max", p.cfg.MaxRejects)
		}
	}
	return nil
}

// prepared is a batch's classification, before it is stored: the chain
// heads it moves (staged), its candidates to store and the ledger
// indexes of those already in the log.
type prepared struct {
	staged  map[deviceKey]*snapshot.Head
	inBatch map[snapshotKey]bool // the candidates
	cands   []*item
	found   map[string]uint64
	// appended: the candidates' ledger indexes are set (the new leaves
	// appended).
	appended bool
	// id names the classification (processor.preps). after is the
	// classification of the batch before, which was not stored yet when
	// this one was prepared, while it is prepared (then nil: a chain of
	// them would keep every batch); afterID names it. sawDone: the batch
	// before was stored, and its heads were in the cache.
	id, afterID uint64
	after       *prepared
	sawDone     bool
}

// headOf is the chain head of a device as the batch sees it: moved by
// the batch itself, by the batch before it, or the stored (cached) one.
func (p *processor) headOf(ctx context.Context, pr *prepared, key deviceKey) (*snapshot.Head, error) {
	if h := pr.staged[key]; h != nil {
		return h, nil
	}
	if pr.after != nil {
		if h := pr.after.staged[key]; h != nil {
			return h, nil
		}
	}
	return p.head(ctx, key)
}

// candidate reports whether a snapshot is to be stored by the batch or
// by the one before it (the store does not have it yet).
func (pr *prepared) candidate(k snapshotKey) bool {
	return pr.inBatch[k] || (pr.after != nil && pr.after.inBatch[k])
}

// prepare classifies the batch's messages that are not yet classified
// and looks their ledger leaves up. prev is the batch before it, which may
// be committing meanwhile (prevPrep its classification): its staged heads
// and candidates count as if stored. The classification counts only once
// the batch is stored.
//
// If ledgerAhead, it also looks the batch's leaves up in the ledger and
// appends the new ones. Otherwise the store stage does, on the connection
// of its write transaction: with SQLite, whose page cache is per
// connection and dropped when another connection commits, a lookup on a
// second connection read the index pages again for every batch.
func (p *processor) prepare(ctx context.Context, b, prev *batch, prevPrep *prepared, ledgerAhead bool) error {
	pr := &prepared{staged: map[deviceKey]*snapshot.Head{}, inBatch: map[snapshotKey]bool{}, id: p.preps.Add(1)}
	switch {
	case prev == nil:
		pr.sawDone = true // the store stage has nothing before it
	case prev.headsDone.Load():
		pr.sawDone = true
	case prevPrep != nil: // else it could not be prepared: then this is never valid
		pr.after, pr.afterID = prevPrep, prevPrep.id
	}
	defer func() { pr.after = nil }()
	b.prep = pr
	t := time.Now()
	for _, it := range b.items {
		if it.stored || it.snap == nil {
			continue // stored by an earlier attempt, or rejected before classification
		}
		it.rec, it.dup, it.rerr, it.events, it.held = nil, false, nil, nil, false
		if err := p.classify(ctx, it, pr); err != nil {
			return err
		}
		if it.rec != nil {
			pr.cands = append(pr.cands, it)
		}
	}
	p.m.stage(stageClassify, t)
	if ledgerAhead {
		return p.ledger(ctx, pr)
	}
	return nil
}

// ledger looks the candidates' leaves up in the ledger, appends those
// that are not in it yet, and sets every candidate's ledger index.
func (p *processor) ledger(ctx context.Context, pr *prepared) error {
	if len(pr.cands) == 0 {
		pr.appended = true
		return nil
	}
	// Ledger first, idempotently: a redelivered snapshot finds its leaf.
	t := time.Now()
	leaves := make([][]byte, len(pr.cands))
	for i, it := range pr.cands {
		leaves[i] = it.leaf
	}
	found, err := p.cfg.Ledger.FindAll(ctx, leaves)
	t = p.m.stage(stageLedgerLookup, t)
	if err != nil {
		return fmt.Errorf("ledger lookup: %w", err)
	}
	pr.found = found
	var fresh [][]byte
	var freshItems []*item
	for _, it := range pr.cands {
		if idx, ok := pr.found[string(it.leaf)]; ok {
			it.rec.LedgerIndex = idx
		} else {
			fresh = append(fresh, it.leaf)
			freshItems = append(freshItems, it)
		}
	}
	if len(fresh) > 0 {
		at, _, _, err := p.cfg.Ledger.Append(ctx, fresh)
		p.m.stage(stageLedgerAppend, t)
		if err != nil {
			return fmt.Errorf("ledger append: %w", err)
		}
		for k, it := range freshItems {
			it.rec.LedgerIndex = at + uint64(k)
		}
	}
	pr.appended = true
	return nil
}

// storeSnapshots records the batch's new snapshots in the ledger and
// stores them, in one transaction, classifying the batch first unless it
// was prepared. Until it succeeds its classification does not count: the
// chain heads it moves are staged and kept only then, and a retry
// classifies again.
func (p *processor) storeSnapshots(ctx context.Context, b *batch) error {
	if b.stored {
		return nil
	}
	pr := b.prep
	b.prep = nil // a retry classifies again
	if pr == nil {
		if err := p.prepare(ctx, b, nil, nil, false); err != nil {
			return err
		}
		pr, b.prep = b.prep, nil
	}
	if len(pr.cands) == 0 {
		p.keep(b, pr)
		return nil
	}
	if !pr.appended {
		if err := p.ledger(ctx, pr); err != nil {
			return err
		}
	}
	t := time.Now()
	recs := make([]store.SnapshotRecord, len(pr.cands))
	for i, it := range pr.cands {
		recs[i] = *it.rec
	}
	_, err := p.cfg.Store.InsertSnapshots(ctx, recs)
	p.m.stage(stageInsert, t)
	if errors.Is(err, store.ErrExists) {
		// Some snapshot conflicts with a stored one of the same seq (a
		// fork the chain check could not see, e.g. below the head): store
		// the rest one by one and reject the conflicting ones.
		p.clearHeads()
		if err := p.insertEach(ctx, pr.cands); err != nil {
			return err
		}
		p.keep(b, nil)
		return nil
	}
	if err != nil {
		return fmt.Errorf("store snapshots: %w", err)
	}
	for _, it := range pr.cands {
		it.stored = true
	}
	p.keep(b, pr)
	return nil
}

// keep ends a batch's storing: the heads its classification moved are
// cached (pr nil: the cache was dropped instead).
func (p *processor) keep(b *batch, pr *prepared) {
	if pr != nil {
		p.mergeHeads(pr.staged)
	}
	b.stored, b.merged = true, pr
	b.headsDone.Store(true)
}

// insertEach stores candidates one by one; one that conflicts with a
// stored snapshot becomes a fork reject. On an error, those stored so far
// stay stored and a retry classifies the rest again.
func (p *processor) insertEach(ctx context.Context, cands []*item) error {
	for _, it := range cands {
		_, err := p.cfg.Store.InsertSnapshots(ctx, []store.SnapshotRecord{*it.rec})
		if errors.Is(err, store.ErrExists) {
			rec := it.rec
			it.rec, it.snap = nil, nil // rejected: not to be classified again
			it.events = append(it.events, store.IntegrityEvent{
				Gateway: rec.Gateway, Device: rec.Device, Kind: store.EventFork, Seq: rec.Seq, Hash: rec.Hash,
				Detail: "another snapshot with this seq is stored", At: p.cfg.Now(),
			})
			it.rerr = &rejectErr{ReasonFork, rec.Gateway, fmt.Errorf("seq %d of %s conflicts with a stored snapshot", rec.Seq, rec.Device)}
			continue
		}
		if err != nil {
			return fmt.Errorf("store snapshot: %w", err)
		}
		it.stored = true
	}
	return nil
}

// classify relates a decoded snapshot to its device's chain: it becomes a
// candidate to store (it.rec), a redelivery (it.dup) or a fork reject, with
// the integrity events to record. pr holds the candidates classified
// before it in the same batch and the one before, which the store does
// not have yet.
func (p *processor) classify(ctx context.Context, it *item, pr *prepared) error {
	s, gw, hash := it.snap, it.gw, it.hash
	key := deviceKey{gw, s.Device}
	head, err := p.headOf(ctx, pr, key)
	if err != nil {
		return err
	}
	now := p.cfg.Now()
	event := func(kind string, expected uint64, detail string) {
		p.log.Warn("integrity event", "kind", kind, "gateway", gw, "device", s.Device, "seq", s.Seq, "expected", expected, "detail", detail)
		it.events = append(it.events, store.IntegrityEvent{
			Gateway: gw, Device: s.Device, Kind: kind, Seq: s.Seq, ExpectedSeq: expected, Hash: hash[:], Detail: detail, At: now,
		})
	}
	link := snapshot.Classify(head, s, hash)
	switch link {
	case snapshot.LinkDuplicate:
		it.dup = true
		return nil
	case snapshot.LinkFork:
		event(store.EventFork, expectedAfter(head), "conflicts with the stored chain")
		it.rerr = &rejectErr{ReasonFork, gw, fmt.Errorf("seq %d of %s forks the chain", s.Seq, s.Device)}
		return nil
	case snapshot.LinkGap:
		if now.Before(p.holdUntil) && it.msg.qos > 0 {
			// Not yet: the missing snapshot may be a redelivery still on
			// its way (a session taken over from a dead node).
			it.held = true
			p.m.held.Inc()
			p.log.Debug("ingest: gap held for redelivery", "gateway", gw, "device", s.Device, "seq", s.Seq, "expected", expectedAfter(head))
			return nil
		}
		event(store.EventGap, expectedAfter(head), fmt.Sprintf("%d snapshot(s) missing", s.Seq-expectedAfter(head)))
	case snapshot.LinkStale:
		// Below the head: a redelivery of a stored snapshot, or a late one
		// that fills a gap (a conflicting one fails at insert: a fork).
		// The original may be earlier in this very batch.
		if pr.candidate(snapshotKey{gw, hash}) {
			it.dup = true
			return nil
		}
		if _, err := p.cfg.Store.SnapshotByHash(ctx, gw, hash[:]); err == nil {
			it.dup = true
			return nil
		} else if !errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("look up snapshot: %w", err)
		}
		event(store.EventStale, expectedAfter(head), "arrived after a later snapshot")
	}
	if link != snapshot.LinkStale {
		pr.staged[key] = &snapshot.Head{Seq: s.Seq, Hash: hash}
	}
	it.rec = &store.SnapshotRecord{
		Gateway: gw, Device: s.Device, DeviceType: s.DeviceType, Seq: s.Seq, Time: s.Time(),
		Hash: hash[:], Prev: s.Prev, Values: s.Values,
		Signer: it.signer, SignedAt: it.signedAt, ReceivedAt: it.msg.at,
	}
	it.leaf = ledger.LeafData(gw, hash)
	pr.inBatch[snapshotKey{gw, hash}] = true
	return nil
}

// snapshotKey names a snapshot within a gateway's scope, as the store's
// SnapshotByHash does.
type snapshotKey struct {
	gateway string
	hash    [32]byte
}

func expectedAfter(h *snapshot.Head) uint64 {
	if h == nil {
		return 1
	}
	return h.Seq + 1
}

// head is a device's stored chain head, through the cache.
func (p *processor) head(ctx context.Context, key deviceKey) (*snapshot.Head, error) {
	p.headsMu.Lock()
	h, ok := p.heads[key]
	gen := p.headsGen
	p.headsMu.Unlock()
	if ok {
		return h, nil
	}
	seq, hash, err := p.cfg.Store.DeviceHead(ctx, key.gateway, key.device)
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("device head: %w", err)
	}
	h = &snapshot.Head{Seq: seq}
	copy(h.Hash[:], hash)
	p.headsMu.Lock()
	if _, moved := p.heads[key]; !moved && gen == p.headsGen {
		p.heads[key] = h
	}
	p.headsMu.Unlock()
	return h, nil
}

// mergeHeads keeps the chain heads a stored batch moved.
func (p *processor) mergeHeads(staged map[deviceKey]*snapshot.Head) {
	p.headsMu.Lock()
	defer p.headsMu.Unlock()
	for k, h := range staged {
		p.heads[k] = h
	}
}

// clearHeads forgets the cached heads: the store is the truth again.
func (p *processor) clearHeads() {
	p.headsMu.Lock()
	defer p.headsMu.Unlock()
	clear(p.heads)
	p.headsGen++
}

// rejectErr carries a reject's reason.
type rejectErr struct {
	reason  string
	gateway string
	err     error
}

func (e rejectErr) Error() string { return e.reason + ": " + e.err.Error() }
func (e rejectErr) Unwrap() error { return e.err }

// reject records a rejected message, or counts it into its gateway's
// summary when the gateway's reject budget is spent. It reports whether a
// record was written.
func (p *processor) reject(ctx context.Context, it *item, now time.Time) (bool, error) {
	re, topic, payload := it.rerr, it.msg.topic, it.msg.payload
	p.m.rejected.WithLabelValues(re.reason).Inc()
	sum := sha256.Sum256(payload)
	r := store.Reject{Topic: topic, Gateway: re.gateway, Reason: re.reason, RawHash: sum[:], Size: len(payload), At: it.msg.at}
	key := re.gateway
	if key == "" {
		key = budgetKey(topic)
	}
	allowed, first := p.budget.allow(key, now)
	if !allowed {
		if first {
			p.log.Warn("ingest: reject budget of a publisher spent; its further rejects are summed up, not recorded one by one",
				"gateway", key, "reason", re.reason, "topic", topic)
		}
		p.budget.summarize(r)
		return false, nil
	}
	p.log.Warn("snapshot rejected", "reason", re.reason, "topic", topic, "bytes", len(payload), "sha256", fmt.Sprintf("%x", sum[:8]), "err", re.err)
	if err := p.cfg.Store.RecordReject(ctx, r); err != nil {
		return false, fmt.Errorf("record reject: %w", err)
	}
	return true, nil
}

// flushSummaries records the summaries of over-budget rejects.
func (p *processor) flushSummaries(ctx context.Context) error {
	for k, r := range p.budget.summaries {
		if err := p.cfg.Store.RecordReject(ctx, *r); err != nil {
			return fmt.Errorf("record reject summary: %w", err)
		}
		delete(p.budget.summaries, k)
	}
	return nil
}

// budgetKey is the reject budget's key for a topic that named no valid
// gateway: its first three levels, the publisher's subtree under TACS.
func budgetKey(topic string) string {
	parts := strings.SplitN(topic, "/", 4)
	return strings.Join(parts[:min(3, len(parts))], "/")
}

// gatewayOf returns the gateway path of a snapshots topic.
func gatewayOf(t string) (string, error) { return topic.ParseChannel(t, topic.Snapshots) }

type metrics struct {
	received, accepted, duplicates, dropped, batchFailures, held prometheus.Counter
	rejected, events                                             *prometheus.CounterVec
	// stages is the committer's wall time by stage (stageWait …), the
	// view that shows what its serial path waits for.
	stages *prometheus.CounterVec
	stageC [numStages]prometheus.Counter
}

// The committer's stages, in the order of a batch.
const (
	stageIdle         = iota // for a batch's first message (to arrive and be opened)
	stageWait                // for the rest of the batch's messages
	stageClassify            // against the chain heads (device head and stale lookups)
	stageLedgerLookup        // FindAll
	stageHandoff             // for the store stage to take the prepared batch
	stageStoreWait           // the store stage, for the next prepared batch
	stageLedgerAppend        // Append
	stageInsert              // InsertSnapshots
	stageRecord              // integrity events, rejects, summaries
	stageCommitted           // Config.Committed
	stageAckHandoff          // for the ack stage to take the batch
	stageAck                 // the ack stage: acknowledgements
	numStages
)

var stageNames = [numStages]string{"idle", "wait", "classify", "ledger_lookup", "handoff", "store_wait", "ledger_append", "insert", "record", "committed", "ack_handoff", "ack"}

// stage adds the time since start to the stage's counter and returns now.
func (m *metrics) stage(s int, start time.Time) time.Time {
	now := time.Now()
	m.stageC[s].Add(now.Sub(start).Seconds())
	return now
}

func newMetrics(reg prometheus.Registerer, st *Status) *metrics {
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Namespace: "fieldtrust", Subsystem: "ingest", Name: name, Help: help})
	}
	m := &metrics{
		received:      counter("messages_total", "Snapshot messages received."),
		accepted:      counter("snapshots_stored_total", "Snapshots stored."),
		duplicates:    counter("duplicates_total", "Redelivered snapshots stored once."),
		dropped:       counter("dropped_total", "QoS 0 snapshot messages dropped beyond ingest's queue."),
		batchFailures: counter("batch_failures_total", "Failed attempts to store a batch (each is retried)."),
		held:          counter("gaps_held_total", "Snapshots that would open a gap, left unacknowledged for redelivery (Config.HoldGaps)."),
		rejected:      prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "fieldtrust", Subsystem: "ingest", Name: "rejects_total", Help: "Messages rejected, by reason."}, []string{"reason"}),
		events:        prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "fieldtrust", Subsystem: "ingest", Name: "integrity_events_total", Help: "Hash-chain integrity events, by kind."}, []string{"kind"}),
		stages: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "fieldtrust", Subsystem: "ingest", Name: "committer_seconds_total",
			Help: "Wall time of ingest's committer, by stage: the preparing stage waits for a batch's first opened message (idle) and the rest (wait), classifies (classify), looks the ledger up (ledger_lookup) and hands the batch over (handoff); the store stage waits for it (store_wait), appends to the ledger (ledger_append), inserts (insert), records events and rejects (record), runs the rules' hook (committed) and hands the batch to the ack stage (ack_handoff), which acknowledges it (ack)."}, []string{"stage"}),
	}
	defer func() {
		for i, n := range stageNames {
			m.stageC[i] = m.stages.WithLabelValues(n)
		}
	}()
	lag := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "fieldtrust", Subsystem: "ingest", Name: "lag_seconds",
		Help: "Age of the oldest snapshot message received and not yet acknowledged (0 when none)."},
		func() float64 { return st.Health().Lag.Seconds() })
	if reg == nil {
		return m
	}
	// A restarted ingest (the supervisor's) keeps counting in the same
	// collectors.
	register := func(c prometheus.Collector) prometheus.Collector {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				return are.ExistingCollector
			}
			panic(err)
		}
		return c
	}
	m.received = register(m.received).(prometheus.Counter)
	m.accepted = register(m.accepted).(prometheus.Counter)
	m.duplicates = register(m.duplicates).(prometheus.Counter)
	m.held = register(m.held).(prometheus.Counter)
	m.dropped = register(m.dropped).(prometheus.Counter)
	m.batchFailures = register(m.batchFailures).(prometheus.Counter)
	m.rejected = register(m.rejected).(*prometheus.CounterVec)
	m.events = register(m.events).(*prometheus.CounterVec)
	m.stages = register(m.stages).(*prometheus.CounterVec)
	register(lag)
	return m
}
