package loadtest

import (
	"context"
	"crypto/tls"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/broker/packet"
)

// benchEnv reads an integer knob of the benchmark.
func benchEnv(t *testing.T, name string, def int) int {
	v := os.Getenv("FIELDTRUST_BROKER_BENCH_" + name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		t.Fatalf("FIELDTRUST_BROKER_BENCH_%s=%q: want a non-negative integer", name, v)
	}
	return n
}

// TestBrokerBench compares our broker (cmd/brokerd: broker.New with the
// platform's TLS policy, pki.Verifier and TACS) with Debian's mosquitto
// configured the same way, on loopback, in one run:
//
//	FIELDTRUST_BROKER_BENCH=1 go test -run TestBrokerBench -v -timeout 40m ./internal/broker/loadtest
//
// scripts/bench-broker.sh runs it and prints the tables. Knobs
// (FIELDTRUST_BROKER_BENCH_*): PUBLISHERS, SUBSCRIBERS, MESSAGES_QOS0 and
// MESSAGES_QOS1 (per publisher; QoS 2 uses the QoS 1 count), WINDOW,
// PACED_PERCENT (paced rate as a percentage of the slower broker's
// measured throughput), PACED_RATE (publishes per second instead, the same
// in every scenario), PACED_SECONDS, FANOUT (subscribers of the fan-out
// case), RESUME (messages per publisher queued across a restart), IDLE
// (connections), READERS (our broker's reader model: parked or
// goroutine), ONLY (a regular expression: run only matching scenarios), OUT
// (file for the markdown tables), PROFILES (directory for brokerd CPU
// profiles), BASE (a brokerd binary of another version, run after ours in
// each scenario; before it with BASE_FIRST=1). It never checks timings: it reports them.
func TestBrokerBench(t *testing.T) {
	if os.Getenv("FIELDTRUST_BROKER_BENCH") == "" {
		t.Skip("set FIELDTRUST_BROKER_BENCH=1 (see scripts/bench-broker.sh)")
	}
	mosq, err := exec.LookPath("mosquitto")
	if err != nil {
		if mosq, err = exec.LookPath("/usr/sbin/mosquitto"); err != nil {
			t.Fatal("mosquitto not found: apt-get install -y mosquitto")
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), 35*time.Minute)
	defer cancel()
	dir := t.TempDir()
	profiles := os.Getenv("FIELDTRUST_BROKER_BENCH_PROFILES")
	profile := func(name string) string {
		if profiles == "" {
			return ""
		}
		return filepath.Join(profiles, name+".pprof")
	}

	bin, err := BuildBrokerd(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	if profiles != "" {
		_ = os.MkdirAll(profiles, 0o755)
		// pprof needs the binary to symbolise.
		if data, err := os.ReadFile(bin); err == nil {
			_ = os.WriteFile(filepath.Join(profiles, "brokerd"), data, 0o755)
		}
	}
	p, err := NewPKI(ctx, filepath.Join(dir, "pki"))
	if err != nil {
		t.Fatal(err)
	}
	pubs := benchEnv(t, "PUBLISHERS", 16)
	subs := benchEnv(t, "SUBSCRIBERS", 4)
	msgs0, msgs1 := benchEnv(t, "MESSAGES_QOS0", 10_000), benchEnv(t, "MESSAGES_QOS1", 2_000)
	pacedSeconds := benchEnv(t, "PACED_SECONDS", 10)
	window := benchEnv(t, "WINDOW", 16)
	pacedPct := benchEnv(t, "PACED_PERCENT", 50)
	fanout := benchEnv(t, "FANOUT", 1000)
	resume := benchEnv(t, "RESUME", 200)
	idleN := benchEnv(t, "IDLE", 10_000)
	only := os.Getenv("FIELDTRUST_BROKER_BENCH_ONLY")
	onlyRE, err := regexp.Compile(only)
	if err != nil {
		t.Fatalf("FIELDTRUST_BROKER_BENCH_ONLY=%q: want a regular expression: %v", only, err)
	}
	pacedRate := benchEnv(t, "PACED_RATE", 0)

	const (
		ours      = "fieldtrust"
		baseName  = "fieldtrust (base)"
		mosquitto = "mosquitto"
		persist   = "mosquitto (persistence true)"
	)
	// BASE: another build of brokerd (e.g. of main) run right after ours
	// in every scenario, to compare two versions in one run.
	baseBin := os.Getenv("FIELDTRUST_BROKER_BENCH_BASE")
	n := 0
	start := func(name, tag string) *Broker {
		t.Helper()
		// The previous broker's writes (a persistent run writes hundreds
		// of MiB) would otherwise be flushed by the kernel during this
		// one's run and stall its fdatasyncs: each starts on a clean disk.
		syscall.Sync()
		n++
		d := filepath.Join(dir, fmt.Sprintf("%s-%d", tag, n))
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
		var b *Broker
		var err error
		switch name {
		case ours:
			// -debug-addr: the paced runs' stage histograms (StageTable).
			b, err = StartFieldtrust(ctx, bin, p, d, profile(tag), append([]string{"-debug-addr", "127.0.0.1:0"}, readerArgs(t, "FIELDTRUST_BROKER_BENCH_READERS")...)...)
		case baseName:
			// Profiled like ours (the profiler's cost on both).
			if b, err = StartFieldtrust(ctx, baseBin, p, d, profile(tag+"-base"), "-debug-addr", "127.0.0.1:0"); err == nil {
				b.Name = baseName
			}
		case mosquitto:
			b, err = StartMosquitto(ctx, mosq, p, d, MosquittoOptions{})
		default:
			b, err = StartMosquitto(ctx, mosq, p, d, MosquittoOptions{Persistence: true})
			b.Name = persist
		}
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	stop := func(b *Broker) {
		if err := b.Stop(30 * time.Second); err != nil {
			t.Errorf("stop %s: %v", b.Name, err)
		}
	}

	base := Workload{Publishers: pubs, Subscribers: subs, PayloadSize: 1024, Window: window, Drain: 5 * time.Second}
	with := func(f func(*Workload)) Workload { w := base; f(&w); return w }
	cases := []struct {
		name, tag string
		w         Workload
		brokers   []string
		paced     bool // followed by a run at PACED_PERCENT of the slower broker's rate
		resume    bool // Workload.Resume instead of Run
	}{
		{"QoS 0", "qos0", with(func(w *Workload) { w.Messages = msgs0 }), []string{ours, mosquitto}, true, false},
		{"QoS 1", "qos1", with(func(w *Workload) { w.QoS, w.Messages = 1, msgs1 }), []string{ours, mosquitto, persist}, true, false},
		{"QoS 2", "qos2", with(func(w *Workload) { w.QoS, w.Messages = 2, msgs1 }), []string{ours, mosquitto, persist}, false, false},
		{"QoS 1, MQTT 5", "v5", with(func(w *Workload) { w.QoS, w.Messages, w.Version = 1, msgs1, packet.V5 }), []string{ours, mosquitto}, true, false},
		{"QoS 1, persistent sessions", "persistent", with(func(w *Workload) { w.QoS, w.Messages, w.Persistent = 1, msgs1, true }), []string{ours, persist, mosquitto}, true, false},
		{fmt.Sprintf("QoS 0, fan-out 1 → %d", fanout), "fanout0", with(func(w *Workload) { w.FanOut, w.Subscribers, w.Messages = true, fanout, msgs1/10 }), []string{ours, mosquitto}, false, false},
		{fmt.Sprintf("QoS 1, fan-out 1 → %d", fanout), "fanout1", with(func(w *Workload) { w.FanOut, w.Subscribers, w.QoS, w.Messages = true, fanout, 1, msgs1/10 }), []string{ours, mosquitto}, false, false},
		{"QoS 1, persistent sessions resumed after a restart", "resume", with(func(w *Workload) { w.QoS, w.Messages = 1, resume }), []string{ours, persist}, false, true},
	}
	var scenarios []Scenario
	var stages []string  // attribution tables of our broker's paced runs
	var cpuRows []string // each broker's CPU time in the paced runs
	for _, c := range cases {
		if only != "" && !onlyRE.MatchString(c.name) {
			continue
		}
		if baseBin != "" && c.brokers[0] == ours {
			first, second := ours, baseName
			if os.Getenv("FIELDTRUST_BROKER_BENCH_BASE_FIRST") != "" {
				first, second = baseName, ours
			}
			c.brokers = append([]string{first, second}, c.brokers[1:]...)
		}
		for i := range c.w.Subscribers * btoi(c.w.FanOut) { // fan-out subscribers are device identities
			if _, err := p.Identity(ctx, DevicePath(i)); err != nil {
				t.Fatal(err)
			}
		}
		c.w.Warmup = max(c.w.Messages/10, 1)
		full := Scenario{Name: c.name + ", max rate"}
		if c.resume {
			full.Name = c.name
		}
		slowest := 0.0
		for _, name := range c.brokers {
			b := start(name, c.tag)
			var r Result
			var err error
			if c.resume {
				r, err = c.w.Resume(ctx, b.Name, b, p)
			} else {
				r, err = c.w.Run(ctx, b.Name, b.Addr, p)
			}
			stop(b)
			if err != nil {
				t.Fatalf("%s %s: %v", name, full.Name, err)
			}
			t.Logf("%s %s: %.0f msg/s p50 %v p99 %v delivered %d/%d", name, full.Name, r.Throughput, r.P50, r.P99, r.Delivered, r.Expected)
			checkLoss(t, name, r)
			full.Results = append(full.Results, r)
			if slowest == 0 || r.Throughput < slowest {
				slowest = r.Throughput
			}
		}
		scenarios = append(scenarios, full)
		if !c.paced || pacedPct == 0 || slowest == 0 {
			continue
		}
		// Same publish rate for every broker: a share of what the slower
		// one sustained, so latency is not queueing.
		w := c.w
		w.Rate = slowest / float64(w.Subscribers) * float64(pacedPct) / 100
		if pacedRate > 0 {
			w.Rate = float64(pacedRate)
		}
		w.Messages = max(1, min(w.Messages, int(w.Rate*float64(pacedSeconds))/w.Publishers))
		w.Warmup = max(1, w.Messages/10)
		ps := Scenario{Name: fmt.Sprintf("%s, paced %.0f pub/s", c.name, w.Rate)}
		for _, name := range c.brokers {
			b := start(name, c.tag+"-paced")
			cpu0, cerr0 := cpuTime(b)
			r, err := w.Run(ctx, b.Name, b.Addr, p)
			if cpu1, cerr1 := cpuTime(b); err == nil && cerr0 == nil && cerr1 == nil {
				published := (w.Messages + w.Warmup) * w.Publishers
				cpuRows = append(cpuRows, fmt.Sprintf("| %s | %s | %.2f s | %.1f µs |\n", ps.Name, name, (cpu1-cpu0).Seconds(), float64((cpu1-cpu0).Microseconds())/float64(published)))
			}
			if err == nil && (name == ours || name == baseName) {
				if fams, merr := b.Metrics(ctx); merr != nil {
					t.Errorf("%s: %v", ps.Name, merr)
				} else {
					stages = append(stages, StageTable(fmt.Sprintf("%s, %s; publishes that waited for a PUBACK: %d", name, ps.Name, r.WindowWaits), fams, (w.Messages+w.Warmup)*w.Publishers))
				}
				// The paced broker started for this run: its allocations
				// since start are this phase's (go tool pprof -sample_index=alloc_objects).
				if path := profile(c.tag + "-paced-allocs" + map[bool]string{true: "-base"}[name == baseName]); path != "" {
					if perr := b.SaveProfile(ctx, "allocs", path); perr != nil {
						t.Errorf("%s: %v", ps.Name, perr)
					}
				}
			}
			stop(b)
			if err != nil {
				t.Fatalf("%s %s: %v", name, ps.Name, err)
			}
			t.Logf("%s %s: %.0f msg/s p50 %v p99 %v delivered %d/%d", name, ps.Name, r.Throughput, r.P50, r.P99, r.Delivered, r.Expected)
			checkLoss(t, name, r)
			ps.Results = append(ps.Results, r)
		}
		scenarios = append(scenarios, ps)
	}

	var idle []IdleResult
	if idleN > 0 && (only == "" || strings.Contains("idle", only)) {
		// One identity per connection, like a fleet.
		certs := make([]tls.Certificate, idleN)
		for i := range certs {
			if certs[i], err = p.Identity(ctx, DevicePath(i)); err != nil {
				t.Fatal(err)
			}
		}
		for _, name := range []string{ours, mosquitto} {
			b := start(name, "idle")
			r, err := Idle(ctx, b, p, certs, IdleOptions{Conns: idleN, Workers: 2 * runtime.GOMAXPROCS(0), Settle: 2 * time.Second, Progress: func(s string) { t.Log(s) }})
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s: %d idle connections in %v, RSS %d → %d (%.0f B/conn)", b.Name, r.Conns, r.Elapsed.Round(time.Second), r.RSSBefore, r.RSSAfter, r.PerConn())
			idle = append(idle, r)
			stop(b)
		}
	}

	var out strings.Builder
	fmt.Fprintf(&out, "Workload: %d publishers (devices), %d subscribers (account, `%s/+/snapshots`), max rate: %d (QoS 0) / %d (QoS 1 and 2) measured messages per publisher after 10%% warm-up, paced: %d%% of the slower broker's rate for ~%d s; fan-out: one admin publisher on `%s`, %d device subscribers; resume: %d messages per publisher queued for offline persistent sessions across a clean restart; 1 KiB payload, window %d; harness client `loadtest.Client` (MQTT 3.1.1 unless marked MQTT 5); %s, GOMAXPROCS %d, %s.\n\n",
		pubs, subs, Account, msgs0, msgs1, pacedPct, pacedSeconds, FanOutTopic, fanout, resume, window, runtime.Version(), runtime.GOMAXPROCS(0), MosquittoVersion(mosq))
	out.WriteString(ThroughputTable(scenarios))
	if len(cpuRows) > 0 {
		out.WriteString("\nBroker CPU (user + system) during each paced run, connections and warm-up included:\n\n| scenario | broker | CPU | per published message |\n|---|---|---:|---:|\n")
		out.WriteString(strings.Join(cpuRows, ""))
	}
	for _, s := range stages {
		out.WriteString("\n" + s)
	}
	if len(idle) > 0 {
		out.WriteString("\n" + IdleTable(idle))
	}
	t.Log("\n" + out.String())
	if f := os.Getenv("FIELDTRUST_BROKER_BENCH_OUT"); f != "" {
		if err := os.WriteFile(f, []byte(out.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// checkLoss fails the run (after it finishes) if our broker lost a QoS 1/2
// message or duplicated a QoS 0 one; QoS 0 loss is only reported, and so
// is anything the reference brokers lose (it is in the table).
func checkLoss(t *testing.T, broker string, r Result) {
	t.Helper()
	if broker != "fieldtrust" {
		if r.Lost() > 0 || r.Dupes > 0 {
			t.Logf("%s QoS %d: %d of %d deliveries lost, %d duplicated", broker, r.Workload.QoS, r.Lost(), r.Expected, r.Dupes)
		}
		return
	}
	if r.Workload.QoS > 0 && r.Lost() > 0 {
		t.Errorf("%s QoS %d: %d of %d deliveries lost", broker, r.Workload.QoS, r.Lost(), r.Expected)
	}
	if r.Dupes > 0 && r.Workload.QoS == 0 {
		t.Errorf("%s QoS 0: %d duplicate deliveries", broker, r.Dupes)
	}
}
