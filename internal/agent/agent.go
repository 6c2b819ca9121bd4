// Package agent lets HTTPS agents built for Siemens MindConnect / Insights
// Hub connect to fieldtrust unchanged: agents live in the identity tree
// (an agent is a device path, master/account/agent), an operator creates
// one and hands its boarding configuration with a single-use initial
// access token (IAT) to the device; the agent registers with OAuth 2.0
// Dynamic Client Registration (RFC 7591/7592), gets 7-day credentials
// (a shared secret or its uploaded RSA 3072 key) and a registration access
// token (RAT) to rotate them, and obtains 30-minute access tokens with a
// JWT client assertion (RFC 7523). Its data-source configuration says
// which data points it sends; what it posts to the exchange becomes
// snapshots of its devices, hash-chained by the platform and recorded in
// the ledger, with the provenance store.ProvenanceAgentTLS: carried by
// server-authenticated TLS, not signed end to end. See docs/agents.md.
package agent

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/fieldtrust/fieldtrust/internal/ident"
	"github.com/fieldtrust/fieldtrust/internal/store"
)

// Credential profiles, as MindConnect names them.
const (
	ProfileSharedSecret = "SHARED_SECRET"
	ProfileRSA3072      = "RSA_3072"
)

// Lifetimes and bounds (docs/agents.md).
const (
	IATLifetime         = 7 * 24 * time.Hour
	CredentialLifetime  = 7 * 24 * time.Hour
	AccessTokenLifetime = 30 * time.Minute
	// MaxAssertionLifetime is the longest client assertion accepted
	// (exp - iat), what the vendor's documentation allows.
	MaxAssertionLifetime = 7 * 24 * time.Hour
	// Skew is the clock difference tolerated on exp, nbf and iat.
	Skew = 2 * time.Minute
	// RATGrace is how long the previous RAT may rotate again while the
	// new credentials are unused: a rotation whose answer was lost (the
	// SDK retries with the RAT it has) does not strand the agent.
	RATGrace = 10 * time.Minute
)

// Store is what the agent service keeps and reads.
type Store interface {
	store.Agents
	PathRevocation(ctx context.Context, domain, path string) (store.PathRevocation, error)
	ListCertificates(ctx context.Context, f store.CertFilter) ([]store.Certificate, error)
	DeviceHead(ctx context.Context, gateway, device string) (uint64, []byte, error)
	InsertSnapshots(ctx context.Context, recs []store.SnapshotRecord) ([]bool, error)
}

// Ledger records snapshots (*ledger.Log).
type Ledger interface {
	FindAll(ctx context.Context, leaves [][]byte) (map[string]uint64, error)
	Append(ctx context.Context, leaves [][]byte) (first, size uint64, root []byte, err error)
}

// Config configures the agent service.
type Config struct {
	Store Store
	Keys  *Keys
	// BaseURL is the platform's external URL (https://host:port): the
	// agents' baseUrl, the issuer of tokens and the base of
	// registration_client_uri.
	BaseURL string
	// Ledger records agents' snapshots; nil for the offline operator
	// commands, which serve no exchange.
	Ledger Ledger
	// Stored, if set, is called with the snapshots of each post once they
	// are stored and in the ledger (the rules engine's feed).
	Stored func(ctx context.Context, recs []store.SnapshotRecord)
	Limits Limits
	Logger *slog.Logger
	// Registerer, if set, registers the service's metrics.
	Registerer prometheus.Registerer
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// CredentialLifetime overrides CredentialLifetime (tests make the SDK
	// rotate by handing out credentials that expire within its 25-hour
	// renewal window).
	CredentialLifetime time.Duration
}

// Service is the agent service: management operations (CLI and API) and
// the agents' HTTP API.
type Service struct {
	cfg     Config
	log     *slog.Logger
	now     func() time.Time
	limits  *limiters
	metrics *metrics

	chains sync.Map // client id -> *sync.Mutex: one post at a time builds an agent's chains
	tokens sync.Map // client id -> cachedToken

	agents ttlCache[store.Agent] // client id -> agent (CacheTTL)
	paths  ttlCache[bool]        // path -> not revoked (CacheTTL)

	noTokenReuse bool // benchmarks: sign every access token
}

// New returns the service.
func New(cfg Config) (*Service, error) {
	if cfg.Store == nil || cfg.Keys == nil {
		return nil, errors.New("agent: store and keys are required")
	}
	if !strings.HasPrefix(cfg.BaseURL, "https://") {
		return nil, fmt.Errorf("agent: external URL %q must start with https://", cfg.BaseURL)
	}
	cfg.BaseURL = strings.TrimRight(cfg.BaseURL, "/")
	s := &Service{cfg: cfg, log: cfg.Logger, now: cfg.Now}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.cfg.CredentialLifetime <= 0 {
		s.cfg.CredentialLifetime = CredentialLifetime
	}
	s.limits = newLimiters(cfg.Limits.withDefaults())
	s.metrics = newMetrics(cfg.Registerer)
	return s, nil
}

// tokenIssuer is the iss of every token the platform signs. It does not
// name the URL: a boarding configuration made offline with another
// external URL still registers (the key is what vouches).
func (s *Service) tokenIssuer() string { return "fieldtrust" }

// Boarding is the boarding configuration the agent SDKs consume.
type Boarding struct {
	Content struct {
		BaseURL                 string   `json:"baseUrl"`
		IAT                     string   `json:"iat"`
		ClientCredentialProfile []string `json:"clientCredentialProfile"`
		ClientID                string   `json:"clientId"`
		Tenant                  string   `json:"tenant"`
	} `json:"content"`
	Expiration time.Time `json:"expiration"`
}

// Info is what the operator sees of an agent (no secrets).
type Info struct {
	ClientID          string    `json:"client_id"`
	Path              string    `json:"path"`
	Tenant            string    `json:"tenant"`
	Profile           string    `json:"profile"`
	Created           time.Time `json:"created"`
	Revoked           time.Time `json:"revoked,omitzero"`
	State             string    `json:"state"` // revoked, onboarded, onboarding (IAT open), expired
	IATExpires        time.Time `json:"iat_expires,omitzero"`
	CredentialsExpire time.Time `json:"credentials_expire,omitzero"`
	Rotations         int64     `json:"rotations"`
	ConfigurationID   string    `json:"configuration_id,omitempty"`
	ConfigurationETag int64     `json:"configuration_etag"`
	DataPointMappings int       `json:"data_point_mappings"`
}

func (s *Service) info(a store.Agent) Info {
	in := Info{ClientID: a.ClientID, Path: a.Path, Tenant: a.Tenant, Profile: a.Profile, Created: a.Created, Revoked: a.Revoked,
		IATExpires: a.IATExpires, CredentialsExpire: a.Expires, Rotations: max(a.Generation-1, 0), ConfigurationETag: a.ConfigETag}
	if a.IATID == "" {
		in.IATExpires = time.Time{}
	}
	now := s.now()
	switch {
	case !a.Revoked.IsZero():
		in.State = "revoked"
	case !a.Expires.IsZero() && now.Before(a.Expires):
		in.State = "onboarded"
	case a.IATID != "" && now.Before(a.IATExpires):
		in.State = "onboarding"
	default:
		in.State = "expired"
	}
	if cfg, err := parseStoredConfig(a.Config); err == nil && cfg != nil {
		in.ConfigurationID = cfg.ConfigurationID
	}
	if m, err := parseStoredMappings(a.Mappings); err == nil {
		in.DataPointMappings = len(m)
	}
	return in
}

// ErrInvalid is wrapped by errors about what the operator asked for.
var ErrInvalid = errors.New("invalid")

// CheckPath checks that path can name an agent: a device-level identity
// path (master/account/agent).
func CheckPath(path string) error {
	els, err := ident.SplitPath(path)
	if err != nil {
		return fmt.Errorf("%w: agent path %q: %v", ErrInvalid, path, err)
	}
	if len(els) != ident.MaxPathElements {
		return fmt.Errorf("%w: agent path %q has %d elements; an agent is a device: master/account/agent", ErrInvalid, path, len(els))
	}
	return nil
}

// Create creates an agent at path with a credential profile and returns
// its boarding configuration. The path must be free: no agent and no
// transport certificate (a gateway) may hold it, and it must not be
// revoked.
func (s *Service) Create(ctx context.Context, path, profile string) (Boarding, Info, error) {
	if err := CheckPath(path); err != nil {
		return Boarding{}, Info{}, err
	}
	if assertionAlgs[profile] == nil {
		return Boarding{}, Info{}, fmt.Errorf("%w: profile %q; use %s or %s", ErrInvalid, profile, ProfileSharedSecret, ProfileRSA3072)
	}
	if err := s.checkNotRevoked(ctx, path); err != nil {
		return Boarding{}, Info{}, err
	}
	certs, err := s.cfg.Store.ListCertificates(ctx, store.CertFilter{Domain: "transport", Name: path})
	if err != nil {
		return Boarding{}, Info{}, fmt.Errorf("create agent %s: %w", path, err)
	}
	if len(certs) > 0 {
		return Boarding{}, Info{}, fmt.Errorf("%w: %s already has a transport certificate (a gateway); an agent needs a path of its own", store.ErrExists, path)
	}
	now := s.now().Truncate(time.Millisecond)
	a := store.Agent{ClientID: randomHex(16), Path: path, Tenant: tenantOf(path), Profile: profile, Created: now}
	boarding, err := s.newIAT(&a, now)
	if err != nil {
		return Boarding{}, Info{}, err
	}
	if err := s.cfg.Store.CreateAgent(ctx, a); err != nil {
		if errors.Is(err, store.ErrExists) {
			return Boarding{}, Info{}, fmt.Errorf("%w: an agent %s exists; 'agent rotate-iat' gives it a new boarding configuration", store.ErrExists, path)
		}
		return Boarding{}, Info{}, err
	}
	a.Version = 1
	s.log.Info("agent created", "agent", a.ClientID, "path", path, "profile", profile)
	return boarding, s.info(a), nil
}

// newIAT gives a a fresh initial access token and returns the boarding
// configuration that carries it.
func (s *Service) newIAT(a *store.Agent, now time.Time) (Boarding, error) {
	a.IATID, a.IATExpires = randomHex(16), now.Add(IATLifetime)
	iat, err := s.cfg.Keys.sign(platformClaims{
		Claims: jwt.Claims{Issuer: s.tokenIssuer(), Subject: a.ClientID, Audience: jwt.Audience{audRegister}, ID: a.IATID,
			IssuedAt: jwt.NewNumericDate(now), NotBefore: jwt.NewNumericDate(now), Expiry: jwt.NewNumericDate(a.IATExpires)},
		Use: useIAT, Tenant: a.Tenant, Path: a.Path,
	})
	if err != nil {
		return Boarding{}, fmt.Errorf("sign initial access token: %w", err)
	}
	var b Boarding
	b.Content.BaseURL, b.Content.IAT, b.Content.ClientID, b.Content.Tenant = s.cfg.BaseURL, iat, a.ClientID, a.Tenant
	b.Content.ClientCredentialProfile = []string{a.Profile}
	b.Expiration = a.IATExpires
	return b, nil
}

// RotateIAT replaces the agent's initial access token (the old one stops
// working) and returns the new boarding configuration. An onboarded agent
// keeps its credentials until it registers again with the new IAT.
func (s *Service) RotateIAT(ctx context.Context, path string) (Boarding, Info, error) {
	var out Boarding
	a, err := s.update(ctx, path, func(a *store.Agent) error {
		if !a.Revoked.IsZero() {
			return fmt.Errorf("%w: agent %s is revoked; create a new one at another path", ErrInvalid, a.Path)
		}
		var err error
		out, err = s.newIAT(a, s.now().Truncate(time.Millisecond))
		return err
	})
	if err != nil {
		return Boarding{}, Info{}, err
	}
	s.log.Info("agent initial access token rotated", "agent", a.ClientID, "path", a.Path)
	return out, s.info(a), nil
}

// Revoke revokes the agent: its IAT, credentials, RAT and access tokens
// stop working at once. It cannot be undone.
func (s *Service) Revoke(ctx context.Context, path string) (Info, error) {
	a, err := s.update(ctx, path, func(a *store.Agent) error {
		if a.Revoked.IsZero() {
			a.Revoked = s.now().Truncate(time.Millisecond)
		}
		a.IATID, a.SecretSealed, a.RATHash, a.PrevRATHash = "", nil, nil, nil
		return nil
	})
	if err != nil {
		return Info{}, err
	}
	s.tokens.Delete(a.ClientID)
	s.log.Info("agent revoked", "agent", a.ClientID, "path", a.Path)
	return s.info(a), nil
}

// Show returns the agent at path.
func (s *Service) Show(ctx context.Context, path string) (Info, error) {
	if err := CheckPath(path); err != nil {
		return Info{}, err
	}
	a, err := s.cfg.Store.AgentByPath(ctx, path)
	if err != nil {
		return Info{}, err
	}
	return s.info(a), nil
}

// List returns the agents in scope ("" for all).
func (s *Service) List(ctx context.Context, scope string) ([]Info, error) {
	list, err := s.cfg.Store.ListAgents(ctx, scope)
	if err != nil {
		return nil, err
	}
	out := make([]Info, 0, len(list))
	for _, a := range list {
		out = append(out, s.info(a))
	}
	return out, nil
}

// update applies change to the agent at path with compare-and-swap,
// reading again when another update came first.
func (s *Service) update(ctx context.Context, path string, change func(*store.Agent) error) (store.Agent, error) {
	if err := CheckPath(path); err != nil {
		return store.Agent{}, err
	}
	for {
		a, err := s.cfg.Store.AgentByPath(ctx, path)
		if err != nil {
			return a, err
		}
		if err := change(&a); err != nil {
			return a, err
		}
		v, err := s.updateAgent(ctx, a)
		if errors.Is(err, store.ErrStale) {
			continue
		}
		if err != nil {
			return a, err
		}
		a.Version = v
		return a, nil
	}
}

// checkNotRevoked refuses a path that is revoked, or lies below a revoked
// master or account (pki revoke PATH).
func (s *Service) checkNotRevoked(ctx context.Context, path string) error {
	els := strings.Split(path, "/")
	for i := range els {
		p := strings.Join(els[:i+1], "/")
		_, err := s.cfg.Store.PathRevocation(ctx, "transport", p)
		if err == nil {
			return fmt.Errorf("%w: %s is revoked (pki revoke %s)", errRevoked, p, p)
		}
		if !errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("check revocation of %s: %w", p, err)
		}
	}
	return nil
}

var errRevoked = errors.New("revoked")

func tenantOf(path string) string {
	t, _, _ := strings.Cut(path, "/")
	return t
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand does not fail on supported platforms
	}
	return hex.EncodeToString(b)
}

// randomToken is a bearer secret: 32 random bytes, base64url.
func randomToken() string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}
