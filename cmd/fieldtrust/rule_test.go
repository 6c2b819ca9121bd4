package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/mailcatcher"
	"github.com/fieldtrust/fieldtrust/internal/snapshot"
	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/store/registrystore"
)

const crashRule = `version: 1
name: overheat
scope: ms-crash
when: has(values.temp) && values.temp > 90.0
severity: critical
actions:
  - email: [ops@acme.example]
`

const markerRule = `version: 1
name: marker
scope: ms-crash
mode: each
when: has(values.marker)
actions:
  - email: [marker@acme.example]
`

// TestRuleCLI: rule add refuses a condition that does not compile with
// exit 2 and file:line:col: message; list, show, disable work; rule test
// replays stored history.
func TestRuleCLI(t *testing.T) {
	data, work := t.TempDir(), t.TempDir()
	bad := filepath.Join(work, "bad.yaml")
	os.WriteFile(bad, []byte("version: 1\nname: hot\nscope: ms-1\nwhen: values.temp >> 3\nactions:\n  - mqtt: {}\n"), 0o600)
	out, code := run(t, "rule", "add", "--data", data, bad)
	if code != 2 || !regexp.MustCompile(`(?m)^`+regexp.QuoteMeta(bad)+`:4:20: when: `).MatchString(out) {
		t.Fatalf("rule add of a bad condition: exit %d, output %q; want exit 2 and %s:4:20: when: ...", code, out, bad)
	}
	good := filepath.Join(work, "hot.yaml")
	os.WriteFile(good, []byte("version: 1\nname: hot\nscope: ms-1\nwhen: values.temp > 90.0\nfor: 2m\nactions:\n  - mqtt: {}\n"), 0o600)
	out, code = run(t, "rule", "add", "--data", data, good)
	id := regexp.MustCompile(`rule (r-[0-9a-f]+):`).FindStringSubmatch(out)
	if code != 0 || id == nil {
		t.Fatalf("rule add: exit %d: %s", code, out)
	}
	if out, code = run(t, "rule", "list", "--data", data); code != 0 || !strings.Contains(out, id[1]) || !strings.Contains(out, "enabled") {
		t.Fatalf("rule list: %d %s", code, out)
	}
	if out, code = run(t, "rule", "show", "--data", data, id[1]); code != 0 || !strings.Contains(out, "values.temp > 90.0") {
		t.Fatalf("rule show: %d %s", code, out)
	}
	if out, code = run(t, "rule", "disable", "--data", data, id[1]); code != 0 {
		t.Fatalf("rule disable: %d %s", code, out)
	}
	if out, _ = run(t, "rule", "list", "--data", data); !strings.Contains(out, "disabled") {
		t.Fatalf("after disable: %s", out)
	}
	if out, code = run(t, "rule", "show", "--data", data, "r-nope"); code != 2 {
		t.Fatalf("rule show of a missing rule: %d %s", code, out)
	}

	// History: 10 snapshots a minute apart, 95 °C from minute 3 to 6.
	d := openData(t, data)
	var recs []store.SnapshotRecord
	for i := range 10 {
		temp := 60.0
		if i >= 3 && i <= 6 {
			temp = 95
		}
		at := time.Date(2026, 11, 1, 8, i, 0, 0, time.UTC)
		recs = append(recs, store.SnapshotRecord{Gateway: "ms-1/acc-1/gw-1", Device: "pump-1", Seq: uint64(i + 1), Time: at, Hash: []byte(fmt.Sprintf("hash-%02d-0123456789abcdef0123456", i)),
			Values: []snapshot.Value{{Channel: "temp", Value: temp}}, Signer: "x", SignedAt: at, ReceivedAt: at, LedgerIndex: uint64(i)})
	}
	if _, err := d.Store.InsertSnapshots(context.Background(), recs); err != nil {
		t.Fatal(err)
	}
	d.Close()
	out, code = run(t, "rule", "test", "--data", data, good, "--device", "ms-1/acc-1/gw-1/pump-1", "--from", "2026-11-01T00:00:00Z", "--to", "2026-11-02T00:00:00Z")
	if code != 0 || !strings.Contains(out, "2026-11-01T08:05:00Z  raised") || !strings.Contains(out, "2026-11-01T08:07:00Z  cleared") ||
		!strings.Contains(out, "10 snapshot(s) of ms-1/acc-1/gw-1/pump-1 replayed through hot: 2 event(s)") {
		t.Fatalf("rule test: exit %d:\n%s", code, out)
	}
	if out, code = run(t, "rule", "test", "--data", data, bad, "--device", "ms-1/acc-1/gw-1/pump-1"); code != 2 || !strings.Contains(out, bad+":4:20:") {
		t.Fatalf("rule test of a bad file: %d %s", code, out)
	}

	// With the fleet link: pump-1 is bound to an instrument the registry
	// has no DCC for, so each measurement is uncalibrated (without the
	// link, as before, calibration was unknown and nothing matched).
	d = openData(t, data)
	rs, err := registrystore.Of(d.Store)
	if err != nil {
		t.Fatal(err)
	}
	if err := rs.PutBinding(context.Background(), registrystore.Binding{Gateway: "ms-1/acc-1/gw-1", Device: "pump-1", SinceMs: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixMilli(),
		Issuer: "manufacturer", Value: "SN-NODCC", SetBy: "ms-1/acc-1/gw-1"}); err != nil {
		t.Fatal(err)
	}
	d.Close()
	cal := filepath.Join(work, "cal.yaml")
	os.WriteFile(cal, []byte("version: 1\nname: uncal\nscope: ms-1\nmode: each\nwhen: calibration.status == \"uncalibrated\" && calibration.flagged && !calibration.proven\nactions:\n  - mqtt: {}\n"), 0o600)
	out, code = run(t, "rule", "test", "--data", data, cal, "--device", "ms-1/acc-1/gw-1/pump-1")
	if code != 0 || strings.Count(out, "  matched  ") != 10 || !strings.Contains(out, "replayed through uncal: 10 event(s)") {
		t.Fatalf("rule test with calibration: exit %d:\n%s", code, out)
	}
}

// TestCrashBetweenAlarmAndMail kills the platform (SIGKILL) after a rule
// raised its alarm and before its mail could be sent (the SMTP server is
// down), starts the SMTP server and the platform again, and checks the
// mail arrives exactly once, with the Message-ID of its outbox message.
func TestCrashBetweenAlarmAndMail(t *testing.T) {
	data, work := t.TempDir(), t.TempDir()
	httpAddr, mqttAddr, smtpAddr, local := freeAddr(t), freeAddr(t), freeAddr(t), freeAddr(t)
	t.Setenv("FIELDTRUST_SMTP_URL", "smtp://"+smtpAddr+"?from=alerts@fieldtrust.example")
	caFile, certFile, keyFile, serial := manufacturer(t, work, "ACME-SN-0042")
	os.WriteFile(filepath.Join(work, "overheat.yaml"), []byte(crashRule), 0o600)
	os.WriteFile(filepath.Join(work, "marker.yaml"), []byte(markerRule), 0o600)
	for _, args := range [][]string{
		{"manufacturer", "trust", "--data", data, caFile},
		{"device", "claim", "--data", data, "--onboarding-serial", fmt.Sprintf("%X", serial), "--path", "ms-crash/acc-1/gw-1"},
		{"rule", "add", "--data", data, filepath.Join(work, "overheat.yaml")},
		{"rule", "add", "--data", data, filepath.Join(work, "marker.yaml")},
	} {
		if o, code := run(t, args...); code != 0 {
			t.Fatalf("%v: %s", args, o)
		}
	}
	p := startUp(t, data, httpAddr, mqttAddr)
	gw := gatewayProcess(t, work, httpAddr, data, certFile, keyFile, local)
	defer gw()

	post := func(vals string) {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for {
			resp, err := http.Post("http://"+local+"/v1/readings", "application/json",
				bytes.NewReader([]byte(`{"device": "pump-1", "type": "pump", "values": [`+vals+`]}`)))
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusAccepted {
					return
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("the gateway's local input did not take the reading: %v", err)
			}
			time.Sleep(100 * time.Millisecond) // the gateway is still enrolling
		}
	}
	post(`{"channel": "temp", "value": 95}`)

	// Wait until the alarm is raised and its mail failed at least once.
	d := openData(t, data)
	defer d.Close()
	var msg store.OutboxMessage
	deadline := time.Now().Add(60 * time.Second)
	for {
		msgs, err := d.Store.Outbox(context.Background(), store.OutboxQuery{})
		if err == nil && len(msgs) == 1 && msgs[0].Attempts >= 1 && msgs[0].State == store.OutboxPending {
			msg = msgs[0]
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no failed mail attempt: %+v %v\nplatform log:\n%s", msgs, err, p.logs())
		}
		time.Sleep(50 * time.Millisecond)
	}
	alarms, err := d.Store.Alarms(context.Background(), store.AlarmQuery{State: "open"})
	if err != nil || len(alarms) != 1 {
		t.Fatalf("alarms %+v %v", alarms, err)
	}
	if err := p.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	p.cmd.Wait()
	t.Logf("killed the platform (SIGKILL) with alarm %s raised and its mail %s unsent (%d failed attempts: %s)", alarms[0].ID, msg.ID, msg.Attempts, msg.LastError)

	catcher, err := mailcatcher.Start(mailcatcher.Config{Addr: smtpAddr})
	if err != nil {
		t.Fatal(err)
	}
	defer catcher.Close()
	p = startUp(t, data, httpAddr, mqttAddr)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	got, err := catcher.Wait(ctx, 1)
	if err != nil {
		t.Fatalf("%v\nplatform log:\n%s", err, p.logs())
	}
	// A later notification arrives after it: had the first been queued
	// twice, it would be here too.
	post(`{"channel": "marker", "value": 1}`)
	if got, err = catcher.Wait(ctx, 2); err != nil {
		t.Fatalf("%v\nplatform log:\n%s", err, p.logs())
	}
	ops := 0
	for _, m := range got {
		if m.To[0] == "ops@acme.example" {
			ops++
			if m.Header.Get("Message-Id") != "<"+msg.ID+"@fieldtrust>" {
				t.Errorf("Message-ID %q, want <%s@fieldtrust>", m.Header.Get("Message-Id"), msg.ID)
			}
		}
	}
	if ops != 1 || len(got) != 2 {
		t.Fatalf("after the crash: %d alarm mails of %d, want exactly 1", ops, len(got))
	}
	if m, _ := d.Store.OutboxMessage(context.Background(), msg.ID); m.State != store.OutboxSent {
		t.Fatalf("outbox message %+v", m)
	}
}

// gatewayProcess runs the gateway binary with a local input.
func gatewayProcess(t *testing.T, work, httpAddr, data, certFile, keyFile, local string) (stop func()) {
	t.Helper()
	rootPEM := filepath.Join(work, "transport-root.pem")
	root, err := os.ReadFile(filepath.Join(data, "pki", "transport", "root.crt"))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(rootPEM, root, 0o600)
	gw := exec.Command(binary, "gateway", "--platform", "https://"+httpAddr, "--ca", rootPEM,
		"--onboarding-cert", certFile, "--onboarding-key", keyFile, "--state", filepath.Join(work, "gw-state"),
		"--listen-local", local, "--log-format", "json")
	logFile, _ := os.Create(filepath.Join(work, "gateway.log"))
	gw.Stdout, gw.Stderr = logFile, logFile
	if err := gw.Start(); err != nil {
		t.Fatal(err)
	}
	return func() { gw.Process.Kill(); gw.Wait() }
}
