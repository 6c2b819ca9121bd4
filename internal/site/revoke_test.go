package site_test

import (
	"context"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/fieldtrust/fieldtrust/internal/site"
)

// TestSiteRevocation: a gateway revoked on the platform is disconnected at
// the site (the site applies the platform's CRL bundle and revalidates
// every connection), refused when it tries again, and still refused after
// the site restarts while the WAN is down (the bundle is kept on disk).
func TestSiteRevocation(t *testing.T) {
	for _, broker := range brokerTiers {
		t.Run(broker, func(t *testing.T) { testSiteRevocation(t, broker) })
	}
}

func testSiteRevocation(t *testing.T, broker string) {
	e := startPlatformOn(t, broker)
	dir := issueSite(t, e, account)
	link := startProxy(t, e.MQTTAddr)
	ev := &events{}
	cfg := site.Config{Dir: dir, Upstream: link.addr(), Events: ev.add}
	s := startSite(t, cfg)
	cfg.MQTTAddr = s.addr
	waitFor(t, "the site connected to the platform", 30*time.Second, func() bool { return ev.count("upstream-connected") >= 1 })
	waitFor(t, "the platform's CRL bundle applied", 30*time.Second, func() bool { return ev.count("crl-applied") >= 1 })

	revoked := e.Identity(t, account+"/gw-r", false)
	other := e.Identity(t, account+"/gw-ok", false)
	lost := make(chan error, 1)
	c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker("ssl://" + s.addr).SetClientID("gw-r").SetAutoReconnect(false).
		SetTLSConfig(tlsConfig(e, revoked.TLS)).SetConnectionLostHandler(func(_ mqtt.Client, err error) { lost <- err }))
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	defer c.Disconnect(0)
	applied := ev.count("crl-applied")
	if _, err := e.D.Transport.Revoke(context.Background(), revoked.TLS.Leaf.SerialNumber, 1); err != nil {
		t.Fatal(err)
	}
	select {
	case <-lost:
	case <-time.After(30 * time.Second):
		t.Fatal("the revoked gateway is still connected to the site 30 s after the revocation")
	}
	waitFor(t, "the new CRL applied", 10*time.Second, func() bool { return ev.count("crl-applied") > applied })
	if _, err := connectV3(t, s.addr, e.Roots, revoked.TLS, "gw-r-again"); err == nil {
		t.Fatal("the site accepted the revoked gateway again")
	}

	// The WAN goes down and the site restarts: the kept CRL still holds.
	link.setCut(true)
	s.stop(t)
	s = startSite(t, cfg)
	if _, err := connectV3(t, s.addr, e.Roots, revoked.TLS, "gw-r-after-restart"); err == nil {
		t.Fatal("after a restart without the platform, the site accepted the revoked gateway")
	}
	if _, err := connectV3(t, s.addr, e.Roots, other.TLS, "gw-ok"); err != nil {
		t.Fatalf("a gateway in good standing: %v", err)
	}
}
