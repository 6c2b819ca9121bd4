// Package drain takes one node of a multi-node cluster out of service on
// an operator's request, without losing what its clients sent
// ('fieldtrust cluster drain NODE', docs/scale.md "Draining a node").
//
// The request is a row in the shared PostgreSQL store (not an HTTP
// endpoint: no new network surface, and the operator needs only what
// 'cluster add-node' needs, the database). Each node polls its own row;
// on a request it
//
//  1. gives up its ingest partitions and singleton roles (each stopped
//     before it is unlocked, as on a balance) and its member lock, so the
//     other nodes take them on their next lease round;
//  2. drains its engine node: every new CONNECT refused, the open
//     connections closed one at a time (gateways move to the next broker
//     of their bootstrap list and resend what was not acknowledged), the
//     engine's JetStream leaderships handed to the others, the node shut
//     down;
//  3. records that it drained and stops its process (exit status 0).
//
// Its next start clears the request: a started node is back.
package drain

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/store"
)

// Store holds the drain requests (postgres.Store).
type Store interface {
	DrainRequest(ctx context.Context, node string) (store.DrainRequest, error)
	MarkDrained(ctx context.Context, node string) error
	ClearDrain(ctx context.Context, node string) error
}

// Leases is the node's lease manager (lease.Manager).
type Leases interface {
	// Drain gives up every partition, role and the membership for good;
	// the channel is closed when done.
	Drain() <-chan struct{}
}

// Engine is the node's broker (the platform's cluster tier).
type Engine interface {
	// Drain refuses new connections, closes the open ones over spread and
	// shuts the node down; it returns once the node is down.
	Drain(ctx context.Context, spread time.Duration) error
}

// Node watches one node's drain request.
type Node struct {
	Name   string
	Store  Store
	Leases Leases
	Engine Engine
	// Spread is how long the engine takes to close its connections, so
	// that its gateways do not all reconnect elsewhere at once (default
	// 10 s).
	Spread time.Duration
	// Poll is how often the request is read (default 1 s).
	Poll time.Duration
	// Stop ends the node's process once it drained.
	Stop   func()
	Logger *slog.Logger

	cleared bool // the request left from before this start is cleared
}

// Run clears a request left from before this start (on its first run
// only: a restart after a failure must not forget a request), then waits
// for one and drains. It returns when ctx ends (the process stops).
func (n *Node) Run(ctx context.Context) error {
	if n.Name == "" || n.Store == nil || n.Leases == nil || n.Engine == nil || n.Stop == nil {
		return errors.New("drain: Name, Store, Leases, Engine and Stop are required")
	}
	log := n.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	spread, poll := n.Spread, n.Poll
	if spread <= 0 {
		spread = 10 * time.Second
	}
	if poll <= 0 {
		poll = time.Second
	}
	if !n.cleared {
		if err := n.Store.ClearDrain(ctx, n.Name); err != nil {
			return err
		}
		n.cleared = true
	}
	t := time.NewTicker(poll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		req, err := n.Store.DrainRequest(ctx, n.Name)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			// A store outage: the node keeps serving (the leases fail
			// closed on their own connection).
			log.Warn("drain: reading this node's drain request failed; retrying", "node", n.Name, "err", err)
			continue
		}
		if req.Requested() && !req.Drained() {
			break
		}
	}
	start := time.Now()
	log.Warn("drain requested: releasing this node's partitions and roles", "node", n.Name)
	select {
	case <-ctx.Done():
		return nil
	case <-n.Leases.Drain():
	}
	log.Warn("drain: partitions and roles released; draining the engine node", "node", n.Name, "spread", spread)
	if err := n.Engine.Drain(ctx, spread); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("drain node %s: %w", n.Name, err)
	}
	for {
		err := n.Store.MarkDrained(ctx, n.Name)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return nil
		}
		log.Warn("drain: recording the drain failed; retrying", "node", n.Name, "err", err)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
	log.Warn("node drained: it owns nothing and takes no connections; stopping", "node", n.Name, "took", time.Since(start).Round(time.Millisecond))
	n.Stop()
	<-ctx.Done()
	return nil
}
