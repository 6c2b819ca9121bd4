package main

import (
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/fieldtrust/fieldtrust/internal/datadir"
	"github.com/fieldtrust/fieldtrust/internal/est"
	"github.com/fieldtrust/fieldtrust/internal/mail"
	"github.com/fieldtrust/fieldtrust/internal/platform"
)

// upFlags are the flags of 'up', shared with 'demo', which accepts every
// flag of 'up'.
type upFlags struct {
	dataDir, httpAddr   string
	db                  string
	mqttAddr            string
	dnsNames            []string
	brokerURLs          []string
	publishInterval     time.Duration
	estAllowReenroll    bool
	estRequireBinding   bool
	logLevel, logFormat string
	grantsFile          string
	smtpURL             string
	webhookPrivate      bool
	externalURL         string
	broker              string
	cluster             platform.ClusterOptions
}

func (f *upFlags) register(c *cobra.Command) {
	addDataFlag(c, &f.dataDir)
	c.Flags().StringVar(&f.db, "db", "", "database: postgres://... (remembered in the data directory), or empty for SQLite in the data directory")
	c.Flags().StringVar(&f.httpAddr, "http-addr", "127.0.0.1:8443", "HTTPS listen address (health, CA certificates, EST, API)")
	c.Flags().StringVar(&f.mqttAddr, "mqtt-addr", "127.0.0.1:8883", "MQTT over mutual TLS listen address (the broker)")
	c.Flags().StringSliceVar(&f.dnsNames, "dns-name", nil, "extra DNS names for the platform's server certificate (repeatable)")
	c.Flags().StringSliceVar(&f.brokerURLs, "broker-url", nil, "broker endpoint handed to gateways, mqtts://host:port[;weight] (repeatable; default: the embedded broker)")
	c.Flags().DurationVar(&f.publishInterval, "publish-interval", 10*time.Second, "how often gateways publish snapshots (bootstrap)")
	c.Flags().BoolVar(&f.estAllowReenroll, "est-allow-reenroll", false, "let an onboarding certificate enroll again after its claim was used")
	c.Flags().BoolVar(&f.estRequireBinding, "est-require-channel-binding", false, "refuse EST CSRs not bound to their TLS session (RFC 7030 §3.5); plain curl+openssl clients cannot send it")
	c.Flags().StringVar(&f.grantsFile, "grants", "", "service grants file (JSON, version 1; default DIR/grants.json if it exists, else the built-in roles)")
	c.Flags().StringVar(&f.smtpURL, "smtp-url", "", "SMTP server for rule emails: smtp://[user:pass@]host:port?from=ADDR (STARTTLS; plain only to loopback) or smtps://...; default $"+mail.URLEnv+" (prefer the variable: flags show in ps)")
	c.Flags().BoolVar(&f.webhookPrivate, "webhook-allow-private", false, "let rule webhooks reach loopback and private addresses (a receiver on this site)")
	c.Flags().StringVar(&f.externalURL, "external-url", "", "the platform's URL as HTTPS agents reach it, their boarding configuration's baseUrl (default https:// + --http-addr)")
	c.Flags().StringVar(&f.broker, "broker", platform.BrokerEmbedded, "broker tier: embedded, or cluster (a node of the clustered NATS tier, MQTT 3.1.1 only; docs/scale.md)")
	c.Flags().StringVar(&f.cluster.Node, "node-name", "n1", "with --broker cluster: this node's name, unique in the cluster")
	c.Flags().StringVar(&f.cluster.Addr, "cluster-addr", "", "with --broker cluster: this node's route listener, host:port, for a cluster of several nodes (needs PostgreSQL; docs/scale.md)")
	c.Flags().StringSliceVar(&f.cluster.Routes, "routes", nil, "with --broker cluster: the other nodes' --cluster-addr, host:port (comma-separated or repeated)")
	addLogFlags(c, &f.logLevel, &f.logFormat, "info")
}

// notifications reads the notification settings of 'up'.
func (f *upFlags) notifications() (platform.Notifications, error) {
	n := platform.Notifications{WebhookAllowPrivate: f.webhookPrivate}
	u := f.smtpURL
	if u == "" {
		u = os.Getenv(mail.URLEnv)
	}
	if u != "" {
		c, err := mail.ParseURL(u)
		if err != nil {
			return n, usageError{err}
		}
		n.SMTP = &c
	}
	return n, nil
}

func (f *upFlags) config() (platform.Config, error) {
	log, err := newLogger(f.logLevel, f.logFormat)
	if err != nil {
		return platform.Config{}, err
	}
	grants, err := datadir.Grants(f.dataDir, f.grantsFile)
	if err != nil {
		return platform.Config{}, err
	}
	notify, err := f.notifications()
	if err != nil {
		return platform.Config{}, err
	}
	return platform.Config{
		DataDir: f.dataDir, DB: f.db, HTTPAddr: f.httpAddr, MQTTAddr: f.mqttAddr, DNSNames: f.dnsNames, Grants: grants,
		BrokerURLs: f.brokerURLs, PublishInterval: f.publishInterval, ExternalURL: f.externalURL,
		Broker: f.broker, Cluster: f.cluster,
		EST:    est.Policy{AllowReenroll: f.estAllowReenroll, RequireChannelBinding: f.estRequireBinding},
		Logger: log, Notifications: notify,
	}, nil
}

func newUpCmd() *cobra.Command {
	var f upFlags
	c := &cobra.Command{
		Use:   "up",
		Short: "Run the platform on a data directory (initializes it on first start)",
		Long: `Run the fieldtrust platform. On first start it initializes the data directory:
database, transport and e2e PKIs, and the platform's own server certificate.

Stop it with Ctrl-C or SIGTERM; it shuts down cleanly.`,
		Example: `  fieldtrust up
  fieldtrust up --data /var/lib/fieldtrust --http-addr 0.0.0.0:8443 --dns-name platform.example.com`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := f.config()
			if err != nil {
				return err
			}
			return platform.Run(cmd.Context(), cfg)
		},
	}
	f.register(c)
	return c
}
