package campaignapi

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/firmware/rollout"
	"github.com/fieldtrust/fieldtrust/internal/firmware/tufrepo"
	"github.com/fieldtrust/fieldtrust/internal/store/sqlite"
	"github.com/fieldtrust/fieldtrust/internal/tacs"
	"github.com/fieldtrust/fieldtrust/internal/topic"
)

// TestCampaignAPI: the operators' campaign routes over a real SQLite store
// and TUF repository — create, list, status, pause, resume, abort — and
// the refusals: no identity, an account, a role that may not publish on
// the gateways' firmware topics (nothing stored), someone else's campaign
// (not found), bad bodies, moves the state does not allow. The rollout
// through real gateways is TestCampaign in internal/devicemsg.
func TestCampaignAPI(t *testing.T) {
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "db.sqlite"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	keys, data := t.TempDir(), t.TempDir()
	if _, err := tufrepo.InitKeys(keys, time.Now(), tufrepo.DefaultExpiry); err != nil {
		t.Fatal(err)
	}
	fw := filepath.Join(t.TempDir(), "fw")
	os.WriteFile(fw, []byte("pump firmware 2.4.1"), 0o600)
	repo := tufrepo.Open(data)
	if _, err := repo.Add(keys, tufrepo.Artifact{File: fw, DeviceType: "pump", Version: "2.4.1"}); err != nil {
		t.Fatal(err)
	}
	grants := tacs.DefaultGrants()
	grants["ops-ms-1"] = []tacs.Grant{{Filter: topic.FirmwareOf("ms-1/+/+"), Write: true}}
	subjects := map[string]tacs.Subject{
		"admin":    tacs.ServiceSubject("console", tacs.RoleAdmin),
		"ops":      tacs.ServiceSubject("ops", "ops-ms-1"),
		"reader":   tacs.ServiceSubject("ingest", tacs.RoleSnapshotReader),
		"customer": tacs.Account("ms-1"),
	}
	var woken atomic.Int64
	h := &Handler{Store: st, Repo: repo, Grants: grants, Wake: func() { woken.Add(1) }, Log: slog.New(slog.DiscardHandler),
		Identify: func(r *http.Request) (tacs.Subject, bool) {
			s, ok := subjects[r.Header.Get("Test-Caller")]
			return s, ok
		}}
	mux := http.NewServeMux()
	h.Register(mux, func(h http.Handler) http.Handler { return h })
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	call := func(caller, method, path, body string, out any) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
		req.Header.Set("Test-Caller", caller)
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if out != nil && resp.StatusCode < 300 {
			if err := json.Unmarshal(b, out); err != nil {
				t.Fatalf("%s %s: %v: %s", method, path, err, b)
			}
		}
		return resp.StatusCode, string(b)
	}
	create := func(scope ...string) string {
		s, _ := json.Marshal(scope)
		return `{"version":"2.4.1","device_type":"pump","scope":` + string(s) + `,"canary_percent":50,"max_failures":1}`
	}

	var mine rollout.Report
	if code, body := call("ops", "POST", Path, create("ms-1/acc/gw-1", "ms-1/acc/gw-2"), &mine); code != http.StatusCreated || mine.State != rollout.Running || len(mine.Devices) != 2 || mine.Devices[0].State != "pending" {
		t.Fatalf("create: %d %s", code, body)
	}
	var theirs rollout.Report
	if code, body := call("admin", "POST", Path, create("ms-2/acc/gw-1"), &theirs); code != http.StatusCreated {
		t.Fatalf("admin create: %d %s", code, body)
	}
	if woken.Load() != 2 {
		t.Errorf("device messaging woken %d times for 2 campaigns", woken.Load())
	}

	for _, c := range []struct {
		name, caller, method, path, body string
		code                             int
		want                             string
	}{
		{"no identity", "", "GET", Path, "", http.StatusUnauthorized, "certificate"},
		{"an account", "customer", "POST", Path, create("ms-1/acc/gw-1"), http.StatusForbidden, "service certificate"},
		{"an account reads", "customer", "GET", Path + "/" + mine.ID, "", http.StatusForbidden, "service certificate"},
		{"role without firmware grants", "reader", "POST", Path, create("ms-1/acc/gw-1"), http.StatusForbidden, "may not publish on " + topic.FirmwareOf("ms-1/acc/gw-1")},
		{"another tenant's gateway", "ops", "POST", Path, create("ms-1/acc/gw-1", "ms-2/acc/gw-1"), http.StatusForbidden, topic.FirmwareOf("ms-2/acc/gw-1")},
		{"another tenant's campaign", "ops", "GET", Path + "/" + theirs.ID, "", http.StatusNotFound, "not found"},
		{"pause another tenant's campaign", "ops", "POST", Path + "/" + theirs.ID + "/pause", "", http.StatusNotFound, "not found"},
		{"unknown campaign", "admin", "GET", Path + "/nope", "", http.StatusNotFound, "not found"},
		{"unknown field", "admin", "POST", Path, `{"version":"2.4.1","device_type":"pump","scope":["ms-1"],"force":true}`, http.StatusBadRequest, "unknown field"},
		{"not JSON", "admin", "POST", Path, `version=2.4.1`, http.StatusBadRequest, "body"},
		{"oversized", "admin", "POST", Path, `{"version":"` + strings.Repeat("9", maxBody) + `"}`, http.StatusBadRequest, "body"},
		{"no version", "admin", "POST", Path, `{"device_type":"pump","scope":["ms-1"]}`, http.StatusBadRequest, "required"},
		{"no scope", "admin", "POST", Path, `{"version":"2.4.1","device_type":"pump"}`, http.StatusBadRequest, "scope"},
		{"bad scope", "admin", "POST", Path, create("../x"), http.StatusBadRequest, "scope"},
		{"canary above 100", "admin", "POST", Path, `{"version":"2.4.1","device_type":"pump","scope":["ms-1/a/g"],"canary_percent":101}`, http.StatusBadRequest, "101"},
		{"negative threshold", "admin", "POST", Path, `{"version":"2.4.1","device_type":"pump","scope":["ms-1/a/g"],"max_failures":-1}`, http.StatusBadRequest, "-1"},
		{"firmware not in the repository", "admin", "POST", Path, `{"version":"9.9.9","device_type":"pump","scope":["ms-1/a/g"]}`, http.StatusBadRequest, "no firmware 9.9.9"},
		{"unknown move", "admin", "POST", Path + "/" + mine.ID + "/explode", "", http.StatusNotFound, "pause"},
		{"resume a running campaign", "admin", "POST", Path + "/" + mine.ID + "/resume", "", http.StatusConflict, "not paused"},
	} {
		if code, body := call(c.caller, c.method, c.path, c.body, nil); code != c.code || !strings.Contains(body, c.want) {
			t.Errorf("%s: %d %q; want %d and %q", c.name, code, body, c.code, c.want)
		}
	}
	if cs, err := st.Campaigns(ctx); err != nil || len(cs) != 2 {
		t.Errorf("refused creates stored campaigns: %d %v", len(cs), err)
	}

	var list struct{ Campaigns []Summary }
	if code, body := call("ops", "GET", Path, "", &list); code != 200 || len(list.Campaigns) != 1 || list.Campaigns[0].ID != mine.ID || list.Campaigns[0].CanaryPercent != 50 || list.Campaigns[0].Target != "pump/2.4.1" {
		t.Errorf("ops's list (its own campaign only): %d %s", code, body)
	}
	if code, body := call("admin", "GET", Path+"?state=running", "", &list); code != 200 || len(list.Campaigns) != 2 {
		t.Errorf("admin's list: %d %s", code, body)
	}

	for _, m := range []struct{ move, state string }{{"pause", rollout.Paused}, {"resume", rollout.Running}, {"abort", rollout.Aborting}} {
		var r rollout.Report
		if code, body := call("ops", "POST", Path+"/"+mine.ID+"/"+m.move, "", &r); code != 200 || r.State != m.state {
			t.Errorf("%s: %d %s; want %s", m.move, code, body, m.state)
		}
	}
	if code, body := call("ops", "POST", Path+"/"+mine.ID+"/abort", "", nil); code != http.StatusConflict || !strings.Contains(body, "already") {
		t.Errorf("abort twice: %d %s", code, body)
	}
	var r rollout.Report
	if code, body := call("ops", "GET", Path+"/"+mine.ID, "", &r); code != 200 || r.State != rollout.Aborting || r.Counts["pending"] != 2 {
		t.Errorf("status: %d %s", code, body)
	}
}
