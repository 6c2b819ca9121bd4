package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/fieldtrust/fieldtrust/internal/datadir"
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
	return c
}
