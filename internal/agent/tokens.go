package agent

import (
	"crypto/rsa"
	"errors"
	"fmt"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// Token uses: the platform signs initial access tokens and access tokens
// with one key, and each says what it is, so neither passes for the other.
const (
	useIAT    = "iat"
	useAccess = "access"
)

// Audiences. "southgate" is what MindConnect agents put in their client
// assertions (and what their access tokens carry).
const (
	audAgent    = "southgate"
	audRegister = "fieldtrust-agent-registration"
)

// platformClaims are the claims of the JWTs the platform signs.
type platformClaims struct {
	jwt.Claims
	Use      string   `json:"token_use"`
	Tenant   string   `json:"ten"`
	TenantID string   `json:"tenantId,omitempty"`
	Path     string   `json:"path"`
	Scope    []string `json:"scope,omitempty"`
	ClientID string   `json:"client_id,omitempty"`
}

// assertionClaims are the claims of an agent's client assertion.
type assertionClaims struct {
	jwt.Claims
	Tenant string `json:"ten"`
}

// platformAlgs are the only algorithms a platform-signed token may name.
var platformAlgs = []jose.SignatureAlgorithm{jose.RS256}

// assertionAlgs are the algorithms each profile's client assertions may
// use: HS256 with the shared secret, RS256/384/512 with the uploaded key.
// Parsing with the profile's list refuses "none" and any algorithm of the
// other profile (algorithm confusion: an RSA public key used as an HMAC
// secret) before a signature is looked at.
var assertionAlgs = map[string][]jose.SignatureAlgorithm{
	ProfileSharedSecret: {jose.HS256},
	ProfileRSA3072:      {jose.RS256, jose.RS384, jose.RS512},
}

// allAssertionAlgs is every algorithm of any profile: enough to read the
// issuer, which says whose profile applies.
var allAssertionAlgs = []jose.SignatureAlgorithm{jose.HS256, jose.RS256, jose.RS384, jose.RS512}

func (k *Keys) sign(c platformClaims) (string, error) {
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: k.token},
		(&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", k.kid))
	if err != nil {
		return "", err
	}
	return jwt.Signed(signer).Claims(c).Serialize()
}

// verify checks a token the platform signed: signature (RS256 with the
// token key only), use, audience, issuer and times.
func (k *Keys) verify(token, use, aud, issuer string, now time.Time) (platformClaims, error) {
	var c platformClaims
	t, err := jwt.ParseSigned(token, platformAlgs)
	if err != nil {
		return c, fmt.Errorf("not a token of this platform: %w", err)
	}
	if err := t.Claims(&k.token.PublicKey, &c); err != nil {
		return c, fmt.Errorf("signature: %w", err)
	}
	if c.Use != use {
		return c, fmt.Errorf("a %q token, not an %q token", c.Use, use)
	}
	if c.Expiry == nil || c.Subject == "" || c.ID == "" {
		return c, errors.New("token lacks exp, sub or jti")
	}
	if err := c.ValidateWithLeeway(jwt.Expected{Issuer: issuer, AnyAudience: jwt.Audience{aud}, Time: now}, 0); err != nil {
		return c, err
	}
	return c, nil
}

// assertionFacts is what an unverified client assertion claims: only good
// for deciding which key would verify it.
func assertionIssuer(token string) (string, error) {
	t, err := jwt.ParseSigned(token, allAssertionAlgs)
	if err != nil {
		return "", err
	}
	var c assertionClaims
	if err := t.UnsafeClaimsWithoutVerification(&c); err != nil {
		return "", err
	}
	if c.Issuer == "" || len(c.Issuer) > 128 {
		return "", errors.New("no usable iss")
	}
	return c.Issuer, nil
}

// verifyAssertion verifies a client assertion with the key of the agent's
// profile (a []byte shared secret or an *rsa.PublicKey) and checks its
// claims: iss = sub = client id, aud "southgate", ten, exp/nbf/iat within
// skew, a lifetime of at most maxLifetime, a jti.
func verifyAssertion(token, profile string, key any, clientID, tenant string, now time.Time, skew, maxLifetime time.Duration) (assertionClaims, error) {
	var c assertionClaims
	algs := assertionAlgs[profile]
	if algs == nil {
		return c, fmt.Errorf("unknown profile %q", profile)
	}
	switch key.(type) {
	case []byte:
		if profile != ProfileSharedSecret {
			return c, errors.New("key does not fit the profile")
		}
	case *rsa.PublicKey:
		if profile != ProfileRSA3072 {
			return c, errors.New("key does not fit the profile")
		}
	default:
		return c, errors.New("no key")
	}
	t, err := jwt.ParseSigned(token, algs)
	if err != nil {
		return c, fmt.Errorf("%w (profile %s allows %v)", err, profile, algs)
	}
	if err := t.Claims(key, &c); err != nil {
		return c, fmt.Errorf("signature: %w", err)
	}
	if c.Subject != clientID || c.Issuer != clientID {
		return c, errors.New("iss and sub must both be the client id")
	}
	if c.Tenant != tenant {
		return c, fmt.Errorf("ten %q is not the agent's tenant", c.Tenant)
	}
	if c.ID == "" || len(c.ID) > 128 {
		return c, errors.New("jti missing or longer than 128 bytes")
	}
	if c.Expiry == nil || c.IssuedAt == nil {
		return c, errors.New("exp and iat are required")
	}
	if err := c.ValidateWithLeeway(jwt.Expected{AnyAudience: jwt.Audience{audAgent}, Time: now}, skew); err != nil {
		return c, err
	}
	exp, iat := c.Expiry.Time(), c.IssuedAt.Time()
	if exp.Sub(iat) > maxLifetime || exp.After(now.Add(maxLifetime+skew)) {
		return c, fmt.Errorf("lifetime beyond %s", maxLifetime)
	}
	return c, nil
}
