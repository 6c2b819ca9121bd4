package platform

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fieldtrust/fieldtrust/internal/cluster"
	"github.com/fieldtrust/fieldtrust/internal/ingest"
	"github.com/fieldtrust/fieldtrust/internal/lease"
	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/supervisor"
	"github.com/fieldtrust/fieldtrust/internal/tacs"
	"github.com/fieldtrust/fieldtrust/internal/topic"
)

// IngestPartitions is the number of partitions of the gateway space that
// the nodes of a multi-node cluster split ingest by (docs/scale.md): each
// account ("master/account") is in partition lease.PartitionOf(account,
// IngestPartitions), owned by one node at a time. Every node of a cluster
// must use the same number; changing it moves accounts between
// partitions (and their MQTT sessions).
const IngestPartitions = 16

// accountPoll is how often a partition's owner looks for new accounts of
// its partition to subscribe to: the window in which a brand-new
// account's snapshots have no subscriber (docs/scale.md).
const accountPoll = time.Second

// partitionHoldGaps is ingest.Config.HoldGaps of a partition session: a
// session taken over from a killed node gets new snapshots at once and
// what the dead node had not acknowledged only after the engine's ack
// wait; twice that covers the redelivery of both.
const partitionHoldGaps = 2 * cluster.DefaultAckWait

// errMultiNodeSQLite refuses a multi-node cluster on SQLite.
var errMultiNodeSQLite = errors.New("a multi-node cluster (--cluster-addr, --routes) needs PostgreSQL: SQLite is one file on one machine, which the other nodes cannot share; start the data directory with --db postgres://... (docs/scale.md), or run one node without --cluster-addr and --routes")

// leaseStore is the store of a multi-node cluster: PostgreSQL, whose
// advisory locks decide who does what.
type leaseStore interface {
	LeaseConn(ctx context.Context, application string) (*pgx.Conn, error)
}

// multiNode reports whether this node is one of several.
func (o ClusterOptions) multiNode() bool { return o.Addr != "" || len(o.Routes) > 0 }

// partitionClientID is the client ID of partition p's ingest session: the
// ingest service's name and the partition, the same on every node, so
// the partition's next owner resumes the session (clean session off; the
// engine replicates it and its unacknowledged messages).
func partitionClientID(p int) string {
	return tacs.ServiceSubject("ingest", "").String() + ":p" + strconv.Itoa(p)
}

// partitionedIngest runs the ingest partitions this node owns.
type partitionedIngest struct {
	certs interface {
		ListCertificates(ctx context.Context, f store.CertFilter) ([]store.Certificate, error)
	}
	// cover records the accounts a partition session subscribed to: the
	// nodes admit those accounts' gateways (admission).
	cover coverageStore
	base  ingest.Config // everything but ClientID, Filters, Status and Subscribed
	log   *slog.Logger

	mu       sync.Mutex
	statuses map[int]*ingest.Status
}

// accounts lists the accounts of partition p.
func (pi *partitionedIngest) accounts(ctx context.Context, p int) ([]string, error) {
	cas, err := pi.certs.ListCertificates(ctx, store.CertFilter{Domain: string(pki.Transport), Kinds: []string{pki.KindAccountCA}})
	if err != nil {
		return nil, fmt.Errorf("list accounts: %w", err)
	}
	var out []string
	for _, c := range cas {
		if lease.PartitionOf(c.Name, IngestPartitions) == p && !slices.Contains(out, c.Name) {
			out = append(out, c.Name)
		}
	}
	slices.Sort(out)
	return out, nil
}

// run runs partition p until ctx ends: an ingest session subscribed to
// the snapshots of every account of the partition, started again with
// the new list when accounts are added.
func (pi *partitionedIngest) run(ctx context.Context, p int) error {
	st := &ingest.Status{}
	pi.mu.Lock()
	pi.statuses[p] = st
	pi.mu.Unlock()
	defer func() {
		pi.mu.Lock()
		delete(pi.statuses, p)
		pi.mu.Unlock()
	}()
	tick := time.NewTicker(accountPoll)
	defer tick.Stop()
	var accts []string
	for {
		next, err := pi.accounts(ctx, p)
		if err != nil && ctx.Err() == nil {
			pi.log.Warn("ingest partition: listing accounts failed; retrying", "partition", p, "err", err)
		}
		if err == nil {
			accts = next
		}
		if len(accts) == 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-tick.C:
				continue
			}
		}
		cfg := pi.base
		cfg.ClientID, cfg.Status, cfg.HoldGaps = partitionClientID(p), st, partitionHoldGaps
		for _, a := range accts {
			cfg.Filters = append(cfg.Filters, topic.Of(a+"/+", topic.Snapshots))
		}
		covers := slices.Clone(accts)
		cfg.Subscribed = func(ctx context.Context) error { return pi.cover.CoverAccounts(ctx, covers) }
		runCtx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- ingest.Run(runCtx, cfg) }()
		pi.log.Info("ingest partition running", "partition", p, "accounts", len(accts), "client_id", cfg.ClientID)
	watch:
		for {
			select {
			case <-ctx.Done():
				cancel()
				<-done
				return nil
			case err := <-done:
				cancel()
				return fmt.Errorf("ingest partition %d: %w", p, err)
			case <-tick.C:
				next, err := pi.accounts(ctx, p)
				if err != nil || slices.Equal(next, accts) {
					continue
				}
				// A new account: the session ends and starts again with
				// it (what was in flight is redelivered, stored once).
				cancel()
				<-done
				accts = next
				break watch
			}
		}
	}
}

// health sums up the partitions this node runs (healthy with none).
func (pi *partitionedIngest) health() ingest.Health {
	pi.mu.Lock()
	defer pi.mu.Unlock()
	h := ingest.Health{State: "running", Connected: true}
	worse := map[string]int{"running": 0, "connecting": 1, "retrying": 2, "stalled": 3}
	for _, st := range pi.statuses {
		s := st.Health()
		if worse[s.State] > worse[h.State] {
			h.State = s.State
		}
		h.Connected = h.Connected && s.Connected
		h.Pending += s.Pending
		h.Lag = max(h.Lag, s.Lag)
		h.Failures = max(h.Failures, s.Failures)
	}
	return h
}

// retrying runs a singleton role's service until ctx ends, again after a
// failure (1 s doubling to 30 s): the lease stays with this node, as the
// supervisor would keep the service on a single node.
func retrying(name string, run func(context.Context) error, log *slog.Logger) func(context.Context) error {
	return func(ctx context.Context) error {
		delay := time.Second
		for {
			start := time.Now()
			err := run(ctx)
			if ctx.Err() != nil {
				return nil
			}
			if time.Since(start) > time.Minute {
				delay = time.Second
			}
			log.Warn("role service failed; restarting", "role", name, "err", err, "in", delay)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(delay):
			}
			delay = min(2*delay, 30*time.Second)
		}
	}
}

// singletonRoles are the services that run on one node of a multi-node
// cluster at a time, each under a lease (docs/scale.md "Who runs what"):
// what they do must not happen once per node.
var singletonRoles = []string{
	// The rules engine evaluates every snapshot once, in ledger order: on
	// the leader it reads what other nodes' ingest stored from the store
	// (its catch-up from the one cursor); several would evaluate
	// everything each, and race on the cursor.
	"rules",
	"outbox",    // delivers what rules sent: once, not once per node
	"treeheads", // signs the ledger's tree heads: one signer of one log
	"devices",   // publishes queued commands and campaign notices, records results: once
}

// splitForCluster turns a node's services into those of a node of
// several: ingest becomes the partitions this node owns, the singleton
// roles run where their lease is, both under the lease manager (service
// "leases"); everything else runs on every node.
func splitForCluster(node string, ls leaseStore, services []supervisor.Service, pi *partitionedIngest, log *slog.Logger) ([]supervisor.Service, *lease.Manager, error) {
	roles := map[string]func(context.Context) error{}
	var keep []supervisor.Service
	for _, s := range services {
		switch {
		case s.Name == "ingest":
		case slices.Contains(singletonRoles, s.Name):
			roles[s.Name] = retrying(s.Name, s.Run, log)
		default:
			keep = append(keep, s)
		}
	}
	if len(roles) != len(singletonRoles) {
		return nil, nil, fmt.Errorf("cluster node: singleton roles %v, found %d of them", singletonRoles, len(roles))
	}
	m, err := lease.New(lease.Config{
		Node:         node,
		Connect:      func(ctx context.Context) (*pgx.Conn, error) { return ls.LeaseConn(ctx, lease.ApplicationPrefix+node) },
		Partitions:   IngestPartitions,
		RunPartition: pi.run,
		Roles:        roles,
		Logger:       log.With("component", "lease"),
	})
	if err != nil {
		return nil, nil, err
	}
	keep = append(keep, supervisor.Service{Name: "leases", Run: m.Run, GiveUpAfter: -1})
	return keep, m, nil
}
