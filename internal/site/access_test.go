package site_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"
	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/fieldtrust/fieldtrust/internal/envelope"
	"github.com/fieldtrust/fieldtrust/internal/logbuf"
	"github.com/fieldtrust/fieldtrust/internal/platform"
	"github.com/fieldtrust/fieldtrust/internal/platform/platformtest"
	"github.com/fieldtrust/fieldtrust/internal/site"
	"github.com/fieldtrust/fieldtrust/internal/snapshot"
	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/tacs"
	"github.com/fieldtrust/fieldtrust/internal/topic"
)

// connectV3 connects an MQTT 3.1.1 client with cert to addr.
func connectV3(t *testing.T, addr string, roots *x509.CertPool, cert tls.Certificate, clientID string) (mqtt.Client, error) {
	t.Helper()
	c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker("ssl://" + addr).SetClientID(clientID).
		SetAutoReconnect(false).SetConnectTimeout(5 * time.Second).
		SetTLSConfig(&tls.Config{RootCAs: roots, Certificates: []tls.Certificate{cert}}))
	tok := c.Connect()
	if !tok.WaitTimeout(10 * time.Second) {
		return nil, context.DeadlineExceeded
	}
	if err := tok.Error(); err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Disconnect(0) })
	return c, nil
}

// TestSiteLocalAccess: only the account's gateways may connect to its
// site; the local broker's TACS holds between them.
func TestSiteLocalAccess(t *testing.T) {
	e := startPlatform(t)
	dir := issueSite(t, e, account)
	s := startSite(t, site.Config{Dir: dir, Upstream: e.MQTTAddr})
	for _, tc := range []struct {
		name string
		cert tls.Certificate
		ok   bool
	}{
		{"a gateway of the account", e.Identity(t, account+"/gw-1", false).TLS, true},
		{"a gateway of another account of the master", e.Identity(t, "ms-1/acc-2/gw-1", false).TLS, false},
		{"a gateway of another master", e.Identity(t, "ms-2/acc-1/gw-1", false).TLS, false},
		{"the account's own certificate", e.Identity(t, account, false).TLS, false},
		{"the master account's certificate", e.Identity(t, "ms-1", false).TLS, false},
		{"a platform service", e.Service(t, "ingest-2", tacs.RoleSnapshotReader).TLS, false},
		{"another account's site", siteTLS(t, issueSite(t, e, "ms-1/acc-2")), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := connectV3(t, s.addr, e.Roots, tc.cert, "c-"+strings.ReplaceAll(tc.name, " ", "-"))
			if (err == nil) != tc.ok {
				t.Fatalf("connect: %v; want ok=%v", err, tc.ok)
			}
		})
	}
	// Between the site's gateways, TACS as on the platform: gw-1 cannot
	// read gw-2's commands.
	c, err := connectV3(t, s.addr, e.Roots, e.Identity(t, account+"/gw-1", false).TLS, "gw-1-sub")
	if err != nil {
		t.Fatal(err)
	}
	foreign := topic.CommandsOf(account + "/gw-2")
	tok := c.Subscribe(foreign, 1, nil)
	if !tok.WaitTimeout(10*time.Second) || tok.(*mqtt.SubscribeToken).Result()[foreign] != 0x80 {
		t.Fatalf("gw-1 subscribed to %s at the site: %v %v", foreign, tok.Error(), tok.(*mqtt.SubscribeToken).Result())
	}
}

// connectV5 connects an MQTT 5 client with cert to addr (MQTT 5 answers
// each refused publish with a reason code instead of closing).
func connectV5(t *testing.T, addr string, roots *x509.CertPool, cert tls.Certificate, clientID string, will *paho.WillMessage) (*paho.Client, error) {
	t.Helper()
	conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{cert}, ServerName: "127.0.0.1"})
	if err != nil {
		return nil, err
	}
	c := paho.NewClient(paho.ClientConfig{Conn: packets.NewThreadSafeConn(conn)})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Connect(ctx, &paho.Connect{ClientID: clientID, CleanStart: true, KeepAlive: 30, WillMessage: will}); err != nil {
		conn.Close()
		return nil, err
	}
	t.Cleanup(func() { c.Disconnect(&paho.Disconnect{}) })
	return c, nil
}

// TestSiteAtThePlatform: what a site certificate may do at the platform is
// decided by the platform's TACS (rule 5), whatever the site runs: the
// gateway→platform channels of its own account up, the platform→gateway
// channels down, nothing else. A flood of refused publishes is logged once,
// not per message. Ingest stores what a site forwards when the gateway
// signed it, and refuses what the site forged.
func TestSiteAtThePlatform(t *testing.T) {
	var logs logbuf.Buffer
	e := platformtest.Start(t, platform.Config{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	dir := issueSite(t, e, account)
	cert := siteTLS(t, dir)
	c, err := connectV5(t, e.MQTTAddr, e.Roots, cert, "site:"+account, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, tc := range []struct {
		filter string
		ok     bool
	}{
		{account + "/+/commands", true},
		{account + "/+/firmware", true},
		{topic.CRLs, true},
		{"#", false},
		{account + "/#", false},
		{account + "/+/snapshots", false},
		{"ms-1/acc-2/+/commands", false},
		{"ms-1/+/+/commands", false},
		{"$SYS/#", false},
	} {
		_, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: tc.filter, QoS: 1}}})
		if (err == nil) != tc.ok {
			t.Errorf("subscribe %s: %v; want ok=%v", tc.filter, err, tc.ok)
		}
	}
	for _, tc := range []struct {
		topic  string
		retain bool
		ok     bool
	}{
		{topic.StatusOf(account + "/gw-1"), true, true},
		{topic.FirmwareStatusOf(account + "/gw-1"), false, true},
		{topic.CommandResultsOf(account + "/gw-1"), false, true},
		{topic.SnapshotsOf("ms-1/acc-2/gw-1"), false, false},
		{topic.SnapshotsOf("ms-2/acc-1/gw-1"), false, false},
		{topic.CommandsOf(account + "/gw-1"), false, false},
		{topic.FirmwareOf(account + "/gw-1"), true, false},
		{topic.Of(account+"/gw-1", topic.Events), false, false},
		{topic.CRLTransport, true, false},
		{account, false, false},
	} {
		_, err := c.Publish(ctx, &paho.Publish{Topic: tc.topic, QoS: 1, Retain: tc.retain, Payload: []byte("{}")})
		if (err == nil) != tc.ok {
			t.Errorf("publish %s (retain %v): %v; want ok=%v", tc.topic, tc.retain, err, tc.ok)
		}
	}
	// A will outside the subtree refuses the connection.
	if _, err := connectV5(t, e.MQTTAddr, e.Roots, cert, "site:"+account+":will", &paho.WillMessage{Topic: topic.StatusOf("ms-1/acc-2/gw-1"), QoS: 1, Retain: true, Payload: []byte("x")}); err == nil {
		t.Error("the platform accepted a site's will on another account's status topic")
	}

	// Fifty refused publishes on a fresh connection: one log line (the
	// broker logs refusals at most once a second per connection), not
	// fifty.
	fc, err := connectV5(t, e.MQTTAddr, e.Roots, cert, "site:"+account+":flood", nil)
	if err != nil {
		t.Fatal(err)
	}
	flood := topic.SnapshotsOf("ms-1/acc-9/gw-9")
	for range 50 {
		if _, err := fc.Publish(ctx, &paho.Publish{Topic: flood, QoS: 1, Payload: []byte("x")}); err == nil {
			t.Fatal("the platform accepted a snapshot of another account from the site")
		}
	}
	n := 0
	for _, l := range strings.Split(logs.String(), "\n") {
		if strings.Contains(l, "mqtt refused") && strings.Contains(l, "client=site:"+account+":flood") {
			n++
		}
	}
	if n < 1 || n > 5 {
		t.Errorf("%d log lines for 50 refused publishes; want one (rate-limited), not one per message\n%s", n, logs.String())
	}

	// Ingest: a snapshot forwarded by the site is stored when its gateway
	// signed it, and refused when another signed it (the site has no e2e
	// key of its own, and a stolen gateway key signs for that gateway
	// only).
	gw1, gw2 := newGateway(t, e, account+"/gw-1"), newGateway(t, e, account+"/gw-2")
	forged, err := envelope.NewSealer(envelope.SealOptions{Recipients: []*x509.Certificate{e.IngestCert}, Signer: gw2.id.E2E})
	if err != nil {
		t.Fatal(err)
	}
	b := snapshot.Builder{Device: "pump"}
	enc, _, _ := b.Next(time.Now().UnixMilli(), []snapshot.Value{{Channel: "p", Value: 1}})
	env, _ := forged.Seal(enc)
	if _, err := c.Publish(ctx, &paho.Publish{Topic: topic.SnapshotsOf(gw1.path), QoS: 1, Payload: env}); err != nil {
		t.Fatalf("publish the forged snapshot: %v", err)
	}
	waitFor(t, "ingest to refuse the forged snapshot", 30*time.Second, func() bool {
		rs, err := e.D.Store.Rejects(ctx, time.Time{}, time.Time{}, 10)
		return err == nil && len(rs) > 0 && rs[0].Topic == topic.SnapshotsOf(gw1.path)
	})
	if _, err := c.Publish(ctx, &paho.Publish{Topic: topic.SnapshotsOf(gw1.path), QoS: 1, Payload: gw1.seal()}); err != nil {
		t.Fatalf("publish gw-1's snapshot: %v", err)
	}
	waitFor(t, "ingest to store gw-1's snapshot forwarded by the site", 30*time.Second, func() bool { return stored(t, e) == 1 })
	recs, err := e.D.Store.QuerySnapshots(ctx, store.SnapshotQuery{Gateway: gw1.path})
	if err != nil || len(recs) != 1 || recs[0].Seq != 1 {
		t.Fatalf("stored for gw-1: %+v %v", recs, err)
	}
}
