package platform

import (
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/topic"
)

// TestClusterTierUp: `up --broker cluster` runs the platform's services
// as MQTT clients of a cluster node: ingest stores a sealed snapshot
// published through the node, and the CRL bundle the platform published
// is retained there for devices. (The TACS table against it:
// tacsprobe.TestClusterUp.)
func TestClusterTierUp(t *testing.T) {
	r := startWith(t, &testHooks{broker: BrokerCluster})
	r.waitHealth(t, "healthy", func(code int, h healthJSON) bool { return code == 200 && h.Status == "ok" && h.Ingest.Connected })
	path := "ms-1/acc-1/gw-1"
	g := r.gateway(t, path)
	// The cluster binds client IDs to identities.
	if _, err := r.mqttClient(t, "gw-1", g.tls, nil); err == nil {
		t.Fatal("cluster accepted a client ID that does not name the identity")
	}
	c, err := r.mqttClient(t, path, g.tls, nil)
	if err != nil {
		t.Fatal(err)
	}
	r.publishSnapshot(t, c, g, path)
	waitUntil(t, "snapshot stored through the cluster node", func() bool { return r.stored(t) == 1 })

	crl := make(chan []byte, 1)
	if tok := c.Subscribe(topic.CRLTransport, 1, func(_ mqtt.Client, m mqtt.Message) {
		select {
		case crl <- m.Payload():
		default:
		}
	}); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe %s: %v", topic.CRLTransport, tok.Error())
	}
	select {
	case b := <-crl:
		if _, err := pki.ParseCRLBundle(b); err != nil {
			t.Fatalf("retained CRL bundle: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("no retained CRL bundle on the cluster node")
	}
}

// TestBrokerTierRefusals: an unknown tier, and a multi-node cluster on
// SQLite (one file the other nodes cannot share), are refused before
// anything listens.
func TestBrokerTierRefusals(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"unknown", Config{Broker: "mosquitto"}, `--broker "mosquitto"`},
		{"multi-node on SQLite (routes)", Config{Broker: BrokerCluster, Cluster: ClusterOptions{Routes: []string{"127.0.0.1:6222"}}}, errMultiNodeSQLite.Error()},
		{"multi-node on SQLite (first node)", Config{Broker: BrokerCluster, Cluster: ClusterOptions{Addr: "127.0.0.1:0"}}, errMultiNodeSQLite.Error()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.cfg
			cfg.DataDir, cfg.HTTPAddr, cfg.MQTTAddr = t.TempDir(), "127.0.0.1:0", "127.0.0.1:0"
			err := Run(t.Context(), cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Run: %v, want %q", err, tc.want)
			}
		})
	}
}
