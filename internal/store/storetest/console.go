package storetest

import (
	"bytes"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/store"
)

func runConsole(t *testing.T, open func(t *testing.T) store.Store) {
	t.Run("ConsoleUsers", func(t *testing.T) { testConsoleUsers(t, open(t)) })
	t.Run("ConsoleInvitations", func(t *testing.T) { testConsoleInvitations(t, open(t)) })
	t.Run("ConsoleSessions", func(t *testing.T) { testConsoleSessions(t, open(t)) })
	t.Run("ConsoleAudit", func(t *testing.T) { testConsoleAudit(t, open(t)) })
	t.Run("TreeHeads", func(t *testing.T) { testTreeHeads(t, open(t)) })
	t.Run("SnapshotsSince", func(t *testing.T) { testSnapshotsSince(t, open(t)) })
	t.Run("ChannelSeries", func(t *testing.T) { testChannelSeries(t, open(t)) })
}

func mustUser(t *testing.T, s store.Store, email, scope, role string) store.ConsoleUser {
	t.Helper()
	u, err := s.CreateUser(t.Context(), store.ConsoleUser{Email: email, Scope: scope, Role: role, Handle: []byte("h-" + email), CreatedBy: "cli", CreatedAt: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func testConsoleUsers(t *testing.T, s store.Store) {
	ctx := t.Context()
	a := mustUser(t, s, "a@acme.example", "acme", store.RoleAdmin)
	mustUser(t, s, "b@acme.example", "acme/berlin", store.RoleViewer)
	mustUser(t, s, "c@acme10.example", "acme10", store.RoleViewer)
	mustUser(t, s, "root@vendor.example", "", store.RoleAdmin)
	if _, err := s.CreateUser(ctx, store.ConsoleUser{Email: "a@acme.example", Scope: "x", Role: "viewer", Handle: []byte("other")}); !errors.Is(err, store.ErrExists) {
		t.Fatalf("second user with the same email: err = %v, want ErrExists", err)
	}
	got, err := s.ConsoleUserByEmail(ctx, "a@acme.example")
	if err != nil || got.ID != a.ID || got.Scope != "acme" || !bytes.Equal(got.Handle, a.Handle) || got.Disabled() {
		t.Fatalf("ConsoleUserByEmail = %+v, %v; want %+v", got, err, a)
	}
	if _, err := s.ConsoleUser(ctx, a.ID+100); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("missing user: err = %v", err)
	}
	for _, tt := range []struct {
		scope string
		want  string
	}{
		{"", "[a@acme.example b@acme.example c@acme10.example root@vendor.example]"},
		{"acme", "[a@acme.example b@acme.example]"}, // not acme10
		{"acme/berlin", "[b@acme.example]"},
		{"globex", "[]"},
	} {
		us, err := s.ConsoleUsers(ctx, tt.scope)
		if err != nil {
			t.Fatal(err)
		}
		var emails []string
		for _, u := range us {
			emails = append(emails, u.Email)
		}
		if g := fmt.Sprint(emails); g != tt.want {
			t.Errorf("ConsoleUsers(%q) = %s, want %s", tt.scope, g, tt.want)
		}
	}
	if _, err := s.ConsoleUsers(ctx, "bad//scope"); !errors.Is(err, store.ErrInvalidScope) {
		t.Fatalf("bad scope: err = %v", err)
	}
	// Credentials: add, counter compare-and-set, delete.
	cred := store.ConsoleCredential{ID: []byte{1, 2, 3}, UserID: a.ID, Kind: store.CredentialPasskey, Name: "laptop", Data: []byte("{}"), SignCount: 5}
	if err := s.AddCredential(ctx, cred, nil, time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := s.AddCredential(ctx, cred, nil, time.Now()); !errors.Is(err, store.ErrExists) {
		t.Fatalf("duplicate credential id: err = %v, want ErrExists", err)
	}
	if err := s.UseCredential(ctx, cred.ID, 5, 6, []byte(`{"n":6}`), time.Now()); err != nil {
		t.Fatal(err)
	}
	// A second login that read the old counter loses the race.
	if err := s.UseCredential(ctx, cred.ID, 5, 6, []byte(`{}`), time.Now()); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("stale counter: err = %v, want ErrConflict", err)
	}
	c, err := s.Credential(ctx, cred.ID)
	if err != nil || c.SignCount != 6 || string(c.Data) != `{"n":6}` || c.LastUsedAt.IsZero() || c.UserID != a.ID {
		t.Fatalf("Credential = %+v, %v", c, err)
	}
	if cs, err := s.Credentials(ctx, a.ID); err != nil || len(cs) != 1 {
		t.Fatalf("Credentials = %v, %v", cs, err)
	}
	if err := s.DeleteCredential(ctx, a.ID+1, cred.ID); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("deleting another user's credential: err = %v, want ErrNotFound", err)
	}
	if err := s.DeleteCredential(ctx, a.ID, cred.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Credential(ctx, cred.ID); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("deleted credential: err = %v", err)
	}
}

func testConsoleInvitations(t *testing.T, s store.Store) {
	ctx := t.Context()
	u := mustUser(t, s, "a@acme.example", "acme", store.RoleViewer)
	other := mustUser(t, s, "b@acme.example", "acme", store.RoleViewer)
	now := time.Now().Truncate(time.Second)
	tok := []byte("token-hash-1")
	if err := s.CreateInvitation(ctx, store.ConsoleInvitation{TokenHash: tok, UserID: u.ID, Kind: store.InvitationRegister, CreatedBy: "cli", CreatedAt: now, ExpiresAt: now.Add(72 * time.Hour)}); err != nil {
		t.Fatal(err)
	}
	inv, err := s.Invitation(ctx, tok)
	if err != nil || inv.UserID != u.ID || !inv.ExpiresAt.Equal(now.Add(72*time.Hour)) || !inv.UsedAt.IsZero() {
		t.Fatalf("Invitation = %+v, %v", inv, err)
	}
	cred := func(id byte, user int64) store.ConsoleCredential {
		return store.ConsoleCredential{ID: []byte{id}, UserID: user, Kind: store.CredentialPasskey, Name: "k", Data: []byte("{}")}
	}
	// Another user cannot spend it, nor can anyone after it expired.
	if err := s.AddCredential(ctx, cred(1, other.ID), tok, now); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("invitation for another user: err = %v, want ErrNotFound", err)
	}
	if err := s.AddCredential(ctx, cred(1, u.ID), tok, now.Add(72*time.Hour)); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("expired invitation: err = %v, want ErrNotFound", err)
	}
	if err := s.AddCredential(ctx, cred(1, u.ID), tok, now.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	// Single use: the replay adds nothing.
	if err := s.AddCredential(ctx, cred(2, u.ID), tok, now.Add(time.Hour)); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("replayed invitation: err = %v, want ErrNotFound", err)
	}
	if _, err := s.Credential(ctx, []byte{2}); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("the replay added a credential: %v", err)
	}
	if inv, _ := s.Invitation(ctx, tok); inv.UsedAt.IsZero() || inv.Kind != store.InvitationRegister {
		t.Fatalf("invitation after use: %+v", inv)
	}
	// A login link is spent once, and cannot register a credential.
	login := []byte("token-hash-2")
	if err := s.CreateInvitation(ctx, store.ConsoleInvitation{TokenHash: login, UserID: u.ID, Kind: store.InvitationLogin, CreatedBy: "demo", CreatedAt: now, ExpiresAt: now.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if err := s.AddCredential(ctx, cred(3, u.ID), login, now); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("login link used to register: err = %v, want ErrNotFound", err)
	}
	if _, err := s.ConsumeInvitation(ctx, login, store.InvitationRegister, now); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("login link consumed as another kind: err = %v", err)
	}
	if _, err := s.ConsumeInvitation(ctx, login, store.InvitationLogin, now.Add(time.Hour)); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("expired login link: err = %v", err)
	}
	if got, err := s.ConsumeInvitation(ctx, login, store.InvitationLogin, now); err != nil || got.UserID != u.ID || got.UsedAt.IsZero() {
		t.Fatalf("ConsumeInvitation = %+v, %v", got, err)
	}
	if _, err := s.ConsumeInvitation(ctx, login, store.InvitationLogin, now); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("replayed login link: err = %v", err)
	}
	if _, err := s.Invitation(ctx, []byte("nope")); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("unknown invitation: err = %v", err)
	}
}

func testConsoleSessions(t *testing.T, s store.Store) {
	ctx := t.Context()
	u := mustUser(t, s, "a@acme.example", "acme", store.RoleOperator)
	now := time.Now().Truncate(time.Second)
	for i := range 3 {
		if err := s.CreateSession(ctx, store.ConsoleSession{TokenHash: []byte{byte(i)}, UserID: u.ID, CSRF: []byte("csrf"), Method: "passkey", Remote: "127.0.0.1", CreatedAt: now, ExpiresAt: now.Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
	}
	se, su, err := s.Session(ctx, []byte{0}, now)
	if err != nil || su.ID != u.ID || su.Role != store.RoleOperator || string(se.CSRF) != "csrf" || !se.ExpiresAt.Equal(now.Add(time.Hour)) {
		t.Fatalf("Session = %+v %+v %v", se, su, err)
	}
	if _, _, err := s.Session(ctx, []byte{0}, now.Add(time.Hour)); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("expired session: err = %v, want ErrNotFound", err)
	}
	if err := s.DeleteSession(ctx, []byte{0}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Session(ctx, []byte{0}, now); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("logged-out session: err = %v", err)
	}
	if n, err := s.SessionCount(ctx, u.ID, now); err != nil || n != 2 {
		t.Fatalf("SessionCount = %d, %v; want 2", n, err)
	}
	// Disabling ends every session at once.
	if err := s.DisableUser(ctx, u.ID, now); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Session(ctx, []byte{1}, now); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("session of a disabled user: err = %v", err)
	}
	if got, _ := s.ConsoleUser(ctx, u.ID); !got.Disabled() {
		t.Fatal("user not disabled")
	}
	if err := s.DisableUser(ctx, u.ID+99, now); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("disable missing user: err = %v", err)
	}
	v := mustUser(t, s, "v@acme.example", "acme", store.RoleViewer)
	s.CreateSession(ctx, store.ConsoleSession{TokenHash: []byte{9}, UserID: v.ID, CSRF: []byte("c"), Method: "passkey", CreatedAt: now, ExpiresAt: now.Add(time.Hour)})
	if n, err := s.DeleteSessions(ctx, v.ID); err != nil || n != 1 {
		t.Fatalf("DeleteSessions = %d, %v", n, err)
	}
}

func testConsoleAudit(t *testing.T, s store.Store) {
	ctx := t.Context()
	for i, scope := range []string{"acme", "acme/berlin", "acme10", "", "acme"} {
		if err := s.AppendAudit(ctx, store.AuditEntry{At: time.Now(), Actor: "a\x00b", Scope: scope, Action: "login", Target: fmt.Sprint(i), OK: i%2 == 0}); err != nil {
			t.Fatal(err)
		}
	}
	es, err := s.AuditLog(ctx, "acme", 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	var targets []string
	for _, e := range es {
		targets = append(targets, e.Target)
	}
	if fmt.Sprint(targets) != "[4 1 0]" || es[0].Actor != "a\uFFFDb" || !es[0].OK || es[1].OK {
		t.Fatalf("AuditLog(acme) = %+v", es)
	}
	page, err := s.AuditLog(ctx, "", es[1].ID, 2)
	if err != nil || len(page) != 1 || page[0].Target != "0" {
		t.Fatalf("AuditLog before %d = %+v, %v", es[1].ID, page, err)
	}
}

func testTreeHeads(t *testing.T, s store.Store) {
	ctx := t.Context()
	for _, n := range []uint64{1, 5, 9} {
		if err := s.PutTreeHead(ctx, store.TreeHead{Size: n, Root: []byte{byte(n)}, Checkpoint: []byte("c"), Signature: []byte("s"), CertChain: []byte("p")}); err != nil {
			t.Fatal(err)
		}
	}
	ths, err := s.TreeHeads(ctx, 0, 2)
	if err != nil || len(ths) != 2 || ths[0].Size != 9 || ths[1].Size != 5 {
		t.Fatalf("TreeHeads = %+v, %v", ths, err)
	}
	ths, err = s.TreeHeads(ctx, 5, 10)
	if err != nil || len(ths) != 1 || ths[0].Size != 1 || ths[0].Root[0] != 1 {
		t.Fatalf("TreeHeads before 5 = %+v, %v", ths, err)
	}
}

func testSnapshotsSince(t *testing.T, s store.Store) {
	ctx := t.Context()
	a, b := newChain("acme/berlin/gw-1", "pump-1", "pump"), newChain("acme10/x/gw-1", "pump-1", "pump")
	var recs []store.SnapshotRecord
	for i := range 3 {
		ra, rb := a.next(t, t0.Add(time.Duration(i)*time.Second)), b.next(t, t0.Add(time.Duration(i)*time.Second))
		ra.LedgerIndex, rb.LedgerIndex = uint64(2*i), uint64(2*i+1)
		recs = append(recs, ra, rb)
	}
	insert(t, s, recs...)
	got, err := s.SnapshotsSince(ctx, "", 2, 3)
	if err != nil {
		t.Fatal(err)
	}
	var idx []uint64
	for _, r := range got {
		idx = append(idx, r.LedgerIndex)
	}
	if fmt.Sprint(idx) != "[2 3 4]" || len(got[0].Values) != 3 {
		t.Fatalf("SnapshotsSince(2) = %v %+v", idx, got)
	}
	got, err = s.SnapshotsSince(ctx, "acme", 1, 10)
	if err != nil || len(got) != 2 || got[0].Gateway != "acme/berlin/gw-1" || got[0].LedgerIndex != 2 {
		t.Fatalf("SnapshotsSince(acme, 1) = %+v, %v", got, err)
	}
	if _, err := s.SnapshotsSince(ctx, "../x", 0, 1); !errors.Is(err, store.ErrInvalidScope) {
		t.Fatalf("bad scope: %v", err)
	}
}

func testChannelSeries(t *testing.T, s store.Store) {
	ctx := t.Context()
	a, other := newChain("acme/berlin/gw-1", "pump-1", "pump"), newChain("acme/berlin/gw-1", "pump-2", "pump")
	var recs []store.SnapshotRecord
	for i := range 5 {
		recs = append(recs, a.next(t, t0.Add(time.Duration(i)*time.Second)), other.next(t, t0.Add(time.Duration(i)*time.Second)))
	}
	insert(t, s, recs...)
	var ts []time.Time
	var vs []float64
	q := store.SeriesQuery{Scope: "acme", Gateway: "acme/berlin/gw-1", Device: "pump-1", Channel: "count", From: t0.Add(time.Second), To: t0.Add(4 * time.Second)}
	n, err := s.ChannelSeries(ctx, q, func(at time.Time, v float64) { ts, vs = append(ts, at), append(vs, v) })
	if err != nil || n != 3 || fmt.Sprint(vs) != "[2 3 4]" || !ts[0].Equal(t0.Add(time.Second)) {
		t.Fatalf("ChannelSeries = %d %v %v, %v", n, vs, ts, err)
	}
	for _, bad := range []store.SeriesQuery{
		{Scope: "acme10", Gateway: q.Gateway, Device: q.Device, Channel: q.Channel, From: q.From, To: q.To}, // out of scope
		{Scope: "acme", Gateway: q.Gateway, Device: "nope", Channel: q.Channel, From: q.From, To: q.To},
		{Scope: "acme", Gateway: q.Gateway, Device: q.Device, Channel: "nope", From: q.From, To: q.To},
	} {
		if n, err := s.ChannelSeries(ctx, bad, func(time.Time, float64) { t.Fatalf("value for %+v", bad) }); err != nil || n != 0 {
			t.Fatalf("ChannelSeries(%+v) = %d, %v", bad, n, err)
		}
	}
	if _, err := s.ChannelSeries(ctx, store.SeriesQuery{Scope: "a//b"}, nil); !errors.Is(err, store.ErrInvalidScope) {
		t.Fatalf("bad scope: %v", err)
	}
}
