package gateway

import (
	"context"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fieldtrust/fieldtrust/internal/bootstrap"
	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/platform"
	"github.com/fieldtrust/fieldtrust/internal/platform/platformtest"
	"github.com/fieldtrust/fieldtrust/internal/store/sqlite"
	"github.com/fieldtrust/fieldtrust/internal/topic"
)

func testAuthority(t *testing.T) *pki.Authority { return testAuthorityOf(t, pki.Transport) }

func testAuthorityOf(t *testing.T, domain pki.Domain) *pki.Authority {
	t.Helper()
	dir := t.TempDir()
	db, err := sqlite.Open(t.Context(), filepath.Join(dir, "db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	a, err := pki.Open(t.Context(), dir, domain, db, pki.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func issueCred(t *testing.T, a *pki.Authority, req pki.LeafRequest) *credential {
	t.Helper()
	key, _ := pki.GenerateKey(elliptic.P256())
	req.PublicKey = key.Public()
	iss, err := a.Issue(t.Context(), req)
	if err != nil {
		t.Fatal(err)
	}
	return &credential{key: key, chain: iss.Chain}
}

func bundle(t *testing.T, a *pki.Authority) []byte {
	t.Helper()
	crls, err := a.CRLs(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	b, err := pki.EncodeCRLBundle(crls)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestCRLState: the gateway refuses a platform whose certificate is on a
// CRL it received, ignores CRLs it cannot verify, and never rolls back to
// an older CRL.
func TestCRLState(t *testing.T) {
	a := testAuthority(t)
	own := issueCred(t, a, pki.LeafRequest{Path: pki.Path{"ms-1", "acc-1", "gw-1"}})
	server := issueCred(t, a, pki.LeafRequest{Service: "platform", DNSNames: []string{"localhost"}})
	creds := &credentials{anchors: []*x509.Certificate{a.Root()}, transport: own, e2e: own}
	s := newCRLState(creds, slog.New(slog.DiscardHandler))
	peer := tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{append(append([]*x509.Certificate{}, server.chain...), a.Root())}}
	if err := s.verifyPeer(peer); err != nil {
		t.Fatalf("valid platform refused: %v", err)
	}
	before := bundle(t, a) // an old CRL, issued before the revocation

	if _, err := a.Revoke(context.Background(), server.leaf().SerialNumber, 1); err != nil {
		t.Fatal(err)
	}
	s.apply(pki.Transport, bundle(t, a))
	if err := s.verifyPeer(peer); err == nil || !strings.Contains(err.Error(), "revoked") {
		t.Fatalf("revoked platform certificate accepted: %v", err)
	}
	// Replaying the older CRL (retained messages can be stale; an attacker
	// with broker access could republish one) does not lift the revocation.
	s.apply(pki.Transport, before)
	if err := s.verifyPeer(peer); err == nil {
		t.Fatal("an older CRL rolled the revocation back")
	}

	// A CRL from a CA the gateway does not know is ignored.
	other := testAuthority(t)
	victim := issueCred(t, other, pki.LeafRequest{Service: "platform"})
	other.Revoke(context.Background(), victim.leaf().SerialNumber, 1)
	s2 := newCRLState(creds, slog.New(slog.DiscardHandler))
	s2.apply(pki.Transport, bundle(t, other))
	if n := len(s2.revokedOf(pki.Transport)); n != 0 {
		t.Fatalf("applied %d revocations from an unknown CA", n)
	}
	// Garbage is ignored without harm.
	s2.apply(pki.Transport, []byte("not a bundle"))
	if err := s2.verifyPeer(peer); err != nil {
		t.Fatalf("garbage CRL changed the verdict: %v", err)
	}
}

// message is an MQTT message as paho hands it to the gateway.
type message struct {
	topic   string
	payload []byte
}

func (m message) Duplicate() bool   { return false }
func (m message) Qos() byte         { return 1 }
func (m message) Retained() bool    { return true }
func (m message) Topic() string     { return m.topic }
func (m message) MessageID() uint16 { return 1 }
func (m message) Payload() []byte   { return m.payload }
func (m message) Ack()              {}

// TestCRLTopicOfBootstrap: the bootstrap document names the topic of the
// transport CRL bundle; a bundle arriving there revokes the platform's
// certificate for the gateway, whatever the topic is called, and a bundle
// on a topic the gateway did not ask for changes nothing.
func TestCRLTopicOfBootstrap(t *testing.T) {
	a := testAuthority(t)
	own := issueCred(t, a, pki.LeafRequest{Path: pki.Path{"ms-1", "acc-1", "gw-1"}})
	server := issueCred(t, a, pki.LeafRequest{Service: "platform", DNSNames: []string{"localhost"}})
	peer := tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{append(append([]*x509.Certificate{}, server.chain...), a.Root())}}
	if _, err := a.Revoke(context.Background(), server.leaf().SerialNumber, 1); err != nil {
		t.Fatal(err)
	}
	revoked := bundle(t, a)
	for _, tt := range []struct {
		name, crlTopic, on string
		refused            bool
	}{
		{"the scheme's topic", "", topic.CRLTransport, true},
		{"the document's topic", "site-7/crl", "site-7/crl", true},
		{"the e2e topic", "", topic.CRLE2E, false},
		{"another topic", "site-7/crl", topic.CRLTransport, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			creds := &credentials{anchors: []*x509.Certificate{a.Root()}, transport: own, e2e: own}
			g := &Gateway{log: slog.New(slog.DiscardHandler), creds: creds, crl: newCRLState(creds, slog.New(slog.DiscardHandler)),
				path: "ms-1/acc-1/gw-1", doc: &bootstrap.Document{CRLTopic: tt.crlTopic}}
			// The TLS handshake with the platform comes first: the gateway
			// learns the platform's CAs from it.
			if err := g.crl.verifyPeer(peer); err != nil {
				t.Fatal(err)
			}
			g.onMessage(nil, message{tt.on, revoked})
			if err := g.crl.verifyPeer(peer); (err != nil) != tt.refused {
				t.Fatalf("CRL on %s with crl_topic %q: verifyPeer = %v; want refused = %v", tt.on, tt.crlTopic, err, tt.refused)
			}
		})
	}
}

// TestSubscribedFailsClosed: a session whose subscription to its commands
// or CRLs the broker refuses does not run on without them. The broker is
// the platform's own, which refuses a foreign topic.
func TestSubscribedFailsClosed(t *testing.T) {
	e := platformtest.Start(t, platform.Config{})
	id := e.Identity(t, "ms-1/acc-1/gw-1", false)
	ok := map[string]byte{topic.CommandsOf("ms-1/acc-1/gw-1"): 1, topic.CRLTransport: 1, topic.CRLE2E: 1}
	if err := subscribed(e.MQTT(t, id).SubscribeMultiple(ok, nil), ok); err != nil {
		t.Fatalf("the gateway's own subscriptions: %v", err)
	}
	bad := map[string]byte{topic.CommandsOf("ms-1/acc-1/gw-1"): 1, topic.CommandsOf("ms-2/acc-1/gw-1"): 1}
	err := subscribed(e.MQTT(t, id).SubscribeMultiple(bad, nil), bad)
	if err == nil || !strings.Contains(err.Error(), "refused "+topic.CommandsOf("ms-2/acc-1/gw-1")) {
		t.Fatalf("a refused subscription: %v", err)
	}
}
