package gateway

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/envelope"
	"github.com/fieldtrust/fieldtrust/internal/firmware"
	"github.com/fieldtrust/fieldtrust/internal/firmware/abslot"
	"github.com/fieldtrust/fieldtrust/internal/firmware/signedurl"
	"github.com/fieldtrust/fieldtrust/internal/firmware/tufclient"
	"github.com/fieldtrust/fieldtrust/internal/firmware/tufrepo"
	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/queue"
)

// fwServer is the platform's firmware side for gateway tests: a real TUF
// repository served over real TLS, artifacts by SHA-256, with ways to
// misbehave.
type fwServer struct {
	keys, data string
	repo       *tufrepo.Repo
	root       []byte
	srv        *httptest.Server
	artifact   []byte
	target     tufrepo.Target

	mu       sync.Mutex
	ranges   []string
	tamper   bool // flip a byte of what is served
	truncate bool // serve a shorter artifact
	status   int  // refuse downloads with this status
}

func newFWServer(t *testing.T) *fwServer {
	t.Helper()
	s := &fwServer{keys: t.TempDir(), data: t.TempDir()}
	var err error
	if s.root, err = tufrepo.InitKeys(s.keys, time.Now(), tufrepo.DefaultExpiry); err != nil {
		t.Fatal(err)
	}
	s.repo = tufrepo.Open(s.data)
	s.artifact = make([]byte, 300_000)
	rand.Read(s.artifact)
	s.target = s.add(t, "pump", "1.1.0", s.artifact)
	s.srv = httptest.NewTLSServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.srv.Close)
	return s
}

func (s *fwServer) add(t *testing.T, typ, version string, content []byte) tufrepo.Target {
	t.Helper()
	f := filepath.Join(t.TempDir(), "fw.bin")
	os.WriteFile(f, content, 0o600)
	tg, err := s.repo.Add(s.keys, tufrepo.Artifact{File: f, DeviceType: typ, Version: version})
	if err != nil {
		t.Fatal(err)
	}
	return tg
}

func (s *fwServer) serve(w http.ResponseWriter, r *http.Request) {
	if name, ok := strings.CutPrefix(r.URL.Path, tufclient.MetadataPath); ok {
		b, err := s.repo.Metadata(name)
		if err != nil {
			http.NotFound(w, r)
			return
		}
		w.Write(b)
		return
	}
	s.mu.Lock()
	s.ranges = append(s.ranges, r.Header.Get("Range"))
	tamper, truncate, status := s.tamper, s.truncate, s.status
	s.mu.Unlock()
	if status != 0 {
		http.Error(w, "download URL expired", status)
		return
	}
	b := s.artifact
	if truncate {
		b = b[:len(b)-10]
	}
	if tamper {
		b = bytes.Clone(b)
		b[len(b)/2] ^= 1
	}
	http.ServeContent(w, r, "fw", time.Time{}, bytes.NewReader(b))
}

// fwFixture is a gateway with real credentials, a real queue and the
// default A/B installer, reporting into a channel.
type fwFixture struct {
	g       *Gateway
	q       *queue.Queue
	e2e     *pki.Authority
	state   string
	reports chan firmware.Status
	srv     *fwServer
}

func newFWFixture(t *testing.T, srv *fwServer, mod ...func(*Config)) *fwFixture {
	t.Helper()
	state := t.TempDir()
	q, err := queue.Open(filepath.Join(state, "queue.db"), queue.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	f := &fwFixture{q: q, e2e: testAuthorityOf(t, pki.E2E), state: state, reports: make(chan firmware.Status, 100), srv: srv}
	tr := issueCred(t, testAuthority(t), pki.LeafRequest{Path: pki.Path{"ms-1", "acc-1", "gw-1"}})
	f.g = f.gateway(t, tr, issueCred(t, f.e2e, pki.LeafRequest{Path: pki.Path{"ms-1", "acc-1", "gw-1"}}), mod...)
	return f
}

// gateway builds the gateway on the fixture's state (again, as after a
// power cut).
func (f *fwFixture) gateway(t *testing.T, tr, e2e *credential, mod ...func(*Config)) *Gateway {
	roots := x509.NewCertPool()
	roots.AddCert(f.srv.srv.Certificate())
	creds := &credentials{transport: tr, e2e: e2e, roots: roots, e2eCAs: []*x509.Certificate{f.e2e.Root(), f.e2e.ServicesCA()}}
	cfg := Config{Platform: f.srv.srv.URL, StateDir: f.state, FirmwareRoot: f.srv.root, FirmwareTypes: []string{"pump"},
		HealthTimeout: 10 * time.Second, FirmwareHealth: func(context.Context, string, string) error { return nil }}
	for _, m := range mod {
		m(&cfg)
	}
	g := &Gateway{cfg: cfg, log: slog.New(slog.DiscardHandler), creds: creds, q: f.q, replay: f.q, path: "ms-1/acc-1/gw-1",
		crl: newCRLState(creds, slog.New(slog.DiscardHandler)), fwWake: make(chan struct{}, 1), orders: make(chan sessionOrder, 1)}
	g.setupFirmware()
	pub := func(_ string, b []byte) error {
		opened, err := envelope.Verify(context.Background(), b, envelope.VerifyOptions{Verifier: pki.NewVerifier(pki.E2E, f.e2e.Root(), f.e2e.ServicesCA(), nil)})
		if err != nil {
			return err
		}
		st, err := firmware.ParseStatus(opened.Content)
		if err != nil {
			return err
		}
		f.reports <- st
		return nil
	}
	g.publisher.Store(&pub)
	return g
}

// start records a job as a notice would.
func (f *fwFixture) start(t *testing.T, typ, version string) {
	t.Helper()
	url := "/firmware/v1/download/" + f.srv.target.SHA256 + "?gw=ms-1/acc-1/gw-1&exp=1&sig=x"
	if err := f.g.saveJob(&fwJob{Campaign: "c1", Target: firmware.TargetName(typ, version), DeviceType: typ, Version: version, URL: url, State: firmware.Notified}); err != nil {
		t.Fatal(err)
	}
}

// outcome runs the job and returns the final report.
func (f *fwFixture) outcome(t *testing.T) firmware.Status {
	t.Helper()
	if err := f.g.runJob(context.Background()); err != nil {
		t.Fatalf("runJob: %v", err)
	}
	var last firmware.Status
	for {
		select {
		case st := <-f.reports:
			last = st
			if firmware.Terminal(st.State) {
				return last
			}
		default:
			t.Fatalf("no final report; last %+v", last)
		}
	}
}

func (f *fwFixture) installed(t *testing.T) abslot.Boot {
	t.Helper()
	b, err := (&abslot.Installer{Dir: filepath.Join(f.state, "firmware", "slots")}).Boot("pump")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func preinstall(t *testing.T, state, version string) {
	t.Helper()
	f := filepath.Join(t.TempDir(), "old")
	os.WriteFile(f, []byte("old firmware"), 0o600)
	i := &abslot.Installer{Dir: filepath.Join(state, "firmware", "slots")}
	if err := i.Install(context.Background(), "pump", version, f); err != nil {
		t.Fatal(err)
	}
	if err := i.Commit("pump"); err != nil {
		t.Fatal(err)
	}
}

// TestFirmwareInstall: a verified artifact is installed through the A/B
// slots and reported step by step, signed by the gateway.
func TestFirmwareInstall(t *testing.T) {
	srv := newFWServer(t)
	f := newFWFixture(t, srv)
	preinstall(t, f.state, "1.0.0")
	f.start(t, "pump", "1.1.0")
	if err := f.g.runJob(context.Background()); err != nil {
		t.Fatal(err)
	}
	var states []string
	for len(f.reports) > 0 {
		st := <-f.reports
		states = append(states, st.State)
		if st.State == firmware.Installed && st.Version != "1.1.0" {
			t.Fatalf("installed report names version %q", st.Version)
		}
	}
	if strings.Join(states, ",") != "notified,downloading,verifying,installing,installed" {
		t.Fatalf("reports %v", states)
	}
	b := f.installed(t)
	if b.Version != "1.1.0" || b.Tentative || b.Previous.Version != "1.0.0" {
		t.Fatalf("boot record %+v", b)
	}
	slot, _ := os.ReadFile(filepath.Join(f.state, "firmware", "slots", "pump", b.Active, "firmware.bin"))
	if !bytes.Equal(slot, srv.artifact) {
		t.Fatal("the active slot does not hold the artifact")
	}
	// The same notice again (a reconnect): nothing is installed twice.
	f.start(t, "pump", "1.1.0")
	if st := f.outcome(t); st.State != firmware.Installed {
		t.Fatalf("again: %+v", st)
	}
}

// TestFirmwareRefusals: every bad update is refused before installation,
// with the reason reported, and the installed version stays.
func TestFirmwareRefusals(t *testing.T) {
	srv := newFWServer(t)
	otherRoot, err := tufrepo.InitKeys(t.TempDir(), time.Now(), tufrepo.DefaultExpiry)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, typ, version, reason string
		installed                  string
		server                     func(*fwServer)
		mod                        func(*Config)
	}{
		{"tampered", "pump", "1.1.0", firmware.ReasonTampered, "1.0.0", func(s *fwServer) { s.tamper = true }, nil},
		{"truncated", "pump", "1.1.0", firmware.ReasonTruncated, "1.0.0", func(s *fwServer) { s.truncate = true }, nil},
		{"wrong device type", "compressor", "1.1.0", firmware.ReasonDeviceType, "1.0.0", nil, nil},
		{"downgrade", "pump", "1.1.0", firmware.ReasonDowngrade, "2.0.0", nil, nil},
		{"expired metadata", "pump", "1.1.0", firmware.ReasonExpired, "1.0.0", nil, func(c *Config) { c.hooks.tufNow = func() time.Time { return time.Now().Add(48 * time.Hour) } }},
		{"wrongly signed metadata", "pump", "1.1.0", firmware.ReasonMetadata, "1.0.0", nil, func(c *Config) { c.FirmwareRoot = otherRoot }},
		{"not in the signed targets", "pump", "9.9.9", firmware.ReasonNotTargeted, "1.0.0", nil, nil},
		{"download refused", "pump", "1.1.0", firmware.ReasonDownload, "1.0.0", func(s *fwServer) { s.status = http.StatusForbidden }, nil},
		{"unhealthy: rolled back", "pump", "1.1.0", firmware.ReasonUnhealthy, "1.0.0", nil, func(c *Config) {
			c.FirmwareHealth = func(context.Context, string, string) error { return errors.New("pump controller does not start") }
		}},
		{"no report of health in time: rolled back", "pump", "1.1.0", firmware.ReasonUnhealthy, "1.0.0", nil, func(c *Config) {
			c.HealthTimeout = time.Millisecond
			c.FirmwareHealth = func(ctx context.Context, _, _ string) error { <-ctx.Done(); return ctx.Err() }
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv.mu.Lock()
			srv.tamper, srv.truncate, srv.status = false, false, 0
			if tc.server != nil {
				tc.server(srv)
			}
			srv.mu.Unlock()
			var mods []func(*Config)
			if tc.mod != nil {
				mods = append(mods, tc.mod)
			}
			f := newFWFixture(t, srv, mods...)
			preinstall(t, f.state, tc.installed)
			f.start(t, tc.typ, tc.version)
			st := f.outcome(t)
			if st.State != firmware.Failed || !strings.HasPrefix(st.Reason, tc.reason) {
				t.Fatalf("got %+v, want failed with reason %q", st, tc.reason)
			}
			if b := f.installed(t); b.Version != tc.installed || b.Tentative {
				t.Fatalf("boot record after the refusal: %+v", b)
			}
		})
	}
}

// TestFirmwareDownloadResumes: a download broken mid-way resumes with a
// range request from where it broke, and the result verifies.
func TestFirmwareDownloadResumes(t *testing.T) {
	srv := newFWServer(t)
	broken := false
	f := newFWFixture(t, srv, func(c *Config) {
		c.hooks.downloadBody = func(r io.Reader) io.Reader {
			if broken {
				return r
			}
			broken = true
			return &failAfter{r: r, n: 120_000}
		}
	})
	f.start(t, "pump", "1.1.0")
	if st := f.outcome(t); st.State != firmware.Installed {
		t.Fatalf("%+v", st)
	}
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if len(srv.ranges) != 2 || srv.ranges[0] != "" || srv.ranges[1] != "bytes=120000-" {
		t.Fatalf("requests with ranges %q; want a full request then bytes=120000-", srv.ranges)
	}
}

// failAfter breaks a body after n bytes, as a dropped WAN link does.
type failAfter struct {
	r io.Reader
	n int
}

func (f *failAfter) Read(p []byte) (int, error) {
	if f.n <= 0 {
		return 0, errors.New("connection reset by peer")
	}
	if len(p) > f.n {
		p = p[:f.n]
	}
	n, err := f.r.Read(p)
	f.n -= n
	return n, err
}

// TestFirmwarePowerCut: a power cut before any step (and in the middle of
// the download) leaves a state from which the restarted gateway finishes
// the install exactly once, never half.
func TestFirmwarePowerCut(t *testing.T) {
	srv := newFWServer(t)
	for _, step := range []string{firmware.Notified, firmware.Downloading, "mid-download", firmware.Verifying, firmware.Installing, "switch", stateSwitched} {
		t.Run(step, func(t *testing.T) {
			cut := true
			hook := func(c *Config) {
				c.hooks.crash = func(s string) bool {
					if cut && s == step {
						cut = false
						return true
					}
					return false
				}
				if step == "mid-download" {
					c.hooks.downloadBody = func(r io.Reader) io.Reader {
						if !cut {
							return r
						}
						cut = false
						return &crashAfter{r: r, n: 100_000}
					}
				}
			}
			f := newFWFixture(t, srv, hook)
			preinstall(t, f.state, "1.0.0")
			f.start(t, "pump", "1.1.0")
			if err := f.g.runJob(context.Background()); !errors.Is(err, errCrash) {
				t.Fatalf("runJob = %v, want the simulated power cut", err)
			}
			// The power comes back: a new gateway on the same state.
			tr, e2e := f.g.creds.current()
			f.g = f.gateway(t, tr, e2e, hook)
			if st := f.outcome(t); st.State != firmware.Installed {
				t.Fatalf("after the restart: %+v", st)
			}
			if b := f.installed(t); b.Version != "1.1.0" || b.Tentative || b.Previous == nil || b.Previous.Version != "1.0.0" {
				t.Fatalf("boot record %+v", b)
			}
		})
	}
}

type crashAfter struct {
	r io.Reader
	n int
}

func (c *crashAfter) Read(p []byte) (int, error) {
	if c.n <= 0 {
		return 0, errCrash
	}
	if len(p) > c.n {
		p = p[:c.n]
	}
	n, err := c.r.Read(p)
	c.n -= n
	return n, err
}

// TestFirmwareNoticeRefusals: notices that are not sealed for the gateway,
// not signed by the firmware service or not for this gateway are ignored
// and reported; nothing is recorded as a job.
func TestFirmwareNoticeRefusals(t *testing.T) {
	srv := newFWServer(t)
	f := newFWFixture(t, srv)
	_, gwE2E := f.g.creds.current()
	fwSvc := issueCred(t, f.e2e, pki.LeafRequest{Service: "firmware"})
	operator := issueCred(t, f.e2e, pki.LeafRequest{Service: "platform"})
	customer := issueCred(t, f.e2e, pki.LeafRequest{Path: pki.Path{"ms-1", "acc-1"}})
	n := firmware.Notice{Campaign: "c1", Action: firmware.ActionInstall, Gateway: "ms-1/acc-1/gw-1", Target: "pump/1.1.0", DeviceType: "pump", Version: "1.1.0",
		URL: signedurl.PathPrefix + srv.target.SHA256 + "?x", Issued: time.Now()}
	seal := func(by *credential, n firmware.Notice) []byte {
		b, _ := json.Marshal(n)
		env, err := envelope.Seal(b, envelope.SealOptions{Recipients: []*x509.Certificate{gwE2E.leaf()},
			Signer: &envelope.Signer{Cert: by.leaf(), Key: by.key, Chain: by.chain[1:], EmbedCerts: true}})
		if err != nil {
			t.Fatal(err)
		}
		return env
	}
	other := n
	other.Gateway = "ms-1/acc-1/gw-2"
	for _, tc := range []struct {
		name string
		msg  []byte
		want string
	}{
		{"garbage", []byte("hello"), "cannot open"},
		{"signed by the platform service", seal(operator, n), "not signed by the firmware service"},
		{"signed by the customer", seal(customer, n), "not signed by the firmware service"},
		{"for another gateway", seal(fwSvc, other), "another gateway"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f.g.refusals = refusals{}
			f.g.handleNotice(tc.msg)
			select {
			case st := <-f.reports:
				if !st.Refused || !strings.Contains(st.Reason, tc.want) || st.Digest == "" {
					t.Fatalf("report %+v", st)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("no refusal reported")
			}
			if j, err := f.g.loadJob(); j != nil || err != nil {
				t.Fatalf("a job was recorded: %+v %v", j, err)
			}
		})
	}
	f.g.handleNotice(seal(fwSvc, n))
	if j, err := f.g.loadJob(); err != nil || j == nil || j.State != firmware.Notified || j.Campaign != "c1" {
		t.Fatalf("a genuine notice: job %+v %v", j, err)
	}
}
