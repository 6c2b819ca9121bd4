package storetest

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/store"
)

func runAgents(t *testing.T, open func(t *testing.T) store.Store) {
	t.Run("Agents", func(t *testing.T) { testAgents(t, open(t)) })
	t.Run("AgentConcurrentUpdate", func(t *testing.T) { testAgentConcurrentUpdate(t, open(t)) })
	t.Run("AgentAssertions", func(t *testing.T) { testAgentAssertions(t, open(t)) })
}

func testAgents(t *testing.T, s store.Store) {
	ctx := t.Context()
	now := time.UnixMilli(time.Now().UnixMilli()).UTC()
	a := store.Agent{ClientID: "c1", Path: "ms-1/acc-1/press-7", Tenant: "ms-1", Profile: "SHARED_SECRET",
		Created: now, IATID: "j1", IATExpires: now.Add(time.Hour)}
	if err := s.CreateAgent(ctx, a); err != nil {
		t.Fatal(err)
	}
	for _, dup := range []store.Agent{a, {ClientID: "c2", Path: a.Path, Tenant: "ms-1", Profile: "RSA_3072", Created: now}} {
		if err := s.CreateAgent(ctx, dup); !errors.Is(err, store.ErrExists) {
			t.Fatalf("duplicate %+v: err = %v, want ErrExists", dup, err)
		}
	}
	for _, b := range []store.Agent{
		{ClientID: "c3", Path: "ms-1/acc-10/x", Tenant: "ms-1", Profile: "RSA_3072", Created: now},
		{ClientID: "c4", Path: "ms-1/acc-1/a", Tenant: "ms-1", Profile: "RSA_3072", Created: now},
		{ClientID: "c5", Path: "ms-2/acc-1/a", Tenant: "ms-2", Profile: "RSA_3072", Created: now},
	} {
		if err := s.CreateAgent(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.Agent(ctx, "c1")
	if err != nil {
		t.Fatal(err)
	}
	if got.Path != a.Path || got.Version != 1 || !got.Created.Equal(now) || got.IATID != "j1" || !got.IATExpires.Equal(a.IATExpires) || !got.Expires.IsZero() || got.Used {
		t.Fatalf("Agent = %+v, want %+v at version 1", got, a)
	}
	if byPath, err := s.AgentByPath(ctx, a.Path); err != nil || byPath.ClientID != "c1" {
		t.Fatalf("AgentByPath = %+v, %v", byPath, err)
	}
	if _, err := s.Agent(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("missing agent: err = %v", err)
	}
	if _, err := s.AgentByPath(ctx, "ms-1/acc-1/nope"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("missing agent by path: err = %v", err)
	}
	// Scopes match element-wise: acc-1 is not acc-10.
	for scope, want := range map[string][]string{
		"":                   {"c4", "c1", "c3", "c5"},
		"ms-1":               {"c4", "c1", "c3"},
		"ms-1/acc-1":         {"c4", "c1"},
		"ms-1/acc-1/press-7": {"c1"},
	} {
		list, err := s.ListAgents(ctx, scope)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, x := range list {
			ids = append(ids, x.ClientID)
		}
		if len(ids) != len(want) {
			t.Fatalf("ListAgents(%q) = %v, want %v", scope, ids, want)
		}
		for i := range ids {
			if ids[i] != want[i] {
				t.Fatalf("ListAgents(%q) = %v, want %v", scope, ids, want)
			}
		}
	}
	if _, err := s.ListAgents(ctx, "ms-1/../x"); !errors.Is(err, store.ErrInvalidScope) {
		t.Fatalf("bad scope: err = %v", err)
	}

	// Update with the version read; a stale version changes nothing.
	got.IATID, got.Generation, got.Expires = "", 1, now.Add(7*24*time.Hour)
	got.SecretSealed, got.RATHash, got.Used = []byte{1, 2, 3}, []byte{4, 5}, true
	got.Config, got.ConfigETag, got.Mappings = []byte(`{"a":1}`), 3, []byte(`[]`)
	v, err := s.UpdateAgent(ctx, got)
	if err != nil || v != 2 {
		t.Fatalf("UpdateAgent = %d, %v; want 2", v, err)
	}
	stale := got
	stale.IATID = "j2"
	if _, err := s.UpdateAgent(ctx, stale); !errors.Is(err, store.ErrStale) {
		t.Fatalf("stale update: err = %v, want ErrStale", err)
	}
	again, err := s.Agent(ctx, "c1")
	if err != nil {
		t.Fatal(err)
	}
	if again.Version != 2 || again.IATID != "" || again.Generation != 1 || !again.Expires.Equal(got.Expires) ||
		string(again.SecretSealed) != "\x01\x02\x03" || string(again.RATHash) != "\x04\x05" || !again.Used ||
		string(again.Config) != `{"a":1}` || again.ConfigETag != 3 || string(again.Mappings) != "[]" {
		t.Fatalf("after update: %+v", again)
	}
	missing := again
	missing.ClientID = "nope"
	if _, err := s.UpdateAgent(ctx, missing); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("update of a missing agent: err = %v, want ErrNotFound", err)
	}
}

// testAgentConcurrentUpdate: of many updates from the same version exactly
// one wins (a rotation or a registration happens once).
func testAgentConcurrentUpdate(t *testing.T, s store.Store) {
	ctx := t.Context()
	a := store.Agent{ClientID: "c1", Path: "ms/acc/ag", Tenant: "ms", Profile: "SHARED_SECRET", Created: time.Now()}
	if err := s.CreateAgent(ctx, a); err != nil {
		t.Fatal(err)
	}
	cur, err := s.Agent(ctx, "c1")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins := 0
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			u := cur
			u.Generation = int64(i + 1)
			if _, err := s.UpdateAgent(ctx, u); err == nil {
				mu.Lock()
				wins++
				mu.Unlock()
			} else if !errors.Is(err, store.ErrStale) {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if wins != 1 {
		t.Fatalf("%d concurrent updates from one version won; want 1", wins)
	}
}

func testAgentAssertions(t *testing.T, s store.Store) {
	ctx := t.Context()
	now := time.Now()
	if err := s.UseAgentAssertion(ctx, "c1", "j1", now.Add(time.Hour), now); err != nil {
		t.Fatal(err)
	}
	if err := s.UseAgentAssertion(ctx, "c1", "j1", now.Add(time.Hour), now); !errors.Is(err, store.ErrExists) {
		t.Fatalf("reused jti: err = %v, want ErrExists", err)
	}
	// Another client may use the same jti.
	if err := s.UseAgentAssertion(ctx, "c2", "j1", now.Add(time.Hour), now); err != nil {
		t.Fatal(err)
	}
	// Once expired, the record goes (the assertion itself is refused by
	// its exp long before).
	if err := s.UseAgentAssertion(ctx, "c3", "j1", now.Add(time.Second), now); err != nil {
		t.Fatal(err)
	}
	if err := s.UseAgentAssertion(ctx, "c3", "j1", now.Add(3*time.Hour), now.Add(2*time.Hour)); err != nil {
		t.Fatalf("jti after its record expired: %v", err)
	}
}
