package cluster

import (
	"context"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/fieldtrust/fieldtrust/internal/datadir"
	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/tacs"
)

// env is a data directory with its PKI, as the platform has it.
type env struct {
	d        *datadir.Dir
	verifier *pki.Verifier
	roots    *x509.CertPool
	grants   tacs.Grants
	log      *slog.Logger
	// admit is the nodes' Config.Admit (nil: none), set before
	// startCluster.
	admit func(context.Context, tacs.Subject) error

	// roles is the nodes' view of the store's service roles, as the
	// platform's: loaded by setRole and by refresh (the revocation loop),
	// so a role changed in the store reaches the nodes only through
	// refresh, as on `up --broker cluster`.
	mu    sync.Mutex
	roles map[string]string
}

func newEnv(t testing.TB) *env {
	t.Helper()
	ctx := context.Background()
	d, err := datadir.Open(ctx, t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	v, err := d.Transport.Verifier(ctx)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(d.Transport.Root())
	log := slog.New(slog.DiscardHandler)
	if os.Getenv("FIELDTRUST_TEST_LOG") != "" {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return &env{d: d, verifier: v, roots: roots, grants: tacs.DefaultGrants(), log: log, roles: map[string]string{}}
}

func (e *env) subjectOf(id pki.Identity) (tacs.Subject, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return tacs.SubjectOf(id, func(service string) (string, bool) { r, ok := e.roles[service]; return r, ok })
}

func (e *env) issue(t testing.TB, req pki.LeafRequest) tls.Certificate {
	t.Helper()
	key, err := pki.GenerateKey(elliptic.P256())
	if err != nil {
		t.Fatal(err)
	}
	req.PublicKey = key.Public()
	iss, err := e.d.Transport.Issue(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	c := tls.Certificate{PrivateKey: key, Leaf: iss.Cert}
	for _, x := range iss.Chain {
		c.Certificate = append(c.Certificate, x.Raw)
	}
	return c
}

func (e *env) device(t testing.TB, path string) tls.Certificate {
	p, err := pki.ParsePath(path)
	if err != nil {
		t.Fatal(err)
	}
	return e.issue(t, pki.LeafRequest{Path: p})
}

func (e *env) service(t testing.TB, name, role string) tls.Certificate {
	e.setRole(t, name, role)
	return e.issue(t, pki.LeafRequest{Service: name})
}

// setRole records a service's role in the store and loads it at once (a
// service granted before the nodes meet it).
func (e *env) setRole(t testing.TB, name, role string) {
	t.Helper()
	ctx := context.Background()
	if err := e.d.Store.SetServiceRole(ctx, name, role); err != nil {
		t.Fatal(err)
	}
	if _, err := e.loadRoles(ctx); err != nil {
		t.Fatal(err)
	}
}

// loadRoles rereads the store's service roles and reports whether they
// changed.
func (e *env) loadRoles(ctx context.Context) (bool, error) {
	roles, err := e.d.Store.ServiceRoles(ctx)
	if err != nil {
		return false, fmt.Errorf("load service roles: %w", err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	changed := !maps.Equal(e.roles, roles)
	e.roles = roles
	return changed, nil
}

// refresh is the platform's poll (platform.identities.refresh): revocation
// state and service roles; either changing revalidates the nodes.
func (e *env) refresh(ctx context.Context) (bool, error) {
	revoked, err := e.verifier.Refresh(ctx)
	if err != nil {
		return false, err
	}
	roles, err := e.loadRoles(ctx)
	return revoked || roles, err
}

// freeAddr returns a loopback address with a port that was free a moment
// ago (route listeners must be known to every node before they start).
func freeAddr(t testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// startCluster starts n nodes on loopback, routed to each other, and
// stops them when the test ends.
func (e *env) startCluster(t testing.TB, n int) []*Node {
	t.Helper()
	var addrs []string
	for range n {
		addrs = append(addrs, freeAddr(t))
	}
	nodes := make([]*Node, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		name := fmt.Sprintf("n%d", i)
		e.setRole(t, "node-"+name, RoleNode)
		// Node certificates need the loopback IP for their peers.
		cert := e.issue(t, pki.LeafRequest{Service: "node-" + name, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}})
		var routes []string
		for j, a := range addrs {
			if j != i {
				routes = append(routes, a)
			}
		}
		cfg := Config{
			Name: name, MQTTAddr: "127.0.0.1:0", StoreDir: filepath.Join(t.TempDir(), name),
			Certificate: func() (*tls.Certificate, error) { return &cert, nil }, Roots: e.roots,
			Identify: Identify(e.verifier, e.subjectOf), Grants: e.grants, Logger: e.log, Replicas: min(n, 3),
			Admit: e.admit, IdentityCerts: e.d.Transport.ValidLeaves,
		}
		if n > 1 {
			cfg.ClusterAddr, cfg.Routes = addrs[i], routes
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			nodes[i], errs[i] = Start(ctx, cfg)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("node %d: %v", i, err)
		}
	}
	t.Cleanup(func() {
		for _, nd := range nodes {
			nd.Shutdown()
		}
	})
	// A node is ready once JetStream is current, but the engine creates
	// the account's MQTT streams on the first connection, which a loaded
	// machine can fail (EOF) while the replicas settle: wait until every
	// node takes an MQTT connection, as a gateway would retry.
	probe := e.device(t, "ms-probe")
	for _, nd := range nodes {
		deadline := time.Now().Add(60 * time.Second)
		for {
			c, err := e.dial(t, nd.MQTTAddr(), probe, "ms-probe", true)
			if err == nil {
				c.Disconnect(0)
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("node %s takes no MQTT connection: %v", nd.cfg.Name, err)
			}
			time.Sleep(200 * time.Millisecond) // polling a condition with a deadline
		}
	}
	return nodes
}

// dial connects an MQTT 3.1.1 client (paho) with cert to addr.
func (e *env) dial(t testing.TB, addr string, cert tls.Certificate, clientID string, clean bool) (mqtt.Client, error) {
	t.Helper()
	c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker("ssl://" + addr).SetClientID(clientID).
		SetCleanSession(clean).SetAutoReconnect(false).SetConnectRetry(false).
		SetTLSConfig(&tls.Config{RootCAs: e.roots, Certificates: []tls.Certificate{cert}}))
	tok := c.Connect()
	if !tok.WaitTimeout(20 * time.Second) {
		return nil, fmt.Errorf("connect to %s timed out", addr)
	}
	if tok.Error() != nil {
		return nil, tok.Error()
	}
	t.Cleanup(func() { c.Disconnect(50) })
	return c, nil
}

func (e *env) mustDial(t testing.TB, addr string, cert tls.Certificate, clientID string) mqtt.Client {
	t.Helper()
	c, err := e.dial(t, addr, cert, clientID, true)
	if err != nil {
		t.Fatalf("connect %s to %s: %v", clientID, addr, err)
	}
	return c
}

func tlsConfig(e *env, cert tls.Certificate) *tls.Config {
	return &tls.Config{RootCAs: e.roots, Certificates: []tls.Certificate{cert}}
}

// watchRevocations runs WatchRevocations as every node's process would;
// here one verifier and one view of the service roles serve the three
// nodes.
func (e *env) watchRevocations(t testing.TB, nodes []*Node) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("revocation loop: %v", err)
		}
	})
	go func() { done <- WatchRevocations(ctx, time.Second, e.refresh, nodes...) }()
}
