package cluster

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// The engine's MQTT streams the limits read (nats-server mqtt.go): one
// message per session (subject $MQTT.sess.<hash of the client ID>, JSON
// with the client ID and its clean flag) and one per retained topic
// (subject $MQTT.rmsgs.<topic as NATS subject>, headers with the topic and
// the publisher's username, which our hook sets to the verified identity).
const (
	sessStream     = "$MQTT_sess"
	sessSubjects   = "$MQTT.sess.>"
	rmsgsStream    = "$MQTT_rmsgs"
	rmsgsSubjects  = "$MQTT.rmsgs.>"
	rmsgsPrefix    = "$MQTT.rmsgs."
	rmsgsTopicHdr  = "Nmqtt-RTopic"
	rmsgsFlagsHdr  = "Nmqtt-RFlags"
	rmsgsSourceHdr = "Nmqtt-RSource"
	rmsgsDelMarker = "-"
)

// engineClient is the node's own in-process JetStream client, through
// which the limits read the engine's replicated session and retained
// state. It connects through server.InProcessConn (a net.Pipe, no
// listener) with a random token that never leaves the process; the hook
// takes exactly that (isEngineClient) and gives it the JetStream requests
// the limits need, nothing else.
type engineClient struct {
	token string
	nc    *nats.Conn
	js    jetstream.JetStream
}

func newEngineToken() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("engine client token: %w", err)
	}
	return hex.EncodeToString(b), nil
}

func (e *engineClient) connect(s *server.Server) error {
	nc, err := nats.Connect("", nats.InProcessServer(s), nats.Token(e.token), nats.Name("fieldtrust-limits"),
		nats.MaxReconnects(-1))
	if err != nil {
		return fmt.Errorf("engine client: %w", err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return fmt.Errorf("engine client: %w", err)
	}
	e.nc, e.js = nc, js
	return nil
}

// isEngineClient reports whether a connection is the node's own engine
// client: in process (a pipe, which no network peer can be) and with the
// token.
func (e *engineClient) isEngineClient(c server.ClientAuthentication) bool {
	if c.Kind() != server.CLIENT || e.token == "" {
		return false
	}
	addr := c.RemoteAddress()
	if addr == nil || addr.Network() != "pipe" {
		return false
	}
	o := c.GetOpts()
	return o != nil && subtle.ConstantTimeCompare([]byte(o.Token), []byte(e.token)) == 1
}

// enginePermissions are the engine client's: read the two streams, follow
// them with its own consumers, delete retained messages beyond a limit,
// and remove a revoked identity's sessions (read a session record, delete
// it and the session's durable consumers on the messages and PUBREL
// streams, one token each: revoked.go).
func enginePermissions() *server.Permissions {
	return &server.Permissions{
		Publish: &server.SubjectPermission{Allow: []string{
			"$JS.API.INFO",
			"$JS.API.STREAM.INFO." + sessStream, "$JS.API.STREAM.INFO." + rmsgsStream,
			"$JS.API.CONSUMER.*." + sessStream + ".>", "$JS.API.CONSUMER.*." + rmsgsStream + ".>",
			"$JS.API.CONSUMER.MSG.NEXT." + sessStream + ".*", "$JS.API.CONSUMER.MSG.NEXT." + rmsgsStream + ".*",
			"$JS.API.STREAM.MSG.DELETE." + rmsgsStream,
			"$JS.API.STREAM.MSG.GET." + sessStream, "$JS.API.STREAM.MSG.DELETE." + sessStream,
			"$JS.API.CONSUMER.DELETE." + msgsStream + ".*", "$JS.API.CONSUMER.DELETE." + outStream + ".*",
		}},
		Subscribe: &server.SubjectPermission{Allow: []string{"_INBOX.>"}},
	}
}

// follower keeps an in-memory view of one of the engine's streams: an
// ordered consumer (R1, no acknowledgements) delivering the last message
// of every subject, then every new one, to apply, in stream order. The
// engine deletes a message without telling consumers, so a view is built
// only of what each new message says (a session saved clean is no longer
// persistent; a retained message with an empty body is removed).
//
// The engine creates its MQTT streams at the first MQTT connection: until
// then the view is empty, which is exact.
type follower struct {
	js     jetstream.JetStream
	stream string
	filter string
	apply  func(jetstream.Msg)
	log    *slog.Logger
	// headersOnly: the consumer delivers headers and the payload's size
	// (nats.MsgSize), not the payload.
	headersOnly bool

	mu   sync.Mutex
	cons jetstream.Consumer
	cc   jetstream.ConsumeContext
	// The consumer and its sequence of the last message applied (a
	// consumer's sequence counts what it delivered; its stream sequence can
	// pass messages deleted meanwhile, which are never delivered).
	lastCons    string
	lastConsSeq uint64
	// synced: the view caught up with the stream once (a node starting
	// replays the whole stream first; until then its view undercounts).
	synced bool
}

// errNotFollowing: the view cannot be trusted now.
var errNotFollowing = errors.New("engine state not followed")

// run starts following and keeps at it until ctx ends (a stream that
// appears later, a consumer that failed).
func (f *follower) run(ctx context.Context) {
	for {
		err := f.start(ctx)
		if err == nil && !f.following() {
			sctx, cancel := context.WithTimeout(ctx, time.Minute)
			err = f.sync(sctx)
			cancel()
		}
		if err != nil && ctx.Err() == nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
			f.log.Warn("cluster limits: following the engine's state failed; retrying", "stream", f.stream, "err", err)
		}
		select {
		case <-ctx.Done():
			f.stop()
			return
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// start creates the consumer if there is none; jetstream.ErrStreamNotFound
// means the stream does not exist (yet).
func (f *follower) start(ctx context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.cc != nil {
		return nil
	}
	s, err := f.js.Stream(ctx, f.stream)
	if err != nil {
		return err
	}
	cons, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{f.filter}, DeliverPolicy: jetstream.DeliverLastPerSubjectPolicy,
		MaxResetAttempts: -1, HeadersOnly: f.headersOnly,
	})
	if err != nil {
		return fmt.Errorf("consumer on %s: %w", f.stream, err)
	}
	cc, err := cons.Consume(func(m jetstream.Msg) {
		meta, err := m.Metadata()
		if err != nil {
			return
		}
		f.apply(m)
		f.mu.Lock()
		f.lastCons, f.lastConsSeq = meta.Consumer, meta.Sequence.Consumer
		f.mu.Unlock()
	}, jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
		f.log.Debug("cluster limits: consumer", "stream", f.stream, "err", err)
	}))
	if err != nil {
		return fmt.Errorf("consume %s: %w", f.stream, err)
	}
	f.cons, f.cc = cons, cc
	return nil
}

func (f *follower) stop() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.cc != nil {
		f.cc.Stop()
		f.cc = nil
	}
}

// sync returns once the view has applied everything the stream holds now
// (the consumer has nothing pending and every message delivered to it is
// applied), or the error that prevents knowing it: callers refuse then.
func (f *follower) sync(ctx context.Context) error {
	if err := f.start(ctx); err != nil {
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			return nil // no stream, no state: the empty view is exact (not synced: the stream may appear)
		}
		return fmt.Errorf("%w: %w", errNotFollowing, err)
	}
	f.mu.Lock()
	cons := f.cons
	f.mu.Unlock()
	for {
		info, err := cons.Info(ctx)
		if err != nil {
			return fmt.Errorf("%w: %w", errNotFollowing, err)
		}
		f.mu.Lock()
		done := info.NumPending == 0 &&
			(info.Delivered.Consumer == 0 || f.lastCons == info.Name && f.lastConsSeq >= info.Delivered.Consumer)
		f.mu.Unlock()
		if done {
			f.mu.Lock()
			f.synced = true
			f.mu.Unlock()
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: %w", errNotFollowing, ctx.Err())
		case <-time.After(10 * time.Millisecond): // the consumer delivers on its own
		}
	}
}
