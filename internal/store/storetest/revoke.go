package storetest

import (
	"errors"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/store"
)

// runRevocations runs the path revocation and change-counter part of the
// suite.
func runRevocations(t *testing.T, open func(t *testing.T) store.Store) {
	t.Run("PathRevocations", func(t *testing.T) { testPathRevocations(t, open(t)) })
	t.Run("RevocationVersion", func(t *testing.T) { testRevocationVersion(t, open(t)) })
	t.Run("KindsFilter", func(t *testing.T) { testKindsFilter(t, open(t)) })
}

func testPathRevocations(t *testing.T, s store.Store) {
	ctx := t.Context()
	if _, err := s.PathRevocation(ctx, "transport", "ms/acc/dev"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("no revocation yet: err = %v, want ErrNotFound", err)
	}
	if list, err := s.PathRevocations(ctx, "transport"); err != nil || len(list) != 0 {
		t.Fatalf("PathRevocations of an empty store = %v, %v", list, err)
	}
	t1 := time.Now().UTC().Truncate(time.Second)
	t0, t2 := t1.Add(-time.Hour), t1.Add(time.Hour)
	for _, r := range []store.PathRevocation{
		{Domain: "transport", Path: "ms/acc/dev", RevokedAt: t1, Reason: 1},
		{Domain: "transport", Path: "ms/acc", RevokedAt: t1},
		{Domain: "e2e", Path: "ms/acc/dev", RevokedAt: t2},
		// An older revocation does not shorten a newer one.
		{Domain: "transport", Path: "ms/acc/dev", RevokedAt: t0, Reason: 5},
	} {
		if err := s.RevokePath(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.PathRevocation(ctx, "transport", "ms/acc/dev")
	if err != nil || !got.RevokedAt.Equal(t1) || got.Path != "ms/acc/dev" || got.Domain != "transport" {
		t.Fatalf("PathRevocation = %+v, %v; want revoked at %v", got, err, t1)
	}
	// A later one extends it.
	if err := s.RevokePath(ctx, store.PathRevocation{Domain: "transport", Path: "ms/acc/dev", RevokedAt: t2, Reason: 1}); err != nil {
		t.Fatal(err)
	}
	if got, err := s.PathRevocation(ctx, "transport", "ms/acc/dev"); err != nil || !got.RevokedAt.Equal(t2) || got.Reason != 1 {
		t.Fatalf("after a later revocation: %+v, %v; want %v", got, err, t2)
	}
	list, err := s.PathRevocations(ctx, "transport")
	if err != nil || len(list) != 2 || list[0].Path != "ms/acc" || list[1].Path != "ms/acc/dev" || !list[1].RevokedAt.Equal(t2) {
		t.Fatalf("PathRevocations(transport) = %+v, %v", list, err)
	}
	if list, err := s.PathRevocations(ctx, "e2e"); err != nil || len(list) != 1 || !list[0].RevokedAt.Equal(t2) {
		t.Fatalf("PathRevocations(e2e) = %+v, %v", list, err)
	}
}

// testRevocationVersion: every change of a domain's revocation state, and
// nothing else, moves its version.
func testRevocationVersion(t *testing.T, s store.Store) {
	ctx := t.Context()
	version := func(domain string) int64 {
		t.Helper()
		v, err := s.RevocationVersion(ctx, domain)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	if v := version("transport"); v != 0 {
		t.Fatalf("version of an empty store = %d, want 0", v)
	}
	if err := s.PutCertificate(ctx, cert("transport", "0a", "ms/acc/dev", "01")); err != nil {
		t.Fatal(err)
	}
	if v := version("transport"); v != 0 {
		t.Fatalf("issuing moved the version to %d", v)
	}
	if err := s.RevokeCertificate(ctx, "transport", "0a", 1, time.Now()); err != nil {
		t.Fatal(err)
	}
	v1 := version("transport")
	if v1 == 0 {
		t.Fatal("revoking a certificate did not move the version")
	}
	if err := s.RevokeCertificate(ctx, "transport", "0a", 1, time.Now()); err != nil {
		t.Fatal(err)
	}
	if v := version("transport"); v != v1 {
		t.Fatalf("revoking a revoked certificate moved the version %d -> %d", v1, v)
	}
	if err := s.RevokePath(ctx, store.PathRevocation{Domain: "transport", Path: "ms/acc/dev", RevokedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	v2 := version("transport")
	if v2 <= v1 {
		t.Fatalf("revoking a path: version %d -> %d, want it to grow", v1, v2)
	}
	if v := version("e2e"); v != 0 {
		t.Fatalf("transport revocations moved the e2e version to %d", v)
	}
}

func testKindsFilter(t *testing.T, s store.Store) {
	ctx := t.Context()
	for i, kind := range []string{"root", "master-ca", "leaf", "account-ca", "leaf"} {
		c := cert("transport", string(rune('a'+i))+"0", "x", "01")
		c.Kind = kind
		if err := s.PutCertificate(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	list, err := s.ListCertificates(ctx, store.CertFilter{Domain: "transport", Kinds: []string{"master-ca", "account-ca"}})
	if err != nil || len(list) != 2 || list[0].Kind != "master-ca" || list[1].Kind != "account-ca" {
		t.Fatalf("Kinds filter = %+v, %v", list, err)
	}
}
