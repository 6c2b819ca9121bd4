package loadgen

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/fieldtrust/fieldtrust/internal/topic"
)

// Publisher sends the sealed snapshots of every gateway to the broker, one
// MQTT connection per gateway identity (QoS 1, clean session), as the
// gateways' drainers do.
//
// Two bounds keep the backlog honest. Window is each connection's number
// of publishes not yet acknowledged by the broker (the gateway's drain
// batch). Ahead, if positive, bounds how many snapshots may be published
// but not yet accounted for by ingest across the whole fleet (stored,
// duplicate or rejected, as Release reports): a fleet publishing at its
// own pace, which the broker never has to queue more than Ahead of. Ahead
// 0 publishes as fast as the broker acknowledges, and the broker must
// queue whatever ingest has not taken yet.
type Publisher struct {
	Broker string // host:port of the MQTT listener
	Window int    // per-connection publishes in flight; default 16
	Ahead  int    // fleet-wide published minus accounted for; 0 = unbounded

	published atomic.Int64
	slots     chan struct{} // capacity Ahead; nil if unbounded
	once      sync.Once
}

// GatewayFeed is one gateway's connection identity and its envelopes.
type GatewayFeed struct {
	Path string // identity path; the topic is topic.SnapshotsOf(Path)
	TLS  *tls.Config
	File string // written by SealGateway
}

// Published returns how many publishes the broker has acknowledged.
func (p *Publisher) Published() int64 { return p.published.Load() }

func (p *Publisher) init() {
	p.once.Do(func() {
		if p.Window <= 0 {
			p.Window = 16
		}
		if p.Ahead > 0 {
			p.slots = make(chan struct{}, p.Ahead)
		}
	})
}

// Release reports that n more published snapshots were accounted for by
// ingest, letting the fleet publish n more (with Ahead set).
func (p *Publisher) Release(n int) {
	p.init()
	if p.slots == nil {
		return
	}
	for range n {
		select {
		case <-p.slots:
		default:
			return
		}
	}
}

// Run connects every gateway and publishes its envelopes, returning when
// all are acknowledged by the broker, ctx ends, or a gateway fails.
func (p *Publisher) Run(ctx context.Context, feeds []GatewayFeed) error {
	p.init()
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	for _, f := range feeds {
		wg.Go(func() {
			if err := p.runGateway(ctx, f); err != nil {
				cancel(fmt.Errorf("gateway %s: %w", f.Path, err))
			}
		})
	}
	wg.Wait()
	if err := context.Cause(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return ctx.Err()
}

func (p *Publisher) runGateway(ctx context.Context, f GatewayFeed) error {
	envs, err := OpenEnvelopes(f.File)
	if err != nil {
		return err
	}
	defer envs.Close()
	c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker("ssl://" + p.Broker).SetClientID(f.Path).
		SetTLSConfig(f.TLS).SetCleanSession(true).SetAutoReconnect(false).
		SetKeepAlive(60 * time.Second).SetWriteTimeout(30 * time.Second).SetMaxResumePubInFlight(p.Window))
	if tok := c.Connect(); !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
		return fmt.Errorf("connect: %v", tok.Error())
	}
	defer c.Disconnect(250)
	to := topic.SnapshotsOf(f.Path)
	var inflight []mqtt.Token
	wait := func(tok mqtt.Token) error {
		select {
		case <-tok.Done():
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(60 * time.Second):
			return errors.New("no PUBACK within 60 s")
		}
		if err := tok.Error(); err != nil {
			return fmt.Errorf("publish: %w", err)
		}
		p.published.Add(1)
		return nil
	}
	for {
		env, err := envs.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		if len(inflight) == p.Window {
			if err := wait(inflight[0]); err != nil {
				return err
			}
			inflight = inflight[1:]
		}
		if p.slots != nil {
			select {
			case p.slots <- struct{}{}:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		inflight = append(inflight, c.Publish(to, 1, false, env))
	}
	for _, tok := range inflight {
		if err := wait(tok); err != nil {
			return err
		}
	}
	return nil
}
