package tacs

import (
	"errors"
	"strings"
	"testing"
)

// The interop role of the Paho suites: everything, except exactly
// test/nosubscribe.
var interop = Grants{"interop": {
	{Filter: "#", Read: true, Write: true},
	{Filter: "test/nosubscribe", Read: true, Deny: true},
}}

func TestDenyGrants(t *testing.T) {
	s := ServiceSubject("svc", "interop")
	for _, tc := range []struct {
		a      Action
		topic  string
		allow  bool
		reason Reason
	}{
		{Subscribe, "test/nosubscribe", false, ReasonRoleDenied},
		{Subscribe, "$share/g/test/nosubscribe", false, ReasonRoleDenied},
		{Subscribe, "test/other", true, ReasonRoleGrant},
		// A wider filter is allowed; the delivery check refuses the
		// denied topic per message (the topic itself is refused above).
		{Subscribe, "#", true, ReasonRoleGrant},
		{Subscribe, "test/+", true, ReasonRoleGrant},
		// Deny covers reads only: publishing there is allowed.
		{Publish, "test/nosubscribe", true, ReasonRoleGrant},
		// A deny grant beats the CRL rule too.
		{Subscribe, "pki/crl/transport", true, ReasonRoleGrant},
	} {
		d := Authorize(interop, s, tc.a, tc.topic)
		if d.Allowed != tc.allow || d.Reason != tc.reason {
			t.Errorf("%v %s: %+v; want allowed=%v %s", tc.a, tc.topic, d, tc.allow, tc.reason)
		}
	}
	crl := Grants{"r": {{Filter: "#", Read: true}, {Filter: "pki/crl/#", Read: true, Deny: true}}}
	if d := Authorize(crl, ServiceSubject("s", "r"), Subscribe, "pki/crl/e2e"); d.Allowed {
		t.Errorf("deny of pki/crl/# did not beat the CRL rule: %+v", d)
	}
}

func TestParseGrants(t *testing.T) {
	ok := `{"version": 1, "roles": {"interop": [{"filter": "#", "read": true, "write": true}, {"filter": "test/nosubscribe", "read": true, "deny": true}],
	        "admin": [{"filter": "ms-1/#", "read": true}]}}`
	g, err := ParseGrants([]byte(ok))
	if err != nil {
		t.Fatal(err)
	}
	if len(g["interop"]) != 2 || !g["interop"][1].Deny {
		t.Fatalf("interop = %+v", g["interop"])
	}
	if len(g["admin"]) != 1 || g[RoleSnapshotReader] == nil {
		t.Fatalf("admin not replaced or defaults lost: %+v", g)
	}
	for _, tc := range []struct{ name, file, want string }{
		{"no version", `{"roles": {}}`, "no \"version\""},
		{"future version", `{"version": 2, "roles": {}}`, "version 2"},
		{"unknown field", `{"version": 1, "roles": {}, "extra": 1}`, "unknown field"},
		{"unknown grant field", `{"version": 1, "roles": {"r": [{"filter": "#", "read": true, "allow": true}]}}`, "unknown field"},
		{"trailing data", `{"version": 1, "roles": {}} {}`, "after the JSON object"},
		{"bad filter", `{"version": 1, "roles": {"r": [{"filter": "a/#/b", "read": true}]}}`, "bad_wildcard"},
		{"empty level", `{"version": 1, "roles": {"r": [{"filter": "a//b", "read": true}]}}`, "empty_level"},
		{"share prefix", `{"version": 1, "roles": {"r": [{"filter": "$share/g/a", "read": true}]}}`, "shared-subscription"},
		{"does nothing", `{"version": 1, "roles": {"r": [{"filter": "a"}]}}`, "neither read nor write"},
		{"bad role name", `{"version": 1, "roles": {"a/b": [{"filter": "a", "read": true}]}}`, "role name"},
		{"empty role", `{"version": 1, "roles": {"r": []}}`, "no grants"},
		{"not JSON", `version: 1`, "grants file"},
	} {
		_, err := ParseGrants([]byte(tc.file))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v; want it to mention %q", tc.name, err, tc.want)
		}
		var ge *GrantError
		_ = errors.As(err, &ge)
	}
}

func FuzzParseGrants(f *testing.F) {
	f.Add([]byte(`{"version": 1, "roles": {"interop": [{"filter": "#", "read": true, "write": true}, {"filter": "test/nosubscribe", "read": true, "deny": true}]}}`))
	f.Add([]byte(`{"version": 1}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		g, err := ParseGrants(data)
		if err != nil {
			return
		}
		if err := g.Validate(); err != nil {
			t.Fatalf("ParseGrants returned invalid grants: %v", err)
		}
		for role := range g {
			_ = Authorize(g, ServiceSubject("s", role), Subscribe, "#")
			_ = Authorize(g, ServiceSubject("s", role), Publish, "a/b")
		}
	})
}
