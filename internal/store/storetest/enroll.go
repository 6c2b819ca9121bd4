package storetest

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/store"
)

// runEnrollments runs the onboarding part of the suite.
func runEnrollments(t *testing.T, open func(t *testing.T) store.Store) {
	t.Run("Manufacturers", func(t *testing.T) { testManufacturers(t, open(t)) })
	t.Run("Claims", func(t *testing.T) { testClaims(t, open(t)) })
	t.Run("LegacyClaims", func(t *testing.T) { testLegacyClaims(t, open(t)) })
	t.Run("ClaimConsumedOnce", func(t *testing.T) { testClaimConsumedOnce(t, open(t)) })
}

func testManufacturers(t *testing.T, s store.Store) {
	ctx := t.Context()
	now := time.Now().UTC().Truncate(time.Second)
	a := store.Manufacturer{Fingerprint: "aa", Subject: "CN=Acme IDevID CA", NotAfter: now.Add(time.Hour), DER: []byte{0x30, 1}, AddedAt: now}
	b := store.Manufacturer{Fingerprint: "bb", Subject: "CN=Other", NotAfter: now.Add(time.Hour), DER: []byte{0x30, 2}, AddedAt: now}
	if list, err := s.Manufacturers(ctx); err != nil || len(list) != 0 {
		t.Fatalf("empty store: %v, %v", list, err)
	}
	for _, m := range []store.Manufacturer{a, b} {
		if err := s.AddManufacturer(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.AddManufacturer(ctx, a); !errors.Is(err, store.ErrExists) {
		t.Fatalf("adding the same CA twice: err = %v, want ErrExists", err)
	}
	list, err := s.Manufacturers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].Fingerprint != "aa" || list[1].Fingerprint != "bb" ||
		list[0].Subject != a.Subject || string(list[0].DER) != string(a.DER) || !list[0].NotAfter.Equal(a.NotAfter) || !list[0].AddedAt.Equal(now) {
		t.Fatalf("Manufacturers = %+v", list)
	}
}

// acme and other are two manufacturer CAs (pki.KeyID values) for the
// claims below.
const (
	acme  = "ac"
	other = "07"
)

func key(mfr, kind, value string) store.ClaimKey {
	return store.ClaimKey{ManufacturerKeyID: mfr, Kind: kind, Value: value}
}

func testClaims(t *testing.T, s store.Store) {
	ctx := t.Context()
	now := time.Now().UTC().Truncate(time.Second)
	c1 := store.Claim{ClaimKey: key(acme, store.ClaimBySerial, "0a1b"), ManufacturerSubject: "CN=Acme", Path: "ms/acc/dev-1", CreatedAt: now}
	c2 := store.Claim{ClaimKey: key(acme, store.ClaimBySubject, "SN-0001"), Path: "ms/acc/dev-2", CreatedAt: now}
	// The same value under the other kind is a different claim.
	c3 := store.Claim{ClaimKey: key(acme, store.ClaimBySubject, "0a1b"), Path: "ms/acc/dev-3", CreatedAt: now}
	// So is the same serial of another manufacturer: serials are unique
	// only per issuer.
	c4 := store.Claim{ClaimKey: key(other, store.ClaimBySerial, "0a1b"), ManufacturerSubject: "CN=Other", Path: "ms/acc/dev-4", CreatedAt: now}
	if err := s.PutClaims(ctx, []store.Claim{c1, c2, c3, c4}); err != nil {
		t.Fatal(err)
	}
	// All or nothing: one duplicate keeps the new claim out too.
	fresh := store.Claim{ClaimKey: key(acme, store.ClaimBySubject, "SN-0009"), Path: "ms/acc/dev-9", CreatedAt: now}
	if err := s.PutClaims(ctx, []store.Claim{fresh, c2}); !errors.Is(err, store.ErrExists) {
		t.Fatalf("duplicate claim: err = %v, want ErrExists", err)
	}
	if err := s.PutClaims(ctx, []store.Claim{fresh, fresh}); !errors.Is(err, store.ErrExists) {
		t.Fatalf("duplicate within one call: err = %v, want ErrExists", err)
	}
	if _, err := s.Claim(ctx, fresh.ClaimKey); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("claim of a failed batch: err = %v, want ErrNotFound", err)
	}
	got, err := s.Claim(ctx, c1.ClaimKey)
	if err != nil {
		t.Fatal(err)
	}
	if got.Path != c1.Path || got.ManufacturerSubject != "CN=Acme" || !got.CreatedAt.Equal(now) || got.Consumed() || got.ConsumedBy != "" || got.Revoked() || got.Legacy() {
		t.Fatalf("Claim = %+v, want %+v", got, c1)
	}
	if got, err := s.Claim(ctx, c4.ClaimKey); err != nil || got.Path != c4.Path {
		t.Fatalf("other manufacturer's claim of the same serial = %+v, %v", got, err)
	}
	if _, err := s.Claim(ctx, key("", store.ClaimBySerial, "0a1b")); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("claim without manufacturer: err = %v, want ErrNotFound", err)
	}
	list, err := s.Claims(ctx)
	if err != nil || len(list) != 4 || list[0].Path != c1.Path || list[1].Path != c2.Path || list[2].Path != c3.Path || list[3].Path != c4.Path {
		t.Fatalf("Claims = %+v, %v", list, err)
	}

	at := now.Add(time.Minute)
	by := store.Consumer{Serial: "beef", Fingerprint: "f00d"}
	if err := s.ConsumeClaim(ctx, c2.ClaimKey, by, at); err != nil {
		t.Fatal(err)
	}
	if err := s.ConsumeClaim(ctx, c2.ClaimKey, by, at); !errors.Is(err, store.ErrConsumed) {
		t.Fatalf("second consume: err = %v, want ErrConsumed", err)
	}
	if err := s.ConsumeClaim(ctx, key(acme, store.ClaimBySubject, "nobody"), by, at); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("consume unknown: err = %v, want ErrNotFound", err)
	}
	if err := s.ConsumeClaim(ctx, key(other, store.ClaimBySubject, "SN-0001"), by, at); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("consume with another manufacturer's key: err = %v, want ErrNotFound", err)
	}
	got, err = s.Claim(ctx, c2.ClaimKey)
	if err != nil || !got.Consumed() || !got.ConsumedAt.Equal(at) || got.ConsumedBy != "beef" || got.ConsumedByCert != "f00d" {
		t.Fatalf("consumed claim = %+v, %v", got, err)
	}
	if err := s.ReleaseClaim(ctx, c2.ClaimKey); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Claim(ctx, c2.ClaimKey); err != nil || got.Consumed() || got.ConsumedBy != "" || got.ConsumedByCert != "" {
		t.Fatalf("released claim = %+v, %v", got, err)
	}
	if err := s.ReleaseClaim(ctx, key(acme, store.ClaimBySubject, "nobody")); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("release unknown: err = %v, want ErrNotFound", err)
	}
	if err := s.ConsumeClaim(ctx, c2.ClaimKey, store.Consumer{Serial: "cafe"}, at); err != nil {
		t.Fatalf("consume after release: %v", err)
	}

	// Revoking a path revokes its claims: they consume no more, and a new
	// claim for the same device replaces the revoked one.
	revokedAt := now.Add(2 * time.Minute)
	if err := s.RevokePath(ctx, store.PathRevocation{Domain: "transport", Path: c1.Path, RevokedAt: revokedAt, RevokeClaims: true}); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Claim(ctx, c1.ClaimKey); err != nil || !got.Revoked() || !got.RevokedAt.Equal(revokedAt) {
		t.Fatalf("claim of a revoked path = %+v, %v", got, err)
	}
	if got, err := s.Claim(ctx, c3.ClaimKey); err != nil || got.Revoked() {
		t.Fatalf("claim of another path = %+v, %v", got, err)
	}
	if err := s.ConsumeClaim(ctx, c1.ClaimKey, by, at); !errors.Is(err, store.ErrClaimRevoked) {
		t.Fatalf("consume a revoked claim: err = %v, want ErrClaimRevoked", err)
	}
	again := store.Claim{ClaimKey: c1.ClaimKey, Path: "ms/acc/dev-1b", CreatedAt: revokedAt}
	if err := s.PutClaims(ctx, []store.Claim{again}); err != nil {
		t.Fatalf("re-claim after revocation: %v", err)
	}
	if got, err := s.Claim(ctx, c1.ClaimKey); err != nil || got.Revoked() || got.Consumed() || got.Path != "ms/acc/dev-1b" {
		t.Fatalf("replacing claim = %+v, %v", got, err)
	}
	// A path revocation without RevokeClaims (the e2e domain) leaves
	// claims alone.
	if err := s.RevokePath(ctx, store.PathRevocation{Domain: "e2e", Path: c3.Path, RevokedAt: revokedAt}); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Claim(ctx, c3.ClaimKey); err != nil || got.Revoked() {
		t.Fatalf("claim after an e2e path revocation = %+v, %v", got, err)
	}
}

// testLegacyClaims: claims without a manufacturer (made before claims
// named one) are adopted all or nothing.
func testLegacyClaims(t *testing.T, s store.Store) {
	ctx := t.Context()
	now := time.Now().UTC().Truncate(time.Second)
	legacy := []store.Claim{
		{ClaimKey: key("", store.ClaimBySerial, "01"), Path: "ms/acc/dev-1", CreatedAt: now},
		{ClaimKey: key("", store.ClaimBySubject, "SN-2"), Path: "ms/acc/dev-2", CreatedAt: now},
	}
	if err := s.PutClaims(ctx, legacy); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Claim(ctx, legacy[0].ClaimKey); err != nil || !got.Legacy() {
		t.Fatalf("legacy claim = %+v, %v", got, err)
	}
	// other already claims serial 01: adopting for other collides.
	if err := s.PutClaims(ctx, []store.Claim{{ClaimKey: key(other, store.ClaimBySerial, "01"), Path: "ms/acc/x", CreatedAt: now}}); err != nil {
		t.Fatal(err)
	}
	if n, err := s.AdoptLegacyClaims(ctx, other, "CN=Other"); !errors.Is(err, store.ErrExists) || n != 0 {
		t.Fatalf("colliding adoption: %d, %v; want ErrExists", n, err)
	}
	if got, err := s.Claim(ctx, legacy[1].ClaimKey); err != nil || !got.Legacy() {
		t.Fatalf("a failed adoption changed a claim: %+v, %v", got, err)
	}
	n, err := s.AdoptLegacyClaims(ctx, acme, "CN=Acme")
	if err != nil || n != 2 {
		t.Fatalf("adoption: %d, %v; want 2", n, err)
	}
	got, err := s.Claim(ctx, key(acme, store.ClaimBySubject, "SN-2"))
	if err != nil || got.Legacy() || got.ManufacturerSubject != "CN=Acme" || got.Path != "ms/acc/dev-2" {
		t.Fatalf("adopted claim = %+v, %v", got, err)
	}
	if n, err := s.AdoptLegacyClaims(ctx, acme, "CN=Acme"); err != nil || n != 0 {
		t.Fatalf("second adoption: %d, %v; want 0", n, err)
	}
}

// testClaimConsumedOnce races enrollments for one claim: exactly one wins.
func testClaimConsumedOnce(t *testing.T, s store.Store) {
	ctx := t.Context()
	now := time.Now().UTC()
	k := key(acme, store.ClaimBySerial, "01")
	if err := s.PutClaims(ctx, []store.Claim{{ClaimKey: k, Path: "ms/acc/dev", CreatedAt: now}}); err != nil {
		t.Fatal(err)
	}
	const racers = 16
	var wins, lost atomic.Int32
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range racers {
		wg.Go(func() {
			<-start
			err := s.ConsumeClaim(ctx, k, store.Consumer{Serial: string(rune('a' + i))}, now)
			switch {
			case err == nil:
				wins.Add(1)
			case errors.Is(err, store.ErrConsumed):
				lost.Add(1)
			default:
				t.Errorf("racer %d: %v", i, err)
			}
		})
	}
	close(start)
	wg.Wait()
	if wins.Load() != 1 || lost.Load() != racers-1 {
		t.Fatalf("%d winners and %d ErrConsumed of %d racers; want exactly one winner", wins.Load(), lost.Load(), racers)
	}
}
