package devicemsg_test

import (
	"context"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/fieldtrust/fieldtrust/internal/command"
	"github.com/fieldtrust/fieldtrust/internal/devicemsg"
	"github.com/fieldtrust/fieldtrust/internal/envelope"
	"github.com/fieldtrust/fieldtrust/internal/firmware"
	"github.com/fieldtrust/fieldtrust/internal/firmware/abslot"
	"github.com/fieldtrust/fieldtrust/internal/firmware/rollout"
	"github.com/fieldtrust/fieldtrust/internal/firmware/signedurl"
	"github.com/fieldtrust/fieldtrust/internal/firmware/tufrepo"
	"github.com/fieldtrust/fieldtrust/internal/gateway"
	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/platform"
	"github.com/fieldtrust/fieldtrust/internal/platform/platformtest"
	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/store/sqlite"
	"github.com/fieldtrust/fieldtrust/internal/tacs"
	"github.com/fieldtrust/fieldtrust/internal/topic"
)

// waitUntil polls cond until it holds or the deadline passes.
func waitUntil(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", within, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// provision writes an enrolled gateway's state (transport and e2e
// credentials from the platform's PKIs), as EST would have left it.
func provision(t testing.TB, env *platformtest.Env, path, dir string) {
	t.Helper()
	id := env.Identity(t, path, true)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	write := func(name string, key any, chain []*x509.Certificate) {
		k, err := pki.MarshalKeyPEM(key, nil)
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir, name+".key"), k, 0o600)
		os.WriteFile(filepath.Join(dir, name+".crt"), pki.EncodeCertsPEM(chain...), 0o644)
	}
	var tr []*x509.Certificate
	for _, der := range id.TLS.Certificate {
		c, _ := x509.ParseCertificate(der)
		tr = append(tr, c)
	}
	write("transport", id.TLS.PrivateKey, tr)
	write("e2e", id.E2E.Key, append([]*x509.Certificate{id.E2ECert}, id.E2E.Chain...))
	os.WriteFile(filepath.Join(dir, "e2e-ca.pem"), pki.EncodeCertsPEM(env.D.E2E.Root(), env.D.E2E.ServicesCA()), 0o644)
}

// fleet runs in-process gateways against the platform.
type fleet struct {
	t    testing.TB
	env  *platformtest.Env
	root []byte
	mu   sync.Mutex
	stop map[string]func()
	dirs map[string]string
	mods map[string]func(*gateway.Config)
}

func (f *fleet) start(path string) {
	f.t.Helper()
	dir := f.dirs[path]
	cfg := gateway.Config{Platform: "https://" + f.env.HTTPAddr, CA: []*x509.Certificate{f.env.D.Transport.Root()}, StateDir: dir,
		Simulate: 2, SimulateEvery: 5 * time.Second, FirmwareRoot: f.root, HealthTimeout: time.Minute}
	if m := f.mods[path]; m != nil {
		m(&cfg)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- gateway.Run(ctx, cfg) }()
	stop := func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				f.t.Errorf("gateway %s: %v", path, err)
			}
		case <-time.After(30 * time.Second):
			f.t.Errorf("gateway %s did not stop", path)
		}
	}
	f.mu.Lock()
	f.stop[path] = stop
	f.mu.Unlock()
}

func (f *fleet) halt(path string) {
	f.mu.Lock()
	stop := f.stop[path]
	delete(f.stop, path)
	f.mu.Unlock()
	if stop != nil {
		stop()
	}
}

func (f *fleet) haltAll() {
	f.mu.Lock()
	var paths []string
	for p := range f.stop {
		paths = append(paths, p)
	}
	f.mu.Unlock()
	var wg sync.WaitGroup
	for _, p := range paths {
		wg.Go(func() { f.halt(p) })
	}
	wg.Wait()
}

func bootOf(t testing.TB, dir string) abslot.Boot {
	b, err := (&abslot.Installer{Dir: filepath.Join(dir, "firmware", "slots")}).Boot("pump")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestCampaign: a firmware campaign through 52 real gateways over real
// mTLS MQTT and HTTPS, canary first: one gateway is offline during the
// canary and catches up later, one's new version never proves healthy
// and rolls back, one runs a newer version and refuses the downgrade. The
// customer sees every notice, report and download in its MQTT subtree
// and its audit records, each in the ledger; a signed command goes the
// same way; and a client of the broker with a valid transport certificate
// (the platform's own device messaging identity) cannot make any gateway
// follow a forged notice or command.
func TestCampaign(t *testing.T) {
	env := platformtest.Start(t, platform.Config{})
	ctx := context.Background()
	keys := t.TempDir()
	root, err := tufrepo.InitKeys(keys, time.Now(), tufrepo.DefaultExpiry)
	if err != nil {
		t.Fatal(err)
	}
	art := make([]byte, 64<<10)
	rand.Read(art)
	artFile := filepath.Join(t.TempDir(), "pump.bin")
	os.WriteFile(artFile, art, 0o600)
	repo := tufrepo.Open(env.Dir)
	if _, err := repo.Add(keys, tufrepo.Artifact{File: artFile, DeviceType: "pump", Version: "1.1.0"}); err != nil {
		t.Fatal(err)
	}

	// The customers, with e2e certificates (recipients of what is sent to
	// their gateways) and a subscription to their subtree.
	cust1 := env.Identity(t, "ms-1", true)
	env.Identity(t, "ms-2", true)
	var seen sync.Map // topic channel -> *atomic.Int64
	var sealedForCustomer atomic.Int64
	opener, err := envelope.NewOpener(cust1.E2ECert, cust1.E2E.Key, envelope.OpenOptions{VerifyOptions: envelope.VerifyOptions{Verifier: mustVerifier(t, env)}})
	if err != nil {
		t.Fatal(err)
	}
	sub := env.MQTT(t, cust1)
	if tok := sub.Subscribe("ms-1/#", 1, func(_ mqtt.Client, m mqtt.Message) {
		_, ch, err := topic.Parse(m.Topic())
		if err != nil {
			return
		}
		v, _ := seen.LoadOrStore(string(ch), new(atomic.Int64))
		v.(*atomic.Int64).Add(1)
		if ch == topic.Firmware && len(m.Payload()) > 0 {
			if o, err := opener.Open(ctx, m.Payload()); err == nil && o.Signer == firmware.Signer {
				sealedForCustomer.Add(1)
			}
		}
	}); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}

	fl := &fleet{t: t, env: env, root: root, stop: map[string]func(){}, dirs: map[string]string{}, mods: map[string]func(*gateway.Config){}}
	t.Cleanup(fl.haltAll)
	var paths []string
	for i := range 52 {
		p := fmt.Sprintf("ms-1/acc-1/gw-%02d", i)
		if i >= 40 {
			p = fmt.Sprintf("ms-2/acc-2/gw-%02d", i)
		}
		paths = append(paths, p)
		fl.dirs[p] = filepath.Join(t.TempDir(), "gw")
		provision(t, env, p, fl.dirs[p])
	}
	unhealthy, newer := paths[3], paths[45]
	fl.mods[unhealthy] = func(c *gateway.Config) {
		c.FirmwareHealth = func(context.Context, string, string) error { return fmt.Errorf("pump controller does not start") }
	}
	preinstall := func(dir, version string) {
		f := filepath.Join(t.TempDir(), "fw")
		os.WriteFile(f, []byte("factory firmware"), 0o600)
		i := &abslot.Installer{Dir: filepath.Join(dir, "firmware", "slots")}
		if err := i.Install(ctx, "pump", version, f); err != nil {
			t.Fatal(err)
		}
		i.Commit("pump")
	}
	preinstall(fl.dirs[newer], "2.0.0")
	for _, p := range paths {
		fl.start(p)
	}
	waitUntil(t, 5*time.Minute, "every gateway's pump in the store", func() bool {
		devs, err := env.D.Store.ListDevices(ctx, "")
		n := 0
		for _, d := range devs {
			if d.DeviceType == "pump" {
				n++
			}
		}
		return err == nil && n == len(paths)
	})

	camp, devs, err := rollout.Create(ctx, env.D.Store, repo, rollout.Spec{Version: "1.1.0", DeviceType: "pump", Scope: []string{"ms-1", "ms-2"}, CanaryPercent: 10, MaxFailures: 2})
	if err != nil {
		t.Fatal(err)
	}
	if len(devs) != len(paths) {
		t.Fatalf("campaign targets %d gateways, want %d", len(devs), len(paths))
	}
	var offline string
	for _, d := range devs {
		if d.Stage == 2 && d.Path != unhealthy && d.Path != newer {
			offline = d.Path
			break
		}
	}
	fl.halt(offline)

	status := func() rollout.Report {
		r, err := rollout.Status(ctx, env.D.Store, camp.ID)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	waitUntil(t, 5*time.Minute, "the canary stage to finish", func() bool { return status().Stage == 2 })
	waitUntil(t, 5*time.Minute, "every online gateway of the second stage to finish", func() bool {
		for _, d := range status().Devices {
			if d.Path != offline && !firmware.Terminal(d.State) {
				return false
			}
		}
		return true
	})
	r := status()
	for _, d := range r.Devices {
		if d.Path == offline && (d.State != firmware.Notified || bootOf(t, fl.dirs[offline]).Version != "") {
			t.Fatalf("the offline gateway is %s", d.State)
		}
	}
	if r.State != rollout.Running {
		t.Fatalf("campaign %s (%s) while the offline gateway is missing", r.State, r.Reason)
	}
	fl.start(offline)
	waitUntil(t, 5*time.Minute, "the campaign to complete", func() bool { return status().State == rollout.Completed })

	r = status()
	for _, d := range r.Devices {
		switch d.Path {
		case unhealthy:
			if d.State != firmware.Failed || !strings.HasPrefix(d.Reason, firmware.ReasonUnhealthy) {
				t.Errorf("unhealthy gateway: %+v", d)
			}
			if b := bootOf(t, fl.dirs[d.Path]); b.Version != "" || b.Tentative {
				t.Errorf("unhealthy gateway was not rolled back: %+v", b)
			}
		case newer:
			if d.State != firmware.Failed || !strings.HasPrefix(d.Reason, firmware.ReasonDowngrade) {
				t.Errorf("gateway with a newer version: %+v", d)
			}
			if b := bootOf(t, fl.dirs[d.Path]); b.Version != "2.0.0" {
				t.Errorf("gateway with a newer version runs %q", b.Version)
			}
		default:
			if d.State != firmware.Installed {
				t.Errorf("%s: %+v", d.Path, d)
			} else if b := bootOf(t, fl.dirs[d.Path]); b.Version != "1.1.0" || b.Tentative {
				t.Errorf("%s boots %+v", d.Path, b)
			}
		}
	}
	t.Logf("campaign %s: %v; offline gateway %s; unhealthy %s; newer %s", camp.ID, r.Counts, offline, unhealthy, newer)
	if r.Counts[firmware.Installed] != len(paths)-2 || r.Counts[firmware.Failed] != 2 {
		t.Errorf("counts %v", r.Counts)
	}
	// The JSON interface of 'campaign status --json'.
	b, _ := json.Marshal(r)
	var iface struct {
		ID, State string
		Devices   []struct{ Path, State, Reason string }
	}
	if err := json.Unmarshal(b, &iface); err != nil || iface.ID != camp.ID || len(iface.Devices) != len(paths) || !strings.Contains(string(b), `"reason":"downgrade`) {
		t.Errorf("status JSON %s", b)
	}

	// The customer's audit: ms-2 sees its own gateways' notices, reports
	// and downloads, each in the ledger, and nothing of ms-1's.
	msgs, err := env.D.Store.DeviceMessages(ctx, store.MessageFilter{Scope: "ms-2", Limit: 10000})
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]int{}
	for _, m := range msgs {
		if !strings.HasPrefix(m.Gateway, "ms-2/") || m.LedgerIndex < 0 {
			t.Fatalf("audit record %s of %s, ledger index %d", m.Kind, m.Gateway, m.LedgerIndex)
		}
		kinds[m.Kind]++
	}
	t.Logf("ms-2 audit records: %v", kinds)
	if kinds[devicemsg.KindNotice] < 12 || kinds[devicemsg.KindStatus] < 12 || kinds[devicemsg.KindDownload] < 11 {
		t.Errorf("ms-2's audit records by kind: %v", kinds)
	}
	// The same through the API, as the customer's audit view.
	var page struct {
		Messages []devicemsg.AuditRecord `json:"messages"`
	}
	if code := env.Get(t, cust1, "/api/v1/gateways/ms-1/messages?limit=1000&kind=notice", &page); code != 200 || len(page.Messages) < 40 {
		t.Errorf("customer audit API: %d, %d notices", code, len(page.Messages))
	}
	for _, m := range page.Messages {
		if h := devicemsg.RecordHash(store.DeviceMessage{Kind: m.Kind, ID: m.ID, Ref: m.Ref, Sender: m.Sender, Name: m.Name, At: m.At, Body: m.Body}); hex.EncodeToString(h[:]) != m.RecordHash || m.LedgerIndex < 0 {
			t.Fatalf("audit record %s: hash or ledger index does not check out", m.ID)
		}
	}
	if code := env.Get(t, cust1, "/api/v1/gateways/ms-2/messages", nil); code != 404 {
		t.Errorf("another customer's audit: %d, want 404", code)
	}
	count := func(ch topic.Channel) int64 {
		v, ok := seen.Load(string(ch))
		if !ok {
			return 0
		}
		return v.(*atomic.Int64).Load()
	}
	waitUntil(t, 2*time.Minute, "the customer's subtree to show the notices and reports", func() bool {
		return count(topic.Firmware) >= 40+39 && count(topic.FirmwareStatus) >= 40*4 && sealedForCustomer.Load() >= 40
	})

	t.Run("signed command", func(t *testing.T) {
		signer := operator(t, env)
		gw := paths[7]
		now := time.Now()
		cmd := command.Command{ID: devicemsg.NewID(), Type: command.SetInterval, Args: map[string]string{"seconds": "3"}, Gateway: gw, Issued: now, Expires: now.Add(time.Hour), Nonce: devicemsg.NewID() + devicemsg.NewID()}
		e2e, err := env.D.E2E.Verifier(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := devicemsg.QueueCommand(ctx, env.D.Store, e2e, func() (*envelope.Signer, error) { return signer, nil }, "service:operator", cmd); err != nil {
			t.Fatal(err)
		}
		var res command.Result
		waitUntil(t, time.Minute, "the command's result", func() bool {
			ms, _ := env.D.Store.DeviceMessages(ctx, store.MessageFilter{Kind: devicemsg.KindResult, Ref: cmd.ID})
			if len(ms) == 0 {
				return false
			}
			o, err := envelope.Verify(ctx, ms[0].Body, envelope.VerifyOptions{Verifier: e2e})
			if err != nil || o.Signer != gw {
				t.Fatalf("result not signed by the gateway: %v %v", o, err)
			}
			res, _ = command.ParseResult(o.Content)
			return true
		})
		if res.Status != command.StatusOK || res.Output["interval_seconds"] != "3" {
			t.Fatalf("result %+v", res)
		}
		sent, _ := env.D.Store.DeviceMessages(ctx, store.MessageFilter{Kind: devicemsg.KindCommand, Ref: cmd.ID})
		if len(sent) != 1 || sent[0].State != devicemsg.Sent || sent[0].LedgerIndex < 0 || sent[0].Sender != "service:operator" {
			t.Fatalf("command record %+v", sent)
		}
		waitUntil(t, 10*time.Second, "the customer to see the command", func() bool { return count(topic.Commands) >= 1 && count(topic.CommandResults) >= 1 })
	})

	t.Run("targets and root key rotation", func(t *testing.T) {
		// The targets key is replaced through root version 2; the gateways,
		// which pinned version 1, are not touched and install what the new
		// key signs. An explicit list of gateways is a scope too.
		if v, err := repo.RotateKey(keys, "targets"); err != nil || v != 2 {
			t.Fatalf("rotate: %d %v", v, err)
		}
		// And the root key (root version 3, signed by the old and the new
		// root key): the gateways walk 1 → 2 → 3 by themselves.
		if v, err := repo.RotateKey(keys, "root"); err != nil || v != 3 {
			t.Fatalf("rotate root: %d %v", v, err)
		}
		f := filepath.Join(t.TempDir(), "fw")
		os.WriteFile(f, []byte("pump firmware 1.2.0"), 0o600)
		if _, err := repo.Add(keys, tufrepo.Artifact{File: f, DeviceType: "pump", Version: "1.2.0"}); err != nil {
			t.Fatal(err)
		}
		// This campaign goes through the operators' API, as a console
		// would: an admin service creates it and watches it; a customer
		// and a role that may not order firmware are refused.
		admin := env.Service(t, "ops", tacs.RoleAdmin) // not "console": up gives that name role status-reader
		reader := env.Service(t, "reader", tacs.RoleSnapshotReader)
		// One client per identity (connections reused while polling); a
		// transport error while polling is a "not yet", not a failure.
		clients := map[*x509.Certificate]*http.Client{}
		do := func(id platformtest.Identity, method, path, body string, out any) (int, string, error) {
			c := clients[id.TLS.Leaf]
			if c == nil {
				c = &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: env.Roots, Certificates: []tls.Certificate{id.TLS}}}, Timeout: 30 * time.Second}
				t.Cleanup(c.CloseIdleConnections)
				clients[id.TLS.Leaf] = c
			}
			req, _ := http.NewRequest(method, "https://"+env.HTTPAddr+path, strings.NewReader(body))
			resp, err := c.Do(req)
			if err != nil {
				return 0, "", err
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			if out != nil && resp.StatusCode < 300 {
				if err := json.Unmarshal(b, out); err != nil {
					t.Fatalf("%s: %v: %s", path, err, b)
				}
			}
			return resp.StatusCode, string(b), nil
		}
		post := func(id platformtest.Identity, path, body string, out any) (int, string) {
			code, b, err := do(id, http.MethodPost, path, body, out)
			if err != nil {
				t.Fatal(err)
			}
			return code, b
		}
		// The list answers 200 to any known service (filtered), so wait
		// for what only the admin role may see, and for the reader to be
		// known at all.
		waitUntil(t, 2*time.Minute, "the platform to know the operator's and the reader's roles", func() bool {
			code, _, err := do(admin, http.MethodGet, "/api/v1/firmware/campaigns/"+camp.ID, "", nil)
			rcode, _, rerr := do(reader, http.MethodGet, "/api/v1/firmware/campaigns", "", nil)
			return err == nil && code == http.StatusOK && rerr == nil && rcode == http.StatusOK
		})
		spec := fmt.Sprintf(`{"version":"1.2.0","device_type":"pump","scope":[%q,%q]}`, paths[0], paths[41])
		if code, body := post(cust1, "/api/v1/firmware/campaigns", spec, nil); code != http.StatusForbidden {
			t.Errorf("a customer created a campaign: %d %s", code, body)
		}
		if code, body := post(reader, "/api/v1/firmware/campaigns", spec, nil); code != http.StatusForbidden || !strings.Contains(body, "firmware") {
			t.Errorf("a snapshot-reader created a campaign: %d %s", code, body)
		}
		var c2 rollout.Report
		if code, body := post(admin, "/api/v1/firmware/campaigns", spec, &c2); code != http.StatusCreated || len(c2.Devices) != 2 {
			t.Fatalf("create through the API: %d %s", code, body)
		}
		waitUntil(t, 3*time.Minute, "the second campaign to complete", func() bool {
			var r rollout.Report
			code, _, err := do(admin, http.MethodGet, "/api/v1/firmware/campaigns/"+c2.ID, "", &r)
			return err == nil && code == http.StatusOK && r.State == rollout.Completed && r.Counts[firmware.Installed] == 2
		})
		if code := env.Get(t, cust1, "/api/v1/firmware/campaigns/"+c2.ID, nil); code != http.StatusForbidden {
			t.Errorf("a customer read the campaign: %d", code)
		}
		for _, p := range []string{paths[0], paths[41]} {
			if b := bootOf(t, fl.dirs[p]); b.Version != "1.2.0" {
				t.Errorf("%s boots %+v after the rotation", p, b)
			}
		}
	})

	t.Run("download URLs", func(t *testing.T) {
		urls, err := signedurl.LoadOrCreate(filepath.Join(env.Dir, "firmware", "url.key"))
		if err != nil {
			t.Fatal(err)
		}
		tg, err := repo.Find("pump", "1.1.0")
		if err != nil {
			t.Fatal(err)
		}
		a, b := env.Identity(t, paths[0], false), env.Identity(t, paths[1], false)
		get := func(id *platformtest.Identity, url, rng string) (int, string, int) {
			tc := &tls.Config{RootCAs: env.Roots}
			if id != nil {
				tc.Certificates = []tls.Certificate{id.TLS}
			}
			c := &http.Client{Transport: &http.Transport{TLSClientConfig: tc}, Timeout: 30 * time.Second}
			req, _ := http.NewRequest(http.MethodGet, "https://"+env.HTTPAddr+url, nil)
			if rng != "" {
				req.Header.Set("Range", rng)
			}
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			return resp.StatusCode, string(body), len(body)
		}
		good := urls.Sign(tg.SHA256, paths[0], time.Now().Add(time.Hour))
		if code, _, n := get(&a, good, ""); code != 200 || n != len(art) {
			t.Fatalf("good URL: %d, %d bytes", code, n)
		}
		if code, _, n := get(&a, good, "bytes=1000-"); code != 206 || n != len(art)-1000 {
			t.Fatalf("range: %d, %d bytes", code, n)
		}
		for _, c := range []struct {
			name string
			id   *platformtest.Identity
			url  string
			code int
			want string
		}{
			{"another gateway's URL", &b, good, 403, "another gateway"},
			{"expired", &a, urls.Sign(tg.SHA256, paths[0], time.Now().Add(-time.Second)), 403, "expired"},
			{"altered", &b, strings.Replace(good, "gw-00", "gw-01", 1), 403, "signature"},
			{"other artifact", &a, strings.Replace(good, tg.SHA256, strings.Repeat("0", 64), 1), 403, "signature"},
			{"malformed", &a, good + "&x=1", 400, "malformed"},
			{"no certificate", nil, good, 401, ""},
		} {
			if code, body, _ := get(c.id, c.url, ""); code != c.code || !strings.Contains(body, c.want) {
				t.Errorf("%s: %d %q", c.name, code, body)
			}
		}
		if code, _, _ := get(&a, "/firmware/v1/metadata/timestamp.json", ""); code != 200 {
			t.Errorf("metadata: %d", code)
		}
		if code, _, _ := get(&a, "/firmware/v1/metadata/..%2Fgrants.json", ""); code != 404 {
			t.Errorf("metadata traversal: %d", code)
		}
	})

	t.Run("broker compromise", func(t *testing.T) {
		// The platform's own device messaging identity: a valid transport
		// certificate with write rights on every gateway's commands and
		// firmware topics. Without the e2e or TUF keys it gets nowhere.
		pair, err := tls.LoadX509KeyPair(filepath.Join(env.Dir, "platform", devicemsg.ServiceName+"-transport.crt"), filepath.Join(env.Dir, "platform", devicemsg.ServiceName+"-transport.key"))
		if err != nil {
			t.Fatal(err)
		}
		evil := env.MQTT(t, platformtest.Identity{TLS: pair})
		victim := paths[9]
		before := bootOf(t, fl.dirs[victim])
		// A notice for a version the targets key never signed, sealed for
		// the victim and signed by a key of another PKI named "firmware";
		// a command signed by the customer; plain garbage.
		other := otherPKISigner(t)
		rc, err := devicemsg.Recipients(ctx, env.D.Store, mustVerifier(t, env), victim, nil)
		if err != nil {
			t.Fatal(err)
		}
		notice, _ := json.Marshal(firmware.Notice{Campaign: "evil", Action: firmware.ActionInstall, Gateway: victim, Target: "pump/6.6.6", DeviceType: "pump", Version: "6.6.6", URL: "/firmware/v1/download/x", Issued: time.Now()})
		forgedNotice, err := envelope.Seal(notice, envelope.SealOptions{Recipients: rc, Signer: other})
		if err != nil {
			t.Fatal(err)
		}
		now := time.Now()
		cmdJSON, _ := json.Marshal(command.Command{ID: devicemsg.NewID(), Type: command.Reboot, Gateway: victim, Issued: now, Expires: now.Add(time.Hour), Nonce: devicemsg.NewID() + devicemsg.NewID()})
		custSigner := *cust1.E2E
		custSigner.EmbedCerts = true
		forgedCmd, err := envelope.Seal(cmdJSON, envelope.SealOptions{Recipients: rc, Signer: &custSigner})
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range []struct {
			topic   string
			payload []byte
		}{{topic.FirmwareOf(victim), forgedNotice}, {topic.CommandsOf(victim), forgedCmd}, {topic.CommandsOf(victim), []byte("reboot now")}} {
			if tok := evil.Publish(m.topic, 1, false, m.payload); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
				t.Fatalf("publish %s: %v", m.topic, tok.Error())
			}
		}
		waitUntil(t, 2*time.Minute, "the victim's refusal reports", func() bool {
			ms, _ := env.D.Store.DeviceMessages(ctx, store.MessageFilter{Kind: devicemsg.KindRefusal, Scope: victim})
			names := map[string]int{}
			for _, m := range ms {
				names[m.Name]++
			}
			return names["firmware"] >= 1 && names["commands"] >= 2
		})
		if after := bootOf(t, fl.dirs[victim]); after != before {
			t.Fatalf("the victim's firmware changed: %+v -> %+v", before, after)
		}
		ms, _ := env.D.Store.DeviceMessages(ctx, store.MessageFilter{Kind: devicemsg.KindResult, Scope: victim})
		for _, m := range ms {
			if slices.Contains([]string{command.StatusOK, command.StatusError}, m.Name) && m.At.After(now) {
				t.Fatalf("the victim followed a forged command: %+v", m)
			}
		}
	})
}

func mustVerifier(t testing.TB, env *platformtest.Env) *pki.Verifier {
	t.Helper()
	v, err := env.D.E2E.Verifier(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// operator issues an operator's e2e service identity, as 'command send'
// does on first use.
func operator(t testing.TB, env *platformtest.Env) *envelope.Signer {
	t.Helper()
	key, _ := pki.GenerateKey(elliptic.P256())
	iss, err := env.D.E2E.Issue(context.Background(), pki.LeafRequest{Service: "operator", PublicKey: key.Public()})
	if err != nil {
		t.Fatal(err)
	}
	return &envelope.Signer{Cert: iss.Cert, Key: key, Chain: iss.Chain[1:], EmbedCerts: true}
}

// otherPKISigner is a "firmware" service of another e2e PKI: what an
// attacker who owns the broker (but not the platform's e2e CA) can make.
func otherPKISigner(t testing.TB) *envelope.Signer {
	t.Helper()
	dir := t.TempDir()
	db, err := sqlite.Open(context.Background(), filepath.Join(dir, "db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	a, err := pki.Open(context.Background(), dir, pki.E2E, db, pki.Options{})
	if err != nil {
		t.Fatal(err)
	}
	key, _ := pki.GenerateKey(elliptic.P256())
	iss, err := a.Issue(context.Background(), pki.LeafRequest{Service: "firmware", PublicKey: key.Public()})
	if err != nil {
		t.Fatal(err)
	}
	return &envelope.Signer{Cert: iss.Cert, Key: key, Chain: iss.Chain[1:], EmbedCerts: true}
}
