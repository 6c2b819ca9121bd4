package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/fieldtrust/fieldtrust/internal/datadir"
	"github.com/fieldtrust/fieldtrust/internal/firmware/rollout"
	"github.com/fieldtrust/fieldtrust/internal/firmware/tufrepo"
	"github.com/fieldtrust/fieldtrust/internal/store"
)

func newFirmwareCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "firmware",
		Short: "Firmware updates: offline TUF keys, signed artifacts, staged campaigns",
		Long: `Firmware updates follow The Update Framework (TUF). 'firmware keys init' makes
the offline root and targets keys (keep them off the platform) and root.json,
the file every gateway pins with --firmware-root. 'firmware add' stores an
artifact and signs new targets metadata with the targets key; the platform
holds only the online snapshot and timestamp keys. Campaigns roll a version
out to a device type within a scope, canary first.`,
	}
	keys := &cobra.Command{Use: "keys", Short: "The firmware trust domain's keys"}
	keys.AddCommand(newFirmwareKeysInitCmd(), newFirmwareKeysRotateCmd())
	campaign := &cobra.Command{Use: "campaign", Short: "Staged firmware rollouts"}
	campaign.AddCommand(newCampaignCreateCmd(), newCampaignListCmd(), newCampaignStatusCmd(),
		newCampaignMoveCmd("pause", "Stop notifying further gateways", rollout.Pause),
		newCampaignMoveCmd("resume", "Continue a paused campaign (accepting the failures so far)", rollout.Resume),
		newCampaignMoveCmd("abort", "Stop the campaign and tell gateways that have not installed yet to stop", rollout.Abort))
	c.AddCommand(keys, newFirmwareAddCmd(), newFirmwareSignCmd(), newFirmwareListCmd(), campaign)
	return c
}

func newFirmwareKeysInitCmd() *cobra.Command {
	var dir, thresholds, counts string
	c := &cobra.Command{
		Use:   "init --dir KEYS [--threshold root=M,targets=M --keys root=N,targets=N]",
		Short: "Create the firmware keys (root, targets offline; snapshot, timestamp online) and root.json",
		Long: `Create the four TUF role keys (Ed25519) and version 1 of the root metadata in
KEYS. KEYS/root.key and KEYS/targets.key are the offline keys: move KEYS off
the platform after the first 'firmware add' (set ` + tufrepo.PassphraseEnv + ` to
encrypt them). KEYS/online/ holds the snapshot and timestamp keys, which the
first 'firmware add' copies into the platform. KEYS/root.json is what gateways
pin (fieldtrust gateway --firmware-root root.json).

With --keys root=N,targets=N the offline roles get N keys each, of which
--threshold root=M,targets=M must sign (M-of-N, counted by every gateway as
distinct keys). Each key holder's keys are then in KEYS/keyholder-I/ (holder I
has root key I and targets key I): hand each directory to its holder. Sign
with several holders' directories ('firmware add --keys KEYS/keyholder-1
--keys KEYS/keyholder-2'), or one after the other ('firmware sign').`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if dir == "" {
				return usageError{errors.New("--dir KEYS is required")}
			}
			qs, err := tufrepo.ParseQuorums(thresholds, counts)
			if err != nil {
				return usageError{err}
			}
			if _, err := tufrepo.InitKeysWith(dir, time.Now(), tufrepo.DefaultExpiry, qs); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "firmware keys created in %s\n", dir)
			if qs != tufrepo.SingleKeys {
				fmt.Fprintf(out, "root: %d of %d keys must sign; targets: %d of %d\n", qs.Root.Threshold, qs.Root.Keys, qs.Targets.Threshold, qs.Targets.Keys)
				for i := 1; i <= max(qs.Root.Keys, qs.Targets.Keys); i++ {
					fmt.Fprintf(out, "key holder %d: %s (move it to that person's medium)\n", i, tufrepo.HolderDir(dir, i))
				}
			}
			fmt.Fprintf(out, "pin %s in every gateway: fieldtrust gateway ... --firmware-root %s\n",
				filepath.Join(dir, "root.json"), filepath.Join(dir, "root.json"))
			return nil
		},
	}
	c.Flags().StringVar(&dir, "dir", "", "directory for the keys (must not hold keys yet)")
	c.Flags().StringVar(&thresholds, "threshold", "", "signatures required per offline role, e.g. root=2,targets=2 (default 1)")
	c.Flags().StringVar(&counts, "keys", "", "keys per offline role, e.g. root=3,targets=3 (default: the threshold)")
	return c
}

func newFirmwareKeysRotateCmd() *cobra.Command {
	var (
		dir, role        string
		keys             []string
		threshold, count int
	)
	c := &cobra.Command{
		Use:   "rotate --keys KEYS [--keys KEYS2 ...] --role root|targets|snapshot|timestamp [--threshold M --count N]",
		Short: "Replace a role's key through a new root version (gateways follow by themselves)",
		Long: `Replace one TUF role's key: a new root version names the new key instead of
the old one, signed by the root key (and by the new root key when the root
key rotates), and what the role signs is re-signed at once. Gateways are not
touched: they walk the root versions from the one they pinned. The root and
targets keys are the offline ones in KEYS (the old one stays as
ROLE.key.retired-N); the snapshot and timestamp keys are the online keys
the platform keeps in its data directory (rotate them when the platform may
have been compromised). Run it where the platform's data directory is; the new
KEYS/root.json is what new gateways pin.

The new root version needs the root role's threshold of root keys: with
several root key holders, give each one's directory (--keys, repeated).
--threshold M --count N change an offline role's quorum (M of N keys; default:
as it is); several new keys are written to the first KEYS as
keyholder-I/ROLE.key, one as ROLE.key.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(keys) == 0 {
				return usageError{errors.New("--keys KEYS is required")}
			}
			switch role {
			case "root", "targets", "snapshot", "timestamp":
			default:
				return usageError{fmt.Errorf("--role %q: want root, targets, snapshot or timestamp", role)}
			}
			q := tufrepo.Quorum{Threshold: threshold, Keys: count}
			switch {
			case threshold == 0 && count == 0:
			case threshold == 0 || count == 0:
				return usageError{errors.New("--threshold and --count go together (M of N keys)")}
			default:
				if err := q.Check(role); err != nil {
					return usageError{err}
				}
			}
			v, err := tufrepo.Open(dir).Rotate(keys, role, q)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s key rotated: root version %d names the new key; gateways update their trust on their next check\n", role, v)
			if count > 1 {
				for i := 1; i <= count; i++ {
					fmt.Fprintf(cmd.OutOrStdout(), "new %s key of holder %d: %s\n", role, i, filepath.Join(tufrepo.HolderDir(keys[0], i), role+".key"))
				}
			}
			return nil
		},
	}
	addDataFlag(c, &dir)
	c.Flags().StringArrayVar(&keys, "keys", nil, "an offline keys directory (of 'firmware keys init', or a key holder's); repeat for several holders")
	c.Flags().IntVar(&threshold, "threshold", 0, "new threshold of the role (with --count)")
	c.Flags().IntVar(&count, "count", 0, "new number of keys of the role (with --threshold)")
	c.Flags().StringVar(&role, "role", "targets", "role whose key to rotate: root, targets, snapshot or timestamp")
	return c
}

func newFirmwareAddCmd() *cobra.Command {
	var (
		dir, file, version, devType, minVersion string
		keys                                    []string
	)
	c := &cobra.Command{
		Use:   "add --keys KEYS --file F --version V --device-type T [--min-version V]",
		Short: "Store a firmware artifact and sign new targets metadata",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(keys) == 0 || file == "" || version == "" || devType == "" {
				return usageError{errors.New("--keys, --file, --version and --device-type are required")}
			}
			t, err := tufrepo.Open(dir).AddSigned(keys, tufrepo.Artifact{File: file, DeviceType: devType, Version: version, MinVersion: minVersion})
			if err != nil {
				return err
			}
			if t.Awaiting > 0 {
				fmt.Fprintf(cmd.OutOrStdout(), "staged %s (%d bytes, sha256 %s): the targets metadata needs %d more signature(s) of other targets key holders\nsign: fieldtrust firmware sign --data %s --keys HOLDER_DIR\n",
					t.Name, t.Length, t.SHA256, t.Awaiting, dir)
				return nil
			}
			fmt.Fprintf(cmd.OutOrStdout(), "added %s (%d bytes, sha256 %s)\nroll it out: fieldtrust firmware campaign create --data %s --version %s --device-type %s --scope MASTER[/ACCOUNT[/GATEWAY]] --canary 10\n",
				t.Name, t.Length, t.SHA256, dir, version, devType)
			return nil
		},
	}
	addDataFlag(c, &dir)
	f := c.Flags()
	f.StringArrayVar(&keys, "keys", nil, "the offline keys directory (of 'firmware keys init', or a key holder's); repeat for several holders")
	f.StringVar(&file, "file", "", "the firmware artifact")
	f.StringVar(&version, "version", "", "its semantic version, e.g. 2.4.1")
	f.StringVar(&devType, "device-type", "", "the device type it is for, e.g. pump")
	f.StringVar(&minVersion, "min-version", "", "the oldest installed version it may be installed over")
	return c
}

func newFirmwareSignCmd() *cobra.Command {
	var (
		dir     string
		keys    []string
		discard bool
	)
	c := &cobra.Command{
		Use:   "sign --keys HOLDER_DIR [--keys ...] | --discard",
		Short: "Add targets key holders' signatures to staged firmware metadata; publish it at the threshold",
		Long: `With an M-of-N targets role, 'firmware add' with fewer than M holders' keys
stages the new targets metadata (in the repository, pending/targets.json) with the
signatures it has. Each further holder brings its directory and runs
'firmware sign --keys DIR': its signature is added (a key that signed already
counts once), and once M distinct keys have signed, the metadata is published
with a new snapshot and timestamp. Without --keys it shows what is staged.
--discard drops the staged metadata.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			repo := tufrepo.Open(dir)
			out := cmd.OutOrStdout()
			switch {
			case discard && len(keys) > 0:
				return usageError{errors.New("--discard or --keys, not both")}
			case discard:
				if err := repo.Discard(); err != nil {
					return err
				}
				fmt.Fprintln(out, "staged targets metadata dropped")
				return nil
			case len(keys) == 0:
				p, err := repo.Pending()
				if err != nil {
					return err
				}
				if p == nil {
					fmt.Fprintln(out, "nothing waits for signatures")
					return nil
				}
				fmt.Fprintf(out, "targets version %d (%s): %d of %d signatures\n", p.Version, strings.Join(p.Targets, ", "), p.Have, p.Need)
				return nil
			}
			s, err := repo.Sign(keys)
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "signed targets version %d, listing %s\n", s.Version, strings.Join(s.Targets, ", "))
			if s.Published {
				fmt.Fprintf(out, "targets version %d published with %d of %d signatures\n", s.Version, s.Have, s.Need)
			} else {
				fmt.Fprintf(out, "targets version %d: %d of %d signatures; another holder signs next: fieldtrust firmware sign --data %s --keys HOLDER_DIR\n", s.Version, s.Have, s.Need, dir)
			}
			return nil
		},
	}
	addDataFlag(c, &dir)
	c.Flags().StringArrayVar(&keys, "keys", nil, "a targets key holder's directory; repeat for several")
	c.Flags().BoolVar(&discard, "discard", false, "drop the staged targets metadata")
	return c
}

func newFirmwareListCmd() *cobra.Command {
	var dir string
	c := &cobra.Command{
		Use:   "list",
		Short: "List the firmware in the repository",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ts, err := tufrepo.Open(dir).Targets()
			if err != nil {
				return err
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 2, 4, 2, ' ', 0)
			fmt.Fprintln(w, "TARGET\tDEVICE TYPE\tVERSION\tMIN VERSION\tBYTES\tSHA256")
			for _, t := range ts {
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%s\n", t.Name, t.DeviceType, t.Version, t.MinVersion, t.Length, t.SHA256)
			}
			return w.Flush()
		},
	}
	addDataFlag(c, &dir)
	return c
}

func newCampaignCreateCmd() *cobra.Command {
	var (
		dir, version, devType string
		scope                 []string
		canary, maxFailures   int
	)
	c := &cobra.Command{
		Use:   "create --version V --device-type T --scope PATH [--canary PERCENT] [--max-failures N]",
		Short: "Start a staged rollout; prints the campaign id",
		Long: `Start rolling firmware V for device type T out to the gateways in --scope (a
customer MASTER, an account MASTER/ACCOUNT or gateways MASTER/ACCOUNT/GATEWAY;
repeat or separate with commas) that run a device of type T. --canary PERCENT
of them get it first; the rest follow once every canary has installed or
failed. More than --max-failures failed gateways pause the campaign. The
running platform ('fieldtrust up') sends the notices.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if version == "" || devType == "" || len(scope) == 0 {
				return usageError{errors.New("--version, --device-type and --scope are required")}
			}
			d, err := datadir.Open(cmd.Context(), dir, nil)
			if err != nil {
				return err
			}
			defer d.Close()
			camp, devs, err := rollout.Create(cmd.Context(), d.Store, tufrepo.Open(dir), rollout.Spec{Version: version, DeviceType: devType, Scope: scope, CanaryPercent: canary, MaxFailures: maxFailures})
			if err != nil {
				return err
			}
			canaries := 0
			for _, dv := range devs {
				if dv.Stage == 1 {
					canaries++
				}
			}
			fmt.Fprintln(cmd.OutOrStdout(), camp.ID)
			fmt.Fprintf(cmd.ErrOrStderr(), "campaign %s: %s %s to %d gateways (%d in the first stage); watch it: fieldtrust firmware campaign status --data %s %s\n",
				camp.ID, devType, version, len(devs), canaries, dir, camp.ID)
			return nil
		},
	}
	addDataFlag(c, &dir)
	f := c.Flags()
	f.StringVar(&version, "version", "", "firmware version to roll out")
	f.StringVar(&devType, "device-type", "", "device type")
	f.StringSliceVar(&scope, "scope", nil, "customer, account or gateway paths")
	f.IntVar(&canary, "canary", 0, "percentage of the gateways in the first stage (0: one stage)")
	f.IntVar(&maxFailures, "max-failures", 0, "failed gateways tolerated before the campaign pauses")
	return c
}

func newCampaignListCmd() *cobra.Command {
	var dir string
	var states []string
	c := &cobra.Command{
		Use:   "list [--state S]",
		Short: "List the campaigns, oldest first",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			d, err := datadir.Open(cmd.Context(), dir, nil)
			if err != nil {
				return err
			}
			defer d.Close()
			cs, err := d.Store.Campaigns(cmd.Context(), states...)
			if err != nil {
				return err
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 2, 4, 2, ' ', 0)
			fmt.Fprintln(w, "ID\tDEVICE TYPE\tVERSION\tSTATE\tSTAGE\tSCOPE\tCREATED\tREASON")
			for _, c := range cs {
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n", c.ID, c.DeviceType, c.Version, c.State, c.Stage,
					strings.Join(c.Scope, ","), c.Created.UTC().Format(time.RFC3339), c.Reason)
			}
			return w.Flush()
		},
	}
	addDataFlag(c, &dir)
	c.Flags().StringSliceVar(&states, "state", nil, "only campaigns in these states (running, paused, aborting, aborted, completed)")
	return c
}

func newCampaignStatusCmd() *cobra.Command {
	var dir string
	var asJSON bool
	c := &cobra.Command{
		Use:   "status ID [--json]",
		Short: "Per-gateway states of a campaign",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			d, err := datadir.Open(cmd.Context(), dir, nil)
			if err != nil {
				return err
			}
			defer d.Close()
			r, err := rollout.Status(cmd.Context(), d.Store, args[0])
			if err != nil {
				return err
			}
			if asJSON {
				e := json.NewEncoder(cmd.OutOrStdout())
				e.SetIndent("", "  ")
				return e.Encode(r)
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "campaign %s: %s %s, %s (stage %d) %s\n", r.ID, r.DeviceType, r.Version, r.State, r.Stage, r.Reason)
			fmt.Fprintf(out, "counts: %v\n", r.Counts)
			w := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
			fmt.Fprintln(w, "GATEWAY\tSTAGE\tSTATE\tREASON")
			for _, dv := range r.Devices {
				fmt.Fprintf(w, "%s\t%d\t%s\t%s\n", dv.Path, dv.Stage, dv.State, dv.Reason)
			}
			return w.Flush()
		},
	}
	addDataFlag(c, &dir)
	c.Flags().BoolVar(&asJSON, "json", false, `print {"id":...,"state":...,"devices":[{"path":...,"state":...,"reason":...}]}`)
	return c
}

func newCampaignMoveCmd(name, short string, move func(ctx context.Context, st rollout.Store, id string) (store.Campaign, error)) *cobra.Command {
	var dir string
	c := &cobra.Command{
		Use:   name + " ID",
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			d, err := datadir.Open(cmd.Context(), dir, nil)
			if err != nil {
				return err
			}
			defer d.Close()
			camp, err := move(cmd.Context(), d.Store, args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "campaign %s: %s\n", camp.ID, camp.State)
			return nil
		},
	}
	addDataFlag(c, &dir)
	return c
}
