package loadtest

import (
	"context"
	"crypto/tls"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestIdleConnections is the idle-connection load test (make bench-idle):
// as many idle mutual-TLS MQTT connections as asked (default 100,000) on
// one broker process, one device identity each, from several 127.0.0.x
// source addresses; connect rate, resident memory per connection and CPU
// while the connections sit idle sending keepalive pings. Our broker runs
// twice — clients presenting leaf + intermediates, and leaf only (the
// broker knows the account CAs, as the platform does) — and Mosquitto
// once, with the chains it needs.
//
//	FIELDTRUST_IDLE_BENCH=1 go test -run TestIdleConnections -v -timeout 60m ./internal/broker/loadtest
//
// Knobs (FIELDTRUST_IDLE_*): CONNS (100000; capped by the open-file limit
// of this process and the broker's, which each need one descriptor per
// connection), HOLD (seconds idle, 60), KEEPALIVE (seconds, 30), SOURCES
// (source addresses, 8), OUT (markdown file), GOGC and MEMLIMIT (bytes)
// for our broker's runtime (0: defaults), READERS ("goroutine": one
// blocked reader goroutine per connection instead of parked readers,
// for comparison), ONLY (one run: fieldtrust,
// fieldtrust-leaf or mosquitto), PROFILES (a directory: our broker's heap
// profile after a GC with every connection open, heap-NAME.pprof, and its
// CPU profile over the hold, cpu-NAME.pprof; MEMPROFILERATE, e.g. 1, makes
// the heap profile exact at some cost to the run's own figures). Bounded: every step has a
// deadline, and the run stops by itself.
func TestIdleConnections(t *testing.T) {
	if os.Getenv("FIELDTRUST_IDLE_BENCH") == "" {
		t.Skip("set FIELDTRUST_IDLE_BENCH=1 (see make bench-idle)")
	}
	env := func(name string, def int) int {
		v := os.Getenv("FIELDTRUST_IDLE_" + name)
		if v == "" {
			return def
		}
		var n int
		if _, err := fmt.Sscan(v, &n); err != nil || n < 0 {
			t.Fatalf("FIELDTRUST_IDLE_%s=%q: want a non-negative integer", name, v)
		}
		return n
	}
	want := env("CONNS", 100_000)
	soft, hard := FileLimit()
	conns := want
	if limit := int(soft) - 500; conns > limit {
		conns = limit
		t.Logf("open-file limit %d (hard %d): %d connections instead of %d; raise it with 'ulimit -n' (needs the hard limit, or CAP_SYS_RESOURCE, above %d)", soft, hard, conns, want, want+500)
	}
	hold := time.Duration(env("HOLD", 60)) * time.Second
	keepAlive := time.Duration(env("KEEPALIVE", 30)) * time.Second
	sources := env("SOURCES", 8)
	ctx, cancel := context.WithTimeout(t.Context(), 55*time.Minute)
	defer cancel()
	dir := t.TempDir()
	bin, err := BuildBrokerd(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	mosq, err := exec.LookPath("mosquitto")
	if err != nil {
		if mosq, err = exec.LookPath("/usr/sbin/mosquitto"); err != nil {
			t.Fatal("mosquitto not found: apt-get install -y mosquitto")
		}
	}
	p, err := NewPKI(ctx, filepath.Join(dir, "pki"))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	certs := make([]tls.Certificate, conns)
	for i := range certs {
		if certs[i], err = p.Identity(ctx, DevicePath(i)); err != nil {
			t.Fatal(err)
		}
		if (i+1)%20000 == 0 {
			t.Logf("issued %d/%d device certificates", i+1, conns)
		}
	}
	t.Logf("issued %d device certificates in %v", conns, time.Since(start).Round(time.Second))
	inter, err := p.IntermediatesFile(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var rs []IdleResult
	var memTables strings.Builder
	for _, run := range []struct {
		name     string
		leafOnly bool
	}{{"fieldtrust", false}, {"fieldtrust", true}, {"mosquitto", false}} {
		if only := os.Getenv("FIELDTRUST_IDLE_ONLY"); only != "" && only != run.name+map[bool]string{true: "-leaf"}[run.leafOnly] {
			continue
		}
		d := filepath.Join(dir, fmt.Sprintf("%s-%v", run.name, run.leafOnly))
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
		var b *Broker
		if run.name == "fieldtrust" {
			args := []string{"-intermediates", inter, "-debug-addr", "127.0.0.1:0",
				"-gogc", strconv.Itoa(env("GOGC", 0)), "-memlimit", strconv.Itoa(env("MEMLIMIT", 0)),
				"-memprofilerate", strconv.Itoa(env("MEMPROFILERATE", 0))}
			b, err = StartFieldtrust(ctx, bin, p, d, "", append(args, readerArgs(t, "FIELDTRUST_IDLE_READERS")...)...)
		} else {
			b, err = StartMosquitto(ctx, mosq, p, d, MosquittoOptions{})
		}
		if err != nil {
			t.Fatal(err)
		}
		var mem [3]MemoryClasses   // before, after, after a forced GC
		var rssFreed int64         // RSS after the memory the runtime holds free went back to the OS
		var freeTook time.Duration // what the forced GC and FreeOSMemory took (wall time, over the HTTP call)
		var cpuProfile sync.WaitGroup
		profiles := os.Getenv("FIELDTRUST_IDLE_PROFILES")
		inspect := func(stage string) error {
			if b.DebugAddr == "" {
				return nil
			}
			var err error
			if stage == "before" {
				mem[0], err = b.Memory(ctx, "")
				return err
			}
			if mem[1], err = b.Memory(ctx, ""); err != nil {
				return err
			}
			if mem[2], err = b.Memory(ctx, "gc=1"); err != nil {
				return err
			}
			if profiles != "" {
				name := fmt.Sprintf("%s-%v", run.name, run.leafOnly)
				if err := b.SaveProfile(ctx, "heap?gc=1", filepath.Join(profiles, "heap-"+name+".pprof")); err != nil {
					return err
				}
				if secs := int(hold/time.Second) - 2; secs > 0 {
					cpuProfile.Go(func() {
						if err := b.SaveProfile(ctx, fmt.Sprintf("profile?seconds=%d", secs), filepath.Join(profiles, "cpu-"+name+".pprof")); err != nil {
							t.Errorf("CPU profile: %v", err)
						}
					})
				}
			}
			freeStart := time.Now()
			if _, err = b.Memory(ctx, "free=1"); err != nil {
				return err
			}
			freeTook = time.Since(freeStart)
			rssFreed, err = b.RSS()
			return err
		}
		r, err := Idle(ctx, b, p, certs, IdleOptions{Conns: conns, Workers: 4 * runtime.GOMAXPROCS(0), LeafOnly: run.leafOnly,
			SourceIPs: sources, KeepAlive: keepAlive, Settle: 5 * time.Second, Hold: hold, Progress: func(s string) { t.Log(s) },
			Inspect: inspect})
		cpuProfile.Wait()
		if stopErr := b.Stop(60 * time.Second); stopErr != nil {
			t.Errorf("stop %s: %v", b.Name, stopErr)
		}
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s (leaf only %v): %d connections at %.0f/s, %.0f B/conn, idle CPU %.1f%%", b.Name, run.leafOnly, r.Conns, r.ConnectRate, r.PerConn(), 100*r.CPUIdle)
		rs = append(rs, r)
		if mem[2] != nil {
			chain := "leaf + 2 CAs"
			if run.leafOnly {
				chain = "leaf only"
			}
			memTables.WriteString("\n" + MemoryTable(fmt.Sprintf("%s, %s", b.Name, chain), r.Conns, mem[0], mem[1], mem[2]))
			memTables.WriteString(fmt.Sprintf("\nRSS after a forced GC and returning free memory to the OS (debug.FreeOSMemory, %v): %.0f bytes per connection (measured: %.0f).\n",
				freeTook.Round(time.Millisecond), float64(rssFreed-r.RSSBefore)/float64(r.Conns), r.PerConn()))
		}
	}
	var out strings.Builder
	fmt.Fprintf(&out, "Idle connections: %d (asked for %d; open-file limit %d), one device identity each, %d source addresses, MQTT 3.1.1 keepalive %v with a PINGREQ every %v for %v; %s, GOMAXPROCS %d, %s.\n\n",
		conns, want, soft, sources, keepAlive, keepAlive/2, hold, runtime.Version(), runtime.GOMAXPROCS(0), MosquittoVersion(mosq))
	out.WriteString(IdleTable(rs))
	out.WriteString(memTables.String())
	t.Log("\n" + out.String())
	if f := os.Getenv("FIELDTRUST_IDLE_OUT"); f != "" {
		if err := os.WriteFile(f, []byte(out.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// readerArgs are brokerd's flags for the reader model the environment
// variable names: "parked" (the default) or "goroutine" (one blocked
// reader goroutine per connection).
func readerArgs(t *testing.T, name string) []string {
	switch m := os.Getenv(name); m {
	case "", "parked":
		return nil
	case "goroutine":
		return []string{"-goroutine-per-conn"}
	default:
		t.Fatalf("%s=%q: want parked or goroutine", name, m)
		return nil
	}
}
