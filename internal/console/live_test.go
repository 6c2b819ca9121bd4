package console

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"math"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/ledger"
	"github.com/fieldtrust/fieldtrust/internal/snapshot"
	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/store/sqlite"
	"github.com/fieldtrust/fieldtrust/internal/tacs"
)

// countingStore counts the live feed's store reads.
type countingStore struct {
	*sqlite.Store
	since, size atomic.Int64
}

func (s *countingStore) SnapshotsSince(ctx context.Context, scope string, from uint64, limit int) ([]store.SnapshotRecord, error) {
	s.since.Add(1)
	return s.Store.SnapshotsSince(ctx, scope, from, limit)
}

func (s *countingStore) LedgerSize(ctx context.Context) (uint64, error) {
	s.size.Add(1)
	return s.Store.LedgerSize(ctx)
}

// liveFixture stores snapshots of two customers' gateways through the real
// ledger and SQLite store.
type liveFixture struct {
	t   *testing.T
	st  *countingStore
	log *ledger.Log
	bs  map[string]*snapshot.Builder
}

func newLiveFixture(t *testing.T) *liveFixture {
	st, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "ft.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	l, err := ledger.Open(t.Context(), st)
	if err != nil {
		t.Fatal(err)
	}
	return &liveFixture{t: t, st: &countingStore{Store: st}, log: l, bs: map[string]*snapshot.Builder{}}
}

// store records and stores the next snapshot of gw's pump.
func (f *liveFixture) store(gw string) {
	t := f.t
	b := f.bs[gw]
	if b == nil {
		b = &snapshot.Builder{Device: "pump-1", DeviceType: "pump"}
		f.bs[gw] = b
	}
	at := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC).Add(time.Duration(len(f.bs)) * time.Minute)
	enc, s, err := b.Next(at.UnixMilli(), []snapshot.Value{{Channel: "temp", Value: 20.5, Unit: "Cel"}, {Channel: "count", Value: 1e-7}})
	if err != nil {
		t.Fatal(err)
	}
	h := snapshot.Hash(enc)
	first, _, _, err := f.log.Append(t.Context(), [][]byte{ledger.LeafData(gw, h)})
	if err != nil {
		t.Fatal(err)
	}
	rec := store.SnapshotRecord{Gateway: gw, Device: s.Device, DeviceType: s.DeviceType, Seq: s.Seq, Time: s.Time(),
		Hash: h[:], Prev: s.Prev, Values: s.Values, Signer: "e2e:" + gw, SignedAt: at, ReceivedAt: at.Add(time.Second), LedgerIndex: first}
	if _, err := f.st.InsertSnapshots(t.Context(), []store.SnapshotRecord{rec}); err != nil {
		t.Fatal(err)
	}
}

func viewerOf(scope string) *Viewer {
	u := store.ConsoleUser{Email: "v@" + scope, Scope: scope, Role: store.RoleViewer}
	return &Viewer{User: u, Subject: Subject(u), Scope: scope, grants: tacs.DefaultGrants()}
}

// received returns the snapshot events waiting on s.
func received(s *stream) []string {
	var out []string
	for {
		select {
		case e := <-s.ch:
			out = append(out, e.gateway)
		default:
			return out
		}
	}
}

// TestHubIdleReadsNothing: with nobody watching the live feed reads
// nothing from the store; a stream that opens gets what arrives after it
// opened, and only what its viewer may read.
func TestHubIdleReadsNothing(t *testing.T) {
	ctx := t.Context()
	f := newLiveFixture(t)
	h := newHub(&Console{opts: Options{Store: f.st}, log: slog.New(slog.DiscardHandler)})
	f.store("acme/berlin/gw-1")
	for range 3 {
		if err := h.poll(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if n, m := f.st.since.Load(), f.st.size.Load(); n != 0 || m != 0 {
		t.Fatalf("with no stream open the feed read the store: %d snapshot reads, %d ledger sizes", n, m)
	}

	acme, err := h.add(ctx, viewerOf("acme"))
	if err != nil {
		t.Fatal(err)
	}
	f.store("acme/berlin/gw-1")
	f.store("globex/lab/gw-1")
	if err := h.poll(ctx); err != nil {
		t.Fatal(err)
	}
	if got := received(acme); len(got) != 1 || got[0] != "acme/berlin/gw-1" {
		t.Fatalf("acme's stream got %v, want the one acme snapshot stored after it opened", got)
	}
	globex, err := h.add(ctx, viewerOf("globex"))
	if err != nil {
		t.Fatal(err)
	}
	f.store("globex/lab/gw-1")
	if err := h.poll(ctx); err != nil {
		t.Fatal(err)
	}
	if a, g := received(acme), received(globex); len(a) != 0 || len(g) != 1 || g[0] != "globex/lab/gw-1" {
		t.Fatalf("after a globex snapshot: acme got %v, globex got %v", a, g)
	}
	if n := f.st.size.Load(); n != 1 {
		t.Errorf("the ledger's end was read %d times, want once (when the first stream opened)", n)
	}

	// Everyone leaves: the feed stops reading, and the next stream starts
	// at the ledger's new end.
	h.remove(acme)
	h.remove(globex)
	reads := f.st.since.Load()
	f.store("acme/berlin/gw-1")
	for range 3 {
		if err := h.poll(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if n := f.st.since.Load(); n != reads {
		t.Fatalf("after every stream closed the feed read the store %d more times", n-reads)
	}
	again, err := h.add(ctx, viewerOf("acme"))
	if err != nil {
		t.Fatal(err)
	}
	f.store("acme/berlin/gw-1")
	if err := h.poll(ctx); err != nil {
		t.Fatal(err)
	}
	if got := received(again); len(got) != 1 {
		t.Fatalf("a stream opened after an idle spell got %d snapshots, want the 1 stored after it opened", len(got))
	}
}

// oldSnapshotEvent is the feed's event as encoding/json makes it: the
// oracle of appendSnapshotEvent.
func oldSnapshotEvent(r store.SnapshotRecord) ([]byte, error) {
	type liveValue struct {
		Channel string  `json:"c"`
		Value   float64 `json:"v"`
		Unit    string  `json:"u,omitempty"`
	}
	vals := make([]liveValue, 0, len(r.Values))
	for _, v := range r.Values {
		vals = append(vals, liveValue{v.Channel, v.Value, v.Unit})
	}
	return json.Marshal(map[string]any{"path": r.Path(), "gateway": r.Gateway, "device": r.Device, "seq": r.Seq,
		"time": r.Time, "received": r.ReceivedAt, "ledger_index": r.LedgerIndex, "hash": hexHash(r.Hash), "values": vals})
}

func checkSnapshotEvent(t *testing.T, r store.SnapshotRecord) {
	t.Helper()
	want, werr := oldSnapshotEvent(r)
	got, gerr := appendSnapshotEvent(nil, &r)
	if (werr != nil) != (gerr != nil) {
		t.Fatalf("encoding/json: %v, appendSnapshotEvent: %v", werr, gerr)
	}
	if werr == nil && !bytes.Equal(got, want) {
		t.Fatalf("appendSnapshotEvent\n got %s\nwant %s", got, want)
	}
}

func TestSnapshotEventMatchesEncodingJSON(t *testing.T) {
	at := time.Date(2026, 12, 1, 12, 0, 0, 123456789, time.UTC)
	base := store.SnapshotRecord{Gateway: "acme/berlin/gw-1", Device: "pump-1", Seq: 7, Time: at, ReceivedAt: at.Add(time.Second),
		LedgerIndex: 1 << 40, Hash: bytes.Repeat([]byte{0xab}, 32)}
	floats := []float64{0, math.Copysign(0, -1), 1, -1, 0.1, 20.5, 1e-6, 9.99e-7, 1e-7, 1.5e-10, 1e20, 1e21, 1.2345e21, -1e300,
		math.MaxFloat64, math.SmallestNonzeroFloat64, 123456789.125, 1e-300, float64(1 << 53)}
	for _, tt := range []struct {
		name   string
		mutate func(r *store.SnapshotRecord)
	}{
		{"plain", func(r *store.SnapshotRecord) {}},
		{"floats", func(r *store.SnapshotRecord) {
			for i, f := range floats {
				r.Values = append(r.Values, snapshot.Value{Channel: "c" + string(rune('a'+i)), Value: f, Unit: "V"})
			}
		}},
		{"escapes", func(r *store.SnapshotRecord) {
			r.Device = `pump "1" <script>&`
			r.Values = []snapshot.Value{
				{Channel: "temp\n\t\x01\x7f", Value: 1, Unit: "°C"},
				{Channel: "bad utf-8 \xff\xfe", Value: 2, Unit: "\u2028\u2029"},
				{Channel: `back\slash`, Value: 3},
			}
		}},
		{"no values, local times", func(r *store.SnapshotRecord) {
			loc := time.FixedZone("x", 5*3600+1800)
			r.Time, r.ReceivedAt, r.Values, r.Hash = r.Time.In(loc), time.Time{}, nil, nil
		}},
		{"year out of range", func(r *store.SnapshotRecord) { r.Time = time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC) }},
		{"NaN", func(r *store.SnapshotRecord) { r.Values = []snapshot.Value{{Channel: "x", Value: math.NaN()}} }},
		{"infinity", func(r *store.SnapshotRecord) { r.Values = []snapshot.Value{{Channel: "x", Value: math.Inf(-1)}} }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := base
			tt.mutate(&r)
			checkSnapshotEvent(t, r)
		})
	}
}

func FuzzSnapshotEventMatchesEncodingJSON(f *testing.F) {
	f.Add("acme/berlin/gw-1", "pump-1", "temp", "Cel", math.Float64bits(20.5), uint64(1), int64(1764590400123456789))
	f.Add("a<b>&c", "\xff\"\\", "\u2028", "", math.Float64bits(1e-7), uint64(math.MaxUint64), int64(-62135596800000000))
	f.Add("g", "d", "c", "u", math.Float64bits(1e21), uint64(0), int64(0))
	f.Fuzz(func(t *testing.T, gw, dev, ch, unit string, bits, seq uint64, nanos int64) {
		at := time.Unix(0, nanos).UTC()
		r := store.SnapshotRecord{Gateway: gw, Device: dev, Seq: seq, LedgerIndex: seq / 3, Time: at, ReceivedAt: at.Add(time.Hour),
			Hash: []byte(strings.Repeat(ch, 2)), Values: []snapshot.Value{{Channel: ch, Value: math.Float64frombits(bits), Unit: unit}, {Channel: unit, Value: float64(seq)}}}
		checkSnapshotEvent(t, r)
	})
}

// BenchmarkSnapshotEvent: the live feed's event of a snapshot of the
// end-to-end workload's shape (340 values), as encoding/json made it and
// as appendSnapshotEvent makes it.
func BenchmarkSnapshotEvent(b *testing.B) {
	at := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	r := store.SnapshotRecord{Gateway: "ms-00/acc-0/gw-0", Device: "dev-0", Seq: 42, Time: at, ReceivedAt: at, LedgerIndex: 123456, Hash: make([]byte, 32)}
	for i := range 340 {
		r.Values = append(r.Values, snapshot.Value{Channel: "group-" + string(rune('a'+i%12)) + ".channel-" + strconv.Itoa(i), Value: float64(i)*1.37 + 0.001, Unit: []string{"Cel", "bar", "m3/h", ""}[i%4]})
	}
	b.Run("encoding-json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := oldSnapshotEvent(r); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("append", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := appendSnapshotEvent(nil, &r); err != nil {
				b.Fatal(err)
			}
		}
	})
}
