package console_test

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/console"
	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/store/sqlite"
	"github.com/fieldtrust/fieldtrust/internal/tacs"
)

// person is a console session made directly in the store.
type person struct {
	cookie *http.Cookie
	csrf   string
}

func newPerson(t *testing.T, st store.Store, email, scope, role string) person {
	t.Helper()
	u, err := st.CreateUser(t.Context(), store.ConsoleUser{Email: email, Scope: scope, Role: role, Handle: []byte(email), CreatedBy: "test", CreatedAt: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	tok := sha256.Sum256([]byte("token " + email))
	csrf := sha256.Sum256([]byte("csrf " + email))
	h := sha256.Sum256(tok[:])
	if err := st.CreateSession(t.Context(), store.ConsoleSession{TokenHash: h[:], UserID: u.ID, CSRF: csrf[:], Method: "test", CreatedAt: time.Now(), ExpiresAt: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	return person{&http.Cookie{Name: "__Host-fieldtrust-session", Value: base64.RawURLEncoding.EncodeToString(tok[:])}, hex.EncodeToString(csrf[:])}
}

// TestAlarmsAndTasks: the alarms and tasks pages (issue 15's store) show
// only what the viewer's scope may read; operators acknowledge, clear and
// update, viewers may not, nobody reaches another customer's alarm or
// task, every change is audited with the person's name, and text from
// rules and comments is escaped.
func TestAlarmsAndTasks(t *testing.T) {
	st, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "r.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	now := time.Now().UTC().Truncate(time.Second)
	raise := func(id, gw, summary string) store.AlarmChange {
		return store.AlarmChange{At: now, Alarm: store.Alarm{ID: id, RuleID: "r-" + id, RuleName: "bearing hot", Gateway: gw, Device: gw + "/pump-1",
			Severity: "critical", State: store.AlarmActive, Summary: summary, RaisedAt: now}}
	}
	if err := st.CommitRules(t.Context(), store.RuleCommit{Alarms: []store.AlarmChange{
		raise("a-acme", "acme/berlin/gw-1", "temp_bearing 91 > 80 <script>alert(1)</script>"),
		raise("a-globex", "globex/munich/gw-1", "globex's own alarm"),
	}}); err != nil {
		t.Fatal(err)
	}
	for _, tk := range []store.Task{
		{ID: "t-acme", Title: "Inspect bearing", Gateway: "acme/berlin/gw-1", Device: "acme/berlin/gw-1/pump-1", State: store.TaskOpen, AlarmID: "a-acme", CreatedAt: now, UpdatedAt: now},
		{ID: "t-globex", Title: "Globex task", Gateway: "globex/munich/gw-1", Device: "globex/munich/gw-1/pump-1", State: store.TaskOpen, CreatedAt: now, UpdatedAt: now},
	} {
		if _, err := st.PutTask(t.Context(), tk); err != nil {
			t.Fatal(err)
		}
	}
	c, err := console.New(console.Options{Store: st, Rules: st, Grants: tacs.DefaultGrants(), Hosts: []string{"localhost"}})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	c.Register(mux)
	operator := newPerson(t, st, "op@acme.example", "acme", store.RoleOperator)
	viewer := newPerson(t, st, "viewer@acme.example", "acme", store.RoleViewer)
	globex := newPerson(t, st, "op@globex.example", "globex", store.RoleOperator)
	do := func(p person, method, path string, form url.Values) (int, string) {
		t.Helper()
		req := httptest.NewRequestWithContext(t.Context(), method, "https://localhost"+path, strings.NewReader(form.Encode()))
		req.AddCookie(p.cookie)
		if method == "POST" {
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			req.Header.Set("Origin", "https://localhost")
		}
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, req)
		return rec.Code, rec.Body.String()
	}
	post := func(p person, path string, kv ...string) (int, string) {
		form := url.Values{"csrf": {p.csrf}}
		for i := 0; i+1 < len(kv); i += 2 {
			form.Set(kv[i], kv[i+1])
		}
		return do(p, "POST", path, form)
	}

	// Scoped lists, escaped text.
	code, body := do(viewer, "GET", "/alarms", nil)
	if code != 200 || !strings.Contains(body, `data-alarm="a-acme"`) || strings.Contains(body, "a-globex") || strings.Contains(body, "<script>alert") {
		t.Fatalf("the viewer's alarms: %d %.1500s", code, body)
	}
	if strings.Contains(body, `action="/alarms/ack"`) {
		t.Error("a viewer is offered the acknowledge button")
	}
	if code, body := do(globex, "GET", "/tasks", nil); code != 200 || !strings.Contains(body, "t-globex") || strings.Contains(body, "t-acme") {
		t.Errorf("globex's tasks: %d %.1000s", code, body)
	}
	for _, p := range []string{"/alarms?state=bogus", "/tasks?state=closed"} {
		if code, _ := do(operator, "GET", p, nil); code != http.StatusBadRequest {
			t.Errorf("GET %s: %d, want 400", p, code)
		}
	}
	if code, _ := do(globex, "GET", "/tasks/t-acme", nil); code != http.StatusNotFound {
		t.Errorf("another customer's task page: %d, want 404", code)
	}

	// Who may change what.
	for _, tt := range []struct {
		name string
		p    person
		path string
		kv   []string
		want int
	}{
		{"a viewer acknowledges", viewer, "/alarms/ack", []string{"id", "a-acme"}, http.StatusForbidden},
		{"a viewer updates a task", viewer, "/tasks/update", []string{"id", "t-acme", "comment", "x"}, http.StatusForbidden},
		{"another customer acknowledges", globex, "/alarms/ack", []string{"id", "a-acme"}, http.StatusNotFound},
		{"another customer clears", globex, "/alarms/clear", []string{"id", "a-acme"}, http.StatusNotFound},
		{"another customer updates a task", globex, "/tasks/update", []string{"id", "t-acme", "state", "done"}, http.StatusNotFound},
		{"no such alarm", operator, "/alarms/ack", []string{"id", "nope"}, http.StatusNotFound},
		{"a bad task state", operator, "/tasks/update", []string{"id", "t-acme", "state", "closed"}, http.StatusBadRequest},
		{"a comment too long", operator, "/tasks/update", []string{"id", "t-acme", "comment", strings.Repeat("x", 4001)}, http.StatusBadRequest},
		{"nothing to change", operator, "/tasks/update", []string{"id", "t-acme", "state", "open"}, http.StatusBadRequest},
	} {
		if code, body := post(tt.p, tt.path, tt.kv...); code != tt.want {
			t.Errorf("%s: %d, want %d (%.300s)", tt.name, code, tt.want, body)
		}
	}
	if code, _ := do(operator, "POST", "/alarms/ack", url.Values{"id": {"a-acme"}}); code != http.StatusForbidden {
		t.Errorf("acknowledge without the CSRF token: %d, want 403", code)
	}
	if a, _ := st.Alarm(t.Context(), "a-acme"); a.State != store.AlarmActive {
		t.Fatalf("refused requests changed the alarm: %+v", a)
	}
	if tk, _ := st.Task(t.Context(), "t-acme"); tk.State != store.TaskOpen || len(tk.Comments) != 0 {
		t.Fatalf("refused requests changed the task: %+v", tk)
	}

	// The operator's work.
	if code, body := post(operator, "/alarms/ack", "id", "a-acme"); code != 200 || !strings.Contains(body, "acknowledged") {
		t.Errorf("acknowledge: %d %.500s", code, body)
	}
	if a, _ := st.Alarm(t.Context(), "a-acme"); a.State != store.AlarmAcknowledged || a.AckedBy != "op@acme.example" {
		t.Errorf("after acknowledging: %+v", a)
	}
	if code, _ := post(operator, "/alarms/ack", "id", "a-acme"); code != http.StatusConflict {
		t.Errorf("acknowledge twice: %d, want 409", code)
	}
	if code, _ := post(operator, "/alarms/clear", "id", "a-acme"); code != 200 {
		t.Errorf("clear: %d", code)
	}
	if a, _ := st.Alarm(t.Context(), "a-acme"); a.State != store.AlarmCleared || a.ClearedBy != "op@acme.example" {
		t.Errorf("after clearing: %+v", a)
	}
	code, body = post(operator, "/tasks/update", "id", "t-acme", "state", "in_progress", "assignee", "tech-2", "comment", "on site <b>14:00</b>")
	if code != 200 || !strings.Contains(body, "on site &lt;b&gt;14:00&lt;/b&gt;") || !strings.Contains(body, "Task updated: state in_progress, assignee tech-2, a comment.") {
		t.Errorf("task update: %d %.1500s", code, body)
	}
	if tk, _ := st.Task(t.Context(), "t-acme"); tk.State != store.TaskInProgress || tk.Assignee != "tech-2" || len(tk.Comments) != 1 || tk.Comments[0].Author != "op@acme.example" {
		t.Errorf("after the update: %+v", tk)
	}
	es, err := st.AuditLog(t.Context(), "acme", 0, 20)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, e := range es {
		if e.Actor == "op@acme.example" {
			got[e.Action+map[bool]string{true: "", false: " refused"}[e.OK]] = true
		}
	}
	for _, want := range []string{"alarm-ack", "alarm-ack refused", "alarm-clear", "task-update"} {
		if !got[want] {
			t.Errorf("audit log lacks %q: %v", want, got)
		}
	}
}
