package gateway

import (
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/envelope"
	"github.com/fieldtrust/fieldtrust/internal/firmware"
	"github.com/fieldtrust/fieldtrust/internal/firmware/signedurl"
	"github.com/fieldtrust/fieldtrust/internal/firmware/tufclient"
	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/queue"
	"github.com/fieldtrust/fieldtrust/internal/tlspolicy"
	"github.com/fieldtrust/fieldtrust/internal/topic"
)

// Installer installs firmware for a device type (default: package abslot,
// A/B slots with an atomic switch). Install boots the new version
// tentatively; Commit keeps it, Rollback returns to the previous one.
// Install of the version already on trial must do nothing (the gateway
// repeats it after a power cut).
type Installer interface {
	Version(deviceType string) (version string, tentative bool, err error)
	Install(ctx context.Context, deviceType, version, file string) error
	Commit(deviceType string) error
	Rollback(deviceType string) error
}

// fwJobKey is the queue state key of the firmware job: the whole install
// is a sequence of states persisted there, each step safe to repeat, so a
// power cut at any step resumes where it stopped.
const fwJobKey = "firmware.job"

// fwJob is the gateway's current firmware job.
type fwJob struct {
	Campaign   string    `json:"campaign"`
	Target     string    `json:"target"`
	DeviceType string    `json:"device_type"`
	Version    string    `json:"version"`
	URL        string    `json:"url"`
	State      string    `json:"state"` // firmware states, plus "switched" (installed, on trial)
	Reason     string    `json:"reason,omitempty"`
	SHA256     string    `json:"sha256,omitempty"`
	SHA512     string    `json:"sha512,omitempty"`
	Length     int64     `json:"length,omitempty"`
	Deadline   time.Time `json:"deadline,omitzero"`
	Switched   time.Time `json:"switched,omitzero"`
	Reported   string    `json:"reported,omitempty"`
}

// stateSwitched is the job state after the switch, before health is known:
// reported as installing.
const stateSwitched = "switched"

func (j *fwJob) terminal() bool { return firmware.Terminal(j.State) }

func (g *Gateway) loadJob() (*fwJob, error) {
	b, err := g.replay.State(fwJobKey)
	if err != nil || b == nil {
		return nil, err
	}
	var j fwJob
	if err := json.Unmarshal(b, &j); err != nil {
		return nil, fmt.Errorf("firmware job in %s is damaged: %w", filepath.Join(g.cfg.StateDir, "queue.db"), err)
	}
	return &j, nil
}

func (g *Gateway) saveJob(j *fwJob) error {
	b, err := json.Marshal(j)
	if err != nil {
		return err
	}
	return g.replay.SetState(queue.KV{Key: fwJobKey, Value: b})
}

// errCrash is what a test's crash hook makes a step return: the job stops
// as a power cut would stop it, with nothing after the step persisted.
var errCrash = errors.New("simulated power cut")

func (g *Gateway) crash(step string) error {
	if g.cfg.hooks.crash != nil && g.cfg.hooks.crash(step) {
		return errCrash
	}
	return nil
}

// fwTypes is the set of device types this gateway installs firmware for.
func (g *Gateway) fwTypes() []string {
	if len(g.cfg.FirmwareTypes) > 0 {
		return g.cfg.FirmwareTypes
	}
	var out []string
	for _, d := range newSimulator(g.cfg.Simulate, g.path) {
		if !slices.Contains(out, d.typ) {
			out = append(out, d.typ)
		}
	}
	return out
}

// handleNotice opens, verifies and records a campaign notice, then wakes
// the firmware worker. A message that does not open, is not signed by the
// firmware service or is not for this gateway is ignored and reported.
func (g *Gateway) handleNotice(payload []byte) {
	opened, err := g.openSealed(payload)
	if err != nil {
		g.refuseFirmware(payload, "cannot open or verify it: "+err.Error())
		return
	}
	if opened.Signer != firmware.Signer {
		g.refuseFirmware(payload, "not signed by the firmware service but by "+opened.Signer)
		return
	}
	n, err := firmware.ParseNotice(opened.Content)
	if err != nil {
		g.refuseFirmware(payload, err.Error())
		return
	}
	if n.Gateway != g.path {
		g.refuseFirmware(payload, "notice for another gateway ("+n.Gateway+")")
		return
	}
	g.fwMu.Lock()
	defer g.fwMu.Unlock()
	j, err := g.loadJob()
	if err != nil {
		g.log.Error("firmware notice not followed: the job state cannot be read", "err", err)
		return
	}
	switch n.Action {
	case firmware.ActionDownloaded:
		return
	case firmware.ActionAbort:
		if j != nil && j.Campaign == n.Campaign && (j.State == firmware.Notified || j.State == firmware.Downloading || j.State == firmware.Verifying) {
			j.State, j.Reason = firmware.Failed, firmware.ReasonAborted
			if err := g.saveJob(j); err != nil {
				g.log.Error("firmware abort not recorded", "err", err)
			}
		}
	case firmware.ActionInstall:
		switch {
		case j != nil && j.Campaign == n.Campaign:
			// The retained notice again (a reconnect), perhaps with a
			// fresh URL: keep the job, take the URL, report again.
			if j.URL != n.URL && !j.terminal() {
				j.URL = n.URL
			}
			j.Reported = ""
			if err := g.saveJob(j); err != nil {
				g.log.Error("firmware notice not recorded", "err", err)
				return
			}
		case j != nil && !j.terminal():
			g.log.Warn("firmware notice ignored: another campaign's install is in progress", "campaign", n.Campaign, "busy_with", j.Campaign)
			return
		default:
			nj := &fwJob{Campaign: n.Campaign, Target: n.Target, DeviceType: n.DeviceType, Version: n.Version, URL: n.URL, State: firmware.Notified}
			if err := g.saveJob(nj); err != nil {
				g.log.Error("firmware notice not recorded", "err", err)
				return
			}
			g.log.Info("firmware campaign notice", "campaign", n.Campaign, "target", n.Target)
		}
	}
	g.wakeFirmware()
}

func (g *Gateway) wakeFirmware() {
	select {
	case g.fwWake <- struct{}{}:
	default:
	}
}

// firmwareLoop runs the firmware job whenever woken, until ctx ends.
func (g *Gateway) firmwareLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-g.fwWake:
		}
		if err := g.runJob(ctx); err != nil && ctx.Err() == nil {
			if errors.Is(err, errCrash) {
				g.log.Warn("firmware job stopped by a simulated power cut")
				return
			}
			g.log.Error("firmware job", "err", err)
		}
	}
}

// runJob advances the job until it is final or cannot go on now.
func (g *Gateway) runJob(ctx context.Context) error {
	g.fwMu.Lock()
	j, err := g.loadJob()
	g.fwMu.Unlock()
	if err != nil || j == nil {
		return err
	}
	for {
		g.reportJob(j)
		if j.terminal() {
			return nil
		}
		if err := g.crash(j.State); err != nil {
			return err
		}
		next, err := g.step(ctx, j)
		if err != nil {
			return err
		}
		// A notice that arrived meanwhile (abort, a fresh URL) wins over
		// a step that was still working with the old job.
		g.fwMu.Lock()
		cur, err := g.loadJob()
		if err == nil && cur != nil && cur.Campaign == j.Campaign && cur.State == firmware.Failed && cur.Reason == firmware.ReasonAborted && next.State != firmware.Installed && next.State != stateSwitched {
			next = cur
		}
		if err == nil && cur != nil && cur.Campaign == j.Campaign {
			next.URL = cur.URL
		}
		if err == nil {
			err = g.saveJob(next)
		}
		g.fwMu.Unlock()
		if err != nil {
			return fmt.Errorf("record firmware state %s: %w", next.State, err)
		}
		j = next
	}
}

func (g *Gateway) fail(j *fwJob, reason string, err error) *fwJob {
	n := *j
	n.State, n.Reason = firmware.Failed, reason
	if err != nil {
		n.Reason = reason + ": " + err.Error()
	}
	g.log.Warn("firmware refused", "campaign", j.Campaign, "target", j.Target, "reason", n.Reason)
	return &n
}

// step does the work of one state and returns the next job state. Errors
// are for failures of the gateway itself (ctx ended, a crash); refusals
// are final job states.
func (g *Gateway) step(ctx context.Context, j *fwJob) (*fwJob, error) {
	n := *j
	switch j.State {
	case firmware.Notified:
		if g.tuf == nil {
			return g.fail(j, firmware.ReasonMetadata, errors.New("no firmware root pinned (--firmware-root)")), nil
		}
		if !slices.Contains(g.fwTypes(), j.DeviceType) {
			return g.fail(j, firmware.ReasonDeviceType, fmt.Errorf("this gateway installs firmware for %v, not %s", g.fwTypes(), j.DeviceType)), nil
		}
		// The current transport certificate (it is renewed under the job).
		hc := g.httpClient()
		g.tuf.HTTP = hc
		t, err := g.tuf.Lookup(j.Target)
		hc.CloseIdleConnections()
		if err != nil {
			var te *tufclient.Error
			if errors.As(err, &te) {
				return g.fail(j, te.Reason, te.Err), nil
			}
			return g.fail(j, firmware.ReasonMetadata, err), nil
		}
		if t.Custom.DeviceType != j.DeviceType || t.Custom.Version != j.Version {
			return g.fail(j, firmware.ReasonDeviceType, fmt.Errorf("the signed target %s is %s %s, the notice says %s %s", j.Target, t.Custom.DeviceType, t.Custom.Version, j.DeviceType, j.Version)), nil
		}
		cur, _, err := g.installer.Version(j.DeviceType)
		if err != nil {
			return g.fail(j, firmware.ReasonInstall, err), nil
		}
		switch c := firmware.Compare(j.Version, cur); {
		case c < 0:
			return g.fail(j, firmware.ReasonDowngrade, fmt.Errorf("%s runs %s, newer than %s", j.DeviceType, cur, j.Version)), nil
		case c == 0:
			n.State = firmware.Installed
			return &n, nil
		}
		if t.Custom.MinVersion != "" && firmware.Compare(cur, t.Custom.MinVersion) < 0 {
			return g.fail(j, firmware.ReasonInstall, fmt.Errorf("%s %s needs at least %s installed, this gateway runs %q", j.DeviceType, j.Version, t.Custom.MinVersion, cur)), nil
		}
		n.SHA256 = hex.EncodeToString(t.Info.Hashes["sha256"])
		n.SHA512 = hex.EncodeToString(t.Info.Hashes["sha512"])
		n.Length = t.Info.Length
		n.State = firmware.Downloading
		return &n, nil
	case firmware.Downloading:
		if err := g.download(ctx, j); err != nil {
			var r *refusal
			if errors.As(err, &r) {
				return g.fail(j, r.reason, r.err), nil
			}
			return nil, err
		}
		n.State = firmware.Verifying
		return &n, nil
	case firmware.Verifying:
		if reason, err := verifyArtifact(g.partFile(j), j); err != nil {
			os.Remove(g.partFile(j))
			return g.fail(j, reason, err), nil
		}
		n.State = firmware.Installing
		return &n, nil
	case firmware.Installing:
		// Verified again: the file may have changed on disk since.
		if reason, err := verifyArtifact(g.partFile(j), j); err != nil {
			os.Remove(g.partFile(j))
			return g.fail(j, reason, err), nil
		}
		if err := g.installer.Install(ctx, j.DeviceType, j.Version, g.partFile(j)); err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return g.fail(j, firmware.ReasonInstall, err), nil
		}
		if err := g.crash("switch"); err != nil {
			return nil, err
		}
		n.State, n.Switched, n.Deadline = stateSwitched, time.Now(), time.Now().Add(g.healthTimeout())
		return &n, nil
	case stateSwitched:
		hctx, cancel := context.WithDeadline(ctx, j.Deadline)
		err := g.health(hctx, j)
		cancel()
		if err != nil && ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if err != nil {
			if rerr := g.installer.Rollback(j.DeviceType); rerr != nil {
				return g.fail(j, firmware.ReasonInstall, fmt.Errorf("unhealthy (%v) and the rollback failed: %w", err, rerr)), nil
			}
			prev, _, _ := g.installer.Version(j.DeviceType)
			return g.fail(j, firmware.ReasonUnhealthy, fmt.Errorf("%v; %s runs %q again", err, j.DeviceType, prev)), nil
		}
		if err := g.installer.Commit(j.DeviceType); err != nil {
			return g.fail(j, firmware.ReasonInstall, err), nil
		}
		os.Remove(g.partFile(j))
		g.log.Info("firmware installed", "device_type", j.DeviceType, "version", j.Version, "campaign", j.Campaign)
		n.State = firmware.Installed
		return &n, nil
	}
	return g.fail(j, firmware.ReasonInstall, fmt.Errorf("unknown job state %q", j.State)), nil
}

func (g *Gateway) healthTimeout() time.Duration {
	if g.cfg.HealthTimeout > 0 {
		return g.cfg.HealthTimeout
	}
	return 2 * time.Minute
}

// health waits until the new version proves healthy: the configured check,
// or by default a reading from a device of that type after the switch
// (the simulated devices run the new firmware).
func (g *Gateway) health(ctx context.Context, j *fwJob) error {
	if g.cfg.FirmwareHealth != nil {
		return g.cfg.FirmwareHealth(ctx, j.DeviceType, j.Version)
	}
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		if at, ok := g.readingAt.Load(j.DeviceType); ok && at.(time.Time).After(j.Switched) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("no reading from a %s device within %s of the switch", j.DeviceType, g.healthTimeout())
		case <-t.C:
		}
	}
}

func (g *Gateway) partFile(j *fwJob) string {
	return filepath.Join(g.cfg.StateDir, "firmware", "download", j.SHA256+".part")
}

// refusal is a download the platform refused: final, with a reason.
type refusal struct {
	reason string
	err    error
}

func (r *refusal) Error() string { return r.reason + ": " + r.err.Error() }

// download fetches the artifact into its part file, resuming with a range
// request from what is there, retrying broken transfers with backoff until
// ctx ends. Never more than the signed length is written.
func (g *Gateway) download(ctx context.Context, j *fwJob) error {
	if !strings.HasPrefix(j.URL, signedurl.PathPrefix) {
		return &refusal{firmware.ReasonDownload, fmt.Errorf("the notice's URL %q is not a platform download path", j.URL)}
	}
	if err := os.MkdirAll(filepath.Dir(g.partFile(j)), 0o700); err != nil {
		return err
	}
	wait := 500 * time.Millisecond
	for {
		done, err := g.downloadOnce(ctx, j)
		if done || err == nil {
			return err
		}
		var r *refusal
		if errors.As(err, &r) || ctx.Err() != nil || errors.Is(err, errCrash) {
			return err
		}
		g.log.Warn("firmware download interrupted; resuming", "target", j.Target, "err", err, "in", wait)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		wait = min(2*wait, 30*time.Second)
	}
}

func (g *Gateway) downloadOnce(ctx context.Context, j *fwJob) (done bool, err error) {
	f, err := os.OpenFile(g.partFile(j), os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		return false, err
	}
	defer f.Close()
	have, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return false, err
	}
	if have > j.Length {
		if err := f.Truncate(0); err != nil {
			return false, err
		}
		have, _ = f.Seek(0, io.SeekStart)
	}
	if have == j.Length {
		return true, nil
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, g.cfg.Platform+j.URL, nil)
	if err != nil {
		return false, &refusal{firmware.ReasonDownload, err}
	}
	if have > 0 {
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-", have))
	}
	hc := g.httpClient()
	defer hc.CloseIdleConnections()
	resp, err := hc.Do(req)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
		if have > 0 { // the server ignored the range: start over
			if err := f.Truncate(0); err != nil {
				return false, err
			}
			if _, err := f.Seek(0, io.SeekStart); err != nil {
				return false, err
			}
			have = 0
		}
		if resp.ContentLength >= 0 && resp.ContentLength < j.Length {
			return false, &refusal{firmware.ReasonTruncated, fmt.Errorf("the platform serves %d bytes, the signed length is %d", resp.ContentLength, j.Length)}
		}
	case http.StatusPartialContent:
		start, total, ok := parseContentRange(resp.Header.Get("Content-Range"))
		if !ok || start != have {
			return false, fmt.Errorf("unexpected Content-Range %q for offset %d", resp.Header.Get("Content-Range"), have)
		}
		if total >= 0 && total < j.Length {
			return false, &refusal{firmware.ReasonTruncated, fmt.Errorf("the platform's artifact has %d bytes, the signed length is %d", total, j.Length)}
		}
	case http.StatusRequestedRangeNotSatisfiable:
		return false, &refusal{firmware.ReasonTruncated, fmt.Errorf("the platform's artifact is shorter than the %d bytes held", have)}
	default:
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		if resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests {
			return false, fmt.Errorf("download: %s: %s", resp.Status, strings.TrimSpace(string(msg)))
		}
		return false, &refusal{firmware.ReasonDownload, fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(msg)))}
	}
	var body io.Reader = resp.Body
	if g.cfg.hooks.downloadBody != nil {
		body = g.cfg.hooks.downloadBody(body)
	}
	n, err := io.Copy(f, io.LimitReader(body, j.Length-have))
	if serr := f.Sync(); err == nil {
		err = serr
	}
	if err != nil {
		return false, err
	}
	if have+n < j.Length {
		return false, fmt.Errorf("download ended at %d of %d bytes", have+n, j.Length)
	}
	return true, nil
}

func parseContentRange(v string) (start, total int64, ok bool) {
	rest, found := strings.CutPrefix(v, "bytes ")
	if !found {
		return 0, 0, false
	}
	rng, tot, found := strings.Cut(rest, "/")
	if !found {
		return 0, 0, false
	}
	s, _, found := strings.Cut(rng, "-")
	if !found {
		return 0, 0, false
	}
	start, err := strconv.ParseInt(s, 10, 64)
	if err != nil || start < 0 {
		return 0, 0, false
	}
	total = -1
	if tot != "*" {
		if total, err = strconv.ParseInt(tot, 10, 64); err != nil {
			return 0, 0, false
		}
	}
	return start, total, true
}

// verifyArtifact checks the file's length and every hash the signed
// targets metadata lists (SHA-256 always, SHA-512 when present).
func verifyArtifact(file string, j *fwJob) (string, error) {
	f, err := os.Open(file)
	if err != nil {
		return firmware.ReasonTruncated, err
	}
	defer f.Close()
	h256, h512 := sha256.New(), sha512.New()
	n, err := io.Copy(io.MultiWriter(h256, h512), f)
	if err != nil {
		return firmware.ReasonTruncated, err
	}
	if n != j.Length {
		return firmware.ReasonTruncated, fmt.Errorf("%d bytes, the signed length is %d", n, j.Length)
	}
	for _, c := range []struct {
		want string
		h    hash.Hash
	}{{j.SHA256, h256}, {j.SHA512, h512}} {
		if c.want == "" && c.h == h512 {
			continue
		}
		want, err := hex.DecodeString(c.want)
		if err != nil || subtle.ConstantTimeCompare(want, c.h.Sum(nil)) != 1 {
			return firmware.ReasonTampered, errors.New("the downloaded artifact is not the one the targets key signed")
		}
	}
	return "", nil
}

// httpClient is the gateway's HTTPS client with its current transport
// certificate.
func (g *Gateway) httpClient() *http.Client {
	tr, _ := g.creds.current()
	return &http.Client{Transport: &http.Transport{TLSClientConfig: tlspolicy.Client(g.creds.roots, tr.tlsCert())}}
}

// reportJob publishes the job's state on firmware/status if it was not
// reported yet (it is again after every reconnect).
func (g *Gateway) reportJob(j *fwJob) {
	state := j.State
	if state == stateSwitched {
		state = firmware.Installing
	}
	if j.Reported == state {
		return
	}
	ver, _, _ := g.installer.Version(j.DeviceType)
	st := firmware.Status{Campaign: j.Campaign, State: state, Reason: j.Reason, Version: ver, Time: time.Now().UTC()}
	if err := g.publishSigned(topic.FirmwareStatusOf(g.path), st); err != nil {
		g.log.Debug("firmware status not published yet", "state", state, "err", err)
		return
	}
	j.Reported = state
	g.fwMu.Lock()
	defer g.fwMu.Unlock()
	if cur, err := g.loadJob(); err == nil && cur != nil && cur.Campaign == j.Campaign && cur.State == j.State {
		cur.Reported = state
		g.saveJob(cur)
	}
}

// refuseFirmware reports a message on the firmware topic that was ignored.
func (g *Gateway) refuseFirmware(payload []byte, reason string) {
	g.refusals.refuse(g, topic.FirmwareStatusOf(g.path), payload, reason)
}

// openSealed opens an envelope sealed for this gateway and verifies its
// signer against the e2e PKI the gateway knows.
func (g *Gateway) openSealed(payload []byte) (*envelope.Opened, error) {
	_, e2e := g.creds.current()
	cas := g.creds.cas()
	if len(cas) < 2 {
		return nil, errors.New("no e2e CA certificates to verify it with")
	}
	v := pki.NewVerifier(pki.E2E, cas[0], cas[1], g.crl.revokedOf(pki.E2E))
	o, err := envelope.NewOpener(e2e.leaf(), e2e.key, envelope.OpenOptions{VerifyOptions: envelope.VerifyOptions{
		Signers:  envelope.NewCertPool(cas...),
		Verifier: v,
	}})
	if err != nil {
		return nil, err
	}
	return o.Open(context.Background(), payload)
}

// publishSigned publishes v as JSON signed by the gateway's e2e key.
func (g *Gateway) publishSigned(t string, v any) error {
	pub := g.publisher.Load()
	if pub == nil {
		return errors.New("not connected")
	}
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, e2e := g.creds.current()
	signed, err := envelope.Sign(b, &envelope.Signer{Cert: e2e.leaf(), Key: e2e.key, Chain: e2e.chain[1:], EmbedCerts: true}, time.Now())
	if err != nil {
		return err
	}
	return (*pub)(t, signed)
}

// firmwareVersions are the versions the gateway runs, by device type, for
// its status message.
func (g *Gateway) firmwareVersions() map[string]string {
	out := map[string]string{}
	for _, t := range g.fwTypes() {
		if v, _, err := g.installer.Version(t); err == nil && v != "" {
			out[t] = v
		}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// firmwareNoticeDigest names a refused message in reports.
func firmwareNoticeDigest(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}
