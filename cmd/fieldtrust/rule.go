package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/fieldtrust/fieldtrust/internal/datadir"
	"github.com/fieldtrust/fieldtrust/internal/dcc/calibration"
	"github.com/fieldtrust/fieldtrust/internal/dcc/registry"
	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/rules"
	"github.com/fieldtrust/fieldtrust/internal/secretbox"
	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/store/registrystore"
	"github.com/fieldtrust/fieldtrust/internal/webhook"
)

// located is an error that names its place (file:line:col: message):
// main prints it as it is, so editors can jump to it.
type located struct{ error }

func (l located) Unwrap() error { return l.error }

// operator is who the offline CLI acts as: whoever holds the data
// directory runs the platform, the vendor.
var operator = rules.Author{Vendor: true, Path: "operator"}

// withStore opens the data directory's store for fn.
func withStore(ctx context.Context, dir string, fn func(d *datadir.Dir) error) error {
	d, err := datadir.Open(ctx, dir, nil)
	if err != nil {
		return err
	}
	defer d.Close()
	return fn(d)
}

func newRuleCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "rule",
		Short: "Manage rules: conditions on arriving snapshots and what they send (docs/rules.md)",
		Long: `Rules run on every snapshot ingest has verified and stored: a CEL condition
(or a built-in one: silent, integrity, overdue), an optional duration and
clear condition, a severity and actions (email, webhook, task, mqtt). They
raise alarms (one per rule and device at a time) and notify through a
durable outbox. A running platform picks up changes within seconds.

See docs/rules.md for the file format.`,
	}
	c.AddCommand(newRuleAddCmd(), newRuleListCmd(), newRuleShowCmd(), newRuleEnableCmd(false), newRuleEnableCmd(true),
		newRuleTestCmd(), newRuleErrorsCmd(), newRuleEndpointCmd())
	return c
}

func newRuleAddCmd() *cobra.Command {
	var dir string
	c := &cobra.Command{
		Use:   "add FILE",
		Short: "Add a rule file (YAML or JSON); the same scope and name again stores its next revision",
		Example: `  fieldtrust rule add --data ./fieldtrust-data pump-overheat.yaml
  (a condition that does not compile: exit 2 and file:line:col: message)`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			data, err := readRuleFile(args[0])
			if err != nil {
				return err
			}
			return withStore(cmd.Context(), dir, func(d *datadir.Dir) error {
				sr, err := rules.Add(cmd.Context(), d.Store, operator, args[0], data, time.Now())
				if err != nil {
					return ruleError(err)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "rule %s: %s (scope %s), revision %d, enabled\n", sr.ID, sr.Name, sr.Scope, sr.Revision)
				return nil
			})
		},
	}
	addDataFlag(c, &dir)
	return c
}

func readRuleFile(name string) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, usageError{err}
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, rules.MaxFileSize+1))
	if err != nil {
		return nil, err
	}
	return data, nil
}

// ruleError makes a rule file's error a usage error printed as
// file:line:col: message.
func ruleError(err error) error {
	var pe *rules.Error
	if errors.As(err, &pe) {
		return usageError{located{err}}
	}
	if errors.Is(err, rules.ErrForbidden) || strings.HasPrefix(err.Error(), "rule ") {
		return usageError{err}
	}
	return err
}

func newRuleListCmd() *cobra.Command {
	var dir, scope string
	c := &cobra.Command{
		Use:   "list",
		Short: "List the rules (of --scope and below)",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withStore(cmd.Context(), dir, func(d *datadir.Dir) error {
				list, err := d.Store.ListRules(cmd.Context(), scope)
				if err != nil {
					return err
				}
				tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "ID\tNAME\tSCOPE\tKIND\tSEVERITY\tREV\tSTATE\tUPDATED")
				for _, sr := range list {
					kind, sev := "?", "?"
					if r, err := rules.FromStore(sr); err == nil {
						kind, sev = r.Kind(), r.Severity
						if r.Mode == rules.ModeEach {
							kind += " (each)"
						}
					}
					state := "enabled"
					if !sr.Enabled {
						state = "disabled"
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", sr.ID, sr.Name, sr.Scope, kind, sev, sr.Revision, state, sr.UpdatedAt.Format(time.RFC3339))
				}
				return tw.Flush()
			})
		},
	}
	addDataFlag(c, &dir)
	c.Flags().StringVar(&scope, "scope", "", "only rules of this identity path and below (default: all)")
	return c
}

func newRuleShowCmd() *cobra.Command {
	var dir string
	c := &cobra.Command{
		Use:   "show ID",
		Short: "Show a rule and its file",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withStore(cmd.Context(), dir, func(d *datadir.Dir) error {
				sr, err := d.Store.Rule(cmd.Context(), args[0])
				if errors.Is(err, store.ErrNotFound) {
					return usageError{fmt.Errorf("no rule %s (see 'fieldtrust rule list')", args[0])}
				}
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "# rule %s, revision %d, %s, by %s, %s\n", sr.ID, sr.Revision, map[bool]string{true: "enabled", false: "disabled"}[sr.Enabled], sr.Author, sr.UpdatedAt.Format(time.RFC3339))
				cmd.OutOrStdout().Write(sr.Source)
				return nil
			})
		},
	}
	addDataFlag(c, &dir)
	return c
}

func newRuleEnableCmd(enable bool) *cobra.Command {
	var dir string
	verb := "disable"
	if enable {
		verb = "enable"
	}
	c := &cobra.Command{
		Use:   verb + " ID",
		Short: strings.ToUpper(verb[:1]) + verb[1:] + " a rule (open alarms stay until cleared)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withStore(cmd.Context(), dir, func(d *datadir.Dir) error {
				err := d.Store.SetRuleEnabled(cmd.Context(), args[0], enable)
				if errors.Is(err, store.ErrNotFound) {
					return usageError{fmt.Errorf("no rule %s (see 'fieldtrust rule list')", args[0])}
				}
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "rule %s %sd\n", args[0], verb)
				return nil
			})
		},
	}
	addDataFlag(c, &dir)
	return c
}

func newRuleTestCmd() *cobra.Command {
	var dir, device, from, to string
	c := &cobra.Command{
		Use:   "test FILE --device PATH",
		Short: "Replay a device's stored history through a rule file and print what would have fired (nothing is raised or sent)",
		Example: `  fieldtrust rule test --data ./fieldtrust-data pump-overheat.yaml --device acme-pumps/plant-berlin/gw-1/pump-2 \
      --from 2026-11-01T00:00:00Z --to 2026-12-01T00:00:00Z`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if device == "" {
				return usageError{errors.New("--device master/account/gateway/device is required")}
			}
			var fromT, toT time.Time
			var err error
			if from != "" {
				if fromT, err = time.Parse(time.RFC3339, from); err != nil {
					return usageError{fmt.Errorf("--from %q: an RFC 3339 time such as 2026-11-01T00:00:00Z", from)}
				}
			}
			if to != "" {
				if toT, err = time.Parse(time.RFC3339, to); err != nil {
					return usageError{fmt.Errorf("--to %q: an RFC 3339 time such as 2026-12-01T00:00:00Z", to)}
				}
			}
			data, err := readRuleFile(args[0])
			if err != nil {
				return err
			}
			r, err := rules.Load(args[0], data)
			if err != nil {
				return ruleError(err)
			}
			return withStore(cmd.Context(), dir, func(d *datadir.Dir) error {
				out := cmd.OutOrStdout()
				fired := 0
				var cal rules.Calibrations
				if r.UsesCalibration() {
					link, err := fleetLink(cmd.Context(), d.Store)
					if err != nil {
						return err
					}
					cal = link
				}
				n, err := rules.Replay(cmd.Context(), d.Store, cal, r, device, fromT, toT, func(f rules.Fired) {
					fired++
					line := fmt.Sprintf("%s  %-8s %s", f.At.Format(time.RFC3339), f.Event, f.Device)
					if f.Seq > 0 {
						line += fmt.Sprintf(" seq %d", f.Seq)
					}
					if f.Summary != "" {
						line += "  " + f.Summary
					}
					if len(f.Actions) > 0 {
						line += "  -> " + strings.Join(f.Actions, ", ")
					}
					fmt.Fprintln(out, line)
				})
				if err != nil {
					return err
				}
				fmt.Fprintf(out, "%d snapshot(s) of %s replayed through %s: %d event(s)\n", n, device, r.Name, fired)
				if n == 0 {
					fmt.Fprintln(cmd.ErrOrStderr(), "no stored snapshots in that range: check --device (master/account/gateway/device) and --from/--to")
				}
				return nil
			})
		},
	}
	addDataFlag(c, &dir)
	c.Flags().StringVar(&device, "device", "", "the measurement device: master/account/gateway/device")
	c.Flags().StringVar(&from, "from", "", "replay snapshots measured at or after this time (RFC 3339)")
	c.Flags().StringVar(&to, "to", "", "replay snapshots measured before this time (RFC 3339)")
	return c
}

func newRuleErrorsCmd() *cobra.Command {
	var dir, scope string
	c := &cobra.Command{
		Use:   "errors",
		Short: "List rules that failed at run time (a missing channel, a wrong type), per rule, device and message",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withStore(cmd.Context(), dir, func(d *datadir.Dir) error {
				list, err := d.Store.RuleErrors(cmd.Context(), scope, 0)
				if err != nil {
					return err
				}
				tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "RULE\tDEVICE\tCOUNT\tLAST\tSNAPSHOT\tMESSAGE")
				for _, e := range list {
					fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%x\t%s\n", e.RuleID, e.Device, max(e.Count, 1), e.LastAt.Format(time.RFC3339), e.Snapshot, e.Message)
				}
				return tw.Flush()
			})
		},
	}
	addDataFlag(c, &dir)
	c.Flags().StringVar(&scope, "scope", "", "only devices of this identity path and below")
	return c
}

func newRuleEndpointCmd() *cobra.Command {
	c := &cobra.Command{Use: "endpoint", Short: "Manage webhook endpoints: where webhook actions post, and the secret they sign with"}
	var dir, url, scope, secretFile string
	add := &cobra.Command{
		Use:   "add NAME --url URL --scope SCOPE",
		Short: "Add (or replace) a webhook endpoint; prints its new secret once unless --secret-file gives one",
		Long: `Add a webhook endpoint that rules name as 'secret: NAME'. Calls are signed the
Standard Webhooks way (webhook-id, webhook-timestamp, webhook-signature); the
receiver verifies them with the secret this command prints (whsec_...), or
with the one in --secret-file. The secret is kept encrypted at rest (with
` + pki.PassphraseEnv + ` if set, else a key in DIR/platform/secrets.key).`,
		Example: `  fieldtrust rule endpoint add ops-hook --url https://ops.example/hook --scope acme-pumps`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if url == "" || scope == "" {
				return usageError{errors.New("--url and --scope are required")}
			}
			var key []byte
			printed := false
			if secretFile != "" {
				b, err := os.ReadFile(secretFile)
				if err != nil {
					return usageError{err}
				}
				if key, err = webhook.ParseSecret(string(b)); err != nil {
					return usageError{fmt.Errorf("--secret-file %s: %w", secretFile, err)}
				}
			} else {
				key = make([]byte, 32)
				rand.Read(key)
				printed = true
			}
			return withStore(cmd.Context(), dir, func(d *datadir.Dir) error {
				box := secretbox.New(dir, []byte(os.Getenv(pki.PassphraseEnv)))
				if err := rules.AddEndpoint(cmd.Context(), d.Store, box, operator, args[0], scope, url, key, time.Now()); err != nil {
					if errors.Is(err, store.ErrExists) {
						return usageError{fmt.Errorf("endpoint %s exists in another scope; choose another name", args[0])}
					}
					return usageError{err}
				}
				fmt.Fprintf(cmd.OutOrStdout(), "endpoint %s: %s (scope %s)\n", args[0], url, scope)
				if printed {
					fmt.Fprintf(cmd.OutOrStdout(), "secret (give it to the receiver; it is not shown again): %s\n", webhook.FormatSecret(key))
				}
				return nil
			})
		},
	}
	addDataFlag(add, &dir)
	add.Flags().StringVar(&url, "url", "", "the receiver's https:// URL")
	add.Flags().StringVar(&scope, "scope", "", "the endpoint's owner: an identity path, or * for the vendor")
	add.Flags().StringVar(&secretFile, "secret-file", "", "a file holding the secret (whsec_...) instead of a new one")
	c.AddCommand(add)
	return c
}

func newAlarmCmd() *cobra.Command {
	c := &cobra.Command{Use: "alarm", Short: "List, acknowledge and clear the alarms rules raised"}
	var dir, scope, state string
	list := &cobra.Command{
		Use:   "list",
		Short: "List alarms, newest first",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if state != "" && state != "open" && state != store.AlarmActive && state != store.AlarmAcknowledged && state != store.AlarmCleared {
				return usageError{fmt.Errorf("--state %q: open, active, acknowledged or cleared", state)}
			}
			return withStore(cmd.Context(), dir, func(d *datadir.Dir) error {
				list, err := d.Store.Alarms(cmd.Context(), store.AlarmQuery{Scope: scope, State: state})
				if err != nil {
					return err
				}
				tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "ID\tSTATE\tSEVERITY\tRULE\tDEVICE\tRAISED\tSUMMARY")
				for _, a := range list {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", a.ID, a.State, a.Severity, a.RuleName, a.Device, a.RaisedAt.Format(time.RFC3339), a.Summary)
				}
				return tw.Flush()
			})
		},
	}
	addDataFlag(list, &dir)
	list.Flags().StringVar(&scope, "scope", "", "only devices of this identity path and below")
	list.Flags().StringVar(&state, "state", "open", "open (active or acknowledged), active, acknowledged, cleared, or '' for all")
	change := func(verb string, clear bool) *cobra.Command {
		var dir, by string
		cc := &cobra.Command{
			Use:   verb + " ID",
			Short: map[bool]string{false: "Acknowledge an active alarm", true: "Clear an open alarm by hand"}[clear],
			Args:  cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				return withStore(cmd.Context(), dir, func(d *datadir.Dir) error {
					f := d.Store.AckAlarm
					if clear {
						f = d.Store.ClearAlarm
					}
					a, err := f(cmd.Context(), args[0], by, time.Now())
					if errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrConflict) {
						return usageError{err}
					}
					if err != nil {
						return err
					}
					fmt.Fprintf(cmd.OutOrStdout(), "alarm %s: %s\n", a.ID, a.State)
					return nil
				})
			},
		}
		addDataFlag(cc, &dir)
		cc.Flags().StringVar(&by, "by", operatorName(), "who acknowledges or clears it (recorded)")
		return cc
	}
	c.AddCommand(list, change("ack", false), change("clear", true))
	return c
}

func operatorName() string {
	if u := os.Getenv("USER"); u != "" {
		return "operator:" + u
	}
	return "operator"
}

func newTaskCmd() *cobra.Command {
	c := &cobra.Command{Use: "task", Short: "List and update the tasks rules created"}
	var dir, scope, state, assignee string
	list := &cobra.Command{
		Use:   "list",
		Short: "List tasks, newest first",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withStore(cmd.Context(), dir, func(d *datadir.Dir) error {
				list, err := d.Store.Tasks(cmd.Context(), store.TaskQuery{Scope: scope, State: state, Assignee: assignee})
				if err != nil {
					return err
				}
				tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "ID\tSTATE\tASSIGNEE\tDUE\tDEVICE\tTITLE")
				for _, t := range list {
					due := "-"
					if !t.Due.IsZero() {
						due = t.Due.Format(time.RFC3339)
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", t.ID, t.State, t.Assignee, due, t.Device, t.Title)
				}
				return tw.Flush()
			})
		},
	}
	addDataFlag(list, &dir)
	list.Flags().StringVar(&scope, "scope", "", "only devices of this identity path and below")
	list.Flags().StringVar(&state, "state", "", "open, in_progress or done")
	list.Flags().StringVar(&assignee, "assignee", "", "only tasks of this assignee")
	var udir, ustate, uassignee, comment string
	update := &cobra.Command{
		Use:   "update ID",
		Short: "Change a task's state or assignee, or add a comment",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if ustate != "" && ustate != store.TaskOpen && ustate != store.TaskInProgress && ustate != store.TaskDone {
				return usageError{fmt.Errorf("--state %q: open, in_progress or done", ustate)}
			}
			return withStore(cmd.Context(), udir, func(d *datadir.Dir) error {
				now := time.Now()
				u := store.TaskUpdate{State: ustate, Assignee: uassignee, At: now}
				if comment != "" {
					u.Comment = &store.TaskComment{Author: operatorName(), Text: comment, At: now}
				}
				t, err := d.Store.UpdateTask(cmd.Context(), args[0], u)
				if errors.Is(err, store.ErrNotFound) {
					return usageError{err}
				}
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "task %s: %s, %s, %d comment(s)\n", t.ID, t.State, t.Assignee, len(t.Comments))
				return nil
			})
		},
	}
	addDataFlag(update, &udir)
	update.Flags().StringVar(&ustate, "state", "", "open, in_progress or done")
	update.Flags().StringVar(&uassignee, "assignee", "", "the new assignee")
	update.Flags().StringVar(&comment, "comment", "", "a comment to add")
	c.AddCommand(list, update)
	return c
}

func newOutboxCmd() *cobra.Command {
	c := &cobra.Command{Use: "outbox", Short: "Inspect notifications and retry dead or suppressed ones"}
	var dir, scope, state string
	list := &cobra.Command{
		Use:   "list",
		Short: "List notifications, newest first",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withStore(cmd.Context(), dir, func(d *datadir.Dir) error {
				list, err := d.Store.Outbox(cmd.Context(), store.OutboxQuery{Scope: scope, State: state})
				if err != nil {
					return err
				}
				tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "ID\tKIND\tSTATE\tATTEMPTS\tRULE\tGATEWAY\tCREATED\tLAST ERROR")
				for _, m := range list {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\n", m.ID, m.Kind, m.State, m.Attempts, m.RuleID, m.Gateway, m.CreatedAt.Format(time.RFC3339), m.LastError)
				}
				return tw.Flush()
			})
		},
	}
	addDataFlag(list, &dir)
	list.Flags().StringVar(&scope, "scope", "", "only gateways of this identity path and below")
	list.Flags().StringVar(&state, "state", store.OutboxDead, "pending, sent, dead, suppressed, or '' for all")
	var rdir string
	retry := &cobra.Command{
		Use:   "retry ID",
		Short: "Send a dead or suppressed notification again (same ID)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withStore(cmd.Context(), rdir, func(d *datadir.Dir) error {
				err := d.Store.RetryOutbox(cmd.Context(), args[0], time.Now())
				if errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrConflict) {
					return usageError{err}
				}
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "message %s: pending; the running platform sends it within a second\n", args[0])
				return nil
			})
		},
	}
	addDataFlag(retry, &rdir)
	c.AddCommand(list, retry)
	return c
}

// fleetLink is the DCC fleet link on the data directory's database, for
// 'rule test': the device's bindings and the registry's tables, opened
// read-only (no checkpoint key; the registry applies log entries its
// tables miss, as 'up' would, idempotently).
func fleetLink(ctx context.Context, st store.Store) (*calibration.Link, error) {
	rs, err := registrystore.Of(st)
	if err != nil {
		return nil, err
	}
	reg, err := registry.New(ctx, rs, registry.Options{})
	if err != nil {
		return nil, fmt.Errorf("the DCC registry (for the rule's calibration): %w", err)
	}
	return &calibration.Link{Bindings: rs, Enrollments: st, Registry: func() calibration.Registry { return reg }}, nil
}
