package main

import (
	"errors"
	"os"

	"github.com/spf13/cobra"

	"github.com/fieldtrust/fieldtrust/internal/queue"
	"github.com/fieldtrust/fieldtrust/internal/site"
	"github.com/fieldtrust/fieldtrust/internal/tacs"
)

func newSiteCmd() *cobra.Command {
	var (
		dir, upstream, serverName, mqttAddr, grantsFile, name string
		maxItems                                              int
		maxBytes                                              int64
		logLevel, logFormat                                   string
	)
	c := &cobra.Command{
		Use:   "site --data SITEDIR --upstream HOST:PORT --mqtt-addr ADDR",
		Short: "Run a customer-site broker: the account's gateways connect locally, one mTLS connection forwards to the platform",
		Long: `Run a customer-site broker for one customer account. The account's gateways
connect to it on the site's LAN (--mqtt-addr) with their own certificates, as
they would to the platform; it forwards their snapshots, status, firmware
status and command results to the platform (--upstream) over one outbound
mTLS connection with the account's site certificate, and hands the
platform's commands, firmware notices and CRL bundles down to them.

Messages are queued durably in SITEDIR before the gateways get their
acknowledgement and leave the queue only after the platform's, in order:
nothing is lost through a WAN outage or a restart of the site. When the queue
is full the site slows its gateways down (backpressure) instead of dropping.
The platform's topic access control holds the site to its own account's
gateways.

SITEDIR must hold the site certificate, issued on the platform with
  fieldtrust pki issue MASTER/ACCOUNT --site --ip LAN-IP [--dns NAME] --out SITEDIR
(cert.pem, key.pem, ca.pem); the site keeps its state there too. The
gateways of the account are pointed at the site by the platform's bootstrap
(up --broker-url mqtts://LAN-IP:PORT); they still reach the platform's HTTPS
for enrollment, bootstrap and firmware downloads.`,
		Example: `  fieldtrust site --data ./site-acme --upstream platform.example.com:8883 --mqtt-addr 0.0.0.0:8883`,
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := newLogger(logLevel, logFormat)
			if err != nil {
				return err
			}
			if dir == "" || upstream == "" {
				return usageError{errors.New("--data SITEDIR and --upstream HOST:PORT are required")}
			}
			cfg := site.Config{Dir: dir, Upstream: upstream, ServerName: serverName, MQTTAddr: mqttAddr, Name: name, Logger: log,
				Queue: queue.Options{MaxItems: maxItems, MaxBytes: maxBytes}}
			if grantsFile != "" {
				b, err := os.ReadFile(grantsFile)
				if err != nil {
					return err
				}
				if cfg.Grants, err = tacs.ParseGrants(b); err != nil {
					return err
				}
			}
			return site.Run(cmd.Context(), cfg)
		},
	}
	f := c.Flags()
	f.StringVar(&dir, "data", "", "site directory: the site certificate (cert.pem, key.pem, ca.pem) and the site's state")
	f.StringVar(&upstream, "upstream", "", "the platform's MQTT address, HOST:PORT")
	f.StringVar(&serverName, "upstream-name", "", "name the platform's certificate must carry (default: the host of --upstream)")
	f.StringVar(&mqttAddr, "mqtt-addr", "0.0.0.0:8883", "local listen address for the site's gateways")
	f.StringVar(&name, "name", "", "name of this site, if the account has several (keeps their sessions at the platform apart)")
	f.IntVar(&maxItems, "queue-max", 1_000_000, "site queue bound, in messages")
	f.Int64Var(&maxBytes, "queue-max-bytes", 1<<30, "site queue bound, in bytes")
	f.StringVar(&grantsFile, "grants", "", "the platform's service grants file, if it narrows the site role (default: the built-in roles)")
	addLogFlags(c, &logLevel, &logFormat, "info")
	return c
}
