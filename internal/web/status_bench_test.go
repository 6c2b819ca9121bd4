package web_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/dcc/calibration"
	"github.com/fieldtrust/fieldtrust/internal/snapshot"
	"github.com/fieldtrust/fieldtrust/internal/snapshot/synth"
	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/store/registrystore"
	"github.com/fieldtrust/fieldtrust/internal/store/sqlite"
	"github.com/fieldtrust/fieldtrust/internal/tacs"
	"github.com/fieldtrust/fieldtrust/internal/web"
)

// BenchmarkFleetStatus is GET /api/v1/status of a customer with the
// e2e workload's fleet (250 devices × 340 values, SQLite), without TLS:
// the store query, the calibration flags and the JSON.
func BenchmarkFleetStatus(b *testing.B) {
	ctx := b.Context()
	st, err := sqlite.Open(ctx, filepath.Join(b.TempDir(), "db"))
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	const devices = 250
	chans := synth.Channels(340)
	rng := synth.NewRand(1)
	at := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	var recs []store.SnapshotRecord
	for d := range devices {
		bl := snapshot.Builder{Device: fmt.Sprintf("dev-%d", d%5), DeviceType: "test-bench"}
		vals := slices.Clone(chans)
		synth.Fill(vals, rng, d, 0)
		enc, sn, err := bl.Next(at.UnixMilli(), vals)
		if err != nil {
			b.Fatal(err)
		}
		h := snapshot.Hash(enc)
		gw := fmt.Sprintf("ms-00/acc-%d/gw-%d", d/50, d/5%10)
		recs = append(recs, store.SnapshotRecord{Gateway: gw, Device: sn.Device, DeviceType: sn.DeviceType, Seq: sn.Seq, Time: sn.Time(),
			Hash: h[:], Prev: sn.Prev, Values: sn.Values, Signer: "e2e:" + gw, SignedAt: at, ReceivedAt: at, LedgerIndex: uint64(d)})
	}
	if _, err := st.InsertSnapshots(ctx, recs); err != nil {
		b.Fatal(err)
	}
	rs, err := registrystore.Of(st)
	if err != nil {
		b.Fatal(err)
	}
	api := &web.API{Data: st, Grants: tacs.DefaultGrants(), Identify: identifyByHeader, Calibration: &calibration.Link{Bindings: rs}}
	srv := httptest.NewServer(web.New(web.Options{API: api}))
	defer srv.Close()
	var n int
	for b.Loop() {
		req, _ := http.NewRequest("GET", srv.URL+"/api/v1/status", nil)
		req.Header.Set(subjectHeader, "ms-00")
		resp, err := srv.Client().Do(req)
		if err != nil {
			b.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 {
			b.Fatalf("GET /api/v1/status: %d %v %.300s", resp.StatusCode, err, body)
		}
		n = len(body)
	}
	b.ReportMetric(float64(n), "bytes")
}
