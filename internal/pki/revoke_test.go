package pki

import (
	"context"
	"crypto/elliptic"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/store/sqlite"
)

// TestRevokePath: revoking a path revokes the path, not the serials of the
// moment. A renewal chain A -> B -> C is refused everywhere after the
// revocation, re-enrolling on the authority of any of them is refused by
// the store even while a verifier's snapshot is stale, a certificate of the
// path issued before the revocation but listed nowhere is refused too, and
// a certificate issued afterwards by a deliberate operator step is valid.
func TestRevokePath(t *testing.T) {
	p := newTestPKI(t, Options{})
	ctx := t.Context()
	const path = "ms-acc-1/acc-1/dev-1"
	stale, err := p.t.Verifier(ctx) // the running platform's snapshot, not refreshed below
	if err != nil {
		t.Fatal(err)
	}
	cred := func(v *Verifier, iss *Issued) *Credential {
		t.Helper()
		id, chain, err := v.Verify(iss.Cert, iss.Chain[1:], time.Time{}, x509.ExtKeyUsageClientAuth)
		if err != nil {
			t.Fatalf("verify %s: %v", SerialHex(iss.Cert.SerialNumber), err)
		}
		return &Credential{Domain: Transport, Identity: id, Chain: chain}
	}
	renew := func(by *Credential) (*Issued, error) {
		key, _ := GenerateKey(elliptic.P256())
		return p.t.Issue(ctx, LeafRequest{Path: mustPath(t, path), PublicKey: key.Public(), AuthenticatedBy: by})
	}
	a, _ := issue(t, p.t, path)
	b, err := renew(cred(stale, a))
	if err != nil {
		t.Fatal(err)
	}
	c, err := renew(cred(stale, b))
	if err != nil {
		t.Fatal(err)
	}
	// What an account CA key minted for the path without a record: no
	// serial list knows it.
	accountCA := a.Chain[1]
	k, _ := GenerateKey(elliptic.P256())
	unlisted := signTemplate(t, accountCA, mustKey(t, p.t, "ms-acc-1+acc-1"), &x509.Certificate{Subject: pkix.Name{CommonName: path}}, k.Public())
	other, _ := issue(t, p.t, "ms-acc-1/acc-1/dev-2")
	credC := cred(stale, c)

	revoked, err := p.t.RevokePath(ctx, mustPath(t, path), 1)
	if err != nil {
		t.Fatal(err)
	}
	if len(revoked) != 3 {
		t.Fatalf("RevokePath put %d certificates on the CRL, want A, B and C", len(revoked))
	}
	// The stale snapshot still passes C, but issuing on its authority reads
	// the store.
	if _, err := renew(credC); !errors.Is(err, ErrRevoked) {
		t.Fatalf("re-enrollment with C after the revocation: %v, want ErrRevoked", err)
	}
	fresh, err := p.t.Verifier(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for name, leaf := range map[string]*x509.Certificate{"A": a.Cert, "B": b.Cert, "C": c.Cert, "unlisted": unlisted} {
		if _, _, err := fresh.Verify(leaf, a.Chain[1:], time.Time{}, x509.ExtKeyUsageClientAuth); !errors.Is(err, ErrRevoked) {
			t.Errorf("%s after the path revocation: %v, want ErrRevoked", name, err)
		}
	}
	if _, _, err := fresh.Verify(other.Cert, other.Chain[1:], time.Time{}, x509.ExtKeyUsageClientAuth); err != nil {
		t.Fatalf("another device of the account: %v", err)
	}
	if changed, err := stale.Refresh(ctx); err != nil || !changed {
		t.Fatalf("Refresh after RevokePath = %v, %v", changed, err)
	}
	if _, _, err := stale.Verify(c.Cert, c.Chain[1:], time.Time{}, x509.ExtKeyUsageClientAuth); !errors.Is(err, ErrRevoked) {
		t.Fatalf("C after Refresh: %v", err)
	}

	// The operator issues the path again (a deliberate step): the new
	// certificate starts no earlier than the revocation and is valid, and
	// renews.
	d, _ := issue(t, p.t, path)
	rev, err := p.db.PathRevocation(ctx, string(Transport), path)
	if err != nil {
		t.Fatal(err)
	}
	if d.Cert.NotBefore.Before(rev.RevokedAt) || time.Now().Before(d.Cert.NotBefore) {
		t.Fatalf("new certificate NotBefore %v, path revoked at %v", d.Cert.NotBefore, rev.RevokedAt)
	}
	if _, err := renew(cred(fresh, d)); err != nil {
		t.Fatalf("renewal of the new certificate: %v", err)
	}
	// Revoking again covers the new one too.
	if _, err := p.t.RevokePath(ctx, mustPath(t, path), 1); err != nil {
		t.Fatal(err)
	}
	fresh.Refresh(ctx)
	if _, _, err := fresh.Verify(d.Cert, d.Chain[1:], time.Time{}, x509.ExtKeyUsageClientAuth); !errors.Is(err, ErrRevoked) {
		t.Fatalf("new certificate after a second revocation: %v", err)
	}
	// A path nothing was ever issued for is a typo.
	if _, err := p.t.RevokePath(ctx, mustPath(t, "ms-acc-1/acc-1/nobody"), 1); err == nil {
		t.Fatal("revoked a path that never had a certificate")
	}
}

// TestRevokePathE2E: in the e2e domain the path rule holds for signers,
// and an e2e certificate is not issued on the authority of a transport
// certificate older than the e2e revocation.
func TestRevokePathE2E(t *testing.T) {
	p := newTestPKI(t, Options{})
	ctx := t.Context()
	const path = "ms-acc-1/acc-1/dev-1"
	tr, _ := issue(t, p.t, path)
	e, _ := issue(t, p.e, path)
	tv, _ := p.t.Verifier(ctx)
	id, chain, err := tv.Verify(tr.Cert, tr.Chain[1:], time.Time{}, x509.ExtKeyUsageClientAuth)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.e.RevokePath(ctx, mustPath(t, path), 1); err != nil {
		t.Fatal(err)
	}
	ev, _ := p.e.Verifier(ctx)
	if _, err := ev.VerifySigner(e.Cert, e.Chain[1:], time.Now()); !errors.Is(err, ErrRevoked) {
		t.Fatalf("e2e signer after the path revocation: %v", err)
	}
	key, _ := GenerateKey(elliptic.P256())
	if _, err := p.e.Issue(ctx, LeafRequest{Path: mustPath(t, path), PublicKey: key.Public(), AuthenticatedBy: &Credential{Domain: Transport, Identity: id, Chain: chain}}); !errors.Is(err, ErrRevoked) {
		t.Fatalf("e2e issue on a transport certificate older than the e2e revocation: %v", err)
	}
	// The transport identity is untouched.
	if _, _, err := tv.Verify(tr.Cert, tr.Chain[1:], time.Time{}, x509.ExtKeyUsageClientAuth); err != nil {
		t.Fatalf("transport certificate after an e2e revocation: %v", err)
	}
}

// countingRecords counts certificate listings.
type countingRecords struct {
	*sqlite.Store
	lists atomic.Int32
}

func (c *countingRecords) ListCertificates(ctx context.Context, f store.CertFilter) ([]store.Certificate, error) {
	c.lists.Add(1)
	return c.Store.ListCertificates(ctx, f)
}

// TestRefreshPollsAVersion: a Refresh without a revocation since the last
// one lists no certificates (the platform polls every second, and a domain
// has a certificate per device and renewal); after a revocation it
// reloads.
func TestRefreshPollsAVersion(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	db, err := sqlite.Open(ctx, filepath.Join(dir, "fieldtrust.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	rec := &countingRecords{Store: db}
	a, err := Open(ctx, dir, Transport, rec, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"ms-1/acc-1/dev-1", "ms-1/acc-1/dev-2", "ms-1/acc-2/dev-1"} {
		issue(t, a, p)
	}
	v, err := a.Verifier(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rec.lists.Store(0)
	for range 5 {
		if changed, err := v.Refresh(ctx); err != nil || changed {
			t.Fatalf("Refresh without a change = %v, %v", changed, err)
		}
	}
	if n := rec.lists.Load(); n != 0 {
		t.Fatalf("5 refreshes without a change listed certificates %d times; want 0", n)
	}
	if _, err := a.RevokeName(ctx, "ms-1/acc-1/dev-2", false, 1); err != nil {
		t.Fatal(err)
	}
	if changed, err := v.Refresh(ctx); err != nil || !changed {
		t.Fatalf("Refresh after a revocation = %v, %v", changed, err)
	}
	rec.lists.Store(0)
	if changed, err := v.Refresh(ctx); err != nil || changed || rec.lists.Load() != 0 {
		t.Fatalf("Refresh right after = %v, %v with %d listings", changed, err, rec.lists.Load())
	}
}
