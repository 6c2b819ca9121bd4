package loadgen_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"database/sql"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	_ "modernc.org/sqlite" // database/sql driver "sqlite", for the checkpoint

	"github.com/fieldtrust/fieldtrust/internal/datadir"
	"github.com/fieldtrust/fieldtrust/internal/loadgen"
	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/platform"
)

// env is a platform running in-process on loopback, and a second handle
// on its data directory for issuing identities and reading the store.
type env struct {
	dir, httpAddr, mqttAddr string
	d                       *datadir.Dir
	roots                   *x509.CertPool
	ingestCert              *x509.Certificate
	mc                      *http.Client // for /metrics, made on first use
}

func startPlatform(t *testing.T, dsn string, notify platform.Notifications) *env {
	t.Helper()
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan [2]string, 1)
	done := make(chan error, 1)
	level := slog.LevelWarn
	if os.Getenv("FIELDTRUST_E2E_LOG") != "" {
		level = slog.LevelInfo
	}
	log := slog.New(&limitedHandler{Handler: slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}), left: new(atomic.Int64)})
	log.Handler().(*limitedHandler).left.Store(50)
	go func() {
		done <- platform.Run(ctx, platform.Config{DataDir: dir, DB: dsn, HTTPAddr: "127.0.0.1:0", MQTTAddr: "127.0.0.1:0", Logger: log,
			Ready: func(h, m string) { ready <- [2]string{h, m} }, Notifications: notify})
	}()
	var a [2]string
	select {
	case a = <-ready:
	case err := <-done:
		t.Fatal(err)
	case <-time.After(60 * time.Second):
		t.Fatal("platform did not start")
	}
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Error("platform did not stop")
		}
	})
	d, err := datadir.Open(t.Context(), dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	roots := x509.NewCertPool()
	roots.AddCert(d.Transport.Root())
	ic, err := pki.ReadCertsFile(filepath.Join(dir, "platform", "ingest-e2e.crt"))
	if err != nil {
		t.Fatal(err)
	}
	return &env{dir: dir, httpAddr: a[0], mqttAddr: a[1], d: d, roots: roots, ingestCert: ic[0]}
}

// issue returns a transport certificate of the identity path.
func (e *env) issue(t *testing.T, path string) tls.Certificate {
	t.Helper()
	p, err := pki.ParsePath(path)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := pki.GenerateKey(elliptic.P256())
	iss, err := e.d.Transport.Issue(t.Context(), pki.LeafRequest{Path: p, PublicKey: key.Public()})
	if err != nil {
		t.Fatal(err)
	}
	return tlsCert(key, iss)
}

// issueService returns a transport certificate of a platform service.
func (e *env) issueService(t *testing.T, name string) tls.Certificate {
	t.Helper()
	key, _ := pki.GenerateKey(elliptic.P256())
	iss, err := e.d.Transport.Issue(t.Context(), pki.LeafRequest{Service: name, PublicKey: key.Public()})
	if err != nil {
		t.Fatal(err)
	}
	return tlsCert(key, iss)
}

func tlsCert(key crypto.Signer, iss *pki.Issued) tls.Certificate {
	c := tls.Certificate{PrivateKey: key, Leaf: iss.Cert}
	for _, x := range iss.Chain {
		c.Certificate = append(c.Certificate, x.Raw)
	}
	return c
}

// issueE2E returns an e2e key and certificate of the identity path.
func (e *env) issueE2E(t *testing.T, path string) (crypto.Signer, *pki.Issued) {
	t.Helper()
	p, err := pki.ParsePath(path)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := pki.GenerateKey(elliptic.P256())
	iss, err := e.d.E2E.Issue(t.Context(), pki.LeafRequest{Path: p, PublicKey: key.Public()})
	if err != nil {
		t.Fatal(err)
	}
	return key, iss
}

// client is an HTTPS client with the identity, keeping its connection.
func (e *env) client(id tls.Certificate) *http.Client {
	return &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: e.roots, Certificates: []tls.Certificate{id}}, MaxIdleConnsPerHost: 2}}
}

// metrics scrapes /metrics with an admin identity.
func (e *env) metrics(t *testing.T, admin tls.Certificate) loadgen.Metrics {
	t.Helper()
	if e.mc == nil {
		e.mc = e.client(admin)
	}
	c := e.mc
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := c.Get("https://" + e.httpAddr + "/metrics")
		if err == nil && resp.StatusCode == 200 {
			m, err := loadgen.ParseMetrics(resp.Body)
			resp.Body.Close()
			if err != nil {
				t.Fatal(err)
			}
			return m
		}
		if err == nil {
			resp.Body.Close()
		}
		// The platform rereads service roles every second.
		if time.Now().After(deadline) {
			t.Fatalf("GET /metrics as admin: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// diskBytes returns the database's size: SQLite's file and WAL after a
// checkpoint, or the PostgreSQL tables with indexes and TOAST after
// ANALYZE.
func (e *env) diskBytes(t *testing.T, dsn string) (int64, string) {
	t.Helper()
	ctx := t.Context()
	if dsn == "" {
		file := filepath.Join(e.dir, "fieldtrust.db")
		db, err := sql.Open("sqlite", "file:"+file+"?_pragma=busy_timeout(10000)")
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		var busy, logged, moved int
		if err := db.QueryRowContext(ctx, `PRAGMA wal_checkpoint(TRUNCATE)`).Scan(&busy, &logged, &moved); err != nil {
			t.Fatal(err)
		}
		var n int64
		for _, f := range []string{file, file + "-wal"} {
			if fi, err := os.Stat(f); err == nil {
				n += fi.Size()
			}
		}
		return n, "SQLite file + WAL after wal_checkpoint(TRUNCATE), busy=" + strconv.Itoa(busy)
	}
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `ANALYZE`); err != nil {
		t.Fatal(err)
	}
	var n, snaps, dbSize int64
	if err := conn.QueryRow(ctx, `SELECT sum(pg_total_relation_size(c.oid))::bigint FROM pg_class c
		JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = current_schema() AND c.relkind = 'r'`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if err := conn.QueryRow(ctx, `SELECT pg_total_relation_size('snapshots'), pg_database_size(current_database())`).Scan(&snaps, &dbSize); err != nil {
		t.Fatal(err)
	}
	return n, "pg_total_relation_size of every table after ANALYZE; snapshots table " + strconv.FormatInt(snaps>>20, 10) + " MiB; whole database " + strconv.FormatInt(dbSize>>20, 10) + " MiB"
}

func dirSize(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}

// rssKiB reads a field (VmRSS, VmHWM) of /proc/self/status, in KiB.
func rssKiB(field string) int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return n
		}
	}
	return 0
}

// limitedHandler passes on the first records and drops the rest, so a
// flood of warnings (a reject per message) cannot drown the report.
type limitedHandler struct {
	slog.Handler
	left *atomic.Int64
}

func (h *limitedHandler) Handle(ctx context.Context, r slog.Record) error {
	switch n := h.left.Add(-1); {
	case n > 0:
		return h.Handler.Handle(ctx, r)
	case n == 0:
		r = slog.NewRecord(r.Time, slog.LevelWarn, "further log records suppressed", 0)
		return h.Handler.Handle(ctx, r)
	}
	return nil
}

func (h *limitedHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &limitedHandler{Handler: h.Handler.WithAttrs(as), left: h.left}
}

func (h *limitedHandler) WithGroup(name string) slog.Handler {
	return &limitedHandler{Handler: h.Handler.WithGroup(name), left: h.left}
}

// pgCPU is the CPU time used by the PostgreSQL server processes that
// serve database db (backends and autovacuum workers name their database
// in their process title), found through /proc on this machine. The
// cluster's shared processes (WAL writer, checkpointer) are not counted,
// nor a backend that exited between two readings. Zero if none is found
// (a server on another machine).
func pgCPU(db string) time.Duration {
	if db == "" {
		return 0
	}
	entries, _ := os.ReadDir("/proc")
	var ticks int64
	for _, e := range entries {
		if e.Name()[0] < '0' || e.Name()[0] > '9' {
			continue
		}
		cmd, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !bytes.HasPrefix(cmd, []byte("postgres: ")) || !bytes.Contains(cmd, []byte(" "+db+" ")) {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// Fields after the parenthesized command: state is field 3,
		// utime 14 and stime 15 (proc(5)).
		i := bytes.LastIndexByte(stat, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(stat[i+1:]))
		if len(f) < 13 {
			continue
		}
		u, _ := strconv.ParseInt(f[11], 10, 64)
		s, _ := strconv.ParseInt(f[12], 10, 64)
		ticks += u + s
	}
	return time.Duration(ticks) * time.Second / 100 // USER_HZ is 100 on Linux
}
