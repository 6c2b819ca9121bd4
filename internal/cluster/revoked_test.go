package cluster

import (
	"context"
	"crypto/tls"
	"fmt"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// TestClusterRevokedSessionsRemoved: an account's persistent sessions
// with a QoS 1 subscription to its subtree, one offline, one connected,
// are removed from the engine once the account's certificate is revoked — its record leaves
// $MQTT_sess, its durable consumer leaves $MQTT_msgs, and the QoS 1
// messages its gateway (not revoked) publishes afterwards are not kept
// for it — while another account's offline session, not revoked, keeps
// its consumer and receives the messages when it resumes, and an
// account whose old certificate is revoked after a renewal keeps its
// session.
func TestClusterRevokedSessionsRemoved(t *testing.T) {
	e := newEnv(t)
	nodes := e.startCluster(t, 3)
	e.watchRevocations(t, nodes)
	ctx := context.Background()
	// live: a second session of the revoked account, connected when the
	// revocation comes (revalidation ends the connection, then the session).
	// renewed: an account whose first certificate is revoked after it
	// resumed its session with a renewed one, on another node (that node
	// still holds the old chain): its session stays.
	const revoked, kept, live, renewed = "ms-rev/acc-r", "ms-rev/acc-k", "ms-rev/acc-r:live", "ms-rev/acc-n"
	revCert, keptCert := e.device(t, revoked), e.device(t, kept)
	oldCert, newCert := e.device(t, renewed), e.device(t, renewed)
	// underCA: a gateway whose own certificate stays unrevoked, but whose
	// account CA is revoked: no certificate of it verifies any more.
	const underCA = "ms-rev/acc-c/gw"
	caGwCert := e.device(t, underCA)
	_, _, c0 := streamState(t, nodes[0], "$MQTT_msgs")
	s0, _, _ := streamState(t, nodes[0], "$MQTT_sess")
	for _, s := range []struct {
		node int
		cid  string
		cert tls.Certificate
	}{{0, revoked, revCert}, {1, kept, keptCert}, {2, live, revCert}, {0, renewed, oldCert}, {1, underCA, caGwCert}} {
		c, err := e.dial(t, nodes[s.node].MQTTAddr(), s.cert, s.cid, false)
		if err != nil {
			t.Fatalf("persistent session %s: %v", s.cid, err)
		}
		if tok := c.Subscribe(clientIDOwner(s.cid)+"/#", 1, nil); !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
			t.Fatalf("subscribe %s: %v", s.cid, tok.Error())
		}
		if s.cid != live {
			c.Disconnect(50)
		}
	}
	waitFor(t, 20*time.Second, "the renewed certificate resumes the session on another node", func() bool {
		c, err := e.dial(t, nodes[1].MQTTAddr(), newCert, renewed, false)
		if err == nil {
			c.Disconnect(50)
		}
		return err == nil
	})
	// The engine makes two durable consumers of "acc/#": one for the
	// subtree, one for the account's own topic (MQTT's '#' matches it).
	const perSession = 2
	waitFor(t, 20*time.Second, "five persistent sessions with their durable consumers", func() bool {
		s, _, _ := streamState(t, nodes[0], "$MQTT_sess")
		_, _, mc := streamState(t, nodes[0], "$MQTT_msgs")
		return s == s0+5 && mc == c0+5*perSession
	})

	for _, c := range []tls.Certificate{revCert, oldCert} {
		if _, err := e.d.Transport.Revoke(ctx, c.Leaf.SerialNumber, 1); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.d.Transport.RevokeName(ctx, "ms-rev/acc-c", true, 1); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		waitFor(t, 20*time.Second, "the revoked account's session records and consumers removed, seen on node "+n.cfg.Name, func() bool {
			s, _, _ := streamState(t, n, "$MQTT_sess")
			_, _, mc := streamState(t, n, "$MQTT_msgs")
			return s == s0+2 && mc == c0+2*perSession
		})
	}
	// The node that accepted a session and removed it no longer counts it
	// against the account (the engine tells the others nothing).
	for _, s := range []struct {
		node int
		cid  string
	}{{0, revoked}, {2, live}, {1, underCA}} {
		if _, ok := nodes[s.node].auth.sessions.of(clientIDOwner(s.cid))[s.cid]; ok {
			t.Errorf("node %s still counts the removed session %s", nodes[s.node].cfg.Name, s.cid)
		}
	}

	// Their gateways, not revoked, publish QoS 1 to both subtrees.
	const msgs = 5
	for _, acc := range []string{revoked, kept} {
		path := acc + "/gw"
		gw := e.mustDial(t, nodes[2].MQTTAddr(), e.device(t, path), path)
		for i := range msgs {
			if tok := gw.Publish(path+"/snapshots", 1, false, fmt.Sprint(i)); !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
				t.Fatalf("publish %s: %v", path, tok.Error())
			}
		}
	}
	// Only the kept session's messages are held (the stream keeps a
	// message while a consumer is interested in it).
	for _, n := range nodes {
		waitFor(t, 20*time.Second, "the kept and renewed sessions' consumers and the kept session's messages only, on node "+n.cfg.Name, func() bool {
			m, _, mc := streamState(t, n, "$MQTT_msgs")
			return m == msgs && mc == c0+2*perSession
		})
	}
	// Still refused, on every node.
	for _, n := range nodes {
		if c, err := e.dial(t, n.MQTTAddr(), revCert, revoked, false); err == nil {
			c.Disconnect(0)
			t.Fatalf("revoked account resumed its session on node %s", n.cfg.Name)
		}
	}

	// The kept account resumes (on another node) and receives them all.
	got := make(chan string, 2*msgs)
	opts := mqtt.NewClientOptions().AddBroker("ssl://" + nodes[2].MQTTAddr()).SetClientID(kept).
		SetCleanSession(false).SetAutoReconnect(false).SetTLSConfig(tlsConfig(e, keptCert)).
		SetDefaultPublishHandler(func(_ mqtt.Client, m mqtt.Message) { got <- string(m.Payload()) })
	var c mqtt.Client
	waitFor(t, 20*time.Second, "the kept account resumes its session", func() bool {
		c = mqtt.NewClient(opts)
		tok := c.Connect()
		return tok.WaitTimeout(20*time.Second) && tok.Error() == nil
	})
	t.Cleanup(func() { c.Disconnect(50) })
	seen := map[string]bool{}
	deadline := time.After(20 * time.Second)
	for len(seen) < msgs {
		select {
		case p := <-got:
			seen[p] = true
		case <-deadline:
			t.Fatalf("the kept session received %d of %d messages", len(seen), msgs)
		}
	}
}

// FuzzSessionRecordConsumers: whatever the record read back under a
// client ID holds, parseSessionRecord never panics, returns only the
// client ID's own persistent session, and only consumer names that are
// one subject token (the engine client deletes them by name).
func FuzzSessionRecordConsumers(f *testing.F) {
	f.Add([]byte(`{"id":"ms/acc","cons":{"1":{"durable_name":"abc_XYZ"}},"pubrel":{"durable_name":"def"}}`), "ms/acc")
	f.Add([]byte(`{"id":"ms/acc","clean":true}`), "ms/acc")
	f.Add([]byte(`{"id":"ms/other","cons":{"1":{"durable_name":"x"}}}`), "ms/acc")
	f.Add([]byte(`{"id":"ms/acc","cons":{"1":{"durable_name":"a.>"},"2":null}}`), "ms/acc")
	f.Add([]byte(`not json`), "ms/acc")
	f.Fuzz(func(t *testing.T, data []byte, cid string) {
		ps, err := parseSessionRecord(data, cid)
		if err != nil {
			return
		}
		if ps.ID != cid || ps.Clean {
			t.Fatalf("record of %q clean=%v returned for %q", ps.ID, ps.Clean, cid)
		}
		for _, cc := range ps.Cons {
			if cc != nil && strings.ContainsAny(cc.Durable, ".*> \t\r\n") {
				t.Fatalf("consumer name %q returned", cc.Durable)
			}
		}
		if ps.PubRel != nil && strings.ContainsAny(ps.PubRel.Durable, ".*> \t\r\n") {
			t.Fatalf("PUBREL consumer name %q returned", ps.PubRel.Durable)
		}
	})
}
