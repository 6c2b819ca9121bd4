package ingest_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/envelope"
	"github.com/fieldtrust/fieldtrust/internal/ingest"
	"github.com/fieldtrust/fieldtrust/internal/ledger"
	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/platform"
	"github.com/fieldtrust/fieldtrust/internal/platform/platformtest"
	"github.com/fieldtrust/fieldtrust/internal/snapshot"
	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/store/sqlite"
	"github.com/fieldtrust/fieldtrust/internal/tacs"
	"github.com/fieldtrust/fieldtrust/internal/topic"
)

// failing makes the calls of a real store fail on purpose while it is
// switched on: InsertSnapshots (the store) and AppendLedger (under the
// ledger).
type failing struct {
	*sqlite.Store
	inserts, appends atomic.Bool
	failed           atomic.Int64 // calls failed on purpose
	// hold, if set, makes InsertSnapshots wait until it is closed (after
	// telling holding); failNext makes that many inserts fail first.
	hold        chan struct{}
	holding     chan struct{}
	failNext    atomic.Int64
	lookups     atomic.Int64 // LedgerLeafIndexes calls (a batch's ledger lookup)
	callsMu     sync.Mutex
	headLookups []string // the devices of DeviceHead calls
}

func (f *failing) InsertSnapshots(ctx context.Context, recs []store.SnapshotRecord) ([]bool, error) {
	if f.hold != nil {
		select {
		case f.holding <- struct{}{}:
		default:
		}
		<-f.hold
	}
	if f.inserts.Load() || f.failNext.Add(-1) >= 0 {
		f.failed.Add(1)
		return nil, errors.New("store failing on purpose")
	}
	return f.Store.InsertSnapshots(ctx, recs)
}

func (f *failing) DeviceHead(ctx context.Context, gateway, device string) (uint64, []byte, error) {
	f.callsMu.Lock()
	f.headLookups = append(f.headLookups, device)
	f.callsMu.Unlock()
	return f.Store.DeviceHead(ctx, gateway, device)
}

// headLookupsOf counts the DeviceHead calls for a device.
func (f *failing) headLookupsOf(device string) int {
	f.callsMu.Lock()
	defer f.callsMu.Unlock()
	n := 0
	for _, d := range f.headLookups {
		if d == device {
			n++
		}
	}
	return n
}

func (f *failing) LedgerLeafIndexes(ctx context.Context, hashes [][]byte) (map[string]uint64, error) {
	f.lookups.Add(1)
	return f.Store.LedgerLeafIndexes(ctx, hashes)
}

func (f *failing) AppendLedger(ctx context.Context, start uint64, leaves [][]byte, nodes []store.LedgerNode) error {
	if f.appends.Load() {
		f.failed.Add(1)
		return errors.New("ledger failing on purpose")
	}
	return f.Store.AppendLedger(ctx, start, leaves, nodes)
}

// countingLookup counts the signer lookups of ingest's opener: one per
// envelope opened.
type countingLookup struct {
	envelope.SignerLookup
	n atomic.Int64
}

func (c *countingLookup) LookupSigner(ctx context.Context, id envelope.SignerID) (*x509.Certificate, error) {
	c.n.Add(1)
	return c.SignerLookup.LookupSigner(ctx, id)
}

// ingestEnv is the platform with a second, separately stored ingest
// (its own service identity and shared-subscription group) on its broker.
type ingestEnv struct {
	*platformtest.Env
	db     *failing
	opens  *countingLookup
	cfg    ingest.Config
	stored func() uint64
}

func newIngestEnv(t *testing.T) *ingestEnv {
	t.Helper()
	e := platformtest.Start(t, platform.Config{})
	ctx := t.Context()
	id := e.Service(t, "ingest-2", "snapshot-reader")
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "ingest-2.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	db := &failing{Store: st}
	lg, err := ledger.Open(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	key, err := pki.ReadKeyFile(filepath.Join(e.Dir, "platform", "ingest-e2e.key"), nil)
	if err != nil {
		t.Fatal(err)
	}
	v, err := e.D.E2E.Verifier(ctx)
	if err != nil {
		t.Fatal(err)
	}
	opens := &countingLookup{SignerLookup: ingest.SignerLookup{V: v}}
	opener, err := envelope.NewOpener(e.IngestCert, key, envelope.OpenOptions{
		VerifyOptions: envelope.VerifyOptions{Signers: opens, Verifier: v},
	})
	if err != nil {
		t.Fatal(err)
	}
	cfg := ingest.Config{
		Broker: "ssl://" + e.MQTTAddr, TLS: &tls.Config{RootCAs: e.Roots, Certificates: []tls.Certificate{id.TLS}},
		ClientID: "ingest-2", Group: "ingest-2", Opener: opener, Store: db, Ledger: lg, BatchSize: 4,
	}
	stored := func() uint64 {
		devs, err := st.ListDevices(context.Background(), "")
		if err != nil {
			t.Fatal(err)
		}
		var n uint64
		for _, d := range devs {
			n += d.Snapshots
		}
		return n
	}
	return &ingestEnv{Env: e, db: db, opens: opens, cfg: cfg, stored: stored}
}

// run runs the ingest until the test ends.
func (e *ingestEnv) run(t *testing.T, cfg ingest.Config) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ingest.Run(ctx, cfg) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("ingest: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Error("ingest did not stop")
		}
	})
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestIngestSurvivesStoreAndLedgerFailures: a store that fails, then a
// ledger that fails, then both working again: ingest keeps its
// connection, retries, and stores every snapshot exactly once, in chain
// order (no integrity event), with every ledger leaf once. (Before, ingest
// stopped for good after its first failed batch.)
func TestIngestSurvivesStoreAndLedgerFailures(t *testing.T) {
	e := newIngestEnv(t)
	cfg := e.cfg
	cfg.RetryMin, cfg.RetryMax = time.Millisecond, 20*time.Millisecond
	e.run(t, cfg)
	gw := e.Identity(t, "ms-1/acc-1/gw-1", true)
	c := e.MQTT(t, gw)
	builders := []*snapshot.Builder{{Device: "d1"}, {Device: "d2"}}
	sent := 0
	send := func(n int) {
		for range n {
			b := builders[sent%len(builders)]
			enc, _, err := b.Next(int64(sent), []snapshot.Value{{Channel: "c", Value: float64(sent)}})
			if err != nil {
				t.Fatal(err)
			}
			publish(t, c, topic.SnapshotsOf("ms-1/acc-1/gw-1"), seal(t, enc, gw.E2E, e.IngestCert))
			sent++
		}
	}
	// The role of ingest-2 reaches the broker within its poll: until
	// then ingest-2 reconnects, and what is published before it
	// subscribes is not for it. Probe with one-snapshot devices until it
	// takes them.
	probes := 0
	waitFor(t, "ingest-2 subscribed", func() bool {
		probes++
		enc, _, _ := (&snapshot.Builder{Device: fmt.Sprintf("probe-%d", probes)}).Next(1, []snapshot.Value{{Channel: "c", Value: 1}})
		publish(t, c, topic.SnapshotsOf("ms-1/acc-1/gw-1"), seal(t, enc, gw.E2E, e.IngestCert))
		time.Sleep(100 * time.Millisecond)
		return e.stored() > 0
	})
	// A probe delivered just before the one that was stored may still be
	// on its way: every probe ingest-2 opened is stored, then count.
	waitFor(t, "every probe stored", func() bool { return e.stored() == uint64(e.opens.n.Load()) })
	base := e.stored() // the probes stored
	send(2)
	waitFor(t, "the first snapshots stored", func() bool { return e.stored() == base+uint64(sent) })

	for _, fail := range []*atomic.Bool{&e.db.inserts, &e.db.appends} {
		before := e.db.failed.Load()
		fail.Store(true)
		send(6)
		waitFor(t, "failed attempts", func() bool { return e.db.failed.Load() >= before+3 })
		fail.Store(false)
		waitFor(t, fmt.Sprintf("all %d snapshots stored after the failure", sent), func() bool { return e.stored() == base+uint64(sent) })
	}
	send(4)
	waitFor(t, "snapshots after recovery", func() bool { return e.stored() == base+uint64(sent) })

	ctx := t.Context()
	evs, err := e.db.IntegrityEvents(ctx, "", time.Time{}, time.Time{}, 0)
	if err != nil || len(evs) != 0 {
		t.Fatalf("integrity events = %+v, %v; want none", evs, err)
	}
	size, err := e.db.LedgerSize(ctx)
	if err != nil || size != e.stored() {
		t.Fatalf("ledger size = %d, %v; want %d (one leaf per snapshot)", size, err, sent)
	}
	recs, err := e.db.QuerySnapshots(ctx, store.SnapshotQuery{Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	leaves := map[uint64]bool{}
	for _, r := range recs {
		if leaves[r.LedgerIndex] {
			t.Fatalf("ledger index %d used twice", r.LedgerIndex)
		}
		leaves[r.LedgerIndex] = true
	}
}

// TestIngestStatus: the status reports a failing store as "retrying"
// (unhealthy) with the messages held, and "running" again once they are
// stored; the lag is the age of the oldest held message, by the clock.
func TestIngestStatus(t *testing.T) {
	e := newIngestEnv(t)
	var mu sync.Mutex
	now := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	st := &ingest.Status{}
	cfg := e.cfg
	cfg.Status, cfg.Now, cfg.StallAfter = st, clock, time.Minute
	cfg.RetryMin, cfg.RetryMax = time.Millisecond, 5*time.Millisecond
	e.run(t, cfg)
	waitFor(t, "ingest connected", func() bool { return st.Health().Connected })
	if h := st.Health(); h.State != "running" || !h.Healthy() || h.Pending != 0 || h.Lag != 0 {
		t.Fatalf("idle: %+v", h)
	}
	gw := e.Identity(t, "ms-1/acc-1/gw-1", true)
	c := e.MQTT(t, gw)
	b := &snapshot.Builder{Device: "d"}
	e.db.inserts.Store(true)
	for i := range 3 {
		enc, _, _ := b.Next(int64(i), []snapshot.Value{{Channel: "c", Value: 1}})
		publish(t, c, topic.SnapshotsOf("ms-1/acc-1/gw-1"), seal(t, enc, gw.E2E, e.IngestCert))
	}
	waitFor(t, "retrying", func() bool { h := st.Health(); return h.State == "retrying" && h.Pending == 3 })
	advance(90 * time.Second)
	if h := st.Health(); h.Healthy() || h.Lag != 90*time.Second || h.Failures == 0 {
		t.Fatalf("failing store: %+v; want unhealthy, lag 90s", h)
	}
	e.db.inserts.Store(false)
	waitFor(t, "recovered", func() bool { h := st.Health(); return h.State == "running" && h.Pending == 0 })
	if n := e.stored(); n != 3 {
		t.Fatalf("stored %d, want 3", n)
	}
}

// logLines is a slog handler that hands each record's message and
// attributes, as text, to a channel.
type logLines chan string

func (l logLines) Enabled(context.Context, slog.Level) bool { return true }
func (l logLines) Handle(_ context.Context, r slog.Record) error {
	s := r.Message
	r.Attrs(func(a slog.Attr) bool { s += " " + a.String(); return true })
	select {
	case l <- s:
	default:
	}
	return nil
}
func (l logLines) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l logLines) WithGroup(string) slog.Handler      { return l }

// TestRefusedSharedSubscriptionIsAnError: paho keys a SUBACK's results by
// the filter without its "$share/GROUP/" prefix, so looking the shared
// filter up found nothing and a refused subscription counted as granted:
// ingest reported itself subscribed and received nothing. A refusal now
// ends the connection with an error that names the missing role.
func TestRefusedSharedSubscriptionIsAnError(t *testing.T) {
	e := newIngestEnv(t)
	id := e.Service(t, "not-ingest", tacs.RoleRulesEngine) // may not read snapshots
	lines := make(logLines, 64)
	st := &ingest.Status{}
	cfg := e.cfg
	cfg.ClientID, cfg.Group, cfg.Status = "not-ingest", "not-ingest", st
	cfg.TLS = &tls.Config{RootCAs: e.Roots, Certificates: []tls.Certificate{id.TLS}}
	cfg.Logger = slog.New(lines)
	cfg.RetryMin, cfg.RetryMax = time.Millisecond, 5*time.Millisecond
	e.run(t, cfg)
	deadline := time.After(30 * time.Second)
	for {
		select {
		case l := <-lines:
			if strings.Contains(l, "ingest subscribed") {
				t.Fatalf("a refused subscription counted as granted: %s", l)
			}
			if strings.Contains(l, "refused by the broker") && strings.Contains(l, "snapshot-reader") {
				if st.Health().Connected {
					t.Fatal("status says connected after the refusal")
				}
				return
			}
		case <-deadline:
			t.Fatal("no refusal logged within 30 s")
		}
	}
}

// TestIngestOpensOnArrival: a message is opened when it arrives, not once
// its batch is complete (the workers open what arrives while a batch
// waits or commits), and batches still commit whole and in arrival order.
// Before, a batch was opened only once BatchSize messages had arrived or
// BatchWait had passed.
func TestIngestOpensOnArrival(t *testing.T) {
	e := newIngestEnv(t)
	cfg := e.cfg
	cfg.BatchWait = time.Hour // a batch is only ever complete by its size
	e.run(t, cfg)
	gw := e.Identity(t, "ms-1/acc-1/gw-1", true)
	c := e.MQTT(t, gw)
	gwTopic := topic.SnapshotsOf("ms-1/acc-1/gw-1")
	sent := 0
	send := func(device string, seq int) {
		enc, _, err := (&snapshot.Builder{Device: device}).Next(int64(seq), []snapshot.Value{{Channel: "c", Value: float64(seq)}})
		if err != nil {
			t.Fatal(err)
		}
		publish(t, c, gwTopic, seal(t, enc, gw.E2E, e.IngestCert))
		sent++
	}
	// Probe until ingest-2 opens one (it takes a poll of the broker's
	// role reload to subscribe): one-snapshot devices, opened while their
	// batch is still short of BatchSize.
	probes := 0
	waitFor(t, "ingest-2 opening a message of an incomplete batch", func() bool {
		probes++
		send(fmt.Sprintf("probe-%d", probes), 1)
		time.Sleep(100 * time.Millisecond)
		return e.opens.n.Load() > 0
	})
	if e.stored() != 0 {
		t.Fatalf("%d snapshots stored from an incomplete batch", e.stored())
	}
	opened := e.opens.n.Load()
	for i := range 2 {
		send(fmt.Sprintf("more-%d", i), 1)
	}
	waitFor(t, "two more messages opened", func() bool { return e.opens.n.Load() >= opened+2 })
	total := e.opens.n.Load() // what was delivered: a slow probe may have been opened since
	// Complete the last batch: everything opened is stored, in batches.
	for i := 0; total%int64(cfg.BatchSize) != 0; i++ {
		send(fmt.Sprintf("fill-%d", i), 1)
		total++
	}
	waitFor(t, "every opened message stored", func() bool { return e.stored() == uint64(total) })
	if evs, err := e.db.IntegrityEvents(t.Context(), "", time.Time{}, time.Time{}, 0); err != nil || len(evs) != 0 {
		t.Fatalf("integrity events = %+v, %v; want none", evs, err)
	}
}
