package postgres

import (
	"context"
	"crypto/sha256"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fieldtrust/fieldtrust/internal/snapshot"
	"github.com/fieldtrust/fieldtrust/internal/store"
)

// namesRecord is seq 1 of a device whose values have the given units, in
// that order, each on a channel of its own.
func namesRecord(device string, units ...string) store.SnapshotRecord {
	at := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	r := store.SnapshotRecord{Gateway: "ms/acc/gw", Device: device, DeviceType: "t", Seq: 1, Time: at,
		Signer: "s", SignedAt: at, ReceivedAt: at, LedgerIndex: 1}
	for i, u := range units {
		r.Values = append(r.Values, snapshot.Value{Channel: fmt.Sprintf("%s-%d", device, i), Unit: u, Group: "g", Value: float64(i)})
	}
	h := sha256.Sum256([]byte(device))
	r.Hash = h[:]
	return r
}

// TestInsertSnapshotsNewNamesInOppositeOrders: two concurrent inserts meet
// the same new units in opposite orders (a: u-a, gate, u-b; b: u-b, gate,
// u-a). A transaction of the test holds the unit "gate" until both inserts
// wait for it, so each has made what it makes before "gate" and wants, after
// it, what the other made. While new names were inserted inside the snapshot
// transaction, each held its first name's index entry until commit: a
// deadlock (SQLSTATE 40P01), one insert aborted, every time. Names made
// before BEGIN, sorted, each committed on its own, cannot form the cycle.
func TestInsertSnapshotsNewNamesInOppositeOrders(t *testing.T) {
	ctx := t.Context()
	dsn := freshSchema(t, testDSN(t))
	s, err := Open(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// The device type and the group exist already: the inserts meet only
	// the new units (and their own new channels and devices).
	if _, err := s.InsertSnapshots(ctx, []store.SnapshotRecord{namesRecord("d0", "u0")}); err != nil {
		t.Fatal(err)
	}
	holder, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close(context.Background())
	var holderPID uint32
	if err := holder.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&holderPID); err != nil {
		t.Fatal(err)
	}
	held, err := holder.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Rollback(context.Background())
	if _, err := held.Exec(ctx, `INSERT INTO units (name) VALUES ('gate')`); err != nil {
		t.Fatal(err)
	}

	// Bounded: on the code this fixes, PostgreSQL breaks the cycle after
	// deadlock_timeout (1 s by default).
	ictx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	errs := make(chan error, 2)
	for _, r := range []store.SnapshotRecord{namesRecord("a", "u-a", "gate", "u-b"), namesRecord("b", "u-b", "gate", "u-a")} {
		go func() {
			_, err := s.InsertSnapshots(ictx, []store.SnapshotRecord{r})
			errs <- err
		}()
	}
	// Wait (for the event, with a deadline) until both inserts wait for
	// the held "gate".
	deadline := time.Now().Add(time.Minute)
	for {
		var waiting int
		if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE $1::integer = ANY(pg_blocking_pids(pid))`,
			int32(holderPID)).Scan(&waiting); err != nil {
			t.Fatal(err)
		}
		if waiting == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after a minute %d of the 2 inserts wait for the held unit", waiting)
		}
		select {
		case err := <-errs:
			t.Fatalf("an insert returned (%v) before both waited for the held unit", err)
		case <-time.After(10 * time.Millisecond): // the next poll
		}
	}
	if err := held.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Errorf("concurrent insert: %v", err)
		}
	}
	for _, d := range []string{"a", "b"} {
		recs, err := s.QuerySnapshots(ctx, store.SnapshotQuery{Gateway: "ms/acc/gw", Device: d})
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) != 1 || len(recs[0].Values) != 3 || recs[0].Values[1].Unit != "gate" {
			t.Errorf("device %s: %d snapshots stored, want 1 with its 3 values: %+v", d, len(recs), recs)
		}
	}
	var units int
	if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM units`).Scan(&units); err != nil {
		t.Fatal(err)
	}
	if units != 4 { // u0, gate, u-a, u-b: each once
		t.Errorf("%d units, want 4", units)
	}
}
