package webhook

import (
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
)

// TestSignatureVerifiesWithStandardWebhooks: a call signed here verifies
// with the Standard Webhooks reference library (an independent
// implementation), and a tampered body does not.
func TestSignatureVerifiesWithStandardWebhooks(t *testing.T) {
	key := make([]byte, 32)
	rand.Read(key)
	secret := FormatSecret(key)
	if k, err := ParseSecret(secret); err != nil || string(k) != string(key) {
		t.Fatalf("ParseSecret = %x, %v", k, err)
	}
	wh, err := standardwebhooks.NewWebhook(secret)
	if err != nil {
		t.Fatal(err)
	}
	type call struct {
		body []byte
		h    http.Header
	}
	calls := make(chan call, 1)
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		calls <- call{b, r.Header.Clone()}
	}))
	defer srv.Close()
	c := NewClient(true, srv.Client().Transport.(*http.Transport).Clone())
	body := []byte(`{"type":"alarm.raised","device":"ms/acc/gw/p1"}`)
	if err := c.Post(context.Background(), srv.URL+"/hook", key, "m-1234", time.Now(), body); err != nil {
		t.Fatal(err)
	}
	got := <-calls
	if err := wh.Verify(got.body, got.h); err != nil {
		t.Fatalf("the reference library refuses our signature: %v (headers %v)", err, got.h)
	}
	if got.h.Get(HeaderID) != "m-1234" {
		t.Fatalf("webhook-id %q", got.h.Get(HeaderID))
	}
	if err := wh.Verify([]byte(`{"type":"alarm.cleared"}`), got.h); err == nil {
		t.Fatal("a tampered body verified")
	}
}

// TestPostOutcomes: which answers are retried and which are permanent;
// internal addresses are refused unless allowed.
func TestPostOutcomes(t *testing.T) {
	status := make(chan int, 1)
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(<-status) }))
	defer srv.Close()
	c := NewClient(true, srv.Client().Transport.(*http.Transport).Clone())
	key := make([]byte, 32)
	for _, tc := range []struct {
		code     int
		ok, perm bool
	}{{200, true, false}, {204, true, false}, {301, false, true}, {400, false, true}, {401, false, true}, {408, false, false}, {429, false, false}, {500, false, false}, {503, false, false}} {
		status <- tc.code
		err := c.Post(context.Background(), srv.URL, key, "id", time.Now(), []byte("{}"))
		var pe *PermanentError
		if (err == nil) != tc.ok || errors.As(err, &pe) != tc.perm {
			t.Errorf("status %d: err %v, want ok %v permanent %v", tc.code, err, tc.ok, tc.perm)
		}
	}
	strict := NewClient(false, srv.Client().Transport.(*http.Transport).Clone())
	err := strict.Post(context.Background(), srv.URL, key, "id", time.Now(), []byte("{}"))
	var pe *PermanentError
	if !errors.Is(err, ErrPrivateAddress) || !errors.As(err, &pe) {
		t.Fatalf("a loopback receiver: %v, want a permanent ErrPrivateAddress", err)
	}
}

// FuzzParseSecret: ParseSecret never panics and accepts only 24 to 64
// bytes, which FormatSecret writes back the same.
func FuzzParseSecret(f *testing.F) {
	f.Add("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
	f.Add("whsec_")
	f.Add("not base64 !")
	f.Fuzz(func(t *testing.T, s string) {
		k, err := ParseSecret(s)
		if err != nil {
			return
		}
		if len(k) < 24 || len(k) > 64 {
			t.Fatalf("accepted %d bytes", len(k))
		}
		if k2, err := ParseSecret(FormatSecret(k)); err != nil || string(k2) != string(k) {
			t.Fatalf("round trip of %q: %v", s, err)
		}
	})
}
