package console_test

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/chromedp/cdproto/webauthn"

	"github.com/fieldtrust/fieldtrust/internal/datadir"
)

// assertion is a WebAuthn assertion made by this test with a passkey's
// private key: what an attacker holding a copied key, or a relying-party
// impostor relaying a user's ceremony, would send.
func assertion(t *testing.T, cred *webauthn.Credential, challenge, origin, rpID string, counter uint32) map[string]any {
	t.Helper()
	k, err := x509.ParsePKCS8PrivateKey(cred.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	rp := sha256.Sum256([]byte(rpID))
	auth := append(rp[:], 0x05) // user present, user verified
	auth = binary.BigEndian.AppendUint32(auth, counter)
	client, _ := json.Marshal(map[string]any{"type": "webauthn.get", "challenge": challenge, "origin": origin, "crossOrigin": false})
	ch := sha256.Sum256(client)
	digest := sha256.Sum256(append(append([]byte{}, auth...), ch[:]...))
	sig, err := ecdsa.SignASN1(rand.Reader, k.(*ecdsa.PrivateKey), digest[:])
	if err != nil {
		t.Fatal(err)
	}
	b64 := base64.RawURLEncoding.EncodeToString
	return map[string]any{"id": b64(cred.CredentialID), "rawId": b64(cred.CredentialID), "type": "public-key",
		"response": map[string]any{"clientDataJSON": b64(client), "authenticatorData": b64(auth), "signature": b64(sig), "userHandle": b64(cred.UserHandle)}}
}

// begin starts a passkey login and returns its challenge.
func begin(t *testing.T, c *browserClient) string {
	t.Helper()
	resp, body := c.postJSON("/login/passkey/begin", nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("begin login: %d %s", resp.StatusCode, body)
	}
	var opts struct {
		PublicKey struct {
			Challenge string `json:"challenge"`
		} `json:"publicKey"`
	}
	json.Unmarshal([]byte(body), &opts)
	return opts.PublicKey.Challenge
}

// passkeyAttacks logs in with a registered passkey's key from a client of
// our own: a wrong origin, a wrong RP ID, a counter that did not grow and
// a replayed assertion are refused; a correct assertion logs in (so the
// refusals are for the right reasons).
func passkeyAttacks(t *testing.T, base string, d *datadir.Dir, cred *webauthn.Credential) {
	t.Helper()
	root := d.Transport.Root()
	n := uint32(cred.SignCount)
	for _, tt := range []struct {
		name, origin, rpID string
		counter            uint32
		want               string
	}{
		{"another origin", "https://evil.example", "localhost", n + 5, "origin"},
		{"another relying party", base, "evil.example", n + 5, "authenticator response"},
		{"a counter that did not grow", base, "localhost", n, "counter"},
	} {
		c := newClient(t, base, root, nil)
		ch := begin(t, c)
		resp, body := c.postJSON("/login/passkey/finish", assertion(t, cred, ch, tt.origin, tt.rpID, tt.counter))
		if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(strings.ToLower(body), strings.ToLower(tt.want)) {
			t.Errorf("%s: %d %s, want 401 about the %s", tt.name, resp.StatusCode, body, tt.want)
		}
		if r, _ := c.get("/fleet"); r.StatusCode != http.StatusSeeOther {
			t.Errorf("%s: logged in anyway", tt.name)
		}
	}
	c := newClient(t, base, root, nil)
	ch := begin(t, c)
	good := assertion(t, cred, ch, base, "localhost", n+10)
	if resp, body := c.postJSON("/login/passkey/finish", good); resp.StatusCode != http.StatusOK {
		t.Fatalf("a correct assertion from our own client: %d %s", resp.StatusCode, body)
	}
	if r, _ := c.get("/fleet"); r.StatusCode != http.StatusOK {
		t.Errorf("fleet after our own passkey login: %d", r.StatusCode)
	}
	// The same assertion again, in a new ceremony: its challenge is spent.
	r := newClient(t, base, root, nil)
	begin(t, r)
	if resp, _ := r.postJSON("/login/passkey/finish", good); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("a replayed assertion: %d, want 401", resp.StatusCode)
	}
	// And without any ceremony.
	if resp, _ := newClient(t, base, root, nil).postJSON("/login/passkey/finish", good); resp.StatusCode != http.StatusBadRequest {
		t.Errorf("an assertion without a ceremony: %d, want 400", resp.StatusCode)
	}
	// The counter moved to what we sent: the browser's next login (counter
	// n+1 < n+10) must now be refused as a clone.
	c2 := newClient(t, base, root, nil)
	ch = begin(t, c2)
	if resp, _ := c2.postJSON("/login/passkey/finish", assertion(t, cred, ch, base, "localhost", n+2)); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("an assertion whose counter went back: %d, want 401", resp.StatusCode)
	}
}
