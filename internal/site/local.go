package site

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"

	"github.com/fieldtrust/fieldtrust/internal/queue"
	"github.com/fieldtrust/fieldtrust/internal/tacs"
	"github.com/fieldtrust/fieldtrust/internal/tlspolicy"
)

// The bridge's two local connections, both as the site's own certificate
// (identify maps it to the bridge's role): the collector, a persistent
// MQTT 5 session subscribed to the upward filters with Retain As Published
// (a gateway's retained birth and will stay retained upstream), and the
// publisher, which hands the platform's messages to the gateways. They are
// separate so that a collector blocked on a full queue never delays a
// command on its way down.
const (
	collectorID = bridgeID + "-up"
	publisherID = bridgeID + "-down"
)

// localClient is a live MQTT 5 connection of the bridge to the local
// broker.
type localClient struct {
	c    *paho.Client
	done chan error // the connection ended
}

// dialLocal connects to the local broker as the bridge.
func (s *Site) dialLocal(ctx context.Context, clientID string, persistent bool, onPublish func(*paho.Client, *paho.Publish)) (*localClient, error) {
	conf := tlspolicy.Client(nil, &s.cert)
	// The peer is this process's own broker: its certificate is pinned to
	// the site's own instead of a name (the LAN address may not be the
	// loopback one dialled here).
	conf.InsecureSkipVerify = true
	conf.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 || !cs.PeerCertificates[0].Equal(s.cert.Leaf) {
			return errors.New("the local broker presented another certificate than the site's")
		}
		return nil
	}
	d := tls.Dialer{NetDialer: &net.Dialer{Timeout: dialWait}, Config: conf}
	conn, err := d.DialContext(ctx, "tcp", loopback(s.brk.Addr()))
	if err != nil {
		return nil, fmt.Errorf("dial the local broker: %w", err)
	}
	lc := &localClient{done: make(chan error, 1)}
	end := func(err error) {
		select {
		case lc.done <- err:
		default:
		}
	}
	cc := paho.ClientConfig{
		ClientID:      clientID,
		Conn:          packets.NewThreadSafeConn(conn),
		OnClientError: end,
		OnServerDisconnect: func(d *paho.Disconnect) {
			end(fmt.Errorf("the local broker disconnected the bridge (reason %#x)", d.ReasonCode))
		},
	}
	if onPublish != nil {
		cc.EnableManualAcknowledgment = true
		cc.OnPublishReceived = []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			onPublish(pr.Client, pr.Packet)
			return true, nil
		}}
	}
	lc.c = paho.NewClient(cc)
	cp := &paho.Connect{ClientID: clientID, CleanStart: !persistent, KeepAlive: uint16(keepAlive / time.Second)}
	if persistent {
		exp := uint32(expiry / time.Second)
		cp.Properties = &paho.ConnectProperties{SessionExpiryInterval: &exp}
	}
	cctx, cancel := context.WithTimeout(ctx, dialWait)
	defer cancel()
	if _, err := lc.c.Connect(cctx, cp); err != nil {
		conn.Close()
		return nil, fmt.Errorf("connect to the local broker: %w", err)
	}
	return lc, nil
}

// loopback turns a listen address into one to dial: an unspecified host
// (0.0.0.0, ::) becomes the loopback.
func loopback(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}

// localLoop keeps the collector and the publisher connected.
func (s *Site) localLoop(ctx context.Context) {
	go s.keepLocal(ctx, "publisher", func(ctx context.Context) error {
		lc, err := s.dialLocal(ctx, publisherID, false, nil)
		if err != nil {
			return err
		}
		s.mu.Lock()
		s.local = lc
		s.mu.Unlock()
		defer func() {
			s.mu.Lock()
			s.local = nil
			s.mu.Unlock()
		}()
		return s.hold(ctx, lc)
	})
	s.keepLocal(ctx, "collector", func(ctx context.Context) error {
		lc, err := s.dialLocal(ctx, collectorID, true, func(c *paho.Client, p *paho.Publish) { s.collect(ctx, c, p) })
		if err != nil {
			return err
		}
		subs := make([]paho.SubscribeOptions, 0, len(s.up))
		for _, f := range s.up {
			// RetainHandling 1: retained messages only for a new
			// subscription, not again on every reconnect.
			subs = append(subs, paho.SubscribeOptions{Topic: f, QoS: 1, RetainAsPublished: true, RetainHandling: 1})
		}
		sctx, cancel := context.WithTimeout(ctx, localWait)
		_, err = lc.c.Subscribe(sctx, &paho.Subscribe{Subscriptions: subs})
		cancel()
		if err != nil {
			lc.c.Disconnect(&paho.Disconnect{})
			return fmt.Errorf("subscribe locally to %v: %w", s.up, err)
		}
		return s.hold(ctx, lc)
	})
}

// hold waits until the connection ends or ctx does.
func (s *Site) hold(ctx context.Context, lc *localClient) error {
	select {
	case <-ctx.Done():
		lc.c.Disconnect(&paho.Disconnect{})
		return nil
	case err := <-lc.done:
		lc.c.Disconnect(&paho.Disconnect{})
		return err
	case <-lc.c.Done():
		return errors.New("local connection closed")
	}
}

// keepLocal runs session again whenever it ends, until ctx ends.
func (s *Site) keepLocal(ctx context.Context, what string, session func(context.Context) error) {
	wait := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := session(ctx)
		if ctx.Err() != nil {
			return
		}
		s.log.Warn("bridge's local "+what+" connection ended; connecting again", "err", err, "retry_in", wait)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, 5*time.Second)
	}
}

// collect takes one message from a gateway: it is appended to the durable
// queue, and only then acknowledged to the local broker. While the queue is
// full it waits (the local broker's backpressure then slows the gateways);
// it never drops a message it could store.
func (s *Site) collect(ctx context.Context, c *paho.Client, p *paho.Publish) {
	m := message{Topic: p.Topic, Payload: p.Payload, Retain: p.Retain}
	if d := tacs.Authorize(s.grants, s.subject, tacs.Publish, m.Topic); !d.Allowed {
		// Only a deny grant of the site role can get here (the local
		// subscriptions are the role's grants): the platform would refuse
		// it, so it is not forwarded.
		s.logFull("message not forwarded: the site may not publish it", "topic", m.Topic, "reason", d.Reason)
		c.Ack(p)
		return
	}
	item := encodeItem(m)
	sum := sha256.Sum256(item)
	digest := sum[:recentDigest]
	recentKey := "recent/" + m.Topic
	recent, err := s.q.State(recentKey)
	if err != nil {
		s.log.Warn("site queue state unreadable; the message may be forwarded twice", "err", err)
	}
	if p.Duplicate() && hasDigest(recent, digest) {
		// The local broker sends again what it has no acknowledgement
		// for (after a restart of the site, the last ones queued): it is
		// in the queue already, and a second copy behind later messages
		// would reach ingest out of order.
		c.Ack(p)
		return
	}
	recent = append(recent, digest...)
	if len(recent) > recentDigest*recentPerTopic {
		recent = recent[len(recent)-recentDigest*recentPerTopic:]
	}
	for {
		_, err := s.q.PutWithState(item, []queue.KV{{Key: recentKey, Value: recent}})
		if err == nil {
			break
		}
		st, _ := s.q.Stats()
		if errors.Is(err, queue.ErrFull) && int64(len(item)) > s.maxBytes() {
			// Cannot fit even in an empty queue: waiting would stop the
			// site for good.
			s.log.Error("message larger than the whole site queue; not forwarded", "topic", m.Topic, "bytes", len(item), "queue_max_bytes", s.maxBytes())
			c.Ack(p)
			return
		}
		s.mu.Lock()
		entered := !s.full
		s.full = true
		s.mu.Unlock()
		if entered {
			s.event(Event{Kind: "queue-full"})
		}
		s.logFull("site queue full: forwarding waits for the platform; local gateways are slowed (backpressure), nothing is dropped",
			"err", err, "items", st.Items, "bytes", st.Bytes)
		select {
		case <-ctx.Done():
			return // not acknowledged: the local broker keeps it for the next run
		case <-s.acked:
		case <-time.After(time.Second): // a disk error may pass
		}
	}
	s.mu.Lock()
	if s.full {
		s.full = false
		s.log.Info("site queue accepts messages again")
	}
	s.mu.Unlock()
	if err := c.Ack(p); err != nil {
		s.log.Warn("local acknowledgement failed; the local broker sends the message again", "err", err)
	}
	select {
	case s.wake <- struct{}{}:
	default:
	}
	s.event(Event{Kind: "queued", N: 1})
}

// Per topic, the digests of the last recentPerTopic messages queued are
// kept with the queue (atomically with each Put), so that the local
// broker's redelivery of a message already queued is recognized, also
// after a restart.
const (
	recentDigest   = 8
	recentPerTopic = 64
)

func hasDigest(recent, d []byte) bool {
	for i := 0; i+len(d) <= len(recent); i += len(d) {
		if string(recent[i:i+len(d)]) == string(d) {
			return true
		}
	}
	return false
}

// logFull logs at most once per fullLog interval.
func (s *Site) logFull(msg string, args ...any) {
	s.mu.Lock()
	now := time.Now()
	due := now.Sub(s.fullLog) >= fullLog
	if due {
		s.fullLog = now
	}
	s.mu.Unlock()
	if due {
		s.log.Warn(msg, args...)
	}
}

func (s *Site) maxBytes() int64 {
	if s.cfg.Queue.MaxBytes > 0 {
		return s.cfg.Queue.MaxBytes
	}
	return siteBytes
}

// publishLocal hands a message from the platform to the site's gateways.
func (s *Site) publishLocal(ctx context.Context, t string, payload []byte, retain bool) error {
	s.mu.Lock()
	lc := s.local
	s.mu.Unlock()
	if lc == nil {
		return errors.New("the bridge's local publisher is not connected")
	}
	pctx, cancel := context.WithTimeout(ctx, localWait)
	defer cancel()
	if _, err := lc.c.Publish(pctx, &paho.Publish{Topic: t, QoS: 1, Retain: retain, Payload: payload}); err != nil {
		return fmt.Errorf("publish %s locally: %w", t, err)
	}
	return nil
}
