// Command fieldtrust is the one binary of the fieldtrust platform: the
// platform itself (up, demo), the field gateway, and the operator tools
// (pki, seal, open, ...). Each subcommand only wires packages together;
// the work happens in internal/.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := newRootCmd().ExecuteContext(ctx)
	if err != nil {
		if errors.As(err, new(located)) {
			fmt.Fprintln(os.Stderr, err) // file:line:col: message, for editors
		} else {
			fmt.Fprintln(os.Stderr, "fieldtrust:", err)
		}
		var ue usageError
		if errors.As(err, &ue) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

// usageError marks errors caused by how the command was called, so that
// main exits with status 2 like other command-line tools.
type usageError struct{ error }

func (e usageError) Unwrap() error { return e.error }

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "fieldtrust",
		Short: "Trusted data platform for industrial equipment in the field",
		Long: `fieldtrust connects equipment in the field to the vendor, the customer and the
calibration lab: mutually authenticated TLS from its own PKI, topic access
control from the certificate chain, and payloads sealed end to end.

Start the platform with 'fieldtrust up'; manage certificates with 'fieldtrust pki'.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return usageError{fmt.Errorf("%w (see '%s --help')", err, c.CommandPath())}
	})
	root.AddCommand(
		newUpCmd(),
		newPKICmd(),
		newSealCmd(), newOpenCmd(),
		newManufacturerCmd(), newDeviceCmd(),
		newGatewayCmd(), newSiteCmd(),
		newDemoCmd(),
		newLedgerCmd(),
		newUserCmd(),
		newFirmwareCmd(), newCommandCmd(),
		newRuleCmd(), newAlarmCmd(), newTaskCmd(), newOutboxCmd(),
		newAgentCmd(),
		newDCCCmd(), newRegistryCmd(),
		// Further subcommands register here, one constructor per file.
	)
	return root
}
