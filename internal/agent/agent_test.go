package agent

import (
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/fieldtrust/fieldtrust/internal/ledger"
	"github.com/fieldtrust/fieldtrust/internal/snapshot"
	"github.com/fieldtrust/fieldtrust/internal/store"
)

// TestOnboardTokenExchange: the whole path of both profiles, from the
// boarding configuration to stored, chained, ledgered snapshots with the
// agent's provenance.
func TestOnboardTokenExchange(t *testing.T) {
	for _, profile := range []string{ProfileSharedSecret, ProfileRSA3072} {
		t.Run(profile, func(t *testing.T) {
			h := newHarness(t, noLimits)
			c := h.onboard("acme/plant-berlin/press-7", profile)
			b := c.boarding.Content
			if b.BaseURL != h.srv.URL || b.Tenant != "acme" || len(b.ClientCredentialProfile) != 1 || b.ClientCredentialProfile[0] != profile {
				t.Fatalf("boarding content %+v", b)
			}
			reg := c.reg
			if reg.ClientID != b.ClientID || reg.RegistrationAccessToken == "" || reg.RegistrationClientURI != h.srv.URL+RegisterPath+"/"+reg.ClientID ||
				len(reg.GrantTypes) != 1 || reg.GrantTypes[0] != "client_credentials" {
				t.Fatalf("registration %+v", reg)
			}
			if exp := time.Unix(reg.ClientSecretExpiresAt, 0); exp.Sub(h.clock.Now()) < CredentialLifetime-time.Minute || exp.Sub(h.clock.Now()) > CredentialLifetime {
				t.Fatalf("client_secret_expires_at %v is not 7 days ahead", exp)
			}
			switch profile {
			case ProfileSharedSecret:
				if reg.ClientSecret == "" || reg.TokenEndpointAuthMethod != "client_secret_jwt" {
					t.Fatalf("shared secret registration %+v", reg)
				}
				row := h.agentRow(reg.ClientID)
				if strings.Contains(string(row.SecretSealed), reg.ClientSecret) || strings.Contains(string(row.RATHash), reg.RegistrationAccessToken) {
					t.Fatal("a secret is stored in the clear")
				}
			case ProfileRSA3072:
				if reg.ClientSecret != "" || reg.TokenEndpointAuthMethod != "private_key_jwt" || reg.JWKS == nil || len(reg.JWKS.Keys) != 1 {
					t.Fatalf("RSA registration %+v", reg)
				}
			}
			tok := c.token()
			// The access token verifies with the published key, as the SDK
			// checks it, and carries tenant, scopes and path.
			var key map[string]any
			h.do("GET", TokenKeyPath, nil, nil).json(t, &key)
			value, _ := key["value"].(string)
			if strings.Contains(value, "\n") || !strings.HasPrefix(value, "-----BEGIN PUBLIC KEY-----") || !strings.HasSuffix(value, "-----END PUBLIC KEY-----") {
				t.Fatalf("token_key value is not single-line PEM: %q", value)
			}
			pemText := strings.Replace(strings.Replace(value, "-----BEGIN PUBLIC KEY-----", "-----BEGIN PUBLIC KEY-----\n", 1), "-----END PUBLIC KEY-----", "\n-----END PUBLIC KEY-----", 1)
			blk, _ := pem.Decode([]byte(pemText))
			if blk == nil {
				t.Fatal("token_key value does not decode as the SDK rebuilds it")
			}
			pub, err := x509.ParsePKIXPublicKey(blk.Bytes)
			if err != nil {
				t.Fatal(err)
			}
			parsed, err := jwt.ParseSigned(tok, []jose.SignatureAlgorithm{jose.RS256})
			if err != nil {
				t.Fatal(err)
			}
			var claims map[string]any
			if err := parsed.Claims(pub, &claims); err != nil {
				t.Fatalf("access token does not verify with token_key: %v", err)
			}
			if claims["tenantId"] != "acme" || claims["path"] != "acme/plant-berlin/press-7" || claims["sub"] != reg.ClientID || claims["scope"] == nil {
				t.Fatalf("access token claims %v", claims)
			}
			var keys struct{ Keys []map[string]any }
			h.do("GET", TokenKeysPath, nil, nil).json(t, &keys)
			if len(keys.Keys) != 1 || keys.Keys[0]["value"] != value {
				t.Fatalf("token_keys %+v", keys)
			}

			// Configuration with eTag.
			r := c.putConfig(tok, sampleConfig("cfg-1"), "0")
			if r.Status != http.StatusOK {
				t.Fatalf("put configuration: %d %s", r.Status, r.Body)
			}
			var got DataSourceConfiguration
			r.json(t, &got)
			if got.ETag != "1" || got.ID != reg.ClientID {
				t.Fatalf("stored configuration eTag %q id %q", got.ETag, got.ID)
			}
			r = h.do("GET", ManagementPrefix+"/agents/"+reg.ClientID+"/dataSourceConfiguration", bearerHdr(tok), nil)
			if r.Status != http.StatusOK || r.Header.Get("ETag") != "1" {
				t.Fatalf("get configuration: %d %s", r.Status, r.Body)
			}

			// Two posts chain onto each other.
			t0 := h.clock.Now().Truncate(time.Millisecond)
			for i, vals := range []string{
				`[{"dataPointId":"DP-Temperature","qualityCode":"0","value":"21.5"},{"dataPointId":"DP-Count","qualityCode":"0","value":"7"},{"dataPointId":"DP-Open","qualityCode":"0","value":"true"}]`,
				`[{"dataPointId":"DP-Temperature","qualityCode":"0","value":"22"},{"dataPointId":"DP-Pressure","qualityCode":"0","value":"101.3"}]`,
			} {
				if r := c.post(tok, exchangeBody("cfg-1", t0.Add(time.Duration(i)*time.Second), vals)); r.Status != http.StatusOK {
					t.Fatalf("post %d: %d %s", i, r.Status, r.Body)
				}
			}
			recs, err := h.st.QuerySnapshots(t.Context(), store.SnapshotQuery{Scope: "acme/plant-berlin"})
			if err != nil {
				t.Fatal(err)
			}
			if len(recs) != 2 {
				t.Fatalf("%d snapshots stored; want 2", len(recs))
			}
			first, second := recs[0], recs[1]
			if first.Path() != "acme/plant-berlin/press-7/EnvironmentData" || first.Seq != 1 || second.Seq != 2 ||
				string(second.Prev) != string(first.Hash) || !first.Time.Equal(t0) {
				t.Fatalf("snapshots %+v / %+v", first, second)
			}
			if first.Provenance() != store.ProvenanceAgentTLS || first.Signer != store.AgentSignerPrefix+reg.ClientID {
				t.Fatalf("provenance %q signer %q", first.Provenance(), first.Signer)
			}
			want := []snapshot.Value{{Channel: "DP-Temperature", Value: 21.5, Unit: "°C"}, {Channel: "DP-Count", Value: 7}, {Channel: "DP-Open", Value: 1}}
			if len(first.Values) != len(want) {
				t.Fatalf("values %+v; want %+v", first.Values, want)
			}
			for i := range want {
				if first.Values[i] != want[i] {
					t.Fatalf("values %+v; want %+v", first.Values, want)
				}
			}
			// The stored record re-encodes to its hash, and the ledger
			// leaf at its index records it.
			enc, err := snapshot.Encode(second.Snapshot())
			if err != nil {
				t.Fatal(err)
			}
			if h := snapshot.Hash(enc); string(h[:]) != string(second.Hash) {
				t.Fatal("stored snapshot does not re-encode to its hash")
			}
			var hash [32]byte
			copy(hash[:], second.Hash)
			idx, err := h.lg.Find(t.Context(), ledger.LeafData("acme/plant-berlin/press-7", hash))
			if err != nil || idx != second.LedgerIndex {
				t.Fatalf("ledger leaf %d, %v; want %d", idx, err, second.LedgerIndex)
			}
			if len(h.stored) != 2 {
				t.Fatalf("the Stored hook saw %d snapshots; want 2", len(h.stored))
			}
		})
	}
}

// mustRefuse asserts a refusal with status and OAuth error, counted in
// the metrics, and that the agent's stored state did not change.
func mustRefuse(t *testing.T, h *harness, r response, status int, code, endpoint, clientID string, before store.Agent) {
	t.Helper()
	if r.Status != status {
		t.Fatalf("status %d (%s); want %d", r.Status, r.Body, status)
	}
	if got := r.oauthError(t); got != code {
		t.Fatalf("error %q (%s); want %q", got, r.Body, code)
	}
	if h.refusals(endpoint, code) < 1 {
		t.Fatalf("refusal not counted as %s/%s", endpoint, code)
	}
	if clientID != "" {
		after := h.agentRow(clientID)
		if after.Version != before.Version {
			t.Fatalf("the refusal changed the agent: version %d -> %d", before.Version, after.Version)
		}
	}
}

// TestBadIAT: a reused, expired, forged, other-tenant or replaced IAT is
// refused and changes nothing.
func TestBadIAT(t *testing.T) {
	h := newHarness(t, noLimits)
	other, err := LoadKeys(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	forge := func(b Boarding, mutate func(*platformClaims), keys *Keys) string {
		var c platformClaims
		tok, _ := jwt.ParseSigned(b.Content.IAT, platformAlgs)
		tok.UnsafeClaimsWithoutVerification(&c)
		mutate(&c)
		s, err := keys.sign(c)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	used := h.onboard("acme/acc/used", ProfileSharedSecret)
	replaced := h.create("acme/acc/replaced", ProfileSharedSecret)
	if _, _, err := h.svc.RotateIAT(t.Context(), "acme/acc/replaced"); err != nil {
		t.Fatal(err)
	}
	fresh := h.create("acme/acc/fresh", ProfileSharedSecret)
	revoked := h.create("acme/acc/revoked", ProfileSharedSecret)
	if _, err := h.svc.Revoke(t.Context(), "acme/acc/revoked"); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		iat      string
		clientID string
	}{
		{"reused", used.boarding.Content.IAT, used.reg.ClientID},
		{"replaced by rotate-iat", replaced.Content.IAT, replaced.Content.ClientID},
		{"forged with another key", forge(fresh, func(*platformClaims) {}, other), fresh.Content.ClientID},
		{"other tenant", forge(fresh, func(c *platformClaims) { c.Tenant = "evil" }, h.svc.cfg.Keys), fresh.Content.ClientID},
		{"other path", forge(fresh, func(c *platformClaims) { c.Path = "acme/acc/other" }, h.svc.cfg.Keys), fresh.Content.ClientID},
		{"an access-token use", forge(fresh, func(c *platformClaims) { c.Use = useAccess }, h.svc.cfg.Keys), fresh.Content.ClientID},
		{"expired", forge(fresh, func(c *platformClaims) { c.Expiry = jwt.NewNumericDate(time.Now().Add(-time.Minute)) }, h.svc.cfg.Keys), fresh.Content.ClientID},
		{"revoked agent", revoked.Content.IAT, revoked.Content.ClientID},
		{"not a JWT", "garbage", ""},
		{"alg none", unsignedJWT(map[string]any{"sub": fresh.Content.ClientID, "token_use": "iat"}), fresh.Content.ClientID},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var before store.Agent
			if tc.clientID != "" {
				before = h.agentRow(tc.clientID)
			}
			mustRefuse(t, h, h.register(tc.iat, map[string]any{}), http.StatusUnauthorized, errInvalidToken, "register", tc.clientID, before)
		})
	}
	// The IAT expires after 7 days by the clock.
	h.clock.Add(IATLifetime + time.Second)
	before := h.agentRow(fresh.Content.ClientID)
	mustRefuse(t, h, h.register(fresh.Content.IAT, map[string]any{}), http.StatusUnauthorized, errInvalidToken, "register", fresh.Content.ClientID, before)
}

// unsignedJWT is a JWT with alg "none".
func unsignedJWT(claims map[string]any) string {
	hdr := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","typ":"JWT"}`))
	body, _ := json.Marshal(claims)
	return hdr + "." + base64.RawURLEncoding.EncodeToString(body) + "."
}

// TestBadAssertion: every wrong client assertion is invalid_client (a
// reused jti invalid_grant) and changes nothing.
func TestBadAssertion(t *testing.T) {
	h := newHarness(t, noLimits)
	ss := h.onboard("acme/acc/ss", ProfileSharedSecret)
	rs := h.onboard("acme/acc/rs", ProfileRSA3072)
	ss.token() // the credentials are in use: later refusals must not change the row
	rs.token()
	pubDER, _ := x509.MarshalPKIXPublicKey(&rs.rsaKey.PublicKey)
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})
	with := func(c *client, kv ...any) map[string]any {
		m := c.claims()
		for i := 0; i < len(kv); i += 2 {
			if kv[i+1] == nil {
				delete(m, kv[i].(string))
			} else {
				m[kv[i].(string)] = kv[i+1]
			}
		}
		return m
	}
	now := h.clock.Now().Unix()
	reused := ss.assertion(ss.claims())
	if r := h.tokenRequest(reused); r.Status != http.StatusOK {
		t.Fatalf("first use: %d %s", r.Status, r.Body)
	}
	for _, tc := range []struct {
		name      string
		c         *client
		assertion string
		code      string
		status    int
	}{
		{"wrong secret", ss, sign(t, jose.HS256, []byte(strings.Repeat("x", 43)), ss.claims()), errInvalidClient, 401},
		{"wrong RSA key", rs, sign(t, jose.RS384, rsaKey(t, 3072+8), rs.claims()), errInvalidClient, 401},
		{"alg none", ss, unsignedJWT(ss.claims()), errInvalidClient, 401},
		{"HS256 keyed with the RSA public key (algorithm confusion)", rs, sign(t, jose.HS256, pubPEM, rs.claims()), errInvalidClient, 401},
		{"RS256 on the shared-secret profile", ss, sign(t, jose.RS256, rsaKey(t, 3072), ss.claims()), errInvalidClient, 401},
		{"HS512 (unexpected algorithm)", ss, sign(t, jose.HS512, []byte(ss.reg.ClientSecret+ss.reg.ClientSecret), ss.claims()), errInvalidClient, 401},
		{"PS256 (unexpected algorithm)", rs, sign(t, jose.PS256, rs.rsaKey, rs.claims()), errInvalidClient, 401},
		{"wrong ten", ss, ss.assertion(with(ss, "ten", "other")), errInvalidClient, 401},
		{"no ten", ss, ss.assertion(with(ss, "ten", nil)), errInvalidClient, 401},
		{"wrong aud", ss, ss.assertion(with(ss, "aud", "elsewhere")), errInvalidClient, 401},
		{"aud as a string is fine, sub differs", ss, ss.assertion(with(ss, "aud", "southgate", "sub", "someone")), errInvalidClient, 401},
		{"expired", ss, ss.assertion(with(ss, "exp", now-int64(Skew/time.Second)-5)), errInvalidClient, 401},
		{"far-future exp", ss, ss.assertion(with(ss, "exp", now+int64(8*24*time.Hour/time.Second))), errInvalidClient, 401},
		{"not yet valid", ss, ss.assertion(with(ss, "nbf", now+3600)), errInvalidClient, 401},
		{"issued in the future", ss, ss.assertion(with(ss, "iat", now+3600)), errInvalidClient, 401},
		{"no exp", ss, ss.assertion(with(ss, "exp", nil)), errInvalidClient, 401},
		{"no jti", ss, ss.assertion(with(ss, "jti", nil)), errInvalidClient, 401},
		{"unknown client", ss, ss.assertion(with(ss, "iss", "nobody", "sub", "nobody")), errInvalidClient, 401},
		{"reused jti", ss, reused, errInvalidGrant, 400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := h.agentRow(tc.c.reg.ClientID)
			mustRefuse(t, h, h.tokenRequest(tc.assertion), tc.status, tc.code, "token", tc.c.reg.ClientID, before)
		})
	}
	// The vendor's 7-day assertion lifetime and a string aud are accepted.
	if r := h.tokenRequest(ss.assertion(with(ss, "aud", "southgate", "exp", now+int64(7*24*time.Hour/time.Second)))); r.Status != http.StatusOK {
		t.Fatalf("7-day assertion with aud as a string: %d %s", r.Status, r.Body)
	}
	// Form errors.
	r := h.do("POST", TokenPath, map[string]string{"Content-Type": "application/x-www-form-urlencoded"}, []byte("grant_type=password"))
	mustRefuse(t, h, r, 400, errUnsupportedGrantType, "token", "", store.Agent{})
	r = h.do("POST", TokenPath, map[string]string{"Content-Type": "application/x-www-form-urlencoded"}, []byte("grant_type=client_credentials&client_assertion_type=x"))
	mustRefuse(t, h, r, 400, errInvalidRequest, "token", "", store.Agent{})
	r = h.do("POST", TokenPath, map[string]string{"Content-Type": "application/x-www-form-urlencoded"}, []byte("grant_type=client_credentials&client_assertion="+strings.Repeat("a", 20<<10)))
	mustRefuse(t, h, r, 400, errInvalidRequest, "token", "", store.Agent{})
}

// TestRotation: a rotation gives new credentials and a new RAT; the old
// secret stops working at once, the old RAT once the new credentials are
// used (or after the grace period).
func TestRotation(t *testing.T) {
	h := newHarness(t, noLimits)
	c := h.onboard("acme/acc/rot", ProfileSharedSecret)
	old := c.reg
	rotate := func(rat string) response {
		b, _ := json.Marshal(map[string]string{"client_id": old.ClientID})
		return h.do("PUT", RegisterPath+"/"+old.ClientID, map[string]string{"Authorization": "Bearer " + rat, "Content-Type": "application/json"}, b)
	}
	r := rotate(old.RegistrationAccessToken)
	if r.Status != http.StatusOK {
		t.Fatalf("rotate: %d %s", r.Status, r.Body)
	}
	var lost registration
	r.json(t, &lost)
	if lost.ClientSecret == old.ClientSecret || lost.RegistrationAccessToken == old.RegistrationAccessToken {
		t.Fatal("rotation kept the secret or the RAT")
	}
	// The answer was lost: the old RAT rotates once more while the new
	// credentials are unused.
	r = rotate(old.RegistrationAccessToken)
	if r.Status != http.StatusOK {
		t.Fatalf("retry with the previous RAT in its grace: %d %s", r.Status, r.Body)
	}
	r.json(t, &c.reg)
	// The lost credentials and RAT are dead.
	before := h.agentRow(old.ClientID)
	mustRefuse(t, h, rotate(lost.RegistrationAccessToken), 401, errInvalidToken, "rotate", old.ClientID, before)
	lostClient := &client{h: h, boarding: c.boarding, reg: lost}
	mustRefuse(t, h, h.tokenRequest(lostClient.assertion(lostClient.claims())), 401, errInvalidClient, "token", old.ClientID, before)
	oldClient := &client{h: h, boarding: c.boarding, reg: old}
	mustRefuse(t, h, h.tokenRequest(oldClient.assertion(oldClient.claims())), 401, errInvalidClient, "token", old.ClientID, before)
	// Using the new credentials ends the old RAT's grace.
	c.token()
	before = h.agentRow(old.ClientID)
	mustRefuse(t, h, rotate(old.RegistrationAccessToken), 401, errInvalidToken, "rotate", old.ClientID, before)
	// The current RAT rotates; after the grace period the one before is dead
	// even if the new credentials were never used.
	cur := c.reg.RegistrationAccessToken
	if r := rotate(cur); r.Status != http.StatusOK {
		t.Fatalf("rotate with the current RAT: %d %s", r.Status, r.Body)
	}
	h.clock.Add(RATGrace + time.Second)
	before = h.agentRow(old.ClientID)
	mustRefuse(t, h, rotate(cur), 401, errInvalidToken, "rotate", old.ClientID, before)
	// A RAT of another agent, a missing one, and expired credentials.
	other := h.onboard("acme/acc/other", ProfileSharedSecret)
	mustRefuse(t, h, rotate(other.reg.RegistrationAccessToken), 401, errInvalidToken, "rotate", old.ClientID, before)
	mustRefuse(t, h, h.do("PUT", RegisterPath+"/"+old.ClientID, nil, nil), 401, errInvalidToken, "rotate", old.ClientID, before)
	h.clock.Add(CredentialLifetime)
	before = h.agentRow(other.reg.ClientID)
	b, _ := json.Marshal(map[string]string{"client_id": other.reg.ClientID})
	r = h.do("PUT", RegisterPath+"/"+other.reg.ClientID, bearerHdr(other.reg.RegistrationAccessToken), b)
	mustRefuse(t, h, r, 401, errInvalidToken, "rotate", other.reg.ClientID, before)
	mustRefuse(t, h, h.tokenRequest(other.assertion(other.claims())), 401, errInvalidClient, "token", other.reg.ClientID, before)
}

// TestRSAKeyChecks: the RSA_3072 profile refuses small keys, private keys
// and key sets of other sizes.
func TestRSAKeyChecks(t *testing.T) {
	h := newHarness(t, noLimits)
	small := rsaKey(t, 2048)
	for _, tc := range []struct {
		name string
		body any
	}{
		{"2048-bit key", map[string]any{"jwks": jwks(small)}},
		{"no key", map[string]any{}},
		{"two keys", map[string]any{"jwks": jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &rsaKey(t, 3072).PublicKey}, {Key: &rsaKey(t, 3072).PublicKey}}}}},
		{"a symmetric key", map[string]any{"jwks": map[string]any{"keys": []any{map[string]any{"kty": "oct", "k": "c2VjcmV0"}}}}},
		{"not JSON", "jwks"},
		{"private key", map[string]any{"jwks": jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: rsaKey(t, 3072)}}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := h.create("acme/acc/"+strings.ReplaceAll(tc.name, " ", "-"), ProfileRSA3072)
			before := h.agentRow(b.Content.ClientID)
			mustRefuse(t, h, h.register(b.Content.IAT, tc.body), 400, errInvalidClientMeta, "register", b.Content.ClientID, before)
			// The IAT was not spent.
			if h.agentRow(b.Content.ClientID).IATID == "" {
				t.Fatal("a refused registration used up the IAT")
			}
		})
	}
}

// TestBadExchange: malformed bodies, foreign data points, bad values and
// stale configuration ids are 4xx and store nothing.
func TestBadExchange(t *testing.T) {
	h := newHarness(t, noLimits)
	c := h.onboard("acme/acc/ex", ProfileSharedSecret)
	tok := c.token()
	if r := c.putConfig(tok, sampleConfig("cfg-1"), "0"); r.Status != 200 {
		t.Fatalf("put configuration: %d %s", r.Status, r.Body)
	}
	other := h.onboard("acme/acc/other", ProfileSharedSecret)
	otherTok := other.token()
	now := h.clock.Now()
	good := exchangeBody("cfg-1", now, `[{"dataPointId":"DP-Temperature","qualityCode":"0","value":"1"}]`)
	for _, tc := range []struct {
		name   string
		tok    string
		ctype  string
		body   []byte
		status int
		code   string
	}{
		{"no token", "", exchangeType, good, 401, errInvalidToken},
		{"an IAT as access token", c.boarding.Content.IAT, exchangeType, good, 401, errInvalidToken},
		{"not multipart", tok, "application/json", []byte(`{}`), 400, errInvalidRequest},
		{"no boundary", tok, "multipart/mixed", good, 400, errInvalidRequest},
		{"truncated", tok, exchangeType, good[:len(good)/2], 400, errInvalidRequest},
		{"garbage", tok, exchangeType, []byte("--mindspheremessage\n\x00\xff"), 400, errInvalidRequest},
		{"payload not JSON", tok, exchangeType, exchangeBody("cfg-1", now, `nope`), 400, errInvalidRequest},
		{"data point of another agent", otherTok, exchangeType, good, 400, errInvalidRequest},
		{"unknown data point", tok, exchangeType, exchangeBody("cfg-1", now, `[{"dataPointId":"DP-Evil","value":"1"}]`), 400, errInvalidRequest},
		{"stale configuration id", tok, exchangeType, exchangeBody("cfg-0", now, `[{"dataPointId":"DP-Temperature","value":"1"}]`), 400, errInvalidRequest},
		{"not a number", tok, exchangeType, exchangeBody("cfg-1", now, `[{"dataPointId":"DP-Temperature","value":"hot"}]`), 400, errInvalidRequest},
		{"NaN", tok, exchangeType, exchangeBody("cfg-1", now, `[{"dataPointId":"DP-Temperature","value":"NaN"}]`), 400, errInvalidRequest},
		{"string type", tok, exchangeType, exchangeBody("cfg-1", now, `[{"dataPointId":"DP-Label","value":"x"}]`), 400, errInvalidRequest},
		{"duplicate data point", tok, exchangeType, exchangeBody("cfg-1", now, `[{"dataPointId":"DP-Temperature","value":"1"},{"dataPointId":"DP-Temperature","value":"2"}]`), 400, errInvalidRequest},
		{"far future", tok, exchangeType, exchangeBody("cfg-1", now.Add(48*time.Hour), `[{"dataPointId":"DP-Temperature","value":"1"}]`), 400, errInvalidRequest},
		{"too large", tok, exchangeType, exchangeBody("cfg-1", now, "["+strings.Repeat(" ", MaxExchangeBody)+`{"dataPointId":"DP-Temperature","value":"1"}]`), 413, errInvalidRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hdr := map[string]string{"Content-Type": tc.ctype}
			if tc.tok != "" {
				hdr["Authorization"] = "Bearer " + tc.tok
			}
			before := h.agentRow(c.reg.ClientID)
			mustRefuse(t, h, h.do("POST", ExchangePath, hdr, tc.body), tc.status, tc.code, "exchange", c.reg.ClientID, before)
		})
	}
	if recs, _ := h.st.QuerySnapshots(t.Context(), store.SnapshotQuery{}); len(recs) != 0 {
		t.Fatalf("%d snapshots stored from refused posts", len(recs))
	}
	// The other agent has no configuration at all.
	if r := other.post(otherTok, good); r.Status != 400 {
		t.Fatalf("post without a configuration: %d", r.Status)
	}
	// A revoked agent's access token stops working at once.
	if _, err := h.svc.Revoke(t.Context(), "acme/acc/ex"); err != nil {
		t.Fatal(err)
	}
	if r := c.post(tok, good); r.Status != 401 {
		t.Fatalf("post of a revoked agent: %d %s", r.Status, r.Body)
	}
}

// TestConfigurationETag: If-Match must be the current eTag; a wrong one
// is 412 and changes nothing; an agent reaches only its own configuration.
func TestConfigurationETag(t *testing.T) {
	h := newHarness(t, noLimits)
	c := h.onboard("acme/acc/cfg", ProfileSharedSecret)
	tok := c.token()
	other := h.onboard("acme/acc/other", ProfileSharedSecret)
	if r := c.putConfig(tok, sampleConfig("cfg-1"), "0"); r.Status != 200 {
		t.Fatalf("first put: %d %s", r.Status, r.Body)
	}
	before := h.agentRow(c.reg.ClientID)
	mustRefuse(t, h, c.putConfig(tok, sampleConfig("cfg-2"), "0"), 412, "precondition_failed", "configuration", c.reg.ClientID, before)
	mustRefuse(t, h, c.putConfig(tok, sampleConfig("cfg-2"), ""), 428, errInvalidRequest, "configuration", c.reg.ClientID, before)
	bad := sampleConfig("cfg-2")
	bad.DataSources[0].Name = "has space"
	mustRefuse(t, h, c.putConfig(tok, bad, "1"), 400, errInvalidRequest, "configuration", c.reg.ClientID, before)
	dup := sampleConfig("cfg-2")
	dup.DataSources[0].DataPoints[1].ID = "DP-Temperature"
	mustRefuse(t, h, c.putConfig(tok, dup, "1"), 400, errInvalidRequest, "configuration", c.reg.ClientID, before)
	// Another agent's token cannot read or write this configuration.
	otherTok := other.token()
	r := h.do("GET", ManagementPrefix+"/agents/"+c.reg.ClientID+"/dataSourceConfiguration", bearerHdr(otherTok), nil)
	mustRefuse(t, h, r, 403, "forbidden", "configuration", c.reg.ClientID, before)
	if r := c.putConfig(tok, sampleConfig("cfg-2"), "1"); r.Status != 200 {
		t.Fatalf("put with the current eTag: %d %s", r.Status, r.Body)
	}
}

// TestMappings: a mapping moves a data point to another device, group and
// channel; mappings of foreign or unknown data points are refused.
func TestMappings(t *testing.T) {
	h := newHarness(t, noLimits)
	c := h.onboard("acme/acc/map", ProfileSharedSecret)
	tok := c.token()
	if r := c.putConfig(tok, sampleConfig("cfg-1"), "0"); r.Status != 200 {
		t.Fatal(r.Status)
	}
	post := func(m map[string]any) response {
		b, _ := json.Marshal(m)
		return h.do("POST", MappingsPath, map[string]string{"Authorization": "Bearer " + tok, "Content-Type": "application/json"}, b)
	}
	m := map[string]any{"agentId": c.reg.ClientID, "dataPointId": "DP-Pressure", "entityId": "pump-1", "propertySetName": "hydraulics", "propertyName": "pressure"}
	if r := post(m); r.Status != 201 {
		t.Fatalf("post mapping: %d %s", r.Status, r.Body)
	}
	if r := post(m); r.Status != 409 {
		t.Fatalf("duplicate mapping: %d (the SDK ignores 409)", r.Status)
	}
	before := h.agentRow(c.reg.ClientID)
	for name, bad := range map[string]map[string]any{
		"foreign agent":        {"agentId": "someone", "dataPointId": "DP-Count", "entityId": "x", "propertySetName": "y", "propertyName": "z"},
		"unknown data point":   {"agentId": c.reg.ClientID, "dataPointId": "DP-None", "entityId": "x", "propertySetName": "y", "propertyName": "z"},
		"bad channel name":     {"agentId": c.reg.ClientID, "dataPointId": "DP-Count", "entityId": "x", "propertySetName": "y", "propertyName": "a/b"},
		"collides on a target": {"agentId": c.reg.ClientID, "dataPointId": "DP-Count", "entityId": "pump-1", "propertySetName": "y", "propertyName": "pressure"},
	} {
		r := post(bad)
		if r.Status < 400 || r.Status > 409 {
			t.Fatalf("%s: %d %s", name, r.Status, r.Body)
		}
		if h.agentRow(c.reg.ClientID).Version != before.Version {
			t.Fatalf("%s changed the agent", name)
		}
	}
	var page mappingsPage
	h.do("GET", MappingsPath+`?filter={"agentId":"`+c.reg.ClientID+`"}`, bearerHdr(tok), nil).json(t, &page)
	if len(page.Content) != 1 || page.Content[0].EntityID != "pump-1" {
		t.Fatalf("mappings %+v", page)
	}
	body := exchangeBody("cfg-1", h.clock.Now(), `[{"dataPointId":"DP-Temperature","value":"20"},{"dataPointId":"DP-Pressure","value":"3.5"}]`)
	if r := c.post(tok, body); r.Status != 200 {
		t.Fatalf("post: %d %s", r.Status, r.Body)
	}
	devs, err := h.st.ListDevices(t.Context(), "acme/acc/map")
	if err != nil || len(devs) != 2 {
		t.Fatalf("devices %+v, %v; want EnvironmentData and pump-1", devs, err)
	}
	recs, _ := h.st.QuerySnapshots(t.Context(), store.SnapshotQuery{Gateway: "acme/acc/map", Device: "pump-1"})
	if len(recs) != 1 || recs[0].Values[0] != (snapshot.Value{Channel: "pressure", Value: 3.5, Unit: "kPa", Group: "hydraulics"}) {
		t.Fatalf("mapped snapshot %+v", recs)
	}
	if r := h.do("DELETE", MappingsPath+"/"+page.Content[0].ID, bearerHdr(tok), nil); r.Status != 204 {
		t.Fatalf("delete: %d", r.Status)
	}
}

// TestCreateRules: agents are device paths, free of gateways, and not
// under a revoked path.
func TestCreateRules(t *testing.T) {
	h := newHarness(t, noLimits)
	ctx := t.Context()
	for _, p := range []string{"acme", "acme/acc", "acme/acc/a/b", "acme/../x", "pki/acc/x", "acme/acc/a b"} {
		if _, _, err := h.svc.Create(ctx, p, ProfileSharedSecret); err == nil {
			t.Errorf("created an agent at %q", p)
		}
	}
	if _, _, err := h.svc.Create(ctx, "acme/acc/x", "PLAIN"); err == nil {
		t.Error("created an agent with an unknown profile")
	}
	h.create("acme/acc/x", ProfileSharedSecret)
	if _, _, err := h.svc.Create(ctx, "acme/acc/x", ProfileSharedSecret); err == nil {
		t.Error("created an agent twice at one path")
	}
	if err := h.st.PutCertificate(ctx, store.Certificate{Domain: "transport", Serial: "0a", Kind: "leaf", Name: "acme/acc/gw", NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), DER: []byte{1}}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := h.svc.Create(ctx, "acme/acc/gw", ProfileSharedSecret); err == nil {
		t.Error("created an agent at a gateway's path")
	}
	if err := h.st.RevokePath(ctx, store.PathRevocation{Domain: "transport", Path: "acme/bad", RevokedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := h.svc.Create(ctx, "acme/bad/x", ProfileSharedSecret); err == nil {
		t.Error("created an agent below a revoked account")
	}
}

// TestRateLimits: register and token are limited per address and agent,
// posts per agent; a refusal is 429 with Retry-After and counted.
func TestRateLimits(t *testing.T) {
	h := newHarness(t, Limits{PerIP: 1e-9, PerIPBurst: 3, PerAgent: -1, Exchange: -1})
	c := h.onboard("acme/acc/rl", ProfileSharedSecret)
	c.token()
	c.token()
	r := h.tokenRequest(c.assertion(c.claims()))
	if r.Status != http.StatusTooManyRequests || r.Header.Get("Retry-After") == "" || r.oauthError(t) != errRateLimited {
		t.Fatalf("fourth request from one address: %d %s", r.Status, r.Body)
	}
	if h.refusals("token", errRateLimited) != 1 {
		t.Fatal("rate-limit refusal not counted")
	}

	h2 := newHarness(t, Limits{PerIP: -1, PerAgent: 1e-9, PerAgentBurst: 3, Exchange: 1e-9, ExchangeBurst: 1})
	c2 := h2.onboard("acme/acc/rl", ProfileSharedSecret)
	tok := c2.token() // register and two tokens: the burst
	c2.token()
	if r := h2.tokenRequest(c2.assertion(c2.claims())); r.Status != http.StatusTooManyRequests {
		t.Fatalf("fourth request of one agent: %d", r.Status)
	}
	c2.putConfig(tok, sampleConfig("cfg-1"), "0")
	body := exchangeBody("cfg-1", h2.clock.Now(), `[{"dataPointId":"DP-Temperature","value":"1"}]`)
	if r := c2.post(tok, body); r.Status != 200 {
		t.Fatalf("first post: %d %s", r.Status, r.Body)
	}
	if r := c2.post(tok, body); r.Status != http.StatusTooManyRequests {
		t.Fatalf("second post: %d", r.Status)
	}

	// Forged assertions naming an agent do not use up its budget.
	h3 := newHarness(t, Limits{PerIP: -1, PerAgent: 1e-9, PerAgentBurst: 2, Exchange: -1})
	c3 := h3.onboard("acme/acc/victim", ProfileSharedSecret) // register: 1 of 2
	for range 5 {
		if r := h3.tokenRequest(sign(t, jose.HS256, []byte(strings.Repeat("f", 43)), c3.claims())); r.Status != http.StatusUnauthorized {
			t.Fatalf("forged assertion: %d", r.Status)
		}
	}
	c3.token() // 2 of 2: still served
}

// TestTokenReuse: a second token request within the first third of a
// token's life gets the same token (no new signature); a rotation ends it.
func TestTokenReuse(t *testing.T) {
	h := newHarness(t, noLimits)
	c := h.onboard("acme/acc/tr", ProfileSharedSecret)
	a, b := c.token(), c.token()
	if a != b {
		t.Fatal("a repeated token request within the first third of its life got a new token")
	}
	h.clock.Add(AccessTokenLifetime/3 + time.Second)
	if c.token() == a {
		t.Fatal("a token past a third of its life was handed out again")
	}
}

// TestIATSingleUseUnderRace: of concurrent registrations with one IAT
// exactly one succeeds.
func TestIATSingleUseUnderRace(t *testing.T) {
	h := newHarness(t, noLimits)
	b := h.create("acme/acc/race", ProfileSharedSecret)
	codes := make(chan int, 8)
	for range 8 {
		go func() { codes <- h.register(b.Content.IAT, map[string]any{}).Status }()
	}
	created := 0
	for range 8 {
		if <-codes == http.StatusCreated {
			created++
		}
	}
	if created != 1 {
		t.Fatalf("%d registrations with one IAT succeeded; want 1", created)
	}
	if a := h.agentRow(b.Content.ClientID); a.Generation != 1 || a.IATID != "" {
		t.Fatalf("after the race: generation %d, IAT %q", a.Generation, a.IATID)
	}
}

// TestOfflineRevocationReachesService: a revocation by another process
// (the offline CLI on the same store) stops token requests and posts
// within CacheTTL.
func TestOfflineRevocationReachesService(t *testing.T) {
	h := newHarness(t, noLimits)
	c := h.onboard("acme/acc/off", ProfileSharedSecret)
	tok := c.token()
	cli, err := New(Config{Store: h.st, Keys: h.svc.cfg.Keys, BaseURL: h.srv.URL, Now: h.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Revoke(t.Context(), "acme/acc/off"); err != nil {
		t.Fatal(err)
	}
	h.clock.Add(CacheTTL)
	if r := h.tokenRequest(c.assertion(c.claims())); r.Status != http.StatusUnauthorized {
		t.Fatalf("token request after an offline revocation: %d", r.Status)
	}
	if r := c.putConfig(tok, sampleConfig("cfg-1"), "0"); r.Status != http.StatusUnauthorized {
		t.Fatalf("configuration after an offline revocation: %d", r.Status)
	}
}
