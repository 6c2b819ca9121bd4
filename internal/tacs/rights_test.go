package tacs

import (
	"testing"

	"github.com/fieldtrust/fieldtrust/internal/tacs/tacstest"
)

// byRights decides a well-formed request from Rights alone, the way an
// engine with permission lists does: refused if a deny grant covers it,
// allowed if another grant covers it.
func byRights(t *testing.T, g Grants, s Subject, a Action, topicOrFilter string) bool {
	rights, err := Rights(g, s)
	if err != nil {
		return false
	}
	filter := topicOrFilter
	if _, inner, ok := splitShare(filter); ok && a == Subscribe {
		filter = inner
	}
	levels, r := parseFilter(filter)
	if r != "" {
		t.Fatalf("byRights on a malformed request %q", topicOrFilter)
	}
	for _, gr := range rights {
		gl, _ := parseFilter(gr.Filter)
		if gr.Deny && ((a == Subscribe && gr.Read) || (a == Publish && gr.Write)) && covers(gl, levels) {
			return false
		}
	}
	for _, gr := range rights {
		gl, _ := parseFilter(gr.Filter)
		if !gr.Deny && ((a == Subscribe && gr.Read) || (a == Publish && gr.Write)) && covers(gl, levels) {
			return true
		}
	}
	return false
}

func checkAgree(t *testing.T, g Grants, s Subject, a Action, req string) {
	t.Helper()
	d := Authorize(g, s, a, req)
	if d.Reason == ReasonInvalidSubject || d.Reason == ReasonUnknownRole {
		if _, err := Rights(g, s); err == nil {
			t.Fatalf("%s: Authorize refuses the subject (%s), Rights gives rights", s, d.Reason)
		}
		return
	}
	// Only well-formed requests: the syntax rules are Authorize's and
	// apply before any permission list (the engine's topic parser plus
	// the fences in internal/cluster).
	f := req
	if _, inner, ok := splitShare(req); ok && a == Subscribe {
		if d.Reason == ReasonInvalidShare {
			return
		}
		f = inner
	}
	if a == Publish {
		if _, r := parseTopic(f); r != "" {
			return
		}
	} else if _, r := parseFilter(f); r != "" {
		return
	}
	if got := byRights(t, g, s, a, req); got != d.Allowed {
		t.Fatalf("%s %s %q: Authorize says %v (%s), Rights says %v", s, a, req, d.Allowed, d.Reason, got)
	}
}

func TestRightsAgreeWithAuthorize(t *testing.T) {
	g := DefaultGrants()
	g["interop"] = []Grant{{Filter: "#", Read: true, Write: true}, {Filter: "test/nosubscribe", Read: true, Deny: true}}
	subjects := []Subject{
		Account("ms-acc-1"), Account("ms-acc-1/acc-1"), Account("ms-acc-1/acc-1/dev-1"), Account("ms-acc-2/acc-1/dev-2"),
		ServiceSubject("ingest", RoleSnapshotReader), ServiceSubject("admin", RoleAdmin),
		ServiceSubject("fw", RoleFirmwareWriter), ServiceSubject("interop", "interop"),
		ServiceSubject("x", "no-such-role"), {Path: "pki/x"}, {},
		SiteSubject("ms-acc-1/acc-1"), SiteSubject("ms-acc-2/acc-1"), SiteSubject("ms-acc-1"), {Path: "ms-acc-1/acc-1", Site: true, Role: "x"},
	}
	requests := []string{"#", "+/#", "ms-acc-1/#", "ms-acc-1", "ms-acc-1/acc-1/dev-1/snapshots", "ms-acc-10/#",
		"ms-acc-2/acc-1/dev-1/#", "pki/crl/transport", "pki/crl/#", "pki/#", "$SYS/broker/uptime", "$SYS/#",
		"a/b/c/snapshots", "+/+/+/snapshots", "+/+/+/firmware", "a/b/c/firmware", "test/nosubscribe", "test/#",
		"$share/g/+/+/+/snapshots", "$share/g/#", "ms-acc-1/+/dev-1/status",
		"ms-acc-1/acc-1/+/commands", "ms-acc-1/acc-1/dev-1/commands", "ms-acc-1/acc-1/dev-1/commands/result", "ms-acc-1/acc-1/#",
		"ms-acc-1/acc-1", "ms-acc-1/+/+/commands", "+/acc-1/dev-1/snapshots", "ms-acc-1/acc-1/+/#", "ms-acc-1/acc-1/+/+/result"}
	for _, row := range tacstest.ThesisTable {
		requests = append(requests, row.Request)
	}
	for _, s := range subjects {
		for _, req := range requests {
			checkAgree(t, g, s, Subscribe, req)
			checkAgree(t, g, s, Publish, req)
		}
	}
}

// FuzzRights checks the agreement on arbitrary subjects and requests.
func FuzzRights(f *testing.F) {
	for _, row := range tacstest.ThesisTable {
		f.Add(row.Identity, "", "", row.Request, true)
	}
	f.Add("", "ingest", RoleSnapshotReader, "+/+/+/snapshots", true)
	f.Add("", "admin", RoleAdmin, "$SYS/x", false)
	f.Add("a", "", "", "pki/crl/+", true)
	f.Add("a", "", "", "a", false)
	g := DefaultGrants()
	f.Add("a/b", "", "", "a/+/c/snapshots", false)
	f.Add("a/b", "", "", "a/b/+/commands", true)
	f.Fuzz(func(t *testing.T, path, service, role, req string, sub bool) {
		a := Publish
		if sub {
			a = Subscribe
		}
		checkAgree(t, g, Subject{Path: path, Service: service, Role: role}, a, req)
		checkAgree(t, g, Subject{Path: path, Service: service, Role: role, Site: true}, a, req)
	})
}
