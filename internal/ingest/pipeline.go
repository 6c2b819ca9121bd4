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
			for it := range work {
				if connCtx.Err() == nil {
					p.open(ctx, it)
				} else {
					it.unopened = true // never committed: nextBatch ends first
				}
				close(it.opened)
			}
		})
	}
	defer wg.Wait()
	for {
		t := time.Now()
		b := p.nextBatch(connCtx, order)
		t = p.m.stage(stageWait, t)
		if b == nil {
			break
		}
		if !p.commitWithRetry(ctx, connCtx, b) {
			break
		}
		t = time.Now()
		p.committed(b)
		t = p.m.stage(stageCommitted, t)
		for _, it := range b.items {
			if !it.held { // held: the broker delivers it again
				it.msg.ack() // a no-op for QoS 0, and on a lost connection (the broker redelivers)
			}
		}
		q.done(len(b.items))
		p.m.stage(stageAck, t)
	}
	// What is left is not acknowledged on this connection (the broker
	// redelivers it); the feeder and the workers end with connCtx.
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
	select {
	case it, ok := <-order:
		if !take(it, ok) {
			return nil
		}
	case <-connCtx.Done():
		return nil
	}
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
func (p *processor) open(ctx context.Context, it *item) {
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
	s, err := snapshot.Decode(opened.Content)
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
// is used by one committer at a time.
type processor struct {
	cfg     Config
	log     *slog.Logger
	m       *metrics
	heads   map[deviceKey]*snapshot.Head
	budget  *rejectBudget
	dropLog sync.Once
	// holdUntil ends the current connection's Config.HoldGaps; set by
	// the connection before its pipeline runs, read by its committer.
	holdUntil time.Time
}

func newProcessor(cfg Config) *processor {
	return &processor{
		cfg: cfg, log: cfg.Logger, m: newMetrics(cfg.Registerer, cfg.Status),
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

// storeSnapshots classifies the batch's messages that are not yet
// classified, records the new snapshots in the ledger and stores them, in
// one transaction. Until it succeeds its classification does not count:
// the chain heads it moves are staged and kept only then, and a retry
// classifies again.
func (p *processor) storeSnapshots(ctx context.Context, b *batch) error {
	if b.stored {
		return nil
	}
	t := time.Now()
	staged := map[deviceKey]*snapshot.Head{}
	inBatch := map[snapshotKey]bool{} // the batch's candidates so far
	var cands []*item
	for _, it := range b.items {
		if it.stored || it.snap == nil {
			continue // stored by an earlier attempt, or rejected before classification
		}
		it.rec, it.dup, it.rerr, it.events, it.held = nil, false, nil, nil, false
		if err := p.classify(ctx, it, staged, inBatch); err != nil {
			return err
		}
		if it.rec != nil {
			cands = append(cands, it)
		}
	}
	t = p.m.stage(stageClassify, t)
	if len(cands) == 0 {
		b.stored = true
		return nil
	}
	// Ledger first, idempotently: a redelivered snapshot finds its leaf.
	leaves := make([][]byte, len(cands))
	for i, it := range cands {
		leaves[i] = it.leaf
	}
	found, err := p.cfg.Ledger.FindAll(ctx, leaves)
	t = p.m.stage(stageLedgerLookup, t)
	if err != nil {
		return fmt.Errorf("ledger lookup: %w", err)
	}
	var fresh [][]byte
	var freshItems []*item
	for _, it := range cands {
		if idx, ok := found[string(it.leaf)]; ok {
			it.rec.LedgerIndex = idx
		} else {
			fresh = append(fresh, it.leaf)
			freshItems = append(freshItems, it)
		}
	}
	if len(fresh) > 0 {
		first, _, _, err := p.cfg.Ledger.Append(ctx, fresh)
		t = p.m.stage(stageLedgerAppend, t)
		if err != nil {
			return fmt.Errorf("ledger append: %w", err)
		}
		for k, it := range freshItems {
			it.rec.LedgerIndex = first + uint64(k)
		}
	}
	recs := make([]store.SnapshotRecord, len(cands))
	for i, it := range cands {
		recs[i] = *it.rec
	}
	_, err = p.cfg.Store.InsertSnapshots(ctx, recs)
	p.m.stage(stageInsert, t)
	if errors.Is(err, store.ErrExists) {
		// Some snapshot conflicts with a stored one of the same seq (a
		// fork the chain check could not see, e.g. below the head): store
		// the rest one by one and reject the conflicting ones.
		clear(p.heads)
		if err := p.insertEach(ctx, cands); err != nil {
			return err
		}
		b.stored = true
		return nil
	}
	if err != nil {
		return fmt.Errorf("store snapshots: %w", err)
	}
	for _, it := range cands {
		it.stored = true
	}
	for k, h := range staged {
		p.heads[k] = h
	}
	b.stored = true
	return nil
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
// the integrity events to record. inBatch holds the candidates classified
// before it in the same batch, which the store does not have yet.
func (p *processor) classify(ctx context.Context, it *item, staged map[deviceKey]*snapshot.Head, inBatch map[snapshotKey]bool) error {
	s, gw, hash := it.snap, it.gw, it.hash
	key := deviceKey{gw, s.Device}
	head := staged[key]
	if head == nil {
		var err error
		if head, err = p.head(ctx, key); err != nil {
			return err
		}
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
		if inBatch[snapshotKey{gw, hash}] {
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
		staged[key] = &snapshot.Head{Seq: s.Seq, Hash: hash}
	}
	it.rec = &store.SnapshotRecord{
		Gateway: gw, Device: s.Device, DeviceType: s.DeviceType, Seq: s.Seq, Time: s.Time(),
		Hash: hash[:], Prev: s.Prev, Values: s.Values,
		Signer: it.signer, SignedAt: it.signedAt, ReceivedAt: it.msg.at,
	}
	it.leaf = ledger.LeafData(gw, hash)
	inBatch[snapshotKey{gw, hash}] = true
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

func (p *processor) head(ctx context.Context, key deviceKey) (*snapshot.Head, error) {
	if h, ok := p.heads[key]; ok {
		return h, nil
	}
	seq, hash, err := p.cfg.Store.DeviceHead(ctx, key.gateway, key.device)
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("device head: %w", err)
	}
	h := &snapshot.Head{Seq: seq}
	copy(h.Hash[:], hash)
	p.heads[key] = h
	return h, nil
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
	stageWait         = iota // for the batch's messages to arrive and be opened
	stageClassify            // against the chain heads (device head and stale lookups)
	stageLedgerLookup        // FindAll
	stageLedgerAppend        // Append
	stageInsert              // InsertSnapshots
	stageRecord              // integrity events, rejects, summaries
	stageCommitted           // Config.Committed
	stageAck                 // acknowledgements
	numStages
)

var stageNames = [numStages]string{"wait", "classify", "ledger_lookup", "ledger_append", "insert", "record", "committed", "ack"}

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
			Help: "Wall time of ingest's committer, by stage: waiting for opened messages, classify, ledger lookup and append, insert, record (events and rejects), committed (the rules' hook) and ack."}, []string{"stage"}),
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
