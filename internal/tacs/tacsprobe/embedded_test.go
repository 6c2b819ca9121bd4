package tacsprobe

import (
	"context"
	"crypto/tls"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/platform"
	"github.com/fieldtrust/fieldtrust/internal/platform/platformtest"
	"github.com/fieldtrust/fieldtrust/internal/tacs"
)

// TestEmbeddedBroker runs the adversarial table against `fieldtrust up`
// with its embedded broker: the reference the clustered tier must match.
func TestEmbeddedBroker(t *testing.T) { runUp(t, platform.Config{}) }

// TestClusterUp runs the table against `fieldtrust up --broker cluster`:
// a single node of the clustered tier with the platform's services on it
// as MQTT clients (CRL publisher, commands, ingest, rules) and the
// platform's revocation service revalidating the node.
func TestClusterUp(t *testing.T) { runUp(t, platform.Config{Broker: platform.BrokerCluster}) }

func runUp(t *testing.T, cfg platform.Config) {
	env := platformtest.Start(t, cfg)
	admin := env.Service(t, "admin", tacs.RoleAdmin).TLS
	waitAccepted(t, env.MQTTAddr, env, admin)
	Run(t, &Target{
		Addrs: []string{env.MQTTAddr},
		Roots: env.Roots,
		Account: func(t testing.TB, path string) tls.Certificate {
			return env.Identity(t, path, false).TLS
		},
		Service: func(t testing.TB, name, role string) tls.Certificate { return env.Service(t, name, role).TLS },
		// The platform rereads the roles once a second and revalidates
		// the broker's connections when they changed.
		SetRole: func(t testing.TB, name, role string) {
			if err := env.D.Store.SetServiceRole(context.Background(), name, role); err != nil {
				t.Fatal(err)
			}
		},
		Site: func(t testing.TB, account string) tls.Certificate { return env.Site(t, account) },
		Revoke: func(t testing.TB, path string) {
			p, err := pki.ParsePath(path)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := env.D.Transport.RevokePath(context.Background(), p, 1); err != nil {
				t.Fatal(err)
			}
		},
	})
}

// waitAccepted waits until the platform picked up the admin role (it polls
// the store once a second).
func waitAccepted(t *testing.T, addr string, env *platformtest.Env, cert tls.Certificate) {
	deadline := time.Now().Add(15 * time.Second)
	for {
		c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker("ssl://" + addr).SetClientID("service:admin:wait").
			SetTLSConfig(&tls.Config{RootCAs: env.Roots, Certificates: []tls.Certificate{cert}}).SetAutoReconnect(false))
		tok := c.Connect()
		if tok.WaitTimeout(10*time.Second) && tok.Error() == nil {
			c.Disconnect(20)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("admin service not accepted: %v", tok.Error())
		}
		time.Sleep(200 * time.Millisecond) // polling a condition with a deadline
	}
}
