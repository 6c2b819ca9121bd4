package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/fieldtrust/fieldtrust/internal/agent"
	"github.com/fieldtrust/fieldtrust/internal/datadir"
	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/platform"
)

func newAgentCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "agent",
		Short: "HTTPS agents (MindConnect-compatible): create, list, show, revoke, rotate-iat",
		Long: `HTTPS agents connect with OAuth 2.0 instead of a transport certificate, speaking the
MindConnect agent API (docs/agents.md). An agent is a device path master/account/agent.
'agent create' prints the boarding configuration the agent SDKs consume; hand it to the
device. Its initial access token is valid for 7 days and registers the agent once.`,
	}
	c.AddCommand(newAgentCreateCmd(), newAgentListCmd(), newAgentShowCmd(), newAgentRevokeCmd(), newAgentRotateIATCmd())
	return c
}

// agentFlags are the flags every agent subcommand takes.
type agentFlags struct {
	dir, externalURL string
}

func (f *agentFlags) register(c *cobra.Command) {
	addDataFlag(c, &f.dir)
	c.Flags().StringVar(&f.externalURL, "external-url", "", "the platform's URL as agents reach it (default: what 'up' recorded in DIR/"+platform.ExternalURLFile+", else https://127.0.0.1:8443)")
}

// open opens the data directory and the agent service on it.
func (f *agentFlags) open(cmd *cobra.Command) (*agent.Service, func(), error) {
	url := f.externalURL
	if url == "" {
		if b, err := os.ReadFile(filepath.Join(f.dir, platform.ExternalURLFile)); err == nil {
			url = strings.TrimSpace(string(b))
		}
	}
	url, err := platform.ExternalURL(url, "127.0.0.1:8443")
	if err != nil {
		return nil, nil, usageError{err}
	}
	d, err := datadir.Open(cmd.Context(), f.dir, nil)
	if err != nil {
		return nil, nil, err
	}
	keys, err := agent.LoadKeys(f.dir, []byte(os.Getenv(pki.PassphraseEnv)))
	if err != nil {
		d.Close()
		return nil, nil, err
	}
	s, err := agent.New(agent.Config{Store: d.Store, Keys: keys, BaseURL: url})
	if err != nil {
		d.Close()
		return nil, nil, err
	}
	return s, func() { d.Close() }, nil
}

// writeBoarding writes the boarding configuration to out ("" or "-":
// stdout), 0600 since its token onboards the agent.
func writeBoarding(cmd *cobra.Command, out string, b agent.Boarding) error {
	data, err := json.MarshalIndent(b, "", "  ")
	if err != nil {
		return err
	}
	data = append(data, '\n')
	if out == "" || out == "-" {
		_, err := cmd.OutOrStdout().Write(data)
		return err
	}
	if err := os.WriteFile(out, data, 0o600); err != nil {
		return fmt.Errorf("write boarding configuration: %w", err)
	}
	fmt.Fprintf(cmd.ErrOrStderr(), "boarding configuration written to %s (valid until %s; it onboards the agent once: keep it secret)\n", out, b.Expiration.Format(time.RFC3339))
	return nil
}

func agentUsage(err error) error {
	if errors.Is(err, agent.ErrInvalid) {
		return usageError{err}
	}
	return err
}

func newAgentCreateCmd() *cobra.Command {
	var f agentFlags
	var profile, out string
	c := &cobra.Command{
		Use:   "create PATH",
		Short: "Create an agent at PATH (master/account/agent) and print its boarding configuration",
		Example: `  fieldtrust agent create --data DIR acme-pumps/plant-berlin/press-7 --profile SHARED_SECRET
  fieldtrust agent create --data DIR acme-pumps/plant-berlin/press-8 --profile RSA_3072 --out press-8.json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, done, err := f.open(cmd)
			if err != nil {
				return err
			}
			defer done()
			b, _, err := s.Create(cmd.Context(), args[0], profile)
			if err != nil {
				return agentUsage(err)
			}
			return writeBoarding(cmd, out, b)
		},
	}
	f.register(c)
	c.Flags().StringVar(&profile, "profile", agent.ProfileSharedSecret, "credential profile: SHARED_SECRET or RSA_3072")
	c.Flags().StringVar(&out, "out", "", "write the boarding configuration to FILE (0600) instead of stdout")
	return c
}

func newAgentRotateIATCmd() *cobra.Command {
	var f agentFlags
	var out string
	c := &cobra.Command{
		Use:   "rotate-iat PATH",
		Short: "Replace the agent's initial access token and print the new boarding configuration",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, done, err := f.open(cmd)
			if err != nil {
				return err
			}
			defer done()
			b, _, err := s.RotateIAT(cmd.Context(), args[0])
			if err != nil {
				return agentUsage(err)
			}
			return writeBoarding(cmd, out, b)
		},
	}
	f.register(c)
	c.Flags().StringVar(&out, "out", "", "write the boarding configuration to FILE (0600) instead of stdout")
	return c
}

func newAgentRevokeCmd() *cobra.Command {
	var f agentFlags
	c := &cobra.Command{
		Use:   "revoke PATH",
		Short: "Revoke an agent: its tokens and credentials stop working at once",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, done, err := f.open(cmd)
			if err != nil {
				return err
			}
			defer done()
			in, err := s.Revoke(cmd.Context(), args[0])
			if err != nil {
				return agentUsage(err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "revoked agent %s (%s)\n", in.Path, in.ClientID)
			return nil
		},
	}
	f.register(c)
	return c
}

func newAgentShowCmd() *cobra.Command {
	var f agentFlags
	c := &cobra.Command{
		Use:   "show PATH",
		Short: "Show an agent (JSON; no secrets)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, done, err := f.open(cmd)
			if err != nil {
				return err
			}
			defer done()
			in, err := s.Show(cmd.Context(), args[0])
			if err != nil {
				return agentUsage(err)
			}
			enc := json.NewEncoder(cmd.OutOrStdout())
			enc.SetIndent("", "  ")
			return enc.Encode(in)
		},
	}
	f.register(c)
	return c
}

func newAgentListCmd() *cobra.Command {
	var f agentFlags
	var scope string
	c := &cobra.Command{
		Use:   "list",
		Short: "List agents (optionally below --scope PATH)",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, done, err := f.open(cmd)
			if err != nil {
				return err
			}
			defer done()
			list, err := s.List(cmd.Context(), scope)
			if err != nil {
				return agentUsage(err)
			}
			printAgents(cmd.OutOrStdout(), list)
			return nil
		},
	}
	f.register(c)
	c.Flags().StringVar(&scope, "scope", "", "only agents at or below this identity path")
	return c
}

func printAgents(w io.Writer, list []agent.Info) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PATH\tCLIENT ID\tPROFILE\tSTATE\tCREDENTIALS EXPIRE\tROTATIONS")
	for _, in := range list {
		exp := "-"
		if !in.CredentialsExpire.IsZero() {
			exp = in.CredentialsExpire.Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\n", in.Path, in.ClientID, in.Profile, in.State, exp, in.Rotations)
	}
	tw.Flush()
}
