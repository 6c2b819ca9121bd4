package agent

import (
	"context"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/fieldtrust/fieldtrust/internal/store"
)

// Routes of the agent-management API.
const (
	ManagementPrefix = "/api/agentmanagement/v3"
	RegisterPath     = ManagementPrefix + "/register"
	TokenPath        = ManagementPrefix + "/oauth/token"
	TokenKeyPath     = ManagementPrefix + "/oauth/token_key"
	TokenKeysPath    = ManagementPrefix + "/oauth/token_keys"
)

// Body limits.
const (
	maxRegisterBody = 64 << 10
	maxTokenBody    = 16 << 10
)

// OAuth error codes (RFC 6749 §5.2, RFC 7591 §3.2.2, RFC 6750 §3.1).
const (
	errInvalidRequest       = "invalid_request"
	errInvalidClient        = "invalid_client"
	errInvalidGrant         = "invalid_grant"
	errUnsupportedGrantType = "unsupported_grant_type"
	errInvalidToken         = "invalid_token"
	errInvalidClientMeta    = "invalid_client_metadata"
	errRateLimited          = "rate_limited"
	errServer               = "server_error"
)

// refusal is a refused request: the status and OAuth error the client
// sees, and what the log says.
type refusal struct {
	status int
	code   string
	desc   string // for the client: what went wrong and what to do
	detail error  // for the log only
}

func (r *refusal) Error() string { return r.desc }

func refuse(status int, code, desc string, detail error) *refusal {
	return &refusal{status: status, code: code, desc: desc, detail: detail}
}

// fail answers a refused or failed request, logs it with the agent id and
// counts it in /metrics. Rate-limit refusals are logged at most a few
// times a second (they are counted all the same): a flood is not
// amplified into the log.
func (s *Service) fail(w http.ResponseWriter, r *http.Request, endpoint, clientID string, err error) {
	var rf *refusal
	if !errors.As(err, &rf) {
		rf = refuse(http.StatusInternalServerError, errServer, "internal error; try again later", err)
	}
	s.metrics.refusals.WithLabelValues(endpoint, rf.code).Inc()
	if rf.status != http.StatusTooManyRequests || s.limits.logAllowed() {
		level := slog.LevelWarn
		if rf.status >= 500 {
			level = slog.LevelError
		}
		attrs := []any{"endpoint", endpoint, "agent", clip(clientID), "remote", remoteIP(r), "status", rf.status, "error", rf.code, "reason", rf.desc}
		if rf.detail != nil {
			attrs = append(attrs, "detail", clip(rf.detail.Error()))
		}
		s.log.Log(r.Context(), level, "agent request refused", attrs...)
	}
	if rf.status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer error="`+rf.code+`"`)
	}
	if rf.status == http.StatusTooManyRequests {
		w.Header().Set("Retry-After", "1")
	}
	writeJSON(w, rf.status, map[string]string{"error": rf.code, "error_description": rf.desc})
}

// clip bounds what a hostile client can put into one log line.
func clip(s string) string {
	if len(s) > 128 {
		return fmt.Sprintf("%q...", s[:128])
	}
	return s
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// bearer returns the request's bearer token.
func bearer(r *http.Request) (string, bool) {
	scheme, tok, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || tok == "" || len(tok) > 16<<10 {
		return "", false
	}
	return strings.TrimSpace(tok), true
}

// readBody reads at most limit bytes of the body.
func readBody(r *http.Request, limit int64) ([]byte, *refusal) {
	b, err := io.ReadAll(io.LimitReader(r.Body, limit+1))
	if err != nil {
		return nil, refuse(http.StatusBadRequest, errInvalidRequest, "could not read the request body", err)
	}
	if int64(len(b)) > limit {
		return nil, refuse(http.StatusRequestEntityTooLarge, errInvalidRequest, fmt.Sprintf("request body larger than %d bytes", limit), nil)
	}
	return b, nil
}

// registration is the answer to register and rotate (RFC 7591 §3.2.1 as
// MindConnect fills it).
type registration struct {
	ClientID                string              `json:"client_id"`
	ClientSecret            string              `json:"client_secret,omitempty"`
	ClientSecretExpiresAt   int64               `json:"client_secret_expires_at"`
	GrantTypes              []string            `json:"grant_types"`
	RegistrationAccessToken string              `json:"registration_access_token"`
	RegistrationClientURI   string              `json:"registration_client_uri"`
	TokenEndpointAuthMethod string              `json:"token_endpoint_auth_method"`
	JWKS                    *jose.JSONWebKeySet `json:"jwks,omitempty"`
}

// registerRequest is the body of register and rotate.
type registerRequest struct {
	ClientID string          `json:"client_id"`
	JWKS     json.RawMessage `json:"jwks"`
}

// register: POST /register with Bearer IAT.
func (s *Service) register(w http.ResponseWriter, r *http.Request) {
	if clientID, err := s.doRegister(w, r); err != nil {
		s.fail(w, r, "register", clientID, err)
	}
}

func (s *Service) doRegister(w http.ResponseWriter, r *http.Request) (string, error) {
	if !s.limits.ip(remoteIP(r)) {
		return "", refuse(http.StatusTooManyRequests, errRateLimited, "too many registration requests from this address; retry later", nil)
	}
	iat, ok := bearer(r)
	if !ok {
		return "", refuse(http.StatusUnauthorized, errInvalidToken, "Authorization: Bearer <initial access token> is required", nil)
	}
	now := s.now()
	c, err := s.cfg.Keys.verify(iat, useIAT, audRegister, s.tokenIssuer(), now)
	if err != nil {
		return "", refuse(http.StatusUnauthorized, errInvalidToken, "the initial access token is not valid (expired, forged or not for this platform); ask the operator for a new boarding configuration (agent rotate-iat)", err)
	}
	if !s.limits.agent(c.Subject) {
		return c.Subject, refuse(http.StatusTooManyRequests, errRateLimited, "too many requests for this agent; retry later", nil)
	}
	body, rf := readBody(r, maxRegisterBody)
	if rf != nil {
		return c.Subject, rf
	}
	var req registerRequest
	if len(body) > 0 {
		if err := json.Unmarshal(body, &req); err != nil {
			return c.Subject, refuse(http.StatusBadRequest, errInvalidClientMeta, "the body is not a JSON registration request", err)
		}
	}
	ctx := r.Context()
	a, err := s.cfg.Store.Agent(ctx, c.Subject)
	if errors.Is(err, store.ErrNotFound) {
		return c.Subject, refuse(http.StatusUnauthorized, errInvalidToken, "no such agent", nil)
	}
	if err != nil {
		return c.Subject, err
	}
	switch {
	case !a.Revoked.IsZero():
		return a.ClientID, refuse(http.StatusUnauthorized, errInvalidToken, "the agent is revoked", nil)
	case c.Tenant != a.Tenant || c.Path != a.Path:
		return a.ClientID, refuse(http.StatusUnauthorized, errInvalidToken, "the initial access token is for another tenant or agent", fmt.Errorf("token ten %q path %q", c.Tenant, c.Path))
	case a.IATID == "" || subtle.ConstantTimeCompare([]byte(a.IATID), []byte(c.ID)) != 1:
		return a.ClientID, refuse(http.StatusUnauthorized, errInvalidToken, "the initial access token was used or replaced; ask the operator for a new boarding configuration (agent rotate-iat)", nil)
	}
	if err := s.checkNotRevoked(ctx, a.Path); err != nil {
		return a.ClientID, refuse(http.StatusUnauthorized, errInvalidToken, "the agent's path is revoked", err)
	}
	reg, err := s.issue(&a, req, now)
	if err != nil {
		return a.ClientID, err
	}
	a.IATID = "" // single use
	a.PrevRATHash, a.PrevRATUntil = nil, time.Time{}
	if _, err := s.updateAgent(ctx, a); errors.Is(err, store.ErrStale) {
		return a.ClientID, refuse(http.StatusUnauthorized, errInvalidToken, "the initial access token was used concurrently", err)
	} else if err != nil {
		return a.ClientID, err
	}
	s.tokens.Delete(a.ClientID)
	s.metrics.requests.WithLabelValues("register").Inc()
	s.log.Info("agent registered", "agent", a.ClientID, "path", a.Path, "profile", a.Profile, "remote", remoteIP(r))
	writeJSON(w, http.StatusCreated, reg)
	return a.ClientID, nil
}

// issue gives a new credentials (shared secret or the uploaded key) and
// a new RAT, and returns the registration answer.
func (s *Service) issue(a *store.Agent, req registerRequest, now time.Time) (registration, error) {
	if req.ClientID != "" && req.ClientID != a.ClientID {
		return registration{}, refuse(http.StatusBadRequest, errInvalidClientMeta, "client_id in the body is not this agent's", nil)
	}
	reg := registration{ClientID: a.ClientID, GrantTypes: []string{"client_credentials"},
		RegistrationClientURI: s.cfg.BaseURL + RegisterPath + "/" + a.ClientID}
	switch a.Profile {
	case ProfileSharedSecret:
		secret := randomToken()
		sealed, err := s.cfg.Keys.sealSecret(a.ClientID, secret)
		if err != nil {
			return registration{}, err
		}
		a.SecretSealed, a.JWKS = sealed, nil
		reg.ClientSecret, reg.TokenEndpointAuthMethod = secret, "client_secret_jwt"
	case ProfileRSA3072:
		set, raw, rf := parseJWKS(req.JWKS)
		if rf != nil {
			return registration{}, rf
		}
		a.JWKS, a.SecretSealed = raw, nil
		reg.JWKS, reg.TokenEndpointAuthMethod = set, "private_key_jwt"
	default:
		return registration{}, fmt.Errorf("agent %s has unknown profile %q", a.ClientID, a.Profile)
	}
	rat := randomToken()
	a.RATHash = hashToken(rat)
	a.Generation++
	a.Expires = now.Add(s.cfg.CredentialLifetime).Truncate(time.Millisecond)
	a.Used = false
	reg.RegistrationAccessToken = rat
	reg.ClientSecretExpiresAt = a.Expires.Unix()
	return reg, nil
}

// RSA key sizes the RSA_3072 profile accepts.
const (
	minAgentRSABits = 3072
	maxAgentRSABits = 4096
)

// parseJWKS parses the agent's uploaded key set: exactly one RSA public
// key of 3072 to 4096 bits with a sane exponent.
func parseJWKS(raw json.RawMessage) (*jose.JSONWebKeySet, []byte, *refusal) {
	bad := func(desc string, err error) (*jose.JSONWebKeySet, []byte, *refusal) {
		return nil, nil, refuse(http.StatusBadRequest, errInvalidClientMeta, desc, err)
	}
	if len(raw) == 0 {
		return bad("the RSA_3072 profile needs the agent's public key: jwks with one RSA key", nil)
	}
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(raw, &set); err != nil {
		return bad("jwks is not a JSON Web Key Set: "+err.Error(), err)
	}
	if len(set.Keys) != 1 {
		return bad(fmt.Sprintf("jwks has %d keys; want exactly one", len(set.Keys)), nil)
	}
	k := set.Keys[0]
	pub, ok := k.Key.(*rsa.PublicKey)
	if !k.IsPublic() {
		return bad("the key in jwks is a private key; send only the public key (and keep the private one on the agent)", nil)
	}
	if !ok {
		return bad("the key in jwks is not an RSA public key", nil)
	}
	if bits := pub.N.BitLen(); bits < minAgentRSABits || bits > maxAgentRSABits {
		return bad(fmt.Sprintf("the RSA key has %d bits; the RSA_3072 profile needs %d to %d", bits, minAgentRSABits, maxAgentRSABits), nil)
	}
	if pub.E < 3 || pub.E%2 == 0 {
		return bad("the RSA key's exponent is not valid", nil)
	}
	pubOnly := jose.JSONWebKey{Key: pub, KeyID: k.KeyID, Algorithm: k.Algorithm, Use: k.Use}
	out := &jose.JSONWebKeySet{Keys: []jose.JSONWebKey{pubOnly}}
	b, err := json.Marshal(out)
	if err != nil {
		return bad("the key cannot be stored", err)
	}
	return out, b, nil
}

func hashToken(t string) []byte {
	h := sha256.Sum256([]byte(t))
	return h[:]
}

// rotate: PUT /register/{client_id} with Bearer RAT.
func (s *Service) rotate(w http.ResponseWriter, r *http.Request) {
	clientID := r.PathValue("client_id")
	if err := s.doRotate(w, r, clientID); err != nil {
		s.fail(w, r, "rotate", clientID, err)
	}
}

func (s *Service) doRotate(w http.ResponseWriter, r *http.Request, clientID string) error {
	if !s.limits.ip(remoteIP(r)) {
		return refuse(http.StatusTooManyRequests, errRateLimited, "too many requests from this address; retry later", nil)
	}
	rat, ok := bearer(r)
	if !ok {
		return refuse(http.StatusUnauthorized, errInvalidToken, "Authorization: Bearer <registration access token> is required", nil)
	}
	body, rf := readBody(r, maxRegisterBody)
	if rf != nil {
		return rf
	}
	var req registerRequest
	if len(body) > 0 {
		if err := json.Unmarshal(body, &req); err != nil {
			return refuse(http.StatusBadRequest, errInvalidClientMeta, "the body is not a JSON registration request", err)
		}
	}
	ctx := r.Context()
	a, err := s.cfg.Store.Agent(ctx, clientID)
	if errors.Is(err, store.ErrNotFound) {
		return refuse(http.StatusUnauthorized, errInvalidToken, "no such agent or wrong registration access token", nil)
	}
	if err != nil {
		return err
	}
	now := s.now()
	h := hashToken(rat)
	current := len(a.RATHash) > 0 && subtle.ConstantTimeCompare(h, a.RATHash) == 1
	previous := !current && !a.Used && len(a.PrevRATHash) > 0 && now.Before(a.PrevRATUntil) &&
		subtle.ConstantTimeCompare(h, a.PrevRATHash) == 1
	switch {
	case !a.Revoked.IsZero():
		return refuse(http.StatusUnauthorized, errInvalidToken, "the agent is revoked", nil)
	case !current && !previous:
		return refuse(http.StatusUnauthorized, errInvalidToken, "no such agent or wrong registration access token (an old one stops working once the new credentials are used)", nil)
	case !now.Before(a.Expires):
		return refuse(http.StatusUnauthorized, errInvalidToken, "the credentials have expired; onboard the agent again with a new boarding configuration (agent rotate-iat)", nil)
	}
	// Per agent only once the RAT matched (see doToken).
	if !s.limits.agent(a.ClientID) {
		return refuse(http.StatusTooManyRequests, errRateLimited, "too many rotations of this agent; retry later", nil)
	}
	if err := s.checkNotRevoked(ctx, a.Path); err != nil {
		return refuse(http.StatusUnauthorized, errInvalidToken, "the agent's path is revoked", err)
	}
	if a.Profile == ProfileRSA3072 && len(req.JWKS) == 0 {
		req.JWKS = a.JWKS // keep the registered key
	}
	prev := a.RATHash
	if previous {
		prev = a.PrevRATHash
	}
	reg, err := s.issue(&a, req, now)
	if err != nil {
		return err
	}
	a.PrevRATHash, a.PrevRATUntil = prev, now.Add(RATGrace).Truncate(time.Millisecond)
	if _, err := s.updateAgent(ctx, a); errors.Is(err, store.ErrStale) {
		return refuse(http.StatusConflict, errInvalidRequest, "the agent's credentials changed concurrently; retry", err)
	} else if err != nil {
		return err
	}
	s.tokens.Delete(a.ClientID)
	s.metrics.requests.WithLabelValues("rotate").Inc()
	s.log.Info("agent credentials rotated", "agent", a.ClientID, "path", a.Path, "generation", a.Generation, "with_previous_rat", previous)
	writeJSON(w, http.StatusOK, reg)
	return nil
}

// tokenResponse is the access token answer (RFC 6749 §5.1).
type tokenResponse struct {
	AccessToken string `json:"access_token"`
	TokenType   string `json:"token_type"`
	ExpiresIn   int64  `json:"expires_in"`
	Scope       string `json:"scope"`
	JTI         string `json:"jti"`
}

// Scopes of an agent's access token.
var agentScopes = []string{"fieldtrust:agent:exchange", "fieldtrust:agent:configuration"}

// cachedToken is an access token handed out for one generation of an
// agent's credentials. While more than two thirds of its life remain, a
// new request with a fresh assertion gets the same token back (RFC 6749
// allows it), sparing an RSA signature (1.3 ms) per request of an agent
// that retries or asks too often.
type cachedToken struct {
	generation int64
	resp       tokenResponse
	expires    time.Time
}

// token: POST /oauth/token with a JWT client assertion.
func (s *Service) token(w http.ResponseWriter, r *http.Request) {
	clientID, err := s.doToken(w, r)
	if err != nil {
		s.fail(w, r, "token", clientID, err)
	}
}

func (s *Service) doToken(w http.ResponseWriter, r *http.Request) (string, error) {
	if !s.limits.ip(remoteIP(r)) {
		return "", refuse(http.StatusTooManyRequests, errRateLimited, "too many token requests from this address; retry later", nil)
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxTokenBody)
	if err := r.ParseForm(); err != nil {
		return "", refuse(http.StatusBadRequest, errInvalidRequest, "the body is not a form of at most 16 KiB", err)
	}
	switch {
	case r.PostForm.Get("grant_type") != "client_credentials":
		return "", refuse(http.StatusBadRequest, errUnsupportedGrantType, "grant_type must be client_credentials", nil)
	case r.PostForm.Get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer":
		return "", refuse(http.StatusBadRequest, errInvalidRequest, "client_assertion_type must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer", nil)
	}
	assertion := r.PostForm.Get("client_assertion")
	clientID, err := assertionIssuer(assertion)
	if err != nil {
		return "", refuse(http.StatusUnauthorized, errInvalidClient, "client_assertion is not a signed JWT with an iss (allowed algorithms: HS256, RS256, RS384, RS512)", err)
	}
	ctx := r.Context()
	now := s.now()
	a, err := s.cachedAgent(ctx, clientID)
	if errors.Is(err, store.ErrNotFound) {
		return clientID, refuse(http.StatusUnauthorized, errInvalidClient, "unknown client", nil)
	}
	if err != nil {
		return clientID, err
	}
	switch {
	case !a.Revoked.IsZero():
		return clientID, refuse(http.StatusUnauthorized, errInvalidClient, "the agent is revoked", nil)
	case a.Expires.IsZero():
		return clientID, refuse(http.StatusUnauthorized, errInvalidClient, "the agent has not registered; onboard it first", nil)
	case !now.Before(a.Expires):
		return clientID, refuse(http.StatusUnauthorized, errInvalidClient, "the agent's credentials have expired; onboard it again with a new boarding configuration (agent rotate-iat)", nil)
	}
	key, err := s.assertionKey(a)
	if err != nil {
		return clientID, err
	}
	c, err := verifyAssertion(assertion, a.Profile, key, a.ClientID, a.Tenant, now, Skew, MaxAssertionLifetime)
	if err != nil {
		return clientID, refuse(http.StatusUnauthorized, errInvalidClient, "the client assertion does not verify: "+err.Error(), err)
	}
	// Per agent only once the assertion verified: made-up assertions
	// naming an agent must not use up that agent's budget.
	if !s.limits.agent(clientID) {
		return clientID, refuse(http.StatusTooManyRequests, errRateLimited, "too many token requests for this agent; retry later", nil)
	}
	if err := s.cachedNotRevoked(ctx, a.Path); err != nil {
		return clientID, refuse(http.StatusUnauthorized, errInvalidClient, "the agent's path is revoked", err)
	}
	if err := s.cfg.Store.UseAgentAssertion(ctx, a.ClientID, c.ID, c.Expiry.Time().Add(Skew), now); errors.Is(err, store.ErrExists) {
		return clientID, refuse(http.StatusBadRequest, errInvalidGrant, "the client assertion's jti was used before; sign a new assertion for each request", nil)
	} else if err != nil {
		return clientID, err
	}
	if !a.Used {
		if err := s.markUsed(ctx, a); err != nil {
			return clientID, err
		}
	}
	resp, err := s.accessToken(a, now)
	if err != nil {
		return clientID, err
	}
	s.metrics.requests.WithLabelValues("token").Inc()
	writeJSON(w, http.StatusOK, resp)
	return clientID, nil
}

// markUsed records that the agent's current credentials are in use, which
// ends the grace of the previous RAT. A concurrent rotation wins: then the
// credentials just verified are no longer current.
func (s *Service) markUsed(ctx context.Context, a store.Agent) error {
	for {
		a.Used, a.PrevRATHash, a.PrevRATUntil = true, nil, time.Time{}
		_, err := s.updateAgent(ctx, a)
		if !errors.Is(err, store.ErrStale) {
			return err
		}
		cur, err := s.cfg.Store.Agent(ctx, a.ClientID)
		if err != nil {
			return err
		}
		if cur.Generation != a.Generation || !cur.Revoked.IsZero() {
			return refuse(http.StatusUnauthorized, errInvalidClient, "the credentials were rotated or revoked meanwhile", nil)
		}
		if cur.Used {
			return nil
		}
		a = cur
	}
}

// assertionKey is the key that verifies the agent's assertions.
func (s *Service) assertionKey(a store.Agent) (any, error) {
	switch a.Profile {
	case ProfileSharedSecret:
		secret, err := s.cfg.Keys.openSecret(a.ClientID, a.SecretSealed)
		if err != nil {
			return nil, fmt.Errorf("open the shared secret of agent %s (was the agent key replaced?): %w", a.ClientID, err)
		}
		return secret, nil
	case ProfileRSA3072:
		set, _, rf := parseJWKS(a.JWKS)
		if rf != nil {
			return nil, fmt.Errorf("stored key of agent %s: %s", a.ClientID, rf.desc)
		}
		return set.Keys[0].Key, nil
	}
	return nil, fmt.Errorf("agent %s has unknown profile %q", a.ClientID, a.Profile)
}

// accessToken returns a 30-minute access token for the agent.
func (s *Service) accessToken(a store.Agent, now time.Time) (tokenResponse, error) {
	if v, ok := s.tokens.Load(a.ClientID); ok && !s.noTokenReuse {
		ct := v.(cachedToken)
		if ct.generation == a.Generation && ct.expires.Sub(now) > AccessTokenLifetime*2/3 {
			ct.resp.ExpiresIn = int64(ct.expires.Sub(now) / time.Second)
			return ct.resp, nil
		}
	}
	exp := now.Add(AccessTokenLifetime)
	jti := randomHex(16)
	tok, err := s.cfg.Keys.sign(platformClaims{
		Claims: jwt.Claims{Issuer: s.tokenIssuer(), Subject: a.ClientID, Audience: jwt.Audience{audAgent}, ID: jti,
			IssuedAt: jwt.NewNumericDate(now), NotBefore: jwt.NewNumericDate(now.Add(-Skew)), Expiry: jwt.NewNumericDate(exp)},
		Use: useAccess, Tenant: a.Tenant, TenantID: a.Tenant, Path: a.Path, Scope: agentScopes, ClientID: a.ClientID,
	})
	if err != nil {
		return tokenResponse{}, fmt.Errorf("sign access token: %w", err)
	}
	resp := tokenResponse{AccessToken: tok, TokenType: "Bearer", ExpiresIn: int64(AccessTokenLifetime / time.Second),
		Scope: strings.Join(agentScopes, " "), JTI: jti}
	s.tokens.Store(a.ClientID, cachedToken{generation: a.Generation, resp: resp, expires: exp})
	return resp, nil
}

// tokenKey: GET /oauth/token_key (and token_keys): the public token key.
func (s *Service) tokenKey(w http.ResponseWriter, r *http.Request) {
	key := map[string]string{"kty": "RSA", "alg": "RS256", "use": "sig", "kid": s.cfg.Keys.kid, "value": s.cfg.Keys.PublicPEM()}
	jwk := jose.JSONWebKey{Key: &s.cfg.Keys.token.PublicKey, KeyID: s.cfg.Keys.kid, Algorithm: "RS256", Use: "sig"}
	b, _ := jwk.MarshalJSON()
	var m map[string]any
	json.Unmarshal(b, &m)
	for k, v := range key {
		m[k] = v
	}
	if strings.HasSuffix(r.URL.Path, "token_keys") {
		writeJSON(w, http.StatusOK, map[string]any{"keys": []any{m}})
		return
	}
	writeJSON(w, http.StatusOK, m)
}

// authenticate verifies an access token and returns the agent it names,
// which must be neither revoked nor expired.
func (s *Service) authenticate(r *http.Request) (store.Agent, error) {
	tok, ok := bearer(r)
	if !ok {
		return store.Agent{}, refuse(http.StatusUnauthorized, errInvalidToken, "Authorization: Bearer <access token> is required", nil)
	}
	c, err := s.cfg.Keys.verify(tok, useAccess, audAgent, s.tokenIssuer(), s.now())
	if err != nil {
		return store.Agent{}, refuse(http.StatusUnauthorized, errInvalidToken, "the access token is not valid (expired or not from this platform); get a new one at "+TokenPath, err)
	}
	a, err := s.cachedAgent(r.Context(), c.Subject)
	if errors.Is(err, store.ErrNotFound) {
		return a, refuse(http.StatusUnauthorized, errInvalidToken, "unknown agent", nil)
	}
	if err != nil {
		return a, err
	}
	if !a.Revoked.IsZero() || a.Path != c.Path {
		return a, refuse(http.StatusUnauthorized, errInvalidToken, "the agent is revoked", nil)
	}
	return a, nil
}
