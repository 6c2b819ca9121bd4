package cluster

import (
	"context"
	"fmt"
	"time"
)

// WatchRevocations is the revocation loop of a node's process: every
// interval it asks refresh whether revocation state moved (the platform's
// pki.Verifier.Refresh, which polls the store's revocation version) and,
// when it did, revalidates the connections of nodes, ending the revoked
// identities' sessions. With a 1 s interval a revoked identity connected
// to any node is disconnected within about a second
// (TestClusterRevocation, TestClusterAdversarial/revoked_reconnect), and
// it cannot reconnect to any node, since every CONNECT is verified.
//
// A refresh error is returned, not skipped: a node that cannot learn of
// revocations must not go on serving as if there were none (the caller's
// supervisor restarts the loop or stops the node).
func WatchRevocations(ctx context.Context, interval time.Duration, refresh func(context.Context) (bool, error), nodes ...*Node) error {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			changed, err := refresh(ctx)
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return fmt.Errorf("refresh revocations: %w", err)
			}
			if !changed {
				continue
			}
			for _, n := range nodes {
				if ended := n.Revalidate(ctx); ended > 0 {
					n.cfg.Logger.Info("revocation state changed", "node", n.cfg.Name, "sessions_ended", ended)
				}
			}
		}
	}
}
