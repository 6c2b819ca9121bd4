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
// # MQTT 5, manual acknowledgements and Receive Maximum
//
// Ingest speaks MQTT 5 (github.com/eclipse/paho.golang) with a persistent
// session (Clean Start 0, a week's Session Expiry) and acknowledges each
// message by hand, in order, once its outcome is durable. Its CONNECT
// carries a Receive Maximum: the broker never has more than that many QoS 1
// messages outstanding (sent, not yet acknowledged) on the connection
// (MQTT 5 §4.9). The queue between paho's router and the pipeline is at
// least that large, so the router's handler never blocks: it only enqueues.
// Backpressure is the broker holding back deliveries, not a stalled TCP
// reader (which would also stall keepalives). QoS 0 deliveries, which the
// Receive Maximum does not bound and which no gateway sends, get a small
// share of the queue of their own and are dropped and counted beyond it; a
// broker that exceeds the Receive Maximum gets its connection closed (it
// redelivers after the reconnect) rather than a blocked handler.
//
// Every connection gets a fresh paho client and its own pipeline. Nothing
// crosses connections: a packet identifier is acknowledged only on the
// connection that delivered it, and what was in flight when a connection
// ended is redelivered by the broker on the next one (idempotently stored).
// With MQTT 3.1.1 the broker's in-flight window cannot be bounded by the
// client, which is why the earlier paho.mqtt.golang client, whose handler
// had to block to apply backpressure, stalled for good after its first
// reconnect attempt on the same client.
//
// # Pipeline
//
// Messages are taken in batches (BatchSize, BatchWait). Opening and
// decoding, ingest's CPU-bound work (ECDH, AES-GCM, ECDSA and the chain
// check, CBOR), runs on Workers goroutines at once and independently per
// message; results keep arrival order. One committer then classifies the
// batch against the chain heads in arrival order (so per-device order and
// the gap, stale and fork judgement are those of a single-threaded
// ingest), looks all its ledger leaves up in one query, appends the new
// ones, and inserts the batch in one transaction. While it commits a
// batch, the next one is being opened.
//
// # Failures
//
// A batch whose store or ledger work fails is retried with exponential
// backoff (RetryMin to RetryMax) on the same, working connection; its
// messages stay unacknowledged, so the broker sends nothing beyond the
// Receive Maximum meanwhile and redelivers them if ingest dies. Each
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
	"runtime"
	"strings"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/fieldtrust/fieldtrust/internal/envelope"
	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/store"
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
	// ReceiveMaximum is the Receive Maximum ingest announces: QoS 1
	// messages the broker may have outstanding, and the size of the
	// queue behind paho's router. At least 2 × BatchSize, so that one
	// batch is opened while another is committed; default 65,535 (see
	// DefaultReceiveMaximum).
	ReceiveMaximum int
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
}

// DefaultReceiveMaximum is the largest Receive Maximum MQTT 5 allows. The
// embedded broker (mochi-mqtt v2.7.9) mishandles a client's smaller one
// once it is reached: it holds further messages and sends them one per
// packet it reads from the client, deleting each from its in-flight set
// as it sends it, so their PUBACKs match nothing and the broker's
// backpressure (internal/broker/flow.go), which counts acknowledgements,
// never drains: in the end-to-end benchmark every publisher stalled
// after 33,645 snapshots. With the largest value that path is never
// taken, and the broker's own flow control (512 unacknowledged messages
// per live subscriber, mochi's in-flight limit of 8,192 beyond) is what
// bounds the queue in practice: 8,192 sealed snapshots are ~100 MB.
// Lower it with a broker that honours it.
const DefaultReceiveMaximum = 65535

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
	if cfg.ReceiveMaximum <= 0 {
		cfg.ReceiveMaximum = DefaultReceiveMaximum
	}
	cfg.ReceiveMaximum = min(max(cfg.ReceiveMaximum, 2*cfg.BatchSize), 65535)
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
	dialCtx, cancelDial := context.WithTimeout(ctx, 15*time.Second)
	conn, err := (&tls.Dialer{Config: cfg.TLS}).DialContext(dialCtx, "tcp", cfg.Broker)
	cancelDial()
	if err != nil {
		return fmt.Errorf("connect to broker %s: %w", cfg.Broker, err)
	}
	connCtx, lost := context.WithCancelCause(ctx)
	defer lost(nil)
	q := newQueue(cfg.ReceiveMaximum, cfg.BatchSize)
	c := paho.NewClient(paho.ClientConfig{
		ClientID:                   cfg.ClientID,
		Conn:                       packets.NewThreadSafeConn(conn),
		EnableManualAcknowledgment: true,
		SendAcksInterval:           5 * time.Millisecond,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			if err := p.enqueue(q, pr.Packet); err != nil {
				lost(err)
			}
			return true, nil
		}},
		OnClientError: func(err error) { lost(fmt.Errorf("connection: %w", err)) },
		OnServerDisconnect: func(d *paho.Disconnect) {
			reason := ""
			if d.Properties != nil {
				reason = d.Properties.ReasonString
			}
			lost(fmt.Errorf("broker disconnected ingest: reason code %#x %s", d.ReasonCode, reason))
		},
	})
	expiry := uint32(7 * 24 * 3600)
	rm := uint16(cfg.ReceiveMaximum)
	ca, err := c.Connect(connCtx, &paho.Connect{
		ClientID: cfg.ClientID, KeepAlive: 30, CleanStart: false,
		Properties: &paho.ConnectProperties{SessionExpiryInterval: &expiry, ReceiveMaximum: &rm},
	})
	if err != nil {
		if ca != nil {
			return fmt.Errorf("broker %s refused ingest's connection (reason code %#x): %w", cfg.Broker, ca.ReasonCode, err)
		}
		return fmt.Errorf("connect to broker %s: %w", cfg.Broker, err)
	}
	context.AfterFunc(connCtx, func() {
		if ctx.Err() != nil {
			_ = c.Disconnect(&paho.Disconnect{ReasonCode: 0})
		} else {
			_ = conn.Close()
		}
	})
	filter := "$share/" + cfg.Group + "/+/+/+/snapshots"
	sa, err := c.Subscribe(connCtx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: 1}}})
	if err != nil {
		lost(err)
		<-c.Done()
		return fmt.Errorf("subscribe %s: %w", filter, err)
	}
	if len(sa.Reasons) != 1 || sa.Reasons[0] >= 0x80 {
		lost(errors.New("subscription refused"))
		<-c.Done()
		return fmt.Errorf("subscribe %s: refused by the broker (reason codes %v); does the ingest service have the role snapshot-reader?", filter, sa.Reasons)
	}
	cfg.Logger.Info("ingest subscribed", "filter", filter, "session_present", ca.SessionPresent, "receive_maximum", rm)
	cfg.Status.connected(q)
	p.pipeline(ctx, connCtx, q, c)
	<-c.Done()
	if err := context.Cause(connCtx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return ctx.Err()
}

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
