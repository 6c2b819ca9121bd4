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
	c.AddCommand(keys, newFirmwareAddCmd(), newFirmwareListCmd(), campaign)
	return c
}

func newFirmwareKeysInitCmd() *cobra.Command {
	var dir string
	c := &cobra.Command{
		Use:   "init --dir KEYS",
		Short: "Create the firmware keys (root, targets offline; snapshot, timestamp online) and root.json",
		Long: `Create the four TUF role keys (Ed25519) and version 1 of the root metadata in
KEYS. KEYS/root.key and KEYS/targets.key are the offline keys: move KEYS off
the platform after the first 'firmware add' (set ` + tufrepo.PassphraseEnv + ` to
encrypt them). KEYS/online/ holds the snapshot and timestamp keys, which the
first 'firmware add' copies into the platform. KEYS/root.json is what gateways
pin (fieldtrust gateway --firmware-root root.json).`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if dir == "" {
				return usageError{errors.New("--dir KEYS is required")}
			}
			if _, err := tufrepo.InitKeys(dir, time.Now(), tufrepo.DefaultExpiry); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "firmware keys created in %s\npin %s in every gateway: fieldtrust gateway ... --firmware-root %s\n",
				dir, filepath.Join(dir, "root.json"), filepath.Join(dir, "root.json"))
			return nil
		},
	}
	c.Flags().StringVar(&dir, "dir", "", "directory for the keys (must not hold keys yet)")
	return c
}

func newFirmwareKeysRotateCmd() *cobra.Command {
	var dir, keys, role string
	c := &cobra.Command{
		Use:   "rotate --keys KEYS --role root|targets|snapshot|timestamp",
		Short: "Replace a role's key through a new root version (gateways follow by themselves)",
		Long: `Replace one TUF role's key: a new root version names the new key instead of
the old one, signed by the root key (and by the new root key when the root
key rotates), and what the role signs is re-signed at once. Gateways are not
touched: they walk the root versions from the one they pinned. The root and
targets keys are the offline ones in KEYS (the old one stays as
ROLE.key.retired-N); the snapshot and timestamp keys are the online keys
the platform keeps in its data directory (rotate them when the platform may
have been compromised). Run it where the platform's data directory is; the new
KEYS/root.json is what new gateways pin.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if keys == "" {
				return usageError{errors.New("--keys KEYS is required")}
			}
			switch role {
			case "root", "targets", "snapshot", "timestamp":
			default:
				return usageError{fmt.Errorf("--role %q: want root, targets, snapshot or timestamp", role)}
			}
			v, err := tufrepo.Open(dir).RotateKey(keys, role)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s key rotated: root version %d names the new key; gateways update their trust on their next check\n", role, v)
			return nil
		},
	}
	addDataFlag(c, &dir)
	c.Flags().StringVar(&keys, "keys", "", "the offline keys directory (of 'firmware keys init')")
	c.Flags().StringVar(&role, "role", "targets", "role whose key to rotate: root, targets, snapshot or timestamp")
	return c
}

func newFirmwareAddCmd() *cobra.Command {
	var dir, keys, file, version, devType, minVersion string
	c := &cobra.Command{
		Use:   "add --keys KEYS --file F --version V --device-type T [--min-version V]",
		Short: "Store a firmware artifact and sign new targets metadata",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if keys == "" || file == "" || version == "" || devType == "" {
				return usageError{errors.New("--keys, --file, --version and --device-type are required")}
			}
			t, err := tufrepo.Open(dir).Add(keys, tufrepo.Artifact{File: file, DeviceType: devType, Version: version, MinVersion: minVersion})
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "added %s (%d bytes, sha256 %s)\nroll it out: fieldtrust firmware campaign create --data %s --version %s --device-type %s --scope MASTER[/ACCOUNT[/GATEWAY]] --canary 10\n",
				t.Name, t.Length, t.SHA256, dir, version, devType)
			return nil
		},
	}
	addDataFlag(c, &dir)
	f := c.Flags()
	f.StringVar(&keys, "keys", "", "the offline keys directory (of 'firmware keys init')")
	f.StringVar(&file, "file", "", "the firmware artifact")
	f.StringVar(&version, "version", "", "its semantic version, e.g. 2.4.1")
	f.StringVar(&devType, "device-type", "", "the device type it is for, e.g. pump")
	f.StringVar(&minVersion, "min-version", "", "the oldest installed version it may be installed over")
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
