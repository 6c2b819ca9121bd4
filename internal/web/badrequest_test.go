package web_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/ledger"
	"github.com/fieldtrust/fieldtrust/internal/snapshot"
	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/store/postgres/pgtest"
	"github.com/fieldtrust/fieldtrust/internal/store/sqlite"
	"github.com/fieldtrust/fieldtrust/internal/tacs"
	"github.com/fieldtrust/fieldtrust/internal/topic"
	"github.com/fieldtrust/fieldtrust/internal/web"
)

// apiStore is what the API reads and the fixture writes: either store.
type apiStore interface {
	web.Data
	store.Ledger
	InsertSnapshots(ctx context.Context, recs []store.SnapshotRecord) ([]bool, error)
}

// subjectHeader names the caller in these tests, which exercise the
// API's handling of parameters; mTLS identification is tested with the
// real platform (export_test.go).
const subjectHeader = "X-Test-Subject"

func identifyByHeader(r *http.Request) (tacs.Subject, bool) {
	switch h := r.Header.Get(subjectHeader); {
	case h == "":
		return tacs.Subject{}, false
	case strings.HasPrefix(h, "service:"):
		name, role, _ := strings.Cut(strings.TrimPrefix(h, "service:"), "/")
		return tacs.ServiceSubject(name, role), true
	default:
		return tacs.Account(h), true
	}
}

// apiFixture serves the API from a real store and ledger holding n
// snapshots of ms-1/acc-1/gw-1/pump-1 under a tree head of their size.
func apiFixture(t *testing.T, st apiStore, n int) *httptest.Server {
	return apiFixtureWith(t, st, n, tacs.DefaultGrants())
}

func apiFixtureWith(t *testing.T, st apiStore, n int, grants tacs.Grants) *httptest.Server {
	t.Helper()
	ctx := t.Context()
	lg, err := ledger.Open(ctx, st)
	if err != nil {
		t.Fatal(err)
	}
	b := &snapshot.Builder{Device: "pump-1"}
	var recs []store.SnapshotRecord
	var leaves [][]byte
	t0 := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
	for i := range n {
		enc, s, err := b.Next(t0.Add(time.Duration(i)*time.Second).UnixMilli(), []snapshot.Value{{Channel: "p", Value: float64(i)}})
		if err != nil {
			t.Fatal(err)
		}
		h := snapshot.Hash(enc)
		recs = append(recs, store.SnapshotRecord{Gateway: "ms-1/acc-1/gw-1", Device: "pump-1", Seq: s.Seq, Time: s.Time(), Hash: h[:], Prev: s.Prev,
			Values: s.Values, Signer: "x", SignedAt: t0, ReceivedAt: t0, LedgerIndex: uint64(i)})
		leaves = append(leaves, ledger.LeafData("ms-1/acc-1/gw-1", h))
	}
	if _, _, _, err := lg.Append(ctx, leaves); err != nil {
		t.Fatal(err)
	}
	if _, err := st.InsertSnapshots(ctx, recs); err != nil {
		t.Fatal(err)
	}
	size, root, _ := lg.Size()
	if err := st.PutTreeHead(ctx, store.TreeHead{Size: size, Root: root, Checkpoint: []byte("c"), Signature: []byte("s"), CertChain: []byte("p")}); err != nil {
		t.Fatal(err)
	}
	api := &web.API{Data: st, Proofs: lg, Grants: grants, Identify: identifyByHeader}
	srv := httptest.NewServer(web.New(web.Options{API: api}))
	t.Cleanup(srv.Close)
	return srv
}

func cursor(t *testing.T, c any) string {
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// TestBadParametersAre400: whatever a client puts in a request's path or
// query, the API answers 400 (or 404 for what does not exist), never 500:
// a 500 means the platform failed, and a client must not be able to make
// it look so, nor fill its log with errors. Run against both stores, since
// each refuses different things.
func TestBadParametersAre400(t *testing.T) {
	stores := map[string]func(t *testing.T) apiStore{
		"sqlite": func(t *testing.T) apiStore {
			s, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "db"))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			return s
		},
		"postgres": func(t *testing.T) apiStore { return pgtest.Open(t) },
	}
	const dev = "/api/v1/devices/ms-1/acc-1/gw-1/pump-1/snapshots"
	const hash = "/api/v1/ledger/proof/"
	good := map[string]any{"Time": "2026-06-01T00:00:00Z", "Gateway": "ms-1/acc-1/gw-1", "Device": "pump-1", "Seq": 1}
	with := func(k string, v any) map[string]any {
		m := map[string]any{}
		for a, b := range good {
			m[a] = b
		}
		m[k] = v
		return m
	}
	for name, open := range stores {
		t.Run(name, func(t *testing.T) {
			srv := apiFixture(t, open(t), 3)
			var snaps struct{ Snapshots []struct{ Hash string } }
			get := func(who, path string) (int, string) {
				req, _ := http.NewRequest("GET", srv.URL+path, nil)
				req.Header.Set(subjectHeader, who)
				resp, err := srv.Client().Do(req)
				if err != nil {
					t.Fatal(err)
				}
				defer resp.Body.Close()
				b, _ := io.ReadAll(resp.Body)
				return resp.StatusCode, string(b)
			}
			code, body := get("ms-1", dev)
			if code != 200 || json.Unmarshal([]byte(body), &snaps) != nil || len(snaps.Snapshots) != 3 {
				t.Fatalf("fixture: %d %s", code, body)
			}
			leaf2 := snaps.Snapshots[2].Hash
			exportNext := func(size uint64) string { return cursor(t, with("Covered", size)) }
			tests := []struct {
				name, who, path string
				want            int
			}{
				// Snapshot list: range, limit, channels, cursor.
				{"from not a time", "ms-1", dev + "?from=yesterday", 400},
				{"to not a time", "ms-1", dev + "?to=2026-13-01T00:00:00Z", 400},
				{"from after to", "ms-1", dev + "?from=2026-06-02T00:00:00Z&to=2026-06-01T00:00:00Z", 400},
				{"from equals to", "ms-1", dev + "?from=2026-06-01T00:00:00Z&to=2026-06-01T00:00:00Z", 400},
				{"earliest and latest times", "ms-1", dev + "?from=0000-01-01T00:00:00Z&to=9999-12-31T23:59:59.999999999Z", 200},
				{"limit 0", "ms-1", dev + "?limit=0", 400},
				{"limit above the maximum", "ms-1", dev + "?limit=10001", 400},
				{"limit not a number", "ms-1", dev + "?limit=1e3", 400},
				{"limit overflows", "ms-1", dev + "?limit=99999999999999999999", 400},
				{"channel with a slash", "ms-1", dev + "?channel=a/b", 400},
				{"channel empty", "ms-1", dev + "?channel=a,,b", 400},
				{"many channels", "ms-1", dev + "?channel=" + strings.Repeat("p,", 40000) + "p", 200},
				{"cursor not base64", "ms-1", dev + "?after=!!!", 400},
				{"cursor not JSON", "ms-1", dev + "?after=" + base64.RawURLEncoding.EncodeToString([]byte("{")), 400},
				{"cursor null", "ms-1", dev + "?after=" + cursor(t, nil), 400},
				{"cursor with an unknown field", "ms-1", dev + "?after=" + cursor(t, with("Evil", 1)), 400},
				{"cursor seq beyond the store", "ms-1", dev + "?after=" + cursor(t, with("Seq", uint64(math.MaxInt64)+1)), 400},
				{"cursor seq 2^64-1", "ms-1", dev + "?after=" + cursor(t, with("Seq", uint64(math.MaxUint64))), 400},
				{"cursor seq 0", "ms-1", dev + "?after=" + cursor(t, with("Seq", 0)), 400},
				{"cursor gateway with NUL", "ms-1", dev + "?after=" + cursor(t, with("Gateway", "ms-1/acc-1/gw\x00-1")), 400},
				{"cursor gateway of two elements", "ms-1", dev + "?after=" + cursor(t, with("Gateway", "ms-1/acc-1")), 400},
				{"cursor gateway empty", "ms-1", dev + "?after=" + cursor(t, with("Gateway", "")), 400},
				{"cursor device with NUL", "ms-1", dev + "?after=" + cursor(t, with("Device", "pump\x00")), 400},
				{"cursor device dot-dot", "ms-1", dev + "?after=" + cursor(t, with("Device", "..")), 400},
				{"cursor without time", "ms-1", dev + "?after=" + cursor(t, with("Time", "0001-01-01T00:00:00Z")), 400},
				{"cursor too long", "ms-1", dev + "?after=" + strings.Repeat("A", 2000), 400},
				{"cursor of a page", "ms-1", dev + "?after=" + cursor(t, good), 200},
				{"device path with NUL", "ms-1", "/api/v1/devices/ms-1/acc-1/gw-1/%00/snapshots", 400},
				{"device path with plus", "ms-1", "/api/v1/devices/ms-1/%2B/gw-1/pump-1/snapshots", 400},
				{"device path too short", "ms-1", "/api/v1/devices/ms-1/acc-1/snapshots", 404},
				// Events and rejects.
				{"events from not a time", "ms-1", "/api/v1/integrity-events?from=now", 400},
				{"events from after to", "ms-1", "/api/v1/integrity-events?from=2026-06-02T00:00:00Z&to=2026-06-01T00:00:00Z", 400},
				{"events limit 0", "ms-1", "/api/v1/integrity-events?limit=0", 400},
				{"events earliest and latest", "ms-1", "/api/v1/integrity-events?from=0000-01-01T00:00:00Z&to=9999-12-31T23:59:59.999Z", 200},
				{"rejects limit above the maximum", "service:ops/admin", "/api/v1/rejects?limit=10001", 400},
				{"rejects from after to", "service:ops/admin", "/api/v1/rejects?from=2026-06-02T00:00:00Z&to=2026-06-01T00:00:00Z", 400},
				// Proofs.
				{"hash not hex", "ms-1", hash + strings.Repeat("zz", 32), 400},
				{"hash too short", "ms-1", hash + "abcd", 400},
				{"hash unknown", "ms-1", hash + strings.Repeat("00", 32), 404},
				{"size 0", "ms-1", hash + leaf2 + "?size=0", 400},
				{"size not a number", "ms-1", hash + leaf2 + "?size=-1", 400},
				{"size beyond the ledger", "ms-1", hash + leaf2 + "?size=4", 400},
				{"size 2^64-1", "ms-1", hash + leaf2 + "?size=18446744073709551615", 400},
				{"size below the leaf", "ms-1", hash + leaf2 + "?size=2", 400},
				{"size of the ledger", "ms-1", hash + leaf2 + "?size=3", 200},
				{"consistency from 0", "ms-1", "/api/v1/ledger/consistency?from=0&to=3", 400},
				{"consistency from after to", "ms-1", "/api/v1/ledger/consistency?from=3&to=2", 400},
				{"consistency to beyond the ledger", "ms-1", "/api/v1/ledger/consistency?from=1&to=4", 400},
				{"consistency to 2^64-1", "ms-1", "/api/v1/ledger/consistency?from=1&to=18446744073709551615", 400},
				{"consistency", "ms-1", "/api/v1/ledger/consistency?from=1&to=3", 200},
				// Export.
				{"export from not a time", "ms-1", "/api/v1/export?from=yesterday", 400},
				{"export from after to", "ms-1", "/api/v1/export?from=2026-06-02T00:00:00Z&to=2026-06-01T00:00:00Z", 400},
				{"export limit 0", "ms-1", "/api/v1/export?limit=0", 400},
				{"export limit above the maximum", "ms-1", fmt.Sprintf("/api/v1/export?limit=%d", web.MaxExportLimit+1), 400},
				{"export cursor of the snapshot list", "ms-1", "/api/v1/export?after=" + cursor(t, good), 400},
				{"export cursor covering nothing", "ms-1", "/api/v1/export?after=" + exportNext(0), 400},
				{"export cursor covering more than the ledger", "ms-1", "/api/v1/export?after=" + exportNext(4), 400},
				{"export cursor with NUL", "ms-1", "/api/v1/export?after=" + cursor(t, map[string]any{"Time": "2026-06-01T00:00:00Z", "Gateway": "ms-1/acc-1/gw-1", "Device": "p\x00", "Seq": 1, "Covered": 3}), 400},
				{"export earliest and latest", "ms-1", "/api/v1/export?from=0000-01-01T00:00:00Z&to=9999-12-31T23:59:59.999999999Z", 200},
				{"export cursor of a page", "ms-1", "/api/v1/export?after=" + exportNext(3), 200},
			}
			for _, tt := range tests {
				code, body := get(tt.who, tt.path)
				if code != tt.want {
					t.Errorf("%s: GET %.120s: %d %.300s; want %d", tt.name, tt.path, code, body, tt.want)
				}
				if code == 400 && !strings.Contains(body, `"error"`) {
					t.Errorf("%s: 400 without an error message: %.300s", tt.name, body)
				}
			}
		})
	}
}

// TestRejectsFollowGrants: rejects may concern any tenant, so they are for
// a service whose role's grants read every tenant's topics, whatever the
// role is called; a role without them is refused, as is every account.
func TestRejectsFollowGrants(t *testing.T) {
	st, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	grants := tacs.DefaultGrants()
	grants["auditor"] = []tacs.Grant{{Filter: "#", Read: true}}
	grants["tenant-reader"] = []tacs.Grant{{Filter: "ms-1/#", Read: true}, {Filter: topic.AllSnapshots, Read: true}}
	srv := apiFixtureWith(t, st, 1, grants)
	for who, want := range map[string]int{
		"service:ops/" + tacs.RoleAdmin:             200,
		"service:audit/auditor":                     200,
		"service:ingest/" + tacs.RoleSnapshotReader: 403,
		"service:t/tenant-reader":                   403,
		"ms-1":                                      403,
	} {
		req, _ := http.NewRequest("GET", srv.URL+"/api/v1/rejects", nil)
		req.Header.Set(subjectHeader, who)
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("rejects for %s: %d, want %d", who, resp.StatusCode, want)
		}
	}
}
