package console

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net/mail"
	"slices"
	"strings"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/ident"
	"github.com/fieldtrust/fieldtrust/internal/store"
)

// Users is what managing console users needs of the store; the CLI
// ('fieldtrust user') and the admin view share these functions, so the
// rules live once.
type Users interface {
	CreateUser(ctx context.Context, u store.ConsoleUser) (store.ConsoleUser, error)
	ConsoleUserByEmail(ctx context.Context, email string) (store.ConsoleUser, error)
	CreateInvitation(ctx context.Context, inv store.ConsoleInvitation) error
	DisableUser(ctx context.Context, id int64, at time.Time) error
	AppendAudit(ctx context.Context, e store.AuditEntry) error
}

// VendorScope is how the vendor's admin scope is written on the command
// line and in forms (--path /).
const VendorScope = "/"

// ParseScope checks a user's identity path: "/" is the vendor's admin
// scope (stored as ""), anything else an identity path of 1 to 3 elements.
func ParseScope(path string) (string, error) {
	if path == VendorScope {
		return "", nil
	}
	if _, err := ident.SplitPath(path); err != nil {
		return "", fmt.Errorf("path %q: %v (or %q for the vendor's admin scope)", path, err, VendorScope)
	}
	return path, nil
}

// ParseEmail normalizes an email address (lower case, no display name).
func ParseEmail(s string) (string, error) {
	a, err := mail.ParseAddress(s)
	if err != nil || a.Name != "" || len(a.Address) > 254 || strings.ContainsAny(a.Address, " <>\"") {
		return "", fmt.Errorf("%q is not an email address such as anna@example.com", s)
	}
	return strings.ToLower(a.Address), nil
}

// ParseRole checks a console role.
func ParseRole(s string) (string, error) {
	if !slices.Contains(store.ConsoleRoles, s) {
		return "", fmt.Errorf("role %q: use %s", s, strings.Join(store.ConsoleRoles, ", "))
	}
	return s, nil
}

// Invitation is a one-time link's secret: to register a passkey (or bind
// a certificate), or for a login link, to log in once.
type Invitation struct {
	User      store.ConsoleUser
	Kind      string
	Token     string // goes into the link only (after '#', so no server log sees it); the store keeps its hash
	ExpiresAt time.Time
}

// Link is the invitation's URL on the console at base (https://host:port).
func (i Invitation) Link(base string) string {
	page := "/invite#"
	if i.Kind == store.InvitationLogin {
		page = "/login/link#"
	}
	return strings.TrimRight(base, "/") + page + i.Token
}

// ErrUserMismatch is returned by Invite when the email belongs to a user
// with another scope or role.
var ErrUserMismatch = errors.New("user exists with another scope or role")

// Invite creates the user (or finds the same user, to add a passkey) and
// a one-time invitation valid for InvitationTTL. by names who invites
// (an admin's email, or "cli").
func Invite(ctx context.Context, st Users, email, path, role, by, remote string, now time.Time) (Invitation, error) {
	return invite(ctx, st, store.InvitationRegister, email, path, role, by, remote, now)
}

// LoginLink is Invite for a one-time login link: it logs the user in once,
// without a passkey (the demo prints these, so that a newcomer is in with
// one click; the account page then offers to add a passkey).
func LoginLink(ctx context.Context, st Users, email, path, role, by string, now time.Time) (Invitation, error) {
	return invite(ctx, st, store.InvitationLogin, email, path, role, by, "", now)
}

func invite(ctx context.Context, st Users, kind, email, path, role, by, remote string, now time.Time) (Invitation, error) {
	email, err := ParseEmail(email)
	if err != nil {
		return Invitation{}, err
	}
	scope, err := ParseScope(path)
	if err != nil {
		return Invitation{}, err
	}
	if role, err = ParseRole(role); err != nil {
		return Invitation{}, err
	}
	u, err := st.ConsoleUserByEmail(ctx, email)
	switch {
	case errors.Is(err, store.ErrNotFound):
		u, err = st.CreateUser(ctx, store.ConsoleUser{Email: email, Scope: scope, Role: role, Handle: randomBytes(32), CreatedBy: by, CreatedAt: now})
		if err != nil {
			return Invitation{}, err
		}
	case err != nil:
		return Invitation{}, err
	case u.Disabled():
		return Invitation{}, fmt.Errorf("user %s is disabled; a disabled user stays disabled (invite another address)", email)
	case u.Scope != scope || u.Role != role:
		return Invitation{}, fmt.Errorf("%w: %s is bound to %s as %s", ErrUserMismatch, email, scopeName(u.Scope), u.Role)
	}
	tok := randomBytes(32)
	h := sha256.Sum256(tok)
	inv := Invitation{User: u, Kind: kind, Token: base64.RawURLEncoding.EncodeToString(tok), ExpiresAt: now.Add(InvitationTTL)}
	if err := st.CreateInvitation(ctx, store.ConsoleInvitation{TokenHash: h[:], UserID: u.ID, Kind: kind, CreatedBy: by, CreatedAt: now, ExpiresAt: inv.ExpiresAt}); err != nil {
		return Invitation{}, err
	}
	action := "user-invite"
	if kind == store.InvitationLogin {
		action = "login-link"
	}
	err = st.AppendAudit(ctx, store.AuditEntry{At: now, Actor: by, Scope: scope, Action: action, Target: email, Detail: role + " of " + scopeName(scope), Remote: remote, OK: true})
	return inv, err
}

// Disable disables the user with the email and ends its sessions at once.
func Disable(ctx context.Context, st Users, email, by, remote string, now time.Time) (store.ConsoleUser, error) {
	email, err := ParseEmail(email)
	if err != nil {
		return store.ConsoleUser{}, err
	}
	u, err := st.ConsoleUserByEmail(ctx, email)
	if err != nil {
		return u, fmt.Errorf("user %s: %w", email, err)
	}
	if err := st.DisableUser(ctx, u.ID, now); err != nil {
		return u, err
	}
	u.DisabledAt = now
	return u, st.AppendAudit(ctx, store.AuditEntry{At: now, Actor: by, Scope: u.Scope, Action: "user-disable", Target: email, Remote: remote, OK: true})
}
