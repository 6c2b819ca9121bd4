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
//
// # MQTT, acknowledgements and the queue
//
// Ingest keeps a persistent session (client ID "ingest", clean session
// off) and acknowledges each message by hand once its outcome is durable.
// Paho's router hands messages to a handler that only enqueues: it never
// blocks (a blocked handler stalls paho's router, and with it keepalives
// and acknowledgements, which is how the earlier ingest stopped for good).
// The queue holds Queue messages, more than the broker sends
// unacknowledged on one connection (the embedded broker's send window for
// an MQTT 3.1.1 client is 512, internal/broker/limits.go; Mosquitto's
// default is 20), so backpressure is the broker holding back deliveries,
// not a stalled reader. QoS 0 deliveries, which no gateway sends and no
// window bounds, get a small share of their own and are dropped and
// counted beyond it; a broker that sends more than the queue holds gets
// its connection closed (it redelivers what was not acknowledged on the
// next one) rather than a blocked handler.
//
// MQTT 5 with a Receive Maximum would state that bound in the protocol
// (github.com/eclipse/paho.golang has manual, in-order acknowledgements).
// It was this package's first design, and was dropped on evidence: the
// broker embedded at the time (mochi-mqtt v2.7.9) called
// Inflight.NextImmediate after every packet from an MQTT 5 client with a
// send quota, which read-locks the client's in-flight map and calls
// GetAll, which read-locks it again; a publisher's Inflight.Set waiting
// between the two deadlocked the map and every publisher with it. In the
// end-to-end benchmark an MQTT 5 ingest wedged that broker within a
// minute, twice. The broker's own data path that replaced mochi honours a
// Receive Maximum (min(it, 512)); moving ingest to MQTT 5 is a follow-up
// that changes only this file's connection code.
//
// Every connection gets a fresh client and its own pipeline. Nothing
// crosses connections: a message is acknowledged only on the connection
// that delivered it, and what was in flight when a connection ended is
// redelivered by the broker on the next one (idempotently stored).
//
// # Pipeline
//
// Opening and decoding, ingest's CPU-bound work (ECDH, AES-GCM, ECDSA and
// the chain check, CBOR), runs on Workers goroutines, independently per
// message, as soon as a message arrives (each worker keeps the channel
// names it decoded: snapshot.Decoder). The committer takes the opened
// messages in arrival order in batches (BatchSize, BatchWait) and runs
// them through three stages, one batch each at a time:
//
//   - prepare: classify the batch against the chain heads in arrival
//     order (so per-device order and the gap, stale and fork judgement
//     are those of a single-threaded ingest). The batch before it may be
//     storing meanwhile: its staged heads and candidates count as if
//     stored, and if it does not commit as prepared (a failed attempt, a
//     fork found at insert) the batch is classified again before it is
//     stored.
//   - store: look all the batch's ledger leaves up in one query, append
//     the new ones, insert the batch in one transaction, record its
//     events and rejects. With a store that takes concurrent writers
//     (PostgreSQL: ConcurrentWrites) the lookup and append run in prepare
//     instead, while the batch before is inserted, as long as that
//     batch's leaves are in: leaves stay in arrival order. With SQLite
//     they stay here, on the write transaction's connection.
//   - ack: acknowledge the stored batch's messages, in arrival order
//     (paho writes a packet per acknowledgement).
//
// A message is acknowledged only after its batch's commit; batches are
// stored one at a time, in order. While the committer works, the workers
// open what arrives (TestIngestOpensOnArrival, TestIngestPreparesWhileStoring).
// fieldtrust_ingest_committer_seconds_total{stage} is the committer's
// wall time by stage: what its serial path waits for.
//
// # Failures
//
// A batch whose store or ledger work fails is retried with exponential
// backoff (RetryMin to RetryMax) on the same, working connection; its
// messages stay unacknowledged, so the broker's flow control holds further
// deliveries back meanwhile, and it redelivers them if ingest dies. Each
// message's effects (stored snapshot, integrity events, reject) are made
// durable once: a retry redoes only what had not succeeded. Status reports
// the connection, the number of messages received but not yet acknowledged
// and the age of the oldest (the ingest lag), and whether a batch is being
// retried, for the platform's /healthz.
//
// # Rejects
//
// Every rejected message is counted, but a device cannot make ingest write
// a row per garbage message: each gateway has a reject budget (a token
// bucket of RejectBurst records refilled one per RejectEvery). Within it a
// reject is recorded with its raw hash (the store aggregates exact
// repeats); beyond it the rejects of a batch are summed up per topic and
// reason into one summary record (count and total size, no hash) and
// logged once per exhausted budget. The reject table is trimmed to
// MaxRejects records.
package ingest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"runtime"
	"slices"
	"strings"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/fieldtrust/fieldtrust/internal/envelope"
	"github.com/fieldtrust/fieldtrust/internal/pahotoken"
	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/tacs"
	"github.com/fieldtrust/fieldtrust/internal/topic"
)

// Store is what ingest needs from the store.
type Store interface {
	InsertSnapshots(ctx context.Context, recs []store.SnapshotRecord) ([]bool, error)
	DeviceHead(ctx context.Context, gateway, device string) (uint64, []byte, error)
	RecordIntegrityEvent(ctx context.Context, e store.IntegrityEvent) error
	RecordReject(ctx context.Context, r store.Reject) error
	TrimRejects(ctx context.Context, keep int) (int, error)
	SnapshotByHash(ctx context.Context, scope string, hash []byte) (store.SnapshotRecord, error)
}

// Ledger is the append-only log snapshots are recorded in.
type Ledger interface {
	Append(ctx context.Context, leaves [][]byte) (first, size uint64, root []byte, err error)
	// FindAll returns the indexes of the leaves already in the log.
	FindAll(ctx context.Context, leaves [][]byte) (map[string]uint64, error)
}

// Config configures the ingest service.
type Config struct {
	Broker   string      // host:port of the broker's MQTT listener ("ssl://" or "mqtts://" prefix accepted)
	TLS      *tls.Config // the service's transport identity and the trusted root
	ClientID string      // default "ingest"; one per process for a persistent session
	Group    string      // shared subscription group, default "ingest"
	// Unshared subscribes without a shared subscription, for a broker
	// tier that has none (the clustered tier, MQTT 3.1.1): then only one
	// ingest may serve the tier.
	Unshared bool
	// Filters, if set, are what ingest subscribes to instead (without a
	// shared subscription): one partition of the gateway space on the
	// clustered tier, e.g. "ms/acc/+/snapshots" for each account of the
	// partition (docs/scale.md). Each must be granted, or the session
	// ends with an error.
	Filters []string
	// HoldGaps, if positive, is how long after each connection's start a
	// snapshot that would open a gap in its device's chain is neither
	// stored nor acknowledged: the broker delivers it again (after its
	// ack wait), by then behind the missing one. For a session taken over
	// from a dead node on the clustered tier, where the engine redelivers
	// what the dead node had received but not acknowledged only after its
	// ack wait, while new messages flow at once (docs/scale.md). Beyond
	// HoldGaps a gap is recorded as usual.
	HoldGaps time.Duration
	Opener   *envelope.Opener
	Store    Store
	Ledger   Ledger
	Logger   *slog.Logger
	// Registerer receives ingest metrics; nil keeps them private.
	Registerer prometheus.Registerer
	// Status, if set, receives ingest's state (for health checks).
	Status *Status

	// BatchSize and BatchWait bound how many messages are stored in one
	// transaction and how long the first of them waits for company.
	BatchSize int           // default 256
	BatchWait time.Duration // default 20 ms
	// Workers open and decode messages in parallel; default GOMAXPROCS.
	Workers int
	// Queue is how many messages may wait between paho's router and the
	// pipeline: at least what the broker can have outstanding on one
	// connection, and 2 × BatchSize; default DefaultQueue.
	Queue int
	// RetryMin and RetryMax bound the backoff between attempts of a
	// failed batch and between connection attempts; default 50 ms, 10 s.
	RetryMin, RetryMax time.Duration
	// StallAfter is the ingest lag beyond which Status reports ingest
	// stalled; default 60 s.
	StallAfter time.Duration
	// RejectBurst and RejectEvery are each gateway's reject budget: up
	// to RejectBurst rejects recorded one by one, refilled one per
	// RejectEvery; default 20 and 3 s. MaxRejects bounds the reject
	// table; default 100,000 records.
	RejectBurst int
	RejectEvery time.Duration
	MaxRejects  int
	// Now is the clock; default time.Now.
	Now func() time.Time
	// Committed, if set, is told what each batch made durable (the
	// rules engine runs on it), after the commit and before the
	// acknowledgements. It must not block.
	Committed func(snaps []store.SnapshotRecord, events []store.IntegrityEvent, rejects []store.Reject)
	// Subscribed, if set, is called on every connection once the broker
	// granted every subscription, before the first message is processed;
	// an error ends the connection (retried as any). A partition session
	// of a multi-node cluster records here which accounts it covers.
	Subscribed func(ctx context.Context) error
}

// DefaultQueue is 16 times the embedded broker's send window for an MQTT
// 3.1.1 client (512): room for any broker configured more generously, at
// ~100 MB for 8,192 sealed snapshots of 340 values, and memory only ever
// used if a broker sends that much.
const DefaultQueue = 8192

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
)

func (cfg *Config) defaults() error {
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
	if cfg.Workers <= 0 {
		cfg.Workers = runtime.GOMAXPROCS(0)
	}
	if cfg.Queue <= 0 {
		cfg.Queue = DefaultQueue
	}
	cfg.Queue = max(cfg.Queue, 2*cfg.BatchSize)
	if cfg.RetryMin <= 0 {
		cfg.RetryMin = 50 * time.Millisecond
	}
	if cfg.RetryMax < cfg.RetryMin {
		cfg.RetryMax = max(10*time.Second, cfg.RetryMin)
	}
	if cfg.StallAfter <= 0 {
		cfg.StallAfter = time.Minute
	}
	if cfg.RejectBurst <= 0 {
		cfg.RejectBurst = 20
	}
	if cfg.RejectEvery <= 0 {
		cfg.RejectEvery = 3 * time.Second
	}
	if cfg.MaxRejects <= 0 {
		cfg.MaxRejects = 100_000
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Status == nil {
		cfg.Status = &Status{}
	}
	cfg.Status.init(cfg.StallAfter, cfg.Now)
	for _, prefix := range []string{"ssl://", "mqtts://", "tls://"} {
		cfg.Broker = strings.TrimPrefix(cfg.Broker, prefix)
	}
	if cfg.Broker == "" {
		return errors.New("ingest: Broker is required")
	}
	return nil
}

// Run runs the ingest service until ctx ends, reconnecting as needed. It
// returns an error only for a configuration it cannot run with; broker,
// store and ledger failures are retried.
func Run(ctx context.Context, cfg Config) error {
	if err := cfg.defaults(); err != nil {
		return err
	}
	p := newProcessor(cfg)
	delay := cfg.RetryMin
	for {
		start := cfg.Now()
		err := p.connection(ctx)
		if ctx.Err() != nil {
			cfg.Status.disconnected()
			return nil
		}
		cfg.Status.disconnected()
		if cfg.Now().Sub(start) > cfg.RetryMax {
			delay = cfg.RetryMin // it ran a while: a new outage
		}
		cfg.Logger.Warn("ingest: broker connection ended; reconnecting", "err", err, "in", delay)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(delay):
		}
		delay = min(2*delay, cfg.RetryMax)
	}
}

// connection runs one MQTT connection with a fresh client and pipeline
// until it ends (the broker goes, the connection breaks, ctx ends).
func (p *processor) connection(ctx context.Context) error {
	cfg := p.cfg
	connCtx, lost := context.WithCancelCause(ctx)
	defer lost(nil)
	q := newQueue(cfg.Queue, cfg.BatchSize)
	opts := mqtt.NewClientOptions().AddBroker("ssl://" + cfg.Broker).SetClientID(cfg.ClientID).
		SetTLSConfig(cfg.TLS).SetCleanSession(false).SetAutoAckDisabled(true).
		// OrderMatters: the handler is called in arrival order from
		// paho's router; it only enqueues.
		SetOrderMatters(true).SetKeepAlive(30 * time.Second).SetConnectTimeout(15 * time.Second).
		SetAutoReconnect(false).SetConnectRetry(false).
		SetDefaultPublishHandler(func(_ mqtt.Client, m mqtt.Message) {
			if err := p.enqueue(q, m); err != nil {
				lost(err)
			}
		}).
		SetConnectionLostHandler(func(_ mqtt.Client, err error) { lost(fmt.Errorf("connection lost: %w", err)) })
	c := mqtt.NewClient(opts)
	if err := pahotoken.Wait(connCtx, c.Connect(), tokenWait); err != nil {
		return fmt.Errorf("connect to broker %s: %w", cfg.Broker, err)
	}
	defer c.Disconnect(250)
	filter := topic.Shared(cfg.Group, topic.AllSnapshots)
	if cfg.Unshared {
		filter = topic.AllSnapshots
	}
	subs := map[string]byte{filter: 1}
	if len(cfg.Filters) > 0 {
		subs = make(map[string]byte, len(cfg.Filters))
		for _, f := range cfg.Filters {
			subs[f] = 1
		}
		filter = strings.Join(cfg.Filters, ",")
	}
	tok := c.SubscribeMultiple(subs, nil)
	if err := pahotoken.Wait(connCtx, tok, tokenWait); err != nil {
		return fmt.Errorf("subscribe %s: %w", filter, err)
	}
	if err := pahotoken.Granted(tok, tacs.RoleSnapshotReader, slices.Collect(maps.Keys(subs))...); err != nil {
		return err
	}
	if cfg.Subscribed != nil {
		if err := cfg.Subscribed(connCtx); err != nil {
			return fmt.Errorf("subscribed %s: %w", filter, err)
		}
	}
	p.holdUntil = cfg.Now().Add(cfg.HoldGaps)
	cfg.Logger.Info("ingest subscribed", "filter", filter, "queue", cfg.Queue)
	cfg.Status.connected(q)
	p.pipeline(ctx, connCtx, q)
	if err := context.Cause(connCtx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return ctx.Err()
}

// tokenWait bounds the wait for the broker's CONNACK and SUBACK.
const tokenWait = 15 * time.Second

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
