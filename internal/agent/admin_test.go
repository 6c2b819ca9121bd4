package agent_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"math/big"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/agent"
	"github.com/fieldtrust/fieldtrust/internal/platform"
	"github.com/fieldtrust/fieldtrust/internal/platform/platformtest"
	"github.com/fieldtrust/fieldtrust/internal/tacs"
)

// TestPlatformAgents: on the platform's HTTPS listener the agents' API
// needs no client certificate (a bad one is still refused), and the
// operators' /api/v1/agents follows the identity tree: an admin anywhere,
// a master account or an account in its subtree, a device nowhere.
func TestPlatformAgents(t *testing.T) {
	env := platformtest.Start(t, platform.Config{})
	admin := env.Service(t, "ops", tacs.RoleAdmin)
	account := env.Identity(t, "acme/plant-berlin", false)
	master := env.Identity(t, "acme", false)
	otherAccount := env.Identity(t, "acme/plant-paris", false)
	device := env.Identity(t, "acme/plant-berlin/gw-1", false)

	call := func(id *platformtest.Identity, method, path string, body any) (int, []byte) {
		t.Helper()
		var rd *bytes.Reader
		if body != nil {
			b, _ := json.Marshal(body)
			rd = bytes.NewReader(b)
		} else {
			rd = bytes.NewReader(nil)
		}
		req, _ := http.NewRequestWithContext(t.Context(), method, "https://"+env.HTTPAddr+path, rd)
		req.Header.Set("Content-Type", "application/json")
		resp, err := httpsClient(env, id).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var buf bytes.Buffer
		buf.ReadFrom(resp.Body)
		return resp.StatusCode, buf.Bytes()
	}

	// The public token key needs no certificate.
	if code, body := call(nil, "GET", agent.TokenKeyPath, nil); code != 200 || !strings.Contains(string(body), "BEGIN PUBLIC KEY") {
		t.Fatalf("token_key without a certificate: %d %s", code, body)
	}
	// A certificate that is not the platform's is refused even here.
	stranger := platformtest.Identity{TLS: selfSigned(t)}
	if code, _ := call(&stranger, "GET", agent.TokenKeyPath, nil); code != http.StatusUnauthorized {
		t.Fatalf("token_key with a foreign certificate: %d", code)
	}

	// The platform picks up the admin role within its poll interval.
	for deadline := time.Now().Add(30 * time.Second); ; {
		if code, _ := call(&admin, "GET", "/api/v1/agents", nil); code == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the admin role did not reach the platform within 30 s")
		}
		time.Sleep(50 * time.Millisecond) // polling a condition with a deadline
	}

	for _, tc := range []struct {
		name string
		id   *platformtest.Identity
		path string
		want int
	}{
		{"no certificate", nil, "acme/plant-berlin/a1", http.StatusUnauthorized},
		{"a device", &device, "acme/plant-berlin/a1", http.StatusForbidden},
		{"another account", &otherAccount, "acme/plant-berlin/a1", http.StatusForbidden},
		{"the account", &account, "acme/plant-berlin/a1", http.StatusCreated},
		{"the master account", &master, "acme/plant-paris/a2", http.StatusCreated},
		{"an admin", &admin, "other/acc/a3", http.StatusCreated},
		{"the same path again", &admin, "other/acc/a3", http.StatusConflict},
		{"an account path", &admin, "other/acc", http.StatusBadRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body := call(tc.id, "POST", "/api/v1/agents", map[string]string{"path": tc.path, "profile": agent.ProfileSharedSecret})
			if code != tc.want {
				t.Fatalf("create: %d %s; want %d", code, body, tc.want)
			}
			if code == http.StatusCreated {
				var b agent.Boarding
				if err := json.Unmarshal(body, &b); err != nil || b.Content.IAT == "" || !strings.HasPrefix(b.Content.BaseURL, "https://") {
					t.Fatalf("boarding %s", body)
				}
			}
		})
	}
	list := func(id *platformtest.Identity) []string {
		t.Helper()
		code, body := call(id, "GET", "/api/v1/agents", nil)
		if code != 200 {
			t.Fatalf("list: %d %s", code, body)
		}
		var infos []agent.Info
		json.Unmarshal(body, &infos)
		var paths []string
		for _, in := range infos {
			paths = append(paths, in.Path)
		}
		return paths
	}
	if got := strings.Join(list(&account), ","); got != "acme/plant-berlin/a1" {
		t.Fatalf("the account lists %s", got)
	}
	if got := strings.Join(list(&master), ","); got != "acme/plant-berlin/a1,acme/plant-paris/a2" {
		t.Fatalf("the master lists %s", got)
	}
	if got := strings.Join(list(&admin), ","); got != "acme/plant-berlin/a1,acme/plant-paris/a2,other/acc/a3" {
		t.Fatalf("the admin lists %s", got)
	}
	// A foreign agent is a 404, not a 403.
	if code, _ := call(&otherAccount, "GET", "/api/v1/agents/acme/plant-berlin/a1", nil); code != http.StatusNotFound {
		t.Fatalf("another account shows the agent: %d", code)
	}
	if code, _ := call(&otherAccount, "POST", "/api/v1/agents/acme/plant-berlin/a1/revoke", nil); code != http.StatusNotFound {
		t.Fatalf("another account revokes the agent: %d", code)
	}
	if code, body := call(&account, "POST", "/api/v1/agents/acme/plant-berlin/a1/rotate-iat", nil); code != 200 || !strings.Contains(string(body), `"iat"`) {
		t.Fatalf("rotate-iat: %d %s", code, body)
	}
	code, body := call(&account, "POST", "/api/v1/agents/acme/plant-berlin/a1/revoke", nil)
	if code != 200 || !strings.Contains(string(body), `"state":"revoked"`) {
		t.Fatalf("revoke: %d %s", code, body)
	}
	if code, body := call(&account, "GET", "/api/v1/agents/acme/plant-berlin/a1", nil); code != 200 || !strings.Contains(string(body), `"state":"revoked"`) {
		t.Fatalf("show: %d %s", code, body)
	}

	// A refusal is counted in the platform's /metrics.
	if code, _ := call(nil, "POST", agent.RegisterPath, map[string]any{}); code != http.StatusUnauthorized {
		t.Fatalf("register without an IAT: %d", code)
	}
	code, body = call(&admin, "GET", "/metrics", nil)
	if code != 200 || !strings.Contains(string(body), `fieldtrust_agent_refusals_total{endpoint="register",error="invalid_token"} 1`) {
		t.Fatalf("/metrics: %d, no register refusal counted", code)
	}
}

// selfSigned is a client certificate no CA of the platform issued.
func selfSigned(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "acme/plant-berlin/x"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}
