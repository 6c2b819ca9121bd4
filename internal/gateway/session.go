package gateway

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/fieldtrust/fieldtrust/internal/bootstrap"
	"github.com/fieldtrust/fieldtrust/internal/command"
	"github.com/fieldtrust/fieldtrust/internal/est"
	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/tlspolicy"
	"github.com/fieldtrust/fieldtrust/internal/topic"
)

// Status is the retained message on topic.StatusOf(path): the birth message when
// the gateway connects, and its last will when it vanishes.
type Status struct {
	State   string    `json:"state"` // "online" or "offline"
	Time    time.Time `json:"time"`
	Devices int       `json:"devices,omitempty"`
	// Firmware is the version installed per device type.
	Firmware map[string]string `json:"firmware,omitempty"`
}

// connectLoop keeps an MQTT session to the assigned broker (failing over
// to the others in bootstrap order) and drains the queue over it, until ctx
// ends.
func (g *Gateway) connectLoop(ctx context.Context) error {
	wait := time.Second
	first := true
	for {
		err := g.session(ctx, first)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err == nil {
			wait = time.Second // a clean end (re-bootstrap): reconnect at once
			continue
		}
		g.log.Warn("broker session ended; snapshots stay queued", "err", err, "retry_in", wait)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		wait = min(2*wait, 30*time.Second)
		first = false
	}
}

// session runs one MQTT connection: birth, subscriptions, drain. It returns
// nil when a re-bootstrap asks to reconnect.
func (g *Gateway) session(ctx context.Context, first bool) error {
	doc := g.docNow()
	tr, _ := g.creds.current()
	tlsConf := tlspolicy.Client(g.creds.roots, tr.tlsCert())
	tlsConf.VerifyConnection = g.crl.verifyPeer
	offline, _ := json.Marshal(Status{State: "offline"})
	opts := mqtt.NewClientOptions().
		SetClientID(g.path).SetCleanSession(true).SetAutoReconnect(false).
		SetConnectTimeout(15*time.Second).SetKeepAlive(30*time.Second).
		SetTLSConfig(tlsConf).SetOrderMatters(true).
		SetBinaryWill(topic.StatusOf(g.path), offline, 1, true)
	for _, b := range doc.Brokers {
		opts.AddBroker(b)
	}
	// The broker of the list the connection was made with: paho tries
	// them in order, and calls this before each attempt.
	var attempted atomic.Pointer[url.URL]
	opts.SetConnectionAttemptHandler(func(b *url.URL, tc *tls.Config) *tls.Config {
		attempted.Store(b)
		return tc
	})
	lost := make(chan error, 1)
	opts.SetConnectionLostHandler(func(_ mqtt.Client, err error) {
		select {
		case lost <- err:
		default:
		}
	})
	c := mqtt.NewClient(opts)
	tok := c.Connect()
	if !tok.WaitTimeout(30 * time.Second) {
		return errors.New("connect: timed out")
	}
	if err := tok.Error(); err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer c.Disconnect(250)
	pub := func(t string, payload []byte) error {
		tok := c.Publish(t, 1, false, payload)
		if !tok.WaitTimeout(10 * time.Second) {
			return errors.New("publish: no PUBACK within 10 s")
		}
		return tok.Error()
	}
	g.publisher.Store(&pub)
	defer g.publisher.Store(nil)
	g.publishBirth(c)
	subs := map[string]byte{topic.CommandsOf(g.path): 1, topic.FirmwareOf(g.path): 1, crlTopic(doc): 1, topic.CRLE2E: 1}
	tok = c.SubscribeMultiple(subs, g.onMessage)
	if err := subscribed(tok, subs); err != nil {
		return err
	}
	at := brokerIndex(doc.Brokers, attempted.Load())
	g.log.Info("connected to broker", "identity", g.path, "broker", brokerName(doc.Brokers, at))
	back := make(chan string, 1)
	if at > 0 && g.cfg.Failback >= 0 {
		fctx, stopFailback := context.WithCancel(ctx)
		defer stopFailback()
		go g.failback(fctx, doc.Brokers[:at], tlsConf, back)
	}
	if first && g.cfg.Ready != nil {
		g.cfg.Ready(g.path)
	}
	g.wakeFirmware() // reports what the last session could not

	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	drained := make(chan error, 1)
	go func() { drained <- g.pipe.drain(sctx, c) }()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case err := <-lost:
		return fmt.Errorf("connection lost: %w", err)
	case err := <-drained:
		return err
	case earlier := <-back:
		// Rebalancing: the session ends cleanly and the next one starts
		// at once, with the list in order (what was not acknowledged
		// stays queued and is sent again).
		g.log.Info("an earlier broker of the bootstrap list takes connections again: moving back to it",
			"identity", g.path, "broker", earlier, "from", brokerName(doc.Brokers, at))
		cancel()
		<-drained
		return nil
	case order := <-g.orders:
		cancel()
		<-drained
		var err error
		if order.cmd.Type == command.Rebootstrap {
			err = g.doRebootstrap(ctx, order)
		} else {
			g.log.Info("rebooting: the session and the simulated devices restart", "id", order.cmd.ID)
		}
		g.reportResult(order.cmd, nil, err)
		return err
	}
}

// brokerIndex is the position in the list of the broker u (nil or not
// found: -1).
func brokerIndex(brokers []string, u *url.URL) int {
	if u == nil {
		return -1
	}
	for i, b := range brokers {
		if p, err := url.Parse(b); err == nil && p.Host == u.Host {
			return i
		}
	}
	return -1
}

func brokerName(brokers []string, i int) string {
	if i < 0 || i >= len(brokers) {
		return "?"
	}
	return brokers[i]
}

// failbackEvery is Config.Failback's default.
const failbackEvery = 5 * time.Minute

// failback waits a jittered Failback, then probes the brokers earlier in
// the list than the one of the current session, in order, with an MQTT
// CONNECT of the gateway's identity (client ID PATH:probe, clean session,
// no will); it sends the first that takes it on back, or tries again
// after the next wait, until ctx ends. A probe proves what a TCP or TLS
// handshake would not: that the node takes a session (not draining, its
// engine ready, the hook admitting the gateway).
func (g *Gateway) failback(ctx context.Context, earlier []string, tc *tls.Config, back chan<- string) {
	every := g.cfg.Failback
	if every == 0 {
		every = failbackEvery
	}
	for {
		wait := every/2 + time.Duration(rand.Int64N(int64(every)))
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		for _, b := range earlier {
			p := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(b).SetClientID(g.path + ":probe").
				SetCleanSession(true).SetAutoReconnect(false).SetConnectRetry(false).
				SetConnectTimeout(10 * time.Second).SetTLSConfig(tc))
			tok := p.Connect()
			ok := tok.WaitTimeout(15*time.Second) && tok.Error() == nil
			if ok {
				p.Disconnect(0)
				select {
				case back <- b:
				case <-ctx.Done():
				}
				return
			}
			g.log.Debug("failback probe: the earlier broker does not take connections yet", "broker", b, "err", tok.Error())
		}
	}
}

// publishBirth publishes the retained birth message, with the firmware
// versions installed.
func (g *Gateway) publishBirth(c mqtt.Client) {
	birth, _ := json.Marshal(Status{State: "online", Time: time.Now().UTC(), Devices: g.cfg.Simulate, Firmware: g.firmwareVersions()})
	c.Publish(topic.StatusOf(g.path), 1, true, birth)
}

// subscribed waits for a SUBACK and fails unless the broker granted every
// subscription: a gateway that silently missed its CRLs would keep
// trusting revoked certificates, and one that missed its commands could
// not be re-bootstrapped.
func subscribed(tok mqtt.Token, subs map[string]byte) error {
	if !tok.WaitTimeout(15 * time.Second) {
		return errors.New("subscribe: no SUBACK within 15 s")
	}
	if err := tok.Error(); err != nil {
		return fmt.Errorf("subscribe: %w", err)
	}
	st, ok := tok.(*mqtt.SubscribeToken)
	if !ok {
		return fmt.Errorf("subscribe: unexpected token %T", tok)
	}
	granted := st.Result()
	for f := range subs {
		if q, ok := granted[f]; !ok || q > 2 {
			return fmt.Errorf("subscribe: the broker refused %s (return code %#x): the gateway does not run without its commands and CRLs", f, q)
		}
	}
	return nil
}

// crlTopic is where the bootstrap document says the transport CRL bundle
// is retained (the scheme's topic if it says nothing).
func crlTopic(doc *bootstrap.Document) string {
	if doc.CRLTopic == "" {
		return topic.CRLTransport
	}
	return doc.CRLTopic
}

// onMessage handles commands and CRL bundles. A CRL bundle is applied to
// the domain of the topic it came on, whatever that topic is called, so
// that the revocation check of the platform's certificate (transport)
// sees it.
func (g *Gateway) onMessage(_ mqtt.Client, m mqtt.Message) {
	switch m.Topic() {
	case topic.CommandsOf(g.path):
		g.handleCommand(m.Payload())
	case topic.FirmwareOf(g.path):
		if len(m.Payload()) == 0 {
			return // a cleared retained notice
		}
		g.handleNotice(m.Payload())
	case topic.CRLE2E:
		g.crl.apply(pki.E2E, m.Payload())
	case crlTopic(g.docNow()):
		g.crl.apply(pki.Transport, m.Payload())
	default:
		g.log.Warn("ignoring a message on a topic the gateway did not subscribe to", "topic", m.Topic(), "bytes", len(m.Payload()))
	}
}

// renewLoop renews both certificates once the bootstrap's renewal fraction
// of their lifetime has passed; a failure is retried at the next check.
func (g *Gateway) renewLoop(ctx context.Context) {
	t := time.NewTicker(renewCheck)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			frac := g.docNow().RenewalFraction
			tr, e2e := g.creds.current()
			if tr.due(now, frac) {
				if err := g.creds.enrollTransport(ctx, false); err != nil {
					g.log.Error("renewing the transport certificate failed; retrying", "err", err, "expires", tr.leaf().NotAfter)
				} else {
					tr, _ = g.creds.current()
					g.log.Info("transport certificate renewed", "expires", tr.leaf().NotAfter)
				}
			}
			if e2e.due(now, frac) {
				if err := g.creds.enrollE2E(ctx); err != nil {
					g.log.Error("renewing the e2e certificate failed; retrying", "err", err, "expires", e2e.leaf().NotAfter)
				} else {
					_, e2e = g.creds.current()
					g.log.Info("e2e certificate renewed", "expires", e2e.leaf().NotAfter)
				}
			}
		}
	}
}

// renewCheck is how often the gateway checks its certificates' age. Short
// enough for test lifetimes of a minute; cheap (no I/O) otherwise.
const renewCheck = time.Second

// simulate feeds the pipeline from the simulated devices.
func (g *Gateway) simulate(ctx context.Context) {
	devs := newSimulator(g.cfg.Simulate, g.path)
	every := g.cfg.SimulateEvery
	if every <= 0 {
		every = time.Duration(g.docNow().PublishIntervalSeconds * float64(time.Second))
	}
	if d := g.savedInterval(); d > 0 {
		every = d
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		for _, d := range devs {
			if err := g.pipe.submit(d.id, d.typ, time.Now(), d.read()); err != nil && ctx.Err() == nil {
				g.log.Warn("simulated reading not queued", "device", d.id, "err", err)
			} else if err == nil {
				g.readingAt.Store(d.typ, time.Now())
			}
		}
		select {
		case <-ctx.Done():
			return
		case d := <-g.interval:
			g.log.Info("simulator interval set", "interval", d)
			t.Reset(d)
		case <-t.C:
		}
	}
}

func (g *Gateway) submitReading(r Reading) error {
	if err := g.pipe.submit(r.Device, r.Type, time.Now(), r.Values); err != nil {
		return err
	}
	g.readingAt.Store(r.Type, time.Now())
	return nil
}

// permanent reports whether an error from the platform will not go away by
// retrying (a 4xx refusal: not claimed, not trusted, revoked).
func permanent(err error) bool {
	var se *est.StatusError
	return errors.As(err, &se) && se.Code >= 400 && se.Code < 500 && se.Code != http.StatusTooManyRequests
}
