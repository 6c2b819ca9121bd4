package platform

import (
	"strings"
	"testing"

	"github.com/fieldtrust/fieldtrust/internal/store/postgres/pgtest"
	"github.com/fieldtrust/fieldtrust/internal/tacs"
)

// TestAdmission: on a node of several, every identity inside an account
// that no ingest partition session covers yet is refused — gateway,
// site, the account itself, and a subject whose path does not parse —
// while services and master accounts are in no account; a covered
// account admits its identities and no other account's; a store error
// refuses (review of issue 16, real PostgreSQL).
func TestAdmission(t *testing.T) {
	st := pgtest.Open(t)
	ctx := t.Context()
	ad := newAdmission(st)
	if err := st.CoverAccounts(ctx, []string{"ms-1/acc-1"}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		s     tacs.Subject
		admit bool
	}{
		{"gateway of a covered account", tacs.Subject{Path: "ms-1/acc-1/gw-1"}, true},
		{"site of a covered account", tacs.Subject{Path: "ms-1/acc-1", Site: true}, true},
		{"gateway of a new account", tacs.Subject{Path: "ms-1/acc-2/gw-1"}, false},
		{"site of a new account", tacs.Subject{Path: "ms-1/acc-2", Site: true}, false},
		{"the new account itself", tacs.Subject{Path: "ms-1/acc-2"}, false},
		{"same account name under another master", tacs.Subject{Path: "ms-2/acc-1/gw-1"}, false},
		{"prefix of a covered account", tacs.Subject{Path: "ms-1/acc-11/gw-1"}, false},
		{"a path that does not parse", tacs.Subject{Path: "ms-1/acc-2/gw-1/x"}, false},
		{"a path with an empty element", tacs.Subject{Path: "ms-1//gw-1"}, false},
		{"neither path nor service", tacs.Subject{}, false},
		{"master account", tacs.Subject{Path: "ms-1"}, true},
		{"service", tacs.Subject{Service: "ingest", Role: tacs.RoleSnapshotReader}, true},
	} {
		err := ad.admit(ctx, tc.s)
		if (err == nil) != tc.admit {
			t.Errorf("%s (%+v): admit error %v; want admitted %v", tc.name, tc.s, err, tc.admit)
		}
	}
	// The positive answer cached for ms-1/acc-1 admits nothing else.
	if err := ad.admit(ctx, tacs.Subject{Path: "ms-1/acc-2/gw-1"}); err == nil || !strings.Contains(err.Error(), "ms-1/acc-2") {
		t.Errorf("new account after another was cached: %v", err)
	}
	// Fail closed on a store error (the store closed: every query fails).
	fresh := newAdmission(st)
	st.Close()
	if err := fresh.admit(ctx, tacs.Subject{Path: "ms-1/acc-1/gw-1"}); err == nil {
		t.Error("admitted with the store unreachable")
	}
	// What it cached before still admits: coverage is never withdrawn.
	if err := ad.admit(ctx, tacs.Subject{Path: "ms-1/acc-1/gw-1"}); err != nil {
		t.Errorf("cached account after the store went away: %v", err)
	}
}
