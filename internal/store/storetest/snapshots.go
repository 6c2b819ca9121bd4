package storetest

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/snapshot"
	"github.com/fieldtrust/fieldtrust/internal/snapshot/synth"
	"github.com/fieldtrust/fieldtrust/internal/store"
)

// runSnapshots runs the snapshot part of the suite.
func runSnapshots(t *testing.T, open func(t *testing.T) store.Store) {
	t.Run("SnapshotInsert", func(t *testing.T) { testSnapshotInsert(t, open(t)) })
	t.Run("SnapshotRoundTrip", func(t *testing.T) { testSnapshotRoundTrip(t, open(t)) })
	t.Run("SnapshotScopes", func(t *testing.T) { testSnapshotScopes(t, open(t)) })
	t.Run("SnapshotPaging", func(t *testing.T) { testSnapshotPaging(t, open(t)) })
	t.Run("SnapshotFilters", func(t *testing.T) { testSnapshotFilters(t, open(t)) })
	t.Run("IntegrityEvents", func(t *testing.T) { testIntegrityEvents(t, open(t)) })
	t.Run("Rejects", func(t *testing.T) { testRejects(t, open(t)) })
	t.Run("RejectAggregation", func(t *testing.T) { testRejectAggregation(t, open(t)) })
}

// t0 is the suite's epoch: a whole millisecond, as stored.
var t0 = time.Date(2026, 11, 23, 8, 0, 0, 0, time.UTC)

// chain makes consecutive snapshot records of one device, as ingest would
// store them.
type chain struct {
	gateway string
	b       snapshot.Builder
}

func newChain(gateway, device, typ string) *chain {
	return &chain{gateway: gateway, b: snapshot.Builder{Device: device, DeviceType: typ}}
}

// next returns the record of the next snapshot, measured at at.
func (c *chain) next(t *testing.T, at time.Time, values ...snapshot.Value) store.SnapshotRecord {
	t.Helper()
	if values == nil {
		seq := uint64(1)
		if c.b.Head != nil {
			seq = c.b.Head.Seq + 1
		}
		values = []snapshot.Value{
			{Channel: "temp", Value: 20 + float64(seq)/10, Unit: "Cel", Group: "env"},
			{Channel: "pressure", Value: 1013.25, Unit: "hPa", Group: "env"},
			{Channel: "count", Value: float64(seq), Group: "counters"},
		}
	}
	enc, s, err := c.b.Next(at.UnixMilli(), values)
	if err != nil {
		t.Fatal(err)
	}
	h := snapshot.Hash(enc)
	return store.SnapshotRecord{
		Gateway: c.gateway, Device: s.Device, DeviceType: s.DeviceType, Seq: s.Seq, Time: s.Time(),
		Hash: h[:], Prev: s.Prev, Values: s.Values,
		Signer: "e2e:" + c.gateway, SignedAt: s.Time().Add(time.Second), ReceivedAt: s.Time().Add(2 * time.Second),
		LedgerIndex: s.Seq * 10,
	}
}

func insert(t *testing.T, s store.Store, recs ...store.SnapshotRecord) []bool {
	t.Helper()
	ins, err := s.InsertSnapshots(t.Context(), recs)
	if err != nil {
		t.Fatalf("InsertSnapshots: %v", err)
	}
	if len(ins) != len(recs) {
		t.Fatalf("InsertSnapshots reported %d results for %d records", len(ins), len(recs))
	}
	return ins
}

// checkRecord compares a stored record with what was inserted, and checks
// that it re-encodes to the bytes of its hash.
func checkRecord(t *testing.T, got, want store.SnapshotRecord) {
	t.Helper()
	enc, err := snapshot.Encode(got.Snapshot())
	if err != nil {
		t.Fatalf("re-encode %s seq %d: %v", got.Path(), got.Seq, err)
	}
	if h := snapshot.Hash(enc); !bytes.Equal(h[:], want.Hash) {
		t.Fatalf("%s seq %d re-encodes to hash %x, want %x\n got %+v\nwant %+v", got.Path(), got.Seq, h, want.Hash, got, want)
	}
	if got.Gateway != want.Gateway || got.Device != want.Device || got.DeviceType != want.DeviceType || got.Seq != want.Seq ||
		!got.Time.Equal(want.Time) || !bytes.Equal(got.Hash, want.Hash) || !bytes.Equal(got.Prev, want.Prev) ||
		got.Signer != want.Signer || !got.SignedAt.Equal(want.SignedAt) || !got.ReceivedAt.Equal(want.ReceivedAt) ||
		got.LedgerIndex != want.LedgerIndex || got.Time.Location() != time.UTC {
		t.Fatalf("stored record\n got %+v\nwant %+v", got, want)
	}
	if len(got.Values) != len(want.Values) {
		t.Fatalf("%s seq %d: %d values, want %d", got.Path(), got.Seq, len(got.Values), len(want.Values))
	}
	for i := range got.Values {
		g, w := got.Values[i], want.Values[i]
		if g.Channel != w.Channel || g.Unit != w.Unit || g.Group != w.Group || math.Float64bits(g.Value) != math.Float64bits(w.Value) {
			t.Fatalf("%s seq %d value %d = %+v, want %+v", got.Path(), got.Seq, i, g, w)
		}
	}
}

func testSnapshotInsert(t *testing.T, s store.Store) {
	ctx := t.Context()
	const gw = "ms-acc-1/acc-1/gw-1"
	if _, _, err := s.DeviceHead(ctx, gw, "pump-7"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("head of an unknown device: err = %v, want ErrNotFound", err)
	}
	if ins, err := s.InsertSnapshots(ctx, nil); err != nil || len(ins) != 0 {
		t.Fatalf("InsertSnapshots(nil) = %v, %v", ins, err)
	}
	c := newChain(gw, "pump-7", "pump")
	r1, r2, r3 := c.next(t, t0), c.next(t, t0.Add(time.Minute)), c.next(t, t0.Add(2*time.Minute))
	if ins := insert(t, s, r1, r2); !ins[0] || !ins[1] {
		t.Fatalf("first insert reported %v", ins)
	}
	seq, hash, err := s.DeviceHead(ctx, gw, "pump-7")
	if err != nil || seq != 2 || !bytes.Equal(hash, r2.Hash) {
		t.Fatalf("DeviceHead = %d %x %v, want 2 %x", seq, hash, err, r2.Hash)
	}

	// A redelivery is skipped, also within one batch.
	if ins := insert(t, s, r2, r3, r3); ins[0] || !ins[1] || ins[2] {
		t.Fatalf("redelivery of seq 2 with new seq 3 twice reported %v, want [false true false]", ins)
	}

	// A fork (same seq, other content) fails the whole batch.
	other := newChain(gw, "pump-7", "pump")
	f1 := other.next(t, t0, snapshot.Value{Channel: "temp", Value: 99})
	r4 := c.next(t, t0.Add(3*time.Minute))
	if _, err := s.InsertSnapshots(ctx, []store.SnapshotRecord{r4, f1}); !errors.Is(err, store.ErrExists) {
		t.Fatalf("fork of seq 1: err = %v, want ErrExists", err)
	}
	if seq, _, _ := s.DeviceHead(ctx, gw, "pump-7"); seq != 3 {
		t.Fatalf("after a refused batch the head is %d, want 3 (nothing of the batch stored)", seq)
	}

	// A gap, then the late snapshot that fills it: the head stays at the
	// largest seq.
	r5 := c.next(t, t0.Add(4*time.Minute))
	if ins := insert(t, s, r5); !ins[0] {
		t.Fatal("seq 5 after a gap not inserted")
	}
	if ins := insert(t, s, r4); !ins[0] {
		t.Fatal("late seq 4 not inserted")
	}
	seq, hash, err = s.DeviceHead(ctx, gw, "pump-7")
	if err != nil || seq != 5 || !bytes.Equal(hash, r5.Hash) {
		t.Fatalf("DeviceHead after a late snapshot = %d, %v; want 5", seq, err)
	}
	devs, err := s.ListDevices(ctx, "")
	if err != nil || len(devs) != 1 {
		t.Fatalf("ListDevices = %+v, %v", devs, err)
	}
	d := devs[0]
	if d.Gateway != gw || d.Device != "pump-7" || d.DeviceType != "pump" || d.LastSeq != 5 || !d.LastTime.Equal(r5.Time) ||
		!bytes.Equal(d.LastHash, r5.Hash) || d.Snapshots != 5 || d.Path() != gw+"/pump-7" {
		t.Fatalf("device = %+v", d)
	}
	all, err := s.QuerySnapshots(ctx, store.SnapshotQuery{Gateway: gw, Device: "pump-7"})
	if err != nil || len(all) != 5 {
		t.Fatalf("QuerySnapshots = %d records, %v; want 5", len(all), err)
	}
	for i, want := range []store.SnapshotRecord{r1, r2, r3, r4, r5} {
		checkRecord(t, all[i], want)
	}
}

func testSnapshotRoundTrip(t *testing.T, s store.Store) {
	ctx := t.Context()
	// Values chosen to break lossy storage: signed zero, subnormals,
	// integers beyond 2^53, float16/32-exact values, extremes; channel
	// names out of order; units with non-ASCII text; empty unit and group.
	values := []snapshot.Value{
		{Channel: "z-last-name", Value: math.Copysign(0, -1), Unit: "°C", Group: "g1"},
		{Channel: "a", Value: 0},
		{Channel: "m", Value: 1.5, Unit: "m³/h"},
		{Channel: "b", Value: 0.1, Group: "g2"},
		{Channel: "c", Value: -1e-300},
		{Channel: "d", Value: 5e-324},
		{Channel: "e", Value: 1 << 53, Unit: "1"},
		{Channel: "f", Value: 1<<53 + 2},
		{Channel: "g", Value: -(1 << 60)},
		{Channel: "h", Value: math.MaxFloat64},
		{Channel: "i", Value: 65504},
		{Channel: "j", Value: -3.4028234663852886e38},
		{Channel: "k", Value: 123456789},
		{Channel: "l", Value: -7},
	}
	typed := newChain("ms-acc-1/acc-1/gw-1", "bench-1", "test-bench")
	untyped := newChain("ms-acc-1/acc-1/gw-1", "bench-2", "")
	// The same channel name in another unit is another channel.
	otherUnit := []snapshot.Value{{Channel: "m", Value: 2.5, Unit: "l/min"}, {Channel: "a", Value: 1, Unit: "V", Group: "g1"}}
	recs := []store.SnapshotRecord{
		typed.next(t, t0.Add(123*time.Millisecond), values...),
		untyped.next(t, t0.Add(-time.Hour), otherUnit...),
		typed.next(t, t0.Add(time.Second), values[3:]...),
		untyped.next(t, time.UnixMilli(-1).UTC(), otherUnit...), // before 1970
	}
	insert(t, s, recs...)
	for _, want := range recs {
		got, err := s.SnapshotByHash(ctx, "", want.Hash)
		if err != nil {
			t.Fatalf("SnapshotByHash(%x): %v", want.Hash, err)
		}
		checkRecord(t, got, want)
		got, err = s.SnapshotByHash(ctx, want.Gateway, want.Hash)
		if err != nil {
			t.Fatal(err)
		}
		checkRecord(t, got, want)
	}
	if _, err := s.SnapshotByHash(ctx, "", make([]byte, 32)); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("unknown hash: err = %v, want ErrNotFound", err)
	}
	latest, err := s.LatestSnapshots(ctx, "")
	if err != nil || len(latest) != 2 {
		t.Fatalf("LatestSnapshots = %d, %v", len(latest), err)
	}
	checkRecord(t, latest[0], recs[2])
	checkRecord(t, latest[1], recs[3])
	got, err := s.QuerySnapshots(ctx, store.SnapshotQuery{})
	if err != nil || len(got) != 4 {
		t.Fatalf("QuerySnapshots = %d, %v", len(got), err)
	}
	for i, want := range []store.SnapshotRecord{recs[3], recs[1], recs[0], recs[2]} {
		checkRecord(t, got[i], want)
	}
}

func testSnapshotScopes(t *testing.T, s store.Store) {
	ctx := t.Context()
	gateways := []string{
		"ms-acc-1/acc-1/gw-1",
		"ms-acc-1/acc-1/gw-10",
		"ms-acc-1/acc-2/gw-1",
		"ms-acc-10/acc-1/gw-1", // ms-acc-1 is a string prefix, not an element prefix
		"ms-acc-2/acc-1/gw-1",
		"ms_acc-1/acc-1/gw-1", // would match ms-acc-1 if '_' were a LIKE wildcard
	}
	byGateway := map[string]store.SnapshotRecord{}
	at := t0
	for _, gw := range gateways {
		c := newChain(gw, "pump-7", "pump")
		r := c.next(t, at)
		at = at.Add(time.Minute)
		insert(t, s, r)
		byGateway[gw] = r
		if err := s.RecordIntegrityEvent(ctx, store.IntegrityEvent{Gateway: gw, Device: "pump-7", Kind: store.EventGap, Seq: 3, ExpectedSeq: 2, At: r.Time}); err != nil {
			t.Fatal(err)
		}
	}
	for _, tt := range []struct {
		scope string
		want  []string // gateways
	}{
		{"", gateways},
		{"ms-acc-1", gateways[:3]},
		{"ms-acc-1/acc-1", gateways[:2]},
		{"ms-acc-1/acc-1/gw-1", gateways[:1]},
		{"ms-acc-1/acc-1/gw", nil},
		{"ms-acc-10", gateways[3:4]},
		{"ms-acc", nil},
		{"ms_acc-1", gateways[5:]},
		{"ms-acc-3", nil},
	} {
		want := slices.Clone(tt.want)
		slices.Sort(want)
		gws := func(what string, got []string) {
			t.Helper()
			slices.Sort(got)
			if !slices.Equal(got, want) {
				t.Errorf("%s in scope %q: gateways %q, want %q", what, tt.scope, got, want)
			}
		}
		devs, err := s.ListDevices(ctx, tt.scope)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, d := range devs {
			got = append(got, d.Gateway)
		}
		gws("ListDevices", got)
		if !slices.IsSortedFunc(devs, func(a, b store.Device) int {
			return cmp.Or(cmp.Compare(a.Gateway, b.Gateway), cmp.Compare(a.Device, b.Device))
		}) {
			t.Errorf("ListDevices(%q) not ordered: %+v", tt.scope, devs)
		}
		latest, err := s.LatestSnapshots(ctx, tt.scope)
		if err != nil {
			t.Fatal(err)
		}
		got = nil
		for _, r := range latest {
			got = append(got, r.Gateway)
		}
		gws("LatestSnapshots", got)
		recs, err := s.QuerySnapshots(ctx, store.SnapshotQuery{Scope: tt.scope})
		if err != nil {
			t.Fatal(err)
		}
		got = nil
		for _, r := range recs {
			got = append(got, r.Gateway)
		}
		gws("QuerySnapshots", got)
		events, err := s.IntegrityEvents(ctx, tt.scope, time.Time{}, time.Time{}, 0)
		if err != nil {
			t.Fatal(err)
		}
		got = nil
		for _, e := range events {
			got = append(got, e.Gateway)
		}
		gws("IntegrityEvents", got)
		for _, gw := range gateways {
			_, err := s.SnapshotByHash(ctx, tt.scope, byGateway[gw].Hash)
			if in := slices.Contains(tt.want, gw); in != (err == nil) || !in && !errors.Is(err, store.ErrNotFound) {
				t.Errorf("SnapshotByHash of %s in scope %q: err = %v", gw, tt.scope, err)
			}
		}
	}
	// Naming another customer's device explicitly does not escape the scope.
	recs, err := s.QuerySnapshots(ctx, store.SnapshotQuery{Scope: "ms-acc-1", Gateway: "ms-acc-10/acc-1/gw-1", Device: "pump-7"})
	if err != nil || len(recs) != 0 {
		t.Fatalf("query of ms-acc-10's device in scope ms-acc-1 = %d records, %v; want none", len(recs), err)
	}
	recs, err = s.QuerySnapshots(ctx, store.SnapshotQuery{Scope: "ms-acc-1", Gateway: "ms-acc-10/acc-1/gw-1"})
	if err != nil || len(recs) != 0 {
		t.Fatalf("query of ms-acc-10's gateway in scope ms-acc-1 = %d records, %v; want none", len(recs), err)
	}
	for _, bad := range []string{"ms-acc-1/", "/ms-acc-1", "a/b/c/d", "ms-acc-%", "ms acc", "..", "a//b"} {
		if _, err := s.ListDevices(ctx, bad); !errors.Is(err, store.ErrInvalidScope) {
			t.Errorf("ListDevices(%q): err = %v, want ErrInvalidScope", bad, err)
		}
		if _, err := s.QuerySnapshots(ctx, store.SnapshotQuery{Scope: bad}); !errors.Is(err, store.ErrInvalidScope) {
			t.Errorf("QuerySnapshots(%q): err = %v, want ErrInvalidScope", bad, err)
		}
		if _, err := s.LatestSnapshots(ctx, bad); !errors.Is(err, store.ErrInvalidScope) {
			t.Errorf("LatestSnapshots(%q): err = %v, want ErrInvalidScope", bad, err)
		}
		if _, err := s.IntegrityEvents(ctx, bad, time.Time{}, time.Time{}, 0); !errors.Is(err, store.ErrInvalidScope) {
			t.Errorf("IntegrityEvents(%q): err = %v, want ErrInvalidScope", bad, err)
		}
		if _, err := s.SnapshotByHash(ctx, bad, byGateway[gateways[0]].Hash); !errors.Is(err, store.ErrInvalidScope) {
			t.Errorf("SnapshotByHash(%q): err = %v, want ErrInvalidScope", bad, err)
		}
	}
}

func testSnapshotPaging(t *testing.T, s store.Store) {
	ctx := t.Context()
	// Three devices; a and b measure at the same times, so the order must
	// break ties by gateway, device and seq.
	a := newChain("ms-acc-1/acc-1/gw-1", "a", "")
	b := newChain("ms-acc-1/acc-1/gw-1", "b", "")
	c := newChain("ms-acc-1/acc-2/gw-1", "a", "")
	var all []store.SnapshotRecord
	for i := range 23 {
		at := t0.Add(time.Duration(i) * time.Minute)
		all = append(all, a.next(t, at), b.next(t, at))
		if i%3 == 0 {
			all = append(all, c.next(t, at.Add(30*time.Second)))
		}
	}
	// A device whose clock went back: its seq order is not its time order.
	all = append(all, a.next(t, t0.Add(-time.Hour)))
	for i := 0; i < len(all); i += 10 {
		insert(t, s, all[i:min(i+10, len(all))]...)
	}
	order := func(x, y store.SnapshotRecord) int {
		return cmp.Or(x.Time.Compare(y.Time), cmp.Compare(x.Gateway, y.Gateway), cmp.Compare(x.Device, y.Device), cmp.Compare(x.Seq, y.Seq))
	}
	sorted := slices.SortedFunc(slices.Values(all), order)
	page := func(q store.SnapshotQuery, want []store.SnapshotRecord) {
		t.Helper()
		var got []store.SnapshotRecord
		for pages := 0; ; pages++ {
			if pages > len(want)+1 {
				t.Fatalf("%+v: paging does not end", q)
			}
			recs, err := s.QuerySnapshots(ctx, q)
			if err != nil {
				t.Fatal(err)
			}
			if len(recs) > q.Limit {
				t.Fatalf("%+v: %d records, more than the limit", q, len(recs))
			}
			got = append(got, recs...)
			if len(recs) < q.Limit {
				break
			}
			q.After = recs[len(recs)-1].Cursor()
		}
		if len(got) != len(want) {
			t.Fatalf("%+v: paged through %d records, want %d", q, len(got), len(want))
		}
		for i := range got {
			if got[i].Path() != want[i].Path() || got[i].Seq != want[i].Seq {
				t.Fatalf("%+v: record %d is %s seq %d, want %s seq %d", q, i, got[i].Path(), got[i].Seq, want[i].Path(), want[i].Seq)
			}
			checkRecord(t, got[i], want[i])
		}
	}
	page(store.SnapshotQuery{Limit: 7}, sorted)
	page(store.SnapshotQuery{Limit: 1}, sorted)
	page(store.SnapshotQuery{Scope: "ms-acc-1/acc-1", Limit: 5}, filter(sorted, func(r store.SnapshotRecord) bool { return r.Gateway == "ms-acc-1/acc-1/gw-1" }))
	page(store.SnapshotQuery{Gateway: "ms-acc-1/acc-1/gw-1", Limit: 4}, filter(sorted, func(r store.SnapshotRecord) bool { return r.Gateway == "ms-acc-1/acc-1/gw-1" }))
	page(store.SnapshotQuery{Gateway: "ms-acc-1/acc-1/gw-1", Device: "b", Limit: 6}, filter(sorted, func(r store.SnapshotRecord) bool { return r.Device == "b" }))
	page(store.SnapshotQuery{Gateway: "ms-acc-1/acc-1/gw-1", Device: "a", Limit: 3}, filter(sorted, func(r store.SnapshotRecord) bool { return r.Path() == "ms-acc-1/acc-1/gw-1/a" }))
	// A cursor from a mixed listing continues one device's listing at the
	// right place, whichever device it came from.
	for _, cur := range sorted[10:13] {
		recs, err := s.QuerySnapshots(ctx, store.SnapshotQuery{Gateway: "ms-acc-1/acc-1/gw-1", Device: "b", After: cur.Cursor()})
		if err != nil {
			t.Fatal(err)
		}
		want := filter(sorted, func(r store.SnapshotRecord) bool { return r.Device == "b" && order(r, cur) > 0 })
		if len(recs) != len(want) || len(recs) > 0 && recs[0].Seq != want[0].Seq {
			t.Fatalf("device b after %s seq %d: %d records, want %d", cur.Path(), cur.Seq, len(recs), len(want))
		}
	}
	// The default limit applies when none is given.
	recs, err := s.QuerySnapshots(ctx, store.SnapshotQuery{})
	if err != nil || len(recs) != len(all) || len(all) > store.DefaultLimit {
		t.Fatalf("QuerySnapshots without a limit = %d, %v; want %d", len(recs), err, len(all))
	}
	if store.EffectiveLimit(0) != store.DefaultLimit || store.EffectiveLimit(1e9) != store.MaxLimit || store.EffectiveLimit(5) != 5 {
		t.Fatal("EffectiveLimit")
	}
}

func filter(recs []store.SnapshotRecord, keep func(store.SnapshotRecord) bool) []store.SnapshotRecord {
	var out []store.SnapshotRecord
	for _, r := range recs {
		if keep(r) {
			out = append(out, r)
		}
	}
	return out
}

func testSnapshotFilters(t *testing.T, s store.Store) {
	ctx := t.Context()
	const gw = "ms-acc-1/acc-1/gw-1"
	c := newChain(gw, "pump-7", "pump")
	var recs []store.SnapshotRecord
	for i := range 48 { // every 30 minutes for a day
		at := t0.Add(time.Duration(i) * 30 * time.Minute)
		v := []snapshot.Value{
			{Channel: "c", Value: float64(i), Unit: "A", Group: "el"},
			{Channel: "a", Value: -float64(i), Unit: "V", Group: "el"},
		}
		if i%2 == 0 { // b only in every other snapshot
			v = append(v, snapshot.Value{Channel: "b", Value: float64(i) / 4, Unit: "Cel", Group: "env"})
		}
		recs = append(recs, c.next(t, at, v...))
	}
	insert(t, s, recs...)
	// Another device with a channel b in another unit.
	insert(t, s, newChain(gw, "pump-8", "pump").next(t, t0, snapshot.Value{Channel: "b", Value: 7, Unit: "K"}))

	q := store.SnapshotQuery{Gateway: gw, Device: "pump-7"}
	// Time range: From inclusive, To exclusive.
	q.From, q.To = t0.Add(2*time.Hour), t0.Add(5*time.Hour)
	got, err := s.QuerySnapshots(ctx, q)
	if err != nil || len(got) != 6 || got[0].Seq != 5 || got[5].Seq != 10 {
		t.Fatalf("time range [2h, 5h): %d records, %v; want seq 5..10", len(got), err)
	}
	q.From, q.To = time.Time{}, t0.Add(time.Hour)
	if got, err := s.QuerySnapshots(ctx, q); err != nil || len(got) != 2 {
		t.Fatalf("time range (-inf, 1h): %d records, %v; want 2", len(got), err)
	}
	q.From, q.To = t0.Add(23*time.Hour), time.Time{}
	if got, err := s.QuerySnapshots(ctx, q); err != nil || len(got) != 2 {
		t.Fatalf("time range [23h, inf): %d records, %v; want 2", len(got), err)
	}

	// One channel over the day: only snapshots that have it, only it.
	q.From, q.To, q.Channels = t0, t0.Add(24*time.Hour), []string{"b"}
	got, err = s.QuerySnapshots(ctx, q)
	if err != nil || len(got) != 24 {
		t.Fatalf("channel b: %d records, %v; want 24", len(got), err)
	}
	for _, r := range got {
		if len(r.Values) != 1 || r.Values[0].Channel != "b" || r.Values[0].Unit != "Cel" || r.Values[0].Value != float64(r.Seq-1)/4 {
			t.Fatalf("channel b of seq %d: %+v", r.Seq, r.Values)
		}
	}
	// Several channels keep their received order.
	q.Channels = []string{"b", "c"}
	got, err = s.QuerySnapshots(ctx, q)
	if err != nil || len(got) != 48 {
		t.Fatalf("channels b, c: %d records, %v; want 48", len(got), err)
	}
	for _, r := range got {
		want := []string{"c"}
		if r.Seq%2 == 1 {
			want = append(want, "b")
		}
		var names []string
		for _, v := range r.Values {
			names = append(names, v.Channel)
		}
		if !slices.Equal(names, want) {
			t.Fatalf("channels b, c of seq %d: %q, want %q", r.Seq, names, want)
		}
	}
	// The same name in another unit matches too.
	got, err = s.QuerySnapshots(ctx, store.SnapshotQuery{Channels: []string{"b"}, Limit: 100})
	if err != nil || len(got) != 25 {
		t.Fatalf("channel b of every device: %d records, %v; want 25", len(got), err)
	}
	got, err = s.QuerySnapshots(ctx, store.SnapshotQuery{Channels: []string{"nope"}})
	if err != nil || len(got) != 0 {
		t.Fatalf("unknown channel: %d records, %v", len(got), err)
	}
	got, err = s.QuerySnapshots(ctx, store.SnapshotQuery{Gateway: gw, Device: "pump-9"})
	if err != nil || len(got) != 0 {
		t.Fatalf("unknown device: %d records, %v", len(got), err)
	}
	if _, err := s.QuerySnapshots(ctx, store.SnapshotQuery{Device: "pump-7"}); err == nil {
		t.Fatal("a device without its gateway was accepted")
	}
}

func testIntegrityEvents(t *testing.T, s store.Store) {
	ctx := t.Context()
	var want []store.IntegrityEvent
	for i, kind := range []string{store.EventGap, store.EventStale, store.EventFork, "other"} {
		e := store.IntegrityEvent{
			Gateway: "ms-acc-1/acc-1/gw-1", Device: fmt.Sprintf("dev-%d", i), Kind: kind,
			Seq: uint64(10 + i), ExpectedSeq: uint64(i), Detail: "detail " + kind,
			At: t0.Add(time.Duration(i) * time.Minute).Add(7 * time.Millisecond),
		}
		if i == 2 {
			e.Hash = bytes.Repeat([]byte{0xab}, 32)
		}
		want = append(want, e)
	}
	// Recorded out of order: listed by time.
	for _, i := range []int{2, 0, 3, 1} {
		if err := s.RecordIntegrityEvent(ctx, want[i]); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.RecordIntegrityEvent(ctx, store.IntegrityEvent{Gateway: "g"}); err == nil {
		t.Fatal("an event without a kind was accepted")
	}
	got, err := s.IntegrityEvents(ctx, "", time.Time{}, time.Time{}, 0)
	if err != nil || len(got) != 4 {
		t.Fatalf("IntegrityEvents = %d, %v", len(got), err)
	}
	for i := range got {
		g, w := got[i], want[i]
		if g.Gateway != w.Gateway || g.Device != w.Device || g.Kind != w.Kind || g.Seq != w.Seq || g.ExpectedSeq != w.ExpectedSeq ||
			!bytes.Equal(g.Hash, w.Hash) || g.Detail != w.Detail || !g.At.Equal(w.At) {
			t.Fatalf("event %d = %+v, want %+v", i, g, w)
		}
	}
	got, err = s.IntegrityEvents(ctx, "", want[1].At, want[3].At, 0)
	if err != nil || len(got) != 2 || got[0].Kind != store.EventStale || got[1].Kind != store.EventFork {
		t.Fatalf("events in [1, 3): %+v, %v", got, err)
	}
	got, err = s.IntegrityEvents(ctx, "ms-acc-1", time.Time{}, time.Time{}, 3)
	if err != nil || len(got) != 3 {
		t.Fatalf("events with limit 3: %d, %v", len(got), err)
	}
	got, err = s.IntegrityEvents(ctx, "ms-acc-2", time.Time{}, time.Time{}, 0)
	if err != nil || len(got) != 0 {
		t.Fatalf("events of another customer: %d, %v", len(got), err)
	}
}

func testRejects(t *testing.T, s store.Store) {
	ctx := t.Context()
	want := []store.Reject{
		{Topic: "ms-acc-1/acc-1/gw-1/snapshots", Gateway: "ms-acc-1/acc-1/gw-1", Reason: "signature does not verify", RawHash: bytes.Repeat([]byte{1}, 32), Size: 812, At: t0},
		{Topic: "garbage/\x00topic\xff", Reason: "no identity", Size: 0, At: t0.Add(time.Second)},
		{Topic: "ms-acc-2/acc-1/gw-1/snapshots", Reason: "too large", RawHash: bytes.Repeat([]byte{2}, 32), Size: 5 << 20, At: t0.Add(2 * time.Second)},
	}
	for _, r := range want {
		if err := s.RecordReject(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	// Text is kept as valid UTF-8 without NUL: anything else becomes U+FFFD.
	want[1].Topic = "garbage/\ufffdtopic\ufffd"
	got, err := s.Rejects(ctx, time.Time{}, time.Time{}, 0)
	if err != nil || len(got) != len(want) {
		t.Fatalf("Rejects = %d, %v", len(got), err)
	}
	for i := range got {
		g, w := got[i], want[i]
		if g.Topic != w.Topic || g.Gateway != w.Gateway || g.Reason != w.Reason || !bytes.Equal(g.RawHash, w.RawHash) || g.Size != w.Size || !g.At.Equal(w.At) {
			t.Fatalf("reject %d = %+v, want %+v", i, g, w)
		}
	}
	got, err = s.Rejects(ctx, t0.Add(time.Second), time.Time{}, 1)
	if err != nil || len(got) != 1 || got[0].Reason != "no identity" {
		t.Fatalf("rejects from 1s, limit 1: %+v, %v", got, err)
	}
}

// testRejectAggregation: repeats of one message and summaries update one
// record each instead of adding rows, and the table is trimmed to a bound.
func testRejectAggregation(t *testing.T, s store.Store) {
	ctx := t.Context()
	h := bytes.Repeat([]byte{7}, 32)
	topic := "ms-1/acc-1/gw-1/snapshots"
	for i := range 5 {
		if err := s.RecordReject(ctx, store.Reject{Topic: topic, Gateway: "ms-1/acc-1/gw-1", Reason: "tampered", RawHash: h, Size: 100, At: t0.Add(time.Duration(i) * time.Second)}); err != nil {
			t.Fatal(err)
		}
	}
	// A summary of 40 messages (no hash), twice; another reason is its own record.
	for i := range 2 {
		if err := s.RecordReject(ctx, store.Reject{Topic: topic, Gateway: "ms-1/acc-1/gw-1", Reason: "tampered", Size: 4000, Count: 40, At: t0.Add(10 * time.Second), LastAt: t0.Add(time.Duration(20+i) * time.Second)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.RecordReject(ctx, store.Reject{Topic: topic, Reason: "malformed_envelope", RawHash: h, Size: 100, At: t0.Add(30 * time.Second)}); err != nil {
		t.Fatal(err)
	}
	got, err := s.Rejects(ctx, time.Time{}, time.Time{}, 0)
	if err != nil || len(got) != 3 {
		t.Fatalf("Rejects = %+v, %v; want 3 records", got, err)
	}
	if g := got[0]; g.Count != 5 || g.Size != 100 || !g.At.Equal(t0) || !g.LastAt.Equal(t0.Add(4*time.Second)) || !bytes.Equal(g.RawHash, h) {
		t.Errorf("repeats = %+v, want count 5, size 100, from t0 to t0+4s", g)
	}
	if g := got[1]; g.Count != 80 || g.Size != 8000 || g.RawHash != nil || !g.At.Equal(t0.Add(10*time.Second)) || !g.LastAt.Equal(t0.Add(21*time.Second)) {
		t.Errorf("summary = %+v, want count 80, size 8000, no hash, from t0+10s to t0+21s", g)
	}
	if g := got[2]; g.Count != 1 || g.Reason != "malformed_envelope" || !g.LastAt.Equal(g.At) {
		t.Errorf("single = %+v, want count 1 and LastAt = At", g)
	}
	for i := range 10 {
		if err := s.RecordReject(ctx, store.Reject{Topic: topic, Reason: "x", RawHash: []byte{byte(i)}, At: t0.Add(time.Minute + time.Duration(i)*time.Second)}); err != nil {
			t.Fatal(err)
		}
	}
	n, err := s.TrimRejects(ctx, 4)
	if err != nil || n != 9 {
		t.Fatalf("TrimRejects(4) = %d, %v; want 9 deleted", n, err)
	}
	got, _ = s.Rejects(ctx, time.Time{}, time.Time{}, 0)
	if len(got) != 4 || got[0].RawHash[0] != 6 || got[3].RawHash[0] != 9 {
		t.Fatalf("after trim: %+v; want the 4 newest", got)
	}
	if n, err := s.TrimRejects(ctx, 4); err != nil || n != 0 {
		t.Fatalf("TrimRejects again = %d, %v", n, err)
	}
}

// LoadShape is the fleet of the storage load test: Masters master accounts
// × 2 accounts × 5 gateways × 5 devices, each device sending PerDevice
// snapshots of 340 channels (12 groups, with units) every 15 minutes.
// Masters 20 and PerDevice 100 is the design thesis's workload: 100,000
// snapshots, 34 M values.
type LoadShape struct {
	Masters   int
	PerDevice int
	Batch     int // snapshots per InsertSnapshots call
}

// Load numbers of the storage load test.
const (
	loadAccounts = 2
	loadGateways = 5
	loadDevices  = 5
	loadChannels = 340
	loadEvery    = 15 * time.Minute
)

// loadGateway names gateway g of the fleet.
func loadGateway(g int) (master, path string) {
	m := g / (loadAccounts * loadGateways)
	a := g / loadGateways % loadAccounts
	master = fmt.Sprintf("ms-%02d", m)
	return master, fmt.Sprintf("%s/acc-%d/gw-%d", master, a, g%loadGateways)
}

// RunLoad inserts the workload of shape into s through InsertSnapshots,
// then measures the queries people ask. diskBytes reports the store's size
// on disk once everything is written. It logs a report and returns it as
// Markdown table rows.
func RunLoad(t *testing.T, s store.Store, shape LoadShape, diskBytes func() int64) string {
	ctx := t.Context()
	gateways := shape.Masters * loadAccounts * loadGateways
	devices := gateways * loadDevices
	total := devices * shape.PerDevice
	chans := synth.Channels(loadChannels)
	builders := make([]*chain, devices)
	for d := range builders {
		_, gw := loadGateway(d / loadDevices)
		builders[d] = newChain(gw, fmt.Sprintf("dev-%d", d%loadDevices), "test-bench")
	}
	rng := synth.NewRand(0x9e3779b97f4a7c15)
	start := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	t.Logf("load: %d masters, %d gateways, %d devices, %d snapshots × %d values = %d values, batches of %d",
		shape.Masters, gateways, devices, total, loadChannels, total*loadChannels, shape.Batch)

	var insertTime time.Duration
	batch := make([]store.SnapshotRecord, 0, shape.Batch)
	done, nextReport := 0, total/10
	flush := func() {
		t0 := time.Now()
		ins, err := s.InsertSnapshots(ctx, batch)
		insertTime += time.Since(t0)
		if err != nil {
			t.Fatalf("InsertSnapshots: %v", err)
		}
		for _, ok := range ins {
			if !ok {
				t.Fatal("a new snapshot was reported as a redelivery")
			}
		}
		done += len(batch)
		batch = batch[:0]
		if done >= nextReport {
			t.Logf("load: %3d%% %7d snapshots, insert %.0f snapshots/s, %.0f values/s", done*100/total, done,
				float64(done)/insertTime.Seconds(), float64(done*loadChannels)/insertTime.Seconds())
			nextReport += total / 10
		}
	}
	// Snapshots arrive as ingest sees them: round k of every device, each
	// device a few seconds after the previous one.
	wall := time.Now()
	for k := range shape.PerDevice {
		for d, c := range builders {
			vals := slices.Clone(chans)
			synth.Fill(vals, rng, d, k)
			at := start.Add(time.Duration(k)*loadEvery + time.Duration(d%900)*time.Second)
			batch = append(batch, c.next(t, at, vals...))
			if len(batch) == shape.Batch {
				flush()
			}
		}
	}
	if len(batch) > 0 {
		flush()
	}
	elapsed := time.Since(wall).Round(time.Second)
	size := diskBytes()
	values := total * loadChannels
	t.Logf("load: inserted in %v (wall %v incl. generating and hashing the snapshots): %.0f snapshots/s, %.0f values/s; %d bytes on disk, %.1f bytes/value",
		insertTime.Round(time.Millisecond), elapsed, float64(total)/insertTime.Seconds(), float64(values)/insertTime.Seconds(), size, float64(size)/float64(values))

	// Queries, each repeated on random devices of the fleet.
	const runs = 200
	measure := func(name string, f func(d int) int) (median, p99 time.Duration) {
		lat := make([]time.Duration, runs)
		n := 0
		for i := range runs {
			d := rng.Intn(devices)
			t0 := time.Now()
			n = f(d)
			lat[i] = time.Since(t0)
		}
		slices.Sort(lat)
		median, p99 = lat[runs/2], lat[runs*99/100]
		t.Logf("query %-45s median %8v  p99 %8v  (%d records)", name, median.Round(10*time.Microsecond), p99.Round(10*time.Microsecond), n)
		return median, p99
	}
	day := start // the first day: 96 snapshots per device
	rows := []string{}
	row := func(name string, f func(d int) int) {
		m, p := measure(name, f)
		rows = append(rows, fmt.Sprintf("| %s | %.1f | %.1f |", name, float64(m.Microseconds())/1000, float64(p.Microseconds())/1000))
	}
	row("one channel of one device over a day", func(d int) int {
		master, gw := loadGateway(d / loadDevices)
		recs, err := s.QuerySnapshots(ctx, store.SnapshotQuery{Scope: master, Gateway: gw, Device: fmt.Sprintf("dev-%d", d%loadDevices),
			From: day, To: day.Add(24 * time.Hour), Channels: []string{synth.Channel(d % loadChannels)}})
		if err != nil || len(recs) == 0 || len(recs[0].Values) != 1 {
			t.Fatalf("channel query: %d records, %v", len(recs), err)
		}
		return len(recs)
	})
	row("latest status of a master account's fleet", func(d int) int {
		master, _ := loadGateway(d / loadDevices)
		recs, err := s.LatestSnapshots(ctx, master)
		if err != nil || len(recs) != devices/shape.Masters || len(recs[0].Values) != loadChannels {
			t.Fatalf("latest: %d records, %v", len(recs), err)
		}
		return len(recs)
	})
	row("device history page (limit 100, all values)", func(d int) int {
		master, gw := loadGateway(d / loadDevices)
		recs, err := s.QuerySnapshots(ctx, store.SnapshotQuery{Scope: master, Gateway: gw, Device: fmt.Sprintf("dev-%d", d%loadDevices), Limit: 100})
		if err != nil || len(recs) != min(100, shape.PerDevice) {
			t.Fatalf("history: %d records, %v", len(recs), err)
		}
		return len(recs)
	})
	row("device history page (limit 100, one channel)", func(d int) int {
		master, gw := loadGateway(d / loadDevices)
		recs, err := s.QuerySnapshots(ctx, store.SnapshotQuery{Scope: master, Gateway: gw, Device: fmt.Sprintf("dev-%d", d%loadDevices), Limit: 100, Channels: []string{"ch-000"}})
		if err != nil || len(recs) != min(100, shape.PerDevice) {
			t.Fatalf("history: %d records, %v", len(recs), err)
		}
		return len(recs)
	})
	row("list a master account's devices", func(d int) int {
		master, _ := loadGateway(d / loadDevices)
		devs, err := s.ListDevices(ctx, master)
		if err != nil || len(devs) != devices/shape.Masters {
			t.Fatalf("devices: %d, %v", len(devs), err)
		}
		return len(devs)
	})
	// The stored snapshots still re-encode exactly.
	recs, err := s.QuerySnapshots(ctx, store.SnapshotQuery{Gateway: builders[7].gateway, Device: builders[7].b.Device, Limit: 3})
	if err != nil || len(recs) == 0 {
		t.Fatalf("re-encoding check: %d records, %v", len(recs), err)
	}
	for _, r := range recs {
		enc, err := snapshot.Encode(r.Snapshot())
		if h := snapshot.Hash(enc); err != nil || !bytes.Equal(h[:], r.Hash) {
			t.Fatalf("stored snapshot %s seq %d does not re-encode to its hash: %v", r.Path(), r.Seq, err)
		}
	}
	return fmt.Sprintf("insert: %d snapshots, %d values in %.1f s: %.0f snapshots/s, %.0f values/s; disk %.1f bytes/value (%d MB)\n",
		total, values, insertTime.Seconds(), float64(total)/insertTime.Seconds(), float64(values)/insertTime.Seconds(),
		float64(size)/float64(values), size>>20) +
		"| query | median ms | p99 ms |\n|---|---:|---:|\n" + strings.Join(rows, "\n") + "\n"
}
