package storetest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/store"
)

func testFirmware(t *testing.T, s store.Store) {
	ctx := context.Background()
	c := store.Campaign{ID: "c1", Version: "2.4.1", DeviceType: "pump", Target: "pump/2.4.1", Scope: []string{"ms-1", "ms-2/acc"},
		CanaryPercent: 10, MaxFailures: 2, State: "running", Stage: 1}
	devs := []store.CampaignDevice{{Path: "ms-1/a/g2", Stage: 2, State: "pending"}, {Path: "ms-1/a/g1", Stage: 1, State: "pending"}}
	if err := s.CreateCampaign(ctx, c, devs); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateCampaign(ctx, c, nil); !errors.Is(err, store.ErrExists) {
		t.Fatalf("duplicate campaign: %v", err)
	}
	got, err := s.Campaign(ctx, "c1")
	if err != nil || got.Target != "pump/2.4.1" || len(got.Scope) != 2 || got.Scope[1] != "ms-2/acc" || got.CanaryPercent != 10 || got.Stage != 1 {
		t.Fatalf("campaign: %+v %v", got, err)
	}
	if _, err := s.Campaign(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("missing campaign: %v", err)
	}
	got.State, got.Stage, got.Reason, got.MaxFailures = "paused", 2, "too many failures", 5
	if err := s.UpdateCampaign(ctx, got); err != nil {
		t.Fatal(err)
	}
	if l, err := s.Campaigns(ctx, "running"); err != nil || len(l) != 0 {
		t.Fatalf("running campaigns: %+v %v", l, err)
	}
	if l, err := s.Campaigns(ctx, "running", "paused"); err != nil || len(l) != 1 || l[0].Reason != "too many failures" || l[0].Stage != 2 || l[0].MaxFailures != 5 {
		t.Fatalf("campaigns: %+v %v", l, err)
	}
	now := time.Now()
	if ok, err := s.SetCampaignDevice(ctx, "c1", "ms-1/a/g1", "installed", "", now); !ok || err != nil {
		t.Fatalf("set device: %v %v", ok, err)
	}
	if ok, err := s.SetCampaignDevice(ctx, "c1", "ms-1/a/g1", "downloading", "", now); ok || err != nil {
		t.Fatalf("a final state moved: %v %v", ok, err)
	}
	if ok, err := s.SetCampaignDevice(ctx, "c1", "ms-1/a/unknown", "installed", "", now); ok || err != nil {
		t.Fatalf("unknown device: %v %v", ok, err)
	}
	dl, err := s.CampaignDevices(ctx, "c1")
	if err != nil || len(dl) != 2 || dl[0].Path != "ms-1/a/g1" || dl[0].State != "installed" || dl[1].Stage != 2 {
		t.Fatalf("devices: %+v %v", dl, err)
	}

	msgs := []store.DeviceMessage{
		{ID: "m1", Kind: "command", Gateway: "ms-1/a/g1", Ref: "m1", Sender: "service:operator", Name: "reboot", At: now, Expires: now.Add(time.Hour), Body: []byte{1, 2}, State: "queued", LedgerIndex: -1},
		{ID: "m2", Kind: "notice", Gateway: "ms-10/a/g1", Ref: "c1", Sender: "service:firmware", Name: "install", At: now, Body: []byte{3}, LedgerIndex: -1},
		{ID: "m3", Kind: "result", Gateway: "ms-1/a/g1", Ref: "m1", Sender: "ms-1/a/g1", Name: "ok", At: now, Body: []byte{4}, LedgerIndex: -1},
	}
	for _, m := range msgs {
		if err := s.PutDeviceMessage(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.PutDeviceMessage(ctx, msgs[0]); !errors.Is(err, store.ErrExists) {
		t.Fatalf("duplicate message: %v", err)
	}
	l, err := s.DeviceMessages(ctx, store.MessageFilter{Scope: "ms-1"})
	if err != nil || len(l) != 2 || l[0].ID != "m1" || l[1].ID != "m3" || l[0].Seq >= l[1].Seq || !l[0].Expires.Equal(now.Add(time.Hour).Truncate(time.Millisecond)) || string(l[0].Body) != "\x01\x02" {
		t.Fatalf("messages in ms-1 (not ms-10): %+v %v", l, err)
	}
	if l, err := s.DeviceMessages(ctx, store.MessageFilter{State: "queued", Kind: "command"}); err != nil || len(l) != 1 {
		t.Fatalf("queued commands: %+v %v", l, err)
	}
	if err := s.SetDeviceMessage(ctx, "m1", "sent", 7); err != nil {
		t.Fatal(err)
	}
	if l, err := s.DeviceMessages(ctx, store.MessageFilter{Ref: "m1", Kind: "command"}); err != nil || len(l) != 1 || l[0].State != "sent" || l[0].LedgerIndex != 7 {
		t.Fatalf("after SetDeviceMessage: %+v %v", l, err)
	}
	if l, err := s.DeviceMessages(ctx, store.MessageFilter{After: l[0].Seq, Limit: 1}); err != nil || len(l) != 1 || l[0].ID != "m2" {
		t.Fatalf("paging: %+v %v", l, err)
	}
	if _, err := s.DeviceMessages(ctx, store.MessageFilter{Scope: "../x"}); err == nil {
		t.Fatal("bad scope accepted")
	}
}
