package main

import (
	"context"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/jackc/pgx/v5"

	"github.com/fieldtrust/fieldtrust/internal/bootstrap"
	"github.com/fieldtrust/fieldtrust/internal/datadir"
	"github.com/fieldtrust/fieldtrust/internal/demo"
	"github.com/fieldtrust/fieldtrust/internal/envelope"
	"github.com/fieldtrust/fieldtrust/internal/gateway"
	"github.com/fieldtrust/fieldtrust/internal/lease"
	"github.com/fieldtrust/fieldtrust/internal/loadgen"
	"github.com/fieldtrust/fieldtrust/internal/logbuf"
	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/platform"
	"github.com/fieldtrust/fieldtrust/internal/store/postgres/pgtest"
	"github.com/fieldtrust/fieldtrust/internal/topic"
)

// The multi-node tests start real 'fieldtrust up --broker cluster'
// processes on one PostgreSQL. They take a minute or more on a loaded
// 2-core machine, so they run only with FIELDTRUST_TEST_CLUSTER=1 ('make
// test-cluster', which .ci/run runs too).
func clusterTest(t *testing.T) {
	t.Helper()
	if os.Getenv("FIELDTRUST_TEST_CLUSTER") == "" {
		t.Skip("multi-node cluster test: set FIELDTRUST_TEST_CLUSTER=1 (make test-cluster)")
	}
}

// clusterDB is a fresh schema on the test PostgreSQL, as a DSN for --db.
func clusterDB(t *testing.T) string {
	t.Helper()
	if os.Getenv("FIELDTRUST_TEST_POSTGRES") == "" {
		t.Fatal("the cluster tests need PostgreSQL: export FIELDTRUST_TEST_POSTGRES=\"$(./scripts/postgres-test.sh)\" (make test-cluster does)")
	}
	dsn := pgtest.DSN(t)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	schema := fmt.Sprintf("ft_cluster_%d_%d", os.Getpid(), time.Now().UnixNano()%1e9)
	if _, err := conn.Exec(ctx, `CREATE SCHEMA `+schema); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			return
		}
		defer conn.Close(ctx)
		conn.Exec(ctx, `DROP SCHEMA `+schema+` CASCADE`)
	})
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String()
}

// clusterNode is one 'up' of the cluster.
type clusterNode struct {
	name, dir         string
	http, mqtt, route string
	proc              *upProcess
	killed            bool
}

type testCluster struct {
	db    string
	nodes []*clusterNode
	roots *x509.CertPool
	d     *datadir.Dir // the first node's directory, opened by the test (operator work)
}

// startCluster prepares n node directories from one (the first start
// creates the platform's keys, 'cluster add-node' copies them) and starts
// the n nodes at once.
func startCluster(t *testing.T, n int, prepare ...func(first string)) *testCluster {
	t.Helper()
	c := &testCluster{db: clusterDB(t)}
	base := t.TempDir()
	first := filepath.Join(base, "n1")
	p := launchUp(t, "up", "--data", first, "--db", c.db, "--http-addr", freeAddr(t), "--mqtt-addr", freeAddr(t), "--log-format", "json")
	p.waitUp(t)
	p.cmd.Process.Signal(syscall.SIGTERM)
	if err := p.cmd.Wait(); err != nil {
		t.Fatalf("first start: %v\n%s", err, p.logs())
	}
	for _, f := range prepare {
		f(first)
	}
	for i := range n {
		nd := &clusterNode{name: fmt.Sprintf("n%d", i+1), dir: filepath.Join(base, fmt.Sprintf("n%d", i+1)),
			http: freeAddr(t), mqtt: freeAddr(t), route: freeAddr(t)}
		if i > 0 {
			if out, code := run(t, "cluster", "add-node", "--data", first, "--out", nd.dir); code != 0 {
				t.Fatalf("cluster add-node: %s", out)
			}
		}
		c.nodes = append(c.nodes, nd)
	}
	for _, nd := range c.nodes {
		nd.proc = launchUp(t, c.upArgs(nd)...)
	}
	// Wait for all at once: a node that exits (a port taken meanwhile by
	// another process of the machine) is reported with its own logs.
	deadline := time.After(2 * time.Minute)
	for _, nd := range c.nodes {
		for up := false; !up; {
			select {
			case <-nd.proc.up:
				up = true
			case <-deadline:
				t.Fatalf("%s did not come up; logs:\n%s", nd.name, nd.proc.logs())
			case <-time.After(100 * time.Millisecond):
				for _, o := range c.nodes {
					select {
					case <-o.proc.logDone:
						t.Fatalf("%s exited before coming up; logs:\n%s", o.name, o.proc.logs())
					default:
					}
				}
			}
		}
	}
	d, err := datadir.Open(t.Context(), first, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	c.d = d
	c.roots = x509.NewCertPool()
	c.roots.AddCert(d.Transport.Root())
	return c
}

func (c *testCluster) upArgs(nd *clusterNode) []string {
	args := []string{"up", "--data", nd.dir, "--broker", "cluster", "--node-name", nd.name,
		"--http-addr", nd.http, "--mqtt-addr", nd.mqtt, "--log-format", "json", "--log-level", "info"}
	// Always a multi-node configuration (ingest by partitions), also
	// for one node.
	args = append(args, "--cluster-addr", nd.route)
	var routes []string
	for _, o := range c.nodes {
		if o != nd {
			routes = append(routes, o.route)
		}
	}
	if len(routes) > 0 {
		args = append(args, "--routes", strings.Join(routes, ","))
	}
	for _, o := range c.nodes {
		args = append(args, "--broker-url", "mqtts://"+o.mqtt)
	}
	return args
}

// health is the part of /healthz the tests read.
type health struct {
	Status  string `json:"status"`
	Cluster *struct {
		Node       string            `json:"node"`
		Connected  bool              `json:"connected"`
		Members    []string          `json:"members"`
		Partitions map[string]string `json:"partitions"`
		Roles      map[string]string `json:"roles"`
	} `json:"cluster"`
}

func (c *testCluster) health(nd *clusterNode) (health, error) {
	cl := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: c.roots}}}
	resp, err := cl.Get("https://" + nd.http + "/healthz")
	if err != nil {
		return health{}, err
	}
	defer resp.Body.Close()
	var h health
	return h, json.NewDecoder(resp.Body).Decode(&h)
}

// settled reports whether node nd sees exactly the live nodes as members,
// every partition owned by one of them and every role held.
func (c *testCluster) settled(nd *clusterNode, live []string) bool {
	h, err := c.health(nd)
	if err != nil || h.Cluster == nil || !h.Cluster.Connected || !slices.Equal(h.Cluster.Members, live) {
		return false
	}
	if len(h.Cluster.Partitions) != 16 || len(h.Cluster.Roles) != 4 {
		return false
	}
	for _, owner := range h.Cluster.Partitions {
		if !slices.Contains(live, owner) {
			return false
		}
	}
	for _, owner := range h.Cluster.Roles {
		if !slices.Contains(live, owner) {
			return false
		}
	}
	return true
}

func (c *testCluster) live() []string {
	var out []string
	for _, nd := range c.nodes {
		if !nd.killed {
			out = append(out, nd.name)
		}
	}
	slices.Sort(out)
	return out
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", within, what)
		}
		time.Sleep(100 * time.Millisecond) // polling a condition with a deadline
	}
}

// clusterGateway is a publisher standing for one gateway: its sealed
// snapshots in order, sent QoS 1 one at a time as the gateway's drainer
// does, the broker list from its bootstrap document, and on a lost
// connection the next broker of the list, resending what was not
// acknowledged.
type clusterGateway struct {
	path    string
	tls     *tls.Config
	brokers []string // host:port, bootstrap order
	envs    [][]byte

	acked     atomic.Int64
	refused   atomic.Int64 // connections not taken (refused, timed out)
	mu        sync.Mutex
	node      string    // the broker it is connected to now
	failedAt  time.Time // when its connection was lost (zero: never)
	resumedOn string    // the broker it failed over to
	resumedAt time.Time // when it connected there
}

func (g *clusterGateway) connected() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.node
}

// run publishes everything, one snapshot per every, until done or ctx ends.
func (g *clusterGateway) run(ctx context.Context, every time.Duration) error {
	next := 0
	for attempt := 0; next < len(g.envs); attempt++ {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		broker := g.brokers[attempt%len(g.brokers)]
		lost := make(chan error, 1)
		cl := mqtt.NewClient(mqtt.NewClientOptions().AddBroker("ssl://" + broker).SetClientID(g.path).
			SetTLSConfig(g.tls).SetCleanSession(true).SetAutoReconnect(false).SetConnectTimeout(5 * time.Second).
			SetKeepAlive(5 * time.Second).SetProtocolVersion(4).
			SetConnectionLostHandler(func(_ mqtt.Client, err error) {
				select {
				case lost <- err:
				default:
				}
			}))
		if tok := cl.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			g.refused.Add(1)
			select { // then the next broker of the list
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		g.mu.Lock()
		g.node = broker
		if !g.failedAt.IsZero() && g.resumedOn == "" {
			g.resumedOn, g.resumedAt = broker, time.Now()
		}
		g.mu.Unlock()
		var err error
		for next < len(g.envs) && err == nil {
			tok := cl.Publish(topic.SnapshotsOf(g.path), 1, false, g.envs[next])
			select {
			case <-tok.Done():
				err = tok.Error()
			case err = <-lost:
			case <-time.After(10 * time.Second):
				err = errors.New("no PUBACK within 10 s")
			case <-ctx.Done():
				err = ctx.Err()
			}
			if err == nil {
				next++
				g.acked.Add(1)
				select {
				case <-time.After(every):
				case err = <-lost:
				case <-ctx.Done():
					err = ctx.Err()
				}
			}
		}
		cl.Disconnect(0)
		if err != nil {
			g.mu.Lock()
			if g.failedAt.IsZero() {
				g.failedAt = time.Now()
			}
			g.node = ""
			g.mu.Unlock()
			attempt = slices.Index(g.brokers, broker) // the next one after it
		}
	}
	return nil
}

// gateways issues the gateways' identities (transport and e2e, under the
// shape's accounts), fetches each one's bootstrap document from the first
// node and seals its snapshots for the ingest certificate it names.
func (c *testCluster) gateways(t *testing.T, shape loadgen.Shape, pathOf func(int) string) []*clusterGateway {
	t.Helper()
	ctx := t.Context()
	var out []*clusterGateway
	for g := range shape.NumGateways() {
		path := pathOf(g)
		p, err := pki.ParsePath(path)
		if err != nil {
			t.Fatal(err)
		}
		cert := c.issueTLS(t, path)
		ek, _ := pki.GenerateKey(elliptic.P256())
		eiss, err := c.d.E2E.Issue(ctx, pki.LeafRequest{Path: p, PublicKey: ek.Public()})
		if err != nil {
			t.Fatal(err)
		}
		tc := &tls.Config{RootCAs: c.roots, Certificates: []tls.Certificate{cert}}
		doc := c.bootstrap(t, tc)
		var ingestCert *x509.Certificate
		for _, r := range doc.Recipients {
			if r.Role == bootstrap.RoleIngest {
				b, _ := pem.Decode([]byte(r.Certificate))
				if ingestCert, err = x509.ParseCertificate(b.Bytes); err != nil {
					t.Fatal(err)
				}
			}
		}
		sealer, err := envelope.NewSealer(envelope.SealOptions{Recipients: []*x509.Certificate{ingestCert},
			Signer: &envelope.Signer{Cert: eiss.Cert, Key: ek, Chain: eiss.Chain[1:]}})
		if err != nil {
			t.Fatal(err)
		}
		file := filepath.Join(t.TempDir(), "envs")
		f, err := os.Create(file)
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := shape.SealGateway(f, g, sealer); err != nil {
			t.Fatal(err)
		}
		f.Close()
		r, err := loadgen.OpenEnvelopes(file)
		if err != nil {
			t.Fatal(err)
		}
		gw := &clusterGateway{path: path, tls: tc}
		for {
			env, err := r.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			gw.envs = append(gw.envs, env)
		}
		r.Close()
		for _, b := range doc.Brokers {
			gw.brokers = append(gw.brokers, strings.TrimPrefix(b, "mqtts://"))
		}
		out = append(out, gw)
	}
	return out
}

func (c *testCluster) bootstrap(t *testing.T, tc *tls.Config) bootstrap.Document {
	t.Helper()
	cl := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: tc}}
	resp, err := cl.Get("https://" + c.nodes[0].http + bootstrap.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var doc bootstrap.Document
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("bootstrap: %s: %s", resp.Status, b)
	}
	if err := json.NewDecoder(resp.Body).Decode(&doc); err != nil {
		t.Fatal(err)
	}
	return doc
}

// counts reads what the store holds.
type storeCounts struct {
	snapshots, distinct, leaves, events, rejects int
}

func (c *testCluster) counts(t *testing.T) storeCounts {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), c.db)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(t.Context())
	var s storeCounts
	if err := conn.QueryRow(t.Context(), `SELECT
		(SELECT count(*) FROM snapshots), (SELECT count(DISTINCT (device_id, seq)) FROM snapshots),
		(SELECT count(*) FROM ledger_leaves), (SELECT count(*) FROM integrity_events), (SELECT count(*) FROM rejects)`).
		Scan(&s.snapshots, &s.distinct, &s.leaves, &s.events, &s.rejects); err != nil {
		t.Fatal(err)
	}
	return s
}

// firstStoredAfter is when the first snapshot of one of the gateways
// arrived at ingest after t0 (zero if none yet).
func (c *testCluster) firstStoredAfter(t *testing.T, gateways []string, t0 time.Time) time.Time {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), c.db)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(t.Context())
	var at *time.Time
	if err := conn.QueryRow(t.Context(), `SELECT min(s.received_at) FROM snapshots s JOIN devices d ON d.id = s.device_id
		WHERE d.gateway = ANY($1) AND s.received_at > $2`, gateways, t0).Scan(&at); err != nil {
		t.Fatal(err)
	}
	if at == nil {
		return time.Time{}
	}
	return *at
}

// TestClusterKill9 is issue 16's acceptance test: three 'fieldtrust up
// --broker cluster' processes on one PostgreSQL, gateways spread over them
// by their bootstrap lists publishing QoS 1, one node killed with SIGKILL
// mid-traffic. Every snapshot is stored once, every hash chain is
// complete, the ledger has one leaf per snapshot, the survivors own every
// ingest partition and role; a customer subscribed on one node sees the
// gateways of the others throughout.
func TestClusterKill9(t *testing.T) {
	clusterTest(t)
	// A rule that holds for every snapshot of the first master account's
	// devices, with a task action: one alarm and one task per device,
	// however many nodes run (rules and outbox are singleton roles).
	rule := filepath.Join(t.TempDir(), "every.yaml")
	if err := os.WriteFile(rule, []byte("version: 1\nname: every-snapshot\nscope: ms-00\nwhen: 'true'\nactions:\n  - task: {title: \"check {{.Device}}\"}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := startCluster(t, 3, func(first string) {
		if out, code := run(t, "rule", "add", "--data", first, rule); code != 0 {
			t.Fatalf("rule add: %s", out)
		}
	})
	all := c.live()
	for _, nd := range c.nodes {
		waitFor(t, 90*time.Second, nd.name+" sees 3 nodes owning every partition and role", func() bool { return c.settled(nd, all) })
	}
	shape := loadgen.Shape{Masters: 3, Accounts: 1, Gateways: 3, Devices: 2, PerDevice: 40, Channels: 4,
		Every: time.Second, Start: time.Now().Add(-time.Hour).Truncate(time.Second)}
	gws := c.gateways(t, shape, shape.Gateway)
	total := 0
	for _, g := range gws {
		total += len(g.envs)
	}
	// The accounts are new: wait until every partition's owner
	// subscribed to them (its accounts poll) before publishing; the
	// window before that is TestClusterNewAccount's.
	waitFor(t, 30*time.Second, "ingest subscribed to the new accounts", func() bool {
		return strings.Count(c.logsAll(), `"msg":"ingest subscribed"`) >= partitionsOf(shape)
	})

	// A customer of the first master account, on the first node, with a
	// persistent session (QoS 1), connecting again if the node drops it.
	customerCert := c.issueTLS(t, shape.Master(0))
	seen := map[string]map[[32]byte]bool{}
	var seenMu sync.Mutex
	var custLost []string
	custUp := make(chan struct{}, 16)
	cust := mqtt.NewClient(mqtt.NewClientOptions().AddBroker("ssl://" + c.nodes[0].mqtt).SetClientID(shape.Master(0) + ":watch").
		SetTLSConfig(&tls.Config{RootCAs: c.roots, Certificates: []tls.Certificate{customerCert}}).SetProtocolVersion(4).
		SetCleanSession(false).SetAutoReconnect(true).SetMaxReconnectInterval(time.Second).SetResumeSubs(true).
		SetConnectionLostHandler(func(_ mqtt.Client, err error) {
			seenMu.Lock()
			custLost = append(custLost, fmt.Sprintf("%s: %v", time.Now().Format("15:04:05.000"), err))
			seenMu.Unlock()
		}).
		SetOnConnectHandler(func(mqtt.Client) { custUp <- struct{}{} }).
		SetDefaultPublishHandler(func(_ mqtt.Client, m mqtt.Message) {
			gw, _ := topic.ParseChannel(m.Topic(), topic.Snapshots)
			seenMu.Lock()
			if seen[gw] == nil {
				seen[gw] = map[[32]byte]bool{}
			}
			seen[gw][sha256.Sum256(m.Payload())] = true
			seenMu.Unlock()
		}))
	if tok := cust.Connect(); !tok.WaitTimeout(15*time.Second) || tok.Error() != nil {
		t.Fatalf("customer connect: %v", tok.Error())
	}
	defer cust.Disconnect(0)
	if tok := cust.Subscribe(topic.Of(shape.Master(0)+"/+/+", topic.Snapshots), 1, nil); !tok.WaitTimeout(15*time.Second) || tok.Error() != nil {
		t.Fatalf("customer subscribe: %v", tok.Error())
	}

	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	for _, g := range gws {
		wg.Go(func() { g.run(ctx, 40*time.Millisecond) })
	}
	acked := func() int {
		n := 0
		for _, g := range gws {
			n += int(g.acked.Load())
		}
		return n
	}
	waitFor(t, 2*time.Minute, "every gateway connected", func() bool {
		for _, g := range gws {
			if g.connected() == "" {
				return false
			}
		}
		return true
	})
	// Kill the node (not the customer's) with the most gateways.
	byNode := map[string][]string{}
	for _, g := range gws {
		byNode[g.connected()] = append(byNode[g.connected()], g.path)
	}
	spread := 0
	for _, nd := range c.nodes {
		if len(byNode[nd.mqtt]) > 0 {
			spread++
		}
		t.Logf("node %s: %d gateways %v", nd.name, len(byNode[nd.mqtt]), byNode[nd.mqtt])
	}
	if spread < 2 {
		t.Fatalf("the gateways' bootstrap lists put them all on one node: %v", byNode)
	}
	victim := c.nodes[1]
	if len(byNode[c.nodes[2].mqtt]) > len(byNode[victim.mqtt]) {
		victim = c.nodes[2]
	}
	failing := byNode[victim.mqtt]
	waitFor(t, 2*time.Minute, "a third of the snapshots acknowledged", func() bool { return acked() >= total/3 })
	h, _ := c.health(victim)
	held := 0
	if h.Cluster != nil {
		for _, owner := range h.Cluster.Partitions {
			if owner == victim.name {
				held++
			}
		}
	}
	killAt := time.Now()
	if err := victim.proc.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	victim.killed = true
	t.Logf("SIGKILL %s at %d of %d acknowledged; it held %d partitions and %d gateways", victim.name, acked(), total, held, len(failing))
	survivors := c.live()
	var reowned time.Duration
	waitFor(t, 60*time.Second, "the survivors own every partition and role", func() bool {
		for _, nd := range c.nodes {
			if !nd.killed && !c.settled(nd, survivors) {
				return false
			}
		}
		reowned = time.Since(killAt)
		return true
	})
	// Failover: from the kill to the first snapshot a failed-over
	// gateway published through its next broker, stored.
	var firstStored time.Duration
	if len(failing) > 0 {
		waitFor(t, 90*time.Second, "a snapshot of a failed-over gateway stored", func() bool {
			for _, g := range gws {
				g.mu.Lock()
				resumed, ok := g.resumedAt, slices.Contains(failing, g.path) && g.resumedOn != ""
				g.mu.Unlock()
				if !ok {
					continue
				}
				if at := c.firstStoredAfter(t, []string{g.path}, resumed); !at.IsZero() {
					firstStored = at.Sub(killAt)
					return true
				}
			}
			return false
		})
	}
	wg.Wait()
	if ctx.Err() != nil {
		t.Fatalf("publishing did not finish: %d of %d acknowledged", acked(), total)
	}
	var got storeCounts
	waitFor(t, 2*time.Minute, "every snapshot stored", func() bool {
		got = c.counts(t)
		return got.snapshots >= total
	})
	t.Logf("failover: partitions re-owned %v after the kill, first snapshot of a failed-over gateway stored %v after it",
		reowned.Round(10*time.Millisecond), firstStored.Round(10*time.Millisecond))
	// Connections to the survivors that the engine ended because a
	// JetStream store of a QoS 1 publish was not acknowledged within its
	// MQTT JS API timeout (the stream's leader was on the killed node and
	// the election took longer): docs/scale.md "Failover after kill -9".
	var ended []string
	for _, nd := range c.nodes {
		if nd.killed {
			continue
		}
		nd.proc.mu.Lock()
		n := strings.Count(nd.proc.buf.String(), "JetStream failed a pipelined QoS1/2 operation")
		nd.proc.mu.Unlock()
		if n > 0 {
			ended = append(ended, fmt.Sprintf("%s: %d", nd.name, n))
		}
	}
	var onSurvivors []string
	for _, g := range gws {
		g.mu.Lock()
		if !g.failedAt.IsZero() && !slices.Contains(failing, g.path) {
			onSurvivors = append(onSurvivors, fmt.Sprintf("%s at +%v", g.path, g.failedAt.Sub(killAt).Round(time.Millisecond)))
		}
		g.mu.Unlock()
	}
	t.Logf("connections to surviving nodes lost: %d %v; the engine's JetStream ack timeouts on the survivors: %v", len(onSurvivors), onSurvivors, ended)
	for _, g := range gws {
		g.mu.Lock()
		if slices.Contains(failing, g.path) && g.resumedOn == "" {
			t.Errorf("gateway %s of the killed node did not fail over", g.path)
		}
		g.mu.Unlock()
	}
	if got.snapshots != total || got.distinct != total {
		t.Errorf("stored %d snapshots (%d distinct), want %d", got.snapshots, got.distinct, total)
	}
	if got.leaves != total {
		t.Errorf("ledger has %d leaves for %d snapshots (a snapshot appended twice, or one missing)", got.leaves, total)
	}
	if got.events != 0 || got.rejects != 0 {
		t.Errorf("integrity events %d, rejects %d: want none (hash chains complete): %s", got.events, got.rejects, c.events(t))
	}
	// The customer on the first node received every snapshot of its
	// master account's gateways, those on the other nodes included.
	want := 0
	for _, g := range gws {
		if strings.HasPrefix(g.path, shape.Master(0)+"/") {
			want += len(g.envs)
		}
	}
	custGot := func() int {
		seenMu.Lock()
		defer seenMu.Unlock()
		return distinctSeen(seen)
	}
	waitFor(t, time.Minute, "the customer received every snapshot of its gateways", func() bool { return custGot() >= want })
	seenMu.Lock()
	t.Logf("customer on %s: %d distinct snapshots of %d gateways (want %d); its connection was lost %d times: %v",
		c.nodes[0].name, distinctSeen(seen), len(seen), want, len(custLost), custLost)
	for _, g := range gws {
		if !strings.HasPrefix(g.path, shape.Master(0)+"/") {
			if len(seen[g.path]) > 0 {
				t.Errorf("customer of %s received %s's snapshots", shape.Master(0), g.path)
			}
		}
	}
	seenMu.Unlock()
	for _, g := range gws {
		g.mu.Lock()
		if !g.failedAt.IsZero() {
			t.Logf("gateway %s lost its broker at +%v, resumed on %s", g.path, g.failedAt.Sub(killAt).Round(time.Millisecond), g.resumedOn)
		}
		g.mu.Unlock()
	}

	// One alarm and one task per device of ms-00, not one per node.
	ruleDevices := 3 * shape.Devices
	var alarms, tasks int
	waitFor(t, time.Minute, "the rule's tasks", func() bool {
		alarms, tasks = c.ruleCounts(t)
		return tasks >= ruleDevices
	})

	// A brand-new account (on the survivors): its gateway publishes at
	// once, QoS 1 as gateways do (resending what was not acknowledged, to
	// the next broker of its list when its connection ends or is
	// refused). Every snapshot acknowledged to it must be stored: none
	// acknowledged and dropped because its partition's owner had not
	// subscribed to the account yet (the new-account window, closed by
	// the nodes' admission check, docs/scale.md).
	created := time.Now()
	fresh := c.gateways(t, loadgen.Shape{Masters: 1, Accounts: 1, Gateways: 1, Devices: 1, PerDevice: 20, Channels: 2,
		Every: time.Second, Start: shape.Start}, func(int) string { return "ms-09/acc-new/gw-0" })[0]
	fctx, fcancel := context.WithTimeout(t.Context(), 2*time.Minute)
	fresh.run(fctx, 0)
	fcancel()
	if n := int(fresh.acked.Load()); n != len(fresh.envs) {
		t.Fatalf("the new account's gateway: %d of %d snapshots acknowledged within 2 min", n, len(fresh.envs))
	}
	want = total + len(fresh.envs)
	var after storeCounts
	deadline := time.Now().Add(30 * time.Second)
	for after = c.counts(t); after.snapshots < want && time.Now().Before(deadline); after = c.counts(t) {
		time.Sleep(100 * time.Millisecond) // polling a condition with a deadline
	}
	if first := c.firstStoredAfter(t, []string{fresh.path}, created.Add(-time.Hour)); !first.IsZero() {
		t.Logf("new account: its first snapshot stored %v after the account was created (identities, bootstrap and sealing included); %d connections refused before its partition covered it",
			first.Sub(created).Round(10*time.Millisecond), fresh.refused.Load())
	}
	if after.snapshots != want || after.distinct != want || after.events != 0 || after.leaves != want {
		t.Errorf("after the new account: %+v, want %d snapshots and leaves, no events (snapshots acknowledged to its gateway and dropped: the new-account window)\nevents: %s", after, want, c.events(t))
	}
	if alarms, tasks = c.ruleCounts(t); alarms != ruleDevices || tasks != ruleDevices {
		t.Errorf("the rule raised %d alarms and created %d tasks, want %d each (one per device)", alarms, tasks, ruleDevices)
	}
}

// ruleCounts are the alarms and tasks in the store.
func (c *testCluster) ruleCounts(t *testing.T) (alarms, tasks int) {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), c.db)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(t.Context())
	if err := conn.QueryRow(t.Context(), `SELECT (SELECT count(*) FROM alarms), (SELECT count(*) FROM tasks)`).Scan(&alarms, &tasks); err != nil {
		t.Fatal(err)
	}
	return alarms, tasks
}

func (c *testCluster) issueTLS(t *testing.T, path string) tls.Certificate {
	t.Helper()
	p, err := pki.ParsePath(path)
	if err != nil {
		t.Fatal(err)
	}
	k, _ := pki.GenerateKey(elliptic.P256())
	iss, err := c.d.Transport.Issue(t.Context(), pki.LeafRequest{Path: p, PublicKey: k.Public()})
	if err != nil {
		t.Fatal(err)
	}
	cert := tls.Certificate{PrivateKey: k, Leaf: iss.Cert}
	for _, x := range iss.Chain {
		cert.Certificate = append(cert.Certificate, x.Raw)
	}
	return cert
}

func (c *testCluster) logsAll() string {
	var b strings.Builder
	for _, nd := range c.nodes {
		nd.proc.mu.Lock()
		b.WriteString(nd.proc.buf.String())
		nd.proc.mu.Unlock()
	}
	return b.String()
}

// partitionsOf is the number of ingest partitions the shape's accounts
// fall in.
func partitionsOf(shape loadgen.Shape) int {
	seen := map[int]bool{}
	for g := range shape.NumGateways() {
		gw := shape.Gateway(g)
		seen[lease.PartitionOf(gw[:strings.LastIndex(gw, "/")], platform.IngestPartitions)] = true
	}
	return len(seen)
}

// distinctSeen counts the distinct snapshots received.
func distinctSeen(seen map[string]map[[32]byte]bool) int {
	n := 0
	for _, m := range seen {
		n += len(m)
	}
	return n
}

// events lists the integrity events the store recorded.
func (c *testCluster) events(t *testing.T) string {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), c.db)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(t.Context())
	rows, err := conn.Query(t.Context(), `SELECT gateway, device, kind, seq, expected_seq, detail, at FROM integrity_events ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var b strings.Builder
	for rows.Next() {
		var gw, dev, kind, detail string
		var seq, exp int64
		var at time.Time
		if err := rows.Scan(&gw, &dev, &kind, &seq, &exp, &detail, &at); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "\n  %s %s/%s seq %d expected %d at %s: %s", kind, gw, dev, seq, exp, at.Format("15:04:05.000"), detail)
	}
	return b.String()
}

// TestClusterDrain: 'fieldtrust cluster drain NODE' during QoS 1 traffic
// (make test-cluster). The drained node says "draining" in /healthz,
// hands its partitions and roles to the others, closes its gateways'
// connections (they move to the next broker of their list), and its 'up'
// stops with status 0; every snapshot is stored once, every chain
// complete, and the survivors own everything.
func TestClusterDrain(t *testing.T) {
	clusterTest(t)
	c := startCluster(t, 3)
	all := c.live()
	for _, nd := range c.nodes {
		waitFor(t, 90*time.Second, nd.name+" sees 3 nodes owning every partition and role", func() bool { return c.settled(nd, all) })
	}
	shape := loadgen.Shape{Masters: 3, Accounts: 1, Gateways: 3, Devices: 2, PerDevice: 40, Channels: 4,
		Every: time.Second, Start: time.Now().Add(-time.Hour).Truncate(time.Second)}
	gws := c.gateways(t, shape, shape.Gateway)
	total := 0
	for _, g := range gws {
		total += len(g.envs)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	for _, g := range gws {
		// Slow enough that every gateway still publishes when the
		// drain closes its connection (the engine spreads the closes over
		// 10 s).
		wg.Go(func() { g.run(ctx, 250*time.Millisecond) })
	}
	acked := func() int {
		n := 0
		for _, g := range gws {
			n += int(g.acked.Load())
		}
		return n
	}
	waitFor(t, 2*time.Minute, "every gateway connected", func() bool {
		for _, g := range gws {
			if g.connected() == "" {
				return false
			}
		}
		return true
	})
	byNode := map[string][]string{}
	for _, g := range gws {
		byNode[g.connected()] = append(byNode[g.connected()], g.path)
	}
	// The node drained is the one most of the demo gateways (started
	// after the drain, below) have first in their bootstrap lists
	// (weighted rendezvous, deterministic): they connect elsewhere while
	// it is away and must move back once it returns.
	var brokers []bootstrap.Broker
	for _, nd := range c.nodes {
		brokers = append(brokers, bootstrap.Broker{URL: "mqtts://" + nd.mqtt, Weight: 1})
	}
	firstOf := map[string]string{} // demo gateway → its first broker
	prefer := map[string]int{}
	for _, cu := range demo.Customers {
		for _, g := range cu.Gateways {
			path := cu.Master + "/" + cu.Account + "/" + g
			firstOf[path] = bootstrap.Assign(brokers, path)[0]
			prefer[firstOf[path]]++
		}
	}
	// Not the first node: the test's identities and the demo gateways'
	// enrollment make their CAs there, so it comes back to CAs it never made.
	victim := c.nodes[1]
	if prefer["mqtts://"+c.nodes[2].mqtt] > prefer["mqtts://"+victim.mqtt] {
		victim = c.nodes[2]
	}
	moving := byNode[victim.mqtt]
	waitFor(t, 2*time.Minute, "a third of the snapshots acknowledged", func() bool { return acked() >= total/3 })

	type result struct {
		out  string
		code int
	}
	done := make(chan result, 1)
	start := time.Now()
	go func() {
		out, code := run(t, "cluster", "drain", "--data", c.nodes[0].dir, victim.name)
		done <- result{out, code}
	}()
	sawDraining := false
	var res result
	for waiting := true; waiting; {
		select {
		case res = <-done:
			waiting = false
		case <-time.After(100 * time.Millisecond): // polling /healthz while the command runs
			if h, err := c.health(victim); err == nil && h.Status == "draining" {
				sawDraining = true
			}
		}
	}
	took := time.Since(start)
	if res.code != 0 {
		t.Fatalf("cluster drain %s: exit %d: %s\nnode logs:\n%s", victim.name, res.code, res.out, victim.proc.logs())
	}
	if !sawDraining {
		t.Errorf("%s's /healthz never said \"draining\"", victim.name)
	}
	if err := victim.proc.cmd.Wait(); err != nil {
		t.Errorf("the drained node's up: %v (want exit status 0)", err)
	}
	victim.killed = true
	t.Logf("drain of %s (%d gateways) took %v: %s", victim.name, len(moving), took.Round(10*time.Millisecond), strings.TrimSpace(res.out))
	survivors := c.live()
	for _, nd := range c.nodes {
		if !nd.killed {
			waitFor(t, 60*time.Second, nd.name+": the survivors own every partition and role", func() bool { return c.settled(nd, survivors) })
		}
	}
	if !strings.Contains(victim.proc.logs(), `"msg":"node drained: it owns nothing and takes no connections; stopping"`) {
		t.Errorf("the drained node did not log its drain")
	}
	wg.Wait()
	if ctx.Err() != nil {
		t.Fatalf("publishing did not finish: %d of %d acknowledged", acked(), total)
	}
	for _, g := range gws {
		g.mu.Lock()
		if slices.Contains(moving, g.path) && (g.resumedOn == "" || g.resumedOn == victim.mqtt) {
			t.Errorf("gateway %s of the drained node did not move (resumed on %q)", g.path, g.resumedOn)
		}
		g.mu.Unlock()
	}
	var got storeCounts
	deadline := time.Now().Add(2 * time.Minute)
	for got = c.counts(t); got.snapshots < total && time.Now().Before(deadline); got = c.counts(t) {
		time.Sleep(100 * time.Millisecond) // polling a condition with a deadline
	}
	if got.snapshots != total || got.distinct != total || got.leaves != total || got.events != 0 || got.rejects != 0 {
		t.Errorf("after the drain: %+v, want %d snapshots, distinct and leaves, no events or rejects: %s", got, total, c.events(t))
	}
	// A drain that would leave one node is refused.
	other := survivors[0]
	out, code := run(t, "cluster", "drain", "--data", c.nodes[0].dir, other)
	if code == 0 || !strings.Contains(out, "would leave 1 running node") {
		t.Errorf("draining one of two nodes: exit %d: %s", code, out)
	}

	// Rebalancing: real gateways (internal/gateway: EST enrollment,
	// bootstrap, sealed snapshots) start while the drained node is away,
	// so those that have it first connect to their next broker; once it is
	// back they move to it (Failback), and every gateway is on the first
	// broker of its list again.
	live := c.nodes[0]
	fleet, err := demo.Setup(t.Context(), c.d)
	if err != nil {
		t.Fatal(err)
	}
	gctx, gcancel := context.WithCancel(t.Context())
	defer gcancel()
	var gwg sync.WaitGroup
	defer gwg.Wait()
	logs := map[string]*logbuf.Buffer{}
	for _, g := range fleet.Gateways {
		buf := &logbuf.Buffer{}
		logs[g.Path] = buf
		onb := g.Onboarding
		cfg := gateway.Config{Platform: "https://" + live.http, CA: []*x509.Certificate{c.d.Transport.Root()}, Onboarding: &onb,
			StateDir: t.TempDir(), Simulate: 1, SimulateEvery: 200 * time.Millisecond, Failback: 500 * time.Millisecond,
			Logger: slog.New(slog.NewJSONHandler(buf, nil))}
		gwg.Go(func() {
			if err := gateway.Run(gctx, cfg); err != nil && gctx.Err() == nil {
				t.Errorf("gateway %s: %v", g.Path, err)
			}
		})
	}
	lastBroker := func(path string) string {
		s := logs[path].String()
		i := strings.LastIndex(s, `"msg":"connected to broker"`)
		if i < 0 {
			return ""
		}
		var line struct {
			Broker string `json:"broker"`
		}
		end := strings.IndexByte(s[i:], '\n')
		start := strings.LastIndexByte(s[:i], '\n') + 1
		if end < 0 || json.Unmarshal([]byte(s[start:i+end]), &line) != nil {
			return ""
		}
		return line.Broker
	}
	waitFor(t, 2*time.Minute, "the demo gateways connected while the drained node is away", func() bool {
		for _, g := range fleet.Gateways {
			if b := lastBroker(g.Path); b == "" || b == "mqtts://"+victim.mqtt {
				return false
			}
		}
		return true
	})
	// The account CAs made meanwhile on the other nodes (the test's
	// identities, the demo gateways' enrollment) are in the shared store:
	// the node comes back without a copy of their files.
	victim.proc = launchUp(t, c.upArgs(victim)...)
	victim.proc.waitUp(t)
	back := time.Now()
	victim.killed = false
	for _, nd := range c.nodes {
		waitFor(t, 90*time.Second, nd.name+": three nodes own everything again", func() bool { return c.settled(nd, all) })
	}
	waitFor(t, 2*time.Minute, "every demo gateway on the first broker of its list", func() bool {
		for _, g := range fleet.Gateways {
			if lastBroker(g.Path) != firstOf[g.Path] {
				return false
			}
		}
		return true
	})
	spreadAgain := time.Since(back)
	moved := 0
	for _, g := range fleet.Gateways {
		if strings.Contains(logs[g.Path].String(), "moving back to it") {
			moved++
		}
	}
	t.Logf("rebalance: %s back; %d of %d demo gateways moved back to it, all on their first broker %v after it was up",
		victim.name, moved, len(fleet.Gateways), spreadAgain.Round(10*time.Millisecond))
	if moved < prefer["mqtts://"+victim.mqtt] {
		t.Errorf("%d demo gateways moved back to %s, want at least %d (those that have it first)", moved, victim.name, prefer["mqtts://"+victim.mqtt])
	}
	gcancel()
	gwg.Wait()
	if got := c.counts(t); got.events != 0 || got.rejects != 0 {
		t.Errorf("after the rebalance: %d integrity events, %d rejects, want none: %s", got.events, got.rejects, c.events(t))
	}
}
