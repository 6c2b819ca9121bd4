package platform

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"slices"
	"sync/atomic"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/cluster"
	"github.com/fieldtrust/fieldtrust/internal/datadir"
	"github.com/fieldtrust/fieldtrust/internal/drain"
	"github.com/fieldtrust/fieldtrust/internal/lease"
	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/supervisor"
	"github.com/fieldtrust/fieldtrust/internal/tacs"
	"github.com/fieldtrust/fieldtrust/internal/tlspolicy"
)

// Broker tiers (Config.Broker, 'up --broker').
const (
	BrokerEmbedded = "embedded" // the default: internal/broker in this process
	BrokerCluster  = "cluster"  // a node of the clustered tier (internal/cluster, docs/scale.md)
)

// ClusterOptions configure this process's node of the clustered tier.
type ClusterOptions struct {
	// Node names the node, unique in the cluster (default "n1"); its
	// certificate is the transport service "node-NAME".
	Node string
	// Addr is the listener for routes from the other nodes; empty for a
	// single node.
	Addr string
	// Routes are the other nodes' route addresses. With Addr or Routes
	// set, the node is one of several: the store must be PostgreSQL,
	// ingest runs by partitions and the singleton roles by lease
	// (multinode.go, docs/scale.md).
	Routes []string
}

// publisherService is the service identity the platform publishes CRLs
// and commands with on the clustered tier (role admin: it writes
// pki/crl/# and every gateway's commands topic, as Broker.Publish does on
// the embedded broker).
const publisherService = "platform"

func (o ClusterOptions) nodeName() string {
	if o.Node == "" {
		return "n1"
	}
	return o.Node
}

func (o ClusterOptions) nodeService() string { return "node-" + o.nodeName() }

// clientID is the client ID of one of the platform's services on the
// clustered tier: the service's subject name and this node, so that every
// 'up' of a cluster has its own session (cluster.ClientIDAllowed).
func (o ClusterOptions) clientID(service string) string {
	return tacs.ServiceSubject(service, "").String() + ":" + o.nodeName()
}

// setClusterRoles records the service roles the clustered tier needs,
// before the identities are loaded.
func setClusterRoles(ctx context.Context, d *datadir.Dir, o ClusterOptions) error {
	if err := d.Store.SetServiceRole(ctx, o.nodeService(), cluster.RoleNode); err != nil {
		return err
	}
	return d.Store.SetServiceRole(ctx, publisherService, tacs.RoleAdmin)
}

// nodeCert is the node's transport service certificate: server for MQTT
// and routes, client for routes out; it names the MQTT and route
// addresses.
func nodeCert(d *datadir.Dir, cfg Config, dns []string, ips []net.IP, log *slog.Logger) (*serviceCert, error) {
	if len(cfg.Cluster.Routes) > 0 && cfg.Cluster.Addr == "" {
		return nil, errors.New("--routes needs --cluster-addr: the other nodes route to this node's listener too")
	}
	if cfg.Cluster.Addr != "" {
		a, err := serverAddresses(cfg.Cluster.Addr)
		if err != nil {
			return nil, fmt.Errorf("--cluster-addr: %w", err)
		}
		ips = slices.CompactFunc(append(slices.Clone(ips), a...), net.IP.Equal)
	}
	return newServiceCert(d.Transport, cfg.Cluster.nodeService(), cfg.DataDir, dns, ips, log), nil
}

// clusterTier is the broker tier as the platform's services see it when
// it is a cluster node: publishing through an MQTT client, revalidation
// by the node's hook.
type clusterTier struct {
	node    *cluster.Node
	pub     *cluster.Publisher
	drained atomic.Bool // the node was drained on purpose (drain)
}

func (c *clusterTier) Publish(topic string, payload []byte, retain bool, qos byte) error {
	return c.pub.Publish(topic, payload, retain, qos)
}

func (c *clusterTier) Revalidate(ctx context.Context) int { return c.node.Revalidate(ctx) }

func (c *clusterTier) stop() {
	c.pub.Close()
	c.node.Shutdown()
}

// startClusterTier starts this process's node and the platform's
// publisher on it.
func startClusterTier(ctx context.Context, cfg Config, d *datadir.Dir, node, publisher *serviceCert,
	verifier *pki.Verifier, ids *identities, grants tacs.Grants, log *slog.Logger) (*clusterTier, error) {
	roots := x509.NewCertPool()
	roots.AddCert(d.Transport.Root())
	if cfg.Cluster.multiNode() {
		// The nodes starting with this one record their node roles in the
		// store meanwhile; the route hook must know them to let them join,
		// and the revocation service, which rereads roles once a second,
		// starts only once this node is up.
		formed := make(chan struct{})
		defer close(formed)
		go rereadRolesUntil(ctx, formed, ids, log)
	}
	replicas := min(1+len(cfg.Cluster.Routes), 3)
	// The engine runs a clustered JetStream only with routes: a node with
	// --cluster-addr and no --routes runs alone (still with partitions and
	// leases; no other node can join it).
	clusterAddr := cfg.Cluster.Addr
	if len(cfg.Cluster.Routes) == 0 {
		clusterAddr = ""
	}
	var admit func(context.Context, tacs.Subject) error
	if cfg.Cluster.multiNode() {
		cs, ok := d.Store.(coverageStore)
		if !ok {
			return nil, errMultiNodeSQLite
		}
		admit = newAdmission(cs).admit
	}
	n, err := cluster.Start(ctx, cluster.Config{
		Name: cfg.Cluster.nodeName(), MQTTAddr: cfg.MQTTAddr, ClusterAddr: clusterAddr, Routes: cfg.Cluster.Routes,
		StoreDir: filepath.Join(cfg.DataDir, "cluster", cfg.Cluster.nodeName()), Replicas: replicas,
		Certificate: func() (*tls.Certificate, error) { return node.Current(), nil },
		Roots:       roots, Identify: cluster.Identify(verifier, ids.subjectOf), Grants: grants,
		Admit: admit, IdentityCerts: d.Transport.ValidLeaves,
		Logger: log.With("component", "cluster"),
	})
	if err != nil {
		return nil, fmt.Errorf("start cluster node on --mqtt-addr %s: %w", cfg.MQTTAddr, err)
	}
	client := tlspolicy.Client(roots, nil)
	client.GetClientCertificate = publisher.GetClientCertificate
	pub, err := dialPublisher(ctx, cfg, n, client, log)
	if err != nil {
		n.Shutdown()
		return nil, err
	}
	return &clusterTier{node: n, pub: pub}, nil
}

// run is the supervised "broker" service of a cluster node: the engine
// runs by itself; a node that stops on its own is a failure (not
// restarted in place: its gateways fail over to the other nodes).
func (c *clusterTier) run(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return nil
	case <-c.node.Done():
		if c.drained.Load() {
			<-ctx.Done() // drained on purpose: the process stops
			return nil
		}
		return errors.New("cluster node stopped")
	}
}

// Drain implements drain.Engine.
func (c *clusterTier) Drain(ctx context.Context, spread time.Duration) error {
	c.drained.Store(true)
	return c.node.Drain(ctx, spread)
}

// drainService is the service "drain" of a node of several: it drains
// the node on an operator's request ('fieldtrust cluster drain') and then
// stops the process (stop).
func drainService(node string, st drain.Store, leases *lease.Manager, ct *clusterTier, stop func(), log *slog.Logger) supervisor.Service {
	d := &drain.Node{Name: node, Store: st, Leases: leases, Engine: ct, Stop: stop, Logger: log.With("component", "drain")}
	return supervisor.Service{Name: "drain", Run: d.Run, GiveUpAfter: -1}
}

// clusterFormTimeout bounds how long a node of several waits at start for
// the engine to place its replicated MQTT streams (it needs as many live
// nodes as replicas: the other nodes starting too).
const clusterFormTimeout = 2 * time.Minute

// dialPublisher connects the platform's publisher to the node; on a node
// of several it tries again until the cluster has formed (the engine
// refuses MQTT connections until it can place the account's streams:
// "no suitable peers for placement").
func dialPublisher(ctx context.Context, cfg Config, n *cluster.Node, client *tls.Config, log *slog.Logger) (*cluster.Publisher, error) {
	deadline := time.Now().Add(clusterFormTimeout)
	for {
		pub, err := cluster.Dial(ctx, n.MQTTAddr(), cfg.Cluster.clientID(publisherService), client, log.With("component", "publisher"))
		if err == nil || !cfg.Cluster.multiNode() || time.Now().After(deadline) || ctx.Err() != nil {
			return pub, err
		}
		log.Info("waiting for the cluster's other nodes (the engine cannot place its replicated streams yet)", "err", err)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// publishFirstCRLs publishes the CRL bundles before the platform says it
// is up. A node of several may be accepting connections before its engine
// can store a retained message (the streams' leaders are still being
// elected: "unable to store retained message ... timeout"); such a node
// tries again until the cluster has formed (clusterFormTimeout) instead of
// exiting. Anywhere else the first failure is the answer.
func publishFirstCRLs(ctx context.Context, rev *revocation, forming bool, log *slog.Logger) error {
	deadline := time.Now().Add(clusterFormTimeout)
	for {
		err := rev.publishCRLs(ctx)
		if err == nil || !forming || time.Now().After(deadline) || ctx.Err() != nil {
			return err
		}
		log.Info("waiting for the cluster's streams before the first CRL publication", "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// rereadRolesUntil rereads the service roles (and revocations) once a
// second until done is closed, while the node waits for the cluster to
// form.
func rereadRolesUntil(ctx context.Context, done <-chan struct{}, ids *identities, log *slog.Logger) {
	t := time.NewTicker(revocationPoll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-done:
			return
		case <-t.C:
			if _, err := ids.refresh(ctx); err != nil && ctx.Err() == nil {
				log.Warn("rereading service roles while the cluster forms failed; retrying", "err", err)
			}
		}
	}
}
