package registry

import (
	"bytes"
	"context"
	"crypto/x509"
	"database/sql"
	"database/sql/driver"
	"encoding/json"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/fieldtrust/fieldtrust/internal/dcc"
	"github.com/fieldtrust/fieldtrust/internal/dcc/dcctest"
	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/store/registrystore"
	"github.com/fieldtrust/fieldtrust/internal/store/sqlite"
)

// countingConnector opens the real SQLite driver and counts the statements
// a database/sql user executes: each is a round trip on PostgreSQL.
type countingConnector struct {
	dsn string
	d   driver.Driver
	n   *atomic.Int64
}

func (c countingConnector) Connect(context.Context) (driver.Conn, error) {
	conn, err := c.d.Open(c.dsn)
	if err != nil {
		return nil, err
	}
	return countingConn{conn, c.n}, nil
}

func (c countingConnector) Driver() driver.Driver { return c.d }

// countingConn exposes only driver.Conn's methods and the context ones
// below, so every query goes through a counted statement.
type countingConn struct {
	driver.Conn
	n *atomic.Int64
}

func (c countingConn) Prepare(q string) (driver.Stmt, error) {
	return c.PrepareContext(context.Background(), q)
}

func (c countingConn) PrepareContext(ctx context.Context, q string) (driver.Stmt, error) {
	s, err := c.Conn.(driver.ConnPrepareContext).PrepareContext(ctx, q)
	if err != nil {
		return nil, err
	}
	return countingStmt{s, c.n}, nil
}

func (c countingConn) BeginTx(ctx context.Context, o driver.TxOptions) (driver.Tx, error) {
	return c.Conn.(driver.ConnBeginTx).BeginTx(ctx, o)
}

type countingStmt struct {
	driver.Stmt
	n *atomic.Int64
}

func (s countingStmt) QueryContext(ctx context.Context, args []driver.NamedValue) (driver.Rows, error) {
	s.n.Add(1)
	return s.Stmt.(driver.StmtQueryContext).QueryContext(ctx, args)
}

func (s countingStmt) ExecContext(ctx context.Context, args []driver.NamedValue) (driver.Result, error) {
	s.n.Add(1)
	return s.Stmt.(driver.StmtExecContext).ExecContext(ctx, args)
}

// TestLookupRoundTrips: a lookup by DCC id and one by equipment (three
// DCCs, one revoked: four proofs) each cost two statements — the records
// with their log entries, and the nodes of all their proofs — with the
// signed head reused, not read (or signed) per request; the answers
// verify offline as before. (It was 13 and 11 statements: on PostgreSQL
// each a round trip, most of a lookup's time at 1,000,000 DCCs.)
func TestLookupRoundTrips(t *testing.T) {
	ctx := context.Background()
	file := filepath.Join(t.TempDir(), "r.db")
	s, err := sqlite.Open(ctx, file) // the schema
	if err != nil {
		t.Fatal(err)
	}
	drv := s.SQL().Driver()
	s.Close()
	var n atomic.Int64
	db := sql.OpenDB(countingConnector{dsn: "file:" + file + "?_pragma=busy_timeout(10000)&_pragma=foreign_keys(1)", d: drv, n: &n})
	defer db.Close()
	r, cert := newRegistry(t, registrystore.New(db, false))
	lab := dcctest.NewLab(t, "Lab A", false)
	if err := r.AddIssuer(ctx, lab.Name, []*x509.Certificate{lab.Root}); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		md := dcc.Metadata{ID: fmt.Sprintf("DCC-%d", i), SchemaVersion: "3.3.0", Lab: lab.Name,
			Equipment:       []dcc.EquipmentID{{Issuer: "manufacturer", Value: "SN-1"}, {Issuer: "customer", Value: "INV-1"}},
			PerformanceDate: fmt.Sprintf("202%d-01-01", i), ContentHash: fmt.Sprintf("%064x", i)}
		if _, err := r.register(ctx, lab.Name, md, "declared", nil); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := r.revoke(ctx, lab.Name, "DCC-2", "wrong reference"); err != nil {
		t.Fatal(err)
	}
	check := func(l *Lookup) {
		t.Helper()
		recs := l.History
		if l.Record != nil {
			recs = append(recs, *l.Record)
		}
		for _, rec := range recs {
			if err := VerifyRecord(l.Head, cert, &rec); err != nil {
				t.Fatalf("%s: %v", rec.DCC.ID, err)
			}
		}
	}
	for round := range 3 {
		n.Store(0)
		l, err := r.LookupDCC(ctx, "DCC-0")
		if err != nil {
			t.Fatal(err)
		}
		if got := n.Load(); got > 2 {
			t.Errorf("round %d: a lookup by DCC id ran %d statements, want at most 2", round, got)
		}
		if l.Record.Status != "superseded" || l.Record.SupersededBy != "DCC-1" {
			t.Fatalf("DCC-0: %s by %q", l.Record.Status, l.Record.SupersededBy)
		}
		check(l)
		n.Store(0)
		l, err = r.LookupEquipment(ctx, "manufacturer", "SN-1")
		if err != nil {
			t.Fatal(err)
		}
		if got := n.Load(); got > 2 {
			t.Errorf("round %d: a lookup by equipment ran %d statements, want at most 2", round, got)
		}
		if len(l.History) != 3 || l.History[2].Status != "revoked" || len(l.History[2].Proofs) != 2 || l.History[1].Status != "valid" || l.History[0].SupersededBy != "DCC-1" {
			t.Fatalf("history %+v", l.History)
		}
		check(l)
	}
	// A write signs a new head; the next lookup proves against it.
	md := dcc.Metadata{ID: "DCC-3", SchemaVersion: "3.3.0", Lab: lab.Name, Equipment: []dcc.EquipmentID{{Issuer: "manufacturer", Value: "SN-1"}},
		PerformanceDate: "2024-01-01", ContentHash: fmt.Sprintf("%064x", 3)}
	if _, err := r.register(ctx, lab.Name, md, "declared", nil); err != nil {
		t.Fatal(err)
	}
	l, err := r.LookupEquipment(ctx, "", "SN-1")
	if err != nil {
		t.Fatal(err)
	}
	if size, _, _ := r.log.Size(); l.Head.Size != size || len(l.History) != 4 || l.History[1].SupersededBy != "DCC-3" {
		t.Fatalf("after a write: head %d, history %d", l.Head.Size, len(l.History))
	}
	check(l)
}

// TestCachedProofNodes: with the log's upper nodes cached (a log of 1,500
// entries: levels 6 to 10), lookups read again and again give proofs that
// verify offline, the same as the first, and the cache holds only upper
// nodes, each equal to the stored one.
func TestCachedProofNodes(t *testing.T) {
	ctx := context.Background()
	st := sqliteStore(t)
	r, cert := newRegistry(t, st)
	lab := dcctest.NewLab(t, "Lab A", false)
	if err := r.AddIssuer(ctx, lab.Name, []*x509.Certificate{lab.Root}); err != nil {
		t.Fatal(err)
	}
	var leaves [][]byte
	for j := range 1500 {
		ev := Event{Type: "register", Lab: lab.Name, Time: "2026-01-01T00:00:00Z", SignatureStatus: "declared",
			DCC: &dcc.Metadata{ID: fmt.Sprintf("C-%04d", j), SchemaVersion: "3.3.0", Lab: lab.Name,
				Equipment:       []dcc.EquipmentID{{Issuer: "manufacturer", Value: fmt.Sprintf("SN-%04d", j/3)}},
				PerformanceDate: fmt.Sprintf("202%d-01-01", j%3), ContentHash: fmt.Sprintf("%064x", j)}}
		b, err := json.Marshal(ev)
		if err != nil {
			t.Fatal(err)
		}
		leaves = append(leaves, b)
	}
	if _, _, _, err := r.log.Append(ctx, leaves); err != nil {
		t.Fatal(err)
	}
	r, err := New(ctx, st, Options{Key: r.key, Cert: cert})
	if err != nil {
		t.Fatal(err)
	}
	size, root, _ := r.log.Size()
	if err := r.signHead(ctx, size, root); err != nil {
		t.Fatal(err)
	}
	first := map[string]string{}
	for round := range 2 {
		for _, j := range []int{0, 1, 700, 1023, 1024, 1499} {
			l, err := r.LookupEquipment(ctx, "manufacturer", fmt.Sprintf("SN-%04d", j/3))
			if err != nil {
				t.Fatal(err)
			}
			if len(l.History) != 3 {
				t.Fatalf("SN-%04d: %d records", j/3, len(l.History))
			}
			for _, rec := range l.History {
				if err := VerifyRecord(l.Head, cert, &rec); err != nil {
					t.Fatalf("round %d, %s: %v", round, rec.DCC.ID, err)
				}
				b, _ := json.Marshal(rec.Proofs)
				if round == 0 {
					first[rec.DCC.ID] = string(b)
				} else if first[rec.DCC.ID] != string(b) {
					t.Errorf("%s: the proof from the cache differs from the first", rec.DCC.ID)
				}
			}
		}
	}
	r.nodes.mu.RLock()
	defer r.nodes.mu.RUnlock()
	if len(r.nodes.nodes) == 0 {
		t.Fatal("no node cached")
	}
	for id, h := range r.nodes.nodes {
		stored, err := st.LedgerNodes(ctx, []store.LedgerNode{{Level: id.level, Index: id.index}})
		if id.level < cachedLevel || err != nil || !bytes.Equal(stored[0], h) {
			t.Fatalf("cached node %d/%d: %x, stored %x (%v)", id.level, id.index, h, stored, err)
		}
	}
}
