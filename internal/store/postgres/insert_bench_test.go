package postgres

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/snapshot"
	"github.com/fieldtrust/fieldtrust/internal/snapshot/synth"
	"github.com/fieldtrust/fieldtrust/internal/store"
)

// BenchmarkCommitBatch stores batches as ingest commits them in the
// end-to-end workload: the batch's ledger leaves (and as many tree nodes),
// then its 256 snapshots of 340 values, each of another of 1,000 devices.
// One op is one batch. Besides the time it reports the CPU of the
// PostgreSQL backends serving the benchmark (server-µs/snapshot), when the
// server runs on this machine.
//
//	FIELDTRUST_TEST_POSTGRES="$(./scripts/postgres-test.sh)" go test -run '^$' -bench CommitBatch -benchtime 100x ./internal/store/postgres
func BenchmarkCommitBatch(b *testing.B) {
	app := fmt.Sprintf("ft_bench_%d", os.Getpid())
	dsn := freshSchema(b, testDSNB(b))
	dsn += "&application_name=" + app
	s, err := Open(b.Context(), dsn)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	const devices, batch = 1000, 256
	chans := synth.Channels(340)
	builders := make([]snapshot.Builder, devices)
	for d := range builders {
		builders[d] = snapshot.Builder{Device: fmt.Sprintf("dev-%d", d%5), DeviceType: "test-bench"}
	}
	rng := synth.NewRand(1)
	start := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	next := 0
	recs := make([]store.SnapshotRecord, batch)
	leaves := make([][]byte, batch)
	nodes := make([]store.LedgerNode, batch)
	var server time.Duration
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		first := next
		for j := range recs {
			d := next % devices
			k := next / devices
			next++
			vals := slices.Clone(chans)
			synth.Fill(vals, rng, d, k)
			at := start.Add(time.Duration(k) * 15 * time.Minute)
			enc, sn, err := builders[d].Next(at.UnixMilli(), vals)
			if err != nil {
				b.Fatal(err)
			}
			h := snapshot.Hash(enc)
			gw := fmt.Sprintf("ms-%02d/acc-%d/gw-%d", d/250, d/50%5, d/5%10)
			recs[j] = store.SnapshotRecord{Gateway: gw, Device: sn.Device, DeviceType: sn.DeviceType, Seq: sn.Seq, Time: sn.Time(),
				Hash: h[:], Prev: sn.Prev, Values: sn.Values, Signer: "e2e:" + gw, SignedAt: at, ReceivedAt: at, LedgerIndex: uint64(first + j)}
			leaves[j] = append([]byte(gw+"\x00"), h[:]...)
			var nb [8]byte
			binary.BigEndian.PutUint64(nb[:], uint64(first+j))
			nh := sha256.Sum256(nb[:])
			nodes[j] = store.LedgerNode{Level: 1, Index: uint64(first + j), Hash: nh[:]}
		}
		cpu0 := backendsCPU(b, s, app)
		b.StartTimer()
		hashes := make([][]byte, len(leaves))
		for j, l := range leaves {
			hashes[j] = leafHash(l)
		}
		if _, err := s.LedgerLeafIndexes(b.Context(), hashes); err != nil {
			b.Fatal(err)
		}
		if err := s.AppendLedger(b.Context(), uint64(first), leaves, nodes); err != nil {
			b.Fatal(err)
		}
		if _, err := s.InsertSnapshots(b.Context(), recs); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		server += backendsCPU(b, s, app) - cpu0
		b.StartTimer()
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*batch), "µs/snapshot")
	b.ReportMetric(float64(server.Microseconds())/float64(b.N*batch), "server-µs/snapshot")
}

func testDSNB(b *testing.B) string {
	dsn := os.Getenv("FIELDTRUST_TEST_POSTGRES")
	if dsn == "" {
		b.Skip("FIELDTRUST_TEST_POSTGRES is not set; see scripts/postgres-test.sh")
	}
	return dsn
}

// backendsCPU is the CPU time of the server processes of connections named
// app, read from /proc (zero for a server on another machine).
func backendsCPU(b *testing.B, s *Store, app string) time.Duration {
	rows, err := s.pool.Query(b.Context(), `SELECT pid FROM pg_stat_activity WHERE application_name = $1`, app)
	if err != nil {
		b.Fatal(err)
	}
	defer rows.Close()
	var total time.Duration
	for rows.Next() {
		var pid int
		if err := rows.Scan(&pid); err != nil {
			b.Fatal(err)
		}
		stat, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
		if err != nil {
			continue
		}
		f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
		u, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		total += time.Duration(u+st) * 10 * time.Millisecond
	}
	return total
}
