package console_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"mime/multipart"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/console"
	"github.com/fieldtrust/fieldtrust/internal/datadir"
	"github.com/fieldtrust/fieldtrust/internal/store"
)

// browserClient is an HTTP client that behaves like a browser towards the
// console: it trusts the platform's root, keeps cookies, does not follow
// redirects (the tests look at them), and optionally presents a client
// certificate.
type browserClient struct {
	t    *testing.T
	base string
	c    *http.Client
}

func newClient(t *testing.T, base string, root *x509.Certificate, cert *tls.Certificate) *browserClient {
	pool := x509.NewCertPool()
	pool.AddCert(root)
	tc := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if cert != nil {
		tc.Certificates = []tls.Certificate{*cert}
	}
	jar, _ := cookiejar.New(nil)
	return &browserClient{t: t, base: base, c: &http.Client{Jar: jar, Timeout: 30 * time.Second,
		Transport:     &http.Transport{TLSClientConfig: tc},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

// do sends a request from the console's own origin (as a browser's page
// would) unless origin says otherwise ("-" for none).
func (b *browserClient) do(method, path, origin, ctype string, body []byte, hdr ...string) (*http.Response, string) {
	b.t.Helper()
	req, err := http.NewRequest(method, b.base+path, bytes.NewReader(body))
	if err != nil {
		b.t.Fatal(err)
	}
	if origin == "" {
		origin = b.base
	}
	if origin != "-" {
		req.Header.Set("Origin", origin)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := b.c.Do(req)
	if err != nil {
		b.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp, string(out)
}

func (b *browserClient) get(path string) (*http.Response, string) {
	return b.do("GET", path, "-", "", nil)
}

func (b *browserClient) postJSON(path string, v any, hdr ...string) (*http.Response, string) {
	body, _ := json.Marshal(v)
	return b.do("POST", path, "", "application/json", body, hdr...)
}

func (b *browserClient) postForm(path, origin string, form url.Values) (*http.Response, string) {
	return b.do("POST", path, origin, "application/x-www-form-urlencoded", []byte(form.Encode()))
}

// login spends a one-time login link.
func (b *browserClient) login(inv console.Invitation) {
	b.t.Helper()
	resp, body := b.postJSON("/login/link", map[string]string{"token": inv.Token})
	if resp.StatusCode != http.StatusOK {
		b.t.Fatalf("login as %s: %d %s", inv.User.Email, resp.StatusCode, body)
	}
}

// csrf reads the session's CSRF token from a page.
func (b *browserClient) csrf() string {
	b.t.Helper()
	_, body := b.get("/account")
	_, rest, ok := strings.Cut(body, `<meta name="csrf" content="`)
	if !ok {
		b.t.Fatal("no CSRF token on the account page")
	}
	tok, _, _ := strings.Cut(rest, `"`)
	return tok
}

func loginLink(t *testing.T, d *datadir.Dir, email, path, role string) console.Invitation {
	t.Helper()
	inv, err := console.LoginLink(t.Context(), d.Store, email, path, role, "test", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return inv
}

func waitSnapshots(t *testing.T, d *datadir.Dir, gateways int) {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for {
		recs, err := d.Store.LatestSnapshots(t.Context(), "")
		if err != nil {
			t.Fatal(err)
		}
		gws := map[string]bool{}
		for _, r := range recs {
			gws[r.Gateway] = true
		}
		if len(gws) >= gateways {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d gateways stored snapshots in 90 s, want %d", len(gws), gateways)
		}
		time.Sleep(200 * time.Millisecond) // polling the store for a condition, with a deadline
	}
}

// TestConsoleSecurity attacks the console over real TLS, as browsers and
// scripts would: without a session, with another customer's session,
// without CSRF tokens, from another origin, with spent and expired
// invitations, with a disabled user's session and with a flood of logins.
func TestConsoleSecurity(t *testing.T) {
	base, dir := demoPlatform(t)
	d, err := datadir.Open(t.Context(), dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	root := d.Transport.Root()
	waitSnapshots(t, d, 3)
	const acmeDev = "acme-pumps/plant-berlin/gw-1/pump-2"

	anon := newClient(t, base, root, nil)
	acme := newClient(t, base, root, nil)
	acme.login(loginLink(t, d, "admin@acme-pumps.example", "acme-pumps", store.RoleAdmin))
	globex := newClient(t, base, root, nil)
	globex.login(loginLink(t, d, "viewer@globex-labs.example", "globex-labs", store.RoleViewer))

	t.Run("NoSession", func(t *testing.T) {
		for _, p := range []string{"/", "/fleet", "/devices/" + acmeDev, "/audit", "/ledger", "/admin", "/account", "/series/" + acmeDev + "?channel=flow", "/alarms", "/tasks", "/tasks/t-1", "/firmware", "/firmware/c-1"} {
			resp, _ := anon.get(p)
			if loc := resp.Header.Get("Location"); resp.StatusCode != http.StatusSeeOther || !strings.HasPrefix(loc, "/login?next=") {
				t.Errorf("GET %s without a session: %d %s, want a redirect to /login", p, resp.StatusCode, loc)
			}
		}
		for _, p := range []string{"/events", "/ui/api/v1/devices", "/ui/api/v1/export"} {
			if resp, _ := anon.get(p); resp.StatusCode != http.StatusUnauthorized {
				t.Errorf("GET %s without a session: %d, want 401", p, resp.StatusCode)
			}
		}
		for _, p := range []string{"/admin/users/invite", "/admin/users/disable", "/admin/certificates/revoke", "/admin/claims", "/alarms/ack", "/alarms/clear", "/tasks/update", "/logout", "/account/passkey/begin"} {
			if resp, _ := anon.postForm(p, "", url.Values{"email": {"x@y.example"}}); resp.StatusCode != http.StatusUnauthorized {
				t.Errorf("POST %s without a session: %d, want 401", p, resp.StatusCode)
			}
		}
		resp, body := anon.get("/login")
		if resp.StatusCode != http.StatusOK || !strings.Contains(body, "passkey") {
			t.Errorf("login page: %d", resp.StatusCode)
		}
	})

	t.Run("Headers", func(t *testing.T) {
		resp, _ := acme.get("/fleet")
		csp := resp.Header.Get("Content-Security-Policy")
		for _, want := range []string{"default-src 'none'", "script-src 'self'", "style-src 'self'", "frame-ancestors 'none'"} {
			if !strings.Contains(csp, want) {
				t.Errorf("CSP %q lacks %q", csp, want)
			}
		}
		if strings.Contains(csp, "unsafe-inline") || strings.Contains(csp, "unsafe-eval") {
			t.Errorf("CSP allows inline code: %q", csp)
		}
		if resp.Header.Get("X-Frame-Options") != "DENY" || resp.Header.Get("Cache-Control") != "no-store" {
			t.Errorf("headers %v", resp.Header)
		}
		// The session cookie as it was set.
		c := newClient(t, base, root, nil)
		resp, _ = c.postJSON("/login/link", map[string]string{"token": loginLink(t, d, "admin@acme-pumps.example", "acme-pumps", store.RoleAdmin).Token})
		sc := resp.Header.Get("Set-Cookie")
		for _, want := range []string{"__Host-fieldtrust-session=", "Path=/", "HttpOnly", "Secure", "SameSite=Strict"} {
			if !strings.Contains(sc, want) {
				t.Errorf("session cookie %q lacks %s", sc, want)
			}
		}
		if strings.Contains(sc, "Domain=") {
			t.Errorf("session cookie %q has a Domain", sc)
		}
		// Assets: content-hashed, cached for a year; a wrong hash is 404.
		_, page := acme.get("/fleet")
		_, rest, _ := strings.Cut(page, `<script src="/static/`)
		asset, _, _ := strings.Cut(rest, `"`)
		resp, js := anon.get("/static/" + asset)
		if resp.StatusCode != http.StatusOK || !strings.Contains(resp.Header.Get("Cache-Control"), "immutable") || len(js) < 1000 {
			t.Errorf("asset %s: %d %q", asset, resp.StatusCode, resp.Header.Get("Cache-Control"))
		}
		_, name, _ := strings.Cut(asset, "/")
		if resp, _ := anon.get("/static/0000000000000000/" + name); resp.StatusCode != http.StatusNotFound {
			t.Errorf("asset with a wrong hash: %d", resp.StatusCode)
		}
	})

	t.Run("OtherCustomer", func(t *testing.T) {
		// Pages and data of acme, asked by globex: the same 404 as for a
		// device that does not exist.
		missing := "globex-labs/lab-munich/gw-1/no-such-device"
		_, want := globex.get("/devices/" + missing)
		for _, p := range []string{"/devices/" + acmeDev, "/devices/acme-pumps/plant-berlin/gw-1/no-such-device"} {
			resp, body := globex.get(p)
			if resp.StatusCode != http.StatusNotFound || body != want {
				t.Errorf("GET %s as globex: %d, want the 404 of a missing device", p, resp.StatusCode)
			}
		}
		from, to := url.QueryEscape(time.Now().Add(-time.Hour).UTC().Format(time.RFC3339)), url.QueryEscape(time.Now().Add(time.Minute).UTC().Format(time.RFC3339))
		for _, p := range []string{
			"/series/" + acmeDev + "?channel=flow&from=" + from + "&to=" + to,
			"/ui/api/v1/devices/" + acmeDev + "/snapshots",
		} {
			if resp, body := globex.get(p); resp.StatusCode != http.StatusNotFound || strings.Contains(body, "acme-pumps/") {
				t.Errorf("GET %s as globex: %d %.200s", p, resp.StatusCode, body)
			}
		}
		for _, p := range []string{"/fleet", "/fleet?q=acme", "/audit", "/ledger", "/ui/api/v1/devices", "/ui/api/v1/status", "/ui/api/v1/integrity-events", "/ui/api/v1/export"} {
			resp, body := globex.get(p)
			if p == "/ui/api/v1/export" && resp.StatusCode == http.StatusConflict { // no signed head yet
				resp.StatusCode = http.StatusOK
			}
			if resp.StatusCode != http.StatusOK || strings.Contains(body, "acme-pumps/") {
				t.Errorf("GET %s as globex: %d, mentions acme: %v", p, resp.StatusCode, strings.Contains(body, "acme-pumps/"))
			}
		}
		if _, body := globex.get("/fleet"); !strings.Contains(body, "globex-labs/") {
			t.Error("globex's fleet does not show globex's devices")
		}
		// What was sent to acme's gateway, and acme's campaign.
		sent := store.DeviceMessage{ID: "sec-acme-cmd", Kind: "command", Gateway: "acme-pumps/plant-berlin/gw-1", Ref: "sec-acme-cmd", Sender: "service:test",
			Name: "acme-only-reboot", At: time.Now(), Body: []byte("sealed"), State: "sent", LedgerIndex: -1}
		if err := d.Store.PutDeviceMessage(t.Context(), sent); err != nil {
			t.Fatal(err)
		}
		if err := d.Store.CreateCampaign(t.Context(), store.Campaign{ID: "sec-acme-campaign", Version: "9.9.9", DeviceType: "pump", Target: "pump/9.9.9", Scope: []string{"acme-pumps"}, State: "running", Stage: 1},
			[]store.CampaignDevice{{Campaign: "sec-acme-campaign", Path: "acme-pumps/plant-berlin/gw-1", Stage: 1, State: "pending"}}); err != nil {
			t.Fatal(err)
		}
		if _, body := acme.get("/audit?kind=command"); !strings.Contains(body, "acme-only-reboot") {
			t.Error("acme's audit page does not show the command sent to its gateway")
		}
		for _, p := range []string{"/audit", "/audit?kind=command", "/audit?msgs_after=0"} {
			if resp, body := globex.get(p); resp.StatusCode != http.StatusOK || strings.Contains(body, "acme-only-reboot") || strings.Contains(body, "acme-pumps/") {
				t.Errorf("GET %s as globex: %d, shows acme's messages", p, resp.StatusCode)
			}
		}
		for _, c := range []*browserClient{globex, acme} {
			for _, p := range []string{"/firmware", "/firmware/sec-acme-campaign"} {
				if resp, body := c.get(p); resp.StatusCode != http.StatusForbidden || strings.Contains(body, "9.9.9") {
					t.Errorf("GET %s as a customer: %d, want 403 (campaigns are the vendor's)", p, resp.StatusCode)
				}
			}
		}
		vendor := newClient(t, base, root, nil)
		vendor.login(loginLink(t, d, "ops@vendor.example", console.VendorScope, store.RoleViewer))
		if resp, body := vendor.get("/firmware/sec-acme-campaign"); resp.StatusCode != http.StatusOK || !strings.Contains(body, `data-gateway="acme-pumps/plant-berlin/gw-1"`) {
			t.Errorf("the vendor's campaign page: %d", resp.StatusCode)
		}
		// The proof of one of acme's snapshots.
		recs, _ := d.Store.LatestSnapshots(t.Context(), "acme-pumps")
		if resp, _ := globex.get("/ui/api/v1/ledger/proof/" + hexs(recs[0].Hash)); resp.StatusCode != http.StatusNotFound {
			t.Errorf("globex asks for the proof of acme's snapshot: %d", resp.StatusCode)
		}
		// Admin pages: globex is a viewer; acme's admin sees only acme.
		if resp, _ := globex.get("/admin"); resp.StatusCode != http.StatusForbidden {
			t.Errorf("a viewer's /admin: %d, want 403", resp.StatusCode)
		}
		tok := globex.csrf()
		if resp, _ := globex.postForm("/admin/users/invite", "", url.Values{"csrf": {tok}, "email": {"x@globex-labs.example"}, "path": {"globex-labs"}, "role": {"viewer"}}); resp.StatusCode != http.StatusForbidden {
			t.Errorf("a viewer invites: %d, want 403", resp.StatusCode)
		}
		_, page := acme.get("/admin")
		if strings.Contains(page, "globex") || !strings.Contains(page, "admin@acme-pumps.example") {
			t.Errorf("acme's admin page mentions globex or misses acme's own users")
		}
		atok := acme.csrf()
		for _, tt := range []struct {
			path string
			form url.Values
			want int
		}{
			{"/admin/users/invite", url.Values{"email": {"spy@acme-pumps.example"}, "path": {"globex-labs"}, "role": {"admin"}}, http.StatusBadRequest},
			{"/admin/users/invite", url.Values{"email": {"spy@acme-pumps.example"}, "path": {"/"}, "role": {"admin"}}, http.StatusBadRequest},
			{"/admin/users/disable", url.Values{"email": {"viewer@globex-labs.example"}}, http.StatusNotFound},
			{"/admin/certificates/revoke", url.Values{"name": {"globex-labs/lab-munich/gw-1"}, "reason": {"keyCompromise"}}, http.StatusNotFound},
			{"/admin/certificates/revoke", url.Values{"name": {"acme-pumps/plant-berlin/gw-1"}, "reason": {"sideways"}}, http.StatusBadRequest},
		} {
			tt.form.Set("csrf", atok)
			if resp, body := acme.postForm(tt.path, "", tt.form); resp.StatusCode != tt.want {
				t.Errorf("acme's admin POST %s %v: %d, want %d: %.200s", tt.path, tt.form, resp.StatusCode, tt.want, body)
			}
		}
		if u, err := d.Store.ConsoleUserByEmail(t.Context(), "viewer@globex-labs.example"); err != nil || u.Disabled() {
			t.Errorf("globex's user after acme's attempts: %+v, %v", u, err)
		}
	})

	t.Run("EventStream", func(t *testing.T) {
		// globex's stream carries globex's snapshots only.
		ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, "GET", base+"/events", nil)
		resp, err := globex.c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		seen := 0
		for seen < 3 && sc.Scan() {
			line := sc.Text()
			if strings.HasPrefix(line, "data: ") && strings.Contains(line, `"path"`) {
				if !strings.Contains(line, `"gateway":"globex-labs/`) {
					t.Fatalf("globex's event stream carries %s", line)
				}
				seen++
			}
		}
		if seen < 3 {
			t.Fatalf("saw %d of globex's snapshots on its stream: %v", seen, sc.Err())
		}
	})

	t.Run("CSRF", func(t *testing.T) {
		tok := acme.csrf()
		form := func(csrf string) url.Values {
			return url.Values{"csrf": {csrf}, "email": {"new@acme-pumps.example"}, "path": {"acme-pumps/plant-berlin"}, "role": {"viewer"}}
		}
		for _, tt := range []struct {
			name, origin, csrf string
		}{
			{"no token", "", ""},
			{"wrong token", "", strings.Repeat("0", 64)},
			{"another site", "https://evil.example", tok},
			{"no origin", "-", tok},
		} {
			if resp, _ := acme.postForm("/admin/users/invite", tt.origin, form(tt.csrf)); resp.StatusCode != http.StatusForbidden {
				t.Errorf("%s: %d, want 403", tt.name, resp.StatusCode)
			}
		}
		if _, err := d.Store.ConsoleUserByEmail(t.Context(), "new@acme-pumps.example"); err == nil {
			t.Fatal("a refused request created a user")
		}
		resp, body := acme.postForm("/admin/users/invite", "", form(tok))
		if resp.StatusCode != http.StatusOK || !strings.Contains(body, base+"/invite#") {
			t.Fatalf("invite with token: %d %.300s", resp.StatusCode, body)
		}
		// The audit log has it, with its actor.
		es, _ := d.Store.AuditLog(t.Context(), "acme-pumps", 0, 10)
		if len(es) == 0 || es[0].Action != "user-invite" || es[0].Actor != "admin@acme-pumps.example" || es[0].Target != "new@acme-pumps.example" {
			t.Errorf("audit log after the invitation: %+v", es)
		}
	})

	t.Run("Escaping", func(t *testing.T) {
		attack := `<script>alert(1)</script><img src=x onerror=alert(2)>`
		if err := d.Store.AppendAudit(t.Context(), store.AuditEntry{At: time.Now(), Actor: attack, Scope: "acme-pumps", Action: "x", Target: attack, Detail: attack}); err != nil {
			t.Fatal(err)
		}
		_, body := acme.get("/audit")
		if strings.Contains(body, "<script>alert") || strings.Contains(body, "<img src=x") || !strings.Contains(body, "&lt;script&gt;alert(1)") {
			t.Error("the audit page does not escape what it shows")
		}
		// Bad parameters: a clear 400, never a 500.
		for _, p := range []string{"/fleet?page=-1", "/fleet?state=weird", "/fleet?q=" + strings.Repeat("x", 200), "/audit?from=yesterday", "/audit?after=garbage", "/audit?kind=crl", "/audit?msgs_after=x",
			"/ledger?hash=xyz", "/ledger?before=0", "/devices/a/b", "/devices/" + acmeDev + "?range=1y", "/devices/" + acmeDev + "?channel=nope",
			"/series/" + acmeDev + "?channel=flow&from=2026-01-01T00:00:00Z&to=2026-03-01T00:00:00Z", "/series/" + acmeDev + "?channel=../x"} {
			if resp, _ := acme.get(p); resp.StatusCode != http.StatusBadRequest {
				t.Errorf("GET %s: %d, want 400", p, resp.StatusCode)
			}
		}
	})

	t.Run("Invitations", func(t *testing.T) {
		customer := filepath.Join(dir, "demo", "customers")
		acmeCert, err := tls.LoadX509KeyPair(filepath.Join(customer, "acme-pumps", "cert.pem"), filepath.Join(customer, "acme-pumps", "key.pem"))
		if err != nil {
			t.Fatal(err)
		}
		globexCert, err := tls.LoadX509KeyPair(filepath.Join(customer, "globex-labs", "cert.pem"), filepath.Join(customer, "globex-labs", "key.pem"))
		if err != nil {
			t.Fatal(err)
		}
		expired, err := console.Invite(t.Context(), d.Store, "late@acme-pumps.example", "acme-pumps", store.RoleViewer, "test", "", time.Now().Add(-console.InvitationTTL-time.Minute))
		if err != nil {
			t.Fatal(err)
		}
		withCert := newClient(t, base, root, &acmeCert)
		if resp, _ := withCert.postJSON("/invite/info", map[string]string{"token": expired.Token}); resp.StatusCode != http.StatusGone {
			t.Errorf("expired invitation: %d, want 410", resp.StatusCode)
		}
		if resp, _ := withCert.postJSON("/invite/certificate", map[string]string{"token": expired.Token}); resp.StatusCode != http.StatusGone {
			t.Errorf("expired invitation used: %d, want 410", resp.StatusCode)
		}
		inv, err := console.Invite(t.Context(), d.Store, "cert@acme-pumps.example", "acme-pumps/plant-berlin", store.RoleViewer, "test", "", time.Now())
		if err != nil {
			t.Fatal(err)
		}
		// globex's certificate does not cover acme's scope.
		other := newClient(t, base, root, &globexCert)
		if resp, _ := other.postJSON("/invite/certificate", map[string]string{"token": inv.Token}); resp.StatusCode != http.StatusForbidden {
			t.Errorf("binding another customer's certificate: %d, want 403", resp.StatusCode)
		}
		// A login link is not an invitation.
		if resp, _ := withCert.postJSON("/invite/certificate", map[string]string{"token": loginLink(t, d, "admin@acme-pumps.example", "acme-pumps", store.RoleAdmin).Token}); resp.StatusCode != http.StatusGone {
			t.Errorf("a login link used as an invitation: %d, want 410", resp.StatusCode)
		}
		resp, body := withCert.postJSON("/invite/certificate", map[string]string{"token": inv.Token})
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("bind acme's certificate: %d %s", resp.StatusCode, body)
		}
		if resp, _ := withCert.get("/fleet"); resp.StatusCode != http.StatusOK {
			t.Errorf("fleet after binding: %d", resp.StatusCode)
		}
		// Replayed: refused, from any browser.
		if resp, _ := newClient(t, base, root, &acmeCert).postJSON("/invite/certificate", map[string]string{"token": inv.Token}); resp.StatusCode != http.StatusGone {
			t.Errorf("replayed invitation: %d, want 410", resp.StatusCode)
		}
		// Certificate login, and what a certificate without a user gets.
		fresh := newClient(t, base, root, &acmeCert)
		resp, _ = fresh.postForm("/login/certificate", "", url.Values{"next": {"/audit"}})
		if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/audit" {
			t.Errorf("certificate login: %d %s", resp.StatusCode, resp.Header.Get("Location"))
		}
		if resp, _ := fresh.get("/audit"); resp.StatusCode != http.StatusOK {
			t.Errorf("audit after certificate login: %d", resp.StatusCode)
		}
		if resp, _ := newClient(t, base, root, &globexCert).postForm("/login/certificate", "", nil); resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("login with an unbound certificate: %d, want 401", resp.StatusCode)
		}
		if resp, _ := newClient(t, base, root, nil).postForm("/login/certificate", "", nil); resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("certificate login without a certificate: %d, want 401", resp.StatusCode)
		}
	})

	t.Run("DisabledUserSessionsEnd", func(t *testing.T) {
		victim := newClient(t, base, root, nil)
		victim.login(loginLink(t, d, "leaver@acme-pumps.example", "acme-pumps", store.RoleOperator))
		if resp, _ := victim.get("/fleet"); resp.StatusCode != http.StatusOK {
			t.Fatalf("fleet: %d", resp.StatusCode)
		}
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, "GET", base+"/events", nil)
		stream, err := victim.c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer stream.Body.Close()
		if _, err := console.Disable(t.Context(), d.Store, "leaver@acme-pumps.example", "test", "", time.Now()); err != nil {
			t.Fatal(err)
		}
		if resp, _ := victim.get("/fleet"); resp.StatusCode != http.StatusSeeOther {
			t.Errorf("a disabled user's next page: %d, want a redirect to /login", resp.StatusCode)
		}
		// The open stream ends with a logout event.
		sc := bufio.NewScanner(stream.Body)
		for sc.Scan() {
			if sc.Text() == "event: logout" {
				break
			}
		}
		if ctx.Err() != nil {
			t.Error("the disabled user's event stream did not end")
		}
		// Logout everywhere ends every session of a user.
		a, b := newClient(t, base, root, nil), newClient(t, base, root, nil)
		a.login(loginLink(t, d, "twice@acme-pumps.example", "acme-pumps", store.RoleViewer))
		b.login(loginLink(t, d, "twice@acme-pumps.example", "acme-pumps", store.RoleViewer))
		if resp, _ := a.postForm("/logout", "", url.Values{"csrf": {a.csrf()}, "everywhere": {"1"}}); resp.StatusCode != http.StatusSeeOther {
			t.Errorf("logout everywhere: %d", resp.StatusCode)
		}
		if resp, _ := b.get("/fleet"); resp.StatusCode != http.StatusSeeOther {
			t.Errorf("the other browser after logout everywhere: %d", resp.StatusCode)
		}
	})

	// Last: it exhausts 127.0.0.1's login budget.
	t.Run("ClaimsUpload", func(t *testing.T) {
		vendor := newClient(t, base, root, nil)
		vendor.login(loginLink(t, d, "claims@vendor.example", console.VendorScope, store.RoleAdmin))
		upload := func(b *browserClient, origin, csrf, csv string) (*http.Response, string) {
			var buf bytes.Buffer
			mw := multipart.NewWriter(&buf)
			mw.WriteField("csrf", csrf)
			fw, _ := mw.CreateFormFile("csv", "claims.csv")
			io.WriteString(fw, csv)
			mw.Close()
			return b.do("POST", "/admin/claims", origin, mw.FormDataContentType(), buf.Bytes())
		}
		claims := func() int {
			cs, err := d.Store.Claims(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			return len(cs)
		}
		before := claims()
		good := "path,onboarding_subject\nacme-pumps/plant-berlin/gw-up-1,UPLOAD-1\nacme-pumps/plant-berlin/gw-up-2,UPLOAD-2\n"
		vtok := vendor.csrf()
		for _, tt := range []struct {
			name         string
			b            *browserClient
			origin, csrf string
			status       int
		}{
			{"a customer's admin", acme, "", acme.csrf(), http.StatusForbidden},
			{"another site", vendor, "https://evil.example", vtok, http.StatusForbidden},
			{"no token", vendor, "", "", http.StatusForbidden},
		} {
			if resp, _ := upload(tt.b, tt.origin, tt.csrf, good); resp.StatusCode != tt.status {
				t.Errorf("%s: %d, want %d", tt.name, resp.StatusCode, tt.status)
			}
		}
		if n := claims(); n != before {
			t.Fatalf("refused uploads wrote %d claim(s)", n-before)
		}
		// Every bad line is named, escaped, and nothing is written.
		bad := "path,onboarding_subject\nacme-pumps/plant-berlin/gw-up-3,UPLOAD-3\nacme-pumps/<script>alert(1)</script>/x,UPLOAD-4\nacme-pumps/plant-berlin/gw-up-5,UPLOAD-3\n"
		resp, body := upload(vendor, "", vtok, bad)
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, "line 3: ") || !strings.Contains(body, "line 4: onboarding subject UPLOAD-3 is also on line 2") || strings.Contains(body, "<script>alert") {
			t.Errorf("bad lines: %d %.2000s", resp.StatusCode, body)
		}
		for _, tt := range []struct{ name, csv, want string }{
			{"no header", "", "no header row"},
			{"unknown column", "path,serial\n", "unknown column"},
		} {
			if resp, body := upload(vendor, "", vtok, tt.csv); resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, tt.want) {
				t.Errorf("%s: %d %.300s", tt.name, resp.StatusCode, body)
			}
		}
		if resp, _ := vendor.do("POST", "/admin/claims", "", "application/x-www-form-urlencoded", []byte("csrf="+vtok)); resp.StatusCode != http.StatusBadRequest {
			t.Errorf("no file: %d, want 400", resp.StatusCode)
		}
		if resp, _ := upload(vendor, "", vtok, strings.Repeat("#", 5<<20)); resp.StatusCode != http.StatusRequestEntityTooLarge {
			t.Errorf("a 5 MiB upload: %d, want 413", resp.StatusCode)
		}
		if n := claims(); n != before {
			t.Fatalf("bad uploads wrote %d claim(s)", n-before)
		}
		resp, body = upload(vendor, "", vtok, good)
		if resp.StatusCode != http.StatusOK || !strings.Contains(body, "Claimed 2 device(s)") {
			t.Fatalf("good file: %d %.500s", resp.StatusCode, body)
		}
		if n := claims(); n != before+2 {
			t.Errorf("%d claim(s) written, want 2", n-before)
		}
		if resp, body := upload(vendor, "", vtok, good); resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, "is already claimed for acme-pumps/plant-berlin/gw-up-1") {
			t.Errorf("the same file again: %d %.500s", resp.StatusCode, body)
		}
		es, _ := d.Store.AuditLog(t.Context(), "", 0, 50)
		var ok, refused bool
		for _, e := range es {
			if e.Action == "claims-upload" && e.Actor == "claims@vendor.example" {
				ok, refused = ok || e.OK, refused || !e.OK
			}
		}
		if !ok || !refused {
			t.Errorf("audit log lacks the uploads (accepted %v, refused %v)", ok, refused)
		}
	})

	t.Run("LoginRateLimit", func(t *testing.T) {
		limited := 0
		for range 30 {
			// A forged assertion without a ceremony: a failed attempt.
			resp, _ := anon.postJSON("/login/passkey/finish", map[string]string{"id": "x"})
			if resp.StatusCode == http.StatusTooManyRequests {
				limited++
				if resp.Header.Get("Retry-After") == "" {
					t.Fatal("429 without Retry-After")
				}
			}
		}
		if limited < 15 {
			t.Errorf("%d of 30 rapid failed logins were refused, want most", limited)
		}
		begun := 0
		for range 100 {
			if resp, _ := anon.postJSON("/login/passkey/begin", nil); resp.StatusCode == http.StatusOK {
				begun++
			}
		}
		if begun > 70 {
			t.Errorf("%d of 100 rapid ceremonies begun, want at most about 60", begun)
		}
	})
}

func hexs(b []byte) string {
	const digits = "0123456789abcdef"
	out := make([]byte, 0, 2*len(b))
	for _, c := range b {
		out = append(out, digits[c>>4], digits[c&15])
	}
	return string(out)
}
