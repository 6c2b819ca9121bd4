package cluster

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// Publisher is how the platform publishes (CRL bundles, commands) on the
// clustered tier: a plain MQTT client of a node with the platform's own
// service identity, so its messages pass the same hook and TACS as every
// other client's (the engine has no in-process publish into MQTT
// retained messages and sessions).
type Publisher struct {
	c   mqtt.Client
	log *slog.Logger
}

// publishTimeout bounds the wait for a PUBACK.
const publishTimeout = 15 * time.Second

// Dial connects a publisher to addr with tlsConf (the service's client
// certificate) and client ID clientID (the service's name, ':' and a
// suffix: ClientIDAllowed); it reconnects by itself after a lost link.
func Dial(ctx context.Context, addr, clientID string, tlsConf *tls.Config, log *slog.Logger) (*Publisher, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker("ssl://" + addr).SetClientID(clientID).
		SetCleanSession(true).SetAutoReconnect(true).SetConnectRetry(false).SetTLSConfig(tlsConf).
		SetConnectionLostHandler(func(_ mqtt.Client, err error) { log.Warn("publisher lost its broker connection", "err", err) }))
	tok := c.Connect()
	select {
	case <-tok.Done():
	case <-ctx.Done():
		c.Disconnect(0)
		return nil, fmt.Errorf("connect publisher to %s: %w", addr, ctx.Err())
	}
	if err := tok.Error(); err != nil {
		return nil, fmt.Errorf("connect publisher to %s: %w", addr, err)
	}
	return &Publisher{c: c, log: log}, nil
}

// Publish sends a message and, for QoS 1, waits for the PUBACK.
func (p *Publisher) Publish(topic string, payload []byte, retain bool, qos byte) error {
	tok := p.c.Publish(topic, qos, retain, payload)
	if !tok.WaitTimeout(publishTimeout) {
		return fmt.Errorf("publish %s: no acknowledgement within %v", topic, publishTimeout)
	}
	if err := tok.Error(); err != nil {
		return fmt.Errorf("publish %s: %w", topic, err)
	}
	return nil
}

// Close disconnects.
func (p *Publisher) Close() { p.c.Disconnect(250) }
