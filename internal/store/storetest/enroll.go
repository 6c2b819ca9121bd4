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

func testClaims(t *testing.T, s store.Store) {
	ctx := t.Context()
	now := time.Now().UTC().Truncate(time.Second)
	c1 := store.Claim{Kind: store.ClaimBySerial, Value: "0a1b", Path: "ms/acc/dev-1", CreatedAt: now}
	c2 := store.Claim{Kind: store.ClaimBySubject, Value: "SN-0001", Path: "ms/acc/dev-2", CreatedAt: now}
	// The same value under the other kind is a different claim.
	c3 := store.Claim{Kind: store.ClaimBySubject, Value: "0a1b", Path: "ms/acc/dev-3", CreatedAt: now}
	if err := s.PutClaims(ctx, []store.Claim{c1, c2, c3}); err != nil {
		t.Fatal(err)
	}
	// All or nothing: one duplicate keeps the new claim out too.
	fresh := store.Claim{Kind: store.ClaimBySubject, Value: "SN-0009", Path: "ms/acc/dev-9", CreatedAt: now}
	if err := s.PutClaims(ctx, []store.Claim{fresh, c2}); !errors.Is(err, store.ErrExists) {
		t.Fatalf("duplicate claim: err = %v, want ErrExists", err)
	}
	if err := s.PutClaims(ctx, []store.Claim{fresh, fresh}); !errors.Is(err, store.ErrExists) {
		t.Fatalf("duplicate within one call: err = %v, want ErrExists", err)
	}
	if _, err := s.Claim(ctx, store.ClaimBySubject, "SN-0009"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("claim of a failed batch: err = %v, want ErrNotFound", err)
	}
	got, err := s.Claim(ctx, store.ClaimBySerial, "0a1b")
	if err != nil {
		t.Fatal(err)
	}
	if got.Path != c1.Path || !got.CreatedAt.Equal(now) || got.Consumed() || got.ConsumedBy != "" {
		t.Fatalf("Claim = %+v, want %+v", got, c1)
	}
	list, err := s.Claims(ctx)
	if err != nil || len(list) != 3 || list[0].Path != c1.Path || list[1].Path != c2.Path || list[2].Path != c3.Path {
		t.Fatalf("Claims = %+v, %v", list, err)
	}

	at := now.Add(time.Minute)
	if err := s.ConsumeClaim(ctx, store.ClaimBySubject, "SN-0001", "beef", at); err != nil {
		t.Fatal(err)
	}
	if err := s.ConsumeClaim(ctx, store.ClaimBySubject, "SN-0001", "beef", at); !errors.Is(err, store.ErrConsumed) {
		t.Fatalf("second consume: err = %v, want ErrConsumed", err)
	}
	if err := s.ConsumeClaim(ctx, store.ClaimBySubject, "nobody", "beef", at); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("consume unknown: err = %v, want ErrNotFound", err)
	}
	got, err = s.Claim(ctx, store.ClaimBySubject, "SN-0001")
	if err != nil || !got.Consumed() || !got.ConsumedAt.Equal(at) || got.ConsumedBy != "beef" {
		t.Fatalf("consumed claim = %+v, %v", got, err)
	}
	if err := s.ReleaseClaim(ctx, store.ClaimBySubject, "SN-0001"); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Claim(ctx, store.ClaimBySubject, "SN-0001"); err != nil || got.Consumed() || got.ConsumedBy != "" {
		t.Fatalf("released claim = %+v, %v", got, err)
	}
	if err := s.ReleaseClaim(ctx, store.ClaimBySubject, "nobody"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("release unknown: err = %v, want ErrNotFound", err)
	}
	if err := s.ConsumeClaim(ctx, store.ClaimBySubject, "SN-0001", "cafe", at); err != nil {
		t.Fatalf("consume after release: %v", err)
	}
}

// testClaimConsumedOnce races enrollments for one claim: exactly one wins.
func testClaimConsumedOnce(t *testing.T, s store.Store) {
	ctx := t.Context()
	now := time.Now().UTC()
	if err := s.PutClaims(ctx, []store.Claim{{Kind: store.ClaimBySerial, Value: "01", Path: "ms/acc/dev", CreatedAt: now}}); err != nil {
		t.Fatal(err)
	}
	const racers = 16
	var wins, lost atomic.Int32
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range racers {
		wg.Go(func() {
			<-start
			err := s.ConsumeClaim(ctx, store.ClaimBySerial, "01", string(rune('a'+i)), now)
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
