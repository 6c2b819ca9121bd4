package main

import (
	"errors"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/fieldtrust/fieldtrust/internal/console"
	"github.com/fieldtrust/fieldtrust/internal/datadir"
)

// defaultConsoleURL is where the console of a default 'up' is reached
// (passkeys need a host name: localhost, not 127.0.0.1).
const defaultConsoleURL = "https://localhost:8443"

func newUserCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "user",
		Short: "Manage the people who log into the web console: invite, list, disable",
		Long: `People log into the web console (https://HOST:8443/) with a passkey or a
client certificate; there are no passwords. A user is bound to an identity path
(a master account, an account) or to the vendor's admin scope ('/'), and sees
exactly what a certificate of that path sees; the role (viewer, operator,
admin) narrows what they may do.`,
	}
	c.AddCommand(newUserInviteCmd(), newUserListCmd(), newUserDisableCmd())
	return c
}

func newUserInviteCmd() *cobra.Command {
	var dir, path, role, base string
	c := &cobra.Command{
		Use:   "invite --path PATH --role viewer|operator|admin EMAIL",
		Short: "Invite a person: prints a one-time link (72 h, single use) to register a passkey",
		Long: `Create the user (or, for an existing user with the same path and role, a new
link to register another passkey) and print the one-time invitation link on
the last line of stdout. The link expires after 72 hours and works once.`,
		Example: `  fieldtrust user invite --path acme-pumps --role viewer anna@acme.example
  fieldtrust user invite --path acme-pumps/plant-berlin --role operator ben@acme.example
  fieldtrust user invite --path / --role admin ops@vendor.example`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if path == "" {
				return usageError{errors.New("missing --path (an identity path such as acme-pumps, or / for the vendor's admin scope)")}
			}
			if _, err := console.ParseScope(path); err != nil {
				return usageError{err}
			}
			if _, err := console.ParseRole(role); err != nil {
				return usageError{fmt.Errorf("--role: %w", err)}
			}
			if _, err := console.ParseEmail(args[0]); err != nil {
				return usageError{err}
			}
			d, err := datadir.Open(cmd.Context(), dir, nil)
			if err != nil {
				return err
			}
			defer d.Close()
			inv, err := console.Invite(cmd.Context(), d.Store, args[0], path, role, "cli", "", time.Now())
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "invited %s as %s of %s; the link expires %s and works once:\n", inv.User.Email, inv.User.Role, scopeText(inv.User.Scope), inv.ExpiresAt.Format(time.RFC3339))
			fmt.Fprintln(w, inv.Link(base))
			return nil
		},
	}
	addDataFlag(c, &dir)
	c.Flags().StringVar(&path, "path", "", "identity path the user is bound to, or / for the vendor's admin scope (required)")
	c.Flags().StringVar(&role, "role", "viewer", "viewer, operator or admin")
	c.Flags().StringVar(&base, "url", defaultConsoleURL, "the console's address as people reach it (a host name: passkeys are bound to it)")
	return c
}

func scopeText(scope string) string {
	if scope == "" {
		return "the vendor's admin scope"
	}
	return scope
}

func newUserListCmd() *cobra.Command {
	var dir, path string
	c := &cobra.Command{
		Use:   "list [--path PATH]",
		Short: "List console users (all, or those bound to PATH and below)",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			scope := ""
			if path != "" {
				var err error
				if scope, err = console.ParseScope(path); err != nil {
					return usageError{err}
				}
			}
			d, err := datadir.Open(cmd.Context(), dir, nil)
			if err != nil {
				return err
			}
			defer d.Close()
			users, err := d.Store.ConsoleUsers(cmd.Context(), scope)
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "EMAIL\tPATH\tROLE\tCREDENTIALS\tCREATED\tSTATE")
			for _, u := range users {
				cs, err := d.Store.Credentials(cmd.Context(), u.ID)
				if err != nil {
					return err
				}
				state := "active"
				if u.Disabled() {
					state = "disabled " + u.DisabledAt.Format(time.RFC3339)
				}
				p := u.Scope
				if p == "" {
					p = console.VendorScope
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\n", u.Email, p, u.Role, len(cs), u.CreatedAt.Format(time.RFC3339), state)
			}
			return tw.Flush()
		},
	}
	addDataFlag(c, &dir)
	c.Flags().StringVar(&path, "path", "", "only users bound to this path or below")
	return c
}

func newUserDisableCmd() *cobra.Command {
	var dir string
	c := &cobra.Command{
		Use:   "disable EMAIL",
		Short: "Disable a user: their sessions end at once, their passkeys stop working",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := console.ParseEmail(args[0]); err != nil {
				return usageError{err}
			}
			d, err := datadir.Open(cmd.Context(), dir, nil)
			if err != nil {
				return err
			}
			defer d.Close()
			u, err := console.Disable(cmd.Context(), d.Store, args[0], "cli", "", time.Now())
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "disabled %s; their sessions have ended\n", u.Email)
			return nil
		},
	}
	addDataFlag(c, &dir)
	return c
}
