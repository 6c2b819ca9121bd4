package devicemsg_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/devicemsg"
	"github.com/fieldtrust/fieldtrust/internal/firmware"
	"github.com/fieldtrust/fieldtrust/internal/firmware/rollout"
	"github.com/fieldtrust/fieldtrust/internal/firmware/tufrepo"
	"github.com/fieldtrust/fieldtrust/internal/gateway"
	"github.com/fieldtrust/fieldtrust/internal/platform"
	"github.com/fieldtrust/fieldtrust/internal/platform/platformtest"
	"github.com/fieldtrust/fieldtrust/internal/store"
)

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// TestFirmwareLoad measures a firmware rollout to many gateways on
// loopback (docs/benchmarks.md, "Firmware"): the time for an artifact to
// reach every gateway and be verified there, the CPU per download and the
// metadata bytes per update. Load test: runs only with
// FIELDTRUST_FIRMWARE_LOAD=1 (make load-firmware); FIELDTRUST_FIRMWARE_GATEWAYS
// and FIELDTRUST_FIRMWARE_MIB change the defaults of 100 gateways, 20 MiB.
func TestFirmwareLoad(t *testing.T) {
	if os.Getenv("FIELDTRUST_FIRMWARE_LOAD") == "" {
		t.Skip("load test: set FIELDTRUST_FIRMWARE_LOAD=1 (make load-firmware)")
	}
	n, mib := 100, 20
	if v, err := strconv.Atoi(os.Getenv("FIELDTRUST_FIRMWARE_GATEWAYS")); err == nil && v > 0 {
		n = v
	}
	if v, err := strconv.Atoi(os.Getenv("FIELDTRUST_FIRMWARE_MIB")); err == nil && v > 0 {
		mib = v
	}
	env := platformtest.Start(t, platform.Config{})
	ctx := context.Background()
	keys := t.TempDir()
	root, err := tufrepo.InitKeys(keys, time.Now(), tufrepo.DefaultExpiry)
	if err != nil {
		t.Fatal(err)
	}
	art := make([]byte, mib<<20)
	rand.Read(art)
	artFile := filepath.Join(t.TempDir(), "fw.bin")
	os.WriteFile(artFile, art, 0o600)
	repo := tufrepo.Open(env.Dir)
	if _, err := repo.Add(keys, tufrepo.Artifact{File: artFile, DeviceType: "pump", Version: "1.1.0"}); err != nil {
		t.Fatal(err)
	}
	env.Identity(t, "ms-1", true)
	fl := &fleet{t: t, env: env, root: root, stop: map[string]func(){}, dirs: map[string]string{}, mods: map[string]func(*gateway.Config){}}
	t.Cleanup(fl.haltAll)
	for i := range n {
		p := fmt.Sprintf("ms-1/acc-1/gw-%03d", i)
		fl.dirs[p] = filepath.Join(t.TempDir(), "gw")
		provision(t, env, p, fl.dirs[p])
		fl.mods[p] = func(c *gateway.Config) {
			c.SimulateEvery = 30 * time.Second
			c.FirmwareHealth = func(context.Context, string, string) error { return nil }
		}
		fl.start(p)
	}
	waitUntil(t, 5*time.Minute, "every gateway's pump in the store", func() bool {
		devs, _ := env.D.Store.ListDevices(ctx, "")
		return len(devs) >= 2*n
	})

	cpu0, t0 := cpuTime(), time.Now()
	camp, _, err := rollout.Create(ctx, env.D.Store, repo, rollout.Spec{Version: "1.1.0", DeviceType: "pump", Scope: []string{"ms-1"}})
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 30*time.Minute, "the campaign to complete", func() bool {
		r, _ := rollout.Status(ctx, env.D.Store, camp.ID)
		return r.State == rollout.Completed
	})
	elapsed, cpu := time.Since(t0), cpuTime()-cpu0
	r, _ := rollout.Status(ctx, env.D.Store, camp.ID)
	if r.Counts[firmware.Installed] != n {
		t.Fatalf("counts %v", r.Counts)
	}
	// When each gateway had the artifact verified: its "installing" report.
	msgs, err := env.D.Store.DeviceMessages(ctx, store.MessageFilter{Kind: devicemsg.KindStatus, Ref: camp.ID, Limit: 100000})
	if err != nil {
		t.Fatal(err)
	}
	var lastVerified time.Time
	for _, m := range msgs {
		if m.Name == firmware.Installing && m.At.After(lastVerified) {
			lastVerified = m.At
		}
	}
	// The gateway's own share of the CPU: hashing the artifact (SHA-256 and
	// SHA-512) as the verification does, once per gateway.
	h0 := cpuTime()
	for range 3 {
		io.Copy(io.MultiWriter(sha256.New(), sha512.New()), bytes.NewReader(art))
	}
	verifyCPU := (cpuTime() - h0) / 3
	meta, err := repo.MetadataBytes(1)
	if err != nil {
		t.Fatal(err)
	}
	notices, _ := env.D.Store.DeviceMessages(ctx, store.MessageFilter{Kind: devicemsg.KindNotice, Ref: camp.ID, Limit: 1})
	t.Logf("firmware load: %d gateways, %d MiB: all verified after %s, all installed after %s", n, mib, lastVerified.Sub(t0).Round(time.Millisecond), elapsed.Round(time.Millisecond))
	t.Logf("firmware load: process CPU %s in all, %s per gateway download (platform and in-process gateway: TLS on both ends, file reads, the gateway's verification of %s and its A/B copy)", cpu.Round(time.Millisecond), (cpu / time.Duration(n)).Round(time.Millisecond), verifyCPU.Round(time.Millisecond))
	t.Logf("firmware load: metadata per update %d bytes (timestamp + snapshot + targets), campaign notice %d bytes", meta, len(notices[0].Body))
}
