package registry

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fieldtrust/fieldtrust/internal/dcc"
	"github.com/fieldtrust/fieldtrust/internal/dcc/dcctest"
	"github.com/fieldtrust/fieldtrust/internal/envelope"
	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/store/postgres/pgtest"
	"github.com/fieldtrust/fieldtrust/internal/store/registrystore"
	"github.com/fieldtrust/fieldtrust/internal/store/sqlite"
)

func sqliteStore(t *testing.T) *registrystore.Store {
	s, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "r.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return registrystore.New(s.SQL(), false)
}

func stores(t *testing.T) map[string]func(*testing.T) *registrystore.Store {
	return map[string]func(*testing.T) *registrystore.Store{
		"sqlite":   sqliteStore,
		"postgres": func(t *testing.T) *registrystore.Store { return registrystore.New(pgtest.Open(t).SQL(), true) },
	}
}

func newRegistry(t *testing.T, st *registrystore.Store) (*Registry, *x509.Certificate) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	l := dcctest.NewLab(t, "Registry", false)
	// The checkpoint certificate: any certificate of the key (pinned by mirrors).
	tmpl := *l.Leaf
	der, err := x509.CreateCertificate(rand.Reader, &tmpl, l.Sub, key.Public(), l.SubKey)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	r, err := New(context.Background(), st, Options{Key: key, Cert: c})
	if err != nil {
		t.Fatal(err)
	}
	return r, c
}

// TestHistoryAcrossLabs: one instrument calibrated by three labs on schema
// 3.2.0, 3.2.1 and 3.3.0; the history is ordered, the older DCCs are
// superseded, a revocation shows with its reason, every record's proofs
// verify offline, a collision from another lab and a replacement are
// refused, and a mirror serves the same answers.
func TestHistoryAcrossLabs(t *testing.T) {
	for name, open := range stores(t) {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			r, regCert := newRegistry(t, open(t))
			labs := []*dcctest.Lab{dcctest.NewLab(t, "Lab A", false), dcctest.NewLab(t, "Lab B", true), dcctest.NewLab(t, "Lab C", false)}
			for _, l := range labs {
				if err := r.AddIssuer(ctx, l.Name, []*x509.Certificate{l.Root}); err != nil {
					t.Fatal(err)
				}
			}
			versions := []string{"3.2.0", "3.2.1", "3.3.0"}
			dates := []string{"2021", "2022", "2023"}
			for i, l := range labs {
				signed := signWithDate(t, l, "DCC-"+l.Name[4:], versions[i], dates[i])
				if _, rep, err := r.SubmitDCC(ctx, signed); err != nil {
					t.Fatalf("%s: %v %+v", l.Name, err, rep)
				}
			}
			// Lab B claims Lab A's id: a collision.
			if _, _, err := r.SubmitDCC(ctx, signWithDate(t, labs[1], "DCC-A", "3.2.0", "2024")); !errors.Is(err, ErrCollision) {
				t.Fatalf("collision: %v", err)
			}
			// Lab A replaces its own DCC with other content: refused.
			if _, _, err := r.SubmitDCC(ctx, signWithDate(t, labs[0], "DCC-A", "3.2.0", "2025")); !errors.Is(err, ErrReplace) {
				t.Fatalf("replace: %v", err)
			}
			// An unregistered lab cannot write.
			if _, _, err := r.SubmitDCC(ctx, signWithDate(t, dcctest.NewLab(t, "Lab X", false), "DCC-X", "3.2.0", "2024")); !errors.Is(err, ErrNotIssuer) {
				t.Fatalf("stranger: %v", err)
			}
			// Lab C revokes its DCC with a reason (signed statement).
			st, _ := json.Marshal(Statement{Action: "revoke", DCCID: "DCC-C", Reason: "wrong reference standard"})
			sd, err := envelope.Sign(st, &envelope.Signer{Cert: labs[2].Leaf, Key: labs[2].Key, Chain: []*x509.Certificate{labs[2].Sub}, EmbedCerts: true}, labs[2].Leaf.NotBefore.Add(60e9))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := r.SubmitStatement(ctx, sd); err != nil {
				t.Fatal(err)
			}
			l, err := r.LookupEquipment(ctx, "manufacturer", "SN-1")
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, h := range l.History {
				got = append(got, h.DCC.ID+":"+h.Lab+":"+h.DCC.SchemaVersion+":"+h.Status)
				if err := VerifyRecord(l.Head, regCert, &h); err != nil {
					t.Errorf("%s: %v", h.DCC.ID, err)
				}
			}
			want := "DCC-A:Lab A:3.2.0:superseded DCC-B:Lab B:3.2.1:valid DCC-C:Lab C:3.3.0:revoked"
			if strings.Join(got, " ") != want {
				t.Fatalf("history\n got %s\nwant %s", strings.Join(got, " "), want)
			}
			// A tampered record fails offline verification.
			bad := l.History[2]
			bad.RevokeReason = "nothing"
			if VerifyRecord(l.Head, regCert, &bad) == nil {
				t.Fatal("a changed revocation reason verified")
			}

			// HTTP, and a mirror of it.
			srv := httptest.NewServer(r.Handler())
			defer srv.Close()
			old := l.Head
			mr, err := New(ctx, open(t), Options{Cert: regCert})
			if err != nil {
				t.Fatal(err)
			}
			m := &Mirror{Source: srv.URL, Pin: regCert, Local: mr}
			if n, err := m.Sync(ctx); err != nil || n == 0 {
				t.Fatalf("mirror: %d %v", n, err)
			}
			ml, err := mr.LookupDCC(ctx, "DCC-B")
			if err != nil || ml.Record.Status != "valid" || VerifyRecord(ml.Head, regCert, ml.Record) != nil {
				t.Fatalf("mirror lookup: %+v %v", ml, err)
			}
			if _, _, err := mr.SubmitDCC(ctx, signWithDate(t, labs[0], "DCC-A2", "3.2.0", "2026")); !errors.Is(err, ErrReadOnly) {
				t.Fatalf("mirror write: %v", err)
			}
			// The source grows; consistency from the old head verifies.
			if _, _, err := r.SubmitDCC(ctx, signWithDate(t, labs[0], "DCC-A2", "3.2.0", "2026")); err != nil {
				t.Fatal(err)
			}
			nh, _ := r.LatestHead(ctx)
			p, err := r.Consistency(ctx, old.Size, nh.Size)
			if err != nil || VerifyConsistency(old, nh, regCert, p) != nil {
				t.Fatalf("consistency: %v", err)
			}
			var resp struct {
				Record Record `json:"record"`
			}
			hr, err := http.Get(srv.URL + "/api/v1/registry/dcc/DCC-A2")
			if err != nil || hr.StatusCode != 200 {
				t.Fatalf("GET: %v %v", err, hr)
			}
			json.NewDecoder(hr.Body).Decode(&resp)
			hr.Body.Close()
			if resp.Record.DCC.ID != "DCC-A2" {
				t.Fatalf("%+v", resp)
			}
			if n, err := m.Sync(ctx); err != nil || n != 1 {
				t.Fatalf("second sync: %d %v", n, err)
			}
		})
	}
}

// signWithDate signs a DCC for SN-1 performed in the given year.
func signWithDate(t *testing.T, l *dcctest.Lab, id, version, year string) []byte {
	src := dcctest.Sample(t, "../testdata", id, "SN-1")
	src = bytes.ReplaceAll(src, []byte(`schemaVersion="3.2.0"`), []byte(`schemaVersion="`+version+`"`))
	src = bytes.ReplaceAll(src, []byte("/v3.2.0/"), []byte("/v"+version+"/"))
	for _, tag := range []string{"beginPerformanceDate", "endPerformanceDate"} {
		i := bytes.Index(src, []byte("<dcc:"+tag+">"))
		if i >= 0 {
			j := i + len("<dcc:"+tag+">")
			copy(src[j:j+4], year)
		}
	}
	b, err := dcc.Sign(src, l.Key, []*x509.Certificate{l.Leaf, l.Sub}, l.Leaf.NotBefore.Add(60e9))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestRateLimit: public lookups beyond the burst get 429 with Retry-After.
func TestRateLimit(t *testing.T) {
	r, _ := newRegistry(t, sqliteStore(t))
	h := r.Handler()
	got429 := false
	for i := 0; i < 3*LookupRate; i++ {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest("GET", "/api/v1/registry/dcc/none", nil))
		if w.Code == http.StatusTooManyRequests {
			got429 = w.Header().Get("Retry-After") != ""
			break
		}
		if w.Code != http.StatusNotFound && w.Code != http.StatusInternalServerError {
			t.Fatalf("status %d", w.Code)
		}
	}
	if !got429 {
		t.Fatal("never rate limited")
	}
}

// TestMirrorRefusesForgedEntries: a source whose entries do not add up to
// its signed head is refused before anything is stored — the mirror's log
// and tables stay as they were, and it then mirrors the honest source.
func TestMirrorRefusesForgedEntries(t *testing.T) {
	ctx := context.Background()
	r, regCert := newRegistry(t, sqliteStore(t))
	lab := dcctest.NewLab(t, "Lab A", false)
	if err := r.AddIssuer(ctx, lab.Name, []*x509.Certificate{lab.Root}); err != nil {
		t.Fatal(err)
	}
	for i, y := range []string{"2021", "2022"} {
		if _, _, err := r.SubmitDCC(ctx, signWithDate(t, lab, "DCC-"+y, "3.2.0", y)); err != nil {
			t.Fatal(i, err)
		}
	}
	honest := r.Handler()
	forge := http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path != "/api/v1/registry/log/entries" {
			honest.ServeHTTP(w, req)
			return
		}
		rec := httptest.NewRecorder()
		honest.ServeHTTP(rec, req)
		var page struct {
			Entries []string `json:"entries"`
		}
		json.Unmarshal(rec.Body.Bytes(), &page)
		// The last entry claims another lab issued DCC-2022.
		last, _ := base64.StdEncoding.DecodeString(page.Entries[len(page.Entries)-1])
		page.Entries[len(page.Entries)-1] = base64.StdEncoding.EncodeToString(bytes.Replace(last, []byte(`"lab":"Lab A"`), []byte(`"lab":"Lab Z"`), 1))
		writeJSON(w, http.StatusOK, page)
	})
	bad := httptest.NewServer(forge)
	defer bad.Close()
	good := httptest.NewServer(honest)
	defer good.Close()

	mr, err := New(ctx, sqliteStore(t), Options{Cert: regCert})
	if err != nil {
		t.Fatal(err)
	}
	if n, err := (&Mirror{Source: bad.URL, Pin: regCert, Local: mr}).Sync(ctx); err == nil || n != 0 {
		t.Fatalf("forged source: copied %d, err %v", n, err)
	}
	if size, _, _ := mr.log.Size(); size != 0 {
		t.Fatalf("the mirror stored %d entries of a forged source", size)
	}
	if _, err := mr.st.DCC(ctx, "DCC-2021"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a forged source's DCC is in the mirror's tables: %v", err)
	}
	if n, err := (&Mirror{Source: good.URL, Pin: regCert, Local: mr}).Sync(ctx); err != nil || n != 3 {
		t.Fatalf("honest source after a forged one: copied %d, err %v", n, err)
	}
	l, err := mr.LookupDCC(ctx, "DCC-2022")
	if err != nil || l.Record.Lab != "Lab A" || VerifyRecord(l.Head, regCert, l.Record) != nil {
		t.Fatalf("mirror lookup: %+v %v", l, err)
	}
}

// TestSecondWriter: an operator command appends to the log of a running
// registry on the same database (a lab registered with 'fieldtrust
// registry issuer' beside 'up'); the running registry serves proofs
// against the new head and its next write lands after it, applied.
func TestSecondWriter(t *testing.T) {
	for name, open := range stores(t) {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			st := open(t)
			up, regCert := newRegistry(t, st)
			a := dcctest.NewLab(t, "Lab A", false)
			if err := up.AddIssuer(ctx, a.Name, []*x509.Certificate{a.Root}); err != nil {
				t.Fatal(err)
			}
			cli, err := New(ctx, st, Options{Key: up.key, Cert: up.cert})
			if err != nil {
				t.Fatal(err)
			}
			b := dcctest.NewLab(t, "Lab B", false)
			if err := cli.AddIssuer(ctx, b.Name, []*x509.Certificate{b.Root}); err != nil {
				t.Fatal(err)
			}
			rec, _, err := up.SubmitDCC(ctx, signWithDate(t, b, "DCC-B", "3.2.0", "2022"))
			if err != nil {
				t.Fatalf("a DCC of the lab the other writer registered: %v", err)
			}
			if rec.Proofs[0].LeafIndex != 2 {
				t.Fatalf("registered at leaf %d, want 2", rec.Proofs[0].LeafIndex)
			}
			// The other writer again, then a lookup on the first.
			if _, _, err := cli.SubmitDCC(ctx, signWithDate(t, a, "DCC-A", "3.2.0", "2021")); err != nil {
				t.Fatal(err)
			}
			l, err := up.LookupEquipment(ctx, "manufacturer", "SN-1")
			if err != nil || len(l.History) != 2 || l.Head.Size != 4 {
				t.Fatalf("lookup after the other writer: %+v %v", l, err)
			}
			for _, h := range l.History {
				if err := VerifyRecord(l.Head, regCert, &h); err != nil {
					t.Fatal(err)
				}
			}
			if n, _ := st.Applied(ctx); n != 4 {
				t.Fatalf("applied %d of 4", n)
			}
		})
	}
}
