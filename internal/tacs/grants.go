package tacs

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/fieldtrust/fieldtrust/internal/ident"
)

// Role names of the default service roles.
const (
	RoleAdmin          = "admin"
	RoleSnapshotReader = "snapshot-reader"
	RoleFirmwareWriter = "firmware-writer"
	RoleStatusReader   = "status-reader"
	RoleRulesEngine    = "rules-engine"
	// RoleDeviceManager is the platform's device messaging service: it
	// publishes commands and campaign notices and reads what gateways
	// answer.
	RoleDeviceManager = "device-manager"
	// RoleSite is what a customer site (Subject.Site) may do, inside its
	// account's subtree only (rule 5 of Authorize).
	RoleSite = "site"
)

// Grant allows the actions it names on every topic Filter matches — or,
// with Deny, refuses them, before any other grant of the role is
// considered. Filter uses MQTT filter syntax; a filter whose first level
// starts with '$' is needed to reach '$' topics, since '#' and '+' never
// match them there.
//
// A deny grant refuses a subscription only to filters it covers (which can
// match nothing but denied topics). A wider subscription — "#" next to a
// denied "test/nosubscribe" — is allowed, and the denied topics are then
// refused per message by the delivery check (Authorize of each topic
// written to a subscriber), which the embedded broker makes on every
// delivery. An engine that checks only at subscribe time cannot enforce a
// deny grant; see docs/broker.md.
type Grant struct {
	Filter string `json:"filter" yaml:"filter"`
	Read   bool   `json:"read" yaml:"read"`
	Write  bool   `json:"write" yaml:"write"`
	Deny   bool   `json:"deny,omitempty" yaml:"deny,omitempty"`
}

// Grants maps a service role to what it may do. It is data so that platform
// configuration can add roles without code; DefaultGrants is the starting
// point. Account identities never consult Grants: their rights follow from
// their path alone.
//
// A Grants value is read concurrently by the broker and must not be
// modified after it is handed over.
type Grants map[string][]Grant

// DefaultGrants returns a fresh copy of the built-in roles:
//
//   - admin: read and write everything, including $SYS/#;
//   - snapshot-reader (ingest): read +/+/+/snapshots;
//   - firmware-writer: write +/+/+/firmware;
//   - status-reader (the console): read +/+/+/status, the gateways'
//     birth messages and wills;
//   - device-manager (the device messaging service): write
//     +/+/+/firmware and +/+/+/commands, read +/+/+/firmware/status and
//     +/+/+/commands/result;
//   - rules-engine (the rules service): read +/+/+/status (silence),
//     write +/+/+/events (the MQTT events of rules);
//   - site (a customer site's forwarding broker, within its account's
//     subtree only): write the gateway→platform channels +/+/+/snapshots,
//     +/+/+/status, +/+/+/firmware/status and +/+/+/commands/result;
//     read the platform→gateway channels +/+/+/commands and
//     +/+/+/firmware. Never +/+/+/events, which the platform's rules
//     service writes. The two sets are disjoint, so nothing a site
//     forwards up can come back down to it.
func DefaultGrants() Grants {
	return Grants{
		RoleAdmin: {
			{Filter: "#", Read: true, Write: true},
			{Filter: "$SYS/#", Read: true, Write: true},
		},
		RoleSnapshotReader: {{Filter: "+/+/+/snapshots", Read: true}},
		RoleFirmwareWriter: {{Filter: "+/+/+/firmware", Write: true}},
		RoleStatusReader:   {{Filter: "+/+/+/status", Read: true}},
		RoleRulesEngine:    {{Filter: "+/+/+/status", Read: true}, {Filter: "+/+/+/events", Write: true}},
		RoleDeviceManager: {
			{Filter: "+/+/+/firmware", Write: true},
			{Filter: "+/+/+/commands", Write: true},
			{Filter: "+/+/+/firmware/status", Read: true},
			{Filter: "+/+/+/commands/result", Read: true},
		},
		RoleSite: {
			{Filter: "+/+/+/snapshots", Write: true},
			{Filter: "+/+/+/status", Write: true},
			{Filter: "+/+/+/firmware/status", Write: true},
			{Filter: "+/+/+/commands/result", Write: true},
			{Filter: "+/+/+/commands", Read: true},
			{Filter: "+/+/+/firmware", Read: true},
		},
	}
}

// Validate checks every grant filter with the same parser Authorize uses, so
// a typo in configuration fails at startup instead of silently granting
// nothing.
func (g Grants) Validate() error {
	for role, gs := range g {
		if err := ident.ValidateElement(role); err != nil {
			return &GrantError{Role: role, Reason: "role name " + err.Error()}
		}
		for _, gr := range gs {
			if _, r := parseFilter(gr.Filter); r != "" {
				return &GrantError{Role: role, Filter: gr.Filter, Reason: string(r)}
			}
			if len(gr.Filter) > 7 && gr.Filter[:7] == "$share/" {
				return &GrantError{Role: role, Filter: gr.Filter, Reason: "shared-subscription prefix in a grant"}
			}
			if !gr.Read && !gr.Write {
				return &GrantError{Role: role, Filter: gr.Filter, Reason: "neither read nor write: the grant would do nothing"}
			}
		}
	}
	return nil
}

// GrantError describes an invalid entry in Grants.
type GrantError struct {
	Role, Filter, Reason string
}

func (e *GrantError) Error() string {
	return "grants: role " + e.Role + " filter " + e.Filter + ": " + e.Reason
}

// GrantsFileVersion is the version of the grants file format ParseGrants
// reads.
const GrantsFileVersion = 1

// ParseGrants reads a grants file: JSON, strictly — a version field that
// must be GrantsFileVersion, no unknown fields, nothing after the object:
//
//	{"version": 1,
//	 "roles": {"interop": [{"filter": "#", "read": true, "write": true},
//	                       {"filter": "test/nosubscribe", "read": true, "deny": true}]}}
//
// The roles it names are added to DefaultGrants, replacing a built-in role
// of the same name (so the admin role can be narrowed). The result is
// validated.
func ParseGrants(data []byte) (Grants, error) {
	var f struct {
		Version *int               `json:"version"`
		Roles   map[string][]Grant `json:"roles"`
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("grants file: %w", err)
	}
	if dec.More() {
		return nil, errors.New("grants file: data after the JSON object")
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("grants file: data after the JSON object")
	}
	switch {
	case f.Version == nil:
		return nil, fmt.Errorf("grants file: no \"version\" (this fieldtrust reads version %d)", GrantsFileVersion)
	case *f.Version != GrantsFileVersion:
		return nil, fmt.Errorf("grants file: version %d; this fieldtrust reads version %d", *f.Version, GrantsFileVersion)
	}
	g := DefaultGrants()
	for role, gs := range f.Roles {
		if len(gs) == 0 {
			return nil, &GrantError{Role: role, Reason: "no grants: leave the role out instead"}
		}
		g[role] = gs
	}
	if err := g.Validate(); err != nil {
		return nil, err
	}
	return g, nil
}
