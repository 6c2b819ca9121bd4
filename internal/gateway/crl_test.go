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

	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/store/sqlite"
)

func testAuthority(t *testing.T) *pki.Authority {
	t.Helper()
	dir := t.TempDir()
	db, err := sqlite.Open(t.Context(), filepath.Join(dir, "db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	a, err := pki.Open(t.Context(), dir, pki.Transport, db, pki.Options{})
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
	s.apply("pki/crl/transport", bundle(t, a))
	if err := s.verifyPeer(peer); err == nil || !strings.Contains(err.Error(), "revoked") {
		t.Fatalf("revoked platform certificate accepted: %v", err)
	}
	// Replaying the older CRL (retained messages can be stale; an attacker
	// with broker access could republish one) does not lift the revocation.
	s.apply("pki/crl/transport", before)
	if err := s.verifyPeer(peer); err == nil {
		t.Fatal("an older CRL rolled the revocation back")
	}

	// A CRL from a CA the gateway does not know is ignored.
	other := testAuthority(t)
	victim := issueCred(t, other, pki.LeafRequest{Service: "platform"})
	other.Revoke(context.Background(), victim.leaf().SerialNumber, 1)
	s2 := newCRLState(creds, slog.New(slog.DiscardHandler))
	s2.apply("pki/crl/transport", bundle(t, other))
	if n := len(s2.revokedOf("pki/crl/transport")); n != 0 {
		t.Fatalf("applied %d revocations from an unknown CA", n)
	}
	// Garbage is ignored without harm.
	s2.apply("pki/crl/transport", []byte("not a bundle"))
	if err := s2.verifyPeer(peer); err != nil {
		t.Fatalf("garbage CRL changed the verdict: %v", err)
	}
}
