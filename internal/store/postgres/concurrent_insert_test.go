package postgres

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/snapshot"
	"github.com/fieldtrust/fieldtrust/internal/store"
)

// TestConcurrentInsertsOfNewNames: transactions that insert at once (the
// partition sessions of a multi-node cluster, each an ingest) and meet the same new units, groups
// and channels in different orders all commit, each device's head and
// values right: a name another transaction inserted and has not committed
// yet waits for it (ON CONFLICT DO NOTHING), then is found.
func TestConcurrentInsertsOfNewNames(t *testing.T) {
	s, err := Open(t.Context(), freshSchema(t, testDSN(t)))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const lanes, channels = 4, 40
	var wg sync.WaitGroup
	errs := make([]error, lanes)
	for l := range lanes {
		wg.Go(func() {
			vals := make([]snapshot.Value, channels)
			for i := range vals {
				c := (i + l*channels/lanes) % channels // each lane starts elsewhere: crossed orders
				vals[i] = snapshot.Value{Channel: fmt.Sprintf("ch-%02d", c), Value: float64(i), Unit: fmt.Sprintf("u%d", c%7), Group: fmt.Sprintf("g%d", c%5)}
			}
			var recs []store.SnapshotRecord
			for seq := uint64(1); seq <= 3; seq++ {
				recs = append(recs, store.SnapshotRecord{
					Gateway: fmt.Sprintf("ms/acc-%d/gw", l), Device: "d", DeviceType: fmt.Sprintf("type-%d", l), Seq: seq, Time: time.UnixMilli(int64(seq)),
					Hash: []byte(fmt.Sprintf("hash-%d-%d-xxxxxxxxxxxxxxxxxxxxx", l, seq)), Values: vals, Signer: "s",
					SignedAt: time.UnixMilli(1), ReceivedAt: time.UnixMilli(2), LedgerIndex: uint64(l*3) + seq - 1,
				})
			}
			_, errs[l] = s.InsertSnapshots(t.Context(), recs)
		})
	}
	wg.Wait()
	for l, err := range errs {
		if err != nil {
			t.Errorf("lane %d: %v", l, err)
		}
	}
	for l := range lanes {
		seq, _, err := s.DeviceHead(t.Context(), fmt.Sprintf("ms/acc-%d/gw", l), "d")
		if err != nil || seq != 3 {
			t.Errorf("lane %d: head %d (%v), want 3", l, seq, err)
		}
	}
	latest, err := s.LatestSnapshots(t.Context(), "")
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range latest {
		if len(r.Values) != channels {
			t.Errorf("%s: %d values, want %d", r.Path(), len(r.Values), channels)
		}
	}
}
