package registry

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/dcc"
	"github.com/fieldtrust/fieldtrust/internal/dcc/dcctest"
	"github.com/fieldtrust/fieldtrust/internal/ledger"
	"github.com/fieldtrust/fieldtrust/internal/store/postgres/pgtest"
	"github.com/fieldtrust/fieldtrust/internal/store/registrystore"
	"github.com/fieldtrust/fieldtrust/internal/store/sqlite"
)

// TestRegistryLoad is the registry's load test (make bench-registry;
// docs/benchmarks.md): FIELDTRUST_BENCH_REGISTRY=N DCCs (three versions
// per instrument) are appended to the log in bulk through the ledger
// (the store directly, 10,000 entries per append), the registry opens and
// replays them into its tables, and lookups by DCC id and by equipment go
// through the HTTP API (loopback, FIELDTRUST_BENCH_CLIENTS concurrent
// clients, default 4), each answer with its proofs. On SQLite, and on
// PostgreSQL when FIELDTRUST_TEST_POSTGRES is set. It reports; it does
// not judge (no timing thresholds in tests).
func TestRegistryLoad(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("FIELDTRUST_BENCH_REGISTRY"))
	if n <= 0 {
		t.Skip("set FIELDTRUST_BENCH_REGISTRY=N (make bench-registry)")
	}
	clients, _ := strconv.Atoi(os.Getenv("FIELDTRUST_BENCH_CLIENTS"))
	if clients <= 0 {
		clients = 4
	}
	lookups, _ := strconv.Atoi(os.Getenv("FIELDTRUST_BENCH_LOOKUPS"))
	if lookups <= 0 {
		lookups = 20000
	}
	// FIELDTRUST_BENCH_REGISTRY_KEEP=DIR keeps the loaded database (SQLite:
	// DIR/sqlite/registry-N.db; PostgreSQL: schema ft_bench_registry_N) and
	// the checkpoint key (DIR/STORE/registry/), and a later run with the
	// same N reuses them: loading 1,000,000 DCCs takes minutes, a lookup
	// run seconds. An interrupted load resumes where it stopped.
	keep := os.Getenv("FIELDTRUST_BENCH_REGISTRY_KEEP")
	open := stores(t)
	if keep != "" {
		open["sqlite"] = func(t *testing.T) *registrystore.Store {
			if err := os.MkdirAll(filepath.Join(keep, "sqlite"), 0o700); err != nil {
				t.Fatal(err)
			}
			s, err := sqlite.Open(context.Background(), filepath.Join(keep, "sqlite", fmt.Sprintf("registry-%d.db", n)))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			return registrystore.New(s.SQL(), false)
		}
		open["postgres"] = func(t *testing.T) *registrystore.Store {
			return registrystore.New(pgtest.OpenKept(t, fmt.Sprintf("ft_bench_registry_%d", n)).SQL(), true)
		}
	}
	for name, open := range open {
		if name == "postgres" && os.Getenv("FIELDTRUST_TEST_POSTGRES") == "" {
			continue
		}
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			st := open(t)
			var r *Registry
			var cert *x509.Certificate
			if keep != "" {
				key, c, err := LoadKey(filepath.Join(keep, name))
				if err != nil {
					t.Fatal(err)
				}
				if r, err = New(ctx, st, Options{Key: key, Cert: c}); err != nil {
					t.Fatal(err)
				}
				cert = c
			} else {
				r, cert = newRegistry(t, st)
			}
			lab := dcctest.NewLab(t, "Load Lab", false)
			have, _, err := r.log.Size()
			if err != nil {
				t.Fatal(err)
			}
			if have == 0 {
				if err := r.AddIssuer(ctx, lab.Name, []*x509.Certificate{lab.Root}); err != nil {
					t.Fatal(err)
				}
				have = 1
			} else {
				t.Logf("%s: reusing the kept database: %d log entries", name, have)
			}

			start := time.Now()
			l, err := ledger.Open(ctx, st)
			if err != nil {
				t.Fatal(err)
			}
			base := time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
			const batch = 10000
			for i := int(have) - 1; i < n; i += batch {
				var leaves [][]byte
				for j := i; j < min(n, i+batch); j++ {
					ev := Event{Type: "register", Lab: lab.Name, Time: base.Add(time.Duration(j) * time.Second).Format(time.RFC3339), SignatureStatus: "declared",
						DCC: &dcc.Metadata{ID: fmt.Sprintf("LOAD-%07d", j), SchemaVersion: "3.3.0", Lab: lab.Name,
							Equipment:       []dcc.EquipmentID{{Issuer: "manufacturer", Value: fmt.Sprintf("SN-%07d", j/3)}, {Issuer: "customer", Value: fmt.Sprintf("INV-%07d", j/3)}},
							PerformanceDate: base.AddDate(j%3, 0, 0).Format("2006-01-02"), DueDate: base.AddDate(j%3+1, 0, 0).Format("2006-01-02"),
							ContentHash: fmt.Sprintf("%064x", j)}}
					b, _ := json.Marshal(ev)
					leaves = append(leaves, b)
				}
				if _, _, _, err := l.Append(ctx, leaves); err != nil {
					t.Fatal(err)
				}
				if i%(10*batch) == 0 {
					t.Logf("%s: appended %d of %d (%s)", name, i+len(leaves), n, time.Since(start).Round(time.Second))
				}
			}
			appended := time.Since(start)
			start = time.Now()
			r, err = New(ctx, st, Options{Key: r.key, Cert: cert, LookupRate: 1e9})
			if err != nil {
				t.Fatal(err)
			}
			replayed := time.Since(start)
			if _, err := r.LookupDCC(ctx, fmt.Sprintf("LOAD-%07d", n-1)); err != nil {
				// No head signed since the bulk append: sign one, as the
				// next write would.
				size, root, err := r.log.Size()
				if err != nil {
					t.Fatal(err)
				}
				if err := r.signHead(ctx, size, root); err != nil {
					t.Fatal(err)
				}
			}
			t.Logf("%s: loaded %d DCCs: log append %s (%.0f/s), table replay %s (%.0f/s)", name, n,
				appended.Round(time.Millisecond), float64(n)/appended.Seconds(), replayed.Round(time.Millisecond), float64(n)/replayed.Seconds())

			srv := httptest.NewServer(r.Handler())
			defer srv.Close()
			hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: clients}}
			for _, kind := range []string{"dcc", "equipment"} {
				url := func(rng *rand.Rand) string {
					j := rng.IntN(n)
					if kind == "dcc" {
						return fmt.Sprintf("%s/api/v1/registry/dcc/LOAD-%07d", srv.URL, j)
					}
					return fmt.Sprintf("%s/api/v1/registry/equipment?issuer=manufacturer&value=SN-%07d", srv.URL, j/3)
				}
				// One checked answer: proofs that verify offline.
				resp, err := hc.Get(url(rand.New(rand.NewPCG(1, 2))))
				if err != nil {
					t.Fatal(err)
				}
				var lk Lookup
				json.NewDecoder(resp.Body).Decode(&lk)
				resp.Body.Close()
				recs := lk.History
				if lk.Record != nil {
					recs = append(recs, *lk.Record)
				}
				if len(recs) == 0 {
					t.Fatalf("%s lookup: %d, no record", kind, resp.StatusCode)
				}
				for _, rec := range recs {
					if err := VerifyRecord(lk.Head, cert, &rec); err != nil {
						t.Fatal(err)
					}
				}
				lat := make([][]time.Duration, clients)
				var wg sync.WaitGroup
				start := time.Now()
				for c := range clients {
					wg.Add(1)
					go func() {
						defer wg.Done()
						rng := rand.New(rand.NewPCG(uint64(c), 7))
						for range lookups / clients {
							t0 := time.Now()
							resp, err := hc.Get(url(rng))
							if err != nil {
								t.Error(err)
								return
							}
							io.Copy(io.Discard, resp.Body)
							resp.Body.Close()
							if resp.StatusCode != http.StatusOK {
								t.Errorf("%s lookup: %d", kind, resp.StatusCode)
								return
							}
							lat[c] = append(lat[c], time.Since(t0))
						}
					}()
				}
				wg.Wait()
				el := time.Since(start)
				all := slices.Concat(lat...)
				slices.Sort(all)
				if len(all) == 0 {
					t.Fatal("no lookups")
				}
				t.Logf("%s: %d lookups by %s with proofs, %d clients: %.0f/s, p50 %s, p99 %s, max %s", name, len(all), kind, clients,
					float64(len(all))/el.Seconds(), all[len(all)/2].Round(10*time.Microsecond), all[len(all)*99/100].Round(10*time.Microsecond), all[len(all)-1].Round(10*time.Microsecond))
			}
		})
	}
}
