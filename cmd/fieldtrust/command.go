package main

import (
	"context"
	"crypto/elliptic"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/fieldtrust/fieldtrust/internal/command"
	"github.com/fieldtrust/fieldtrust/internal/datadir"
	"github.com/fieldtrust/fieldtrust/internal/devicemsg"
	"github.com/fieldtrust/fieldtrust/internal/envelope"
	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/store"
)

func newCommandCmd() *cobra.Command {
	c := &cobra.Command{Use: "command", Short: "Signed remote commands to gateways"}
	c.AddCommand(newCommandSendCmd())
	return c
}

func newCommandSendCmd() *cobra.Command {
	var (
		dir, as          string
		expires, timeout time.Duration
		wait             bool
	)
	c := &cobra.Command{
		Use:   "send PATH NAME [key=value ...]",
		Short: "Send a command signed by the operator's e2e identity; prints its id (and with --wait the gateway's signed result)",
		Long: `Send command NAME to gateway PATH (master/account/gateway). The command is
signed by the operator's e2e identity (--as NAME: the e2e service certificate
DIR/operators/NAME-e2e.crt, issued on first use), sealed for the gateway and
its customer, and valid for --expires; the running platform publishes it and
records it. Built-in commands: reboot, clean, set-interval seconds=N,
rebootstrap [rotate_keys=true]. A gateway refuses expired, replayed, unsigned
or wrongly signed commands and reports every refusal.`,
		Example: `  fieldtrust command send --data ./fieldtrust-data ms-1/acc-1/gw-1 set-interval seconds=30 --wait`,
		Args:    cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			path, err := pki.ParsePath(args[0])
			if err != nil || len(path) != 3 {
				return usageError{fmt.Errorf("%q is not a gateway path master/account/gateway", args[0])}
			}
			if err := command.CheckName(args[1]); err != nil {
				return usageError{err}
			}
			cargs, err := command.ParseArgs(args[2:])
			if err != nil {
				return usageError{err}
			}
			if expires <= 0 || expires > command.MaxLifetime {
				return usageError{fmt.Errorf("--expires %s: want more than 0 and at most %s", expires, command.MaxLifetime)}
			}
			ctx := cmd.Context()
			d, err := datadir.Open(ctx, dir, nil)
			if err != nil {
				return err
			}
			defer d.Close()
			signer, err := operatorSigner(ctx, d, dir, as)
			if err != nil {
				return err
			}
			e2e, err := d.E2E.Verifier(ctx)
			if err != nil {
				return err
			}
			cm, err := devicemsg.NewCommand(path.String(), args[1], cargs, expires, time.Now())
			if err != nil {
				return usageError{err}
			}
			if err := devicemsg.QueueCommand(ctx, d.Store, e2e, func() (*envelope.Signer, error) { return signer, nil }, "service:"+as, cm); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), cm.ID)
			if !wait {
				return nil
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "waiting up to %s for %s's result (the platform must be running)...\n", timeout, path)
			res, err := waitResult(ctx, d, e2e, path.String(), cm.ID, timeout)
			if err != nil {
				return err
			}
			e := json.NewEncoder(cmd.OutOrStdout())
			e.SetIndent("", "  ")
			if err := e.Encode(res); err != nil {
				return err
			}
			if res.Status != command.StatusOK {
				return fmt.Errorf("the gateway answered %s: %s", res.Status, res.Error)
			}
			return nil
		},
	}
	addDataFlag(c, &dir)
	f := c.Flags()
	f.StringVar(&as, "as", "operator", "the operator's name: its e2e service identity signs the command")
	f.DurationVar(&expires, "expires", command.DefaultLifetime, "how long the command is valid")
	f.BoolVar(&wait, "wait", false, "wait for the gateway's signed result and print it")
	f.DurationVar(&timeout, "timeout", time.Minute, "how long --wait waits")
	return c
}

// operatorSigner loads (or, the first time, issues) the operator's e2e
// service certificate in DIR/operators.
func operatorSigner(ctx context.Context, d *datadir.Dir, dir, name string) (*envelope.Signer, error) {
	base := filepath.Join(dir, "operators", name+"-e2e")
	certs, err := pki.ReadCertsFile(base + ".crt")
	if errors.Is(err, os.ErrNotExist) {
		key, err := pki.GenerateKey(elliptic.P256())
		if err != nil {
			return nil, err
		}
		iss, err := d.E2E.Issue(ctx, pki.LeafRequest{Service: name, PublicKey: key.Public()})
		if err != nil {
			return nil, fmt.Errorf("issue the e2e identity of operator %s: %w", name, err)
		}
		if err := os.MkdirAll(filepath.Dir(base), 0o700); err != nil {
			return nil, err
		}
		if err := pki.WriteKeyFile(base+".key", key, nil); err != nil {
			return nil, err
		}
		if err := os.WriteFile(base+".crt", pki.EncodeCertsPEM(iss.Chain...), 0o644); err != nil {
			return nil, err
		}
		return &envelope.Signer{Cert: iss.Cert, Key: key, Chain: iss.Chain[1:], EmbedCerts: true}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("operator %s: %w", name, err)
	}
	key, err := pki.ReadKeyFile(base+".key", nil)
	if err != nil {
		return nil, err
	}
	return &envelope.Signer{Cert: certs[0], Key: key, Chain: certs[1:], EmbedCerts: true}, nil
}

// waitResult polls the store for the gateway's result of command id and
// checks that the gateway signed it.
func waitResult(ctx context.Context, d *datadir.Dir, e2e *pki.Verifier, gateway, id string, timeout time.Duration) (command.Result, error) {
	deadline := time.Now().Add(timeout)
	for {
		msgs, err := d.Store.DeviceMessages(ctx, store.MessageFilter{Kind: devicemsg.KindResult, Ref: id})
		if err != nil {
			return command.Result{}, err
		}
		for _, m := range msgs {
			opened, err := envelope.Verify(ctx, m.Body, envelope.VerifyOptions{Verifier: e2e})
			if err != nil || opened.Signer != gateway {
				continue
			}
			return command.ParseResult(opened.Content)
		}
		if time.Now().After(deadline) {
			sent, _ := d.Store.DeviceMessages(ctx, store.MessageFilter{Kind: devicemsg.KindCommand, Ref: id})
			state := "unknown"
			if len(sent) > 0 {
				state = sent[0].State
			}
			return command.Result{}, fmt.Errorf("no result from %s within %s (the command is %s; is 'fieldtrust up' running and the gateway online?)", gateway, timeout, state)
		}
		select {
		case <-ctx.Done():
			return command.Result{}, ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}
