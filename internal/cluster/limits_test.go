package cluster

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/nats-io/nats-server/v2/server"

	"github.com/fieldtrust/fieldtrust/internal/broker"
	"github.com/fieldtrust/fieldtrust/internal/tacs"
)

// streamState is what the engine holds for one of its MQTT streams, as
// its monitoring reports it: messages, bytes and consumers.
func streamState(t testing.TB, n *Node, name string) (msgs, bytes uint64, consumers int) {
	t.Helper()
	jsz, err := n.s.Jsz(&server.JSzOptions{Accounts: true, Streams: true})
	if err != nil {
		t.Fatalf("jsz: %v", err)
	}
	for _, a := range jsz.AccountDetails {
		for _, s := range a.Streams {
			if s.Name == name {
				return s.State.Msgs, s.State.Bytes, s.State.Consumers
			}
		}
	}
	return 0, 0, 0
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %s", within, what)
		}
		time.Sleep(20 * time.Millisecond) // polling a condition with a deadline
	}
}

// TestClusterConnectionsPerIdentity: one identity holds at most the
// embedded broker's connection limit on a node (accounts 8): the next
// CONNECT is refused, another identity is not affected, the identity's
// reconnect with a client ID it has open (a takeover of its own session)
// is taken, a service has its own, larger limit, and a closed connection
// frees its place.
func TestClusterConnectionsPerIdentity(t *testing.T) {
	e := newEnv(t)
	nodes := e.startCluster(t, 1)
	addr := nodes[0].MQTTAddr()
	limit := broker.DefaultAccountLimits.Connections
	path := "ms-acc-1/acc-1/gw-conn"
	cert := e.device(t, path)
	var open []mqtt.Client
	for i := range limit {
		open = append(open, e.mustDial(t, addr, cert, fmt.Sprintf("%s:c%d", path, i)))
	}
	if c, err := e.dial(t, addr, cert, path+":one-too-many", true); err == nil {
		c.Disconnect(0)
		t.Fatalf("connection %d of one identity taken (limit %d)", limit+1, limit)
	}
	// Another identity of the same account is not affected.
	e.mustDial(t, addr, e.device(t, "ms-acc-1/acc-1/gw-other"), "ms-acc-1/acc-1/gw-other")
	// A reconnect with a client ID it has open replaces that connection
	// (a gateway whose old connection is not yet known to be dead).
	open[0] = e.mustDial(t, addr, cert, path+":c0")
	// A service is limited by the service limits, not the accounts'.
	svc := e.service(t, "ingest", "snapshot-reader")
	for i := range limit + 1 {
		e.mustDial(t, addr, svc, fmt.Sprintf("service:ingest:c%d", i))
	}
	// A closed connection frees its place.
	open[1].Disconnect(0)
	waitFor(t, 10*time.Second, "a place freed by a closed connection", func() bool {
		c, err := e.dial(t, addr, cert, path+":after-close", true)
		if err == nil {
			c.Disconnect(0)
		}
		return err == nil
	})
}

// TestClusterPersistentSessionsPerIdentity: on three nodes, one identity
// holds at most the embedded broker's persistent-session limit (accounts
// 4) cluster-wide: its sessions, made on different nodes and offline now,
// make a fifth client ID refused on any node; each of its own client IDs
// is always taken again (a gateway reconnecting, on any node); a session
// ended for good (a clean CONNECT with its client ID) frees its place.
// It also measures what one persistent session with one QoS 1
// subscription costs the engine.
func TestClusterPersistentSessionsPerIdentity(t *testing.T) {
	e := newEnv(t)
	nodes := e.startCluster(t, 3)
	limit := broker.DefaultAccountLimits.PersistentSessions
	path := "ms-acc-1/acc-1/gw-sess"
	cert := e.device(t, path)
	ids := []string{path}
	for i := 1; i < limit; i++ {
		ids = append(ids, fmt.Sprintf("%s:%d", path, i))
	}
	_, b0, _ := streamState(t, nodes[0], "$MQTT_sess")
	_, _, c0 := streamState(t, nodes[0], "$MQTT_msgs")
	for i, id := range ids {
		c, err := e.dial(t, nodes[i%3].MQTTAddr(), cert, id, false)
		if err != nil {
			t.Fatalf("persistent session %s: %v", id, err)
		}
		if tok := c.Subscribe(path+"/commands", 1, nil); !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
			t.Fatalf("subscribe %s: %v", id, tok.Error())
		}
		c.Disconnect(50)
	}
	var sb uint64
	waitFor(t, 10*time.Second, "the sessions in the engine's state", func() bool {
		_, sb, _ = streamState(t, nodes[0], "$MQTT_sess")
		return sb > b0
	})
	_, _, msgsConsumers := streamState(t, nodes[0], "$MQTT_msgs")
	t.Logf("%d persistent sessions with one QoS 1 subscription each: $MQTT_sess +%d bytes (%d per session, ×%d replicas), %d durable consumers on $MQTT_msgs (%d before)",
		limit, sb-b0, (sb-b0)/uint64(limit), min(3, len(nodes)), msgsConsumers, c0)

	for _, n := range nodes {
		if c, err := e.dial(t, n.MQTTAddr(), cert, path+":one-too-many", false); err == nil {
			c.Disconnect(0)
			t.Fatalf("persistent session %d of one identity taken on node %s (limit %d, cluster-wide)", limit+1, n.cfg.Name, limit)
		}
	}
	// Its own client IDs are always taken again, on any node.
	for i, id := range ids {
		c, err := e.dial(t, nodes[(i+1)%3].MQTTAddr(), cert, id, false)
		if err != nil {
			t.Fatalf("the identity's own session %s refused on node %s: %v", id, nodes[(i+1)%3].cfg.Name, err)
		}
		c.Disconnect(50)
	}
	// Another identity of the account is not affected.
	other := e.device(t, "ms-acc-1/acc-1/gw-sess-2")
	if c, err := e.dial(t, nodes[1].MQTTAddr(), other, "ms-acc-1/acc-1/gw-sess-2", false); err != nil {
		t.Fatalf("another identity refused: %v", err)
	} else {
		c.Disconnect(50)
	}
	// A clean CONNECT ends the session for good: its place is free.
	c, err := e.dial(t, nodes[2].MQTTAddr(), cert, ids[limit-1], true)
	if err != nil {
		t.Fatal(err)
	}
	c.Disconnect(50)
	waitFor(t, 20*time.Second, "a place freed by a session ended for good", func() bool {
		c, err := e.dial(t, nodes[0].MQTTAddr(), cert, path+":new", false)
		if err == nil {
			c.Disconnect(50)
		}
		return err == nil
	})
}

// TestClusterRetainedPerIdentity: one identity's retained messages beyond
// the embedded broker's limits (accounts 64 messages, 1 MiB) are removed
// from the engine's replicated state, the newest first; the oldest 64
// stay and are delivered; another identity's and a legitimate update are
// untouched.
func TestClusterRetainedPerIdentity(t *testing.T) {
	e := newEnv(t)
	nodes := e.startCluster(t, 3)
	limit := broker.DefaultAccountLimits.Retained
	path := "ms-acc-1/acc-1/gw-ret"
	gw := e.mustDial(t, nodes[0].MQTTAddr(), e.device(t, path), path)
	otherPath := "ms-acc-1/acc-1/gw-ret-2"
	other := e.mustDial(t, nodes[1].MQTTAddr(), e.device(t, otherPath), otherPath)
	publish := func(c mqtt.Client, topic string, payload []byte) {
		t.Helper()
		if tok := c.Publish(topic, 1, true, payload); !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
			t.Fatalf("retain %s: %v", topic, tok.Error())
		}
	}
	base, _, _ := streamState(t, nodes[0], "$MQTT_rmsgs")
	for i := range 3 {
		publish(other, fmt.Sprintf("%s/r/%d", otherPath, i), []byte("kept"))
	}
	const extra = 6
	for i := range limit + extra {
		publish(gw, fmt.Sprintf("%s/r/%d", path, i), []byte(fmt.Sprint(i)))
	}
	done := time.Now()
	want := base + uint64(3+limit)
	var msgs uint64
	waitFor(t, 20*time.Second, fmt.Sprintf("%d retained messages in the engine", want), func() bool {
		msgs, _, _ = streamState(t, nodes[2], "$MQTT_rmsgs")
		return msgs == want
	})
	t.Logf("%d retained messages beyond the limit removed %v after the last PUBACK", extra, time.Since(done).Round(time.Millisecond))
	// A legitimate update of one it holds is kept.
	publish(gw, path+"/r/0", []byte("updated"))
	// A fresh subscriber gets the oldest 64 (r/0 updated), none beyond.
	got := make(chan string, 256)
	sub := e.mustDial(t, nodes[2].MQTTAddr(), e.device(t, "ms-acc-1/acc-1"), "ms-acc-1/acc-1")
	if tok := sub.Subscribe("ms-acc-1/acc-1/#", 1, func(_ mqtt.Client, m mqtt.Message) {
		got <- strings.TrimPrefix(m.Topic(), "ms-acc-1/acc-1/") + "=" + string(m.Payload())
	}); !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	seen := map[string]bool{}
	deadline := time.After(20 * time.Second)
	for len(seen) < limit+3 {
		select {
		case m := <-got:
			seen[m] = true
		case <-deadline:
			t.Fatalf("received %d of %d retained messages: %v", len(seen), limit+3, seen)
		}
	}
	for i := range limit + extra {
		m := fmt.Sprintf("gw-ret/r/%d=%d", i, i)
		if i == 0 {
			m = "gw-ret/r/0=updated"
		}
		if seen[m] != (i < limit) {
			t.Errorf("retained %s delivered: %v, want %v", m, seen[m], i < limit)
		}
	}
	for i := range 3 {
		if m := fmt.Sprintf("gw-ret-2/r/%d=kept", i); !seen[m] {
			t.Errorf("another identity's retained %s removed", m)
		}
	}

	// Bytes: beyond 1 MiB of one identity's retained payloads.
	bigPath := "ms-acc-1/acc-1/gw-big"
	big := e.mustDial(t, nodes[1].MQTTAddr(), e.device(t, bigPath), bigPath)
	payload := make([]byte, 600<<10)
	base, _, _ = streamState(t, nodes[0], "$MQTT_rmsgs")
	publish(big, bigPath+"/a", payload)
	publish(big, bigPath+"/b", payload)
	waitFor(t, 20*time.Second, "the retained message beyond 1 MiB removed", func() bool {
		msgs, _, _ = streamState(t, nodes[0], "$MQTT_rmsgs")
		return msgs == base+1 // a stays, b goes
	})
}

// TestLimitsOf: the cluster tier picks limits as the embedded broker does
// (broker.ServiceLimited): services and customer sites get the service
// limits, every other identity the accounts'.
func TestLimitsOf(t *testing.T) {
	cfg := Config{AccountLimits: broker.DefaultAccountLimits, ServiceLimits: broker.DefaultServiceLimits}
	for _, tc := range []struct {
		name    string
		subject tacs.Subject
		service bool
	}{
		{"device", tacs.Subject{Path: "ms/acc/gw"}, false},
		{"account", tacs.Subject{Path: "ms/acc"}, false},
		{"master", tacs.Subject{Path: "ms"}, false},
		{"master named service", tacs.Subject{Path: "service"}, false},
		{"site", tacs.Subject{Path: "ms/acc", Site: true}, true},
		{"service", tacs.Subject{Service: "ingest", Role: "snapshot-reader"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want := broker.DefaultAccountLimits
			if tc.service {
				want = broker.DefaultServiceLimits
			}
			if got := cfg.limitsOf(tc.subject); got != want {
				t.Errorf("limits of %v: %+v, want %+v", tc.subject, got, want)
			}
			// The retained messages' source (the registered username) is
			// read back to the same limits.
			if got := cfg.limitsOf(subjectOfName(tc.subject.String())); got != want {
				t.Errorf("limits of source %q: %+v, want %+v", tc.subject.String(), got, want)
			}
		})
	}
}

// fakeAuth is a connection as the engine hands it to the hook.
type fakeAuth struct {
	kind  int
	addr  net.Addr
	token string
}

func (f fakeAuth) GetOpts() *server.ClientOpts                 { return &server.ClientOpts{Token: f.token} }
func (f fakeAuth) GetTLSConnectionState() *tls.ConnectionState { return nil }
func (f fakeAuth) RegisterUser(*server.User)                   {}
func (f fakeAuth) RemoteAddress() net.Addr                     { return f.addr }
func (f fakeAuth) GetNonce() []byte                            { return nil }
func (f fakeAuth) Kind() int                                   { return f.kind }
func (f fakeAuth) GetID() uint64                               { return 1 }

// TestEngineClientOnlyInProcess: the hook takes the node's own engine
// client only in process (a pipe) and with its token: not from the
// network with the token, not in process without it, never as a route.
func TestEngineClientOnlyInProcess(t *testing.T) {
	e := engineClient{token: "secret-token"}
	pipe, _ := net.Pipe()
	defer pipe.Close()
	tcp := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 4222}
	for _, tc := range []struct {
		name string
		c    fakeAuth
		want bool
	}{
		{"in process with the token", fakeAuth{server.CLIENT, pipe.RemoteAddr(), "secret-token"}, true},
		{"network with the token", fakeAuth{server.CLIENT, tcp, "secret-token"}, false},
		{"in process, wrong token", fakeAuth{server.CLIENT, pipe.RemoteAddr(), "secret-tokex"}, false},
		{"in process, no token", fakeAuth{server.CLIENT, pipe.RemoteAddr(), ""}, false},
		{"no address", fakeAuth{server.CLIENT, nil, "secret-token"}, false},
		{"route", fakeAuth{server.ROUTER, pipe.RemoteAddr(), "secret-token"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := e.isEngineClient(tc.c); got != tc.want {
				t.Errorf("isEngineClient = %v, want %v", got, tc.want)
			}
		})
	}
	if (&engineClient{}).isEngineClient(fakeAuth{server.CLIENT, pipe.RemoteAddr(), ""}) {
		t.Error("a node without a token took an in-process client without one")
	}
}

// FuzzSessionRecord: whatever a session record in the engine's stream
// holds (its client ID is the client's choice), the index never panics,
// files a persistent session under the client ID's owner and forgets it
// when the record says clean.
func FuzzSessionRecord(f *testing.F) {
	f.Add([]byte(`{"id":"ms/acc/gw:1","clean":false}`))
	f.Add([]byte(`{"id":"service:ingest:p3"}`))
	f.Add([]byte(`{"id":"site:ms/acc:x","clean":true}`))
	f.Add([]byte(`{"id":""}`))
	f.Add([]byte(`not json`))
	f.Fuzz(func(t *testing.T, data []byte) {
		x := sessionIndex{byOwner: map[string]map[string]struct{}{}}
		cid, clean, ok := x.set("$MQTT.sess.h", data)
		if !ok {
			if len(x.byOwner) != 0 {
				t.Fatalf("a record not understood was filed: %v", x.byOwner)
			}
			return
		}
		_, held := x.of(clientIDOwner(cid))[cid]
		if held == clean {
			t.Fatalf("client ID %q clean=%v held=%v", cid, clean, held)
		}
		rec, err := json.Marshal(map[string]any{"id": cid, "clean": true})
		if err != nil {
			t.Fatal(err)
		}
		x.set("$MQTT.sess.h", rec)
		if len(x.byOwner) != 0 || len(x.subjects) != 0 {
			t.Fatalf("a session saved clean is still held: %v %v", x.byOwner, x.subjects)
		}
	})
}

// TestClusterSessionLimitAfterRestart: a node started again on its
// JetStream state knows the sessions the identity holds there before it
// takes a new client ID (its view replays the engine's session stream
// first), and still takes the identity's own.
func TestClusterSessionLimitAfterRestart(t *testing.T) {
	e := newEnv(t)
	nodes := e.startCluster(t, 1)
	limit := broker.DefaultAccountLimits.PersistentSessions
	path := "ms-acc-1/acc-1/gw-restart"
	cert := e.device(t, path)
	for i := range limit {
		c, err := e.dial(t, nodes[0].MQTTAddr(), cert, fmt.Sprintf("%s:%d", path, i), false)
		if err != nil {
			t.Fatal(err)
		}
		c.Disconnect(50)
	}
	cfg := nodes[0].cfg
	nodes[0].Shutdown()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	n, err := Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Shutdown)
	if c, err := e.dial(t, n.MQTTAddr(), cert, path+":new", false); err == nil {
		c.Disconnect(0)
		t.Fatalf("session %d taken right after the node's restart", limit+1)
	}
	if c, err := e.dial(t, n.MQTTAddr(), cert, path+":0", false); err != nil {
		t.Fatalf("the identity's own session refused after the restart: %v", err)
	} else {
		c.Disconnect(50)
	}
}

// TestAdmitLimitsBeforeTheEngineClient: a CONNECT the engine hands the
// hook while the node is starting (before its engine client follows the
// session stream) is refused for a new client ID, not a panic of the
// engine's read loop, and not taken unchecked.
func TestAdmitLimitsBeforeTheEngineClient(t *testing.T) {
	a := &authenticator{
		cfg:   Config{AccountLimits: broker.DefaultAccountLimits, ServiceLimits: broker.DefaultServiceLimits},
		conns: map[uint64]*conn{}, bySubject: map[string]map[uint64]*conn{}, byClientID: map[string]uint64{},
	}
	err := a.admitLimits(1, &conn{subject: tacs.Subject{Path: "ms/acc/gw"}, clientID: "ms/acc/gw"})
	if !errors.Is(err, errNodeStarting) {
		t.Fatalf("admitLimits before the engine client: %v, want %v", err, errNodeStarting)
	}
	if len(a.conns) != 0 {
		t.Fatal("a refused connection was recorded")
	}
}

// BenchmarkPersistentSessionCost measures what one offline persistent
// session with one QoS 1 subscription costs three nodes (one process):
// heap and JetStream bytes per session, and durable consumers (go test
// -run X -bench PersistentSessionCost -benchtime 1x ./internal/cluster/; docs/scale.md
// "Limits on the cluster tier").
func BenchmarkPersistentSessionCost(b *testing.B) {
	e := newEnv(b)
	nodes := e.startCluster(b, 3)
	const sessions = 60 // within a service's limit of 64
	svc := e.service(b, "bench", "snapshot-reader")
	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	_, sb0, _ := streamState(b, nodes[0], "$MQTT_sess")
	_, _, c0 := streamState(b, nodes[0], "$MQTT_msgs")
	h0 := heap()
	b.ResetTimer()
	for i := range sessions {
		c, err := e.dial(b, nodes[i%3].MQTTAddr(), svc, fmt.Sprintf("service:bench:%d", i), false)
		if err != nil {
			b.Fatal(err)
		}
		if tok := c.Subscribe("ms-bench/+/+/snapshots", 1, nil); !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
			b.Fatalf("subscribe: %v", tok.Error())
		}
		c.Disconnect(50)
	}
	b.StopTimer()
	h1 := heap()
	_, sb1, _ := streamState(b, nodes[0], "$MQTT_sess")
	_, _, c1 := streamState(b, nodes[0], "$MQTT_msgs")
	b.ReportMetric(float64(int64(h1)-int64(h0))/sessions, "heap-B/session")
	b.ReportMetric(float64(sb1-sb0)/sessions, "sess-stream-B/session")
	b.ReportMetric(float64(c1-c0)/sessions, "consumers/session")
}
