package tacs

import (
	"testing"

	"github.com/fieldtrust/fieldtrust/internal/pki"
)

// TestSiteRights is rule 5: a customer site may publish the
// gateway→platform channels and read the platform→gateway channels of its
// own account's gateways, nothing else.
func TestSiteRights(t *testing.T) {
	g := DefaultGrants()
	site := SiteSubject("ms-acc-1/acc-1")
	account := Account("ms-acc-1/acc-1") // an ordinary certificate of the same account
	gw := "ms-acc-1/acc-1/gw-1"
	other := "ms-acc-1/acc-2/gw-1" // another account of the same master
	foreign := "ms-acc-2/acc-1/gw-1"
	tests := []struct {
		name   string
		s      Subject
		a      Action
		topic  string
		want   bool
		reason Reason
	}{
		// What a site forwards up.
		{"publish snapshot", site, Publish, gw + "/snapshots", true, ReasonRoleGrant},
		{"publish status (birth, will)", site, Publish, gw + "/status", true, ReasonRoleGrant},
		{"publish firmware status", site, Publish, gw + "/firmware/status", true, ReasonRoleGrant},
		{"publish command result", site, Publish, gw + "/commands/result", true, ReasonRoleGrant},
		// What comes down to it.
		{"subscribe commands of all its gateways", site, Subscribe, "ms-acc-1/acc-1/+/commands", true, ReasonRoleGrant},
		{"subscribe firmware of all its gateways", site, Subscribe, "ms-acc-1/acc-1/+/firmware", true, ReasonRoleGrant},
		{"subscribe one gateway's commands", site, Subscribe, gw + "/commands", true, ReasonRoleGrant},
		{"shared subscription of commands", site, Subscribe, "$share/s/ms-acc-1/acc-1/+/commands", true, ReasonRoleGrant},
		{"read CRLs", site, Subscribe, "pki/crl/#", true, ReasonCRLRead},

		// Another tenant's subtree.
		{"publish snapshot of another account", site, Publish, other + "/snapshots", false, ReasonForeignTopic},
		{"publish snapshot of another master", site, Publish, foreign + "/snapshots", false, ReasonForeignTopic},
		{"subscribe another account's commands", site, Subscribe, "ms-acc-1/acc-2/+/commands", false, ReasonForeignTopic},
		{"subscribe every account's commands", site, Subscribe, "ms-acc-1/+/+/commands", false, ReasonForeignTopic},
		{"subscribe every gateway's commands", site, Subscribe, "+/+/+/commands", false, ReasonForeignTopic},
		// Wildcards over everything.
		{"subscribe hash", site, Subscribe, "#", false, ReasonForeignTopic},
		{"subscribe own subtree", site, Subscribe, "ms-acc-1/acc-1/#", false, ReasonSiteChannel},
		{"subscribe own gateway's everything", site, Subscribe, gw + "/#", false, ReasonSiteChannel},
		{"subscribe own gateway's channels by plus", site, Subscribe, gw + "/+", false, ReasonSiteChannel},
		{"subscribe SYS", site, Subscribe, "$SYS/#", false, ReasonSystemTopic},
		// The wrong direction: kinds swapped.
		{"publish a command", site, Publish, gw + "/commands", false, ReasonSiteChannel},
		{"publish a firmware notice", site, Publish, gw + "/firmware", false, ReasonSiteChannel},
		{"subscribe snapshots", site, Subscribe, gw + "/snapshots", false, ReasonSiteChannel},
		{"subscribe command results", site, Subscribe, gw + "/commands/result", false, ReasonSiteChannel},
		{"subscribe status", site, Subscribe, gw + "/status", false, ReasonSiteChannel},
		// Channels that are neither: rule events are the platform's.
		{"publish events", site, Publish, gw + "/events", false, ReasonSiteChannel},
		{"publish on the account itself", site, Publish, "ms-acc-1/acc-1", false, ReasonSiteChannel},
		{"publish below a channel", site, Publish, gw + "/snapshots/x", false, ReasonSiteChannel},
		{"publish a CRL", site, Publish, "pki/crl/transport", false, ReasonForeignTopic},
		// Retained and will paths are publishes: a retained or will message
		// on another account's status topic is a foreign publish.
		{"will on another account's status", site, Publish, other + "/status", false, ReasonForeignTopic},
		{"retained command to own gateway", site, Publish, gw + "/commands", false, ReasonSiteChannel},

		// The ordinary account certificate keeps its rule 4 rights.
		{"account publishes a command", account, Publish, gw + "/commands", true, ReasonOwnSubtree},
		{"account subscribes own subtree", account, Subscribe, "ms-acc-1/acc-1/#", true, ReasonOwnSubtree},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := Authorize(g, tc.s, tc.a, tc.topic)
			if d.Allowed != tc.want || d.Reason != tc.reason {
				t.Fatalf("Authorize(%s, %s, %q) = %+v; want allowed=%v reason=%s", tc.s, tc.a, tc.topic, d, tc.want, tc.reason)
			}
			checkAgree(t, g, tc.s, tc.a, tc.topic)
		})
	}
}

func TestSiteSubject(t *testing.T) {
	for _, tc := range []struct {
		s  Subject
		ok bool
	}{
		{SiteSubject("ms-acc-1/acc-1"), true},
		{SiteSubject("ms-acc-1"), false},            // a site is an account's
		{SiteSubject("ms-acc-1/acc-1/gw-1"), false}, // not a device's
		{Subject{Service: "s", Role: RoleSite, Site: true}, false},
		{Subject{Path: "ms-acc-1/acc-1", Role: RoleSite, Site: true}, false},
		{SiteSubject("pki/crl"), false},
		{ServiceSubject("fw", RoleSite), false}, // the site grants hold only inside a site's subtree
	} {
		if err := tc.s.Validate(); (err == nil) != tc.ok {
			t.Errorf("%+v: Validate() = %v; want ok=%v", tc.s, err, tc.ok)
		}
		if !tc.ok && Authorize(DefaultGrants(), tc.s, Subscribe, "pki/crl/#").Allowed {
			t.Errorf("%+v: invalid subject allowed", tc.s)
		}
	}
	if got := SiteSubject("a/b").String(); got != "site:a/b" {
		t.Errorf("String() = %q", got)
	}
	// Without the site role (a grants file cannot remove it, but a
	// hand-built Grants can), a site may do nothing.
	g := DefaultGrants()
	delete(g, RoleSite)
	if d := Authorize(g, SiteSubject("a/b"), Publish, "a/b/c/snapshots"); d.Allowed || d.Reason != ReasonUnknownRole {
		t.Errorf("site without grants: %+v", d)
	}
}

func TestSubjectOf(t *testing.T) {
	path := func(s string) pki.Path {
		p, err := pki.ParsePath(s)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	roles := func(service string) (string, bool) {
		return map[string]string{"ingest": RoleSnapshotReader}[service], service == "ingest"
	}
	for _, tc := range []struct {
		name string
		id   pki.Identity
		want Subject
		err  bool
	}{
		{"device", pki.Identity{Path: path("ms/acc/gw")}, Account("ms/acc/gw"), false},
		{"site: the site's rights, not its account's", pki.Identity{Path: path("ms/acc"), Site: true}, SiteSubject("ms/acc"), false},
		{"service with its role", pki.Identity{Service: "ingest"}, ServiceSubject("ingest", RoleSnapshotReader), false},
		{"service without a role: refused", pki.Identity{Service: "stranger"}, Subject{}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := SubjectOf(tc.id, roles)
			if (err != nil) != tc.err || got != tc.want {
				t.Fatalf("SubjectOf(%+v) = %+v, %v; want %+v, error %v", tc.id, got, err, tc.want, tc.err)
			}
		})
	}
}
