// Package ingest is the platform service that turns sealed snapshots from
// the field into stored, verifiable data. It is an MQTT client with its own
// service identity (role snapshot-reader), like any external service would
// be, on a shared subscription so several ingest processes split the load.
//
// For each message it
//
//  1. checks the topic ({master}/{account}/{gateway}/snapshots),
//  2. opens the envelope with the ingest e2e key (GCM tag, then the
//     signature, then the signer's e2e chain and revocation),
//  3. checks the signer is the gateway whose topic carried the message,
//  4. decodes the snapshot and relates it to the device's hash chain
//     (snapshot.Classify): gaps, stale or reordered snapshots and forks are
//     recorded as integrity events; redeliveries are stored once,
//  5. appends the snapshot's hash to the ledger, then stores it.
//
// Anything that fails is recorded as a reject with its reason and the raw
// message's hash: nothing that arrives is lost without a record. The
// message is acknowledged only after it was stored or recorded, so a crash
// at any point leads to a redelivery, which steps 4 and 5 make idempotent.
package ingest

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/fieldtrust/fieldtrust/internal/envelope"
	"github.com/fieldtrust/fieldtrust/internal/ledger"
	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/snapshot"
	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/topic"
)

// Store is what ingest needs from the store.
type Store interface {
	InsertSnapshots(ctx context.Context, recs []store.SnapshotRecord) ([]bool, error)
	DeviceHead(ctx context.Context, gateway, device string) (uint64, []byte, error)
	RecordIntegrityEvent(ctx context.Context, e store.IntegrityEvent) error
	RecordReject(ctx context.Context, r store.Reject) error
	SnapshotByHash(ctx context.Context, scope string, hash []byte) (store.SnapshotRecord, error)
}

// Ledger is the append-only log snapshots are recorded in.
type Ledger interface {
	Append(ctx context.Context, leaves [][]byte) (first, size uint64, root []byte, err error)
	Find(ctx context.Context, leafData []byte) (uint64, error)
}

// Config configures the ingest service.
type Config struct {
	Broker   string      // e.g. ssl://127.0.0.1:8883
	TLS      *tls.Config // the service's transport identity and the trusted root
	ClientID string      // default "ingest"; one per process for a persistent session
	Group    string      // shared subscription group, default "ingest"
	Opener   *envelope.Opener
	Store    Store
	Ledger   Ledger
	Logger   *slog.Logger
	// Registerer receives ingest metrics; nil keeps them private.
	Registerer prometheus.Registerer
	// BatchSize and BatchWait bound how many messages are stored in one
	// transaction and how long the first of them waits for company.
	BatchSize int
	BatchWait time.Duration
}

// Reasons for rejects, a fixed vocabulary (metric labels).
const (
	ReasonBadTopic          = "bad_topic"
	ReasonMalformed         = "malformed_envelope"
	ReasonNotForMe          = "not_for_me"
	ReasonTampered          = "tampered"
	ReasonUnsigned          = "unsigned"
	ReasonUnknownSigner     = "unknown_signer"
	ReasonRevokedSigner     = "revoked_signer"
	ReasonUntrustedSigner   = "untrusted_signer"
	ReasonWrongDevice       = "wrong_device"
	ReasonMalformedSnapshot = "malformed_snapshot"
	ReasonFork              = "fork"
	ReasonStoreFailed       = "store_failed"
)

type metrics struct {
	received, accepted, duplicates prometheus.Counter
	rejected, events               *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		received:   prometheus.NewCounter(prometheus.CounterOpts{Namespace: "fieldtrust", Subsystem: "ingest", Name: "messages_total", Help: "Snapshot messages received."}),
		accepted:   prometheus.NewCounter(prometheus.CounterOpts{Namespace: "fieldtrust", Subsystem: "ingest", Name: "snapshots_stored_total", Help: "Snapshots stored."}),
		duplicates: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "fieldtrust", Subsystem: "ingest", Name: "duplicates_total", Help: "Redelivered snapshots stored once."}),
		rejected:   prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "fieldtrust", Subsystem: "ingest", Name: "rejects_total", Help: "Messages rejected, by reason."}, []string{"reason"}),
		events:     prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "fieldtrust", Subsystem: "ingest", Name: "integrity_events_total", Help: "Hash-chain integrity events, by kind."}, []string{"kind"}),
	}
	if reg != nil {
		reg.MustRegister(m.received, m.accepted, m.duplicates, m.rejected, m.events)
	}
	return m
}

// Run runs the ingest service until ctx ends, reconnecting as needed.
func Run(ctx context.Context, cfg Config) error {
	if cfg.Opener == nil || cfg.Store == nil || cfg.Ledger == nil || cfg.TLS == nil {
		return errors.New("ingest: Opener, Store, Ledger and TLS are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.ClientID == "" {
		cfg.ClientID = "ingest"
	}
	if cfg.Group == "" {
		cfg.Group = "ingest"
	}
	if cfg.BatchSize <= 0 {
		cfg.BatchSize = 256
	}
	if cfg.BatchWait <= 0 {
		cfg.BatchWait = 20 * time.Millisecond
	}
	p := &processor{cfg: cfg, log: cfg.Logger, m: newMetrics(cfg.Registerer), heads: map[deviceKey]*snapshot.Head{}}
	msgs := make(chan mqtt.Message, 4*cfg.BatchSize)
	opts := mqtt.NewClientOptions().AddBroker(cfg.Broker).SetClientID(cfg.ClientID).
		// OrderMatters: paho hands messages to the handler one at a time,
		// in arrival order (with false it runs each in its own goroutine
		// and they can overtake each other, which looks like a gap and a
		// stale snapshot to the chain check). The handler only enqueues;
		// a full queue holds the connection back.
		SetCleanSession(false).SetAutoAckDisabled(true).SetOrderMatters(true).
		SetTLSConfig(cfg.TLS).SetKeepAlive(30 * time.Second).
		SetAutoReconnect(true).SetConnectRetry(true).SetConnectRetryInterval(time.Second).SetMaxReconnectInterval(10 * time.Second).
		SetDefaultPublishHandler(func(_ mqtt.Client, m mqtt.Message) { msgs <- m }).
		SetOnConnectHandler(func(c mqtt.Client) {
			filter := topic.Shared(cfg.Group, topic.AllSnapshots)
			tok := c.Subscribe(filter, 1, nil)
			if tok.WaitTimeout(10*time.Second) && tok.Error() == nil {
				cfg.Logger.Info("ingest subscribed", "filter", filter)
			} else {
				cfg.Logger.Error("ingest subscribe failed", "filter", filter, "err", tok.Error())
			}
		}).
		SetConnectionLostHandler(func(_ mqtt.Client, err error) {
			cfg.Logger.Warn("ingest lost its broker connection; reconnecting", "err", err)
		})
	c := mqtt.NewClient(opts)
	c.Connect() // ConnectRetry: returns at once and keeps trying
	defer c.Disconnect(250)

	batch := make([]mqtt.Message, 0, cfg.BatchSize)
	for {
		select {
		case <-ctx.Done():
			return nil
		case m := <-msgs:
			batch = append(batch[:0], m)
		}
		timer := time.NewTimer(cfg.BatchWait)
	fill:
		for len(batch) < cfg.BatchSize {
			select {
			case m := <-msgs:
				batch = append(batch, m)
			case <-timer.C:
				break fill
			case <-ctx.Done():
				timer.Stop()
				return nil
			}
		}
		timer.Stop()
		if err := p.process(ctx, batch); err != nil {
			// Not acknowledged: the broker redelivers after a reconnect.
			cfg.Logger.Error("ingest batch failed; it will be redelivered", "messages", len(batch), "err", err)
			c.Disconnect(0)
			c.Connect()
			continue
		}
		for _, m := range batch {
			m.Ack()
		}
	}
}

type deviceKey struct{ gateway, device string }

// processor holds the per-device chain heads (a cache of the store's).
type processor struct {
	cfg   Config
	log   *slog.Logger
	m     *metrics
	heads map[deviceKey]*snapshot.Head // guarded by being used from one goroutine
}

// candidate is a verified snapshot on its way into the store.
type candidate struct {
	rec  store.SnapshotRecord
	leaf []byte
}

// process handles one batch. It returns an error only for failures that
// redelivery may cure (the store or ledger failing); bad messages are
// recorded as rejects and count as handled.
func (p *processor) process(ctx context.Context, batch []mqtt.Message) error {
	var cands []candidate
	for _, m := range batch {
		p.m.received.Inc()
		c, err := p.verify(ctx, m.Topic(), m.Payload())
		if err != nil {
			if rerr := p.reject(ctx, m.Topic(), m.Payload(), err); rerr != nil {
				return rerr
			}
			continue
		}
		if c != nil {
			cands = append(cands, *c)
		}
	}
	if len(cands) == 0 {
		return nil
	}
	// Ledger first, idempotently: a redelivered snapshot finds its leaf.
	var fresh [][]byte
	var freshIdx []int
	for i := range cands {
		idx, err := p.cfg.Ledger.Find(ctx, cands[i].leaf)
		switch {
		case err == nil:
			cands[i].rec.LedgerIndex = idx
		case errors.Is(err, store.ErrNotFound):
			fresh = append(fresh, cands[i].leaf)
			freshIdx = append(freshIdx, i)
		default:
			return fmt.Errorf("ledger lookup: %w", err)
		}
	}
	if len(fresh) > 0 {
		first, _, _, err := p.cfg.Ledger.Append(ctx, fresh)
		if err != nil {
			return fmt.Errorf("ledger append: %w", err)
		}
		for k, i := range freshIdx {
			cands[i].rec.LedgerIndex = first + uint64(k)
		}
	}
	recs := make([]store.SnapshotRecord, len(cands))
	for i := range cands {
		recs[i] = cands[i].rec
	}
	inserted, err := p.cfg.Store.InsertSnapshots(ctx, recs)
	if errors.Is(err, store.ErrExists) {
		// Some snapshot conflicts with a stored one of the same seq (a
		// fork the chain check could not see, e.g. below the head): store
		// the rest one by one and reject the conflicting ones.
		return p.insertEach(ctx, recs)
	}
	if err != nil {
		p.heads = map[deviceKey]*snapshot.Head{} // the cache may be ahead of the store now
		return fmt.Errorf("store snapshots: %w", err)
	}
	p.count(inserted)
	return nil
}

func (p *processor) insertEach(ctx context.Context, recs []store.SnapshotRecord) error {
	p.heads = map[deviceKey]*snapshot.Head{}
	for _, rec := range recs {
		inserted, err := p.cfg.Store.InsertSnapshots(ctx, []store.SnapshotRecord{rec})
		if errors.Is(err, store.ErrExists) {
			p.m.events.WithLabelValues(store.EventFork).Inc()
			if err := p.cfg.Store.RecordIntegrityEvent(ctx, store.IntegrityEvent{
				Gateway: rec.Gateway, Device: rec.Device, Kind: store.EventFork, Seq: rec.Seq, Hash: rec.Hash,
				Detail: "another snapshot with this seq is stored", At: time.Now(),
			}); err != nil {
				return err
			}
			p.m.rejected.WithLabelValues(ReasonFork).Inc()
			p.log.Warn("snapshot rejected", "reason", ReasonFork, "gateway", rec.Gateway, "device", rec.Device, "seq", rec.Seq)
			if err := p.cfg.Store.RecordReject(ctx, store.Reject{Topic: topic.SnapshotsOf(rec.Gateway), Gateway: rec.Gateway, Reason: ReasonFork, RawHash: rec.Hash, At: time.Now()}); err != nil {
				return err
			}
			continue
		}
		if err != nil {
			return fmt.Errorf("store snapshot: %w", err)
		}
		p.count(inserted)
	}
	return nil
}

func (p *processor) count(inserted []bool) {
	for _, ok := range inserted {
		if ok {
			p.m.accepted.Inc()
		} else {
			p.m.duplicates.Inc()
		}
	}
}

// verify opens and checks one message. It returns (nil, nil) for a
// redelivery of a stored snapshot, a candidate to store, or an error whose
// reason (reasonOf) becomes the reject.
func (p *processor) verify(ctx context.Context, topic string, payload []byte) (*candidate, error) {
	gw, err := gatewayOf(topic)
	if err != nil {
		return nil, rejectErr{ReasonBadTopic, "", err}
	}
	opened, err := p.cfg.Opener.Open(ctx, payload)
	if err != nil {
		return nil, rejectErr{reasonOfOpen(err), gw, err}
	}
	if opened.Signer != gw {
		return nil, rejectErr{ReasonWrongDevice, gw, fmt.Errorf("signed by %q but published on %s's topic", opened.Signer, gw)}
	}
	s, err := snapshot.Decode(opened.Content)
	if err != nil {
		return nil, rejectErr{ReasonMalformedSnapshot, gw, err}
	}
	hash := snapshot.Hash(opened.Content)
	key := deviceKey{gw, s.Device}
	head, err := p.head(ctx, key)
	if err != nil {
		return nil, err
	}
	link := snapshot.Classify(head, s, hash)
	event := func(kind string, expected uint64, detail string) error {
		p.m.events.WithLabelValues(kind).Inc()
		p.log.Warn("integrity event", "kind", kind, "gateway", gw, "device", s.Device, "seq", s.Seq, "expected", expected, "detail", detail)
		return p.cfg.Store.RecordIntegrityEvent(ctx, store.IntegrityEvent{
			Gateway: gw, Device: s.Device, Kind: kind, Seq: s.Seq, ExpectedSeq: expected, Hash: hash[:], Detail: detail, At: time.Now(),
		})
	}
	switch link {
	case snapshot.LinkDuplicate:
		p.m.duplicates.Inc()
		return nil, nil
	case snapshot.LinkFork:
		if err := event(store.EventFork, expectedAfter(head), "conflicts with the stored chain"); err != nil {
			return nil, err
		}
		return nil, rejectErr{ReasonFork, gw, fmt.Errorf("seq %d of %s forks the chain", s.Seq, s.Device)}
	case snapshot.LinkGap:
		if err := event(store.EventGap, expectedAfter(head), fmt.Sprintf("%d snapshot(s) missing", s.Seq-expectedAfter(head))); err != nil {
			return nil, err
		}
	case snapshot.LinkStale:
		// Below the head: a redelivery of a stored snapshot, or a late one
		// that fills a gap (a conflicting one fails at insert: a fork).
		if _, err := p.cfg.Store.SnapshotByHash(ctx, gw, hash[:]); err == nil {
			p.m.duplicates.Inc()
			return nil, nil
		} else if !errors.Is(err, store.ErrNotFound) {
			return nil, fmt.Errorf("look up snapshot: %w", err)
		}
		if err := event(store.EventStale, expectedAfter(head), "arrived after a later snapshot"); err != nil {
			return nil, err
		}
	}
	if link != snapshot.LinkStale {
		p.heads[key] = &snapshot.Head{Seq: s.Seq, Hash: hash}
	}
	return &candidate{
		rec: store.SnapshotRecord{
			Gateway: gw, Device: s.Device, DeviceType: s.DeviceType, Seq: s.Seq, Time: s.Time(),
			Hash: hash[:], Prev: s.Prev, Values: s.Values,
			Signer: signerName(opened.SignerCert), SignedAt: opened.SigningTime, ReceivedAt: time.Now(),
		},
		leaf: ledger.LeafData(gw, hash),
	}, nil
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

// reject records a message that could not be accepted. A non-reject error
// (the store failing) is returned for redelivery.
func (p *processor) reject(ctx context.Context, topic string, payload []byte, err error) error {
	var re rejectErr
	if !errors.As(err, &re) {
		return err
	}
	p.m.rejected.WithLabelValues(re.reason).Inc()
	sum := sha256.Sum256(payload)
	p.log.Warn("snapshot rejected", "reason", re.reason, "topic", topic, "bytes", len(payload), "sha256", fmt.Sprintf("%x", sum[:8]), "err", re.err)
	return p.cfg.Store.RecordReject(ctx, store.Reject{Topic: topic, Gateway: re.gateway, Reason: re.reason, RawHash: sum[:], Size: len(payload), At: time.Now()})
}

// gatewayOf returns the gateway path of a snapshots topic.
func gatewayOf(t string) (string, error) { return topic.ParseChannel(t, topic.Snapshots) }

func reasonOfOpen(err error) string {
	switch {
	case errors.Is(err, pki.ErrRevoked), errors.Is(err, envelope.ErrRevokedSigner):
		return ReasonRevokedSigner
	case errors.Is(err, envelope.ErrNotForMe):
		return ReasonNotForMe
	case errors.Is(err, envelope.ErrTampered):
		return ReasonTampered
	case errors.Is(err, envelope.ErrUnsigned):
		return ReasonUnsigned
	case errors.Is(err, envelope.ErrUnknownSigner):
		return ReasonUnknownSigner
	case errors.Is(err, envelope.ErrUntrustedSigner):
		return ReasonUntrustedSigner
	}
	return ReasonMalformed
}

func signerName(c *x509.Certificate) string {
	if c == nil {
		return ""
	}
	return c.Subject.CommonName + " #" + pki.SerialHex(c.SerialNumber)
}

// SignerLookup finds e2e signer certificates by key ID through the
// platform's verifier, so gateways need not embed their certificate in
// every envelope.
type SignerLookup struct{ V *pki.Verifier }

// LookupSigner implements envelope.SignerLookup.
func (s SignerLookup) LookupSigner(ctx context.Context, id envelope.SignerID) (*x509.Certificate, error) {
	if id.SubjectKeyID == nil {
		return nil, envelope.ErrUnknownSigner
	}
	c, err := s.V.LeafBySKI(ctx, id.SubjectKeyID)
	if errors.Is(err, pki.ErrUnknownKey) {
		return nil, fmt.Errorf("%w: %v", envelope.ErrUnknownSigner, err)
	}
	return c, err
}
