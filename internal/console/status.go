package console

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/fieldtrust/fieldtrust/internal/pahotoken"
	"github.com/fieldtrust/fieldtrust/internal/tacs"
	"github.com/fieldtrust/fieldtrust/internal/topic"
)

// GatewayStatus is a gateway's last birth message or will (the gateway's
// retained message on its status topic).
type GatewayStatus struct {
	Online bool
	Since  time.Time // when the message arrived
	Time   time.Time // the time the gateway wrote into its birth message
}

// StatusWatcher keeps every gateway's online state by subscribing, as an
// MQTT client with its own service identity, to every gateway's status
// topic: the birth message says online, the last will (sent by the broker
// when the gateway vanishes) offline. Retained messages give the state of
// gateways that connected before the watcher did.
type StatusWatcher struct {
	Broker   string      // host:port of the broker
	TLS      *tls.Config // client certificate of a service whose role reads +/+/+/status
	ClientID string
	Logger   *slog.Logger
	// OnChange, if set, is called on every change of a gateway's state.
	OnChange func(gateway string, s GatewayStatus)

	mu    sync.RWMutex
	state map[string]GatewayStatus
}

// Status implements StatusSource.
func (w *StatusWatcher) Status(gateway string) (GatewayStatus, bool) {
	w.mu.RLock()
	defer w.mu.RUnlock()
	s, ok := w.state[gateway]
	return s, ok
}

// maxStatusMessage bounds a status message; a gateway writes ~80 bytes.
const maxStatusMessage = 1024

// Run keeps the subscription until ctx ends; it returns when a connection
// ends (the supervisor restarts it).
func (w *StatusWatcher) Run(ctx context.Context) error {
	log := w.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	connCtx, lost := context.WithCancelCause(ctx)
	defer lost(nil)
	filter := topic.Of("+/+/+", topic.Status)
	opts := mqtt.NewClientOptions().AddBroker("ssl://" + w.Broker).SetClientID(w.ClientID).SetTLSConfig(w.TLS).
		SetCleanSession(true).SetKeepAlive(30 * time.Second).SetConnectTimeout(15 * time.Second).
		SetAutoReconnect(false).SetConnectRetry(false).SetOrderMatters(true).
		SetDefaultPublishHandler(func(_ mqtt.Client, m mqtt.Message) { w.handle(m.Topic(), m.Payload(), log) }).
		SetConnectionLostHandler(func(_ mqtt.Client, err error) { lost(fmt.Errorf("connection lost: %w", err)) })
	c := mqtt.NewClient(opts)
	if err := pahotoken.Wait(connCtx, c.Connect(), tokenWait); err != nil {
		return fmt.Errorf("connect to broker %s: %w", w.Broker, err)
	}
	defer c.Disconnect(250)
	tok := c.Subscribe(filter, 1, nil)
	if err := pahotoken.Wait(connCtx, tok, tokenWait); err != nil {
		return fmt.Errorf("subscribe %s: %w", filter, err)
	}
	if err := pahotoken.Granted(tok, RoleStatusReader, filter); err != nil {
		return err
	}
	log.Info("console status watcher subscribed", "filter", filter)
	<-connCtx.Done()
	if err := context.Cause(connCtx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return ctx.Err()
}

// RoleStatusReader is the service role the console's watcher needs: read
// +/+/+/status (tacs.DefaultGrants has it).
const RoleStatusReader = tacs.RoleStatusReader

// handle applies one status message; anything malformed is ignored (the
// broker already checked that the publisher owns the topic).
func (w *StatusWatcher) handle(t string, payload []byte, log *slog.Logger) {
	gw, err := topic.ParseChannel(t, topic.Status)
	if err != nil || len(payload) > maxStatusMessage {
		return
	}
	var m struct {
		State string    `json:"state"`
		Time  time.Time `json:"time"`
	}
	if len(payload) == 0 || json.Unmarshal(payload, &m) != nil || (m.State != "online" && m.State != "offline") {
		log.Debug("console: ignoring a malformed status message", "topic", t, "size", len(payload))
		return
	}
	s := GatewayStatus{Online: m.State == "online", Since: time.Now().UTC(), Time: m.Time}
	w.mu.Lock()
	if w.state == nil {
		w.state = map[string]GatewayStatus{}
	}
	old, had := w.state[gw]
	changed := !had || old.Online != s.Online
	w.state[gw] = s
	w.mu.Unlock()
	if changed && w.OnChange != nil {
		w.OnChange(gw, s)
	}
}

// tokenWait bounds the wait for the broker's CONNACK and SUBACK.
const tokenWait = 15 * time.Second
