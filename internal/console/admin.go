package console

import (
	"cmp"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/claim"
	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/store"
)

type userRow struct {
	User        store.ConsoleUser
	ScopeName   string
	Credentials int
}

type adminView struct {
	Users         []userRow
	Certs         []store.Certificate
	Manufacturers []store.Manufacturer
	Rejects       []store.Reject
	Roles         []string
	Reasons       []string
	Invited       string // a link just created (shown once)
	InvitedEmail  string
	Message       string
	Vendor        bool
	CanRevoke     bool
	// ClaimProblems are the bad lines of a claims file just refused (the
	// first maxClaimProblems of them).
	ClaimProblems []string
	MoreProblems  int
	status        int // the response status; 0 is 200
}

// revokeReasons are the reasons the admin view offers (RFC 5280 names).
var revokeReasons = []string{"unspecified", "keyCompromise", "affiliationChanged", "superseded", "cessationOfOperation", "privilegeWithdrawn"}

const adminListLimit = 200

func (c *Console) admin(w http.ResponseWriter, r *http.Request, v *Viewer) {
	c.renderAdmin(w, r, v, adminView{})
}

func (c *Console) renderAdmin(w http.ResponseWriter, r *http.Request, v *Viewer, av adminView) {
	ctx := r.Context()
	av.Roles, av.Reasons, av.Vendor, av.CanRevoke = store.ConsoleRoles, revokeReasons, v.Vendor(), c.opts.Revoker != nil
	users, err := c.opts.Store.ConsoleUsers(ctx, v.User.Scope)
	if err != nil {
		c.serverError(w, r, v, err)
		return
	}
	for _, u := range users {
		cs, err := c.opts.Store.Credentials(ctx, u.ID)
		if err != nil {
			c.serverError(w, r, v, err)
			return
		}
		av.Users = append(av.Users, userRow{User: u, ScopeName: scopeName(u.Scope), Credentials: len(cs)})
	}
	certs, err := c.opts.Store.ListCertificates(ctx, store.CertFilter{Domain: string(pki.Transport), Kinds: []string{"leaf"}})
	if err != nil {
		c.serverError(w, r, v, err)
		return
	}
	for _, ce := range slices.Backward(certs) {
		if len(av.Certs) < adminListLimit && store.InScope(v.User.Scope, ce.Name) {
			av.Certs = append(av.Certs, ce)
		}
	}
	if v.Vendor() {
		if av.Manufacturers, err = c.opts.Store.Manufacturers(ctx); err != nil {
			c.serverError(w, r, v, err)
			return
		}
		rs, err := c.opts.Store.Rejects(ctx, c.now().Add(-7*24*time.Hour), time.Time{}, store.MaxLimit)
		if err != nil {
			c.serverError(w, r, v, err)
			return
		}
		av.Rejects = rs[max(0, len(rs)-100):]
		slices.Reverse(av.Rejects)
	}
	c.render(w, r, v, cmp.Or(av.status, http.StatusOK), "admin", "Admin", av)
}

func (c *Console) adminInvite(w http.ResponseWriter, r *http.Request, v *Viewer) {
	path := strings.TrimSpace(r.PostFormValue("path"))
	scope, err := ParseScope(path)
	if err != nil {
		c.badInput(w, r, v, err.Error())
		return
	}
	if !store.InScope(v.User.Scope, scope) || (scope == "" && !v.Vendor()) {
		c.badInput(w, r, v, fmt.Sprintf("You may invite people to %s and below only.", v.ScopeName()))
		return
	}
	inv, err := Invite(r.Context(), c.opts.Store, r.PostFormValue("email"), path, r.PostFormValue("role"), v.User.Email, remoteHost(r), c.now())
	if err != nil {
		var status = http.StatusBadRequest
		if !errors.Is(err, ErrUserMismatch) && !strings.Contains(err.Error(), "is not an email") && !strings.Contains(err.Error(), "role ") && !strings.Contains(err.Error(), "disabled") {
			c.serverError(w, r, v, err)
			return
		}
		c.fail(w, r, v, status, err.Error())
		return
	}
	c.renderAdmin(w, r, v, adminView{Invited: inv.Link("https://" + r.Host), InvitedEmail: inv.User.Email})
}

func (c *Console) adminDisable(w http.ResponseWriter, r *http.Request, v *Viewer) {
	email, err := ParseEmail(r.PostFormValue("email"))
	if err != nil {
		c.badInput(w, r, v, err.Error())
		return
	}
	u, err := c.opts.Store.ConsoleUserByEmail(r.Context(), email)
	if err != nil || !store.InScope(v.User.Scope, u.Scope) || (u.Scope == "" && !v.Vendor()) {
		c.fail(w, r, v, http.StatusNotFound, "No such user in your scope.")
		return
	}
	if _, err := Disable(r.Context(), c.opts.Store, email, v.User.Email, remoteHost(r), c.now()); err != nil {
		c.serverError(w, r, v, err)
		return
	}
	c.renderAdmin(w, r, v, adminView{Message: email + " is disabled; their sessions have ended."})
}

func (c *Console) adminRevoke(w http.ResponseWriter, r *http.Request, v *Viewer) {
	if c.opts.Revoker == nil {
		c.fail(w, r, v, http.StatusNotFound, "Revocation is not available here.")
		return
	}
	name := r.PostFormValue("name")
	p, err := pki.ParsePath(name)
	if err != nil {
		c.badInput(w, r, v, "name: "+err.Error())
		return
	}
	if !store.InScope(v.User.Scope, p.String()) {
		c.fail(w, r, v, http.StatusNotFound, "No such certificate in your scope.")
		return
	}
	reason, err := pki.ParseReason(r.PostFormValue("reason"))
	if err != nil || !slices.Contains(revokeReasons, r.PostFormValue("reason")) {
		c.badInput(w, r, v, "reason: use one of "+strings.Join(revokeReasons, ", "))
		return
	}
	revoked, err := c.opts.Revoker.RevokeName(r.Context(), p.String(), false, reason)
	if err != nil {
		c.audit(r, v.User.Email, p.String(), "cert-revoke", p.String(), err.Error(), false)
		c.fail(w, r, v, http.StatusBadRequest, "Revocation failed: "+err.Error())
		return
	}
	c.audit(r, v.User.Email, p.String(), "cert-revoke", p.String(), fmt.Sprintf("%d certificate(s), reason %s", len(revoked), pki.ReasonName(reason)), true)
	c.renderAdmin(w, r, v, adminView{Message: fmt.Sprintf("%s revoked (%d certificate(s)); live sessions end within about a second.", p, len(revoked))})
}

// maxClaimsUpload bounds a claims CSV uploaded from the admin view (some
// 60,000 devices; a larger file goes through 'fieldtrust device claim
// --csv'); maxClaimProblems bounds the bad lines shown.
const (
	maxClaimsUpload  = 4 << 20
	maxClaimProblems = 50
)

// adminClaims claims devices from an uploaded CSV file, checked by the
// same rule as 'fieldtrust device claim --csv' (package claim): every bad
// line is reported with its number and nothing is written unless the
// whole file is good. Claims concern every tenant: vendor admins only.
func (c *Console) adminClaims(w http.ResponseWriter, r *http.Request, v *Viewer) {
	f, _, err := r.FormFile("csv")
	if err != nil {
		c.badInput(w, r, v, "Choose a claims CSV file to upload (field csv).")
		return
	}
	defer f.Close()
	ctx := r.Context()
	existing, err := c.opts.Store.Claims(ctx)
	if err != nil {
		c.serverError(w, r, v, err)
		return
	}
	mfrs, err := c.opts.Store.Manufacturers(ctx)
	if err != nil {
		c.serverError(w, r, v, err)
		return
	}
	spec := strings.TrimSpace(r.PostFormValue("manufacturer"))
	if len(spec) > 200 {
		c.badInput(w, r, v, "manufacturer: at most 200 characters (a fingerprint or a subject).")
		return
	}
	cf, err := claim.ReadCSV(f, "the file", existing, mfrs, spec, c.now())
	if err != nil {
		c.badInput(w, r, v, err.Error()+".")
		return
	}
	if len(cf.Problems) > 0 {
		c.audit(r, v.User.Email, "", "claims-upload", "", fmt.Sprintf("%d bad line(s), nothing written", len(cf.Problems)), false)
		av := adminView{status: http.StatusBadRequest, Message: fmt.Sprintf("The claims file has %d bad line(s); nothing was written. Fix them and upload it again.", len(cf.Problems))}
		av.ClaimProblems = cf.Problems[:min(len(cf.Problems), maxClaimProblems)]
		av.MoreProblems = len(cf.Problems) - len(av.ClaimProblems)
		c.renderAdmin(w, r, v, av)
		return
	}
	if err := c.opts.Store.PutClaims(ctx, cf.Claims); err != nil {
		if errors.Is(err, store.ErrExists) {
			c.fail(w, r, v, http.StatusConflict, "A device in the file was claimed at the same time by another operator; nothing was written. Upload the file again to see which.")
			return
		}
		c.serverError(w, r, v, err)
		return
	}
	detail := fmt.Sprintf("%d claim(s), lines %d-%d", len(cf.Claims), cf.Lines[0], cf.Lines[len(cf.Lines)-1])
	c.audit(r, v.User.Email, "", "claims-upload", "", detail, true)
	c.renderAdmin(w, r, v, adminView{Message: fmt.Sprintf("Claimed %d device(s) (lines %d–%d); each enrolls with its onboarding certificate.", len(cf.Claims), cf.Lines[0], cf.Lines[len(cf.Lines)-1])})
}

// --- account ---

type accountView struct {
	Credentials []store.ConsoleCredential
	Sessions    int
}

func (c *Console) account(w http.ResponseWriter, r *http.Request, v *Viewer) {
	cs, err := c.opts.Store.Credentials(r.Context(), v.User.ID)
	if err != nil {
		c.serverError(w, r, v, err)
		return
	}
	n, err := c.opts.Store.SessionCount(r.Context(), v.User.ID, c.now())
	if err != nil {
		c.serverError(w, r, v, err)
		return
	}
	c.Render(w, r, v, "account", "Account", accountView{Credentials: cs, Sessions: n})
}
