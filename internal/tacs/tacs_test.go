package tacs

import (
	"github.com/fieldtrust/fieldtrust/internal/tacs/tacstest"

	"strings"
	"testing"
)

func TestThesisTable(t *testing.T) {
	g := DefaultGrants()
	for _, tc := range tacstest.ThesisTable {
		t.Run(tc.Identity+"→"+tc.Request, func(t *testing.T) {
			d := Authorize(g, Account(tc.Identity), Subscribe, tc.Request)
			if d.Allowed != tc.Allowed {
				t.Fatalf("Authorize(%s, subscribe, %s) = %+v; want allowed=%v", tc.Identity, tc.Request, d, tc.Allowed)
			}
		})
	}
}

func TestAuthorize(t *testing.T) {
	g := DefaultGrants()
	dev := Account("ms-acc-1/acc-1/dev-1")
	master := Account("ms-acc-1")
	admin := ServiceSubject("admin", RoleAdmin)
	ingest := ServiceSubject("ingest", RoleSnapshotReader)
	fw := ServiceSubject("firmware", RoleFirmwareWriter)
	long := strings.Repeat("a/", MaxTopicLen)

	tests := []struct {
		name   string
		s      Subject
		a      Action
		topic  string
		want   bool
		reason Reason
	}{
		// Wildcards at the top by non-admins.
		{"hash by device", dev, Subscribe, "#", false, ReasonForeignTopic},
		{"plus-hash by master", master, Subscribe, "+/#", false, ReasonForeignTopic},
		{"plus-plus-plus-hash by device", dev, Subscribe, "+/+/+/#", false, ReasonForeignTopic},
		{"plus in own master level", master, Subscribe, "+/acc-1/#", false, ReasonForeignTopic},
		{"plus below own path", master, Subscribe, "ms-acc-1/+/+/snapshots", true, ReasonOwnSubtree},
		{"hash by ingest", ingest, Subscribe, "#", false, ReasonForeignTopic},
		{"hash by admin", admin, Subscribe, "#", true, ReasonRoleGrant},
		{"plus-hash by admin", admin, Subscribe, "+/#", true, ReasonRoleGrant},

		// $SYS and other '$' topics.
		{"SYS by device", dev, Subscribe, "$SYS/#", false, ReasonSystemTopic},
		{"SYS by master", master, Subscribe, "$SYS/broker/clients/connected", false, ReasonSystemTopic},
		{"SYS by ingest", ingest, Subscribe, "$SYS/#", false, ReasonSystemTopic},
		{"SYS by admin", admin, Subscribe, "$SYS/#", true, ReasonRoleGrant},
		{"dollar other by admin", admin, Subscribe, "$other/x", false, ReasonSystemTopic},
		{"publish SYS by device", dev, Publish, "$SYS/broker/uptime", false, ReasonSystemTopic},

		// Shared subscriptions: the inner filter decides; the group is checked.
		{"share own", dev, Subscribe, "$share/g/ms-acc-1/acc-1/dev-1/#", true, ReasonOwnSubtree},
		{"share foreign", dev, Subscribe, "$share/g/ms-acc-2/acc-1/dev-1/#", false, ReasonForeignTopic},
		{"share hash", master, Subscribe, "$share/g/#", false, ReasonForeignTopic},
		{"share ingest snapshots", ingest, Subscribe, "$share/ingest/+/+/+/snapshots", true, ReasonRoleGrant},
		{"share upper-case prefix", master, Subscribe, "$SHARE/g/#", false, ReasonForeignTopic},
		{"share empty group", dev, Subscribe, "$share//ms-acc-1/acc-1/dev-1/#", false, ReasonInvalidShare},
		{"share wildcard group", dev, Subscribe, "$share/+/ms-acc-1/acc-1/dev-1/#", false, ReasonInvalidShare},
		{"share hash group", dev, Subscribe, "$share/#", false, ReasonInvalidShare},
		{"share no filter", dev, Subscribe, "$share/g", false, ReasonInvalidShare},
		{"share empty filter", dev, Subscribe, "$share/g/", false, ReasonInvalidShare},
		{"share bad group char", dev, Subscribe, "$share/g$/ms-acc-1/acc-1/dev-1/#", false, ReasonInvalidShare},
		{"share nested SYS", admin, Subscribe, "$share/g/$SYS/#", true, ReasonRoleGrant},
		{"share publish is a dollar topic", dev, Publish, "$share/g/ms-acc-1/acc-1/dev-1/x", false, ReasonSystemTopic},

		// Publish topics.
		{"publish own", dev, Publish, "ms-acc-1/acc-1/dev-1/snapshots", true, ReasonOwnSubtree},
		{"publish own path itself", dev, Publish, "ms-acc-1/acc-1/dev-1", true, ReasonOwnSubtree},
		{"publish by master into device", master, Publish, "ms-acc-1/acc-1/dev-1/commands", true, ReasonOwnSubtree},
		{"publish sibling", dev, Publish, "ms-acc-1/acc-1/dev-2/snapshots", false, ReasonForeignTopic},
		{"publish parent", dev, Publish, "ms-acc-1/acc-1/status", false, ReasonForeignTopic},
		{"publish plus", dev, Publish, "ms-acc-1/acc-1/dev-1/+", false, ReasonWildcardInTopic},
		{"publish hash", dev, Publish, "ms-acc-1/acc-1/dev-1/#", false, ReasonWildcardInTopic},
		{"publish hash inside", dev, Publish, "ms-acc-1/acc-1/dev-1/a#", false, ReasonWildcardInTopic},
		{"publish by ingest", ingest, Publish, "ms-acc-1/acc-1/dev-1/snapshots", false, ReasonForeignTopic},
		{"firmware writes firmware", fw, Publish, "ms-acc-1/acc-1/dev-1/firmware", true, ReasonRoleGrant},
		{"firmware cannot read firmware", fw, Subscribe, "ms-acc-1/acc-1/dev-1/firmware", false, ReasonForeignTopic},
		{"firmware cannot write commands", fw, Publish, "ms-acc-1/acc-1/dev-1/commands", false, ReasonForeignTopic},
		{"firmware too deep", fw, Publish, "ms-acc-1/acc-1/dev-1/firmware/x", false, ReasonForeignTopic},
		{"ingest reads snapshots", ingest, Subscribe, "+/+/+/snapshots", true, ReasonRoleGrant},
		{"ingest reads one device", ingest, Subscribe, "ms-acc-1/acc-1/dev-1/snapshots", true, ReasonRoleGrant},
		{"ingest no events", ingest, Subscribe, "+/+/+/events", false, ReasonForeignTopic},
		{"ingest no hash below", ingest, Subscribe, "+/+/+/snapshots/#", false, ReasonForeignTopic},
		{"ingest no hash", ingest, Subscribe, "+/+/#", false, ReasonForeignTopic},
		{"ingest dollar first level", ingest, Subscribe, "$x/a/b/snapshots", false, ReasonSystemTopic},

		// Prefix tricks.
		{"literal does not match deeper", Account("a"), Subscribe, "a", true, ReasonOwnSubtree},
		{"a cannot read ab", Account("a"), Subscribe, "ab/#", false, ReasonForeignTopic},
		{"ms-acc-1 not ms-acc-10", master, Subscribe, "ms-acc-10/#", false, ReasonForeignTopic},
		{"ms-acc-1 not ms-acc-10 publish", master, Publish, "ms-acc-10/acc-1/dev-1/snapshots", false, ReasonForeignTopic},
		{"dev-1 not dev-10", dev, Subscribe, "ms-acc-1/acc-1/dev-10/#", false, ReasonForeignTopic},
		{"case matters", master, Subscribe, "MS-ACC-1/#", false, ReasonForeignTopic},
		{"dot-dot level", dev, Publish, "ms-acc-1/acc-1/dev-1/../../dev-2/x", true, ReasonOwnSubtree}, // MQTT has no '..'; it is a literal level inside the own subtree.

		// CRL.
		{"crl read by device", dev, Subscribe, "pki/crl/#", true, ReasonCRLRead},
		{"crl read one", dev, Subscribe, "pki/crl/transport", true, ReasonCRLRead},
		{"crl write by device", dev, Publish, "pki/crl/transport", false, ReasonForeignTopic},
		{"crl write by master", master, Publish, "pki/crl/transport", false, ReasonForeignTopic},
		{"crl write by admin", admin, Publish, "pki/crl/transport", true, ReasonRoleGrant},
		{"pki hash is more than crl", dev, Subscribe, "pki/#", false, ReasonForeignTopic},
		{"pki master identity refused", Account("pki"), Publish, "pki/crl/transport", false, ReasonInvalidSubject},

		// Malformed filters and topics.
		{"empty", dev, Subscribe, "", false, ReasonEmptyLevel},
		{"leading slash", dev, Subscribe, "/ms-acc-1/acc-1/dev-1/#", false, ReasonEmptyLevel},
		{"double slash", dev, Subscribe, "ms-acc-1//acc-1/dev-1/#", false, ReasonEmptyLevel},
		{"trailing slash", dev, Publish, "ms-acc-1/acc-1/dev-1/", false, ReasonEmptyLevel},
		{"hash not last", dev, Subscribe, "ms-acc-1/acc-1/dev-1/#/x", false, ReasonBadWildcard},
		{"hash inside level", dev, Subscribe, "ms-acc-1/acc-1/dev-1/a#", false, ReasonBadWildcard},
		{"plus inside level", dev, Subscribe, "ms-acc-1/acc-1/dev-1/a+", false, ReasonBadWildcard},
		{"plus-hash level", dev, Subscribe, "ms-acc-1/acc-1/dev-1/+#", false, ReasonBadWildcard},
		{"NUL in filter", dev, Subscribe, "ms-acc-1/acc-1/dev-1/\x00", false, ReasonBadEncoding},
		{"NUL in topic", dev, Publish, "ms-acc-1/acc-1/dev-1\x00/x", false, ReasonBadEncoding},
		{"invalid UTF-8", dev, Subscribe, "ms-acc-1/acc-1/dev-1/\xff", false, ReasonBadEncoding},
		{"control char", dev, Publish, "ms-acc-1/acc-1/dev-1/\n", false, ReasonBadEncoding},
		{"too long", Account("a"), Subscribe, "a/" + long, false, ReasonTooLong},
		{"too deep", Account("a"), Publish, "a" + strings.Repeat("/b", MaxLevels), false, ReasonTooDeep},
		{"deepest allowed", Account("a"), Publish, "a" + strings.Repeat("/b", MaxLevels-1), true, ReasonOwnSubtree},

		// Malformed subjects.
		{"NUL in identity", Account("ms-acc-1\x00"), Subscribe, "ms-acc-1/#", false, ReasonInvalidSubject},
		{"UTF-8 in identity", Account("ms-acc-1/\xff"), Subscribe, "ms-acc-1/#", false, ReasonInvalidSubject},
		{"wildcard identity", Account("+"), Subscribe, "+/#", false, ReasonInvalidSubject},
		{"hash identity", Account("#"), Subscribe, "#", false, ReasonInvalidSubject},
		{"empty identity", Account(""), Subscribe, "pki/crl/#", false, ReasonInvalidSubject},
		{"trailing slash identity", Account("ms-acc-1/"), Subscribe, "ms-acc-1/#", false, ReasonInvalidSubject},
		{"four elements", Account("a/b/c/d"), Subscribe, "a/b/c/d/#", false, ReasonInvalidSubject},
		{"dot-dot identity", Account("ms-acc-1/.."), Subscribe, "ms-acc-1/#", false, ReasonInvalidSubject},
		{"service and path", Subject{Path: "a", Service: "b", Role: RoleAdmin}, Subscribe, "a/#", false, ReasonInvalidSubject},
		{"role on account", Subject{Path: "a", Role: RoleAdmin}, Subscribe, "#", false, ReasonInvalidSubject},
		{"unknown role", ServiceSubject("x", "nobody"), Subscribe, "pki/crl/#", false, ReasonUnknownRole},
		{"service crl read", ServiceSubject("x", RoleFirmwareWriter), Subscribe, "pki/crl/#", true, ReasonCRLRead},
		{"bad action", dev, Action(9), "ms-acc-1/acc-1/dev-1", false, ReasonInvalidAction},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := Authorize(g, tc.s, tc.a, tc.topic)
			if d.Allowed != tc.want || d.Reason != tc.reason {
				t.Fatalf("Authorize(%+v, %s, %q) = %+v; want allowed=%v reason=%s", tc.s, tc.a, tc.topic, d, tc.want, tc.reason)
			}
		})
	}
}

func TestGrantsAreData(t *testing.T) {
	g := Grants{"auditor": {{Filter: "ms-acc-1/+/+/events", Read: true}}}
	if err := g.Validate(); err != nil {
		t.Fatal(err)
	}
	s := ServiceSubject("audit", "auditor")
	if d := Authorize(g, s, Subscribe, "ms-acc-1/+/+/events"); !d.Allowed {
		t.Fatalf("custom role refused: %+v", d)
	}
	if d := Authorize(g, s, Subscribe, "+/+/+/events"); d.Allowed {
		t.Fatalf("custom role over-granted: %+v", d)
	}
	if d := Authorize(g, ServiceSubject("admin", RoleAdmin), Subscribe, "#"); d.Allowed || d.Reason != ReasonUnknownRole {
		t.Fatalf("admin without admin grants: %+v", d)
	}
	for _, bad := range []Grants{
		{"r": {{Filter: "a/#/b", Read: true}}},
		{"r": {{Filter: "", Read: true}}},
		{"r": {{Filter: "$share/g/#", Read: true}}},
		{"bad role": {{Filter: "#", Read: true}}},
	} {
		if err := bad.Validate(); err == nil {
			t.Errorf("Validate(%v) = nil; want error", bad)
		}
	}
	if err := DefaultGrants().Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestMatch(t *testing.T) {
	tests := []struct {
		filter, topic string
		want          bool
	}{
		{"a", "a", true},
		{"a", "a/b", false},
		{"a/#", "a", true},
		{"a/#", "a/b/c", true},
		{"a/+", "a", false},
		{"a/+", "a/b", true},
		{"a/+", "a/b/c", false},
		{"+/+", "a/b", true},
		{"#", "$SYS/x", false},
		{"+/x", "$SYS/x", false},
		{"$SYS/#", "$SYS/x", true},
		{"ms-acc-1/#", "ms-acc-10/x", false},
	}
	for _, tc := range tests {
		if got := Match(tc.filter, tc.topic); got != tc.want {
			t.Errorf("Match(%q, %q) = %v; want %v", tc.filter, tc.topic, got, tc.want)
		}
	}
}

func TestSubjectString(t *testing.T) {
	if got := Account("ms-acc-1/acc-1").String(); got != "ms-acc-1/acc-1" {
		t.Errorf("got %q", got)
	}
	if got := ServiceSubject("ingest", RoleSnapshotReader).String(); got != "service:ingest" {
		t.Errorf("got %q", got)
	}
}
