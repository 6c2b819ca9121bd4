package drain

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/lease"
	"github.com/fieldtrust/fieldtrust/internal/store"
)

// RequestStore is what an operator's request needs (postgres.Store).
type RequestStore interface {
	RequestDrain(ctx context.Context, node string) error
	DrainRequest(ctx context.Context, node string) (store.DrainRequest, error)
	LeaseNodes(ctx context.Context, prefix string) ([]string, error)
}

// MinOthers is how many other running nodes a drain must leave: the
// engine's MQTT streams have three replicas (min(nodes, 3)) and need a
// majority of them, so of three nodes one may be away at a time.
const MinOthers = 2

// Request asks node to drain and waits until it has, reporting progress
// (at most every 5 s). It refuses a node that is not running, and a drain
// that would leave fewer than minOthers running nodes not draining
// themselves.
func Request(ctx context.Context, st RequestStore, node string, minOthers int, progress func(string)) (time.Duration, error) {
	running, err := st.LeaseNodes(ctx, lease.ApplicationPrefix)
	if err != nil {
		return 0, err
	}
	if !slices.Contains(running, node) {
		return 0, fmt.Errorf("node %q is not running (running: %v): nothing to drain; check the name ('up --node-name')", node, running)
	}
	var others []string
	for _, o := range running {
		if o == node {
			continue
		}
		req, err := st.DrainRequest(ctx, o)
		if err != nil {
			return 0, err
		}
		if !req.Requested() {
			others = append(others, o)
		}
	}
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
			running, err := st.LeaseNodes(ctx, lease.ApplicationPrefix)
			if err != nil {
				return 0, err
			}
			if !slices.Contains(running, node) {
				return 0, fmt.Errorf("node %s stopped before it recorded its drain: check its log", node)
			}
			progress(fmt.Sprintf("%s draining (%s)", node, time.Since(start).Round(time.Second)))
		}
	}
}
