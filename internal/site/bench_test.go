package site_test

import (
	"fmt"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/site"
	"github.com/fieldtrust/fieldtrust/internal/topic"
)

// TestSiteThroughput is docs/benchmarks.md "Customer site": forwarding
// throughput through a site against direct publishing to the platform in
// the same run, and how long a backlog built during an outage takes to
// reach the store. Long; it runs only with FIELDTRUST_SITE_BENCH set:
//
//	FIELDTRUST_SITE_BENCH=1 go test -run TestSiteThroughput -v ./internal/site
//
// FIELDTRUST_SITE_GATEWAYS (default 10) gateways publish
// FIELDTRUST_SITE_EACH (default 200) pre-sealed snapshots each, pipelined
// QoS 1, as the gateway's drain does.
func TestSiteThroughput(t *testing.T) {
	if os.Getenv("FIELDTRUST_SITE_BENCH") == "" {
		t.Skip("set FIELDTRUST_SITE_BENCH=1 to measure the customer site")
	}
	gateways, each := envInt("FIELDTRUST_SITE_GATEWAYS", 10), envInt("FIELDTRUST_SITE_EACH", 200)
	e := startPlatform(t)
	dir := issueSite(t, e, account)
	link := startProxy(t, e.MQTTAddr)
	ev := &events{}
	s := startSite(t, site.Config{Dir: dir, Upstream: link.addr(), Events: ev.add})
	waitFor(t, "the site connected", 30*time.Second, func() bool { return ev.count("upstream-connected") >= 1 })

	// run publishes each gateway's snapshots (sealed beforehand) to addr
	// and returns when the store holds them all.
	var total uint64
	run := func(name, addr string, beforeStore func()) (published, storedIn time.Duration) {
		var gws []*gateway
		var envs [][][]byte
		for i := range gateways {
			g := newGateway(t, e, fmt.Sprintf("%s/%s-%d", account, name, i))
			if err := g.connect(addr); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(g.close)
			var list [][]byte
			for range each {
				list = append(list, g.seal())
			}
			gws, envs = append(gws, g), append(envs, list)
		}
		start := time.Now()
		var wg sync.WaitGroup
		for i, g := range gws {
			wg.Add(1)
			go func() {
				defer wg.Done()
				g.mu.Lock()
				c := g.c
				g.mu.Unlock()
				toks := make([]interface{ WaitTimeout(time.Duration) bool }, 0, each)
				for _, env := range envs[i] {
					toks = append(toks, c.Publish(topic.SnapshotsOf(g.path), 1, false, env))
				}
				for _, tok := range toks {
					if !tok.WaitTimeout(2 * time.Minute) {
						t.Error("no PUBACK within 2 min")
						return
					}
				}
			}()
		}
		wg.Wait()
		published = time.Since(start)
		if beforeStore != nil {
			beforeStore()
			start = time.Now()
		}
		total += uint64(gateways * each)
		waitFor(t, name+" stored", 10*time.Minute, func() bool { return stored(t, e) >= total })
		return published, time.Since(start)
	}
	n := gateways * each
	_, direct := run("direct", e.MQTTAddr, nil)
	_, via := run("site", s.addr, nil)
	t.Logf("| direct to the platform | %d gateways × %d | %.1f s | %.0f snapshots/s |", gateways, each, direct.Seconds(), float64(n)/direct.Seconds())
	t.Logf("| through the site | %d gateways × %d | %.1f s | %.0f snapshots/s (%.2f of direct) |", gateways, each, via.Seconds(), float64(n)/via.Seconds(), direct.Seconds()/via.Seconds())

	link.setCut(true)
	waitFor(t, "the site to notice the outage", 30*time.Second, func() bool { return ev.count("upstream-lost") >= 1 })
	queuedAt, drain := run("outage", s.addr, func() { link.setCut(false) })
	t.Logf("| backlog after an outage | %d snapshots queued in %.1f s | drained to the store in %.1f s | %.0f snapshots/s |", n, queuedAt.Seconds(), drain.Seconds(), float64(n)/drain.Seconds())
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}
