package console_test

import (
	"context"
	"crypto/x509"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/browser"
	"github.com/chromedp/cdproto/webauthn"
	"github.com/chromedp/chromedp"

	"github.com/fieldtrust/fieldtrust/internal/console"
	"github.com/fieldtrust/fieldtrust/internal/datadir"
	"github.com/fieldtrust/fieldtrust/internal/demo"
	"github.com/fieldtrust/fieldtrust/internal/gateway"
	"github.com/fieldtrust/fieldtrust/internal/ledger"
	"github.com/fieldtrust/fieldtrust/internal/platform"
	"github.com/fieldtrust/fieldtrust/internal/store"
)

// chromium finds Debian's chromium (scripts/deps.sh installs it). Without
// it the browser tests skip, or fail when CI is set.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("CI is set but chromium is missing: run scripts/deps.sh")
	}
	t.Skip("chromium is not installed (scripts/deps.sh installs it)")
	return ""
}

// demoPlatform runs 'fieldtrust up' and the demo fleet on a fresh data
// directory and returns the console's base URL (https://localhost:PORT)
// and the data directory.
func demoPlatform(t *testing.T) (base, dir string) {
	t.Helper()
	dir = t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- platform.Run(ctx, platform.Config{DataDir: dir, HTTPAddr: "127.0.0.1:0", MQTTAddr: "127.0.0.1:0", PublishInterval: time.Second,
			Ready: func(h, _ string) { ready <- h }})
	}()
	var addr string
	select {
	case addr = <-ready:
	case err := <-done:
		t.Fatalf("platform: %v", err)
	}
	d, err := datadir.Open(ctx, dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	fleet, err := demo.Setup(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for _, g := range fleet.Gateways {
		onb := g.Onboarding
		cfg := gateway.Config{Platform: "https://" + addr, CA: []*x509.Certificate{d.Transport.Root()}, Onboarding: &onb,
			StateDir: g.StateDir, Simulate: 2, SimulateEvery: 500 * time.Millisecond}
		wg.Go(func() { gateway.Run(ctx, cfg) })
	}
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		<-done
		d.Close()
	})
	_, port, _ := strings.Cut(addr, ":")
	return "https://localhost:" + port, dir
}

// newBrowser starts headless chromium with the flags this machine needs
// (no network, no sandbox as root), downloads allowed into downloads, and
// a virtual WebAuthn authenticator (a platform authenticator with
// resident keys and user verification, as a laptop's).
func newBrowser(t *testing.T, downloads string) (context.Context, webauthn.AuthenticatorID) {
	t.Helper()
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromium(t)),
		chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true), chromedp.NoFirstRun, chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true), chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1400, 1000),
		// The platform's TLS certificate chains to the data directory's
		// own root, which this throwaway profile does not know.
		chromedp.IgnoreCertErrors,
	}
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelC := chromedp.NewContext(actx)
	ctx, cancelT := context.WithTimeout(ctx, 3*time.Minute)
	t.Cleanup(func() { cancelT(); cancelC(); cancelA() })
	var auth webauthn.AuthenticatorID
	err := chromedp.Do(ctx, chromedp.Func(func(ctx context.Context, _ *chromedp.Target) error {
		if _, err := chromedp.Call(ctx, browser.SetDownloadBehavior, browser.SetDownloadBehaviorParams{
			Behavior: browser.SetDownloadBehaviorBehaviorAllowAndName, DownloadPath: downloads, EventsEnabled: ptr(true)}); err != nil {
			return err
		}
		if _, err := chromedp.Call(ctx, webauthn.Enable, webauthn.EnableParams{}); err != nil {
			return err
		}
		res, err := chromedp.Call(ctx, webauthn.AddVirtualAuthenticator, webauthn.AddVirtualAuthenticatorParams{Options: &webauthn.VirtualAuthenticatorOptions{
			Protocol: webauthn.AuthenticatorProtocolCtap2, Transport: webauthn.AuthenticatorTransportInternal,
			HasResidentKey: true, HasUserVerification: true, IsUserVerified: true, AutomaticPresenceSimulation: true,
		}})
		auth = res.AuthenticatorID
		return err
	}))
	if err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return ctx, auth
}

func ptr[T any](v T) *T { return &v }

// screenshot saves the page under the test's temp dir (and, with
// FIELDTRUST_SCREENSHOTS set, into that directory: docs/console/).
func screenshot(t *testing.T, ctx context.Context, dir, name string) {
	t.Helper()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot %s: %v", name, err)
	}
	for _, d := range []string{dir, os.Getenv("FIELDTRUST_SCREENSHOTS")} {
		if d == "" {
			continue
		}
		if err := os.WriteFile(filepath.Join(d, name+".png"), png, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

type css = chromedp.CSS

// step runs browser actions with a 30 s bound and says where the page
// was when they fail.
func step(t *testing.T, ctx context.Context, what string, actions ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := chromedp.Do(sctx, actions...); err != nil {
		loc, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`location.href + ": " + document.body.innerText.slice(0, 400)`))
		t.Fatalf("%s: %v (page %s)", what, err, loc)
	}
}

// waitFor polls a JavaScript expression until it is truthy (20 s at most)
// and returns its value as text.
func waitFor(t *testing.T, ctx context.Context, expr string) string {
	t.Helper()
	v, err := chromedp.Run(ctx, chromedp.Poll[any](expr, chromedp.WithPollingTimeout(20*time.Second)))
	if err != nil {
		t.Fatalf("waiting for %s: %v", expr, err)
	}
	return fmt.Sprint(v)
}

func text(t *testing.T, ctx context.Context, sel string) string {
	t.Helper()
	s, err := chromedp.Run(ctx, chromedp.Text(css(sel)))
	if err != nil {
		t.Fatalf("text of %s: %v", sel, err)
	}
	return s
}

func attr(t *testing.T, ctx context.Context, sel, name string) string {
	t.Helper()
	a, err := chromedp.Run(ctx, chromedp.AttributeValue(css(sel), name))
	if err != nil {
		t.Fatalf("attribute %s of %s: %v", name, sel, err)
	}
	return a.Value
}

// TestBrowser drives the console in a real browser: register a passkey
// from an invitation, log in with it, see the fleet, open a device, see a
// chart drawn from real data points, watch a new snapshot arrive live,
// download the signed export and verify it offline, check a snapshot's
// inclusion proof in the browser, and fail to see another customer's
// device.
func TestBrowser(t *testing.T) {
	chromium(t)
	base, dir := demoPlatform(t)
	shots := t.TempDir()
	downloads := t.TempDir()
	ctx, authenticator := newBrowser(t, downloads)

	d, err := datadir.Open(t.Context(), dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	inv, err := console.Invite(t.Context(), d.Store, "anna@acme-pumps.example", "acme-pumps", store.RoleViewer, "test", "", time.Now())
	if err != nil {
		t.Fatal(err)
	}

	// Wait until every demo gateway has stored a few snapshots.
	deadline := time.Now().Add(90 * time.Second)
	for {
		recs, err := d.Store.LatestSnapshots(t.Context(), "")
		if err != nil {
			t.Fatal(err)
		}
		gws := map[string]bool{}
		for _, r := range recs {
			if r.Seq >= 3 {
				gws[r.Gateway] = true
			}
		}
		if len(gws) == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the demo fleet stored snapshots of %d gateways in 90 s, want 3", len(gws))
		}
		time.Sleep(200 * time.Millisecond) // polling the store for a condition, with a deadline
	}

	// 0. An invitation link with a token the platform does not know: the
	// page says so, and never offers to create a passkey for it.
	step(t, ctx, "invitation page with an unknown token", chromedp.Navigate(base+"/invite#not-a-token"))
	waitFor(t, ctx, `document.querySelector("#invite-error").textContent.length > 0`)
	if shown := waitFor(t, ctx, `String(document.querySelector("#invite-passkey").offsetParent !== null)`); shown != "false" {
		t.Errorf("the passkey button is shown for an unknown invitation")
	}
	step(t, ctx, "leave the invitation page", chromedp.Navigate("about:blank")) // the next link differs in its #token only

	// 1. The invitation: register a passkey, land on the fleet.
	err = chromedp.Do(ctx,
		chromedp.Navigate(inv.Link(base)),
		chromedp.WaitVisible(css("#invite-passkey")),
	)
	if err != nil {
		t.Fatalf("invitation page: %v", err)
	}
	who := text(t, ctx, "#invite-who")
	if !strings.Contains(who, "anna@acme-pumps.example") || !strings.Contains(who, "viewer of acme-pumps") {
		t.Errorf("invitation page says %q", who)
	}
	if err := chromedp.Do(ctx, chromedp.Click(css("#invite-passkey")), chromedp.WaitVisible(css("#fleet tbody tr[data-path]"))); err != nil {
		t.Fatalf("register a passkey from the invitation: %v (page: %s)", err, text(t, ctx, "main"))
	}
	// 2. The fleet shows acme's devices only.
	paths, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](`Array.from(document.querySelectorAll("#fleet tr[data-path]"), tr => tr.dataset.path)`))
	if err != nil {
		t.Fatal(err)
	}
	if len(paths) != 4 {
		t.Errorf("fleet rows = %v, want acme's 4 devices (2 gateways × 2)", paths)
	}
	for _, p := range paths {
		if !strings.HasPrefix(p, "acme-pumps/") {
			t.Errorf("fleet shows %s to a user of acme-pumps", p)
		}
	}
	screenshot(t, ctx, shots, "fleet")

	// 3. Another customer's device and the console's API copy: nothing.
	if err := chromedp.Do(ctx, chromedp.Navigate(base+"/devices/globex-labs/lab-munich/gw-1/bench-1")); err != nil {
		t.Fatal(err)
	}
	if body := text(t, ctx, "main"); !strings.Contains(body, "No such device") {
		t.Errorf("another customer's device page says %q", body)
	}
	apiDevices, err := chromedp.Run(ctx, chromedp.Evaluate[string](`fetch("/ui/api/v1/devices").then(r => r.text())`, chromedp.EvalAwaitPromise))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(apiDevices, "globex") || !strings.Contains(apiDevices, "acme-pumps/") {
		t.Errorf("the console's API copy lists %s", apiDevices)
	}

	// 4. Log out, log in again with the passkey.
	step(t, ctx, "account page", chromedp.Navigate(base+"/account"))
	step(t, ctx, "log out", chromedp.Click(css(`header form[action="/logout"] button`)), chromedp.WaitVisible(css("#passkey-login")))
	step(t, ctx, "log in with the passkey", chromedp.Click(css("#passkey-login")))
	step(t, ctx, "the fleet after the passkey login", chromedp.WaitVisible(css("#fleet tbody tr[data-path]")))

	// 4b. The passkey, taken out of the authenticator, in a client of our
	// own: the server checks the origin, the sign counter and the
	// challenge of every assertion.
	var creds webauthn.GetCredentialsResult
	err = chromedp.Do(ctx, chromedp.Func(func(ctx context.Context, _ *chromedp.Target) error {
		var err error
		creds, err = chromedp.Call(ctx, webauthn.GetCredentials, webauthn.GetCredentialsParams{AuthenticatorID: authenticator})
		return err
	}))
	if err != nil || len(creds.Credentials) != 1 {
		t.Fatalf("the virtual authenticator's credentials: %+v, %v", creds, err)
	}
	passkeyAttacks(t, base, d, creds.Credentials[0])

	// 5. A device: a chart with real data points, and a new snapshot
	// arriving live.
	dev := paths[0]
	err = chromedp.Do(ctx,
		chromedp.Navigate(base+"/devices/"+dev),
		chromedp.WaitVisible(css("#chart .uplot canvas")),
	)
	if err != nil {
		t.Fatalf("device page: %v", err)
	}
	if _, err := chromedp.Run(ctx, chromedp.Poll[bool](`document.querySelector("#chart").dataset.points > 0`, chromedp.WithPollingTimeout(20*time.Second))); err != nil {
		t.Fatalf("chart: %v", err)
	}
	// The head the server rendered, then one the feed brought.
	points, seq1 := attr(t, ctx, "#chart", "data-points"), text(t, ctx, "#recent tbody tr:not(.live-row) td")
	step(t, ctx, "a snapshot arriving live", chromedp.WaitVisible(css("#recent tr.live-row")))
	seq2 := text(t, ctx, "#recent tr.live-row td")
	n1, _ := strconv.Atoi(seq1)
	n2, _ := strconv.Atoi(seq2)
	if points == "" || points == "0" || n1 == 0 || n2 <= n1 {
		t.Errorf("chart points %q; head seq rendered %q, arrived live %q", points, seq1, seq2)
	}
	screenshot(t, ctx, shots, "device")

	// 6. What left my site, and what was sent to the site: a command
	// sent to acme's gateway is listed; then download the signed export,
	// verify it offline.
	if err := d.Store.PutDeviceMessage(t.Context(), store.DeviceMessage{ID: "browser-cmd", Kind: "command", Gateway: "acme-pumps/plant-berlin/gw-1", Ref: "browser-cmd",
		Sender: "service:console-test", Name: "clean", At: time.Now(), Body: []byte("sealed command"), State: "sent", LedgerIndex: -1}); err != nil {
		t.Fatal(err)
	}
	if err := chromedp.Do(ctx, chromedp.Navigate(base+"/audit"), chromedp.WaitVisible(css("#audit tbody tr")),
		chromedp.WaitVisible(css(`#device-messages tr[data-kind="command"]`))); err != nil {
		t.Fatal(err)
	}
	if s := text(t, ctx, "#device-messages"); !strings.Contains(s, "acme-pumps/plant-berlin/gw-1/commands") || !strings.Contains(s, "clean") {
		t.Errorf("the messages sent to acme's devices: %q", s)
	}
	screenshot(t, ctx, shots, "audit")
	// A click on the link (dispatched in the page: a synthesized mouse
	// click can miss after a full-page screenshot resized the viewport).
	if _, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`document.querySelector("#export").click(), true`)); err != nil {
		t.Fatal(err)
	}
	// Chrome names the finished file by the download's GUID (and keeps a
	// .crdownload while it runs): wait for a finished one.
	var guid string
	for deadline := time.Now().Add(60 * time.Second); guid == ""; {
		es, _ := os.ReadDir(downloads)
		for _, e := range es {
			if !strings.HasSuffix(e.Name(), ".crdownload") {
				guid = e.Name()
			}
		}
		if guid == "" && time.Now().After(deadline) {
			probe, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`fetch(document.querySelector("#export").href).then(async r => r.status + " " + (await r.text()).slice(0, 300))`, chromedp.EvalAwaitPromise))
			t.Fatalf("the export download did not finish in 60 s (download dir: %v; the export link answers %s)", es, probe)
		}
		time.Sleep(100 * time.Millisecond) // polling the download directory, with a deadline
	}
	f, err := os.Open(filepath.Join(downloads, guid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rep, err := ledger.VerifyExport(f, ledger.ExportOptions{Root: d.E2E.Root()})
	if err != nil {
		t.Fatalf("the downloaded export does not verify: %v", err)
	}
	if rep.Snapshots == 0 {
		t.Fatalf("the export verified %+v: no snapshots", rep)
	}
	t.Logf("downloaded export: %d snapshots of %d devices verified against the e2e root", rep.Snapshots, rep.Devices)

	// 7. The ledger: the browser checks an inclusion proof itself.
	hash := latestHash(t, d, "acme-pumps")
	if err := chromedp.Do(ctx, chromedp.Navigate(base+"/ledger?hash="+hash), chromedp.WaitVisible(css("#verify-steps[data-result]"))); err != nil {
		t.Fatal(err)
	}
	if result := attr(t, ctx, "#verify-steps", "data-result"); result != "verified" {
		t.Errorf("in-browser proof check: %s: %s", result, text(t, ctx, "#verify-steps"))
	}
	screenshot(t, ctx, shots, "ledger")

	// 8. A vendor admin (by a one-time login link) sees the admin view.
	vendor, err := console.LoginLink(t.Context(), d.Store, demo.VendorAdmin, console.VendorScope, store.RoleAdmin, "test", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	err = chromedp.Do(ctx,
		chromedp.Navigate(base+"/account"),
		chromedp.Click(css(`header form[action="/logout"] button`)),
		chromedp.WaitVisible(css("#passkey-login")),
		chromedp.Navigate(vendor.Link(base)),
		chromedp.WaitVisible(css("#fleet tbody tr[data-path]")),
		chromedp.Navigate(base+"/admin"),
		chromedp.WaitVisible(css("#users")),
	)
	if err != nil {
		t.Fatal(err)
	}
	screenshot(t, ctx, shots, "admin")

	// 9. The vendor admin claims a device by uploading a claims CSV.
	csvFile := filepath.Join(t.TempDir(), "claims.csv")
	if err := os.WriteFile(csvFile, []byte("path,onboarding_subject\nacme-pumps/plant-berlin/gw-browser,BROWSER-1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	err = chromedp.Do(ctx,
		chromedp.SetUploadFiles(css(`#claims-form input[name="csv"]`), []string{csvFile}),
		chromedp.Click(css(`#claims-form button`)),
		chromedp.WaitVisible(css("p.notice")),
	)
	if err != nil {
		t.Fatal(err)
	}
	if claimed := text(t, ctx, "p.notice"); !strings.Contains(claimed, "Claimed 1 device(s)") {
		t.Errorf("after the upload: %q", claimed)
	}
	cs, err := d.Store.Claims(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(cs, func(c store.Claim) bool {
		return c.Path == "acme-pumps/plant-berlin/gw-browser" && c.Value == "BROWSER-1"
	}) {
		t.Error("the uploaded claim is not in the store")
	}

	// 10. Alarms and tasks (the rules' store): the vendor admin
	// acknowledges an alarm, clears it, and works on its task.
	gw1 := "acme-pumps/plant-berlin/gw-1"
	at := time.Now().UTC()
	if err := d.Store.CommitRules(t.Context(), store.RuleCommit{Alarms: []store.AlarmChange{{At: at, Alarm: store.Alarm{
		ID: "browser-alarm", RuleID: "browser-rule", RuleName: "bearing hot", Gateway: gw1, Device: gw1 + "/pump-1",
		Severity: "critical", State: store.AlarmActive, Summary: "temp_bearing 91 Cel > 80", RaisedAt: at}}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Store.PutTask(t.Context(), store.Task{ID: "browser-task", Title: "Inspect the bearing of pump-1", Gateway: gw1, Device: gw1 + "/pump-1",
		State: store.TaskOpen, AlarmID: "browser-alarm", CreatedAt: at, UpdatedAt: at}); err != nil {
		t.Fatal(err)
	}
	err = chromedp.Do(ctx,
		chromedp.Navigate(base+"/alarms"),
		chromedp.WaitVisible(css(`#alarms tr[data-alarm="browser-alarm"][data-state="active"]`)),
	)
	if err != nil {
		t.Fatal(err)
	}
	screenshot(t, ctx, shots, "alarms")
	err = chromedp.Do(ctx,
		chromedp.Click(css(`tr[data-alarm="browser-alarm"] button.ack`)),
		chromedp.WaitVisible(css(`#alarms tr[data-alarm="browser-alarm"][data-state="acknowledged"]`)),
		chromedp.Click(css(`tr[data-alarm="browser-alarm"] button.clear`)),
		// The answer lists open alarms: the cleared one is gone once the
		// new page is there (the old page's notice would not tell).
		chromedp.WaitNotPresent(css(`#alarms tr[data-alarm="browser-alarm"]`)),
		chromedp.WaitVisible(css("p.notice")),
		chromedp.Navigate(base+"/alarms?state=cleared"),
		chromedp.WaitVisible(css(`#alarms tr[data-alarm="browser-alarm"][data-state="cleared"]`)),
		chromedp.Navigate(base+"/tasks"),
		chromedp.Click(css(`#tasks tr[data-task="browser-task"] a`)),
		chromedp.WaitVisible(css("#task-form")),
		chromedp.SetValue(css(`#task-form select[name="state"]`), "in_progress"),
		chromedp.SendKeys(css(`#task-form input[name="comment"]`), "on site at 14:00"),
		chromedp.Click(css(`#task-form button`)),
		chromedp.WaitVisible(css("p.notice")),
	)
	if err != nil {
		t.Fatal(err)
	}
	if s := text(t, ctx, "#comments"); !strings.Contains(s, "on site at 14:00") || !strings.Contains(s, demo.VendorAdmin) {
		t.Errorf("task comments: %q", s)
	}
	screenshot(t, ctx, shots, "task")
	if a, err := d.Store.Alarm(t.Context(), "browser-alarm"); err != nil || a.State != store.AlarmCleared || a.AckedBy != demo.VendorAdmin {
		t.Errorf("the alarm after the browser: %+v, %v", a, err)
	}
	if tk, err := d.Store.Task(t.Context(), "browser-task"); err != nil || tk.State != store.TaskInProgress || len(tk.Comments) != 1 {
		t.Errorf("the task after the browser: %+v, %v", tk, err)
	}

	// 11. The vendor admin follows a firmware campaign (read only).
	if err := d.Store.CreateCampaign(t.Context(), store.Campaign{ID: "browser-campaign", Version: "2.4.1", DeviceType: "pump", Target: "pump/2.4.1",
		Scope: []string{"acme-pumps"}, CanaryPercent: 50, MaxFailures: 1, State: "running", Stage: 1}, []store.CampaignDevice{
		{Campaign: "browser-campaign", Path: gw1, Stage: 1, State: "installed"},
		{Campaign: "browser-campaign", Path: "acme-pumps/plant-berlin/gw-2", Stage: 2, State: "pending"},
	}); err != nil {
		t.Fatal(err)
	}
	err = chromedp.Do(ctx,
		chromedp.Navigate(base+"/firmware"),
		chromedp.Click(css(`#campaigns tr[data-campaign="browser-campaign"] a`)),
		chromedp.WaitVisible(css(`#campaign-devices tr[data-gateway="`+gw1+`"][data-state="installed"]`)),
	)
	if err != nil {
		t.Fatal(err)
	}
	screenshot(t, ctx, shots, "firmware")

	// 12. The vendor admin steers the campaign and sends a command from
	// the console: the platform signs it (service:platform for the
	// person), a real demo gateway runs it and its signed result, verified,
	// is on the command's page; the audit log names the person.
	// (The platform may have paused the campaign by now: its target is
	// not in the repository. Abort works from running and paused.)
	step(t, ctx, "abort the campaign", chromedp.Reload(), chromedp.Click(css("#campaign-abort")),
		chromedp.WaitVisible(css(`#campaign-state[data-state="aborting"], #campaign-state[data-state="aborted"]`)))
	if c, err := d.Store.Campaign(t.Context(), "browser-campaign"); err != nil || (c.State != "aborting" && c.State != "aborted") {
		t.Fatalf("the campaign after abort in the browser: %+v %v", c, err)
	}
	step(t, ctx, "send a command",
		chromedp.Navigate(base+"/commands?gateway="+gw1),
		chromedp.WaitVisible(css("#command-send")),
		chromedp.SetValue(css(`#command-send select[name="name"]`), "clean"),
		chromedp.Click(css(`#command-send button[type="submit"]`)),
		chromedp.WaitVisible(css("#command-name")))
	if s := text(t, ctx, "#command-sender"); !strings.Contains(s, "service:platform for console:"+demo.VendorAdmin) {
		t.Fatalf("the command's signer: %q", s)
	}
	deadline = time.Now().Add(60 * time.Second)
	for {
		step(t, ctx, "reload the command", chromedp.Reload(), chromedp.WaitVisible(css("#command-name")))
		ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`!!document.querySelector('.result[data-verified="true"][data-status="ok"]')`))
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no verified result on the command's page: %s", text(t, ctx, "main"))
		}
	}
	if s := text(t, ctx, "#result-signature"); !strings.Contains(s, "signed by the gateway "+gw1+", verified") {
		t.Fatalf("the result's signature: %q", s)
	}
	if s := text(t, ctx, "#result-output"); !strings.Contains(s, "cleaned_devices=") {
		t.Fatalf("the result's output: %q", s)
	}
	screenshot(t, ctx, shots, "command")
	audit, err := d.Store.AuditLog(t.Context(), "", 0, 200)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, e := range audit {
		if e.Actor == demo.VendorAdmin && e.OK {
			seen[e.Action] = true
		}
	}
	for _, a := range []string{"campaign-abort", "command"} {
		if !seen[a] {
			t.Errorf("no audit entry %s by %s", a, demo.VendorAdmin)
		}
	}
	t.Logf("screenshots in %s", shots)
}

func latestHash(t *testing.T, d *datadir.Dir, scope string) string {
	t.Helper()
	th, err := d.Store.LatestTreeHead(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	recs, err := d.Store.LatestSnapshots(t.Context(), scope)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		if r.LedgerIndex < th.Size {
			return fmt.Sprintf("%x", r.Hash)
		}
	}
	// A head covering the latest snapshots may not be signed yet: any
	// covered one will do.
	all, err := d.Store.QuerySnapshots(t.Context(), store.SnapshotQuery{Scope: scope, Limit: 1})
	if err != nil || len(all) == 0 || all[0].LedgerIndex >= th.Size {
		t.Fatalf("no snapshot of %s in the signed head of size %d", scope, th.Size)
	}
	return fmt.Sprintf("%x", all[0].Hash)
}
