// Package storetest is the conformance suite every store.Store
// implementation runs, so that SQLite and PostgreSQL behave alike.
package storetest

import (
	"crypto/sha256"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/store"
)

// Run runs the suite. open returns a fresh, empty store for each subtest.
func Run(t *testing.T, open func(t *testing.T) store.Store) {
	t.Run("Certificates", func(t *testing.T) { testCertificates(t, open(t)) })
	t.Run("Revoke", func(t *testing.T) { testRevoke(t, open(t)) })
	t.Run("CRLNumbers", func(t *testing.T) { testCRLNumbers(t, open(t)) })
	t.Run("ServiceRoles", func(t *testing.T) { testServiceRoles(t, open(t)) })
	t.Run("Ledger", func(t *testing.T) { testLedger(t, open(t)) })
	runEnrollments(t, open)
	runRevocations(t, open)
	runSnapshots(t, open)
	runRules(t, open)
	runAgents(t, open)
}

func cert(domain, serial, name, issuer string) store.Certificate {
	now := time.Now().UTC().Truncate(time.Second)
	return store.Certificate{
		Domain: domain, Serial: serial, Kind: "leaf", Name: name, IssuerSerial: issuer,
		NotBefore: now, NotAfter: now.Add(time.Hour), DER: []byte{0x30, 0x00, byte(len(serial))},
	}
}

func testCertificates(t *testing.T, s store.Store) {
	ctx := t.Context()
	a := cert("transport", "0a", "ms/acc/dev", "01")
	if err := s.PutCertificate(ctx, a); err != nil {
		t.Fatal(err)
	}
	if err := s.PutCertificate(ctx, a); !errors.Is(err, store.ErrExists) {
		t.Fatalf("second put of the same serial: err = %v, want ErrExists", err)
	}
	// The same serial in the other domain is a different certificate.
	if err := s.PutCertificate(ctx, cert("e2e", "0a", "ms/acc/dev", "01")); err != nil {
		t.Fatal(err)
	}
	if err := s.PutCertificate(ctx, cert("transport", "0b", "ms/acc/dev2", "02")); err != nil {
		t.Fatal(err)
	}
	got, err := s.Certificate(ctx, "transport", "0a")
	if err != nil {
		t.Fatal(err)
	}
	if got.Name != a.Name || !got.NotAfter.Equal(a.NotAfter) || string(got.DER) != string(a.DER) || got.Revoked() {
		t.Fatalf("Certificate = %+v, want %+v", got, a)
	}
	if _, err := s.Certificate(ctx, "transport", "ff"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("missing certificate: err = %v, want ErrNotFound", err)
	}
	for _, tt := range []struct {
		f    store.CertFilter
		want []string
	}{
		{store.CertFilter{Domain: "transport"}, []string{"0a", "0b"}},
		{store.CertFilter{Domain: "e2e"}, []string{"0a"}},
		{store.CertFilter{Domain: "transport", IssuerSerial: "02"}, []string{"0b"}},
		{store.CertFilter{Domain: "transport", Name: "ms/acc/dev"}, []string{"0a"}},
		{store.CertFilter{}, []string{"0a", "0a", "0b"}},
	} {
		list, err := s.ListCertificates(ctx, tt.f)
		if err != nil {
			t.Fatal(err)
		}
		var serials []string
		for _, c := range list {
			serials = append(serials, c.Serial)
		}
		if len(serials) != len(tt.want) {
			t.Fatalf("ListCertificates(%+v) = %v, want %v", tt.f, serials, tt.want)
		}
		for i := range serials {
			if serials[i] != tt.want[i] {
				t.Fatalf("ListCertificates(%+v) = %v, want %v", tt.f, serials, tt.want)
			}
		}
	}
}

func testRevoke(t *testing.T, s store.Store) {
	ctx := t.Context()
	if err := s.PutCertificate(ctx, cert("transport", "0a", "x", "01")); err != nil {
		t.Fatal(err)
	}
	if err := s.RevokeCertificate(ctx, "transport", "ff", 1, time.Now()); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("revoke unknown: err = %v, want ErrNotFound", err)
	}
	first := time.Now().UTC().Add(-time.Minute).Truncate(time.Second)
	if err := s.RevokeCertificate(ctx, "transport", "0a", 1, first); err != nil {
		t.Fatal(err)
	}
	if err := s.RevokeCertificate(ctx, "transport", "0a", 4, time.Now()); err != nil {
		t.Fatalf("second revoke: %v", err)
	}
	c, err := s.Certificate(ctx, "transport", "0a")
	if err != nil {
		t.Fatal(err)
	}
	if !c.Revoked() || !c.RevokedAt.Equal(first) || c.Reason != 1 {
		t.Fatalf("after revoke: revokedAt=%v reason=%d, want %v reason 1 (the first revocation)", c.RevokedAt, c.Reason, first)
	}
	list, err := s.ListCertificates(ctx, store.CertFilter{RevokedOnly: true})
	if err != nil || len(list) != 1 {
		t.Fatalf("revoked list = %v, %v", list, err)
	}
}

func testCRLNumbers(t *testing.T, s store.Store) {
	ctx := t.Context()
	var mu sync.Mutex
	seen := map[int64]bool{}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			n, err := s.NextCRLNumber(ctx, "transport", "01")
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			if seen[n] {
				t.Errorf("CRL number %d handed out twice", n)
			}
			seen[n] = true
		})
	}
	wg.Wait()
	for i := int64(1); i <= 8; i++ {
		if !seen[i] {
			t.Errorf("CRL numbers %v, want 1..8", seen)
		}
	}
	if n, err := s.NextCRLNumber(ctx, "transport", "02"); err != nil || n != 1 {
		t.Fatalf("first number of another CA = %d, %v; want 1", n, err)
	}
}

func testServiceRoles(t *testing.T, s store.Store) {
	ctx := t.Context()
	if err := s.SetServiceRole(ctx, "ingest", "snapshot-reader"); err != nil {
		t.Fatal(err)
	}
	if err := s.SetServiceRole(ctx, "ops", "admin"); err != nil {
		t.Fatal(err)
	}
	if err := s.SetServiceRole(ctx, "ops", "firmware-writer"); err != nil {
		t.Fatal(err)
	}
	roles, err := s.ServiceRoles(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(roles) != 2 || roles["ingest"] != "snapshot-reader" || roles["ops"] != "firmware-writer" {
		t.Fatalf("roles = %v", roles)
	}
}

func sha256Sum(b []byte) []byte {
	h := sha256.Sum256(b)
	return h[:]
}
