package cluster

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/tacs"
	"github.com/fieldtrust/fieldtrust/internal/tacs/tacsprobe"
)

// TestClusterSpreadAndCrossNode: gateways spread over three nodes; a
// customer subscribed on node A sees the devices on node C (and B), and
// nothing of another customer.
func TestClusterSpreadAndCrossNode(t *testing.T) {
	e := newEnv(t)
	nodes := e.startCluster(t, 3)
	customer := e.mustDial(t, nodes[0].MQTTAddr(), e.device(t, "ms-acc-1"), "ms-acc-1")
	got := make(chan string, 100)
	if tok := customer.Subscribe("ms-acc-1/#", 1, func(_ mqtt.Client, m mqtt.Message) { got <- m.Topic() + "=" + string(m.Payload()) }); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	other := e.mustDial(t, nodes[1].MQTTAddr(), e.device(t, "ms-acc-2"), "ms-acc-2")
	foreign := make(chan string, 100)
	other.Subscribe("ms-acc-2/#", 1, func(_ mqtt.Client, m mqtt.Message) { foreign <- m.Topic() })

	want := map[string]bool{}
	for i := range 6 {
		path := fmt.Sprintf("ms-acc-1/acc-1/gw-%d", i)
		gw := e.mustDial(t, nodes[i%3].MQTTAddr(), e.device(t, path), path)
		topic := path + "/snapshots"
		if tok := gw.Publish(topic, 1, false, "hello"); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("publish on node %d: %v", i%3, tok.Error())
		}
		want[topic+"=hello"] = true
	}
	deadline := time.After(20 * time.Second)
	for len(want) > 0 {
		select {
		case m := <-got:
			delete(want, m)
		case <-deadline:
			t.Fatalf("customer on node A did not see %v", want)
		}
	}
	select {
	case m := <-foreign:
		t.Fatalf("another customer saw %s", m)
	default:
	}
}

// TestClusterRevocation: an identity connected to node B is disconnected
// within 5 s of its revocation, and it cannot reconnect to another node.
func TestClusterRevocation(t *testing.T) {
	e := newEnv(t)
	nodes := e.startCluster(t, 3)
	e.watchRevocations(t, nodes)
	ctx := context.Background()
	path := "ms-acc-1/acc-1/gw-rev"
	cert := e.device(t, path)
	lost := make(chan struct{})
	c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker("ssl://" + nodes[1].MQTTAddr()).SetClientID(path).
		SetAutoReconnect(false).SetTLSConfig(tlsConfig(e, cert)).
		SetConnectionLostHandler(func(mqtt.Client, error) { close(lost) }))
	if tok := c.Connect(); !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	p, _ := pki.ParsePath(path)
	start := time.Now()
	if _, err := e.d.Transport.RevokePath(ctx, p, 1); err != nil {
		t.Fatal(err)
	}
	select {
	case <-lost:
		t.Logf("disconnected %v after the revocation", time.Since(start).Round(time.Millisecond))
	case <-time.After(5 * time.Second):
		t.Fatal("revoked identity still connected to node B after 5 s")
	}
	for _, n := range nodes {
		if _, err := e.dial(t, n.MQTTAddr(), cert, path, true); err == nil {
			t.Fatalf("revoked identity reconnected to node %s", n.cfg.Name)
		}
	}
}

// TestClusterAdversarial runs the TACS adversarial table the embedded
// broker passes (tacsprobe, TestEmbeddedBroker) against a 3-node cluster,
// the clients of each row spread over the nodes: foreign publishes, wills,
// retained messages, session hijack and resumption, $-topics (including
// the engine's $JS and $MQTT spaces), the CRL topics, and a revoked
// identity reconnecting to another node.
func TestClusterAdversarial(t *testing.T) {
	e := newEnv(t)
	nodes := e.startCluster(t, 3)
	e.watchRevocations(t, nodes)
	var addrs []string
	for _, n := range nodes {
		addrs = append(addrs, n.MQTTAddr())
	}
	tacsprobe.Run(t, &tacsprobe.Target{
		Addrs:   addrs,
		Roots:   e.roots,
		Account: func(t testing.TB, path string) tls.Certificate { return e.device(t, path) },
		Service: func(t testing.TB, name, role string) tls.Certificate { return e.service(t, name, role) },
		// The harness's revocation loop (watchRevocations) rereads the
		// roles, as the platform's does.
		SetRole: func(t testing.TB, name, role string) {
			if err := e.d.Store.SetServiceRole(context.Background(), name, role); err != nil {
				t.Fatal(err)
			}
		},
		Site: func(t testing.TB, account string) tls.Certificate {
			p, err := pki.ParsePath(account)
			if err != nil {
				t.Fatal(err)
			}
			return e.issue(t, pki.LeafRequest{Path: p, Site: true})
		},
		Revoke: func(t testing.TB, path string) {
			p, err := pki.ParsePath(path)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := e.d.Transport.RevokePath(context.Background(), p, 1); err != nil {
				t.Fatal(err)
			}
		},
	})
}

// TestClusterNodeLoss: one node of three stops while a device publishes
// QoS 1 through another node to a persistent-session subscriber connected
// to the stopping node. The subscriber resumes its session on a surviving
// node and receives every message whose PUBACK the device got: sessions
// and QoS 1 messages are in R3 JetStream streams. (In process: the node
// is shut down, not kill -9'd; the store-level test with ingest is not
// built, docs/scale.md.)
func TestClusterNodeLoss(t *testing.T) {
	e := newEnv(t)
	nodes := e.startCluster(t, 3)
	const total = 300
	subCert := e.device(t, "ms-loss")
	subID := "ms-loss:persistent"
	var mu sync.Mutex
	got := map[string]int{}
	more := make(chan struct{}, 1)
	handler := func(_ mqtt.Client, m mqtt.Message) {
		mu.Lock()
		got[string(m.Payload())]++
		mu.Unlock()
		select {
		case more <- struct{}{}:
		default:
		}
	}
	subscriber := func(addr string) (mqtt.Client, chan struct{}, error) {
		lost := make(chan struct{})
		c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker("ssl://" + addr).SetClientID(subID).
			SetCleanSession(false).SetAutoReconnect(false).SetConnectRetry(false).SetTLSConfig(tlsConfig(e, subCert)).
			SetDefaultPublishHandler(handler).
			SetConnectionLostHandler(func(mqtt.Client, error) { close(lost) }))
		tok := c.Connect()
		if !tok.WaitTimeout(20 * time.Second) {
			return nil, nil, fmt.Errorf("connect to %s timed out", addr)
		}
		if tok.Error() != nil {
			return nil, nil, tok.Error()
		}
		return c, lost, nil
	}
	sub, lost, err := subscriber(nodes[1].MQTTAddr())
	if err != nil {
		t.Fatal(err)
	}
	if tok := sub.Subscribe("ms-loss/#", 1, nil); !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	pubCert := e.device(t, "ms-loss/acc/gw")
	pub := e.mustDial(t, nodes[2].MQTTAddr(), pubCert, "ms-loss/acc/gw")
	acked := 0
	var stopped time.Time
	for i := range total {
		if i == total/3 {
			stopped = time.Now()
			nodes[1].Shutdown()
		}
		for attempt := 0; ; attempt++ {
			tok := pub.Publish("ms-loss/acc/gw/snapshots", 1, false, fmt.Sprintf("m-%d", i))
			if tok.WaitTimeout(30*time.Second) && tok.Error() == nil {
				break
			}
			if attempt == 3 {
				t.Fatalf("publish %d: no PUBACK after %d connections: %v", i, attempt+1, tok.Error())
			}
			// Under load the node loss has also ended the connection of a
			// publisher on a surviving node (docs/scale.md). Like a gateway,
			// it connects again and publishes what was not acknowledged
			// (at least once: the subscriber counts distinct messages).
			t.Logf("publish %d: %v; connecting again", i, tok.Error())
			pub.Disconnect(0)
			pub = e.mustDial(t, nodes[2].MQTTAddr(), pubCert, "ms-loss/acc/gw")
		}
		acked++
	}
	select {
	case <-lost:
	case <-time.After(20 * time.Second):
		t.Fatal("subscriber on the stopped node not disconnected")
	}
	// Resume the session on a surviving node (the gateway's next broker).
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, _, err := subscriber(nodes[0].MQTTAddr())
		if err == nil {
			t.Cleanup(func() { c.Disconnect(50) })
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("session not resumed on node n0: %v", err)
		}
		time.Sleep(100 * time.Millisecond) // polling a condition with a deadline
	}
	resumed := time.Since(stopped)
	wait := time.After(30 * time.Second)
	for {
		mu.Lock()
		n, dupes := len(got), 0
		for _, c := range got {
			dupes += c - 1
		}
		mu.Unlock()
		if n == acked {
			t.Logf("%d/%d acknowledged messages delivered across the node loss (%d redelivered); the session resumed on n0 %v after the stop (publishing in between)",
				n, acked, dupes, resumed.Round(time.Millisecond))
			break
		}
		select {
		case <-more:
		case <-wait:
			var missing []string
			mu.Lock()
			for i := range total {
				if got[fmt.Sprintf("m-%d", i)] == 0 {
					missing = append(missing, fmt.Sprintf("m-%d", i))
				}
			}
			mu.Unlock()
			t.Fatalf("%d of %d acknowledged messages lost: %v", len(missing), acked, missing)
		}
	}
}

// TestClusterCertificateExpiry: a connection ends when its certificate
// expires, as on the embedded broker, without any revocation.
func TestClusterCertificateExpiry(t *testing.T) {
	e := newEnv(t)
	nodes := e.startCluster(t, 1)
	path := "ms-exp/acc/gw"
	p, _ := pki.ParsePath(path)
	cert := e.issue(t, pki.LeafRequest{Path: p, Validity: 5 * time.Second})
	lost := make(chan struct{})
	c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker("ssl://" + nodes[0].MQTTAddr()).SetClientID(path).
		SetAutoReconnect(false).SetTLSConfig(tlsConfig(e, cert)).
		SetConnectionLostHandler(func(mqtt.Client, error) { close(lost) }))
	if tok := c.Connect(); !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	select {
	case <-lost:
		if now := time.Now(); now.Before(cert.Leaf.NotAfter) {
			t.Fatalf("disconnected %v before the certificate expired", cert.Leaf.NotAfter.Sub(now))
		}
	case <-time.After(30 * time.Second):
		t.Fatal("connection outlived its certificate")
	}
}

// TestClusterRefusesNonNodes: the paths into a node other than MQTT are
// closed to devices and services. A route (the link between nodes) is
// refused to a device certificate and to a service without the node role,
// and accepted from a node's certificate (the engine then sends its INFO);
// the engine's NATS-protocol port refuses every client, since the hook
// admits MQTT connections only.
func TestClusterRefusesNonNodes(t *testing.T) {
	e := newEnv(t)
	nodes := e.startCluster(t, 2)
	route := nodes[0].ClusterAddr()
	try := func(cert tls.Certificate) (string, error) {
		c, err := tls.Dial("tcp", route, &tls.Config{RootCAs: e.roots, Certificates: []tls.Certificate{cert}, ServerName: "127.0.0.1"})
		if err != nil {
			return "", err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(15 * time.Second))
		buf := make([]byte, 4)
		_, err = io.ReadFull(c, buf)
		return string(buf), err
	}
	for name, cert := range map[string]tls.Certificate{
		"device":  e.device(t, "ms-rt/acc/gw"),
		"service": e.service(t, "ingest", "snapshot-reader"),
	} {
		if got, err := try(cert); err == nil {
			t.Errorf("%s certificate opened a route (read %q)", name, got)
		}
	}
	e.setRole(t, "node-x", RoleNode)
	nodeCert := e.issue(t, pki.LeafRequest{Service: "node-x", IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}})
	if got, err := try(nodeCert); err != nil || got != "INFO" {
		t.Fatalf("node certificate refused on the route port: %q, %v", got, err)
	}

	// The NATS client port (loopback only) refuses NATS-protocol clients.
	nc, err := net.Dial("tcp", nodes[0].s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(15 * time.Second))
	if _, err := io.WriteString(nc, "CONNECT {\"verbose\":false}\r\nPING\r\n"); err != nil {
		t.Fatal(err)
	}
	all, _ := io.ReadAll(nc)
	if !strings.Contains(string(all), "Authorization Violation") || strings.Contains(string(all), "PONG") {
		t.Fatalf("NATS-protocol client not refused: %q", all)
	}
}

// TestClusterAdmit: a node refuses at CONNECT what Config.Admit does not
// admit yet (an account's gateway before ingest covers the account), and
// takes the same identity once admitted; the publish of a refused client
// is never acknowledged.
func TestClusterAdmit(t *testing.T) {
	e := newEnv(t)
	var covered atomic.Bool
	e.admit = func(_ context.Context, s tacs.Subject) error {
		if strings.HasPrefix(s.Path, "ms-acc-1/acc-new/") && !covered.Load() {
			return errors.New("account ms-acc-1/acc-new not covered by ingest yet")
		}
		return nil
	}
	nodes := e.startCluster(t, 1)
	path := "ms-acc-1/acc-new/gw-1"
	cert := e.device(t, path)
	if c, err := e.dial(t, nodes[0].MQTTAddr(), cert, path, true); err == nil {
		c.Disconnect(0)
		t.Fatal("a gateway of an account not admitted yet was taken")
	}
	other := e.mustDial(t, nodes[0].MQTTAddr(), e.device(t, "ms-acc-1/acc-1/gw-1"), "ms-acc-1/acc-1/gw-1")
	if tok := other.Publish("ms-acc-1/acc-1/gw-1/snapshots", 1, false, "x"); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("an admitted gateway's publish: %v", tok.Error())
	}
	covered.Store(true)
	gw := e.mustDial(t, nodes[0].MQTTAddr(), cert, path)
	if tok := gw.Publish(path+"/snapshots", 1, false, "x"); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("publish once admitted: %v", tok.Error())
	}
}

// TestClusterDrain: a node of three drains while a gateway connected to it
// publishes QoS 1: its connection is closed, the node refuses it again,
// the gateway resends what was not acknowledged through another node, and
// a persistent subscriber on a third node receives every message; the
// drained node shuts down and the two others go on.
func TestClusterDrain(t *testing.T) {
	e := newEnv(t)
	nodes := e.startCluster(t, 3)
	const n = 200
	path := "ms-acc-1/acc-1/gw-d"
	got := make(chan string, 1<<16)
	sub, err := e.dial(t, nodes[0].MQTTAddr(), e.device(t, "ms-acc-1"), "ms-acc-1:drain", false)
	if err != nil {
		t.Fatal(err)
	}
	if tok := sub.Subscribe(path+"/snapshots", 1, func(_ mqtt.Client, m mqtt.Message) { got <- string(m.Payload()) }); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	cert := e.device(t, path)
	gw := e.mustDial(t, nodes[1].MQTTAddr(), cert, path)
	drained := make(chan error, 1)
	moved, started, i := 0, false, 0
	// At least n messages, and on until the drain moved the gateway.
	for i < n || moved == 0 {
		if i > 100*n {
			t.Fatal("the draining node never closed the gateway's connection")
		}
		if i == n/4 && !started {
			started = true
			go func() { drained <- nodes[1].Drain(context.Background(), time.Second) }()
		}
		tok := gw.Publish(path+"/snapshots", 1, false, fmt.Sprint(i))
		if tok.WaitTimeout(10*time.Second) && tok.Error() == nil {
			i++
			continue
		}
		// Not acknowledged: the node is draining. It refuses the gateway
		// now; the next node of its list takes it.
		gw.Disconnect(0)
		if c, err := e.dial(t, nodes[1].MQTTAddr(), cert, path, true); err == nil {
			c.Disconnect(0)
			t.Fatal("the draining node took a new connection")
		}
		gw = e.mustDial(t, nodes[2].MQTTAddr(), cert, path)
		moved++
	}
	if moved != 1 {
		t.Errorf("the gateway moved %d times, want once (off the draining node)", moved)
	}
	published := i
	select {
	case err := <-drained:
		if err != nil {
			t.Fatalf("drain: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("the node did not finish draining within 60 s")
	}
	select {
	case <-nodes[1].Done():
	case <-time.After(10 * time.Second):
		t.Error("the drained node still runs")
	}
	seen := map[string]bool{}
	deadline := time.After(30 * time.Second)
	for len(seen) < published {
		select {
		case m := <-got:
			seen[m] = true
		case <-deadline:
			t.Fatalf("the subscriber received %d of %d", len(seen), published)
		}
	}
}
