package console_test

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"syscall"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/console"
	"github.com/fieldtrust/fieldtrust/internal/snapshot"
	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/store/postgres/pgtest"
	"github.com/fieldtrust/fieldtrust/internal/store/sqlite"
	"github.com/fieldtrust/fieldtrust/internal/tacs"
)

// TestViewTimes measures the server time and bytes of the console's two
// heavy views on SQLite: the fleet view with 10,000 devices, and a device
// chart over one day of 1 Hz data (86,400 snapshots). It is a load test,
// outside 'make test': FIELDTRUST_CONSOLE_BENCH=1 (make bench-console);
// docs/benchmarks.md has the numbers.
func TestViewTimes(t *testing.T) {
	if os.Getenv("FIELDTRUST_CONSOLE_BENCH") == "" {
		t.Skip("a load test: FIELDTRUST_CONSOLE_BENCH=1 (make bench-console)")
	}
	ctx := t.Context()
	// FIELDTRUST_CONSOLE_BENCH=postgres measures on PostgreSQL
	// (FIELDTRUST_TEST_POSTGRES), anything else on SQLite.
	var st store.Store
	if os.Getenv("FIELDTRUST_CONSOLE_BENCH") == "postgres" {
		st = pgtest.Open(t)
	} else {
		s, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "bench.db"))
		if err != nil {
			t.Fatal(err)
		}
		st = s
	}
	defer st.Close()
	t0 := time.Now().UTC().Truncate(24 * time.Hour).Add(-24 * time.Hour)

	// 10,000 devices: 20 masters × 10 accounts × 10 gateways × 5 devices,
	// three snapshots each; and one device with a day of 1 Hz data.
	start := time.Now()
	var idx uint64
	insert := func(recs []store.SnapshotRecord) {
		if _, err := st.InsertSnapshots(ctx, recs); err != nil {
			t.Fatal(err)
		}
	}
	var batch []store.SnapshotRecord
	for m := range 20 {
		for a := range 10 {
			for g := range 10 {
				gw := fmt.Sprintf("cust-%02d/site-%d/gw-%d", m, a, g)
				for dv := range 5 {
					b := snapshot.Builder{Device: fmt.Sprintf("pump-%d", dv), DeviceType: "pump"}
					for i := range 3 {
						batch = append(batch, record(t, &b, gw, t0.Add(time.Duration(i)*time.Minute), &idx, float64(i)))
					}
				}
				if len(batch) >= 1500 {
					insert(batch)
					batch = batch[:0]
				}
			}
		}
	}
	insert(batch)
	batch = batch[:0]
	b := snapshot.Builder{Device: "bench-1", DeviceType: "test-bench"}
	const gw = "cust-00/site-0/gw-0"
	for i := range 86400 {
		batch = append(batch, record(t, &b, gw, t0.Add(time.Duration(i)*time.Second), &idx, float64(i%600)))
		if len(batch) == 2000 {
			insert(batch)
			batch = batch[:0]
		}
	}
	insert(batch)
	t.Logf("loaded %d snapshots in %v", idx, time.Since(start).Round(time.Millisecond))
	if la, err := os.ReadFile("/proc/loadavg"); err == nil {
		t.Logf("load average: %s", la)
	}

	for _, q := range []struct {
		name string
		f    func() error
	}{
		{"ListDevices", func() error { _, err := st.ListDevices(ctx, ""); return err }},
		{"LatestSnapshots", func() error { _, err := st.LatestSnapshots(ctx, ""); return err }},
		{"IntegrityEvents", func() error {
			_, err := st.IntegrityEvents(ctx, "", time.Time{}, time.Time{}, store.MaxLimit)
			return err
		}},
	} {
		s := time.Now()
		if err := q.f(); err != nil {
			t.Fatal(err)
		}
		t.Logf("store %s: %v", q.name, time.Since(s))
	}
	c, err := console.New(console.Options{Store: st.(console.Store), Grants: tacs.DefaultGrants(), Hosts: []string{"localhost"}})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	c.Register(mux)
	cookie := benchSession(t, st)
	// CPU time of the process (user + system) next to wall time: the
	// machine is shared, and CPU time is what a request costs whatever the
	// neighbours do.
	cpu := func() time.Duration {
		var ru syscall.Rusage
		syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	var lastCPU time.Duration
	get := func(path string) (time.Duration, int) {
		req := httptest.NewRequestWithContext(context.Background(), "GET", "https://localhost"+path, nil)
		req.AddCookie(cookie)
		rec := httptest.NewRecorder()
		c0 := cpu()
		start := time.Now()
		mux.ServeHTTP(rec, req)
		d := time.Since(start)
		lastCPU = cpu() - c0
		if rec.Code != http.StatusOK {
			t.Fatalf("GET %s: %d %.300s", path, rec.Code, rec.Body.String())
		}
		return d, rec.Body.Len()
	}
	from, to := t0.Format(time.RFC3339), t0.Add(24*time.Hour).Format(time.RFC3339)
	for _, v := range []struct{ name, path string }{
		{"fleet, 10,000 devices (page 1 of 200)", "/fleet"},
		{"fleet, 10,000 devices, search 'gw-7' (1,000 match)", "/fleet?q=gw-7"},
		{"device page (1 Hz device)", "/devices/" + gw + "/bench-1"},
		{"chart: one day of 1 Hz data, 1000 points", "/series/" + gw + "/bench-1?channel=flow&points=1000&from=" + from + "&to=" + to},
	} {
		var times, cpus []time.Duration
		var size int
		for range 7 {
			d, n := get(v.path)
			times, cpus, size = append(times, d), append(cpus, lastCPU), n
		}
		sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
		sort.Slice(cpus, func(i, j int) bool { return cpus[i] < cpus[j] })
		t.Logf("%-52s wall median %6.1f ms (min %6.1f)  CPU median %6.1f ms  %7d bytes", v.name, ms(times[3]), ms(times[0]), ms(cpus[3]), size)
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func record(t *testing.T, b *snapshot.Builder, gw string, at time.Time, idx *uint64, v float64) store.SnapshotRecord {
	t.Helper()
	vals := []snapshot.Value{
		{Channel: "operating_hours", Value: 8000 + v/3600, Unit: "h", Group: "runtime"},
		{Channel: "flow", Value: 24 + v/100, Unit: "m3/h", Group: "hydraulic"},
		{Channel: "pressure_out", Value: 9.8, Unit: "bar", Group: "hydraulic"},
		{Channel: "temp_bearing", Value: 48, Unit: "Cel", Group: "thermal"},
	}
	enc, s, err := b.Next(at.UnixMilli(), vals)
	if err != nil {
		t.Fatal(err)
	}
	h := snapshot.Hash(enc)
	*idx++
	return store.SnapshotRecord{Gateway: gw, Device: s.Device, DeviceType: s.DeviceType, Seq: s.Seq, Time: s.Time(), Hash: h[:], Prev: s.Prev,
		Values: s.Values, Signer: "bench", SignedAt: s.Time(), ReceivedAt: s.Time(), LedgerIndex: *idx - 1}
}

// benchSession makes a vendor admin session directly in the store.
func benchSession(t *testing.T, st store.Store) *http.Cookie {
	t.Helper()
	u, err := st.CreateUser(t.Context(), store.ConsoleUser{Email: "bench@vendor.example", Scope: "", Role: store.RoleAdmin, Handle: []byte("bench"), CreatedBy: "bench", CreatedAt: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	tok := make([]byte, 32)
	tok[0] = 1
	h := sha256.Sum256(tok)
	if err := st.CreateSession(t.Context(), store.ConsoleSession{TokenHash: h[:], UserID: u.ID, CSRF: []byte("c"), Method: "bench", CreatedAt: time.Now(), ExpiresAt: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	return &http.Cookie{Name: "__Host-fieldtrust-session", Value: base64.RawURLEncoding.EncodeToString(tok)}
}
