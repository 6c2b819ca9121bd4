// Package console is fieldtrust's web console: server-rendered pages for
// the people who have a stake in a fleet (a vendor's service engineer, a
// customer's plant manager), served by 'fieldtrust up' on its HTTPS
// listener.
//
// People are not devices, but they live in the same identity tree: a user
// is bound to an identity path (or to the vendor's admin scope) and sees
// exactly what a certificate of that path sees. The console builds the
// user's TACS subject (Subject) and scopes every read with the API's rule
// (web.ReadScope, web.CanRead): there is no second permission model. The
// user's role (viewer, operator, admin) only narrows the actions.
//
// Login is by passkey (WebAuthn, go-webauthn) or by a client certificate
// bound to the user; there are no passwords. Sessions are server-side
// (the store), their cookie HttpOnly, Secure, SameSite=Strict and
// __Host-prefixed; every state-changing request must carry the session's
// CSRF token and a same-origin Origin header; every page is served with a
// strict Content-Security-Policy (no inline script, no inline style).
//
// Pages are registered in a Registry (see Page): the console's own views
// and those other packages add (rules, agents) share one layout,
// navigation and access check.
package console

import (
	"cmp"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"html/template"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/firmware/tufrepo"
	"github.com/fieldtrust/fieldtrust/internal/ledger"
	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/tacs"
	"github.com/fieldtrust/fieldtrust/internal/web"
)

// Store is what the console reads and writes.
type Store interface {
	store.Console
	store.Live
	store.Series
	ListDevices(ctx context.Context, scope string) ([]store.Device, error)
	QuerySnapshots(ctx context.Context, q store.SnapshotQuery) ([]store.SnapshotRecord, error)
	LatestSnapshots(ctx context.Context, scope string) ([]store.SnapshotRecord, error)
	SnapshotByHash(ctx context.Context, scope string, hash []byte) (store.SnapshotRecord, error)
	IntegrityEvents(ctx context.Context, scope string, from, to time.Time, limit int) ([]store.IntegrityEvent, error)
	Rejects(ctx context.Context, from, to time.Time, limit int) ([]store.Reject, error)
	LatestTreeHead(ctx context.Context) (store.TreeHead, error)
	ListCertificates(ctx context.Context, f store.CertFilter) ([]store.Certificate, error)
	Manufacturers(ctx context.Context) ([]store.Manufacturer, error)
	Claims(ctx context.Context) ([]store.Claim, error)
	PutClaims(ctx context.Context, claims []store.Claim) error
}

// Revoker revokes the certificates of an identity path (pki.Authority).
type Revoker interface {
	RevokeName(ctx context.Context, name string, ca bool, reason int) ([]store.Certificate, error)
}

// StatusSource tells whether a gateway is online, from its retained
// birth message and last will (see StatusWatcher).
type StatusSource interface {
	Status(gateway string) (GatewayStatus, bool)
}

// Options configure the console.
type Options struct {
	Store  Store
	Grants tacs.Grants
	// Proofs serve the ledger proofs of the console's copy of the API
	// (/ui/api/v1/..., the same handlers as /api/v1 with the session's
	// identity).
	Proofs web.Proofs
	// CertSubject returns the TACS subject of the verified client
	// certificate the request presented (est.GuardOperational verified
	// it), for certificate login.
	CertSubject func(r *http.Request) (tacs.Subject, *x509.Certificate, bool)
	// Revoker revokes transport certificates from the admin view; nil
	// hides the action.
	Revoker Revoker
	// Status, if set, gives the gateways' online state.
	Status StatusSource
	// Rules, if set, are the alarms and tasks of the rules (issue 15):
	// the Alarms and Tasks pages.
	Rules RulesStore
	// Calibration, if set, is the DCC fleet link (*calibration.Link): the
	// device page's calibration card and /ui/api/v1/devices/{path}/calibration.
	Calibration web.Calibration
	// Firmware, if set, are the campaigns and device messages of the way
	// back (issue 12): the Firmware pages and, on the audit page, what
	// was sent to the viewer's devices.
	Firmware FirmwareStore
	// Devices and FirmwareRepo, if set (with Firmware), let users of the
	// vendor's scope with the operator role create and steer campaigns
	// and send commands (the Commands pages); see DeviceActions.
	Devices      DeviceActions
	FirmwareRepo *tufrepo.Repo
	// Hosts are the host names people reach the console by (passkeys are
	// bound to a DNS name: "localhost" and the --dns-name values; an IP
	// address cannot be a WebAuthn relying party).
	Hosts []string
	// SessionTTL is how long a login lasts; 0 means DefaultSessionTTL.
	SessionTTL time.Duration
	// LoginRate and LoginBurst bound failed login attempts per client
	// address (per second; zero means 10 per minute, burst 10); beginning
	// a passkey ceremony is bounded at six times that.
	LoginRate  float64
	LoginBurst int
	// PollEvery is how often the live view looks for new snapshots; 0
	// means one second.
	PollEvery time.Duration
	Now       func() time.Time
	Logger    *slog.Logger
}

// DefaultSessionTTL is the lifetime of a session: a working day.
const DefaultSessionTTL = 8 * time.Hour

// InvitationTTL is how long an invitation link may be used.
const InvitationTTL = 72 * time.Hour

// Console serves the web console. Create it with New, mount it with
// Register (web.Options.Pages), run its live feed with Run.
type Console struct {
	opts      Options
	log       *slog.Logger
	now       func() time.Time
	pages     *Registry
	tmpl      *template.Template
	assets    *assets
	auth      *authenticator
	live      *hub
	api       http.Handler
	onceNav   sync.Once
	vendorSub tacs.Subject
	forms     *formOnce
}

// New returns the console.
func New(opts Options) (*Console, error) {
	if opts.Store == nil || opts.Grants == nil {
		return nil, errors.New("console: Store and Grants are required")
	}
	c := &Console{opts: opts, log: opts.Logger, now: opts.Now}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if c.now == nil {
		c.now = time.Now
	}
	var err error
	if c.assets, err = loadAssets(); err != nil {
		return nil, err
	}
	if c.tmpl, err = parseTemplates(c.assets); err != nil {
		return nil, err
	}
	if c.auth, err = newAuthenticator(c); err != nil {
		return nil, err
	}
	c.live = newHub(c)
	c.pages = &Registry{}
	c.registerViews()
	if opts.Rules != nil {
		c.registerRules()
	}
	c.forms = &formOnce{ttl: cmp.Or(opts.SessionTTL, DefaultSessionTTL)}
	if opts.Firmware != nil {
		c.registerFirmware()
		if opts.Devices != nil {
			c.registerSteering()
		}
	}
	var msgs web.Messages
	if opts.Firmware != nil {
		msgs = opts.Firmware
	}
	api := &web.API{Data: opts.Store, Proofs: opts.Proofs, Calibration: opts.Calibration, Grants: opts.Grants, Messages: msgs, Logger: c.log.With("component", "console-api"),
		Identify: func(r *http.Request) (tacs.Subject, bool) {
			v, ok := viewerFrom(r.Context())
			return v.Subject, ok
		}}
	c.api = http.StripPrefix("/ui", web.New(web.Options{API: api, Logger: c.log}))
	return c, nil
}

// Pages returns the registry other packages add their pages to.
func (c *Console) Pages() *Registry { return c.pages }

// StatusChanged feeds a gateway's new online state to the live views
// (StatusWatcher.OnChange).
func (c *Console) StatusChanged(gw string, s GatewayStatus) { c.live.statusChanged(gw, s) }

// Run runs the live feed until ctx ends.
func (c *Console) Run(ctx context.Context) error { return c.live.run(ctx) }

// Subject is the TACS subject a user acts as: the account identity of its
// path, or for the vendor's admin scope the admin service role — what a
// certificate of that scope would be.
func Subject(u store.ConsoleUser) tacs.Subject {
	if u.Scope == "" {
		return tacs.ServiceSubject("console-vendor", tacs.RoleAdmin)
	}
	return tacs.Account(u.Scope)
}

// Viewer is the logged-in user of a request.
type Viewer struct {
	User    store.ConsoleUser
	Session store.ConsoleSession
	Subject tacs.Subject
	Scope   string // the store scope of what the user may read
	CSRF    string
	grants  tacs.Grants
}

// CanRead reports whether the viewer may read gateway gw's data (TACS).
func (v *Viewer) CanRead(gw string) bool { return web.CanRead(v.grants, v.Subject, gw) }

// Has reports whether the viewer's role is at least role.
func (v *Viewer) Has(role string) bool {
	return slices.Index(store.ConsoleRoles, v.User.Role) >= slices.Index(store.ConsoleRoles, role) && slices.Contains(store.ConsoleRoles, role)
}

// Vendor reports whether the viewer is bound to the vendor's admin scope.
func (v *Viewer) Vendor() bool { return v.User.Scope == "" }

// ScopeName is the viewer's scope as shown: the path, or "everything".
func (v *Viewer) ScopeName() string { return scopeName(v.User.Scope) }

func scopeName(s string) string {
	if s == "" {
		return "vendor (everything)"
	}
	return s
}

type viewerKey struct{}

func viewerFrom(ctx context.Context) (*Viewer, bool) {
	v, ok := ctx.Value(viewerKey{}).(*Viewer)
	return v, ok
}

// Register adds the console's routes to mux (web.Options.Pages).
func (c *Console) Register(mux *http.ServeMux) {
	h := func(pattern string, f http.HandlerFunc) { mux.Handle(pattern, c.secure(f)) }
	h("GET /{$}", c.requireLogin(func(w http.ResponseWriter, r *http.Request, v *Viewer) {
		http.Redirect(w, r, "/fleet", http.StatusSeeOther)
	}))
	h("GET /static/{hash}/{file...}", c.assets.serve)
	c.auth.register(h)
	h("GET /events", c.requireLogin(c.live.serve))
	mux.Handle("GET /ui/api/v1/", c.secure(c.requireLogin(func(w http.ResponseWriter, r *http.Request, v *Viewer) { c.api.ServeHTTP(w, r) })))
	for _, p := range c.pages.all() {
		p := p
		h("GET "+p.Path, c.requireLogin(func(w http.ResponseWriter, r *http.Request, v *Viewer) {
			if !c.allowed(p, v) {
				c.fail(w, r, v, http.StatusForbidden, "This page needs the "+p.MinRole+" role"+map[bool]string{true: " in the vendor's scope", false: ""}[p.VendorOnly]+".")
				return
			}
			p.Handle(w, r, v)
		}))
		for _, a := range p.Actions {
			h("POST "+a.Path, c.requireLogin(c.requireCSRF(cmp.Or(a.MaxBody, maxForm), func(w http.ResponseWriter, r *http.Request, v *Viewer) {
				if !c.allowed(p, v) || !v.Has(a.MinRole) || (a.VendorOnly && !v.Vendor()) {
					c.fail(w, r, v, http.StatusForbidden, "This action needs the "+a.MinRole+" role"+map[bool]string{true: " in the vendor's scope", false: ""}[a.VendorOnly]+".")
					return
				}
				a.Handle(w, r, v)
			})))
		}
	}
}

func (c *Console) allowed(p Page, v *Viewer) bool {
	return v.Has(p.MinRole) && (!p.VendorOnly || v.Vendor())
}

// secure sets the headers every console response carries.
func (c *Console) secure(next http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", csp)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "same-origin")
		h.Set("Cross-Origin-Opener-Policy", "same-origin")
		h.Set("Cross-Origin-Resource-Policy", "same-origin")
		h.Set("Strict-Transport-Security", "max-age=31536000")
		if h.Get("Cache-Control") == "" {
			h.Set("Cache-Control", "no-store")
		}
		next(w, r)
	})
}

// csp allows scripts, styles and connections from the platform itself
// only: no inline script or style (html/template escapes what reaches the
// markup; the policy stops what an escaping bug would let through).
const csp = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; " +
	"form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

// requireLogin serves h to a logged-in user; others are sent to /login
// (pages) or get 401 (the event stream and the API copy).
func (c *Console) requireLogin(h func(http.ResponseWriter, *http.Request, *Viewer)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		v, err := c.auth.viewer(r)
		if err != nil {
			if !errors.Is(err, errNoSession) {
				c.log.Error("console session lookup failed", "err", err)
			}
			if r.Method == http.MethodGet && r.URL.Path != "/events" && !strings.HasPrefix(r.URL.Path, "/ui/") {
				http.Redirect(w, r, "/login?next="+urlQueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
				return
			}
			http.Error(w, "log in first: "+"/login", http.StatusUnauthorized)
			return
		}
		h(w, r.WithContext(context.WithValue(r.Context(), viewerKey{}, v)), v)
	}
}

// requireCSRF refuses a state-changing request without the session's
// token (form field csrf or header X-CSRF-Token) or from another origin.
// The body is read (up to maxBody) only after the origin check.
func (c *Console) requireCSRF(maxBody int64, h func(http.ResponseWriter, *http.Request, *Viewer)) func(http.ResponseWriter, *http.Request, *Viewer) {
	return func(w http.ResponseWriter, r *http.Request, v *Viewer) {
		if !sameOrigin(r) {
			c.fail(w, r, v, http.StatusForbidden, "Refused: this request came from another site.")
			return
		}
		tok := r.Header.Get("X-CSRF-Token")
		if tok == "" {
			r.Body = http.MaxBytesReader(w, r.Body, maxBody)
			var err error
			if ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); ct == "multipart/form-data" {
				err = r.ParseMultipartForm(maxBody)
			} else {
				err = r.ParseForm()
			}
			if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
				c.fail(w, r, v, http.StatusRequestEntityTooLarge, fmt.Sprintf("Refused: the request is larger than %d KiB.", maxBody>>10))
				return
			}
			tok = r.PostFormValue("csrf")
		}
		if !equalToken(tok, v.CSRF) {
			c.fail(w, r, v, http.StatusForbidden, "Refused: the form was stale or forged (missing CSRF token). Reload the page and try again.")
			return
		}
		h(w, r, v)
	}
}

// maxForm bounds every form body the console reads (the claims CSV upload
// has its own, larger bound).
const maxForm = 64 << 10

// sameOrigin reports whether a state-changing request comes from the
// console's own pages: its Origin (sent by browsers on every POST) must be
// this host over https. A browser that withholds the origin ("null")
// still says where the request came from in Sec-Fetch-Site, which no page
// can forge.
func sameOrigin(r *http.Request) bool {
	switch o := r.Header.Get("Origin"); o {
	case "https://" + r.Host:
		return true
	case "", "null":
		return r.Header.Get("Sec-Fetch-Site") == "same-origin"
	}
	return false
}

// fail renders an error page.
func (c *Console) fail(w http.ResponseWriter, r *http.Request, v *Viewer, status int, msg string) {
	if strings.Contains(r.Header.Get("Accept"), "application/json") || r.Header.Get("X-CSRF-Token") != "" {
		writeJSON(w, status, map[string]string{"error": msg})
		return
	}
	c.render(w, r, v, status, "error", "Error", map[string]any{"Message": msg, "Status": status})
}

// audit records an entry; a failure to audit is logged loudly (the action
// it records has happened).
func (c *Console) audit(r *http.Request, actor, scope, action, target, detail string, ok bool) {
	e := store.AuditEntry{At: c.now(), Actor: actor, Scope: scope, Action: action, Target: target, Detail: detail, Remote: remoteHost(r), OK: ok}
	if err := c.opts.Store.AppendAudit(context.WithoutCancel(r.Context()), e); err != nil {
		c.log.Error("console audit entry not recorded", "action", action, "actor", actor, "err", err)
	}
}

func remoteHost(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// gatewayOf splits a measurement device path master/account/gateway/device.
func gatewayOf(path string) (gw, dev string, err error) {
	parts := strings.Split(path, "/")
	if len(parts) != 4 {
		return "", "", fmt.Errorf("a device path is master/account/gateway/device, not %q", path)
	}
	p, err := pki.ParsePath(strings.Join(parts[:3], "/"))
	if err != nil {
		return "", "", err
	}
	if err := pki.ValidateElement(parts[3]); err != nil {
		return "", "", err
	}
	return p.String(), parts[3], nil
}

func hexHash(b []byte) string { return hex.EncodeToString(b) }

// leafHash is the ledger leaf hash of a snapshot (for the proof checker).
func leafHash(rec store.SnapshotRecord) string {
	var h [32]byte
	copy(h[:], rec.Hash)
	return hex.EncodeToString(ledger.LeafHash(ledger.LeafData(rec.Gateway, h)))
}

func fingerprint(c *x509.Certificate) []byte {
	s := sha256.Sum256(c.Raw)
	return s[:]
}
