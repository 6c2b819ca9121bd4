package console

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-webauthn/webauthn/protocol"
	"github.com/go-webauthn/webauthn/webauthn"
	"golang.org/x/time/rate"

	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/tacs"
	"github.com/fieldtrust/fieldtrust/internal/web"
)

// Cookie names. The __Host- prefix makes browsers refuse the cookie unless
// it is Secure, has Path=/ and no Domain: no other site or subdomain can
// set or overwrite it.
const (
	sessionCookie   = "__Host-fieldtrust-session"
	ceremonyCookie  = "__Host-fieldtrust-ceremony"
	ceremonyTTL     = 5 * time.Minute
	maxCeremonies   = 10000
	maxLimiters     = 10000
	maxRelyingParty = 64
)

var errNoSession = errors.New("no session")

// authenticator logs people in and keeps their sessions.
type authenticator struct {
	c   *Console
	ttl time.Duration

	mu         sync.Mutex
	ceremonies map[string]*ceremony
	limiters   map[string]*rate.Limiter
	rps        map[string]*webauthn.WebAuthn
	limit1     rate.Limit // failed attempts per second and client address
	burst1     int
}

// ceremony is a WebAuthn registration or login in progress (between its
// begin and finish requests), held in memory for ceremonyTTL, used once.
type ceremony struct {
	kind       string // "login", "register"
	session    webauthn.SessionData
	userID     int64
	invitation []byte // the invitation's token hash, for a registration from one
	expires    time.Time
}

func newAuthenticator(c *Console) (*authenticator, error) {
	a := &authenticator{c: c, ttl: c.opts.SessionTTL, ceremonies: map[string]*ceremony{}, limiters: map[string]*rate.Limiter{}, rps: map[string]*webauthn.WebAuthn{},
		limit1: rate.Limit(c.opts.LoginRate), burst1: c.opts.LoginBurst}
	if a.ttl <= 0 {
		a.ttl = DefaultSessionTTL
	}
	if a.limit1 <= 0 {
		a.limit1 = rate.Limit(10.0 / 60)
	}
	if a.burst1 <= 0 {
		a.burst1 = 10
	}
	return a, nil
}

func (a *authenticator) register(h func(string, http.HandlerFunc)) {
	h("GET /login", a.loginPage)
	h("POST /login/passkey/begin", a.limitedBegin(a.loginBegin))
	h("POST /login/passkey/finish", a.limited(a.loginFinish))
	h("POST /login/certificate", a.limited(a.loginCertificate))
	h("GET /login/link", a.loginLinkPage)
	h("POST /login/link", a.limited(a.loginLink))
	h("GET /invite", a.invitePage)
	h("POST /invite/info", a.limited(a.inviteInfo))
	h("POST /invite/passkey/begin", a.limitedBegin(a.inviteBegin))
	h("POST /invite/passkey/finish", a.limited(a.registerFinish))
	h("POST /invite/certificate", a.limited(a.inviteCertificate))
	h("POST /logout", a.c.requireLogin(a.c.requireCSRF(maxForm, a.logout)))
	h("POST /account/passkey/begin", a.c.requireLogin(a.c.requireCSRF(maxForm, a.accountBegin)))
	h("POST /account/passkey/finish", a.c.requireLogin(a.c.requireCSRF(maxForm, func(w http.ResponseWriter, r *http.Request, _ *Viewer) { a.registerFinish(w, r) })))
}

// viewer returns the logged-in user of the request.
func (a *authenticator) viewer(r *http.Request) (*Viewer, error) {
	ck, err := r.Cookie(sessionCookie)
	if err != nil || ck.Value == "" {
		return nil, errNoSession
	}
	tok, err := base64.RawURLEncoding.DecodeString(ck.Value)
	if err != nil || len(tok) != 32 {
		return nil, errNoSession
	}
	h := sha256.Sum256(tok)
	se, u, err := a.c.opts.Store.Session(r.Context(), h[:], a.c.now())
	if errors.Is(err, store.ErrNotFound) {
		return nil, errNoSession
	}
	if err != nil {
		return nil, err
	}
	subj := Subject(u)
	scope, ok := web.ReadScope(a.c.opts.Grants, subj)
	if !ok {
		return nil, fmt.Errorf("user %s: the admin role's grants do not read snapshots", u.Email)
	}
	return &Viewer{User: u, Session: se, Subject: subj, Scope: scope, CSRF: hex.EncodeToString(se.CSRF), grants: a.c.opts.Grants}, nil
}

// newSession logs u in: a fresh random token in the cookie, its hash in
// the store.
func (a *authenticator) newSession(w http.ResponseWriter, r *http.Request, u store.ConsoleUser, method string) error {
	tok, csrf := randomBytes(32), randomBytes(32)
	h := sha256.Sum256(tok)
	now := a.c.now()
	if err := a.c.opts.Store.CreateSession(r.Context(), store.ConsoleSession{TokenHash: h[:], UserID: u.ID, CSRF: csrf, Method: method, Remote: remoteHost(r), CreatedAt: now, ExpiresAt: now.Add(a.ttl)}); err != nil {
		return err
	}
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: base64.RawURLEncoding.EncodeToString(tok), Path: "/", MaxAge: int(a.ttl.Seconds()),
		HttpOnly: true, Secure: true, SameSite: http.SameSiteStrictMode})
	a.c.audit(r, u.Email, u.Scope, "login", u.Email, "by "+method, true)
	return nil
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b) // never fails (crypto/rand)
	return b
}

func equalToken(got, want string) bool {
	return want != "" && subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1
}

// limited bounds failed login attempts per client address: beyond the
// rate the request is refused with 429 and Retry-After, without a log
// line per attempt (a flood must not flood the log). An attempt that does
// not log in costs a token; one that does costs nothing, so a person who
// logs in often is never locked out. The bucket is read before the
// attempt and charged after it (concurrent attempts may overshoot by a
// few).
func (a *authenticator) limited(h http.HandlerFunc) http.HandlerFunc {
	return a.limit("attempt", a.limit1, a.burst1, true, h)
}

// limitedBegin bounds the ceremonies a client address may begin (each
// holds a challenge in memory for a few minutes): six times the failed
// attempts' budget, every one charged.
func (a *authenticator) limitedBegin(h http.HandlerFunc) http.HandlerFunc {
	return a.limit("begin", 6*a.limit1, 6*a.burst1, false, h)
}

func (a *authenticator) limit(kind string, lim rate.Limit, burst int, onlyFailures bool, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		l := a.limiter(kind+" "+remoteHost(r), lim, burst)
		if l.Tokens() < 1 {
			w.Header().Set("Retry-After", strconv.Itoa(int(1/float64(lim))+1))
			writeJSON(w, http.StatusTooManyRequests, map[string]string{"error": "too many login attempts from your address; wait a minute and try again"})
			return
		}
		rec := &loginRecorder{ResponseWriter: w}
		h(rec, r)
		if !onlyFailures || !rec.loggedIn {
			l.Allow()
		}
	}
}

// loginRecorder notes whether a response set a session cookie.
type loginRecorder struct {
	http.ResponseWriter
	loggedIn bool
}

func (l *loginRecorder) WriteHeader(code int) {
	if code < 400 && strings.Contains(strings.Join(l.Header().Values("Set-Cookie"), ";"), sessionCookie+"=") && !strings.Contains(strings.Join(l.Header().Values("Set-Cookie"), ";"), sessionCookie+"=;") {
		l.loggedIn = true
	}
	l.ResponseWriter.WriteHeader(code)
}

func (l *loginRecorder) Write(b []byte) (int, error) {
	return l.ResponseWriter.Write(b)
}

func (a *authenticator) limiter(key string, lim rate.Limit, burst int) *rate.Limiter {
	a.mu.Lock()
	defer a.mu.Unlock()
	l, ok := a.limiters[key]
	if !ok {
		if len(a.limiters) >= maxLimiters {
			// Forget the full buckets: they are the same as new ones.
			for k, v := range a.limiters {
				if v.Tokens() >= float64(v.Burst()) {
					delete(a.limiters, k)
				}
			}
			if len(a.limiters) >= maxLimiters {
				return rate.NewLimiter(0, 0) // under a flood of addresses, refuse new ones (0 tokens)
			}
		}
		l = rate.NewLimiter(lim, burst)
		a.limiters[key] = l
	}
	return l
}

// relyingParty returns the WebAuthn configuration for the host the
// browser used: passkeys are bound to its name (the RP ID) and every
// response must come from exactly this origin.
func (a *authenticator) relyingParty(r *http.Request) (*webauthn.WebAuthn, error) {
	host := r.Host
	name := host
	if h, _, err := net.SplitHostPort(host); err == nil {
		name = h
	}
	name = strings.ToLower(name)
	allowed := false
	for _, h := range a.c.opts.Hosts {
		if strings.EqualFold(h, name) {
			allowed = true
		}
	}
	if !allowed {
		if net.ParseIP(name) != nil {
			return nil, fmt.Errorf("passkeys need a host name, not the address %s: open the console at https://localhost%s or a --dns-name of the platform", name, portOf(host))
		}
		return nil, fmt.Errorf("host %q is not one of the platform's names (%s); open the console by one of those", name, strings.Join(a.c.opts.Hosts, ", "))
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if rp, ok := a.rps[host]; ok {
		return rp, nil
	}
	rp, err := webauthn.New(&webauthn.Config{RPID: name, RPDisplayName: "fieldtrust", RPOrigins: []string{"https://" + host},
		Timeouts: webauthn.TimeoutsConfig{Login: webauthn.TimeoutConfig{Enforce: true, Timeout: ceremonyTTL}, Registration: webauthn.TimeoutConfig{Enforce: true, Timeout: ceremonyTTL}}})
	if err != nil {
		return nil, fmt.Errorf("webauthn: %w", err)
	}
	if len(a.rps) < maxRelyingParty {
		a.rps[host] = rp
	}
	return rp, nil
}

func portOf(host string) string {
	if _, p, err := net.SplitHostPort(host); err == nil {
		return ":" + p
	}
	return ""
}

// startCeremony keeps a ceremony and sets its cookie.
func (a *authenticator) startCeremony(w http.ResponseWriter, cer *ceremony) {
	id := base64.RawURLEncoding.EncodeToString(randomBytes(24))
	cer.expires = a.c.now().Add(ceremonyTTL)
	a.mu.Lock()
	if len(a.ceremonies) >= maxCeremonies {
		now := a.c.now()
		for k, v := range a.ceremonies {
			if now.After(v.expires) {
				delete(a.ceremonies, k)
			}
		}
		if len(a.ceremonies) >= maxCeremonies {
			for k := range a.ceremonies { // drop an arbitrary one: memory stays bounded
				delete(a.ceremonies, k)
				break
			}
		}
	}
	a.ceremonies[id] = cer
	a.mu.Unlock()
	http.SetCookie(w, &http.Cookie{Name: ceremonyCookie, Value: id, Path: "/", MaxAge: int(ceremonyTTL.Seconds()), HttpOnly: true, Secure: true, SameSite: http.SameSiteStrictMode})
}

// takeCeremony removes and returns the request's ceremony of kind.
func (a *authenticator) takeCeremony(w http.ResponseWriter, r *http.Request, kind string) (*ceremony, bool) {
	ck, err := r.Cookie(ceremonyCookie)
	if err != nil {
		return nil, false
	}
	http.SetCookie(w, &http.Cookie{Name: ceremonyCookie, Value: "", Path: "/", MaxAge: -1, HttpOnly: true, Secure: true, SameSite: http.SameSiteStrictMode})
	a.mu.Lock()
	cer, ok := a.ceremonies[ck.Value]
	delete(a.ceremonies, ck.Value)
	a.mu.Unlock()
	if !ok || cer.kind != kind || a.c.now().After(cer.expires) {
		return nil, false
	}
	return cer, true
}

// safeNext is the local path to go to after login ("/fleet" unless next is
// a path on this site).
func safeNext(next string) string {
	if !strings.HasPrefix(next, "/") || strings.HasPrefix(next, "//") || strings.HasPrefix(next, "/\\") || strings.ContainsAny(next, "\r\n") {
		return "/fleet"
	}
	return next
}

type loginView struct {
	Next        string
	Certificate string // the CN of a certificate the browser presented
	HostHint    string // why passkeys will not work on this host
}

func (a *authenticator) loginPage(w http.ResponseWriter, r *http.Request) {
	if v, err := a.viewer(r); err == nil {
		http.Redirect(w, r, safeNext(r.URL.Query().Get("next")), http.StatusSeeOther)
		_ = v
		return
	}
	lv := loginView{Next: safeNext(r.URL.Query().Get("next"))}
	if _, cert, ok := a.certificate(r); ok {
		lv.Certificate = cert.Subject.CommonName
	}
	if _, err := a.relyingParty(r); err != nil {
		lv.HostHint = err.Error()
	}
	a.c.render(w, r, nil, http.StatusOK, "login", "Log in", lv)
}

func (a *authenticator) certificate(r *http.Request) (tacs.Subject, *certInfo, bool) {
	if a.c.opts.CertSubject == nil {
		return tacs.Subject{}, nil, false
	}
	s, c, ok := a.c.opts.CertSubject(r)
	if !ok {
		return tacs.Subject{}, nil, false
	}
	return s, &certInfo{Subject: c.Subject, Fingerprint: fingerprint(c), NotAfter: c.NotAfter}, true
}

type certInfo struct {
	Subject     pkix.Name
	Fingerprint []byte
	NotAfter    time.Time
}

// jsonError answers a JSON endpoint.
func jsonError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}

// decodeJSON reads a small JSON body into v.
func decodeJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	r.Body = http.MaxBytesReader(w, r.Body, maxForm)
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		jsonError(w, http.StatusBadRequest, "the request body must be a small JSON object: "+err.Error())
		return false
	}
	return true
}

func (a *authenticator) loginBegin(w http.ResponseWriter, r *http.Request) {
	if !sameOrigin(r) {
		jsonError(w, http.StatusForbidden, "refused: this request came from another site")
		return
	}
	rp, err := a.relyingParty(r)
	if err != nil {
		jsonError(w, http.StatusBadRequest, err.Error())
		return
	}
	opts, sess, err := rp.BeginDiscoverableLogin(webauthn.WithUserVerification(protocol.VerificationPreferred))
	if err != nil {
		a.c.log.Error("webauthn begin login", "err", err)
		jsonError(w, http.StatusInternalServerError, "internal error; the platform log has the details")
		return
	}
	a.startCeremony(w, &ceremony{kind: "login", session: *sess})
	writeJSON(w, http.StatusOK, opts)
}

func (a *authenticator) loginFinish(w http.ResponseWriter, r *http.Request) {
	if !sameOrigin(r) {
		jsonError(w, http.StatusForbidden, "refused: this request came from another site")
		return
	}
	rp, err := a.relyingParty(r)
	if err != nil {
		jsonError(w, http.StatusBadRequest, err.Error())
		return
	}
	cer, ok := a.takeCeremony(w, r, "login")
	if !ok {
		jsonError(w, http.StatusBadRequest, "the login took too long or was already used; reload the page and try again")
		return
	}
	ctx := r.Context()
	var (
		user   store.ConsoleUser
		stored store.ConsoleCredential
	)
	r.Body = http.MaxBytesReader(w, r.Body, maxForm)
	_, cred, err := rp.FinishPasskeyLogin(func(rawID, userHandle []byte) (webauthn.User, error) {
		c, err := a.c.opts.Store.Credential(ctx, rawID)
		if err != nil || c.Kind != store.CredentialPasskey {
			return nil, errors.New("unknown passkey")
		}
		u, err := a.c.opts.Store.ConsoleUser(ctx, c.UserID)
		if err != nil {
			return nil, errors.New("unknown user")
		}
		if u.Disabled() {
			return nil, errors.New("user is disabled")
		}
		if !bytes.Equal(u.Handle, userHandle) {
			return nil, errors.New("the passkey belongs to another user")
		}
		wu, err := a.webauthnUser(ctx, u)
		if err != nil {
			return nil, err
		}
		user, stored = u, c
		return wu, nil
	}, cer.session, r)
	if err != nil {
		actor := "unknown"
		if user.Email != "" {
			actor = user.Email
		}
		a.c.audit(r, actor, user.Scope, "login-failed", actor, "passkey: "+webauthnError(err), false)
		jsonError(w, http.StatusUnauthorized, "login failed: "+webauthnError(err))
		return
	}
	if cred.Authenticator.CloneWarning {
		a.c.audit(r, user.Email, user.Scope, "login-failed", user.Email, fmt.Sprintf("passkey sign counter went from %d to %d: a cloned authenticator or a replay", stored.SignCount, cred.Authenticator.SignCount), false)
		jsonError(w, http.StatusUnauthorized, "login refused: this passkey's signature counter did not increase (a copied authenticator?); ask an administrator")
		return
	}
	data, err := json.Marshal(cred)
	if err == nil {
		err = a.c.opts.Store.UseCredential(ctx, stored.ID, stored.SignCount, cred.Authenticator.SignCount, data, a.c.now())
	}
	if errors.Is(err, store.ErrConflict) {
		a.c.audit(r, user.Email, user.Scope, "login-failed", user.Email, "passkey used by two logins at once", false)
		jsonError(w, http.StatusUnauthorized, "login refused: the passkey was used by another login at the same moment; try again")
		return
	}
	if err == nil {
		err = a.newSession(w, r, user, "passkey")
	}
	if err != nil {
		a.c.log.Error("console login", "user", user.Email, "err", err)
		jsonError(w, http.StatusInternalServerError, "internal error; the platform log has the details")
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"next": "/fleet"})
}

// webauthnError is a short reason for a failed ceremony.
func webauthnError(err error) string {
	var pe *protocol.Error
	if errors.As(err, &pe) {
		if pe.Details != "" {
			return pe.Details
		}
		return pe.Type
	}
	return err.Error()
}

// waUser adapts a console user to the WebAuthn library.
type waUser struct {
	u     store.ConsoleUser
	creds []webauthn.Credential
}

func (w waUser) WebAuthnID() []byte                         { return w.u.Handle }
func (w waUser) WebAuthnName() string                       { return w.u.Email }
func (w waUser) WebAuthnDisplayName() string                { return w.u.Email }
func (w waUser) WebAuthnCredentials() []webauthn.Credential { return w.creds }

func (a *authenticator) webauthnUser(ctx context.Context, u store.ConsoleUser) (waUser, error) {
	cs, err := a.c.opts.Store.Credentials(ctx, u.ID)
	if err != nil {
		return waUser{}, err
	}
	wu := waUser{u: u}
	for _, c := range cs {
		if c.Kind != store.CredentialPasskey {
			continue
		}
		var wc webauthn.Credential
		if err := json.Unmarshal(c.Data, &wc); err != nil {
			return waUser{}, fmt.Errorf("stored passkey of %s: %w", u.Email, err)
		}
		wu.creds = append(wu.creds, wc)
	}
	return wu, nil
}

func (a *authenticator) loginCertificate(w http.ResponseWriter, r *http.Request) {
	if !sameOrigin(r) {
		a.c.fail(w, r, nil, http.StatusForbidden, "Refused: this request came from another site.")
		return
	}
	subj, cert, ok := a.certificate(r)
	if !ok {
		a.c.fail(w, r, nil, http.StatusUnauthorized, "Your browser presented no client certificate of this platform. Import your identity.p12 ('fieldtrust pki issue ... --p12') and reload.")
		return
	}
	ctx := r.Context()
	c, err := a.c.opts.Store.Credential(ctx, cert.Fingerprint)
	if err != nil || c.Kind != store.CredentialCertificate {
		a.c.audit(r, "unknown", subjectScope(subj), "login-failed", cert.Subject.CommonName, "certificate not bound to a console user", false)
		a.c.fail(w, r, nil, http.StatusUnauthorized, "The certificate "+cert.Subject.CommonName+" is not bound to a console user. Use it once with an invitation link to bind it.")
		return
	}
	u, err := a.c.opts.Store.ConsoleUser(ctx, c.UserID)
	if err != nil || u.Disabled() || !covers(a.c.opts.Grants, subj, u.Scope) {
		a.c.audit(r, u.Email, u.Scope, "login-failed", cert.Subject.CommonName, "certificate login refused (user disabled, or the certificate no longer covers the user's scope)", false)
		a.c.fail(w, r, nil, http.StatusUnauthorized, "Login refused for this certificate. Ask an administrator.")
		return
	}
	if err := a.c.opts.Store.UseCredential(ctx, c.ID, c.SignCount, c.SignCount, c.Data, a.c.now()); err != nil && !errors.Is(err, store.ErrConflict) {
		a.c.log.Warn("console: certificate use not recorded", "err", err)
	}
	if err := a.newSession(w, r, u, "certificate"); err != nil {
		a.c.log.Error("console login", "user", u.Email, "err", err)
		a.c.fail(w, r, nil, http.StatusInternalServerError, "Internal error; the platform log has the details.")
		return
	}
	http.Redirect(w, r, safeNext(r.PostFormValue("next")), http.StatusSeeOther)
}

// covers reports whether a certificate's subject sees at least the scope
// a user is bound to, by TACS: a certificate may stand in for a user only
// if it could read everything the user can.
func covers(g tacs.Grants, certSubject tacs.Subject, scope string) bool {
	filter := "#"
	if scope != "" {
		filter = scope + "/#"
	}
	return tacs.Authorize(g, certSubject, tacs.Subscribe, filter).Allowed
}

func subjectScope(s tacs.Subject) string {
	if s.IsService() {
		return ""
	}
	return s.Path
}

func (a *authenticator) logout(w http.ResponseWriter, r *http.Request, v *Viewer) {
	everywhere := r.PostFormValue("everywhere") == "1"
	var err error
	n := 1
	if everywhere {
		n, err = a.c.opts.Store.DeleteSessions(r.Context(), v.User.ID)
	} else {
		err = a.c.opts.Store.DeleteSession(r.Context(), v.Session.TokenHash)
	}
	if err != nil {
		a.c.fail(w, r, v, http.StatusInternalServerError, "Logout failed; try again.")
		return
	}
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: "", Path: "/", MaxAge: -1, HttpOnly: true, Secure: true, SameSite: http.SameSiteStrictMode})
	a.c.audit(r, v.User.Email, v.User.Scope, "logout", v.User.Email, fmt.Sprintf("%d session(s) ended", n), true)
	http.Redirect(w, r, "/login", http.StatusSeeOther)
}

func (a *authenticator) loginLinkPage(w http.ResponseWriter, r *http.Request) {
	a.c.render(w, r, nil, http.StatusOK, "loginlink", "Log in", nil)
}

// loginLink spends a one-time login link.
func (a *authenticator) loginLink(w http.ResponseWriter, r *http.Request) {
	var req inviteRequest
	if !sameOrigin(r) {
		jsonError(w, http.StatusForbidden, "refused: this request came from another site")
		return
	}
	if !decodeJSON(w, r, &req) {
		return
	}
	refused := "this login link is unknown, was used already or has expired; links work once"
	tok, err := base64.RawURLEncoding.DecodeString(req.Token)
	if err != nil || len(tok) != 32 {
		jsonError(w, http.StatusGone, refused)
		return
	}
	h := sha256.Sum256(tok)
	inv, err := a.c.opts.Store.ConsumeInvitation(r.Context(), h[:], store.InvitationLogin, a.c.now())
	if err != nil {
		a.c.audit(r, "unknown", "", "login-failed", "login link", "unknown, used or expired link", false)
		jsonError(w, http.StatusGone, refused)
		return
	}
	u, err := a.c.opts.Store.ConsoleUser(r.Context(), inv.UserID)
	if err != nil || u.Disabled() {
		jsonError(w, http.StatusGone, refused)
		return
	}
	if err := a.newSession(w, r, u, "link"); err != nil {
		jsonError(w, http.StatusInternalServerError, "internal error; the platform log has the details")
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"next": "/fleet"})
}

// --- invitations ---

func (a *authenticator) invitePage(w http.ResponseWriter, r *http.Request) {
	lv := loginView{}
	if _, err := a.relyingParty(r); err != nil {
		lv.HostHint = err.Error()
	}
	a.c.render(w, r, nil, http.StatusOK, "invite", "Welcome", lv)
}

type inviteRequest struct {
	Token string `json:"token"`
}

// invitation resolves the token of an invitation link to its user; the
// error is what the person is told.
func (a *authenticator) invitation(ctx context.Context, token string) (store.ConsoleInvitation, store.ConsoleUser, error) {
	refused := errors.New("this invitation is unknown, was used already or has expired (a link is valid for 72 hours, once); ask your administrator for a new one")
	tok, err := base64.RawURLEncoding.DecodeString(token)
	if err != nil || len(tok) != 32 {
		return store.ConsoleInvitation{}, store.ConsoleUser{}, refused
	}
	h := sha256.Sum256(tok)
	inv, err := a.c.opts.Store.Invitation(ctx, h[:])
	if err != nil || inv.Kind != store.InvitationRegister || !inv.UsedAt.IsZero() || !a.c.now().Before(inv.ExpiresAt) {
		return inv, store.ConsoleUser{}, refused
	}
	u, err := a.c.opts.Store.ConsoleUser(ctx, inv.UserID)
	if err != nil || u.Disabled() {
		return inv, u, refused
	}
	return inv, u, nil
}

func (a *authenticator) inviteInfo(w http.ResponseWriter, r *http.Request) {
	var req inviteRequest
	if !sameOrigin(r) {
		jsonError(w, http.StatusForbidden, "refused: this request came from another site")
		return
	}
	if !decodeJSON(w, r, &req) {
		return
	}
	_, u, err := a.invitation(r.Context(), req.Token)
	if err != nil {
		jsonError(w, http.StatusGone, err.Error())
		return
	}
	out := map[string]string{"email": u.Email, "scope": scopeName(u.Scope), "role": u.Role}
	if subj, cert, ok := a.certificate(r); ok && covers(a.c.opts.Grants, subj, u.Scope) {
		out["certificate"] = cert.Subject.CommonName
	}
	writeJSON(w, http.StatusOK, out)
}

func (a *authenticator) inviteBegin(w http.ResponseWriter, r *http.Request) {
	var req inviteRequest
	if !sameOrigin(r) {
		jsonError(w, http.StatusForbidden, "refused: this request came from another site")
		return
	}
	if !decodeJSON(w, r, &req) {
		return
	}
	inv, u, err := a.invitation(r.Context(), req.Token)
	if err != nil {
		jsonError(w, http.StatusGone, err.Error())
		return
	}
	a.beginRegistration(w, r, u, inv.TokenHash)
}

func (a *authenticator) accountBegin(w http.ResponseWriter, r *http.Request, v *Viewer) {
	a.beginRegistration(w, r, v.User, nil)
}

func (a *authenticator) beginRegistration(w http.ResponseWriter, r *http.Request, u store.ConsoleUser, invitation []byte) {
	rp, err := a.relyingParty(r)
	if err != nil {
		jsonError(w, http.StatusBadRequest, err.Error())
		return
	}
	wu, err := a.webauthnUser(r.Context(), u)
	if err != nil {
		a.c.log.Error("console registration", "user", u.Email, "err", err)
		jsonError(w, http.StatusInternalServerError, "internal error; the platform log has the details")
		return
	}
	opts, sess, err := rp.BeginRegistration(wu,
		webauthn.WithResidentKeyRequirement(protocol.ResidentKeyRequirementRequired),
		webauthn.WithExclusions(webauthn.Credentials(wu.creds).CredentialDescriptors()),
		webauthn.WithConveyancePreference(protocol.PreferNoAttestation))
	if err != nil {
		a.c.log.Error("webauthn begin registration", "err", err)
		jsonError(w, http.StatusInternalServerError, "internal error; the platform log has the details")
		return
	}
	a.startCeremony(w, &ceremony{kind: "register", session: *sess, userID: u.ID, invitation: invitation})
	writeJSON(w, http.StatusOK, opts)
}

// registerFinish completes a passkey registration: from an invitation
// (which it consumes in the same transaction, so a link registers one
// passkey, once) or from a logged-in user's account page.
func (a *authenticator) registerFinish(w http.ResponseWriter, r *http.Request) {
	if !sameOrigin(r) {
		jsonError(w, http.StatusForbidden, "refused: this request came from another site")
		return
	}
	rp, err := a.relyingParty(r)
	if err != nil {
		jsonError(w, http.StatusBadRequest, err.Error())
		return
	}
	cer, ok := a.takeCeremony(w, r, "register")
	if !ok {
		jsonError(w, http.StatusBadRequest, "the registration took too long or was already used; reload the page and try again")
		return
	}
	ctx := r.Context()
	if v, ok := viewerFrom(ctx); ok && v.User.ID != cer.userID {
		jsonError(w, http.StatusForbidden, "this registration was started for another user")
		return
	}
	u, err := a.c.opts.Store.ConsoleUser(ctx, cer.userID)
	if err != nil || u.Disabled() {
		jsonError(w, http.StatusGone, "this user is disabled")
		return
	}
	wu, err := a.webauthnUser(ctx, u)
	if err != nil {
		jsonError(w, http.StatusInternalServerError, "internal error; the platform log has the details")
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxForm)
	cred, err := rp.FinishRegistration(wu, cer.session, r)
	if err != nil {
		a.c.audit(r, u.Email, u.Scope, "passkey-register-failed", u.Email, webauthnError(err), false)
		jsonError(w, http.StatusBadRequest, "registration failed: "+webauthnError(err))
		return
	}
	data, err := json.Marshal(cred)
	if err != nil {
		jsonError(w, http.StatusInternalServerError, "internal error")
		return
	}
	sc := store.ConsoleCredential{ID: cred.ID, UserID: u.ID, Kind: store.CredentialPasskey, Name: "passkey " + a.c.now().UTC().Format("2006-01-02 15:04"), Data: data, SignCount: cred.Authenticator.SignCount}
	if err := a.c.opts.Store.AddCredential(ctx, sc, cer.invitation, a.c.now()); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			jsonError(w, http.StatusGone, "this invitation was used already or has expired; ask your administrator for a new one")
			return
		}
		if errors.Is(err, store.ErrExists) {
			jsonError(w, http.StatusConflict, "this passkey is registered already")
			return
		}
		a.c.log.Error("console: store passkey", "user", u.Email, "err", err)
		jsonError(w, http.StatusInternalServerError, "internal error; the platform log has the details")
		return
	}
	a.c.audit(r, u.Email, u.Scope, "passkey-register", u.Email, sc.Name, true)
	if _, ok := viewerFrom(ctx); !ok {
		if err := a.newSession(w, r, u, "passkey"); err != nil {
			jsonError(w, http.StatusInternalServerError, "internal error; the platform log has the details")
			return
		}
	}
	writeJSON(w, http.StatusOK, map[string]string{"next": "/fleet"})
}

// inviteCertificate binds the client certificate the browser presents to
// the invited user (consuming the invitation) and logs them in.
func (a *authenticator) inviteCertificate(w http.ResponseWriter, r *http.Request) {
	var req inviteRequest
	if !sameOrigin(r) {
		jsonError(w, http.StatusForbidden, "refused: this request came from another site")
		return
	}
	if !decodeJSON(w, r, &req) {
		return
	}
	inv, u, err := a.invitation(r.Context(), req.Token)
	if err != nil {
		jsonError(w, http.StatusGone, err.Error())
		return
	}
	subj, cert, ok := a.certificate(r)
	if !ok {
		jsonError(w, http.StatusUnauthorized, "your browser presented no client certificate of this platform")
		return
	}
	if !covers(a.c.opts.Grants, subj, u.Scope) {
		jsonError(w, http.StatusForbidden, fmt.Sprintf("the certificate %s does not cover %s, the scope of this account", cert.Subject.CommonName, scopeName(u.Scope)))
		return
	}
	sc := store.ConsoleCredential{ID: cert.Fingerprint, UserID: u.ID, Kind: store.CredentialCertificate, Name: "certificate " + cert.Subject.CommonName, Data: []byte("{}")}
	if err := a.c.opts.Store.AddCredential(r.Context(), sc, inv.TokenHash, a.c.now()); err != nil {
		status, msg := http.StatusInternalServerError, "internal error; the platform log has the details"
		switch {
		case errors.Is(err, store.ErrNotFound):
			status, msg = http.StatusGone, "this invitation was used already or has expired"
		case errors.Is(err, store.ErrExists):
			status, msg = http.StatusConflict, "this certificate is bound to a console user already"
		}
		jsonError(w, status, msg)
		return
	}
	a.c.audit(r, u.Email, u.Scope, "certificate-bind", u.Email, sc.Name, true)
	if err := a.newSession(w, r, u, "certificate"); err != nil {
		jsonError(w, http.StatusInternalServerError, "internal error; the platform log has the details")
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"next": "/fleet"})
}
