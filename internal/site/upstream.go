package site

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/fieldtrust/fieldtrust/internal/tacs"
	"github.com/fieldtrust/fieldtrust/internal/tlspolicy"
	"github.com/fieldtrust/fieldtrust/internal/topic"
)

// upstreamLoop keeps the one connection to the platform, reconnecting with
// a doubling wait (1 s up to Config.MaxBackoff) that starts over after a
// session that connected.
func (s *Site) upstreamLoop(ctx context.Context) {
	wait := backoff0
	for {
		connected, err := s.upstreamSession(ctx)
		if ctx.Err() != nil {
			return
		}
		if connected {
			wait = backoff0
		}
		st, _ := s.q.Stats()
		s.log.Warn("platform connection ended; messages stay queued", "err", err, "queued", st.Items, "retry_in", wait)
		s.event(Event{Kind: "upstream-lost", Err: err})
		s.event(Event{Kind: "backoff", N: int(wait / time.Millisecond)})
		select {
		case <-ctx.Done():
			return
		case <-s.cfg.After(wait):
		}
		wait = min(2*wait, s.cfg.MaxBackoff)
	}
}

// upstreamSession runs one connection to the platform: MQTT 3.1.1 (which
// every broker tier speaks), a persistent session under the site's client
// ID so that commands sent while the WAN is down wait at the platform, the
// platform→gateway subscriptions and the CRL topics, then the queue is
// drained in order. It reports whether it connected.
func (s *Site) upstreamSession(ctx context.Context) (bool, error) {
	roots := x509.NewCertPool()
	roots.AddCert(s.root)
	conf := tlspolicy.Client(roots, &s.cert)
	conf.ServerName = s.cfg.ServerName
	lost := make(chan error, 1)
	failed := make(chan error, 1)
	opts := mqtt.NewClientOptions().AddBroker("ssl://" + s.cfg.Upstream).
		SetClientID(s.upstreamClientID()).SetCleanSession(false).
		SetAutoReconnect(false).SetConnectRetry(false).
		SetConnectTimeout(dialWait).SetKeepAlive(keepAlive).
		SetTLSConfig(conf).SetOrderMatters(true).SetAutoAckDisabled(true).
		SetConnectionLostHandler(func(_ mqtt.Client, err error) {
			select {
			case lost <- err:
			default:
			}
		})
	c := mqtt.NewClient(opts)
	tok := c.Connect()
	if !tok.WaitTimeout(dialWait + 5*time.Second) {
		c.Disconnect(0)
		return false, errors.New("connect to the platform: timed out")
	}
	if err := tok.Error(); err != nil {
		return false, fmt.Errorf("connect to the platform: %w", err)
	}
	defer c.Disconnect(250)

	subs := map[string]byte{topic.CRLTransport: 1, topic.CRLE2E: 1}
	for _, f := range s.down {
		subs[f] = 1
	}
	stok := c.SubscribeMultiple(subs, func(_ mqtt.Client, m mqtt.Message) { s.deliverDown(ctx, m, failed) })
	if !stok.WaitTimeout(dialWait) {
		return true, errors.New("subscribe at the platform: timed out")
	}
	if err := stok.Error(); err != nil {
		return true, fmt.Errorf("subscribe at the platform: %w", err)
	}
	for f, code := range stok.(*mqtt.SubscribeToken).Result() {
		if code >= 0x80 {
			return true, fmt.Errorf("the platform refused the site's subscription to %s: is the certificate a site certificate of this account, and does the platform know the %q role?", f, tacs.RoleSite)
		}
	}
	st, _ := s.q.Stats()
	s.log.Info("connected to the platform", "upstream", s.cfg.Upstream, "as", s.subject.String(), "client_id", s.upstreamClientID(), "queued", st.Items)
	s.event(Event{Kind: "upstream-connected"})

	for {
		items, err := s.q.Peek(maxBatch)
		if err != nil {
			return true, fmt.Errorf("read the site queue: %w", err)
		}
		if len(items) == 0 {
			select {
			case <-ctx.Done():
				return true, nil
			case err := <-lost:
				return true, fmt.Errorf("connection lost: %w", err)
			case err := <-failed:
				return true, err
			case <-s.wake:
				continue
			}
		}
		toks := make([]mqtt.Token, len(items))
		for i, it := range items {
			m, err := decodeItem(it.Data)
			if err != nil {
				// A damaged record: nothing to forward. Logged, then
				// removed with the batch so the queue goes on.
				s.log.Error("damaged item in the site queue; skipped", "id", it.ID, "err", err)
				continue
			}
			toks[i] = c.Publish(m.Topic, 1, m.Retain, m.Payload)
		}
		// PUBACKs come in order; the queue gives up only the prefix the
		// platform acknowledged, so a lost connection resends the rest in
		// order.
		done := make([]uint64, 0, len(items))
		var perr error
		for i, tok := range toks {
			if tok != nil {
				if !tok.WaitTimeout(ackWait) {
					perr = fmt.Errorf("no PUBACK from the platform within %v", ackWait)
					break
				}
				if err := tok.Error(); err != nil {
					perr = fmt.Errorf("publish %s: %w", topicOf(items[i].Data), err)
					break
				}
			}
			done = append(done, items[i].ID)
		}
		if len(done) > 0 {
			if err := s.q.Ack(done...); err != nil {
				return true, fmt.Errorf("site queue: %w", err)
			}
			select {
			case s.acked <- struct{}{}:
			default:
			}
			s.event(Event{Kind: "forwarded", N: len(done)})
		}
		if perr != nil {
			return true, perr
		}
	}
}

// upstreamClientID is the site's client ID at the platform.
func (s *Site) upstreamClientID() string {
	if s.cfg.Name != "" {
		return s.subject.String() + ":" + s.cfg.Name
	}
	return s.subject.String()
}

// topicOf names an item's topic for an error message.
func topicOf(item []byte) string {
	m, err := decodeItem(item)
	if err != nil {
		return "(damaged item)"
	}
	return m.Topic
}

// deliverDown hands a message from the platform to the site: a CRL bundle
// is applied and republished (retained) for the gateways, a message on a
// platform→gateway channel is published locally. It is acknowledged to the
// platform only once the local broker took it; otherwise the session ends
// and the platform sends it again on the next one.
func (s *Site) deliverDown(ctx context.Context, m mqtt.Message, failed chan<- error) {
	t, retain := m.Topic(), m.Retained()
	switch t {
	case topic.CRLTransport:
		if _, err := s.applyCRL(m.Payload(), true); err != nil {
			s.log.Warn("CRL bundle from the platform not applied", "err", err)
			m.Ack()
			return
		}
		retain = true // the platform's CRL topics are retained
	case topic.CRLE2E:
		retain = true
	default:
		if d := tacs.Authorize(s.grants, s.subject, tacs.Subscribe, t); !d.Allowed {
			s.logFull("message from the platform not handed down: the site may not read it", "topic", t, "reason", d.Reason)
			m.Ack()
			return
		}
	}
	if err := s.publishLocal(ctx, t, m.Payload(), retain); err != nil {
		select {
		case failed <- err:
		default:
		}
		return
	}
	m.Ack()
}
