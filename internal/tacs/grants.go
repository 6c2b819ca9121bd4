package tacs

import "github.com/fieldtrust/fieldtrust/internal/ident"

// Role names of the default service roles.
const (
	RoleAdmin          = "admin"
	RoleSnapshotReader = "snapshot-reader"
	RoleFirmwareWriter = "firmware-writer"
)

// Grant allows the actions it names on every topic Filter matches. Filter
// uses MQTT filter syntax; a filter whose first level starts with '$' is
// needed to reach '$' topics, since '#' and '+' never match them there.
type Grant struct {
	Filter string `json:"filter" yaml:"filter"`
	Read   bool   `json:"read" yaml:"read"`
	Write  bool   `json:"write" yaml:"write"`
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
//   - firmware-writer: write +/+/+/firmware.
func DefaultGrants() Grants {
	return Grants{
		RoleAdmin: {
			{Filter: "#", Read: true, Write: true},
			{Filter: "$SYS/#", Read: true, Write: true},
		},
		RoleSnapshotReader: {{Filter: "+/+/+/snapshots", Read: true}},
		RoleFirmwareWriter: {{Filter: "+/+/+/firmware", Write: true}},
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
