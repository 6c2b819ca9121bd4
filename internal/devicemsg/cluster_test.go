package devicemsg_test

import (
	"context"
	"crypto/rand"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/command"
	"github.com/fieldtrust/fieldtrust/internal/devicemsg"
	"github.com/fieldtrust/fieldtrust/internal/envelope"
	"github.com/fieldtrust/fieldtrust/internal/firmware"
	"github.com/fieldtrust/fieldtrust/internal/firmware/rollout"
	"github.com/fieldtrust/fieldtrust/internal/firmware/tufrepo"
	"github.com/fieldtrust/fieldtrust/internal/gateway"
	"github.com/fieldtrust/fieldtrust/internal/platform"
	"github.com/fieldtrust/fieldtrust/internal/platform/platformtest"
	"github.com/fieldtrust/fieldtrust/internal/store"
)

// TestUnderCluster: with `up --broker cluster` (one node), the device
// messaging service connects to the cluster node with its identity-bound
// client ID; a signed command and a campaign notice reach a real gateway
// through the node, and the gateway's signed command result and firmware
// reports come back: the command's result verifies as the gateway's, the
// campaign completes with the version installed.
func TestUnderCluster(t *testing.T) {
	env := platformtest.Start(t, platform.Config{Broker: platform.BrokerCluster})
	ctx := context.Background()
	keys := t.TempDir()
	root, err := tufrepo.InitKeys(keys, time.Now(), tufrepo.DefaultExpiry)
	if err != nil {
		t.Fatal(err)
	}
	art := make([]byte, 32<<10)
	rand.Read(art)
	artFile := filepath.Join(t.TempDir(), "pump.bin")
	os.WriteFile(artFile, art, 0o600)
	repo := tufrepo.Open(env.Dir)
	if _, err := repo.Add(keys, tufrepo.Artifact{File: artFile, DeviceType: "pump", Version: "1.1.0"}); err != nil {
		t.Fatal(err)
	}
	env.Identity(t, "ms-1", true)
	const gw = "ms-1/acc-1/gw-1"
	fl := &fleet{t: t, env: env, root: root, stop: map[string]func(){}, dirs: map[string]string{gw: filepath.Join(t.TempDir(), "gw")}, mods: map[string]func(*gateway.Config){}}
	t.Cleanup(fl.haltAll)
	provision(t, env, gw, fl.dirs[gw])
	fl.start(gw)
	waitUntil(t, 2*time.Minute, "the gateway's pump in the store (its snapshots through the node)", func() bool {
		devs, err := env.D.Store.ListDevices(ctx, gw)
		return err == nil && len(devs) > 0
	})

	// A signed command, and its signed result.
	e2e := mustVerifier(t, env)
	signer := operator(t, env)
	cmd, err := devicemsg.NewCommand(gw, command.Clean, nil, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := devicemsg.QueueCommand(ctx, env.D.Store, e2e, func() (*envelope.Signer, error) { return signer, nil }, "service:operator", cmd); err != nil {
		t.Fatal(err)
	}
	var res command.Result
	waitUntil(t, 2*time.Minute, "the command's signed result through the cluster node", func() bool {
		ms, err := env.D.Store.DeviceMessages(ctx, store.MessageFilter{Kind: devicemsg.KindResult, Ref: cmd.ID})
		if err != nil || len(ms) == 0 {
			return false
		}
		if res, err = devicemsg.OpenResult(ctx, e2e, ms[0]); err != nil {
			t.Fatalf("the result: %v", err)
		}
		return true
	})
	if res.Status != command.StatusOK || res.Output["cleaned_devices"] == "" {
		t.Fatalf("result %+v", res)
	}

	// A campaign: the notice reaches the gateway, its reports come back.
	camp, _, err := rollout.Create(ctx, env.D.Store, repo, rollout.Spec{Version: "1.1.0", DeviceType: "pump", Scope: []string{gw}})
	if err != nil {
		t.Fatal(err)
	}
	var rep rollout.Report
	waitUntil(t, 3*time.Minute, "the campaign to complete through the cluster node", func() bool {
		rep, err = rollout.Status(ctx, env.D.Store, camp.ID)
		return err == nil && rep.State == rollout.Completed
	})
	if rep.Counts[firmware.Installed] != 1 {
		t.Fatalf("campaign %+v", rep)
	}
	if b := bootOf(t, fl.dirs[gw]); b.Version != "1.1.0" || b.Tentative {
		t.Fatalf("the gateway boots %+v", b)
	}
	for _, kind := range []string{devicemsg.KindNotice, devicemsg.KindDownload, devicemsg.KindStatus} {
		ms, err := env.D.Store.DeviceMessages(ctx, store.MessageFilter{Kind: kind, Scope: gw})
		if err != nil || len(ms) == 0 {
			t.Errorf("no %s recorded: %v", kind, err)
		}
	}
}
