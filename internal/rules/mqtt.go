package rules

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/fieldtrust/fieldtrust/internal/pahotoken"
	"github.com/fieldtrust/fieldtrust/internal/tacs"
	"github.com/fieldtrust/fieldtrust/internal/topic"
)

// BrokerClient is the rules service's MQTT client, with its own service
// identity (role rules-engine: read every gateway's status, write every
// gateway's events), like any external service: it follows the gateways'
// retained status (birth and last will) for the silent condition and
// publishes the MQTT events of rules.
type BrokerClient struct {
	Addr     string      // host:port of the broker
	TLS      *tls.Config // the service's transport identity
	ClientID string      // default "rules"
	Status   func(gateway string, online bool)
	Logger   *slog.Logger

	mu sync.Mutex
	c  mqtt.Client // the connected client; nil between connections
}

// Run keeps a connection until ctx ends.
func (b *BrokerClient) Run(ctx context.Context) error {
	if b.Logger == nil {
		b.Logger = slog.New(slog.DiscardHandler)
	}
	if b.ClientID == "" {
		b.ClientID = "rules"
	}
	delay := 100 * time.Millisecond
	for {
		err := b.connection(ctx)
		if ctx.Err() != nil {
			return nil
		}
		b.Logger.Warn("rules: broker connection ended; reconnecting", "err", err, "in", delay)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(delay):
		}
		delay = min(2*delay, 10*time.Second)
	}
}

func (b *BrokerClient) connection(ctx context.Context) error {
	lost := make(chan error, 1)
	filter := topic.Of("+/+/+", topic.Status)
	opts := mqtt.NewClientOptions().AddBroker("ssl://" + strings.TrimPrefix(b.Addr, "ssl://")).SetClientID(b.ClientID).
		SetTLSConfig(b.TLS).SetCleanSession(true).SetKeepAlive(30 * time.Second).SetConnectTimeout(15 * time.Second).
		SetAutoReconnect(false).SetConnectRetry(false).SetOrderMatters(false).
		SetConnectionLostHandler(func(_ mqtt.Client, err error) {
			select {
			case lost <- err:
			default:
			}
		})
	c := mqtt.NewClient(opts)
	if err := pahotoken.Wait(ctx, c.Connect(), tokenWait); err != nil {
		return fmt.Errorf("connect to %s: %w", b.Addr, err)
	}
	defer c.Disconnect(250)
	tok := c.Subscribe(filter, 1, func(_ mqtt.Client, m mqtt.Message) {
		gw, err := topic.ParseChannel(m.Topic(), topic.Status)
		if err != nil || b.Status == nil {
			return
		}
		var st struct {
			State string `json:"state"`
		}
		if len(m.Payload()) > 4096 || json.Unmarshal(m.Payload(), &st) != nil {
			return // not a status a gateway writes; nothing to act on
		}
		switch st.State {
		case "online":
			b.Status(gw, true)
		case "offline":
			b.Status(gw, false)
		}
	})
	if err := pahotoken.Wait(ctx, tok, tokenWait); err != nil {
		return fmt.Errorf("subscribe %s: %w", filter, err)
	}
	if err := pahotoken.Granted(tok, tacs.RoleRulesEngine, filter); err != nil {
		return err
	}
	b.mu.Lock()
	b.c = c
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		b.c = nil
		b.mu.Unlock()
	}()
	b.Logger.Info("rules: connected to the broker", "filter", filter)
	select {
	case <-ctx.Done():
		return nil
	case err := <-lost:
		return err
	}
}

// ErrNotConnected is returned by Publish between connections.
var ErrNotConnected = errors.New("the rules service is not connected to the broker")

// Publish publishes payload to topic with QoS 1 and waits for the
// broker's acknowledgement (outbox.Publisher).
func (b *BrokerClient) Publish(ctx context.Context, t string, payload []byte) error {
	b.mu.Lock()
	c := b.c
	b.mu.Unlock()
	if c == nil {
		return ErrNotConnected
	}
	if err := pahotoken.Wait(ctx, c.Publish(t, 1, false, payload), tokenWait); err != nil {
		return fmt.Errorf("publish %s: %w", t, err)
	}
	return nil
}

// tokenWait bounds the wait for the broker's CONNACK, SUBACK and PUBACK.
const tokenWait = 15 * time.Second
