package drain

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/store"
)

// RequestStore is what an operator's request needs (postgres.Store).
type RequestStore interface {
	RequestDrain(ctx context.Context, node string) error
	DrainRequest(ctx context.Context, node string) (store.DrainRequest, error)
}

// Members lists the cluster's running nodes that are not draining
// (lease.Members).
type Members func(ctx context.Context) ([]string, error)

// MinOthers is how many other running nodes a drain must leave: the
// engine's MQTT streams have three replicas (min(nodes, 3)) and need a
// majority of them, so of three nodes one may be away at a time.
const MinOthers = 2

// Request asks node to drain and waits until it has, reporting progress
// (at most every 5 s). It refuses a node that is not running (or drains
// already), and a drain that would leave fewer than minOthers running
// nodes that do not drain.
func Request(ctx context.Context, st RequestStore, members Members, node string, minOthers int, progress func(string)) (time.Duration, error) {
	running, err := members(ctx)
	if err != nil {
		return 0, err
	}
	if !slices.Contains(running, node) {
		return 0, fmt.Errorf("node %q is not running, or drains already (running: %v); check the name ('up --node-name')", node, running)
	}
	others := slices.DeleteFunc(slices.Clone(running), func(o string) bool { return o == node })
	if len(others) < minOthers {
		return 0, fmt.Errorf("draining %s would leave %d running node(s) %v, and the cluster needs %d to keep its replicated sessions and messages: start another node first, or drain after the others are back (docs/scale.md \"Draining a node\")",
			node, len(others), others, minOthers)
	}
	if err := st.RequestDrain(ctx, node); err != nil {
		return 0, err
	}
	start := time.Now()
	progress(fmt.Sprintf("drain of %s requested: its partitions and roles move to %v, then its connections close and its gateways move to their next broker", node, others))
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	lastReport := start
	for {
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("waiting for %s to drain (it goes on; run the command again to wait): %w", node, ctx.Err())
		case <-t.C:
		}
		req, err := st.DrainRequest(ctx, node)
		if err != nil {
			return 0, err
		}
		if req.Drained() {
			return req.DrainedAt.Sub(req.RequestedAt), nil
		}
		if !req.Requested() {
			return 0, fmt.Errorf("node %s restarted before it drained (a start clears the request)", node)
		}
		if time.Since(lastReport) >= 5*time.Second {
			lastReport = time.Now()
			progress(fmt.Sprintf("%s draining (%s)", node, time.Since(start).Round(time.Second)))
		}
	}
}
