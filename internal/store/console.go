package store

import (
	"context"
	"time"
)

// Console roles: what a person may do inside what their scope lets them
// see. What they see is decided by TACS from the scope, exactly as for a
// certificate of that path; the role only narrows the actions.
const (
	RoleViewer   = "viewer"   // reads
	RoleOperator = "operator" // reads, acknowledges alarms, sends commands
	RoleAdmin    = "admin"    // and manages users, certificates and claims
)

// ConsoleRoles lists the console roles, weakest first.
var ConsoleRoles = []string{RoleViewer, RoleOperator, RoleAdmin}

// Credential kinds.
const (
	CredentialPasskey     = "passkey"     // a WebAuthn public key credential
	CredentialCertificate = "certificate" // a transport client certificate, by fingerprint
)

// ConsoleUser is a person who logs into the web console. Scope is the
// identity path the user is bound to ("acme-pumps",
// "acme-pumps/plant-berlin"), or "" for the vendor's admin scope.
// Times are whole seconds in UTC.
type ConsoleUser struct {
	ID         int64
	Email      string
	Scope      string
	Role       string
	Handle     []byte // the WebAuthn user handle: random, never the email
	CreatedBy  string
	CreatedAt  time.Time
	DisabledAt time.Time // zero unless disabled
}

// Disabled reports whether the user has been disabled.
func (u ConsoleUser) Disabled() bool { return !u.DisabledAt.IsZero() }

// ConsoleCredential is one way a user logs in: a passkey (ID is the
// WebAuthn credential id, Data the library's credential record) or a
// client certificate (ID is the certificate's SHA-256 fingerprint).
type ConsoleCredential struct {
	ID         []byte
	UserID     int64
	Kind       string
	Name       string // shown to the user: "passkey 2026-12-01", the certificate's CN
	Data       []byte
	SignCount  uint32 // the WebAuthn signature counter last seen
	CreatedAt  time.Time
	LastUsedAt time.Time // zero if never used
}

// ConsoleInvitation is a one-time link to register a first (or another)
// credential; only the SHA-256 of its token is stored.
type ConsoleInvitation struct {
	TokenHash []byte
	UserID    int64
	Kind      string // InvitationRegister or InvitationLogin
	CreatedBy string
	CreatedAt time.Time
	ExpiresAt time.Time
	UsedAt    time.Time // zero while unused
}

// Invitation kinds.
const (
	InvitationRegister = "register" // registers a passkey or binds a certificate
	InvitationLogin    = "login"    // logs in once (the demo's links)
)

// ConsoleSession is a logged-in browser; only the SHA-256 of its cookie
// token is stored.
type ConsoleSession struct {
	TokenHash []byte
	UserID    int64
	CSRF      []byte // the session's anti-CSRF secret
	Method    string // how the user logged in: passkey, certificate, link
	Remote    string
	CreatedAt time.Time
	ExpiresAt time.Time
}

// AuditEntry is one login or administrative action.
type AuditEntry struct {
	ID     int64
	At     time.Time
	Actor  string // the user's email, or "cli" for the operator command line
	Scope  string // the identity path the action concerns ("" for the vendor scope): who may read the entry
	Action string // login, login-failed, logout, user-invite, user-disable, cert-revoke, ...
	Target string
	Detail string
	Remote string
	OK     bool
}

// Console stores the web console's people, their credentials, invitations,
// sessions and audit log. Reads that list take a scope ("" for all, else an
// identity path, as in Snapshots) and return what lies in or below it.
type Console interface {
	// CreateUser records a user and returns it with ID set; ErrExists if
	// the email is taken.
	CreateUser(ctx context.Context, u ConsoleUser) (ConsoleUser, error)
	// ConsoleUser returns the user with the id, or ErrNotFound.
	ConsoleUser(ctx context.Context, id int64) (ConsoleUser, error)
	// ConsoleUserByEmail returns the user with the email, or ErrNotFound.
	ConsoleUserByEmail(ctx context.Context, email string) (ConsoleUser, error)
	// ConsoleUsers returns the users whose scope is in scope, by email.
	ConsoleUsers(ctx context.Context, scope string) ([]ConsoleUser, error)
	// DisableUser marks the user disabled and ends all its sessions in
	// the same transaction. Disabling a disabled user keeps the first time.
	DisableUser(ctx context.Context, id int64, at time.Time) error

	// CreateInvitation records an invitation.
	CreateInvitation(ctx context.Context, inv ConsoleInvitation) error
	// Invitation returns the invitation with the token hash, used or not,
	// or ErrNotFound.
	Invitation(ctx context.Context, tokenHash []byte) (ConsoleInvitation, error)
	// AddCredential adds a credential. With a non-nil invitation it
	// consumes that invitation (of kind InvitationRegister) in the same
	// transaction: if it is unknown, used, expired at at, of another kind
	// or for another user, nothing is added and the error wraps
	// ErrNotFound. ErrExists if the credential id is taken.
	AddCredential(ctx context.Context, c ConsoleCredential, invitation []byte, at time.Time) error
	// ConsumeInvitation marks an unused, unexpired invitation of kind used
	// at at and returns it; else an error wrapping ErrNotFound.
	ConsumeInvitation(ctx context.Context, tokenHash []byte, kind string, at time.Time) (ConsoleInvitation, error)
	// Credential returns the credential with the id, or ErrNotFound.
	Credential(ctx context.Context, id []byte) (ConsoleCredential, error)
	// Credentials returns the user's credentials, oldest first.
	Credentials(ctx context.Context, userID int64) ([]ConsoleCredential, error)
	// UseCredential records a login with the credential: its sign counter
	// moves from old to count and its data is replaced, only if the
	// counter still is old (else ErrConflict: another login raced it).
	UseCredential(ctx context.Context, id []byte, old, count uint32, data []byte, at time.Time) error
	// DeleteCredential removes one of the user's credentials; ErrNotFound
	// if the user has no such credential.
	DeleteCredential(ctx context.Context, userID int64, id []byte) error

	// CreateSession records a session.
	CreateSession(ctx context.Context, s ConsoleSession) error
	// Session returns the session with the token hash and its user, if it
	// has not expired at now and the user is not disabled; else
	// ErrNotFound.
	Session(ctx context.Context, tokenHash []byte, now time.Time) (ConsoleSession, ConsoleUser, error)
	// DeleteSession ends one session (no error if there is none).
	DeleteSession(ctx context.Context, tokenHash []byte) error
	// DeleteSessions ends every session of the user and returns how many.
	DeleteSessions(ctx context.Context, userID int64) (int, error)
	// SessionCount returns the number of the user's live sessions at now.
	SessionCount(ctx context.Context, userID int64, now time.Time) (int, error)

	// AppendAudit records an audit entry (text stored as SafeText).
	AppendAudit(ctx context.Context, e AuditEntry) error
	// AuditLog returns entries whose scope is in scope, newest first,
	// with ID < before (0: from the newest), at most EffectiveLimit(limit).
	AuditLog(ctx context.Context, scope string, before int64, limit int) ([]AuditEntry, error)

	// TreeHeads returns signed tree heads with Size < before (0: from
	// the latest), largest first, at most EffectiveLimit(limit).
	TreeHeads(ctx context.Context, before uint64, limit int) ([]TreeHead, error)
}

// Live is what the console's live view polls: snapshots in the order the
// ledger recorded them.
type Live interface {
	// SnapshotsSince returns the snapshots in scope whose ledger index is
	// at least from, by ledger index, at most EffectiveLimit(limit).
	SnapshotsSince(ctx context.Context, scope string, from uint64, limit int) ([]SnapshotRecord, error)
}

// SeriesQuery selects one channel of one measurement device over
// From <= Time < To (both required), for charts.
type SeriesQuery struct {
	Scope, Gateway, Device, Channel string
	From, To                        time.Time
}

// Series reads a channel's values without building whole records: a day of
// 1 Hz data is 86,400 snapshots, and a chart needs only (time, value).
type Series interface {
	// ChannelSeries calls each with the time and value of q's channel in
	// every snapshot of q's device in range, in time order, and returns
	// how many values it passed. A gateway outside q.Scope, an unknown
	// device or channel give none.
	ChannelSeries(ctx context.Context, q SeriesQuery, each func(t time.Time, v float64)) (int, error)
}
