package console_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/command"
	"github.com/fieldtrust/fieldtrust/internal/console"
	"github.com/fieldtrust/fieldtrust/internal/devicemsg"
	"github.com/fieldtrust/fieldtrust/internal/firmware/tufrepo"
	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/store/sqlite"
	"github.com/fieldtrust/fieldtrust/internal/tacs"
)

// queueing is DeviceActions over the real store without the e2e
// signature (TestBrowser sends through the platform's real commander):
// what it queued is what the console asked for.
type queueing struct {
	st   store.Store
	mu   sync.Mutex
	sent []string // requesters
	woke int
}

func (q *queueing) SendCommand(ctx context.Context, cmd command.Command, requester string) error {
	q.mu.Lock()
	q.sent = append(q.sent, requester)
	q.mu.Unlock()
	return q.st.PutDeviceMessage(ctx, store.DeviceMessage{ID: cmd.ID, Kind: devicemsg.KindCommand, Gateway: cmd.Gateway, Ref: cmd.ID,
		Sender: command.Signer + " for " + requester, Name: cmd.Type, At: cmd.Issued, Expires: cmd.Expires, Body: []byte("{}"), State: devicemsg.Queued, LedgerIndex: -1})
}
func (q *queueing) CommandResult(context.Context, store.DeviceMessage) (command.Result, error) {
	return command.Result{}, os.ErrInvalid
}
func (q *queueing) Wake() { q.mu.Lock(); q.woke++; q.mu.Unlock() }

// TestSteering: the vendor's operators create, pause, resume and abort a
// campaign and send a command from the console; viewers, customers (their
// own gateways and another customer's), requests without the CSRF token
// or from another origin, and replayed forms are refused with nothing
// changed; every action is audited with the person.
func TestSteering(t *testing.T) {
	ctx := t.Context()
	data := t.TempDir()
	st, err := sqlite.Open(ctx, filepath.Join(data, "s.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	keys := t.TempDir()
	if _, err := tufrepo.InitKeys(keys, time.Now(), tufrepo.DefaultExpiry); err != nil {
		t.Fatal(err)
	}
	repo := tufrepo.Open(data)
	fw := filepath.Join(t.TempDir(), "fw.bin")
	os.WriteFile(fw, []byte("pump 2.4.1"), 0o600)
	if _, err := repo.Add(keys, tufrepo.Artifact{File: fw, DeviceType: "pump", Version: "2.4.1"}); err != nil {
		t.Fatal(err)
	}
	acts := &queueing{st: st}
	c, err := console.New(console.Options{Store: st, Firmware: st, Devices: acts, FirmwareRepo: repo, Grants: tacs.DefaultGrants(), Hosts: []string{"localhost"}})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	c.Register(mux)
	op := newPerson(t, st, "ops@vendor.example", "", store.RoleOperator)
	viewer := newPerson(t, st, "viewer@vendor.example", "", store.RoleViewer)
	acmeOp := newPerson(t, st, "op@acme.example", "acme", store.RoleOperator)
	acmeAdmin := newPerson(t, st, "admin@acme.example", "acme", store.RoleAdmin)

	do := func(p person, method, path string, form url.Values, hdr ...string) (int, string, string) {
		t.Helper()
		var req *http.Request
		if form != nil {
			req = httptest.NewRequestWithContext(ctx, method, "https://localhost"+path, strings.NewReader(form.Encode()))
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			req.Header.Set("Origin", "https://localhost")
		} else {
			req = httptest.NewRequestWithContext(ctx, method, "https://localhost"+path, nil)
		}
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		req.AddCookie(p.cookie)
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, req)
		return rec.Code, rec.Body.String(), rec.Header().Get("Location")
	}
	reqID := regexp.MustCompile(`name="request" value="([0-9a-f]{16})"`)
	fresh := func(p person, page string) string {
		t.Helper()
		code, body, _ := do(p, "GET", page, nil)
		m := reqID.FindStringSubmatch(body)
		if code != 200 || m == nil {
			t.Fatalf("GET %s: %d, no request id in %.800s", page, code, body)
		}
		return m[1]
	}
	form := func(p person, req string, kv ...string) url.Values {
		f := url.Values{"csrf": {p.csrf}, "request": {req}}
		for i := 0; i+1 < len(kv); i += 2 {
			f.Set(kv[i], kv[i+1])
		}
		return f
	}
	campaigns := func() []store.Campaign {
		cs, err := st.Campaigns(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return cs
	}
	commands := func() int {
		ms, err := st.DeviceMessages(ctx, store.MessageFilter{Kind: devicemsg.KindCommand})
		if err != nil {
			t.Fatal(err)
		}
		return len(ms)
	}

	// The viewer sees no forms; the operator does.
	if _, body, _ := do(viewer, "GET", "/firmware", nil); strings.Contains(body, `action="/firmware/create"`) {
		t.Error("a viewer is offered the campaign form")
	}
	if _, body, _ := do(viewer, "GET", "/commands", nil); strings.Contains(body, `action="/commands/send"`) {
		t.Error("a viewer is offered the command form")
	}
	spec := []string{"device_type", "pump", "version", "2.4.1", "scope", "acme/berlin/gw-1, acme/berlin/gw-2", "canary_percent", "50", "max_failures", "1"}

	// Refusals first: nothing is created or queued by any of them.
	req := fresh(op, "/firmware")
	for _, tt := range []struct {
		name string
		p    person
		path string
		form url.Values
		hdr  []string
		want int
	}{
		{"a viewer creates", viewer, "/firmware/create", form(viewer, req, spec...), nil, http.StatusForbidden},
		{"a customer's operator creates", acmeOp, "/firmware/create", form(acmeOp, req, spec...), nil, http.StatusForbidden},
		{"a customer's admin creates", acmeAdmin, "/firmware/create", form(acmeAdmin, req, spec...), nil, http.StatusForbidden},
		{"no CSRF token", op, "/firmware/create", form(person{csrf: ""}, req, spec...), nil, http.StatusForbidden},
		{"another person's CSRF token", op, "/firmware/create", form(viewer, req, spec...), nil, http.StatusForbidden},
		{"another origin", op, "/firmware/create", form(op, req, spec...), []string{"Origin", "https://evil.example"}, http.StatusForbidden},
		{"an unknown version", op, "/firmware/create", form(op, fresh(op, "/firmware"), "device_type", "pump", "version", "9.9.9", "scope", "acme/berlin/gw-1"), nil, http.StatusBadRequest},
		{"a bad canary", op, "/firmware/create", form(op, fresh(op, "/firmware"), "device_type", "pump", "version", "2.4.1", "scope", "acme", "canary_percent", "-5"), nil, http.StatusBadRequest},
		{"a viewer commands", viewer, "/commands/send", form(viewer, req, "gateway", "acme/berlin/gw-1", "name", "reboot"), nil, http.StatusForbidden},
		{"a customer commands its own gateway", acmeOp, "/commands/send", form(acmeOp, req, "gateway", "acme/berlin/gw-1", "name", "reboot"), nil, http.StatusForbidden},
		{"a customer commands another's gateway", acmeAdmin, "/commands/send", form(acmeAdmin, req, "gateway", "globex/munich/gw-1", "name", "reboot"), nil, http.StatusForbidden},
		{"a command the console does not offer", op, "/commands/send", form(op, fresh(op, "/commands"), "gateway", "acme/berlin/gw-1", "name", "rebootstrap"), nil, http.StatusBadRequest},
		{"set-interval out of range", op, "/commands/send", form(op, fresh(op, "/commands"), "gateway", "acme/berlin/gw-1", "name", "set-interval", "seconds", "0"), nil, http.StatusBadRequest},
		{"not a gateway", op, "/commands/send", form(op, fresh(op, "/commands"), "gateway", "acme/berlin", "name", "reboot"), nil, http.StatusBadRequest},
		{"a forged request id", op, "/commands/send", form(op, "not-hex", "gateway", "acme/berlin/gw-1", "name", "reboot"), nil, http.StatusConflict},
	} {
		code, body, _ := do(tt.p, "POST", tt.path, tt.form, tt.hdr...)
		if code != tt.want {
			t.Errorf("%s: %d, want %d: %.300s", tt.name, code, tt.want, body)
		}
	}
	if n := len(campaigns()); n != 0 {
		t.Fatalf("refused requests created %d campaigns", n)
	}
	if n := commands(); n != 0 {
		t.Fatalf("refused requests queued %d commands", n)
	}

	// The operator creates a campaign; the same form again is refused.
	req = fresh(op, "/firmware")
	code, body, loc := do(op, "POST", "/firmware/create", form(op, req, spec...))
	cs := campaigns()
	if code != http.StatusSeeOther || len(cs) != 1 || loc != "/firmware/"+cs[0].ID {
		t.Fatalf("create: %d %q %d campaigns %.300s", code, loc, len(cs), body)
	}
	id := cs[0].ID
	if _, body, _ := do(op, "GET", "/firmware/"+id, nil); !strings.Contains(body, `id="campaign-pause"`) || !strings.Contains(body, `id="campaign-abort"`) {
		t.Errorf("a running campaign's page offers no pause and abort: %.2000s", body)
	}
	if _, body, _ := do(viewer, "GET", "/firmware/"+id, nil); strings.Contains(body, `id="campaign-pause"`) {
		t.Error("a viewer is offered the pause button")
	}
	if code, _, _ := do(op, "POST", "/firmware/create", form(op, req, spec...)); code != http.StatusConflict || len(campaigns()) != 1 {
		t.Fatalf("a replayed create: %d, %d campaigns", code, len(campaigns()))
	}
	for _, mv := range []struct {
		move, state string
		want        int
	}{
		{"pause", "paused", http.StatusSeeOther},
		{"pause", "paused", http.StatusConflict},
		{"resume", "running", http.StatusSeeOther},
		{"abort", "aborting", http.StatusSeeOther},
		{"resume", "aborting", http.StatusConflict},
		{"delete", "aborting", http.StatusNotFound},
	} {
		page := "/firmware/" + id
		code, body, _ := do(op, "POST", page+"/"+mv.move, form(op, fresh(op, "/firmware")))
		got, _ := st.Campaign(ctx, id)
		if code != mv.want || got.State != mv.state {
			t.Errorf("%s: %d %s, want %d %s: %.300s", mv.move, code, got.State, mv.want, mv.state, body)
		}
	}
	if code, _, _ := do(viewer, "POST", "/firmware/"+id+"/pause", form(viewer, fresh(op, "/firmware"))); code != http.StatusForbidden {
		t.Errorf("a viewer pauses: %d", code)
	}
	if code, _, _ := do(op, "POST", "/firmware/nope/pause", form(op, fresh(op, "/firmware"))); code != http.StatusNotFound {
		t.Errorf("an unknown campaign: %d", code)
	}

	// A command: queued for the platform to sign, the person the
	// requester; the same form again is refused.
	req = fresh(op, "/commands")
	code, body, loc = do(op, "POST", "/commands/send", form(op, req, "gateway", "acme/berlin/gw-1", "name", "set-interval", "seconds", "30"))
	if code != http.StatusSeeOther || commands() != 1 || !strings.HasPrefix(loc, "/commands/") {
		t.Fatalf("send: %d %q %d queued %.300s", code, loc, commands(), body)
	}
	if code, _, _ := do(op, "POST", "/commands/send", form(op, req, "gateway", "acme/berlin/gw-1", "name", "set-interval", "seconds", "30")); code != http.StatusConflict || commands() != 1 {
		t.Fatalf("a replayed command: %d, %d queued", code, commands())
	}
	if len(acts.sent) != 1 || acts.sent[0] != console.Requester("ops@vendor.example") {
		t.Fatalf("requesters %q", acts.sent)
	}
	code, body, _ = do(op, "GET", loc, nil)
	if code != 200 || !strings.Contains(body, "set-interval") || !strings.Contains(body, "service:platform for console:ops@vendor.example") || !strings.Contains(body, `id="result-none"`) {
		t.Fatalf("the command's page: %d %.1500s", code, body)
	}
	if code, _, _ := do(acmeAdmin, "GET", loc, nil); code != http.StatusForbidden {
		t.Errorf("a customer on the command page: %d", code)
	}

	// The audit log names the person for every action and refusal.
	entries, err := st.AuditLog(ctx, "", 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	for _, e := range entries {
		if e.Actor == "ops@vendor.example" && e.OK {
			got[e.Action]++
		}
	}
	for _, a := range []string{"campaign-create", "campaign-pause", "campaign-resume", "campaign-abort", "command"} {
		if got[a] != 1 {
			t.Errorf("audit %s by the operator: %d entries (%v)", a, got[a], got)
		}
	}
	// The customer's audit log shows who commanded its gateway.
	acme, err := st.AuditLog(ctx, "acme", 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(acme) != 1 || acme[0].Actor != "ops@vendor.example" || acme[0].Action != "command" || !strings.Contains(acme[0].Detail, "set-interval") {
		t.Errorf("acme's audit log: %+v", acme)
	}
}

// TestMayCommand is the command rule the API and the console share.
func TestMayCommand(t *testing.T) {
	g := tacs.DefaultGrants()
	for _, tt := range []struct {
		subj tacs.Subject
		gw   string
		want bool
	}{
		{tacs.ServiceSubject("ops", tacs.RoleAdmin), "acme/berlin/gw-1", true},
		{tacs.ServiceSubject("devices", tacs.RoleDeviceManager), "acme/berlin/gw-1", true},
		{tacs.ServiceSubject("fw", tacs.RoleFirmwareWriter), "acme/berlin/gw-1", false},
		{tacs.Account("acme"), "acme/berlin/gw-1", false},
		{tacs.Account("acme"), "globex/munich/gw-1", false},
		{tacs.Account("acme/berlin/gw-1"), "acme/berlin/gw-1", false},
	} {
		if got := devicemsg.MayCommand(g, tt.subj, tt.gw); got != tt.want {
			t.Errorf("%s on %s: %v, want %v", tt.subj, tt.gw, got, tt.want)
		}
	}
}
