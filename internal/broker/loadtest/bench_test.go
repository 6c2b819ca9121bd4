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
	"testing"
	"time"
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
//	FIELDTRUST_BROKER_BENCH=1 go test -run TestBrokerBench -v -timeout 30m ./internal/broker/loadtest
//
// scripts/bench-broker.sh runs it and prints the tables. Knobs
// (FIELDTRUST_BROKER_BENCH_*): PUBLISHERS, SUBSCRIBERS, MESSAGES (per
// publisher), WINDOW, PACED_PERCENT (paced rate as a percentage of the
// slower broker's measured throughput), IDLE (connections), OUT (file for
// the markdown tables), PROFILES (directory for brokerd CPU profiles).
// It never checks timings: it reports them.
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
	ctx, cancel := context.WithTimeout(t.Context(), 25*time.Minute)
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
	msgsByQoS := [2]int{benchEnv(t, "MESSAGES_QOS0", 10_000), benchEnv(t, "MESSAGES_QOS1", 2_000)}
	pacedSeconds := benchEnv(t, "PACED_SECONDS", 10)
	window := benchEnv(t, "WINDOW", 16)
	pacedPct := benchEnv(t, "PACED_PERCENT", 50)
	idleN := benchEnv(t, "IDLE", 10_000)

	start := func(name string, qos string, mo MosquittoOptions) *Broker {
		t.Helper()
		d := filepath.Join(dir, name+"-"+qos)
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
		var b *Broker
		var err error
		if name == "fieldtrust" {
			b, err = StartFieldtrust(ctx, bin, p, d, profile(qos))
		} else {
			b, err = StartMosquitto(ctx, mosq, p, d, mo)
			if mo.Persistence {
				b.Name = "mosquitto (persistence true)"
			}
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

	var scenarios []Scenario
	for _, qos := range []byte{0, 1} {
		tag := fmt.Sprintf("qos%d", qos)
		ours := start("fieldtrust", tag, MosquittoOptions{})
		theirs := start("mosquitto", tag, MosquittoOptions{})
		brokers := []*Broker{ours, theirs}
		if qos == 1 {
			brokers = append(brokers, start("mosquitto-persist", tag, MosquittoOptions{Persistence: true}))
		}
		msgs := msgsByQoS[qos]
		w := Workload{Publishers: pubs, Subscribers: subs, Messages: msgs, Warmup: max(msgs/10, 1), QoS: qos,
			PayloadSize: 1024, Window: window, Drain: 5 * time.Second}
		full := Scenario{Name: fmt.Sprintf("QoS %d, max rate", qos)}
		slowest := 0.0
		for _, b := range brokers {
			r, err := w.Run(ctx, b.Name, b.Addr, p)
			if err != nil {
				t.Fatalf("%s %s: %v", b.Name, full.Name, err)
			}
			t.Logf("%s %s: %.0f msg/s p50 %v p99 %v delivered %d/%d", b.Name, full.Name, r.Throughput, r.P50, r.P99, r.Delivered, r.Expected)
			checkLoss(t, b.Name, r)
			full.Results = append(full.Results, r)
			if slowest == 0 || r.Throughput < slowest {
				slowest = r.Throughput
			}
		}
		scenarios = append(scenarios, full)
		if pacedPct > 0 && slowest > 0 {
			// Same publish rate for every broker: a share of what the
			// slower one sustained, so latency is not queueing.
			w.Rate = slowest / float64(subs) * float64(pacedPct) / 100
			// Bounded duration: about PACED_SECONDS per broker.
			w.Messages = max(1, min(msgs, int(w.Rate*float64(pacedSeconds))/pubs))
			w.Warmup = max(1, w.Messages/10)
			paced := Scenario{Name: fmt.Sprintf("QoS %d, paced %.0f pub/s", qos, w.Rate)}
			for _, b := range brokers {
				r, err := w.Run(ctx, b.Name, b.Addr, p)
				if err != nil {
					t.Fatalf("%s %s: %v", b.Name, paced.Name, err)
				}
				t.Logf("%s %s: %.0f msg/s p50 %v p99 %v delivered %d/%d", b.Name, paced.Name, r.Throughput, r.P50, r.P99, r.Delivered, r.Expected)
				checkLoss(t, b.Name, r)
				paced.Results = append(paced.Results, r)
			}
			scenarios = append(scenarios, paced)
		}
		for _, b := range brokers {
			stop(b)
		}
	}

	var idle []IdleResult
	if idleN > 0 {
		// One identity per connection, like a fleet.
		certs := make([]tls.Certificate, idleN)
		for i := range certs {
			if certs[i], err = p.Identity(ctx, DevicePath(i)); err != nil {
				t.Fatal(err)
			}
		}
		for _, name := range []string{"fieldtrust", "mosquitto"} {
			b := start(name, "idle", MosquittoOptions{})
			r, err := Idle(ctx, b, p, certs, idleN, 2*runtime.GOMAXPROCS(0), 2*time.Second, func(s string) { t.Log(s) })
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s: %d idle connections in %v, RSS %d → %d (%.0f B/conn)", b.Name, r.Conns, r.Elapsed.Round(time.Second), r.RSSBefore, r.RSSAfter, r.PerConn())
			idle = append(idle, r)
			stop(b)
		}
	}

	var out strings.Builder
	fmt.Fprintf(&out, "Workload: %d publishers (devices), %d subscribers (account, `%s/+/snapshots`), max rate: %d (QoS 0) / %d (QoS 1) measured messages per publisher after 10%% warm-up, paced: %d%% of the slower broker's rate for ~%d s; 1 KiB payload, publish window %d; %s, GOMAXPROCS %d, %s.\n\n",
		pubs, subs, Account, msgsByQoS[0], msgsByQoS[1], pacedPct, pacedSeconds, window, runtime.Version(), runtime.GOMAXPROCS(0), MosquittoVersion(mosq))
	out.WriteString(ThroughputTable(scenarios))
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

// checkLoss fails the run (after it finishes) if a QoS 1 message was lost
// or any message duplicated; QoS 0 loss is only reported.
func checkLoss(t *testing.T, broker string, r Result) {
	t.Helper()
	if r.Workload.QoS > 0 && r.Lost() > 0 {
		t.Errorf("%s QoS %d: %d of %d deliveries lost", broker, r.Workload.QoS, r.Lost(), r.Expected)
	}
	if r.Dupes > 0 && r.Workload.QoS == 0 {
		t.Errorf("%s QoS 0: %d duplicate deliveries", broker, r.Dupes)
	}
}
