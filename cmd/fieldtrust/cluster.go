package main

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	"github.com/fieldtrust/fieldtrust/internal/datadir"
	"github.com/fieldtrust/fieldtrust/internal/drain"
	"github.com/fieldtrust/fieldtrust/internal/lease"
)

func newClusterCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "cluster",
		Short: "Prepare the nodes of a multi-node cluster (several 'up --broker cluster' on one PostgreSQL)",
	}
	var data, out string
	add := &cobra.Command{
		Use:   "add-node",
		Short: "Make the data directory of another node from the first node's (same database, keys and secrets)",
		Long: `Copies what every node of a cluster shares from the first node's data directory
(database.url, the CA and service keys, platform secrets) into a new directory for
another node, without the first node's own state (its lock, broker and cluster
engine state). The data directory must use PostgreSQL: SQLite stays single-node.

Then start each node with its own name and the route addresses of the others
(docs/scale.md "Running several nodes").`,
		Example: `  fieldtrust cluster add-node --data /var/lib/fieldtrust --out /srv/n2
  fieldtrust up --data /srv/n2 --broker cluster --node-name n2 --cluster-addr 10.0.0.2:6222 \
    --routes 10.0.0.1:6222,10.0.0.3:6222 --mqtt-addr 0.0.0.0:8883 --http-addr 0.0.0.0:8443`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return usageError{fmt.Errorf("--out is required: the new node's data directory")}
			}
			if err := datadir.CopyForNode(data, out); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "node data directory %s ready; start it with: fieldtrust up --data %s --broker cluster --node-name NAME --cluster-addr HOST:PORT --routes OTHER:PORT,...\n", out, out)
			return nil
		},
	}
	addDataFlag(add, &data)
	add.Flags().StringVar(&out, "out", "", "the new node's data directory (must not exist or be empty)")
	c.AddCommand(add)
	c.AddCommand(newClusterDrainCmd())
	return c
}

func newClusterDrainCmd() *cobra.Command {
	var data string
	var timeout time.Duration
	var force bool
	cmd := &cobra.Command{
		Use:   "drain NODE",
		Short: "Take a running node out of the cluster without losing anything, then stop it",
		Long: `Asks the node named NODE ('up --node-name') to drain, through the cluster's
PostgreSQL database, and waits until it has: the node hands its ingest
partitions and singleton roles to the other nodes, refuses new connections,
closes its open ones one at a time (gateways move to the next broker of their
bootstrap list and resend what was not acknowledged), hands its engine
leaderships over, shuts its engine down and stops its 'up' process (exit
status 0). Its /healthz says "draining" meanwhile. Start it again with the same
'up' command: a start clears the request.

It refuses a node that is not running, and a drain that would leave fewer than
two other running nodes (the replicated sessions need a majority of their three
replicas) unless --force. Drain one node at a time (docs/scale.md "Draining a
node").`,
		Example: `  fieldtrust cluster drain --data /srv/n1 n2`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			d, err := datadir.Open(ctx, data, nil)
			if err != nil {
				return err
			}
			defer d.Close()
			st, ok := d.Store.(interface {
				drain.RequestStore
				LeaseConn(ctx context.Context, application string) (*pgx.Conn, error)
			})
			if !ok {
				return fmt.Errorf("%s uses SQLite: a single node, nothing to drain (a cluster of several nodes runs on PostgreSQL)", data)
			}
			conn, err := st.LeaseConn(ctx, "fieldtrust-cli/cluster-drain")
			if err != nil {
				return err
			}
			defer conn.Close(context.Background())
			members := func(ctx context.Context) ([]string, error) { return lease.Members(ctx, conn) }
			minOthers := drain.MinOthers
			if force {
				minOthers = 0
			}
			out := cmd.OutOrStdout()
			took, err := drain.Request(ctx, st, members, args[0], minOthers, func(msg string) { fmt.Fprintln(out, msg) })
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "%s drained in %s: it owns no partition or role, takes no connection, and its up process stopped\n", args[0], took.Round(100*time.Millisecond))
			return nil
		},
	}
	addDataFlag(cmd, &data)
	cmd.Flags().DurationVar(&timeout, "timeout", 5*time.Minute, "how long to wait for the node to drain")
	cmd.Flags().BoolVar(&force, "force", false, "drain even if fewer than two other nodes would keep running")
	return cmd
}
