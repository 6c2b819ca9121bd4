package main

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net/url"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/fieldtrust/fieldtrust/internal/gateway"
	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/queue"
)

func newGatewayCmd() *cobra.Command {
	var (
		platform, caFile, obCert, obKey, state, local string
		simulate, maxItems                            int
		every                                         time.Duration
		rejectNew, noReenroll                         bool
		logLevel, logFormat                           string
		fwRoot                                        string
		fwTypes                                       []string
		healthTimeout                                 time.Duration
		failback                                      time.Duration
	)
	c := &cobra.Command{
		Use:   "gateway --platform URL --ca ROOT.pem --onboarding-cert C --onboarding-key K --state DIR",
		Short: "Run a field gateway: onboard over EST, seal snapshots, deliver them over mTLS MQTT",
		Long: `Run a field gateway. On first start it generates its keys in --state (0600,
never sent), enrolls over EST with the manufacturer onboarding certificate,
fetches its configuration from the platform's bootstrap service, and connects
to its assigned broker with mutual TLS. Measurements come from simulated
devices (--simulate N) and/or the loopback HTTP input (--listen-local);
each becomes a hash-chained snapshot, signed and sealed for the recipients the
platform names, queued on disk (surviving restarts and outages) and published
QoS 1. Certificates are renewed before they expire.

Later starts reuse the state directory; the onboarding flags are then only
needed if the operational certificate expired while offline.`,
		Example: `  fieldtrust gateway --platform https://127.0.0.1:8443 --ca transport-root.pem \
    --onboarding-cert idevid.pem --onboarding-key idevid.key --state ./gw-1 --simulate 10`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := newLogger(logLevel, logFormat)
			if err != nil {
				return err
			}
			u, err := url.Parse(platform)
			if err != nil || u.Scheme != "https" || u.Host == "" {
				return usageError{fmt.Errorf("--platform %q: want https://host:port", platform)}
			}
			if caFile == "" || state == "" {
				return usageError{errors.New("--ca and --state are required")}
			}
			ca, err := pki.ReadCertsFile(caFile)
			if err != nil {
				return fmt.Errorf("--ca: %w (get it from https://PLATFORM/ca/transport.pem)", err)
			}
			cfg := gateway.Config{
				Platform: platform, CA: ca, StateDir: state, Simulate: simulate, SimulateEvery: every,
				ListenLocal: local, ReenrollExpired: !noReenroll, Logger: log,
				Queue: queue.Options{MaxItems: maxItems}, Failback: failback,
			}
			if rejectNew {
				cfg.Queue.Policy = queue.RejectNew
			}
			if fwRoot != "" {
				if cfg.FirmwareRoot, err = os.ReadFile(fwRoot); err != nil {
					return fmt.Errorf("--firmware-root: %w (the root.json of 'fieldtrust firmware keys init')", err)
				}
			}
			cfg.FirmwareTypes, cfg.HealthTimeout = fwTypes, healthTimeout
			if (obCert == "") != (obKey == "") {
				return usageError{errors.New("--onboarding-cert and --onboarding-key go together")}
			}
			if obCert != "" {
				pair, err := tls.LoadX509KeyPair(obCert, obKey)
				if err != nil {
					return fmt.Errorf("onboarding certificate: %w", err)
				}
				cfg.Onboarding = &pair
			}
			return gateway.Run(cmd.Context(), cfg)
		},
	}
	f := c.Flags()
	f.StringVar(&platform, "platform", "https://127.0.0.1:8443", "platform base URL")
	f.StringVar(&caFile, "ca", "", "transport root CA certificate (PEM) to trust the platform with")
	f.StringVar(&obCert, "onboarding-cert", "", "manufacturer onboarding certificate (PEM, chain)")
	f.StringVar(&obKey, "onboarding-key", "", "onboarding private key (PEM)")
	f.StringVar(&state, "state", "", "state directory: keys, certificates, queue")
	f.IntVar(&simulate, "simulate", 0, "number of simulated devices")
	f.DurationVar(&every, "simulate-every", 0, "simulated reading interval (default: the platform's publish interval)")
	f.StringVar(&local, "listen-local", "", "loopback address for the local HTTP input (POST /v1/readings), e.g. 127.0.0.1:1884")
	f.IntVar(&maxItems, "queue-max", 100_000, "store-and-forward queue bound, in snapshots")
	f.BoolVar(&rejectNew, "queue-reject-new", false, "when the queue is full, refuse new snapshots instead of dropping the oldest")
	f.BoolVar(&noReenroll, "no-reenroll-expired", false, "do not enroll again with the onboarding certificate after the operational one expired")
	f.StringVar(&fwRoot, "firmware-root", "", "TUF root metadata pinned for firmware updates (KEYS/root.json of 'fieldtrust firmware keys init'); without it no firmware is installed")
	f.StringSliceVar(&fwTypes, "firmware-device-type", nil, "device types to install firmware for (default: those of the simulated devices)")
	f.DurationVar(&healthTimeout, "firmware-health-timeout", 2*time.Minute, "how long a new firmware version has to report healthy before it is rolled back")
	f.DurationVar(&failback, "failback", 5*time.Minute, "about how often a gateway on a later broker of its bootstrap list checks whether an earlier one is back, and moves to it (jittered; negative: never)")
	addLogFlags(c, &logLevel, &logFormat, "info")
	return c
}
