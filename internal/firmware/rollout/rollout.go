// Package rollout decides the course of firmware campaigns: which
// gateways a campaign targets, in which stage each is (a canary share
// first, then the rest), when a stage is done, and when failures pause
// the campaign. It is pure bookkeeping over the store; the platform's
// device messaging service sends the notices it asks for.
package rollout

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/firmware"
	"github.com/fieldtrust/fieldtrust/internal/firmware/tufrepo"
	"github.com/fieldtrust/fieldtrust/internal/ident"
	"github.com/fieldtrust/fieldtrust/internal/store"
)

// Campaign states.
const (
	Running   = "running"
	Paused    = "paused"
	Aborting  = "aborting" // abort notices are being sent
	Aborted   = "aborted"
	Completed = "completed"
)

// ErrSpec is wrapped by Create's refusals of what the operator asked for
// (a bad share, threshold or scope, or no gateway to roll out to).
var ErrSpec = errors.New("invalid campaign")

// ErrState is wrapped by a move the campaign's state does not allow.
var ErrState = errors.New("campaign state does not allow it")

// Store is what rollout reads and writes.
type Store interface {
	ListDevices(ctx context.Context, scope string) ([]store.Device, error)
	CreateCampaign(ctx context.Context, c store.Campaign, devices []store.CampaignDevice) error
	Campaign(ctx context.Context, id string) (store.Campaign, error)
	UpdateCampaign(ctx context.Context, c store.Campaign) error
	CampaignDevices(ctx context.Context, id string) ([]store.CampaignDevice, error)
}

// Spec is what an operator asks for.
type Spec struct {
	Version       string
	DeviceType    string
	Scope         []string // customers, accounts or gateways
	CanaryPercent int      // 0: no canary stage
	MaxFailures   int
}

// Create makes a campaign: the target must be in the repository; the
// devices are the gateways in scope that run a device of the type (as
// their snapshots say), and gateways named explicitly.
func Create(ctx context.Context, st Store, repo *tufrepo.Repo, spec Spec) (store.Campaign, []store.CampaignDevice, error) {
	var c store.Campaign
	if spec.CanaryPercent < 0 || spec.CanaryPercent > 100 {
		return c, nil, fmt.Errorf("%w: --canary %d: want a percentage from 0 to 100", ErrSpec, spec.CanaryPercent)
	}
	if spec.MaxFailures < 0 {
		return c, nil, fmt.Errorf("%w: --max-failures %d: want 0 or more", ErrSpec, spec.MaxFailures)
	}
	if len(spec.Scope) == 0 {
		return c, nil, fmt.Errorf("%w: --scope: name at least one customer, account or gateway", ErrSpec)
	}
	t, err := repo.Find(spec.DeviceType, spec.Version)
	if err != nil {
		return c, nil, err
	}
	var gws []string
	for _, sc := range spec.Scope {
		parts, err := ident.SplitPath(sc)
		if err != nil || len(parts) > 3 {
			return c, nil, fmt.Errorf("%w: --scope %q: want master, master/account or master/account/gateway", ErrSpec, sc)
		}
		if len(parts) == 3 {
			gws = append(gws, sc)
			continue
		}
		devs, err := st.ListDevices(ctx, sc)
		if err != nil {
			return c, nil, fmt.Errorf("devices in %s: %w", sc, err)
		}
		for _, d := range devs {
			if d.DeviceType == spec.DeviceType {
				gws = append(gws, d.Gateway)
			}
		}
	}
	slices.Sort(gws)
	gws = slices.Compact(gws)
	if len(gws) == 0 {
		return c, nil, fmt.Errorf("%w: no gateway in %s runs a %s device (as far as their snapshots tell): nothing to roll out", ErrSpec, strings.Join(spec.Scope, ", "), spec.DeviceType)
	}
	id := newID()
	c = store.Campaign{ID: id, Version: spec.Version, DeviceType: spec.DeviceType, Target: t.Name, Scope: spec.Scope,
		CanaryPercent: spec.CanaryPercent, MaxFailures: spec.MaxFailures, State: Running, Stage: 1}
	devices := Stages(id, gws, spec.CanaryPercent)
	if err := st.CreateCampaign(ctx, c, devices); err != nil {
		return c, nil, err
	}
	return c, devices, nil
}

// Stages assigns gateways to stages: the canary share (rounded up, at
// least one gateway when the share is above 0) in stage 1, picked by a
// hash of campaign and path so that every campaign gets another sample,
// and the rest in stage 2. Without a canary, everyone is in stage 1.
func Stages(id string, gws []string, canaryPercent int) []store.CampaignDevice {
	order := slices.Clone(gws)
	sort.Slice(order, func(i, j int) bool { return rank(id, order[i]) < rank(id, order[j]) })
	canary := 0
	if canaryPercent > 0 && canaryPercent < 100 {
		canary = max(1, (len(order)*canaryPercent+99)/100)
	}
	out := make([]store.CampaignDevice, len(order))
	for i, g := range order {
		stage := 1
		if canary > 0 && i >= canary {
			stage = 2
		}
		out[i] = store.CampaignDevice{Campaign: id, Path: g, Stage: stage, State: firmware.Pending}
	}
	return out
}

func rank(id, path string) string {
	h := sha256.Sum256([]byte(id + "\x00" + path))
	return hex.EncodeToString(h[:])
}

func newID() string {
	b := make([]byte, 8)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// Decision is what to do for a campaign now.
type Decision struct {
	Notify  []string // gateways to send the install notice to (again, for stale ones)
	Abort   []string // gateways to send the abort notice to
	Next    store.Campaign
	Changed bool // Next differs from the campaign
}

// Step decides a campaign's next move from its devices. Notices are
// re-sent to gateways notified longer than resend ago (their URL would
// expire before they connect).
func Step(c store.Campaign, devs []store.CampaignDevice, now time.Time, resend time.Duration) Decision {
	d := Decision{Next: c}
	switch c.State {
	case Aborting:
		for _, dv := range devs {
			if firmware.Rank(dv.State) > firmware.Rank(firmware.Pending) && !firmware.Terminal(dv.State) {
				d.Abort = append(d.Abort, dv.Path)
			}
		}
		d.Next.State, d.Changed = Aborted, true
		return d
	case Running:
	default:
		return d
	}
	failed, lastStage := 0, 1
	for _, dv := range devs {
		if dv.State == firmware.Failed {
			failed++
		}
		lastStage = max(lastStage, dv.Stage)
	}
	allFinal := true
	for _, dv := range devs {
		if !firmware.Terminal(dv.State) {
			allFinal = false
			break
		}
	}
	if allFinal {
		d.Next.State, d.Next.Stage, d.Next.Reason, d.Changed = Completed, lastStage, "", true
		if failed > 0 {
			d.Next.Reason = fmt.Sprintf("%d of %d gateways failed", failed, len(devs))
		}
		return d
	}
	if failed > c.MaxFailures {
		d.Next.State = Paused
		d.Next.Reason = fmt.Sprintf("%d gateways failed, more than --max-failures %d: look at 'campaign status', then resume or abort", failed, c.MaxFailures)
		d.Changed = true
		return d
	}
	stage := c.Stage
	for {
		done := true
		for _, dv := range devs {
			if dv.Stage <= stage && !firmware.Terminal(dv.State) {
				done = false
				break
			}
		}
		if !done || stage >= lastStage {
			if done {
				d.Next.State, d.Next.Reason, d.Changed = Completed, "", true
				return d
			}
			break
		}
		stage++
	}
	if stage != c.Stage {
		d.Next.Stage, d.Changed = stage, true
	}
	for _, dv := range devs {
		if dv.Stage > stage {
			continue
		}
		if dv.State == firmware.Pending || (dv.State == firmware.Notified && resend > 0 && now.Sub(dv.Updated) > resend) {
			d.Notify = append(d.Notify, dv.Path)
		}
	}
	return d
}

// Pause, Resume and Abort are the operator's moves. Resuming a campaign
// paused by failures accepts the failures so far (the threshold counts
// from there).
func Pause(ctx context.Context, st Store, id string) (store.Campaign, error) {
	return move(ctx, st, id, func(c *store.Campaign, _ []store.CampaignDevice) error {
		if c.State != Running {
			return fmt.Errorf("%w: campaign %s is %s, not running", ErrState, id, c.State)
		}
		c.State, c.Reason = Paused, "paused by the operator"
		return nil
	})
}

// Resume continues a paused campaign.
func Resume(ctx context.Context, st Store, id string) (store.Campaign, error) {
	return move(ctx, st, id, func(c *store.Campaign, devs []store.CampaignDevice) error {
		if c.State != Paused {
			return fmt.Errorf("%w: campaign %s is %s, not paused", ErrState, id, c.State)
		}
		failed := 0
		for _, d := range devs {
			if d.State == firmware.Failed {
				failed++
			}
		}
		c.MaxFailures = max(c.MaxFailures, failed)
		c.State, c.Reason = Running, ""
		return nil
	})
}

// Abort stops a campaign: no more notices, and gateways that have not
// installed yet are told to stop.
func Abort(ctx context.Context, st Store, id string) (store.Campaign, error) {
	return move(ctx, st, id, func(c *store.Campaign, _ []store.CampaignDevice) error {
		if c.State == Completed || c.State == Aborted || c.State == Aborting {
			return fmt.Errorf("%w: campaign %s is %s already", ErrState, id, c.State)
		}
		c.State, c.Reason = Aborting, "aborted by the operator"
		return nil
	})
}

func move(ctx context.Context, st Store, id string, f func(*store.Campaign, []store.CampaignDevice) error) (store.Campaign, error) {
	c, err := st.Campaign(ctx, id)
	if err != nil {
		return c, err
	}
	devs, err := st.CampaignDevices(ctx, id)
	if err != nil {
		return c, err
	}
	if err := f(&c, devs); err != nil {
		return c, err
	}
	return c, st.UpdateCampaign(ctx, c)
}

// Report is a campaign's status as `campaign status --json` prints it.
type Report struct {
	ID         string         `json:"id"`
	State      string         `json:"state"`
	Reason     string         `json:"reason,omitempty"`
	DeviceType string         `json:"device_type"`
	Version    string         `json:"version"`
	Stage      int            `json:"stage"`
	Counts     map[string]int `json:"counts"`
	Devices    []DeviceReport `json:"devices"`
}

// DeviceReport is one gateway's line.
type DeviceReport struct {
	Path   string `json:"path"`
	State  string `json:"state"`
	Reason string `json:"reason,omitempty"`
	Stage  int    `json:"stage"`
}

// Status reports a campaign.
func Status(ctx context.Context, st Store, id string) (Report, error) {
	c, err := st.Campaign(ctx, id)
	if err != nil {
		return Report{}, err
	}
	devs, err := st.CampaignDevices(ctx, id)
	if err != nil {
		return Report{}, err
	}
	r := Report{ID: c.ID, State: c.State, Reason: c.Reason, DeviceType: c.DeviceType, Version: c.Version, Stage: c.Stage, Counts: map[string]int{}, Devices: []DeviceReport{}}
	for _, d := range devs {
		r.Counts[d.State]++
		r.Devices = append(r.Devices, DeviceReport{Path: d.Path, State: d.State, Reason: d.Reason, Stage: d.Stage})
	}
	return r, nil
}

// Advance applies a device's report: states only move forward (a late
// "downloading" after "installing" changes nothing); final states stay.
func Advance(ctx context.Context, st interface {
	SetCampaignDevice(ctx context.Context, id, path, state, reason string, at time.Time) (bool, error)
	CampaignDevices(ctx context.Context, id string) ([]store.CampaignDevice, error)
}, campaign, path string, s firmware.Status) (bool, error) {
	devs, err := st.CampaignDevices(ctx, campaign)
	if err != nil {
		return false, err
	}
	for _, d := range devs {
		if d.Path != path {
			continue
		}
		if firmware.Rank(s.State) <= firmware.Rank(d.State) {
			return false, nil
		}
		return st.SetCampaignDevice(ctx, campaign, path, s.State, s.Reason, time.Now())
	}
	return false, nil // not a device of the campaign: ignored
}
