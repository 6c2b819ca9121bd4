package agent_test

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/fieldtrust/fieldtrust/internal/agent"
	"github.com/fieldtrust/fieldtrust/internal/ledger"
	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/platform"
	"github.com/fieldtrust/fieldtrust/internal/platform/platformtest"
	"github.com/fieldtrust/fieldtrust/internal/store"
)

// needPeer skips (or, with CI=true, fails) when a real peer is missing.
func needPeer(t *testing.T, what string, err error) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s: %v (scripts/deps.sh installs it)", what, err)
	}
	t.Skipf("%s: %v (run scripts/deps.sh)", what, err)
}

// sdkDir installs (once) the official MindConnect SDK and returns the
// directory whose node_modules holds it.
func sdkDir(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("node"); err != nil {
		needPeer(t, "node", err)
	}
	out, err := exec.Command("../../scripts/mindconnect-sdk.sh").Output()
	if err != nil {
		needPeer(t, "the MindConnect SDK", err)
	}
	return strings.TrimSpace(string(out))
}

// sdkResult is what testdata/mindconnect/agent.js prints.
type sdkResult struct {
	ClientID   string          `json:"clientId"`
	Registered sdkRegistration `json:"registered"`
	AfterToken sdkRegistration `json:"afterToken"`
	Final      sdkRegistration `json:"final"`
	Token      string          `json:"token"`
	Mappings   []agent.Mapping `json:"mappings"`
	Config     struct {
		ETag            string `json:"eTag"`
		ConfigurationID string `json:"configurationId"`
	} `json:"configuration"`
}

type sdkRegistration struct {
	ClientID  string `json:"client_id"`
	Secret    string `json:"client_secret"`
	ExpiresAt int64  `json:"client_secret_expires_at"`
	RAT       string `json:"registration_access_token"`
	URI       string `json:"registration_client_uri"`
}

// TestMindConnectSDK runs the official, unmodified MindConnect Node.js
// agent SDK against a running platform with both credential profiles: it
// onboards, gets tokens (verifying each with /oauth/token_key), rotates
// its credentials (RenewToken: the platform hands out credentials that
// expire within the SDK's 25-hour renewal window, so it rotates on every
// call), puts a data-source configuration and a data-point mapping, and
// posts timeseries; the data is then found through the query API and the
// customer's export, in the ledger, with the agent's provenance, and the
// credentials the SDK rotated away no longer work.
func TestMindConnectSDK(t *testing.T) {
	dir := sdkDir(t)
	if _, err := exec.LookPath("openssl"); err != nil {
		needPeer(t, "openssl", err)
	}
	env := platformtest.Start(t, platform.Config{Agents: platform.AgentOptions{
		CredentialLifetime: 24 * time.Hour,
		// The SDK rotates on every call here; room for the checks after it.
		Limits: agent.Limits{PerAgentBurst: 100},
	}})
	base, err := os.ReadFile(filepath.Join(env.Dir, platform.ExternalURLFile))
	if err != nil {
		t.Fatal(err)
	}
	keys, err := agent.LoadKeys(env.Dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	svc, err := agent.New(agent.Config{Store: env.D.Store, Keys: keys, BaseURL: strings.TrimSpace(string(base))})
	if err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	caFile := filepath.Join(work, "ca.pem")
	if err := os.WriteFile(caFile, pki.EncodeCertsPEM(env.D.Transport.Root()), 0o600); err != nil {
		t.Fatal(err)
	}
	customer := env.Identity(t, "acme/plant-berlin", false)

	for _, tc := range []struct{ path, profile string }{
		{"acme/plant-berlin/press-7", agent.ProfileSharedSecret},
		{"acme/plant-berlin/press-8", agent.ProfileRSA3072},
	} {
		t.Run(tc.profile, func(t *testing.T) {
			boarding, _, err := svc.Create(t.Context(), tc.path, tc.profile)
			if err != nil {
				t.Fatal(err)
			}
			bf := filepath.Join(work, tc.profile+".json")
			b, _ := json.Marshal(boarding)
			if err := os.WriteFile(bf, b, 0o600); err != nil {
				t.Fatal(err)
			}
			args := []string{"testdata/mindconnect/agent.js", bf, filepath.Join(work, tc.profile+"-state")}
			if tc.profile == agent.ProfileRSA3072 {
				// PKCS#1, as the SDK's docs make it with OpenSSL 1.x (its
				// rsa-pem-to-jwk reads no PKCS#8).
				key := filepath.Join(work, "private.key")
				if out, err := exec.Command("openssl", "genrsa", "-traditional", "-out", key, "3072").CombinedOutput(); err != nil {
					t.Fatalf("openssl genrsa: %v\n%s", err, out)
				}
				args = append(args, key)
			}
			cmd := exec.CommandContext(t.Context(), "node", args...)
			cmd.Env = append(os.Environ(), "NODE_PATH="+filepath.Join(dir, "node_modules"), "NODE_EXTRA_CA_CERTS="+caFile, "http_proxy=", "HTTP_PROXY=")
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			if err := cmd.Run(); err != nil {
				t.Fatalf("the MindConnect SDK failed: %v\n%s", err, stderr.String())
			}
			var res sdkResult
			if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
				t.Fatalf("SDK output: %v\n%s", err, stdout.String())
			}
			if res.ClientID != boarding.Content.ClientID || res.Final.ClientID != res.ClientID {
				t.Fatalf("client ids %q / %q, want %q", res.ClientID, res.Final.ClientID, boarding.Content.ClientID)
			}
			if res.AfterToken.RAT == res.Registered.RAT || res.Final.RAT == res.AfterToken.RAT {
				t.Fatal("the SDK did not rotate its credentials")
			}
			if res.Config.ConfigurationID != "cfg-sdk-1" || res.Config.ETag != "1" {
				t.Fatalf("configuration %+v", res.Config)
			}
			if len(res.Mappings) != 1 || res.Mappings[0].EntityID != "hydraulic-unit" {
				t.Fatalf("mappings %+v", res.Mappings)
			}
			a, err := env.D.Store.Agent(t.Context(), res.ClientID)
			if err != nil {
				t.Fatal(err)
			}
			if a.Generation < 3 {
				t.Fatalf("generation %d after the SDK's run; want registration plus rotations", a.Generation)
			}

			// What the SDK rotated away is dead.
			if code := rotate(t, env, res.Registered); code != http.StatusUnauthorized {
				t.Fatalf("the first RAT after rotation: %d, want 401", code)
			}
			if tc.profile == agent.ProfileSharedSecret {
				if code := tokenWithSecret(t, env, res.ClientID, boarding.Content.Tenant, res.Registered.Secret); code != http.StatusUnauthorized {
					t.Fatalf("the first secret after rotation: %d, want 401", code)
				}
			}

			// The data, through the query API as the customer sees it.
			var page struct {
				Snapshots []struct {
					Seq        uint64 `json:"seq"`
					Hash       string `json:"hash"`
					Prev       string `json:"prev"`
					Provenance string `json:"provenance"`
					Signer     string `json:"signer"`
					Time       time.Time
					Values     []struct {
						Channel, Unit, Group string
						Value                float64
					}
				}
			}
			if code := env.Get(t, customer, "/api/v1/devices/"+tc.path+"/EnvironmentData/snapshots", &page); code != 200 {
				t.Fatalf("snapshots: %d", code)
			}
			snaps := page.Snapshots
			if len(snaps) != 3 {
				t.Fatalf("%d snapshots of EnvironmentData; want 3 (one post, one bulk post of two)", len(snaps))
			}
			for i, s := range snaps {
				if s.Seq != uint64(i+1) || s.Provenance != store.ProvenanceAgentTLS || s.Signer != store.AgentSignerPrefix+res.ClientID {
					t.Fatalf("snapshot %d: %+v", i, s)
				}
				if i > 0 && s.Prev != snaps[i-1].Hash {
					t.Fatalf("snapshot %d does not chain onto %d", i, i-1)
				}
			}
			first := snaps[0]
			if !first.Time.Equal(time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)) || len(first.Values) != 3 ||
				first.Values[0].Channel != "DP-Temperature" || first.Values[0].Value != 21.5 || first.Values[0].Unit != "°C" ||
				first.Values[1].Channel != "DP-Strokes" || first.Values[1].Value != 17 || first.Values[2].Value != 1 {
				t.Fatalf("first snapshot %+v", first)
			}
			if code := env.Get(t, customer, "/api/v1/devices/"+tc.path+"/hydraulic-unit/snapshots", &page); code != 200 ||
				len(page.Snapshots) != 1 || page.Snapshots[0].Values[0].Group != "hydraulics" || page.Snapshots[0].Values[0].Value != 101.3 {
				t.Fatalf("mapped device: %d %+v", code, page.Snapshots)
			}
			// Another customer does not see it.
			other := env.Identity(t, "acme/plant-paris", false)
			if code := env.Get(t, other, "/api/v1/devices/"+tc.path+"/EnvironmentData/snapshots", nil); code != http.StatusNotFound {
				t.Fatalf("another account reading the agent's data: %d", code)
			}
		})
	}

	// Every agent snapshot is in the ledger and the customer's export,
	// which verifies offline against the e2e root, marked agent-tls.
	deadline := time.Now().Add(60 * time.Second)
	for {
		var head struct {
			Size uint64 `json:"size"`
		}
		if env.Get(t, customer, "/api/v1/ledger/head", &head) == 200 && head.Size >= 8 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no signed tree head covers the agents' snapshots within 60 s")
		}
		time.Sleep(100 * time.Millisecond) // polling a condition with a deadline
	}
	body := getRaw(t, env, customer, "/api/v1/export")
	rep, err := ledger.VerifyExport(bytes.NewReader(body), ledger.ExportOptions{Root: env.D.E2E.Root()})
	if err != nil {
		t.Fatalf("export does not verify: %v", err)
	}
	if rep.Snapshots != 8 || strings.Count(string(body), `"provenance":"agent-tls"`) != 8 {
		t.Fatalf("export: %d snapshots, %d marked agent-tls; want 8", rep.Snapshots, strings.Count(string(body), `"provenance":"agent-tls"`))
	}
}

func httpsClient(env *platformtest.Env, id *platformtest.Identity) *http.Client {
	cfg := &tls.Config{RootCAs: env.Roots}
	if id != nil {
		cfg.Certificates = []tls.Certificate{id.TLS}
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}, Timeout: 30 * time.Second}
}

func getRaw(t *testing.T, env *platformtest.Env, id platformtest.Identity, path string) []byte {
	t.Helper()
	resp, err := httpsClient(env, &id).Get("https://" + env.HTTPAddr + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("%s: %d %s", path, resp.StatusCode, b)
	}
	return b
}

// rotate tries a rotation with reg's RAT and returns the status.
func rotate(t *testing.T, env *platformtest.Env, reg sdkRegistration) int {
	t.Helper()
	req, _ := http.NewRequest("PUT", reg.URI, strings.NewReader(fmt.Sprintf(`{"client_id":%q}`, reg.ClientID)))
	req.Header.Set("Authorization", "Bearer "+reg.RAT)
	req.Header.Set("Content-Type", "application/json")
	resp, err := httpsClient(env, nil).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// tokenWithSecret asks for a token with an assertion signed by secret.
func tokenWithSecret(t *testing.T, env *platformtest.Env, clientID, tenant, secret string) int {
	t.Helper()
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.HS256, Key: []byte(secret)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tok, err := jwt.Signed(s).Claims(map[string]any{"iss": clientID, "sub": clientID, "aud": []string{"southgate"}, "ten": tenant,
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(time.Hour).Unix(), "jti": fmt.Sprint(now.UnixNano())}).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	form := url.Values{"grant_type": {"client_credentials"}, "client_assertion_type": {"urn:ietf:params:oauth:client-assertion-type:jwt-bearer"}, "client_assertion": {tok}}
	resp, err := httpsClient(env, nil).PostForm("https://"+env.HTTPAddr+agent.TokenPath, form)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}
