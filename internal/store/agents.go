package store

import (
	"context"
	"errors"
	"strings"
	"time"
)

// ErrStale is returned (wrapped) by UpdateAgent when the stored agent has
// changed since it was read: the caller reads it again and decides anew.
var ErrStale = errors.New("changed concurrently")

// Agent is an HTTPS agent (package agent): a device-level identity path
// that connects with OAuth 2.0 credentials instead of a transport
// certificate. Secrets are never stored in the clear: SecretSealed is the
// shared secret encrypted with the platform's agent key, RATHash and
// PrevRATHash are SHA-256 hashes of registration access tokens.
//
// Times are whole milliseconds in UTC; a zero time means "not set".
type Agent struct {
	ClientID string // the OAuth client id, also the agent id in URLs
	Path     string // identity path master/account/agent
	Tenant   string // the master account
	Profile  string // SHARED_SECRET or RSA_3072
	Created  time.Time
	Revoked  time.Time

	// IATID is the jti of the one initial access token that may still
	// register the agent; "" once it was used or replaced.
	IATID      string
	IATExpires time.Time

	// Registration state; Expires is zero until the agent registered.
	Generation   int64     // counts registrations and rotations
	Expires      time.Time // when the current credentials expire
	SecretSealed []byte    // SHARED_SECRET: the sealed client secret
	JWKS         []byte    // RSA_3072: the public key set (JSON) the agent uploaded
	RATHash      []byte
	// PrevRATHash may rotate once more until PrevRATUntil while the
	// current credentials are unused (a rotation whose answer was lost).
	PrevRATHash  []byte
	PrevRATUntil time.Time
	Used         bool // the current credentials obtained a token or rotated

	// The data-source configuration (JSON) and its eTag, and the
	// data-point mappings (JSON array).
	Config     []byte
	ConfigETag int64
	Mappings   []byte

	// Version is the stored row's version: UpdateAgent succeeds only if it
	// is still the stored one, and then increments it.
	Version int64
}

// Agents stores HTTPS agents.
type Agents interface {
	// CreateAgent records a new agent (Version 1). It returns ErrExists if
	// an agent with the client id or the path exists.
	CreateAgent(ctx context.Context, a Agent) error
	// Agent returns the agent with the client id, or ErrNotFound.
	Agent(ctx context.Context, clientID string) (Agent, error)
	// AgentByPath returns the agent with the identity path, or ErrNotFound.
	AgentByPath(ctx context.Context, path string) (Agent, error)
	// ListAgents returns the agents in scope (as in SnapshotQuery.Scope)
	// ordered by path.
	ListAgents(ctx context.Context, scope string) ([]Agent, error)
	// UpdateAgent replaces the stored agent a.ClientID with a if its
	// version is still a.Version, and returns the new version; otherwise
	// it changes nothing and returns an error wrapping ErrStale (or
	// ErrNotFound).
	UpdateAgent(ctx context.Context, a Agent) (int64, error)
	// UseAgentAssertion records that the client assertion jti of clientID
	// was used; it returns ErrExists if it was used before. Records whose
	// expiry is before now are deleted on the way: a jti only needs to be
	// remembered while its assertion could still be accepted.
	UseAgentAssertion(ctx context.Context, clientID, jti string, expires, now time.Time) error
}

// AgentSignerPrefix begins the Signer of every snapshot an HTTPS agent
// posted (the client id follows). No e2e signer name can begin with it:
// those are identity paths or service names, which never contain ':'.
const AgentSignerPrefix = "agent:"

// Provenance values of a snapshot record.
const (
	// ProvenanceSealed: a gateway signed and sealed it end to end; ingest
	// verified the signature.
	ProvenanceSealed = "e2e-sealed"
	// ProvenanceAgentTLS: an HTTPS agent posted it over server-authenticated
	// TLS with an OAuth access token; nobody signed the values, the
	// platform built and hash-chained the snapshot.
	ProvenanceAgentTLS = "agent-tls"
)

// Provenance says how the snapshot reached the platform (one of the
// Provenance constants).
func (r SnapshotRecord) Provenance() string {
	if strings.HasPrefix(r.Signer, AgentSignerPrefix) {
		return ProvenanceAgentTLS
	}
	return ProvenanceSealed
}
