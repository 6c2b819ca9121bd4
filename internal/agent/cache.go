package agent

import (
	"context"
	"sync"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/store"
)

// CacheTTL is how long the token endpoint and the agents' API trust what
// they read of an agent and of its path's revocation. Changes this
// process makes apply at once; those of the offline CLI (agent revoke,
// pki revoke) within CacheTTL, like revocations reach 'up' (about a
// second). It spares the token endpoint four reads per request.
const CacheTTL = time.Second

// maxCached bounds each cache: beyond it, the cache is emptied.
const maxCached = 100_000

type cached[V any] struct {
	v  V
	at time.Time
}

type ttlCache[V any] struct {
	mu sync.Mutex
	m  map[string]cached[V]
}

func (c *ttlCache[V]) get(key string, now time.Time) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[key]
	if !ok || now.Sub(e.at) >= CacheTTL || now.Before(e.at) {
		var zero V
		return zero, false
	}
	return e.v, true
}

func (c *ttlCache[V]) put(key string, v V, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= maxCached {
		c.m = map[string]cached[V]{}
	}
	c.m[key] = cached[V]{v, now}
}

func (c *ttlCache[V]) drop(key string) {
	c.mu.Lock()
	delete(c.m, key)
	c.mu.Unlock()
}

// cachedAgent reads an agent through the cache.
func (s *Service) cachedAgent(ctx context.Context, clientID string) (store.Agent, error) {
	now := s.now()
	if a, ok := s.agents.get(clientID, now); ok {
		return a, nil
	}
	a, err := s.cfg.Store.Agent(ctx, clientID)
	if err != nil {
		return a, err
	}
	s.agents.put(clientID, a, now)
	return a, nil
}

// updateAgent stores a (compare-and-swap on its version) and keeps the
// cache in step.
func (s *Service) updateAgent(ctx context.Context, a store.Agent) (int64, error) {
	s.agents.drop(a.ClientID)
	v, err := s.cfg.Store.UpdateAgent(ctx, a)
	if err == nil {
		a.Version = v
		s.agents.put(a.ClientID, a, s.now())
	}
	return v, err
}

// cachedNotRevoked is checkNotRevoked through the cache.
func (s *Service) cachedNotRevoked(ctx context.Context, path string) error {
	now := s.now()
	if ok, hit := s.paths.get(path, now); hit && ok {
		return nil
	}
	if err := s.checkNotRevoked(ctx, path); err != nil {
		return err
	}
	s.paths.put(path, true, now)
	return nil
}
