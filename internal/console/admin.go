package console

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

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
	c.Render(w, r, v, "admin", "Admin", av)
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
