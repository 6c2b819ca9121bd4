package agent

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/fieldtrust/fieldtrust/internal/ledger"
	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/store/sqlite"
)

// clock is a settable clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// harness is an agent service on a real SQLite store and ledger behind a
// real TLS server.
type harness struct {
	t      testing.TB
	svc    *Service
	st     *sqlite.Store
	lg     *ledger.Log
	srv    *httptest.Server
	clock  *clock
	reg    *prometheus.Registry
	stored []store.SnapshotRecord
	mu     sync.Mutex
}

func newHarness(t testing.TB, limits Limits) *harness {
	t.Helper()
	dir := t.TempDir()
	st, err := sqlite.Open(t.Context(), dir+"/db.sqlite")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	lg, err := ledger.Open(t.Context(), st)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := LoadKeys(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, st: st, lg: lg, clock: &clock{t: time.Now()}, reg: prometheus.NewRegistry()}
	mux := http.NewServeMux()
	h.srv = httptest.NewUnstartedServer(mux)
	h.srv.StartTLS()
	t.Cleanup(h.srv.Close)
	h.svc, err = New(Config{Store: st, Keys: keys, BaseURL: h.srv.URL, Ledger: lg, Limits: limits, Now: h.clock.Now, Registerer: h.reg,
		Stored: func(_ context.Context, recs []store.SnapshotRecord) {
			h.mu.Lock()
			h.stored = append(h.stored, recs...)
			h.mu.Unlock()
		}})
	if err != nil {
		t.Fatal(err)
	}
	h.svc.Register(mux)
	return h
}

// noLimits switches the rate limits off.
var noLimits = Limits{PerIP: -1, PerAgent: -1, Exchange: -1}

type response struct {
	Status int
	Body   []byte
	Header http.Header
}

func (r response) json(t testing.TB, v any) {
	t.Helper()
	if err := json.Unmarshal(r.Body, v); err != nil {
		t.Fatalf("response %d %s: %v", r.Status, r.Body, err)
	}
}

// oauthError returns the error code of an OAuth error answer.
func (r response) oauthError(t testing.TB) string {
	t.Helper()
	var e struct {
		Error       string `json:"error"`
		Description string `json:"error_description"`
	}
	r.json(t, &e)
	if e.Description == "" {
		t.Fatalf("error answer without error_description: %s", r.Body)
	}
	return e.Error
}

func (h *harness) do(method, path string, header map[string]string, body []byte) response {
	h.t.Helper()
	req, err := http.NewRequestWithContext(h.t.Context(), method, h.srv.URL+path, bytes.NewReader(body))
	if err != nil {
		h.t.Fatal(err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := h.srv.Client().Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return response{Status: resp.StatusCode, Body: b, Header: resp.Header}
}

func bearerHdr(tok string) map[string]string {
	return map[string]string{"Authorization": "Bearer " + tok}
}

// create creates an agent and returns its boarding configuration.
func (h *harness) create(path, profile string) Boarding {
	h.t.Helper()
	b, _, err := h.svc.Create(h.t.Context(), path, profile)
	if err != nil {
		h.t.Fatal(err)
	}
	return b
}

func (h *harness) register(iat string, body any) response {
	h.t.Helper()
	b, _ := json.Marshal(body)
	return h.do("POST", RegisterPath, bearerHdr(iat), b)
}

// client is an agent as the SDK runs it.
type client struct {
	h        *harness
	boarding Boarding
	reg      registration
	rsaKey   *rsa.PrivateKey
}

// onboard creates and registers an agent.
func (h *harness) onboard(path, profile string) *client {
	h.t.Helper()
	c := &client{h: h, boarding: h.create(path, profile)}
	var body any = map[string]any{}
	if profile == ProfileRSA3072 {
		c.rsaKey = rsaKey(h.t, 3072)
		body = map[string]any{"jwks": jwks(c.rsaKey)}
	}
	r := h.register(c.boarding.Content.IAT, body)
	if r.Status != http.StatusCreated {
		h.t.Fatalf("register: %d %s", r.Status, r.Body)
	}
	r.json(h.t, &c.reg)
	return c
}

var rsaKeys sync.Map // bits -> *rsa.PrivateKey: generated once per test binary

func rsaKey(t testing.TB, bits int) *rsa.PrivateKey {
	if k, ok := rsaKeys.Load(bits); ok {
		return k.(*rsa.PrivateKey)
	}
	k, err := rsa.GenerateKey(rand.Reader, bits)
	if err != nil {
		t.Fatal(err)
	}
	rsaKeys.Store(bits, k)
	return k
}

func jwks(k *rsa.PrivateKey) jose.JSONWebKeySet {
	return jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &k.PublicKey, KeyID: "mindconnect-key-1"}}}
}

// claims are the claims of a client assertion as the SDK makes them.
func (c *client) claims() map[string]any {
	now := c.h.clock.Now().Unix()
	return map[string]any{"iss": c.reg.ClientID, "sub": c.reg.ClientID, "aud": []string{"southgate"}, "iat": now, "nbf": now,
		"exp": now + 3600, "jti": randomHex(8), "schemas": []string{"urn:siemens:mindsphere:v1"}, "ten": c.boarding.Content.Tenant}
}

// sign signs claims with alg and key.
func sign(t testing.TB, alg jose.SignatureAlgorithm, key any, claims map[string]any) string {
	t.Helper()
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jwt.Signed(s).Claims(claims).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// assertion signs claims as the agent's profile does (HS256 or RS384).
func (c *client) assertion(claims map[string]any) string {
	if c.rsaKey != nil {
		return sign(c.h.t, jose.RS384, c.rsaKey, claims)
	}
	return sign(c.h.t, jose.HS256, []byte(c.reg.ClientSecret), claims)
}

func (h *harness) tokenRequest(assertion string) response {
	h.t.Helper()
	form := url.Values{"grant_type": {"client_credentials"},
		"client_assertion_type": {"urn:ietf:params:oauth:client-assertion-type:jwt-bearer"}, "client_assertion": {assertion}}
	return h.do("POST", TokenPath, map[string]string{"Content-Type": "application/x-www-form-urlencoded"}, []byte(form.Encode()))
}

// token gets an access token.
func (c *client) token() string {
	c.h.t.Helper()
	r := c.h.tokenRequest(c.assertion(c.claims()))
	if r.Status != http.StatusOK {
		c.h.t.Fatalf("token: %d %s", r.Status, r.Body)
	}
	var tr tokenResponse
	r.json(c.h.t, &tr)
	return tr.AccessToken
}

// sampleConfig is a data-source configuration like the SDK's examples.
func sampleConfig(id string) DataSourceConfiguration {
	return DataSourceConfiguration{ConfigurationID: id, DataSources: []DataSource{{
		Name: "EnvironmentData", Description: "environment",
		DataPoints: []DataPoint{
			{ID: "DP-Temperature", Name: "Temperature", Type: "DOUBLE", Unit: "°C"},
			{ID: "DP-Pressure", Name: "Pressure", Type: "DOUBLE", Unit: "kPa"},
			{ID: "DP-Count", Name: "Count", Type: "INT", Unit: ""},
			{ID: "DP-Open", Name: "Open", Type: "BOOLEAN", Unit: ""},
			{ID: "DP-Label", Name: "Label", Type: "STRING", Unit: ""},
		},
	}}}
}

func (c *client) putConfig(tok string, cfg DataSourceConfiguration, ifMatch string) response {
	b, _ := json.Marshal(cfg)
	return c.h.do("PUT", ManagementPrefix+"/agents/"+c.reg.ClientID+"/dataSourceConfiguration",
		map[string]string{"Authorization": "Bearer " + tok, "Content-Type": "application/json", "If-Match": ifMatch}, b)
}

// exchangeBody is a post exactly as the SDK's dataTemplate builds it (LF
// line ends, CR LF only before the closing inner boundary).
func exchangeBody(configID string, at time.Time, values string) []byte {
	return []byte(strings.Replace(fmt.Sprintf(`--mindspheremessage
Content-Type:multipart/related;boundary=mindspherepart

--mindspherepart
Content-Type:application/vnd.siemens.mindsphere.meta+json

{
    "type": "item",
    "version": "1.0",
    "payload": {
        "type": "standardTimeSeries",
        "version": "1.0",
        "details": {
            "configurationId": "%s"
        }
    }
}

--mindspherepart
Content-Type:application/json

[{ "timestamp":"%s", "values": %s}]

--mindspherepart--
--mindspheremessage--
`, configID, at.UTC().Format("2006-01-02T15:04:05.000Z"), values), "--mindspherepart--", "\r\n--mindspherepart--", 1))
}

const exchangeType = "multipart/mixed; boundary=mindspheremessage"

func (c *client) post(tok string, body []byte) response {
	return c.h.do("POST", ExchangePath, map[string]string{"Authorization": "Bearer " + tok, "Content-Type": exchangeType}, body)
}

// agentRow returns the stored agent.
func (h *harness) agentRow(clientID string) store.Agent {
	h.t.Helper()
	a, err := h.st.Agent(h.t.Context(), clientID)
	if err != nil {
		h.t.Fatal(err)
	}
	return a
}

// refusals returns the refusal counter of endpoint and OAuth error.
func (h *harness) refusals(endpoint, code string) float64 {
	return testutil.ToFloat64(h.svc.metrics.refusals.WithLabelValues(endpoint, code))
}
