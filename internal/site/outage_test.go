package site_test

import (
	"sync"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/site"
)

// TestWANOutage is issue 16's customer site through a simulated 2-minute
// WAN outage: three gateways behind the site keep publishing sealed,
// hash-chained snapshots while the site's forwarding connection is cut (a
// TCP proxy in the test); the site process is stopped and started again
// in the middle of the outage; the site's reconnect clock is scaled
// (scaledClock, 40×), so it goes through the waits of 2 minutes of failed
// reconnects (1, 2, 4, 8, 16, 30, 30, 30 s) in about 3 s of real time,
// each attempt a real one against the cut link. Then the link comes back:
// nothing is lost in the platform's store, every device's chain is
// complete, and each arrived in order.
func TestWANOutage(t *testing.T) {
	for _, broker := range brokerTiers {
		t.Run(broker, func(t *testing.T) { testWANOutage(t, broker) })
	}
}

func testWANOutage(t *testing.T, broker string) {
	e := startPlatformOn(t, broker)
	dir := issueSite(t, e, account)
	link := startProxy(t, e.MQTTAddr)
	clk := &scaledClock{scale: 40}
	ev := &events{}
	cfg := site.Config{Dir: dir, Upstream: link.addr(), MaxBackoff: 30 * time.Second, After: clk.after, Events: ev.add}
	s := startSite(t, cfg)
	cfg.MQTTAddr = s.addr // a restart keeps the LAN address
	addr := func() string { return s.addr }

	const before, during = 10, 40
	var gws []*gateway
	for _, p := range []string{account + "/gw-1", account + "/gw-2", account + "/gw-3"} {
		g := newGateway(t, e, p)
		if err := g.connect(s.addr); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(g.close)
		gws = append(gws, g)
	}
	publishAll := func(n int) {
		var wg sync.WaitGroup
		for _, g := range gws {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range n {
					if err := g.publish(g.seal(), addr); err != nil {
						t.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
	}
	publishAll(before)
	waitFor(t, "the snapshots before the outage stored", 30*time.Second, func() bool { return stored(t, e) == uint64(len(gws)*before) })

	// The WAN goes down.
	link.setCut(true)
	waitFor(t, "the site to notice the outage", 30*time.Second, func() bool { return ev.count("upstream-lost") >= 1 })
	mark := clk.count()
	publishAll(during / 2)

	// The site dies in the middle of the outage and comes back.
	s.stop(t)
	s = startSite(t, cfg)
	publishAll(during / 2)

	// Two minutes of reconnect attempts, in scaled time.
	waitFor(t, "2 simulated minutes of failed reconnects", 60*time.Second, func() bool {
		sum, _ := clk.since(mark)
		return sum >= 2*time.Minute
	})
	sum, longest := clk.since(mark)
	if longest != cfg.MaxBackoff {
		t.Errorf("longest reconnect wait %v during the outage; want the cap %v", longest, cfg.MaxBackoff)
	}
	if n := stored(t, e); n != uint64(len(gws)*before) {
		t.Fatalf("%d snapshots stored during the outage; the link was cut", n)
	}
	t.Logf("outage: %v of reconnect waits simulated (%d attempts), %d snapshots queued at the site", sum, clk.count()-mark, len(gws)*during)

	// The WAN comes back: the backlog drains in order.
	start := time.Now()
	link.setCut(false)
	waitFor(t, "the backlog stored", 60*time.Second, func() bool { return stored(t, e) == uint64(len(gws)*(before+during)) })
	t.Logf("backlog of %d snapshots stored %v after the link came back", len(gws)*during, time.Since(start).Round(time.Millisecond))
	storedChains(t, e, gws, before+during)
}
