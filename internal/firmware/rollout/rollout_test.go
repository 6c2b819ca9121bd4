package rollout

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/firmware"
	"github.com/fieldtrust/fieldtrust/internal/store"
)

func TestStages(t *testing.T) {
	var gws []string
	for i := range 50 {
		gws = append(gws, fmt.Sprintf("ms/acc/gw-%02d", i))
	}
	for _, c := range []struct{ pct, canary int }{{0, 50}, {5, 3}, {10, 5}, {1, 1}, {100, 50}} {
		devs := Stages("c1", gws, c.pct)
		n := 0
		for _, d := range devs {
			if d.Stage == 1 {
				n++
			}
		}
		if n != c.canary || len(devs) != 50 {
			t.Errorf("canary %d%%: %d in stage 1 of %d, want %d", c.pct, n, len(devs), c.canary)
		}
	}
	a, b := Stages("c1", gws, 10), Stages("c2", gws, 10)
	if slices.Equal(paths(a[:5]), paths(b[:5])) {
		t.Error("two campaigns picked the same canaries")
	}
}

func paths(d []store.CampaignDevice) []string {
	var out []string
	for _, x := range d {
		out = append(out, x.Path)
	}
	return out
}

func TestStep(t *testing.T) {
	now := time.Now()
	dev := func(path string, stage int, state string) store.CampaignDevice {
		return store.CampaignDevice{Path: path, Stage: stage, State: state, Updated: now}
	}
	run := store.Campaign{ID: "c", State: Running, Stage: 1, MaxFailures: 1}
	for _, tc := range []struct {
		name         string
		c            store.Campaign
		devs         []store.CampaignDevice
		notify       []string
		abort        []string
		state        string
		stage        int
		resendBefore time.Duration
	}{
		{"canary first", run, []store.CampaignDevice{dev("a", 1, firmware.Pending), dev("b", 2, firmware.Pending)}, []string{"a"}, nil, Running, 1, 0},
		{"canary busy", run, []store.CampaignDevice{dev("a", 1, firmware.Downloading), dev("b", 2, firmware.Pending)}, nil, nil, Running, 1, 0},
		{"canary done: the rest", run, []store.CampaignDevice{dev("a", 1, firmware.Installed), dev("b", 2, firmware.Pending)}, []string{"b"}, nil, Running, 2, 0},
		{"one failure tolerated", run, []store.CampaignDevice{dev("a", 1, firmware.Failed), dev("b", 2, firmware.Pending)}, []string{"b"}, nil, Running, 2, 0},
		{"too many failures pause", run, []store.CampaignDevice{dev("a", 1, firmware.Failed), dev("c", 1, firmware.Failed), dev("b", 2, firmware.Pending)}, nil, nil, Paused, 1, 0},
		{"all final: completed", store.Campaign{State: Running, Stage: 2, MaxFailures: 1}, []store.CampaignDevice{dev("a", 1, firmware.Installed), dev("b", 2, firmware.Failed)}, nil, nil, Completed, 2, 0},
		{"all final with too many failures: completed, not paused", run, []store.CampaignDevice{dev("a", 1, firmware.Failed), dev("c", 1, firmware.Failed)}, nil, nil, Completed, 1, 0},
		{"paused: nothing", store.Campaign{State: Paused, Stage: 1}, []store.CampaignDevice{dev("a", 1, firmware.Pending)}, nil, nil, Paused, 1, 0},
		{"aborting: tell the busy ones", store.Campaign{State: Aborting, Stage: 1}, []store.CampaignDevice{dev("a", 1, firmware.Downloading), dev("b", 1, firmware.Pending), dev("c", 1, firmware.Installed)}, nil, []string{"a"}, Aborted, 1, 0},
		{"stale notice re-sent", run, []store.CampaignDevice{{Path: "a", Stage: 1, State: firmware.Notified, Updated: now.Add(-4 * 24 * time.Hour)}}, []string{"a"}, nil, Running, 1, 3 * 24 * time.Hour},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := Step(tc.c, tc.devs, now, tc.resendBefore)
			if !slices.Equal(d.Notify, tc.notify) || !slices.Equal(d.Abort, tc.abort) || d.Next.State != tc.state || d.Next.Stage != tc.stage {
				t.Fatalf("got notify %v abort %v state %s stage %d (%s)", d.Notify, d.Abort, d.Next.State, d.Next.Stage, d.Next.Reason)
			}
		})
	}
}
