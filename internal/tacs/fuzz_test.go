package tacs

import (
	"github.com/fieldtrust/fieldtrust/internal/tacs/tacstest"

	"strings"
	"testing"
)

// FuzzAuthorize checks that Authorize never panics and that an allowed
// subscription never matches a topic the same subject may not read: for
// every allowed filter F and every topic T with Match(F, T), the topic T on
// its own must be allowed too. Together with the fixed tables this is what
// "a filter is allowed only if every topic it can match is allowed" means.
func FuzzAuthorize(f *testing.F) {
	for _, tc := range tacstest.ThesisTable {
		f.Add(tc.Identity, "", "", tc.Request, tc.Request+"/x")
	}
	f.Add("ms-acc-1", "", "", "ms-acc-1/+/#", "ms-acc-1/acc-1/dev-1/snapshots")
	f.Add("", "ingest", RoleSnapshotReader, "$share/g/+/+/+/snapshots", "a/b/c/snapshots")
	f.Add("", "admin", RoleAdmin, "#", "$SYS/broker/uptime")
	f.Add("", "fw", RoleFirmwareWriter, "+/+/+/firmware", "a/b/c/firmware")
	f.Add("a", "", "", "+/#", "ab/c")
	f.Add("a", "", "", "pki/crl/+", "pki/crl/transport")
	f.Add("a\x00", "", "", "a/\xff", "a/\x00")

	g := DefaultGrants()
	f.Add("a/b", "", "", "a/b/+/commands", "a/b/c/commands")
	f.Fuzz(func(t *testing.T, path, service, role, filter, topic string) {
		checkFilterCovered(t, g, Subject{Path: path, Service: service, Role: role}, filter, topic)
		checkFilterCovered(t, g, Subject{Path: path, Service: service, Role: role, Site: true}, filter, topic)
	})
}

func checkFilterCovered(t *testing.T, g Grants, s Subject, filter, topic string) {
	t.Helper()
	d := Authorize(g, s, Subscribe, filter)
	_ = Authorize(g, s, Publish, topic)
	if !d.Allowed {
		return
	}
	inner := filter
	if _, in, ok := splitShare(filter); ok {
		inner = in
	}
	if _, r := parseTopic(topic); r != "" || !Match(inner, topic) {
		return
	}
	if rd := Authorize(g, s, Subscribe, topic); !rd.Allowed {
		t.Fatalf("subject %+v may subscribe %q (%s) which matches %q, but may not read %q (%s)",
			s, filter, d.Reason, topic, topic, rd.Reason)
	}
	// The same must hold for every topic obtained by filling the
	// filter's wildcards with the topic's own levels or any literal.
	filled := strings.ReplaceAll(strings.TrimSuffix(inner, "/#"), "+", "x")
	if filled != "#" && filled != "" {
		if _, r := parseTopic(filled); r == "" && Match(inner, filled) {
			if rd := Authorize(g, s, Subscribe, filled); !rd.Allowed {
				t.Fatalf("subject %+v may subscribe %q but not read %q (%s)", s, filter, filled, rd.Reason)
			}
		}
	}
}
