package outbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/mail"
	"github.com/fieldtrust/fieldtrust/internal/store"
)

func decode(m store.OutboxMessage, v any) error {
	if err := json.Unmarshal(m.Payload, v); err != nil {
		return PermanentError(fmt.Errorf("%s message %s: bad payload: %w", m.Kind, m.ID, err))
	}
	return nil
}

// Mailer sends one email (mail.Config).
type Mailer interface {
	Send(ctx context.Context, m mail.Message) error
}

// EmailSender delivers email messages through Mailer; without one it
// logs where the mail would have gone and fails, so the message waits
// (and is dead after its attempts) until SMTP is configured.
type EmailSender struct{ Mailer Mailer }

// Send implements Sender.
func (s EmailSender) Send(ctx context.Context, m store.OutboxMessage) error {
	var e Email
	if err := decode(m, &e); err != nil {
		return err
	}
	if s.Mailer == nil {
		return fmt.Errorf("no SMTP server is configured (set FIELDTRUST_SMTP_URL or 'up --smtp-url'); mail to %v waits", e.To)
	}
	return s.Mailer.Send(ctx, mail.Message{ID: m.ID, To: e.To, Subject: e.Subject, Body: e.Body,
		Headers: map[string]string{"X-Fieldtrust-Rule": m.RuleID, "Auto-Submitted": "auto-generated"}})
}

// Endpoints finds webhook endpoints.
type Endpoints interface {
	WebhookEndpoint(ctx context.Context, name string) (store.WebhookEndpoint, error)
}

// Opener opens sealed secrets (secretbox.Box).
type Opener interface {
	Open(name string, sealed []byte) ([]byte, error)
}

// Poster posts a signed webhook call (webhook.Client).
type Poster interface {
	Post(ctx context.Context, url string, key []byte, id string, ts time.Time, body []byte) error
}

// WebhookSender delivers webhook messages: the endpoint named by the rule
// must still have the URL the rule names, and its scope must cover the
// device the message is about; the call is signed with the endpoint's
// secret and carries the message ID as webhook-id.
type WebhookSender struct {
	Endpoints Endpoints
	Secrets   Opener
	Client    Poster
	Now       func() time.Time

	mu   sync.Mutex
	keys map[string][]byte // opened secrets by endpoint name + sealed form
}

// Send implements Sender.
func (s *WebhookSender) Send(ctx context.Context, m store.OutboxMessage) error {
	var w Webhook
	if err := decode(m, &w); err != nil {
		return err
	}
	ep, err := s.Endpoints.WebhookEndpoint(ctx, w.Endpoint)
	if errors.Is(err, store.ErrNotFound) {
		return PermanentError(fmt.Errorf("webhook endpoint %s does not exist (add it with 'fieldtrust rule endpoint add')", w.Endpoint))
	}
	if err != nil {
		return err
	}
	if ep.URL != w.URL {
		return PermanentError(fmt.Errorf("webhook endpoint %s now has the URL %s, not the rule's %s: add the rule again", ep.Name, ep.URL, w.URL))
	}
	if ep.Scope != store.VendorScope && !store.InScope(ep.Scope, m.Gateway) {
		return PermanentError(fmt.Errorf("webhook endpoint %s (scope %s) may not receive events of %s", ep.Name, ep.Scope, m.Gateway))
	}
	key, err := s.key(ep)
	if err != nil {
		return PermanentError(err)
	}
	now := time.Now
	if s.Now != nil {
		now = s.Now
	}
	return s.Client.Post(ctx, w.URL, key, m.ID, now(), w.Body)
}

func (s *WebhookSender) key(ep store.WebhookEndpoint) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cacheKey := ep.Name + "\x00" + string(ep.SealedSecret)
	if k, ok := s.keys[cacheKey]; ok {
		return k, nil
	}
	k, err := s.Secrets.Open(ep.Name, ep.SealedSecret)
	if err != nil {
		return nil, err
	}
	if s.keys == nil {
		s.keys = map[string][]byte{}
	}
	s.keys[cacheKey] = k
	return k, nil
}

// Tasks stores tasks.
type Tasks interface {
	PutTask(ctx context.Context, t store.Task) (bool, error)
}

// TaskSender delivers task messages: the task's ID is the message's, so
// a redelivery finds it stored.
type TaskSender struct{ Store Tasks }

// Send implements Sender.
func (s TaskSender) Send(ctx context.Context, m store.OutboxMessage) error {
	var t Task
	if err := decode(m, &t); err != nil {
		return err
	}
	_, err := s.Store.PutTask(ctx, store.Task{ID: m.ID, Title: t.Title, Gateway: t.Gateway, Device: t.Device, Assignee: t.Assignee,
		Due: t.Due, State: store.TaskOpen, RuleID: m.RuleID, AlarmID: t.AlarmID, CreatedAt: t.At})
	return err
}

// Publisher publishes on the broker as an MQTT client (QoS 1).
type Publisher interface {
	Publish(ctx context.Context, topic string, payload []byte) error
}

// MQTTSender delivers MQTT events.
type MQTTSender struct{ Publisher Publisher }

// Send implements Sender.
func (s MQTTSender) Send(ctx context.Context, m store.OutboxMessage) error {
	var e MQTT
	if err := decode(m, &e); err != nil {
		return err
	}
	if s.Publisher == nil {
		return errors.New("the rules service is not connected to the broker")
	}
	return s.Publisher.Publish(ctx, e.Topic, e.Body)
}
