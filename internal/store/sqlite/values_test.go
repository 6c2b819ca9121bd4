package sqlite

import (
	"bytes"
	"database/sql"
	"math"
	"path/filepath"
	"testing"

	"github.com/fieldtrust/fieldtrust/internal/snapshot"
	"github.com/fieldtrust/fieldtrust/internal/store"
)

// TestValuesRoundTrip: every kind of float64 comes back bit for bit.
func TestValuesRoundTrip(t *testing.T) {
	vals := []float64{0, math.Copysign(0, -1), 1, -1, 1 << 53, -(1 << 53), 1<<53 + 2, 0.001, -273.15, math.MaxFloat64,
		math.SmallestNonzeroFloat64, math.Inf(1), math.Inf(-1), math.NaN(), 123456789}
	chIDs := make([]int64, len(vals))
	for i := range chIDs {
		chIDs[i] = int64(i * 1000)
	}
	b := appendValues(nil, chIDs, vals)
	var i int
	if err := decodeValues(b, func(ch int64, v float64) {
		if ch != chIDs[i] || math.Float64bits(v) != math.Float64bits(vals[i]) {
			t.Errorf("value %d = (%d, %v), want (%d, %v)", i, ch, v, chIDs[i], vals[i])
		}
		i++
	}); err != nil || i != len(vals) {
		t.Fatalf("decode: %d values, %v", i, err)
	}
	for _, bad := range [][]byte{{0x80}, {0x03, 0x80}, {0x02, 1, 2, 3}, bytes.Repeat([]byte{0}, maxValuesBlob+1)} {
		if err := decodeValues(bad, func(int64, float64) {}); err == nil {
			t.Errorf("decodeValues(%x) accepted", bad[:min(len(bad), 8)])
		}
	}
}

// FuzzDecodeValues: any blob decodes or fails cleanly, and what decodes
// re-encodes to the same bytes when written canonically.
func FuzzDecodeValues(f *testing.F) {
	f.Add(appendValues(nil, []int64{1, 2, 3}, []float64{1.5, 7, -0.0}))
	f.Add([]byte{0x03, 0x01})
	f.Add([]byte{0x02, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f})
	f.Fuzz(func(t *testing.T, b []byte) {
		var chIDs []int64
		var vals []float64
		if err := decodeValues(b, func(ch int64, v float64) { chIDs = append(chIDs, ch); vals = append(vals, v) }); err != nil {
			return
		}
		re := appendValues(nil, chIDs, vals)
		var n int
		if err := decodeValues(re, func(ch int64, v float64) {
			if ch != chIDs[n] || math.Float64bits(v) != math.Float64bits(vals[n]) {
				t.Fatalf("re-encoding changed value %d", n)
			}
			n++
		}); err != nil || n != len(vals) {
			t.Fatalf("re-encoded blob: %d values, %v", n, err)
		}
	})
}

// TestMigrateRowValuesToBlob: a database written with one snapshot_values
// row per value (schema 7) keeps every value, bit for bit and in received
// order, after migration 0008 packs them into the snapshot's row.
func TestMigrateRowValuesToBlob(t *testing.T) {
	ctx := t.Context()
	file := filepath.Join(t.TempDir(), "old.db")
	db, err := sql.Open("sqlite", "file:"+file+"?_pragma=foreign_keys(1)")
	if err != nil {
		t.Fatal(err)
	}
	old := &Store{db: db}
	if err := old.migrateTo(ctx, 7); err != nil {
		t.Fatal(err)
	}
	// Two snapshots as schema 7 stored them: values out of channel order,
	// integral ones as INTEGER, -0.0 and fractions as REAL.
	for _, q := range []string{
		`INSERT INTO device_types (id, name) VALUES (1, 'pump')`,
		`INSERT INTO units (id, name) VALUES (1, 'bar'), (2, '')`,
		`INSERT INTO channel_groups (id, name) VALUES (1, '')`,
		`INSERT INTO channels (id, name, unit_id, group_id) VALUES (1, 'p', 1, 1), (2, 'count', 2, 1), (3, 'z', 2, 1)`,
		`INSERT INTO devices (id, gateway, device, type_id, head_seq, head_hash, head_time, head_snapshot_id, snapshot_count) VALUES (1, 'ms/acc/gw', 'd', 1, 2, x'02', 2000, 2, 2)`,
		`INSERT INTO snapshots (id, device_id, seq, time, type_id, hash, prev, signer, signed_at, received_at, ledger_index) VALUES
			(1, 1, 1, 1000, 1, x'01', NULL, 's', 1000, 1000, 0), (2, 1, 2, 2000, 1, x'02', x'01', 's', 2000, 2000, 1)`,
		`INSERT INTO snapshot_values (snapshot_id, channel_id, ord, value) VALUES
			(1, 3, 0, -0.0), (1, 1, 1, 1.25), (1, 2, 2, 7), (2, 2, 0, 9007199254740992), (2, 1, 1, -0.001)`,
	} {
		if _, err := db.ExecContext(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	db.Close()
	s, err := Open(ctx, file)
	if err != nil {
		t.Fatalf("migrate: %v", err)
	}
	defer s.Close()
	recs, err := s.QuerySnapshots(ctx, store.SnapshotQuery{Gateway: "ms/acc/gw", Device: "d"})
	if err != nil || len(recs) != 2 {
		t.Fatalf("after migration: %d snapshots, %v", len(recs), err)
	}
	want := [][]snapshot.Value{
		{{Channel: "z", Value: math.Copysign(0, -1)}, {Channel: "p", Value: 1.25, Unit: "bar"}, {Channel: "count", Value: 7}},
		{{Channel: "count", Value: 1 << 53}, {Channel: "p", Value: -0.001, Unit: "bar"}},
	}
	for i, r := range recs {
		if len(r.Values) != len(want[i]) || r.DeviceType != "pump" {
			t.Fatalf("snapshot %d: %+v", i, r)
		}
		for j, v := range r.Values {
			w := want[i][j]
			if v.Channel != w.Channel || v.Unit != w.Unit || math.Float64bits(v.Value) != math.Float64bits(w.Value) {
				t.Errorf("snapshot %d value %d = %+v, want %+v", i, j, v, w)
			}
		}
	}
	var n int
	if err := s.db.QueryRowContext(ctx, `SELECT count(*) FROM sqlite_master WHERE name = 'snapshot_values'`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("snapshot_values still there: %d, %v", n, err)
	}
}
