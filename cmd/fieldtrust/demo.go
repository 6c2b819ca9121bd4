package main

import (
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/fieldtrust/fieldtrust/internal/datadir"
	"github.com/fieldtrust/fieldtrust/internal/demo"
	"github.com/fieldtrust/fieldtrust/internal/gateway"
	"github.com/fieldtrust/fieldtrust/internal/mail"
	"github.com/fieldtrust/fieldtrust/internal/mailcatcher"
	"github.com/fieldtrust/fieldtrust/internal/platform"
)

func newDemoCmd() *cobra.Command {
	var (
		f       upFlags
		devices int
		every   time.Duration
	)
	c := &cobra.Command{
		Use:   "demo",
		Short: "Run the platform with a demo fleet: two customers, three gateways onboarding over EST",
		Long: `Run the platform (accepts every flag of 'up') and a demonstration fleet on the
same data directory: a device maker whose manufacturer CA the platform trusts,
two customers (acme-pumps, globex-labs) with API credentials, and three field
gateways that onboard themselves over EST with nothing but their factory
onboarding certificate, then publish sealed snapshots of simulated pumps,
compressors and test benches. It prints where to look. Ctrl-C stops it all.`,
		Example: `  fieldtrust demo
  fieldtrust demo --data /tmp/ft-demo --devices 5 --every 2s`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := f.config()
			if err != nil {
				return err
			}
			if devices < 1 || devices > 1000 {
				return usageError{fmt.Errorf("--devices %d: from 1 to 1000 per gateway", devices)}
			}
			ctx, cancel := context.WithCancel(cmd.Context())
			defer cancel()
			ready := make(chan [2]string, 1)
			cfg.Ready = func(h, m string) { ready <- [2]string{h, m} }
			if cfg.PublishInterval == 10*time.Second && every > 0 {
				cfg.PublishInterval = every
			}
			// Without an SMTP server of the operator's, mail goes to a
			// local catcher that keeps each message as a file.
			var catcher *mailcatcher.Catcher
			if cfg.Notifications.SMTP == nil {
				if catcher, err = mailcatcher.Start(mailcatcher.Config{Addr: "127.0.0.1:0", Dir: filepath.Join(f.dataDir, "demo", "mail"), Logger: cfg.Logger.With("component", "mailcatcher")}); err != nil {
					return err
				}
				defer catcher.Close()
				smtp, err := mail.ParseURL("smtp://" + catcher.Addr() + "?from=fieldtrust-demo@localhost")
				if err != nil {
					return err
				}
				cfg.Notifications.SMTP = &smtp
			}
			platformErr := make(chan error, 1)
			go func() { platformErr <- platform.Run(ctx, cfg) }()
			var addrs [2]string
			select {
			case addrs = <-ready:
			case err := <-platformErr:
				return err
			}
			d, err := datadir.Open(ctx, f.dataDir, nil)
			if err != nil {
				return err
			}
			defer d.Close()
			fleet, err := demo.Setup(ctx, d)
			if err != nil {
				return fmt.Errorf("demo fleet: %w", err)
			}
			ruleNames, err := demo.InstallRules(ctx, d.Store)
			if err != nil {
				return err
			}
			var wg sync.WaitGroup
			for _, g := range fleet.Gateways {
				onb := g.Onboarding
				gcfg := gateway.Config{
					Platform: "https://" + addrs[0], CA: []*x509.Certificate{d.Transport.Root()}, Onboarding: &onb,
					StateDir: g.StateDir, Simulate: devices, SimulateEvery: every, ReenrollExpired: true,
					Logger: cfg.Logger.With("gateway", g.Path),
				}
				wg.Go(func() {
					if err := gateway.Run(ctx, gcfg); err != nil {
						cfg.Logger.Error("demo gateway stopped", "gateway", g.Path, "err", err)
					}
				})
			}
			printDemo(cmd, addrs[0], f.dataDir, fleet, cfg.Logger)
			printDemoRules(cmd, f.dataDir, ruleNames, catcher)
			var runErr error
			select {
			case <-ctx.Done():
			case runErr = <-platformErr:
			}
			cancel()
			wg.Wait()
			if runErr == nil {
				runErr = <-platformErr
			}
			return runErr
		},
	}
	f.register(c)
	c.Flags().IntVar(&devices, "devices", 3, "simulated devices per gateway")
	c.Flags().DurationVar(&every, "every", 5*time.Second, "simulated reading interval")
	return c
}

func printDemo(cmd *cobra.Command, httpAddr, dataDir string, fleet *demo.Fleet, log *slog.Logger) {
	w := cmd.OutOrStdout()
	ca := filepath.Join(dataDir, "pki", "transport", "root.crt")
	base := "https://" + httpAddr
	fmt.Fprintf(w, "\nfieldtrust demo is running (Ctrl-C stops it)\n\n")
	fmt.Fprintf(w, "  platform      %s   (health: %s/healthz)\n", base, base)
	for _, g := range fleet.Gateways {
		fmt.Fprintf(w, "  gateway       %s  onboarding over EST from %s\n", g.Path, g.StateDir)
	}
	for _, c := range demo.Customers {
		dir := fleet.Customers[c.Master]
		curl := fmt.Sprintf("curl -s --cacert %s --cert %s --key %s", ca, filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"))
		fmt.Fprintf(w, "\n  customer %s (credentials in %s):\n", c.Master, dir)
		fmt.Fprintf(w, "    %s %s/api/v1/devices\n", curl, base)
		fmt.Fprintf(w, "    %s %s/api/v1/status\n", curl, base)
		dev := url.PathEscape(c.Master) + "/" + c.Account + "/" + c.Gateways[0] + "/pump-2"
		fmt.Fprintf(w, "    %s '%s/api/v1/devices/%s/snapshots?limit=5&channel=pressure_out'\n", curl, base, dev)
		fmt.Fprintf(w, "    %s %s/api/v1/ledger/head\n", curl, base)
	}
	fmt.Fprintf(w, "\n  Snapshots arrive within seconds; each customer sees only its own fleet.\n\n")
	log.Info("demo fleet started", "gateways", len(fleet.Gateways))
}

// printDemoRules tells where the rules' mail goes and how to look at
// alarms and tasks.
func printDemoRules(cmd *cobra.Command, dataDir string, names []string, catcher *mailcatcher.Catcher) {
	w := cmd.OutOrStdout()
	fmt.Fprintf(w, "  rules         %s (fieldtrust rule list --data %s)\n", strings.Join(names, ", "), dataDir)
	if catcher != nil {
		fmt.Fprintf(w, "  mail          caught by a local SMTP server on %s: one .eml file per message in %s\n", catcher.Addr(), filepath.Join(dataDir, "demo", "mail"))
	}
	fmt.Fprintf(w, "  alarms, tasks fieldtrust alarm list --data %s; fieldtrust task list --data %s (or GET /api/v1/alarms, /api/v1/tasks)\n\n", dataDir, dataDir)
}
