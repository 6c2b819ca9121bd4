package platform

import (
	"crypto/tls"
	"log/slog"
	"net/http"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fieldtrust/fieldtrust/internal/mail"
	"github.com/fieldtrust/fieldtrust/internal/outbox"
	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/rules"
	"github.com/fieldtrust/fieldtrust/internal/secretbox"
	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/supervisor"
	"github.com/fieldtrust/fieldtrust/internal/webhook"
)

// Notifications configures how the platform delivers what rules send.
type Notifications struct {
	// SMTP is the mail server; nil: email messages wait in the outbox
	// (and their deliveries log that no server is configured).
	SMTP *mail.Config
	// WebhookAllowPrivate lets webhooks reach loopback and private
	// addresses (tests, a receiver on the same site); off, a rule cannot
	// aim the platform at its own network.
	WebhookAllowPrivate bool
	// WebhookTLS replaces the webhook client's TLS configuration (a
	// private CA); nil: the system roots.
	WebhookTLS *tls.Config
	// RulesTick is how often silence is checked; default 10 s.
	RulesTick time.Duration
	// Outbox tunes the dispatcher (tests); zero fields take its defaults.
	Outbox outbox.Config
}

// rulesPlatform is the rules engine, its broker client and the outbox
// dispatcher, wired to the store.
type rulesPlatform struct {
	svc    *rules.Service
	broker *rules.BrokerClient
	disp   *outbox.Dispatcher
}

func newRulesPlatform(n Notifications, st store.Store, dataDir, mqttAddr string, brokerTLS *tls.Config, reg prometheus.Registerer, log *slog.Logger) *rulesPlatform {
	wake := make(chan struct{}, 1)
	svc := &rules.Service{Store: st, Logger: log.With("component", "rules"), Registerer: reg, TickEvery: n.RulesTick,
		Notify: func() {
			select {
			case wake <- struct{}{}:
			default:
			}
		}}
	bc := &rules.BrokerClient{Addr: mqttAddr, TLS: brokerTLS, Status: svc.GatewayStatus, Logger: log.With("component", "rules-broker")}
	var transport *http.Transport
	if n.WebhookTLS != nil {
		transport = http.DefaultTransport.(*http.Transport).Clone()
		transport.TLSClientConfig = n.WebhookTLS
	}
	email := outbox.EmailSender{}
	if n.SMTP != nil {
		email.Mailer = n.SMTP
		log.Info("notifications: email through " + n.SMTP.String())
	} else {
		log.Warn("notifications: no SMTP server configured (--smtp-url or " + mail.URLEnv + "); email waits in the outbox")
	}
	oc := n.Outbox
	oc.Store, oc.Rate, oc.Wake, oc.Registerer, oc.Logger = st, svc.RateOf, wake, reg, log.With("component", "outbox")
	oc.Senders = map[string]outbox.Sender{
		rules.ActionEmail: email,
		rules.ActionWebhook: &outbox.WebhookSender{Endpoints: st, Secrets: secretbox.New(dataDir, []byte(os.Getenv(pki.PassphraseEnv))),
			Client: webhook.NewClient(n.WebhookAllowPrivate, transport)},
		rules.ActionTask: outbox.TaskSender{Store: st},
		rules.ActionMQTT: outbox.MQTTSender{Publisher: bc},
	}
	return &rulesPlatform{svc: svc, broker: bc, disp: outbox.New(oc)}
}

// services are the supervisor's services of rules: a store outage stops
// the engine and the dispatcher like revocation (10 failures).
func (r *rulesPlatform) services() []supervisor.Service {
	return []supervisor.Service{
		{Name: "rules", Run: r.svc.Run, GiveUpAfter: 10},
		{Name: "rules-broker", Run: r.broker.Run, GiveUpAfter: -1},
		{Name: "outbox", Run: r.disp.Run, GiveUpAfter: 10},
	}
}

// committed is ingest's hook.
func (r *rulesPlatform) committed(snaps []store.SnapshotRecord, events []store.IntegrityEvent, rejects []store.Reject) {
	r.svc.Committed(snaps, events, rejects)
}
