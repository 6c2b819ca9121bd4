package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/loadgen"
)

// TestClusterThroughput measures what 1, 2 and 3 nodes store on this
// machine (docs/benchmarks.md "Cluster"): gateways publishing as fast as
// their nodes acknowledge (QoS 1, 16 in flight each), each to the first
// broker of its bootstrap list; snapshots/s from the first publish to the
// last one stored, and each node's CPU from /proc. 'make bench-cluster'.
// Every run is a multi-node configuration (--cluster-addr, ingest by
// partitions), one node included.
func TestClusterThroughput(t *testing.T) {
	clusterTest(t)
	if os.Getenv("FIELDTRUST_BENCH_CLUSTER") == "" {
		t.Skip("set FIELDTRUST_BENCH_CLUSTER=1 (make bench-cluster)")
	}
	for _, n := range []int{1, 2, 3} {
		t.Run(fmt.Sprintf("%d-nodes", n), func(t *testing.T) {
			c := startCluster(t, n)
			for _, nd := range c.nodes {
				waitFor(t, 90*time.Second, nd.name+" settled", func() bool { return c.settled(nd, c.live()) })
			}
			shape := loadgen.Shape{Masters: 3, Accounts: 2, Gateways: 2, Devices: 4, PerDevice: 100, Channels: 8,
				Every: time.Second, Start: time.Now().Add(-time.Hour).Truncate(time.Second)}
			gws := c.gateways(t, shape, shape.Gateway)
			waitFor(t, 60*time.Second, "ingest subscribed to the accounts", func() bool {
				return strings.Count(c.logsAll(), `"msg":"ingest subscribed"`) >= partitionsOf(shape)
			})
			// One publisher per node, for the gateways whose list names
			// that node first (the bootstrap assignment).
			feeds := map[string][]loadgen.GatewayFeed{}
			dir := t.TempDir()
			total := 0
			for i, g := range gws {
				file := filepath.Join(dir, strconv.Itoa(i))
				if err := writeEnvelopes(file, g.envs); err != nil {
					t.Fatal(err)
				}
				feeds[g.brokers[0]] = append(feeds[g.brokers[0]], loadgen.GatewayFeed{Path: g.path, TLS: g.tls.Clone(), File: file})
				total += len(g.envs)
			}
			cpu0 := map[string]time.Duration{}
			for _, nd := range c.nodes {
				cpu0[nd.name] = procCPU(t, nd.proc.cmd.Process.Pid)
			}
			start := time.Now()
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
			defer cancel()
			errs := make(chan error, len(feeds))
			for broker, fs := range feeds {
				p := &loadgen.Publisher{Broker: broker, Window: 16}
				go func() { errs <- p.Run(ctx, fs) }()
			}
			for range feeds {
				if err := <-errs; err != nil {
					t.Fatalf("publish: %v", err)
				}
			}
			published := time.Since(start)
			var got storeCounts
			waitFor(t, 5*time.Minute, "every snapshot stored", func() bool {
				got = c.counts(t)
				return got.snapshots >= total
			})
			elapsed := time.Since(start)
			var per []string
			var sum time.Duration
			for _, nd := range c.nodes {
				d := procCPU(t, nd.proc.cmd.Process.Pid) - cpu0[nd.name]
				sum += d
				per = append(per, fmt.Sprintf("%s %.0f%%", nd.name, 100*d.Seconds()/elapsed.Seconds()))
			}
			t.Logf("%d node(s): %d snapshots from %d gateways (%d nodes took gateways: %v) stored in %v (published in %v): %.0f snapshots/s; node CPU %s (sum %.0f%% of one core, %.1f ms per snapshot); events %d",
				n, total, len(gws), len(feeds), feedCounts(feeds), elapsed.Round(10*time.Millisecond), published.Round(10*time.Millisecond),
				float64(total)/elapsed.Seconds(), strings.Join(per, ", "), 100*sum.Seconds()/elapsed.Seconds(),
				float64(sum.Milliseconds())/float64(total), got.events)
			if got.snapshots != total || got.events != 0 {
				t.Errorf("stored %+v, want %d and no events", got, total)
			}
		})
	}
}

func feedCounts(feeds map[string][]loadgen.GatewayFeed) []int {
	var out []int
	for _, f := range feeds {
		out = append(out, len(f))
	}
	return out
}

// writeEnvelopes writes envelopes in SealGateway's framing.
func writeEnvelopes(file string, envs [][]byte) error {
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	for _, e := range envs {
		n := len(e)
		if _, err := f.Write([]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}); err != nil {
			f.Close()
			return err
		}
		if _, err := f.Write(e); err != nil {
			f.Close()
			return err
		}
	}
	return f.Close()
}

// procCPU is a process's user and system CPU time (/proc/PID/stat, in
// clock ticks of 10 ms).
func procCPU(t *testing.T, pid int) time.Duration {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseInt(fields[11], 10, 64)
	st, _ := strconv.ParseInt(fields[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}
