package loadgen_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/rand/v2"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/envelope"
	"github.com/fieldtrust/fieldtrust/internal/loadgen"
	"github.com/fieldtrust/fieldtrust/internal/store"
)

// TestEndToEnd is the end-to-end workload benchmark of docs/benchmarks.md
// ("End to end (issue 6)"): the design thesis's 100,000 snapshots × 340
// values, sealed by 200 gateway identities, published QoS 1 over mTLS to
// the in-process platform's broker, opened, verified and stored by ingest;
// then disk use and the common queries through the HTTPS API. It runs only
// with FIELDTRUST_E2E_BENCH set:
//
//	FIELDTRUST_E2E_BENCH=1 FIELDTRUST_E2E_DB=sqlite go test -run TestEndToEnd -v -timeout 60m ./internal/loadgen
//	FIELDTRUST_E2E_BENCH=1 FIELDTRUST_E2E_DB=postgres FIELDTRUST_E2E_DSN=postgres://... go test ...
//
// Knobs: FIELDTRUST_E2E_SCALE (fraction of the fleet, default 1; 0.01 for
// a quick try), FIELDTRUST_E2E_WINDOW (publishes in flight per connection,
// default 16), FIELDTRUST_E2E_AHEAD (fleet-wide snapshots published but not
// yet taken by ingest, default 1000; 0 = unbounded, the broker queues the
// backlog), FIELDTRUST_E2E_CPUPROFILE (file: CPU profile of the measured
// phase only), FIELDTRUST_E2E_REPORT (file to append the Markdown rows to),
// FIELDTRUST_E2E_PUBLISHERS (process, the default: the publishers run in a
// child process, see pubproc_test.go; inprocess: on goroutines of the
// test process, sharing the platform's heap and CPU accounting).
func TestEndToEnd(t *testing.T) {
	if os.Getenv("FIELDTRUST_E2E_BENCH") == "" {
		t.Skip("set FIELDTRUST_E2E_BENCH=1 (and FIELDTRUST_E2E_DB=sqlite|postgres) to run the end-to-end benchmark")
	}
	cfg := benchConfigFromEnv(t)
	shape := loadgen.DefaultShape().Scaled(cfg.scale)
	total := shape.NumSnapshots()
	t.Logf("workload: %d master accounts × %d accounts × %d gateways × %d devices = %d devices behind %d gateways; %d snapshots each = %d snapshots, %d values; db %s; window %d, ahead %d; GOMAXPROCS %d, %s",
		shape.Masters, shape.Accounts, shape.Gateways, shape.Devices, shape.NumDevices(), shape.NumGateways(), shape.PerDevice, total, shape.NumValues(),
		cfg.db, cfg.window, cfg.ahead, runtime.GOMAXPROCS(0), runtime.Version())

	notify, catcher := notifyConfig(t, cfg)
	e := startPlatform(t, cfg.dsn, notify)
	ctx := t.Context()

	// Identities: an admin service, the customer (master account 0), an e2e
	// certificate per master account (a bootstrap recipient, as a customer
	// who reads its data end to end has), and per gateway its transport and
	// e2e certificates.
	start := time.Now()
	if err := e.d.Store.SetServiceRole(ctx, "bench-admin", "admin"); err != nil {
		t.Fatal(err)
	}
	admin := e.issueService(t, "bench-admin")
	customer := e.issue(t, shape.Master(0))
	masterE2E := make([]*x509.Certificate, shape.Masters)
	for m := range masterE2E {
		_, iss := e.issueE2E(t, shape.Master(m))
		masterE2E[m] = iss.Cert
	}
	type gw struct {
		feed   loadgen.GatewayFeed
		sealer *envelope.Sealer
	}
	gws := make([]gw, shape.NumGateways())
	sealDir := t.TempDir()
	for g := range gws {
		path := shape.Gateway(g)
		tc := e.issue(t, path)
		ek, eiss := e.issueE2E(t, path)
		sealer, err := envelope.NewSealer(envelope.SealOptions{
			Recipients: []*x509.Certificate{e.ingestCert, masterE2E[g%shape.Masters]},
			Signer:     &envelope.Signer{Cert: eiss.Cert, Key: ek, Chain: eiss.Chain[1:]},
		})
		if err != nil {
			t.Fatal(err)
		}
		gws[g] = gw{sealer: sealer, feed: loadgen.GatewayFeed{Path: path, File: filepath.Join(sealDir, strings.ReplaceAll(path, "/", "+")),
			TLS: &tls.Config{RootCAs: e.roots, Certificates: []tls.Certificate{tc}}}}
	}
	t.Logf("identities: %d gateways (transport + e2e), %d master e2e, customer, admin in %v", len(gws), shape.Masters, time.Since(start).Round(time.Millisecond))
	addBenchRules(t, e, admin, cfg.rules, shape.Channels)
	if catcher != nil {
		addNotifyRule(t, e, shape.Gateway(0))
	}

	// Seal everything ahead: the gateways' CPU, not the platform's.
	start = time.Now()
	var sealed, sealedBytes atomic.Int64
	var next atomic.Int64
	var wg sync.WaitGroup
	var sealErr error
	var once sync.Once
	for range runtime.GOMAXPROCS(0) {
		wg.Go(func() {
			for g := int(next.Add(1) - 1); g < len(gws); g = int(next.Add(1) - 1) {
				f, err := os.Create(gws[g].feed.File)
				if err == nil {
					var n int
					var b int64
					n, b, err = shape.SealGateway(f, g, gws[g].sealer)
					sealed.Add(int64(n))
					sealedBytes.Add(b)
					if cerr := f.Close(); err == nil {
						err = cerr
					}
				}
				if err != nil {
					once.Do(func() { sealErr = err })
					return
				}
			}
		})
	}
	wg.Wait()
	if sealErr != nil {
		t.Fatal(sealErr)
	}
	sealTime := time.Since(start)
	envAvg := float64(sealedBytes.Load()) / float64(sealed.Load())
	t.Logf("sealed %d snapshots (%.0f bytes per envelope, %.1f MiB) in %v, %.0f/s",
		sealed.Load(), envAvg, float64(sealedBytes.Load())/(1<<20), sealTime.Round(time.Millisecond), float64(sealed.Load())/sealTime.Seconds())
	runtime.GC()
	rssBefore := rssKiB("VmRSS")

	// The measured phase: publish, and follow ingest through its metrics.
	if cfg.cpuProfile != "" {
		f, err := os.Create(cfg.cpuProfile)
		if err != nil {
			t.Fatal(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			t.Fatal(err)
		}
		defer f.Close()
	}
	feeds := make([]loadgen.GatewayFeed, len(gws))
	for i := range gws {
		feeds[i] = gws[i].feed
	}
	var job publisherJob
	if cfg.publishers == "process" {
		job = publisherJob{Broker: e.mqttAddr, Window: cfg.window, Ahead: cfg.ahead,
			Roots: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: e.d.Transport.Root().Raw}))}
		for _, f := range feeds {
			job.Feeds = append(job.Feeds, jobFeed(t, f))
		}
	}
	m0 := e.metrics(t, admin)
	pgDB := ""
	if u, err := url.Parse(cfg.dsn); err == nil && cfg.dsn != "" {
		pgDB = strings.TrimPrefix(u.Path, "/")
	}
	pg0 := pgCPU(pgDB)
	cpu0 := processCPU()
	start = time.Now()
	pubCtx, pubCancel := context.WithCancel(ctx)
	defer pubCancel()
	pubDone := make(chan error, 1)
	var pubTime time.Duration
	var pub fleet
	var child *publisherProcess
	if cfg.publishers == "process" {
		child = startPublisherProcess(pubCtx, t, job)
		pub = child
		go func() {
			err := child.wait()
			pubTime = time.Since(start)
			pubDone <- err
		}()
	} else {
		inproc := &loadgen.Publisher{Broker: e.mqttAddr, Window: cfg.window, Ahead: cfg.ahead}
		pub = inproc
		go func() {
			err := inproc.Run(pubCtx, feeds)
			pubTime = time.Since(start)
			pubDone <- err
		}()
	}
	var (
		last             loadgen.Metrics
		accounted        float64
		lastChange       = time.Now()
		lastLog          = time.Now()
		pubErr           error
		publishersDone   bool
		stalled          bool
		storedAt         time.Duration
		lastLogStored    float64
		lastLogPublished int64
	)
	const stallAfter = 60 * time.Second
	for {
		select {
		case err := <-pubDone:
			pubErr, publishersDone = err, true
			if err != nil {
				t.Errorf("publishing failed: %v", err)
			}
		case <-time.After(200 * time.Millisecond):
		}
		m := e.metrics(t, admin)
		stored := m[loadgen.MetricStored] - m0[loadgen.MetricStored]
		acc := stored + m[loadgen.MetricDuplicates] - m0[loadgen.MetricDuplicates] + m[loadgen.MetricRejects] - m0[loadgen.MetricRejects]
		if acc > accounted {
			pub.Release(int(acc - accounted))
			accounted, lastChange = acc, time.Now()
		}
		last = m
		if time.Since(lastLog) >= 5*time.Second {
			el := time.Since(start)
			dt := time.Since(lastLog).Seconds()
			p := pub.Published()
			t.Logf("progress %6.1fs: published %d (%.0f/s), stored %.0f (%.0f/s now, %.0f/s mean, %.0f values/s), broker out %.0f, rejects %.0f, events %.0f, RSS %d MiB",
				el.Seconds(), p, float64(p-lastLogPublished)/dt, stored, (stored-lastLogStored)/dt, stored/el.Seconds(), stored*float64(shape.Channels)/el.Seconds(),
				m[loadgen.MetricBrokerOut]-m0[loadgen.MetricBrokerOut], m[loadgen.MetricRejects]-m0[loadgen.MetricRejects], m[loadgen.MetricEvents]-m0[loadgen.MetricEvents], rssKiB("VmRSS")/1024)
			lastLog, lastLogStored, lastLogPublished = time.Now(), stored, p
		}
		if int(stored) >= total {
			storedAt = time.Since(start)
			break
		}
		if (publishersDone || pubErr != nil) && time.Since(lastChange) > stallAfter {
			stalled = true
			break
		}
		if !publishersDone && time.Since(lastChange) > 3*stallAfter {
			stalled = true
			break
		}
	}
	cpu := processCPU() - cpu0
	pgUsed := pgCPU(pgDB) - pg0
	if cfg.rules > 0 {
		// The engine runs beside ingest, never in its way: report how far
		// behind it finished.
		deadline := time.Now().Add(5 * time.Minute)
		for e.metrics(t, admin)[metricRulesSnapshots]-m0[metricRulesSnapshots] < stored(e, t, admin, m0) && time.Now().Before(deadline) {
			time.Sleep(200 * time.Millisecond)
		}
		t.Logf("rules: %d rules evaluated on %.0f snapshots %v after ingest stored the last one",
			cfg.rules, e.metrics(t, admin)[metricRulesSnapshots]-m0[metricRulesSnapshots], (time.Since(start) - storedAt).Round(time.Millisecond))
	}
	if catcher != nil {
		reportNotifyLatency(t, e, catcher, shape.Devices*shape.PerDevice)
	}
	if cfg.cpuProfile != "" {
		pprof.StopCPUProfile()
	}
	var pubCPU time.Duration // of the publisher process
	if child != nil {
		if !publishersDone {
			select { // every publish is acknowledged once all is stored: it is exiting
			case err := <-pubDone:
				pubErr, publishersDone = err, true
				if err != nil {
					t.Errorf("publishing failed: %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Error("the publisher process did not exit 30 s after the last snapshot was stored")
			}
		}
		pubCPU = child.cpu()
	}
	pubCancel()
	stored := last[loadgen.MetricStored] - m0[loadgen.MetricStored]
	elapsed := storedAt
	if stalled {
		elapsed = time.Since(start) - stallAfter
	}
	delta := func(name string) float64 { return last[name] - m0[name] }
	snapRate := stored / elapsed.Seconds()
	t.Logf("ingest: %.0f of %d snapshots stored in %v (publishers done after %v): %.0f snapshots/s, %.0f values/s; received %.0f, duplicates %.0f, rejects %.0f, integrity events %.0f; broker in %.0f, out %.0f; peak RSS %d MiB (after sealing %d MiB)",
		stored, total, elapsed.Round(time.Millisecond), pubTime.Round(time.Millisecond), snapRate, snapRate*float64(shape.Channels),
		delta(loadgen.MetricReceived), delta(loadgen.MetricDuplicates), delta(loadgen.MetricRejects), delta(loadgen.MetricEvents),
		delta(loadgen.MetricBrokerIn), delta(loadgen.MetricBrokerOut), rssKiB("VmHWM")/1024, rssBefore/1024)
	// Where ingest's one committer spent its wall time (the serial path).
	var stages []string
	for _, st := range []string{"idle", "wait", "classify", "ledger_lookup", "handoff", "store_wait", "ledger_append", "insert", "record", "committed", "ack_handoff", "ack"} {
		d := delta(`fieldtrust_ingest_committer_seconds_total{stage="` + st + `"}`)
		stages = append(stages, fmt.Sprintf("%s %.1f s (%.0f µs per snapshot)", st, d, d*1e6/stored))
	}
	t.Logf("committer: %s", strings.Join(stages, ", "))
	// The machine is shared: the CPU the process used (platform, and the
	// publishers unless they had their own process) bounds the wall time
	// on GOMAXPROCS idle cores.
	perSnap := func(d time.Duration) float64 { return float64(d.Microseconds()) / stored }
	pgNote := "PostgreSQL's own CPU is not included"
	if pgDB != "" {
		pgNote = fmt.Sprintf("PostgreSQL's backends of the database used %.1f s more (%.0f µs per snapshot)", pgUsed.Seconds(), perSnap(pgUsed))
	}
	if child != nil {
		t.Logf("cpu: %.1f s in the measured phase (%.0f µs per snapshot), publishers %.1f s in their own process (%.0f µs per snapshot); on %d idle cores at least %.1f s of wall time; %s",
			cpu.Seconds(), perSnap(cpu), pubCPU.Seconds(), perSnap(pubCPU), runtime.GOMAXPROCS(0), (cpu+pubCPU+pgUsed).Seconds()/float64(runtime.GOMAXPROCS(0)), pgNote)
	} else {
		t.Logf("cpu: %.1f s in the measured phase (%.0f µs per snapshot, publishers included; on %d idle cores at least %.1f s of wall time); %s",
			cpu.Seconds(), perSnap(cpu), runtime.GOMAXPROCS(0), (cpu+pgUsed).Seconds()/float64(runtime.GOMAXPROCS(0)), pgNote)
	}
	if stalled {
		t.Errorf("ingest stalled: %.0f of %d snapshots stored, %d acknowledged by the broker to publishers, broker delivered %.0f, ingest received %.0f: %d lost without a reject (the broker dropped them?)",
			stored, total, pub.Published(), delta(loadgen.MetricBrokerOut), delta(loadgen.MetricReceived), int64(total)-int64(accounted))
	}

	// Verify through the store: every snapshot stored once, no rejects, no
	// integrity events.
	devs, err := e.d.Store.ListDevices(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	var inStore uint64
	for _, d := range devs {
		inStore += d.Snapshots
	}
	rejects, err := e.d.Store.Rejects(ctx, time.Time{}, time.Time{}, store.MaxLimit)
	if err != nil {
		t.Fatal(err)
	}
	events, err := e.d.Store.IntegrityEvents(ctx, "", time.Time{}, time.Time{}, store.MaxLimit)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("store: %d devices, %d snapshots, %d rejects, %d integrity events", len(devs), inStore, len(rejects), len(events))
	if len(devs) != shape.NumDevices() || inStore != uint64(total) || len(rejects) != 0 || len(events) != 0 {
		t.Errorf("store has %d devices, %d snapshots, %d rejects, %d integrity events; want %d, %d, 0, 0",
			len(devs), inStore, len(rejects), len(events), shape.NumDevices(), total)
		for i, ev := range events {
			if i == 5 {
				break
			}
			t.Logf("event: %+v", ev)
		}
	}

	// Disk.
	disk, diskNote := e.diskBytes(t, cfg.dsn)
	brokerDisk := dirSize(filepath.Join(e.dir, "broker"))
	perValue := float64(disk) / float64(inStore*uint64(shape.Channels))
	t.Logf("disk: %d bytes (%.0f MiB; %s), %.1f bytes per value; broker state %d bytes", disk, float64(disk)/(1<<20), diskNote, perValue, brokerDisk)

	// Queries through the HTTPS API.
	rng := rand.New(rand.NewPCG(1, 2))
	var custGWs []string
	for g := range shape.NumGateways() {
		if g%shape.Masters == 0 {
			custGWs = append(custGWs, shape.Gateway(g))
		}
	}
	randomDevice := func() string {
		return custGWs[rng.IntN(len(custGWs))] + "/" + shape.Device(rng.IntN(shape.Devices))
	}
	type row struct {
		name   string
		lat    loadgen.Latencies
		bytes  int
		result string
	}
	var rows []row
	measure := func(name string, id tls.Certificate, reps int, path func() string, check func(body []byte) (string, error)) {
		c := e.client(id)
		defer c.CloseIdleConnections()
		r := row{name: name}
		for i := range reps + 1 {
			p := path()
			t0 := time.Now()
			resp, err := c.Get("https://" + e.httpAddr + p)
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			d := time.Since(t0)
			if err != nil || resp.StatusCode != 200 {
				t.Fatalf("GET %s: %d %v %s", p, resp.StatusCode, err, body)
			}
			res, err := check(body)
			if err != nil {
				t.Fatalf("GET %s: %v", p, err)
			}
			if i == 0 {
				continue // warm-up: connection and TLS handshake
			}
			r.lat = append(r.lat, d)
			r.bytes += len(body)
			r.result = res
		}
		r.bytes /= reps
		t.Logf("query %-55s median %6s ms, p99 %6s ms, max %6s ms (%d runs, %s, %d bytes)", name, loadgen.Ms(r.lat.Quantile(0.5)), loadgen.Ms(r.lat.Quantile(0.99)), loadgen.Ms(r.lat.Quantile(1)), reps, r.result, r.bytes)
		rows = append(rows, r)
	}
	type valueJSON struct {
		Channel string
		Value   float64
	}
	type snapJSON struct {
		Path   string
		Seq    uint64
		Values []valueJSON
	}
	snaps := func(body []byte, key string) ([]snapJSON, error) {
		var out struct{ Snapshots, Devices []snapJSON }
		if err := json.Unmarshal(body, &out); err != nil {
			return nil, err
		}
		if key == "devices" {
			return out.Devices, nil
		}
		return out.Snapshots, nil
	}
	const reps = 50
	measure("one channel of one device over a day (customer)", customer, reps, func() string {
		from := shape.Start.Add(time.Duration(rng.IntN(shape.PerDevice-96+1)) * shape.Every)
		return "/api/v1/devices/" + randomDevice() + "/snapshots?channel=" + loadgen.Channel(rng.IntN(shape.Channels)) +
			"&from=" + url.QueryEscape(from.Format(time.RFC3339)) + "&to=" + url.QueryEscape(from.Add(24*time.Hour).Format(time.RFC3339))
	}, func(body []byte) (string, error) {
		s, err := snaps(body, "snapshots")
		if err != nil || len(s) != 96 || len(s[0].Values) != 1 {
			return "", fmt.Errorf("want 96 snapshots of 1 value, got %d (%v)", len(s), err)
		}
		return "96 snapshots × 1 value", nil
	})
	measure("latest status of the customer's fleet (customer)", customer, reps, func() string { return "/api/v1/status" }, func(body []byte) (string, error) {
		s, err := snaps(body, "devices")
		want := shape.NumDevices() / shape.Masters
		if err != nil || len(s) != want || len(s[0].Values) != shape.Channels || s[0].Seq != uint64(shape.PerDevice) {
			return "", fmt.Errorf("want %d devices at seq %d with %d values, got %d (%v)", want, shape.PerDevice, shape.Channels, len(s), err)
		}
		return fmt.Sprintf("%d devices × %d values", want, shape.Channels), nil
	})
	measure("device history page, limit 100 (customer)", customer, reps, func() string {
		return "/api/v1/devices/" + randomDevice() + "/snapshots?limit=100"
	}, func(body []byte) (string, error) {
		s, err := snaps(body, "snapshots")
		if err != nil || len(s) != min(100, shape.PerDevice) || len(s[0].Values) != shape.Channels {
			return "", fmt.Errorf("want 100 snapshots of %d values, got %d (%v)", shape.Channels, len(s), err)
		}
		return fmt.Sprintf("%d snapshots × %d values", len(s), shape.Channels), nil
	})
	measure("device history page, limit 100, one channel (customer)", customer, reps, func() string {
		return "/api/v1/devices/" + randomDevice() + "/snapshots?limit=100&channel=" + loadgen.Channel(rng.IntN(shape.Channels))
	}, func(body []byte) (string, error) {
		s, err := snaps(body, "snapshots")
		if err != nil || len(s) != min(100, shape.PerDevice) || len(s[0].Values) != 1 {
			return "", fmt.Errorf("want 100 snapshots of 1 value, got %d (%v)", len(s), err)
		}
		return fmt.Sprintf("%d snapshots × 1 value", len(s)), nil
	})
	measure("latest status of the whole fleet (admin)", admin, 10, func() string { return "/api/v1/status" }, func(body []byte) (string, error) {
		s, err := snaps(body, "devices")
		if err != nil || len(s) != shape.NumDevices() {
			return "", fmt.Errorf("want %d devices, got %d (%v)", shape.NumDevices(), len(s), err)
		}
		return fmt.Sprintf("%d devices × %d values", len(s), shape.Channels), nil
	})

	// The same reads from the store directly (a second handle on the same
	// database), to split a query's time between the store and the API's
	// JSON and HTTPS.
	storeOnly := func(name string, reps int, f func() (int, error)) {
		r := row{name: name + " [store only]"}
		for i := range reps + 1 {
			t0 := time.Now()
			n, err := f()
			d := time.Since(t0)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			if i > 0 {
				r.lat = append(r.lat, d)
				r.result = fmt.Sprintf("%d records", n)
			}
		}
		t.Logf("query %-55s median %6s ms, p99 %6s ms, max %6s ms (%d runs, %s)", r.name, loadgen.Ms(r.lat.Quantile(0.5)), loadgen.Ms(r.lat.Quantile(0.99)), loadgen.Ms(r.lat.Quantile(1)), reps, r.result)
		rows = append(rows, r)
	}
	storeOnly("latest status of the customer's fleet", 20, func() (int, error) {
		recs, err := e.d.Store.LatestSnapshots(ctx, shape.Master(0))
		return len(recs), err
	})
	storeOnly("device history page, limit 100", 20, func() (int, error) {
		dev := randomDevice()
		i := strings.LastIndexByte(dev, '/')
		recs, err := e.d.Store.QuerySnapshots(ctx, store.SnapshotQuery{Scope: shape.Master(0), Gateway: dev[:i], Device: dev[i+1:], Limit: 100})
		return len(recs), err
	})

	// The report, as Markdown rows for docs/benchmarks.md.
	var rep strings.Builder
	fmt.Fprintf(&rep, "db=%s scale=%g window=%d ahead=%d publishers=%s snapshots=%d values=%d\n", cfg.db, cfg.scale, cfg.window, cfg.ahead, cfg.publishers, total, shape.NumValues())
	fmt.Fprintf(&rep, "| sealing ahead (not timed) | %v, %.0f B/envelope |\n", sealTime.Round(100*time.Millisecond), envAvg)
	fmt.Fprintf(&rep, "| ingest wall time | %.1f s%s |\n", elapsed.Seconds(), map[bool]string{true: " (STALLED)", false: ""}[stalled])
	fmt.Fprintf(&rep, "| CPU of the process in the measured phase | %.1f s (%.0f µs per snapshot) |\n", cpu.Seconds(), perSnap(cpu))
	if child != nil {
		fmt.Fprintf(&rep, "| CPU of the publisher process | %.1f s (%.0f µs per snapshot) |\n", pubCPU.Seconds(), perSnap(pubCPU))
	}
	if pgDB != "" {
		fmt.Fprintf(&rep, "| CPU of PostgreSQL's backends of the database | %.1f s (%.0f µs per snapshot) |\n", pgUsed.Seconds(), perSnap(pgUsed))
	}
	fmt.Fprintf(&rep, "| snapshots/s | %.0f |\n| values/s | %.0f |\n", snapRate, snapRate*float64(shape.Channels))
	fmt.Fprintf(&rep, "| stored / rejects / integrity events | %d / %d / %d |\n", inStore, len(rejects), len(events))
	fmt.Fprintf(&rep, "| disk | %.0f MiB |\n| bytes per value | %.1f |\n| broker state | %.1f MiB |\n| peak RSS (%s) | %d MiB |\n",
		float64(disk)/(1<<20), perValue, float64(brokerDisk)/(1<<20), map[bool]string{true: "platform", false: "platform + publishers"}[child != nil], rssKiB("VmHWM")/1024)
	for _, r := range rows {
		size := ""
		if r.bytes > 0 {
			size = fmt.Sprintf(", %.0f KiB", float64(r.bytes)/1024)
		}
		fmt.Fprintf(&rep, "| %s: %s%s | %s | %s |\n", r.name, r.result, size, loadgen.Ms(r.lat.Quantile(0.5)), loadgen.Ms(r.lat.Quantile(0.99)))
	}
	t.Log("report:\n" + rep.String())
	if cfg.report != "" {
		f, err := os.OpenFile(cfg.report, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		if err == nil {
			f.WriteString(rep.String() + "\n")
			f.Close()
		}
	}
}

type benchConfig struct {
	db, dsn       string
	scale         float64
	window, ahead int
	cpuProfile    string
	report        string
	publishers    string // "process" or "inprocess"
	rules         int    // FIELDTRUST_E2E_RULES: rules over the whole fleet
	notify        bool   // FIELDTRUST_E2E_NOTIFY: mail every snapshot of one gateway, measure the latency
}

func benchConfigFromEnv(t *testing.T) benchConfig {
	c := benchConfig{db: os.Getenv("FIELDTRUST_E2E_DB"), scale: 1, window: 16, ahead: 1000,
		cpuProfile: os.Getenv("FIELDTRUST_E2E_CPUPROFILE"), report: os.Getenv("FIELDTRUST_E2E_REPORT"),
		publishers: os.Getenv("FIELDTRUST_E2E_PUBLISHERS")}
	switch c.publishers {
	case "":
		c.publishers = "process"
	case "process", "inprocess":
	default:
		t.Fatalf("FIELDTRUST_E2E_PUBLISHERS=%q: process (the default) or inprocess", c.publishers)
	}
	switch c.db {
	case "", "sqlite":
		c.db = "sqlite"
	case "postgres":
		c.dsn = os.Getenv("FIELDTRUST_E2E_DSN")
		if c.dsn == "" {
			t.Fatal("FIELDTRUST_E2E_DB=postgres needs FIELDTRUST_E2E_DSN=postgres://... of a fresh database (scripts/bench-e2e.sh makes one)")
		}
	default:
		t.Fatalf("FIELDTRUST_E2E_DB=%q: sqlite or postgres", c.db)
	}
	num := func(name string, v *int) {
		if s := os.Getenv(name); s != "" {
			n, err := strconv.Atoi(s)
			if err != nil || n < 0 {
				t.Fatalf("%s=%q: a non-negative integer", name, s)
			}
			*v = n
		}
	}
	num("FIELDTRUST_E2E_WINDOW", &c.window)
	num("FIELDTRUST_E2E_AHEAD", &c.ahead)
	num("FIELDTRUST_E2E_RULES", &c.rules)
	c.notify = os.Getenv("FIELDTRUST_E2E_NOTIFY") != ""
	if s := os.Getenv("FIELDTRUST_E2E_SCALE"); s != "" {
		f, err := strconv.ParseFloat(s, 64)
		if err != nil || f <= 0 || f > 1 {
			t.Fatalf("FIELDTRUST_E2E_SCALE=%q: a fraction in (0, 1]", s)
		}
		c.scale = f
	}
	return c
}

// processCPU is the user + system CPU time the process has used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
