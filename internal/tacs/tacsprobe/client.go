// Package tacsprobe is the TACS adversarial table as a black-box test
// that runs against any broker address: the embedded broker (through
// `fieldtrust up`, TestEmbeddedBroker) and the clustered tier
// (internal/cluster TestClusterAdversarial) pass the same rows. Each row
// is an attack a client can make over MQTT 3.1.1 — the protocol both tiers
// speak — through subscriptions, publishes, wills, retained messages,
// session resumption, $-topics and revocation, with clients spread over
// the target's nodes ("a device on node B").
//
// A row asserts what an honest observer sees: an attack must never
// deliver its message, and a positive control in the same row (a fence
// message published afterwards, an own will, an own queued message) shows
// that the path it tried works for those entitled to it, so a row cannot
// pass because nothing was delivered at all.
package tacsprobe

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// Target is the broker tier under test.
type Target struct {
	// Addrs are the nodes' MQTT over mTLS addresses; client i of a row
	// connects to Addrs[i%len(Addrs)].
	Addrs []string
	Roots *x509.CertPool
	// Account issues a transport certificate for an identity path.
	Account func(t testing.TB, path string) tls.Certificate
	// Service issues a transport service certificate with a role.
	Service func(t testing.TB, name, role string) tls.Certificate
	// SetRole changes a service's role in the store (SetServiceRole) and
	// lets the tier notice as it does in production (its revocation loop
	// rereads the roles); it does not wait — the row waits until a fresh
	// connection of the service has the new rights.
	SetRole func(t testing.TB, name, role string)
	// Revoke revokes an identity path (pki revoke); the target's
	// revocation service must end its sessions within 5 s.
	Revoke func(t testing.TB, path string)
	// Site issues a site certificate of an account (pki issue ACCOUNT
	// --site); nil skips the site row.
	Site func(t testing.TB, account string) tls.Certificate
}

// wait bounds every wait for an expected event (not a timing threshold:
// the events normally arrive in milliseconds).
const wait = 15 * time.Second

var seq atomic.Int64

type msg struct{ topic, payload string }

// client is an MQTT 3.1.1 client that records what it receives.
type client struct {
	c    mqtt.Client
	id   string
	conn atomic.Pointer[net.Conn]
	lost chan struct{}

	mu   sync.Mutex
	got  []msg
	more chan struct{}
}

type opts struct {
	clientID string // default NAME:probe-N
	clean    bool
	will     *msg
	willQoS  byte
}

// connect connects cert (whose subject name is name) to node i.
func (tg *Target) connect(t testing.TB, i int, cert tls.Certificate, name string, o opts) (*client, error) {
	t.Helper()
	if o.clientID == "" {
		o.clientID = fmt.Sprintf("%s:probe-%d", name, seq.Add(1))
	}
	cl := &client{id: o.clientID, lost: make(chan struct{}), more: make(chan struct{}, 1)}
	var lostOnce sync.Once
	mo := mqtt.NewClientOptions().AddBroker("ssl://" + tg.Addrs[i%len(tg.Addrs)]).SetClientID(o.clientID).
		SetCleanSession(o.clean).SetAutoReconnect(false).SetConnectRetry(false).SetKeepAlive(30 * time.Second).
		SetTLSConfig(&tls.Config{RootCAs: tg.Roots, Certificates: []tls.Certificate{cert}}).
		SetOrderMatters(false).
		SetConnectionLostHandler(func(mqtt.Client, error) { lostOnce.Do(func() { close(cl.lost) }) }).
		SetDefaultPublishHandler(cl.record).
		SetCustomOpenConnectionFn(func(uri *url.URL, mo mqtt.ClientOptions) (net.Conn, error) {
			d := &tls.Dialer{Config: mo.TLSConfig, NetDialer: &net.Dialer{Timeout: wait}}
			nc, err := d.Dial("tcp", uri.Host)
			if err == nil {
				cl.conn.Store(&nc)
			}
			return nc, err
		})
	if o.will != nil {
		mo.SetWill(o.will.topic, o.will.payload, o.willQoS, false)
	}
	cl.c = mqtt.NewClient(mo)
	tok := cl.c.Connect()
	if !tok.WaitTimeout(wait) {
		return nil, fmt.Errorf("connect %s: timed out", name)
	}
	if err := tok.Error(); err != nil {
		return nil, fmt.Errorf("connect %s: %w", name, err)
	}
	t.Cleanup(func() { cl.c.Disconnect(20) })
	return cl, nil
}

func (tg *Target) mustConnect(t testing.TB, i int, cert tls.Certificate, name string, o opts) *client {
	t.Helper()
	cl, err := tg.connect(t, i, cert, name, o)
	if err != nil {
		t.Fatal(err)
	}
	return cl
}

func (cl *client) record(_ mqtt.Client, m mqtt.Message) {
	cl.mu.Lock()
	cl.got = append(cl.got, msg{m.Topic(), string(m.Payload())})
	cl.mu.Unlock()
	select {
	case cl.more <- struct{}{}:
	default:
	}
}

// subscribe reports whether the broker granted filter. A broker may also
// close the connection instead (an MQTT 3.1.1 refusal); that counts as
// refused.
func (cl *client) subscribe(t testing.TB, filter string, qos byte) bool {
	t.Helper()
	tok := cl.c.Subscribe(filter, qos, nil)
	if !tok.WaitTimeout(wait) {
		select {
		case <-cl.lost:
			return false
		default:
		}
		t.Fatalf("subscribe %q: no SUBACK", filter)
	}
	if tok.Error() != nil {
		return false
	}
	// One filter per SUBSCRIBE: its single code (paho keys the result
	// by the filter without a "$share/GROUP/" prefix).
	codes := tok.(*mqtt.SubscribeToken).Result()
	if len(codes) != 1 {
		t.Fatalf("subscribe %q: %d return codes", filter, len(codes))
	}
	for _, code := range codes {
		return code < 0x80
	}
	return false
}

func (cl *client) mustSubscribe(t testing.TB, filter string, qos byte) {
	t.Helper()
	if !cl.subscribe(t, filter, qos) {
		t.Fatalf("%s: subscribe %q refused", cl.id, filter)
	}
}

// publish sends a message and, for QoS 1, waits for its PUBACK or for the
// broker to close the connection (how MQTT 3.1.1 refuses a QoS 1 publish).
func (cl *client) publish(t testing.TB, topic, payload string, qos byte, retain bool) {
	t.Helper()
	tok := cl.c.Publish(topic, qos, retain, payload)
	if qos == 0 {
		return
	}
	select {
	case <-tok.Done():
	case <-cl.lost:
	case <-time.After(wait):
		// A refusing broker may also just not acknowledge; the row
		// decides by what observers see.
	}
}

// expect waits until a message with topic and payload arrived.
func (cl *client) expect(t testing.TB, topic, payload string) {
	t.Helper()
	deadline := time.After(wait)
	for {
		if cl.has(topic, payload) {
			return
		}
		select {
		case <-cl.more:
		case <-deadline:
			t.Fatalf("%s: %s=%q not delivered within %v (got %v)", cl.id, topic, payload, wait, cl.received())
		}
	}
}

func (cl *client) has(topic, payload string) bool {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	for _, m := range cl.got {
		if m.topic == topic && m.payload == payload {
			return true
		}
	}
	return false
}

// never fails if any received message carries payload.
func (cl *client) never(t testing.TB, payload string) {
	t.Helper()
	cl.mu.Lock()
	defer cl.mu.Unlock()
	for _, m := range cl.got {
		if m.payload == payload {
			t.Fatalf("%s received the attack's message on %s", cl.id, m.topic)
		}
	}
}

func (cl *client) received() []msg {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	return append([]msg(nil), cl.got...)
}

// abort breaks the connection without DISCONNECT, as a dead link does, so
// the broker sends the will.
func (cl *client) abort() {
	if p := cl.conn.Load(); p != nil {
		(*p).Close()
	}
}

// disconnected reports whether the broker ended the connection within d.
func (cl *client) disconnected(d time.Duration) bool {
	select {
	case <-cl.lost:
		return true
	case <-time.After(d):
		return false
	}
}

// fence publishes a fresh payload from pub to topic and waits until obs
// received it: what was published before on pub's node has been routed.
func fence(t testing.TB, pub, obs *client, topic string) {
	t.Helper()
	p := fmt.Sprintf("fence-%d", seq.Add(1))
	pub.publish(t, topic, p, 1, false)
	obs.expect(t, topic, p)
}
