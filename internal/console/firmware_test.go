package console_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/console"
	"github.com/fieldtrust/fieldtrust/internal/devicemsg"
	"github.com/fieldtrust/fieldtrust/internal/firmware"
	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/store/sqlite"
	"github.com/fieldtrust/fieldtrust/internal/tacs"
)

// TestWayBack: the audit page shows what was sent to the viewer's
// gateways and what they answered (issue 12), the firmware pages show the
// campaigns to the vendor only; nobody sees another customer's messages
// or campaigns, hostile text from gateways is escaped, and both page.
func TestWayBack(t *testing.T) {
	st, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "w.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx := t.Context()
	at := time.Now().UTC().Truncate(time.Millisecond)
	const attack = `<script>alert(1)</script>`
	put := func(id, kind, gw, name string, idx int64) store.DeviceMessage {
		t.Helper()
		m := store.DeviceMessage{ID: id, Kind: kind, Gateway: gw, Ref: "ref-" + id, Sender: "service:device-manager", Name: name, At: at, Body: []byte("body of " + id), LedgerIndex: idx}
		if kind == devicemsg.KindCommand {
			m.State = devicemsg.Sent
		}
		if err := st.PutDeviceMessage(ctx, m); err != nil {
			t.Fatal(err)
		}
		return m
	}
	cmd := put("m-acme-cmd", devicemsg.KindCommand, "acme/berlin/gw-1", "reboot", 7)
	put("m-acme-notice", devicemsg.KindNotice, "acme/berlin/gw-1", "install", -1)
	put("m-acme-download", devicemsg.KindDownload, "acme/berlin/gw-1", "bytes=0-1023", 9)
	put("m-acme-status", devicemsg.KindStatus, "acme/berlin/gw-1", attack, 10)
	put("m-acme-result", devicemsg.KindResult, "acme/berlin/gw-1", "ok", 11)
	put("m-hamburg-cmd", devicemsg.KindCommand, "acme/hamburg/gw-9", "clean", 12)
	put("m-globex-cmd", devicemsg.KindCommand, "globex/munich/gw-1", "globex-secret", 13)

	campaign := func(id string, gws ...string) {
		t.Helper()
		var devs []store.CampaignDevice
		for _, g := range gws {
			devs = append(devs, store.CampaignDevice{Campaign: id, Path: g, Stage: 1, State: firmware.Pending})
		}
		if err := st.CreateCampaign(ctx, store.Campaign{ID: id, Version: "2.4.1", DeviceType: "pump", Target: "pump/2.4.1", Scope: []string{strings.Join(strings.Split(gws[0], "/")[:1], "/")},
			CanaryPercent: 10, MaxFailures: 2, State: "running", Stage: 1}, devs); err != nil {
			t.Fatal(err)
		}
	}
	campaign("c-acme", "acme/berlin/gw-1", "acme/hamburg/gw-9")
	campaign("c-globex", "globex/munich/gw-1")
	if _, err := st.SetCampaignDevice(ctx, "c-acme", "acme/berlin/gw-1", firmware.Failed, attack, at); err != nil {
		t.Fatal(err)
	}

	c, err := console.New(console.Options{Store: st, Firmware: st, Grants: tacs.DefaultGrants(), Hosts: []string{"localhost"}})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	c.Register(mux)
	acme := newPerson(t, st, "admin@acme.example", "acme", store.RoleAdmin)
	berlin := newPerson(t, st, "viewer@berlin.example", "acme/berlin", store.RoleViewer)
	globex := newPerson(t, st, "admin@globex.example", "globex", store.RoleAdmin)
	vendor := newPerson(t, st, "ops@vendor.example", "", store.RoleViewer)
	get := func(p person, path string) (int, string) {
		t.Helper()
		req := httptest.NewRequestWithContext(ctx, "GET", "https://localhost"+path, nil)
		req.AddCookie(p.cookie)
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, req)
		return rec.Code, rec.Body.String()
	}
	cmdHash := devicemsg.RecordHash(cmd)

	for _, tt := range []struct {
		name      string
		p         person
		path      string
		want      int
		has, lack []string
	}{
		{"acme's audit: its messages and answers", acme, "/audit", 200,
			[]string{`id="device-messages"`, `data-kind="command"`, "acme/berlin/gw-1/commands", "acme/berlin/gw-1/firmware", "acme/berlin/gw-1/firmware/status",
				"acme/berlin/gw-1/commands/result", "acme/hamburg/gw-9/commands", "sent to device", "answered by device", "reboot", fmt.Sprintf("%x", cmdHash[:]), "not yet in the ledger", "&lt;script&gt;alert(1)"},
			[]string{"globex", "<script>alert"}},
		{"an account's viewer: its account only", berlin, "/audit", 200,
			[]string{"acme/berlin/gw-1/commands", "reboot"}, []string{"acme/hamburg", "clean", "globex"}},
		{"globex's audit: nothing of acme", globex, "/audit", 200,
			[]string{"globex/munich/gw-1/commands", "globex-secret"}, []string{"acme/", "reboot"}},
		{"a kind filter", acme, "/audit?kind=download", 200, []string{"bytes=0-1023"}, []string{`data-kind="command"`, "reboot"}},
		{"the vendor sees all", vendor, "/audit", 200, []string{"globex-secret", "reboot"}, nil},
		{"a bad kind", acme, "/audit?kind=" + attack, 400, []string{"kind"}, []string{"<script>alert"}},
		{"a bad cursor", acme, "/audit?msgs_after=-3", 400, []string{"msgs_after"}, nil},

		{"the vendor's campaigns", vendor, "/firmware", 200, []string{`data-campaign="c-acme"`, `data-campaign="c-globex"`, "failed 1", "pending 1", "50 %"}, nil},
		{"a state filter", vendor, "/firmware?state=paused", 200, []string{"No campaigns in this state."}, []string{`data-campaign=`}},
		{"a bad state", vendor, "/firmware?state=" + attack, 400, nil, []string{"<script>alert"}},
		{"a bad page", vendor, "/firmware?page=0", 400, nil, nil},
		{"a campaign page", vendor, "/firmware/c-acme", 200, []string{`data-gateway="acme/berlin/gw-1" data-state="failed"`, `data-gateway="acme/hamburg/gw-9" data-state="pending"`, "&lt;script&gt;alert(1)"}, []string{"<script>alert", "globex"}},
		{"no such campaign", vendor, "/firmware/nope", 404, nil, nil},
		{"a hostile campaign id", vendor, "/firmware/%3Cscript%3E", 404, nil, []string{"<script>"}},
		{"a customer's campaigns", acme, "/firmware", 403, nil, []string{"c-acme", "c-globex"}},
		{"a customer's own campaign", acme, "/firmware/c-acme", 403, nil, []string{"acme/berlin/gw-1"}},
		{"another customer's campaign", globex, "/firmware/c-acme", 403, nil, []string{"acme/"}},
		{"another customer's campaign list", globex, "/firmware", 403, nil, []string{"c-globex", "acme/"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			code, body := get(tt.p, tt.path)
			if code != tt.want {
				t.Fatalf("GET %s: %d, want %d: %.600s", tt.path, code, tt.want, body)
			}
			for _, s := range tt.has {
				if !strings.Contains(body, s) {
					t.Errorf("GET %s lacks %q", tt.path, s)
				}
			}
			for _, s := range tt.lack {
				if strings.Contains(body, s) {
					t.Errorf("GET %s shows %q", tt.path, s)
				}
			}
		})
	}
	if _, body := get(acme, "/fleet"); strings.Contains(body, `href="/firmware"`) {
		t.Error("a customer's navigation offers the firmware pages")
	}
	if _, body := get(vendor, "/fleet"); !strings.Contains(body, `href="/firmware"`) {
		t.Error("the vendor's navigation lacks the firmware pages")
	}

	t.Run("CampaignRule", func(t *testing.T) {
		// The campaign API's rule, not the page's: a vendor whose role may
		// not order firmware for globex's gateways sees acme's campaign
		// only, and globex's is not found.
		g := tacs.DefaultGrants()
		g[tacs.RoleAdmin] = append([]tacs.Grant{{Filter: "globex/+/+/firmware", Write: true, Deny: true}}, g[tacs.RoleAdmin]...)
		rc, err := console.New(console.Options{Store: st, Firmware: st, Grants: g, Hosts: []string{"localhost"}})
		if err != nil {
			t.Fatal(err)
		}
		rmux := http.NewServeMux()
		rc.Register(rmux)
		rget := func(path string) (int, string) {
			req := httptest.NewRequestWithContext(ctx, "GET", "https://localhost"+path, nil)
			req.AddCookie(vendor.cookie)
			rec := httptest.NewRecorder()
			rmux.ServeHTTP(rec, req)
			return rec.Code, rec.Body.String()
		}
		if code, body := rget("/firmware"); code != 200 || !strings.Contains(body, `data-campaign="c-acme"`) || strings.Contains(body, "c-globex") {
			t.Errorf("the restricted vendor's campaigns: %d, acme %v, globex %v", code, strings.Contains(body, `data-campaign="c-acme"`), strings.Contains(body, "c-globex"))
		}
		if code, _ := rget("/firmware/c-globex"); code != http.StatusNotFound {
			t.Errorf("a campaign the vendor's role may not order: %d, want 404", code)
		}
	})

	t.Run("Paging", func(t *testing.T) {
		for i := range 120 {
			put(fmt.Sprintf("page-%03d", i), devicemsg.KindCommand, "globex/munich/gw-2", fmt.Sprintf("cmd-%03d", i), -1)
		}
		rows := regexp.MustCompile(`<tr data-kind=`)
		next := regexp.MustCompile(`href="(/audit\?[^"]*msgs_after=[^"]*)"`)
		_, body := get(globex, "/audit")
		if n := len(rows.FindAllString(body, -1)); n != 100 || !strings.Contains(body, "globex-secret") || strings.Contains(body, "cmd-099") {
			t.Fatalf("the first page has %d messages, want 100 from the oldest", n)
		}
		m := next.FindStringSubmatch(body)
		if m == nil {
			t.Fatal("the first page has no next link")
		}
		_, body = get(globex, strings.ReplaceAll(m[1], "&amp;", "&"))
		if n := len(rows.FindAllString(body, -1)); n != 21 || !strings.Contains(body, "cmd-119") || strings.Contains(body, "globex-secret") || next.MatchString(body) {
			t.Errorf("the second page has %d messages, want the last 21 and no next link", n)
		}

		var gws []string
		for i := range 130 {
			gws = append(gws, fmt.Sprintf("globex/munich/gw-%03d", i))
		}
		campaign("c-big", gws...)
		for i := range 55 {
			campaign(fmt.Sprintf("c-%02d", i), "globex/munich/gw-1")
		}
		seen := map[string]bool{}
		campRow := regexp.MustCompile(`data-campaign="([^"]+)"`)
		for page, want := range []int{50, 8} {
			code, body := get(vendor, fmt.Sprintf("/firmware?page=%d", page+1))
			ids := campRow.FindAllStringSubmatch(body, -1)
			if code != 200 || len(ids) != want {
				t.Fatalf("campaigns page %d: %d, %d campaigns, want %d", page+1, code, len(ids), want)
			}
			for _, id := range ids {
				seen[id[1]] = true
			}
			if hasNext := strings.Contains(body, "next →"); hasNext != (page == 0) {
				t.Errorf("campaigns page %d: next link %v", page+1, hasNext)
			}
		}
		if len(seen) != 58 {
			t.Errorf("two pages show %d distinct campaigns, want 58", len(seen))
		}
		gwRow := regexp.MustCompile(`<tr data-gateway=`)
		for page, want := range []int{100, 30} {
			if _, body := get(vendor, fmt.Sprintf("/firmware/c-big?page=%d", page+1)); len(gwRow.FindAllString(body, -1)) != want {
				t.Errorf("campaign page %d: %d gateways, want %d", page+1, len(gwRow.FindAllString(body, -1)), want)
			}
		}
	})
}
