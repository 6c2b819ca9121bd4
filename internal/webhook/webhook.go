// Package webhook calls webhook receivers the Standard Webhooks way
// (standardwebhooks.com): a JSON POST with the headers webhook-id (stable
// per message, for the receiver to deduplicate), webhook-timestamp (Unix
// seconds) and webhook-signature ("v1," + base64 HMAC-SHA256 over
// "id.timestamp.body" with the endpoint's secret). SMS gateways and
// ticketing systems are reached this way.
package webhook

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Headers of the Standard Webhooks scheme.
const (
	HeaderID        = "webhook-id"
	HeaderTimestamp = "webhook-timestamp"
	HeaderSignature = "webhook-signature"
)

// SecretPrefix starts the text form of a secret, as Standard Webhooks
// libraries read it: "whsec_" + base64 of the key bytes.
const SecretPrefix = "whsec_"

// FormatSecret returns the text form of a secret.
func FormatSecret(key []byte) string { return SecretPrefix + base64.StdEncoding.EncodeToString(key) }

// ParseSecret reads the text form of a secret.
func ParseSecret(s string) ([]byte, error) {
	k, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(strings.TrimSpace(s), SecretPrefix))
	if err != nil || len(k) < 24 || len(k) > 64 {
		return nil, errors.New("a webhook secret is whsec_ followed by the base64 of 24 to 64 random bytes")
	}
	return k, nil
}

// Sign returns the webhook-signature value of a message.
func Sign(key []byte, id string, ts time.Time, body []byte) string {
	m := hmac.New(sha256.New, key)
	fmt.Fprintf(m, "%s.%d.", id, ts.Unix())
	m.Write(body)
	return "v1," + base64.StdEncoding.EncodeToString(m.Sum(nil))
}

// PermanentError is a failure a retry cannot fix (the receiver refused
// the call as malformed or unauthorized).
type PermanentError struct{ Err error }

func (e *PermanentError) Error() string { return e.Err.Error() }
func (e *PermanentError) Unwrap() error { return e.Err }

// Permanent marks the error as one a retry cannot fix.
func (e *PermanentError) Permanent() bool { return true }

// Client posts signed webhook calls.
type Client struct {
	http *http.Client
}

// ErrPrivateAddress is returned (wrapped) for a receiver on a loopback,
// private, link-local or otherwise internal address, which a rule's
// author could otherwise aim at the platform's own network.
var ErrPrivateAddress = errors.New("webhook receivers on internal addresses are refused")

// NewClient returns a client with a 10 s timeout per call that follows no
// redirects and, unless allowPrivate, connects only to public addresses
// (checked on the address dialed, after DNS, so a name cannot rebind to
// an internal one). tlsConfig may be nil (the system roots).
func NewClient(allowPrivate bool, transport *http.Transport) *Client {
	if transport == nil {
		transport = http.DefaultTransport.(*http.Transport).Clone()
	}
	d := &net.Dialer{Timeout: 5 * time.Second}
	if !allowPrivate {
		d.Control = func(network, address string, _ syscall.RawConn) error {
			ap, err := netip.ParseAddrPort(address)
			if err != nil {
				return err
			}
			a := ap.Addr().Unmap()
			if !a.IsGlobalUnicast() || a.IsPrivate() || a.IsLoopback() || a.IsLinkLocalUnicast() {
				return fmt.Errorf("%w: %s", ErrPrivateAddress, a)
			}
			return nil
		}
	}
	transport.DialContext = d.DialContext
	transport.Proxy = nil
	return &Client{http: &http.Client{
		Transport:     transport,
		Timeout:       10 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}}
}

// Post sends body to url signed with key under message id at ts. A 2xx
// answer is success; 4xx but 408 and 429, and 3xx, are permanent errors.
func (c *Client) Post(ctx context.Context, url string, key []byte, id string, ts time.Time, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return &PermanentError{fmt.Errorf("webhook %s: %w", url, err)}
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "fieldtrust-webhook/1")
	req.Header.Set(HeaderID, id)
	req.Header.Set(HeaderTimestamp, strconv.FormatInt(ts.Unix(), 10))
	req.Header.Set(HeaderSignature, Sign(key, id, ts, body))
	resp, err := c.http.Do(req)
	if err != nil {
		if errors.Is(err, ErrPrivateAddress) {
			return &PermanentError{fmt.Errorf("webhook %s: %w", url, err)}
		}
		return fmt.Errorf("webhook %s: %w", url, err)
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		return nil
	case resp.StatusCode == http.StatusRequestTimeout || resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
		return fmt.Errorf("webhook %s: the receiver answered %s", url, resp.Status)
	}
	return &PermanentError{fmt.Errorf("webhook %s: the receiver answered %s", url, resp.Status)}
}
