package site_test

import (
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/queue"
	"github.com/fieldtrust/fieldtrust/internal/site"
)

// TestSiteQueueFull: with the WAN down and the site's queue full, the site
// stops taking messages instead of dropping any: the local broker holds
// them in the bridge's session (the gateways are slowed, not refused), and
// once the link is back everything reaches the store, in order.
func TestSiteQueueFull(t *testing.T) {
	e := startPlatform(t)
	dir := issueSite(t, e, account)
	link := startProxy(t, e.MQTTAddr)
	ev := &events{}
	s := startSite(t, site.Config{Dir: dir, Upstream: link.addr(), Events: ev.add, Queue: queue.Options{MaxItems: 5}})
	waitFor(t, "the site connected", 30*time.Second, func() bool { return ev.count("upstream-connected") >= 1 })
	link.setCut(true)
	waitFor(t, "the site to notice the outage", 30*time.Second, func() bool { return ev.count("upstream-lost") >= 1 })

	g := newGateway(t, e, account+"/gw-1")
	if err := g.connect(s.addr); err != nil {
		t.Fatal(err)
	}
	defer g.close()
	const n = 30
	for range n {
		if err := g.publish(g.seal(), func() string { return s.addr }); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "the site queue full", 30*time.Second, func() bool { return ev.count("queue-full") >= 1 })
	if got := stored(t, e); got != 0 {
		t.Fatalf("%d stored with the link cut", got)
	}
	link.setCut(false)
	waitFor(t, "everything stored", 60*time.Second, func() bool { return stored(t, e) == n })
	storedChains(t, e, []*gateway{g}, n)
}
