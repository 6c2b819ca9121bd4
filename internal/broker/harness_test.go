package broker

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	paholog "github.com/eclipse/paho.golang/paho/log"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/fieldtrust/fieldtrust/internal/tacs"
)

// wait bounds every blocking step so a bug fails the test instead of
// hanging it. It is never a performance threshold.
const wait = 10 * time.Second

// testIdentify is the stand-in for the PKI's Identify: the leaf CN is the
// account path, unless the chain runs through the services CA, in which
// case the CN is a service name whose role comes from roles. Serial numbers
// in revoked are refused.
type testIdentify struct {
	roles   map[string]string
	revoked sync.Map // *big.Int string → true
}

func (ti *testIdentify) identify(cs tls.ConnectionState) (tacs.Subject, error) {
	if len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) < 2 {
		return tacs.Subject{}, errors.New("no verified chain")
	}
	chain := cs.VerifiedChains[0]
	leaf := chain[0]
	if _, ok := ti.revoked.Load(leaf.SerialNumber.String()); ok {
		return tacs.Subject{}, fmt.Errorf("certificate %s revoked", leaf.SerialNumber)
	}
	if chain[1].Subject.CommonName == "services-ca" {
		role, ok := ti.roles[leaf.Subject.CommonName]
		if !ok {
			return tacs.Subject{}, fmt.Errorf("service %q has no role", leaf.Subject.CommonName)
		}
		return tacs.ServiceSubject(leaf.Subject.CommonName, role), nil
	}
	return tacs.Account(leaf.Subject.CommonName), nil
}

func (ti *testIdentify) revoke(c tls.Certificate) {
	ti.revoked.Store(new(big.Int).Set(c.Leaf.SerialNumber).String(), true)
}

type env struct {
	t     testing.TB
	tune  func(*Config) // applied to every broker the env starts
	pki   *testPKI
	id    *testIdentify
	dir   string
	reg   *prometheus.Registry
	b     *Broker
	stop  context.CancelFunc
	done  chan error
	srvTL tls.Certificate
}

func newEnv(t *testing.T) *env {
	t.Helper()
	return newEnvWith(t, nil)
}

func (e *env) logger() *slog.Logger {
	if os.Getenv("BROKER_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

func (e *env) config(addr string) Config {
	c := Config{
		Addr:       addr,
		TLS:        &tls.Config{Certificates: []tls.Certificate{e.srvTL}, ClientCAs: e.pki.pool},
		Identify:   e.id.identify,
		StateDir:   e.dir,
		Logger:     e.logger(),
		Registerer: e.reg,
	}
	if e.tune != nil {
		e.tune(&c)
	}
	return c
}

// newEnvWith starts a broker whose config tune adjusts.
func newEnvWith(t testing.TB, tune func(*Config)) *env {
	t.Helper()
	e := &env{
		t:    t,
		tune: tune,
		pki:  newTestPKI(t),
		id: &testIdentify{roles: map[string]string{
			"admin": tacs.RoleAdmin, "ingest": tacs.RoleSnapshotReader, "ingest-2": tacs.RoleSnapshotReader,
			"firmware": tacs.RoleFirmwareWriter,
		}},
		dir: t.TempDir(),
		reg: prometheus.NewRegistry(),
	}
	e.srvTL = e.pki.server()
	e.start()
	t.Cleanup(e.shutdown)
	return e
}

// start runs a broker on the env's state dir, on the previous address if
// there was one (so a restarted broker is found where clients expect it).
func (e *env) start() {
	e.t.Helper()
	addr := "127.0.0.1:0"
	if e.b != nil {
		addr = e.b.Addr()
	}
	b, err := New(e.config(addr))
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	e.b, e.stop, e.done = b, cancel, make(chan error, 1)
	go func() { e.done <- b.Serve(ctx) }()
}

func (e *env) shutdown() {
	if e.stop == nil {
		return
	}
	e.stop()
	select {
	case err := <-e.done:
		if err != nil {
			e.t.Errorf("Serve: %v", err)
		}
	case <-time.After(wait):
		e.t.Error("broker did not stop")
	}
	e.stop = nil
}

func (e *env) restart() {
	e.shutdown()
	e.start()
}

func (e *env) clientTLS(c tls.Certificate) *tls.Config {
	return &tls.Config{Certificates: []tls.Certificate{c}, RootCAs: e.pki.pool, ServerName: "127.0.0.1"}
}

// v5 is a connected MQTT 5 test client; received messages arrive on msgs.
type v5 struct {
	*paho.Client
	msgs chan *paho.Publish
}

type v5opts struct {
	clientID string
	clean    bool
	expiry   uint32
	will     *paho.WillMessage
}

func (e *env) dialV5(c tls.Certificate, o v5opts) (*v5, *paho.Connack, error) {
	e.t.Helper()
	conn, err := tls.DialWithDialer(&netDialer, "tcp", e.b.Addr(), e.clientTLS(c))
	if err != nil {
		return nil, nil, err
	}
	cl := &v5{msgs: make(chan *paho.Publish, 1000)}
	cl.Client = paho.NewClient(paho.ClientConfig{
		Conn:        conn,
		PingHandler: noPings{},
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			cl.msgs <- pr.Packet
			return true, nil
		}},
	})
	if o.clientID == "" {
		o.clientID = fmt.Sprintf("c%d", serialCounter.Add(1))
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	// No pings: paho.golang v0.23.0's pinger can write a PINGREQ in the
	// middle of another packet's multi-buffer write (seen on the wire as
	// "c0 00" inside a SUBSCRIBE), which the broker rightly rejects as
	// malformed. The broker caps keepalive 0 to its maximum and says so in
	// CONNACK (Server Keep Alive), which starts paho's pinger, so the
	// pinger is replaced; test connections are far shorter than the
	// keepalive.
	cp := &paho.Connect{ClientID: o.clientID, CleanStart: o.clean, KeepAlive: 0, WillMessage: o.will,
		Username: "ms-acc-1", UsernameFlag: true} // a lying username: ignored by the broker
	if o.expiry > 0 {
		cp.Properties = &paho.ConnectProperties{SessionExpiryInterval: &o.expiry}
	}
	ack, err := cl.Connect(ctx, cp)
	if err != nil {
		_ = conn.Close()
		return nil, ack, err
	}
	e.t.Cleanup(func() { _ = cl.Disconnect(&paho.Disconnect{}) })
	return cl, ack, nil
}

func (e *env) v5(c tls.Certificate) *v5 {
	e.t.Helper()
	cl, _, err := e.dialV5(c, v5opts{clean: true})
	if err != nil {
		e.t.Fatalf("connect %s: %v", c.Leaf.Subject.CommonName, err)
	}
	return cl
}

// subscribe returns the SUBACK reason code for one filter.
func (c *v5) subscribe(t *testing.T, filter string, qos byte) byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	sa, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: qos}}})
	if sa == nil {
		t.Fatalf("subscribe %q: %v", filter, err)
	}
	return sa.Reasons[0]
}

// publish returns the PUBACK reason code (0 for QoS 0).
func (c *v5) publish(t *testing.T, topic string, payload string, qos byte, retain bool) byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	resp, err := c.Publish(ctx, &paho.Publish{Topic: topic, Payload: []byte(payload), QoS: qos, Retain: retain})
	if resp == nil {
		t.Fatalf("publish %q: %v", topic, err)
	}
	return resp.ReasonCode
}

// expect waits for the next message and checks it.
func (c *v5) expect(t *testing.T, topic, payload string) {
	t.Helper()
	select {
	case m := <-c.msgs:
		if m.Topic != topic || string(m.Payload) != payload {
			t.Fatalf("got %s %q; want %s %q", m.Topic, m.Payload, topic, payload)
		}
	case <-time.After(wait):
		t.Fatalf("no message on %s", topic)
	}
}

// fence proves that nothing else is queued: the sender publishes a marker
// to a topic the receiver is subscribed to, and the receiver must see the
// marker as its next message. Messages from one publisher are delivered in
// order, so anything wrongly delivered before the marker shows up first.
func fence(t *testing.T, from, to *v5, topic string) {
	t.Helper()
	from.publish(t, topic, "fence", 1, false)
	to.expect(t, topic, "fence")
}

var netDialer = net.Dialer{Timeout: wait}

// noPings is a paho.golang Pinger that never pings (see dialV5).
type noPings struct{}

func (noPings) Run(ctx context.Context, _ net.Conn, _ uint16) error { <-ctx.Done(); return nil }
func (noPings) PacketSent()                                         {}
func (noPings) PacketReceived()                                     {}
func (noPings) PingResp()                                           {}
func (noPings) SetDebug(paholog.Logger)                             {}
