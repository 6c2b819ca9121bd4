package web_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/store/sqlite"
	"github.com/fieldtrust/fieldtrust/internal/tacs"
	"github.com/fieldtrust/fieldtrust/internal/web"
)

func rulesFixture(t *testing.T) (*httptest.Server, *sqlite.Store) {
	st, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	api := &web.API{Data: st, Rules: st, Grants: tacs.DefaultGrants(), Identify: identifyByHeader}
	srv := httptest.NewServer(web.New(web.Options{API: api}))
	t.Cleanup(srv.Close)
	return srv, st
}

func call(t *testing.T, srv *httptest.Server, who, method, path, body string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
	req.Header.Set(subjectHeader, who)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var out map[string]any
	json.Unmarshal(b, &out)
	return resp.StatusCode, out
}

// TestRulesAPIRefusals: a bad rule file is a 400 with line and column; a
// customer may write rules only for its own subtree and sees only its
// own rules and alarms (another's are 404); read-only services may not
// write; bad parameters are 400.
func TestRulesAPIRefusals(t *testing.T) {
	srv, st := rulesFixture(t)
	const good = "version: 1\nname: hot\nscope: ms-1/acc-1\nwhen: values.t > 90.0\nactions:\n  - mqtt: {}\n"
	for _, tc := range []struct {
		who, body string
		code      int
		want      string
	}{
		{"ms-1/acc-1", "version: 1\nname: hot\nscope: ms-1/acc-1\nwhen: values.t >\nactions:\n  - mqtt: {}\n", 400, "rule.yaml:4:"},
		{"ms-1/acc-1", "version: 1\nname: hot\nscope: ms-1/acc-1\nwhen: values.t > 1.0\ncolor: red\nactions:\n  - mqtt: {}\n", 400, "rule.yaml:5:1: rule: unknown field"},
		{"ms-1/acc-1", strings.Replace(good, "scope: ms-1/acc-1", "scope: ms-1", 1), 403, "own scope"},
		{"ms-1/acc-1", strings.Replace(good, "scope: ms-1/acc-1", "scope: ms-2/acc-1", 1), 403, "own scope"},
		{"ms-1/acc-1", strings.Replace(good, "scope: ms-1/acc-1", "scope: \"*\"", 1), 403, "own scope"},
		{"ms-1/acc-1", strings.Replace(good, "mqtt: {}", "webhook: {url: \"https://x.example/\", secret: nope}", 1), 400, "does not exist"},
		{"service:ingest/snapshot-reader", good, 403, "may not write rules"},
		{"ms-1/acc-1", good, 201, ""},
		{"service:ops/admin", strings.Replace(good, "scope: ms-1/acc-1", "scope: \"*\"", 1), 201, ""},
	} {
		code, out := call(t, srv, tc.who, "POST", "/api/v1/rules", tc.body)
		if code != tc.code || !strings.Contains(strings.ToLower(toString(out["error"])), strings.ToLower(tc.want)) {
			t.Errorf("%s adds %q: %d %v, want %d %q", tc.who, tc.body, code, out, tc.code, tc.want)
		}
		if code == 400 && strings.Contains(tc.want, ".yaml:") && out["line"] == nil {
			t.Errorf("400 without line: %v", out)
		}
	}
	_, list := call(t, srv, "ms-1/acc-1", "GET", "/api/v1/rules", "")
	if rs := list["rules"].([]any); len(rs) != 1 {
		t.Fatalf("the customer sees %d rules, want its own 1: %v", len(rs), rs)
	}
	_, all := call(t, srv, "service:ops/admin", "GET", "/api/v1/rules", "")
	if rs := all["rules"].([]any); len(rs) != 2 {
		t.Fatalf("the vendor sees %d rules, want 2", len(rs))
	}
	vendorRule := ""
	for _, r := range all["rules"].([]any) {
		if m := r.(map[string]any); m["scope"] == "*" {
			vendorRule = m["id"].(string)
		}
	}
	if code, _ := call(t, srv, "ms-1/acc-1", "GET", "/api/v1/rules/"+vendorRule, ""); code != 404 {
		t.Errorf("a customer reads the vendor's rule: %d", code)
	}
	if code, _ := call(t, srv, "ms-1/acc-1", "POST", "/api/v1/rules/"+vendorRule+"/disable", ""); code != 404 {
		t.Errorf("a customer disables the vendor's rule: %d", code)
	}

	// Alarms and tasks of two customers.
	now := time.Now().UTC().Truncate(time.Millisecond)
	if err := st.CommitRules(context.Background(), store.RuleCommit{Alarms: []store.AlarmChange{
		{Alarm: store.Alarm{ID: "a-1", RuleID: "r", RuleName: "hot", Gateway: "ms-1/acc-1/gw-1", Device: "ms-1/acc-1/gw-1/p", Severity: "critical", RaisedAt: now}},
		{Alarm: store.Alarm{ID: "a-2", RuleID: "r", RuleName: "hot", Gateway: "ms-1/acc-10/gw-1", Device: "ms-1/acc-10/gw-1/p", Severity: "critical", RaisedAt: now}},
	}}); err != nil {
		t.Fatal(err)
	}
	st.PutTask(context.Background(), store.Task{ID: "t-2", Title: "x", Gateway: "ms-1/acc-10/gw-1", Device: "ms-1/acc-10/gw-1/p", CreatedAt: now})
	_, al := call(t, srv, "ms-1/acc-1", "GET", "/api/v1/alarms?state=open", "")
	if a := al["alarms"].([]any); len(a) != 1 || a[0].(map[string]any)["id"] != "a-1" {
		t.Fatalf("ms-1/acc-1 sees alarms %v", a)
	}
	for _, p := range []string{"GET /api/v1/alarms/a-2", "POST /api/v1/alarms/a-2/ack", "POST /api/v1/alarms/a-2/clear", "GET /api/v1/tasks/t-2", "POST /api/v1/tasks/t-2"} {
		method, path, _ := strings.Cut(p, " ")
		if code, _ := call(t, srv, "ms-1/acc-1", method, path, `{"state":"done"}`); code != 404 {
			t.Errorf("%s by another customer: %d, want 404", p, code)
		}
	}
	if a, _ := st.Alarm(context.Background(), "a-2"); a.State != store.AlarmActive {
		t.Fatalf("another customer changed a-2: %+v", a)
	}
	for _, p := range []string{"/api/v1/alarms?state=bogus", "/api/v1/alarms?limit=0", "/api/v1/tasks?state=x", "/api/v1/outbox?state=x", "/api/v1/rule-errors?limit=x"} {
		if code, _ := call(t, srv, "ms-1/acc-1", "GET", p, ""); code != 400 {
			t.Errorf("GET %s: %d, want 400", p, code)
		}
	}
	if code, _ := call(t, srv, "service:ops/admin", "POST", "/api/v1/tasks/t-2", `{"state":"closed"}`); code != 400 {
		t.Errorf("bad task state: %d", code)
	}
	if code, _ := call(t, srv, "service:ops/admin", "POST", "/api/v1/tasks/t-2", `{"owner":"x"}`); code != 400 {
		t.Errorf("unknown task field: %d", code)
	}
	if code, out := call(t, srv, "service:ops/admin", "POST", "/api/v1/alarms/a-2/clear", ""); code != 200 || out["state"] != "cleared" || out["cleared_by"] != "service:ops" {
		t.Errorf("vendor clears: %d %v", code, out)
	}
	if code, _ := call(t, srv, "service:ops/admin", "POST", "/api/v1/alarms/a-2/ack", ""); code != 409 {
		t.Errorf("ack of a cleared alarm: %d, want 409", code)
	}
}

func toString(v any) string {
	s, _ := v.(string)
	return s
}
