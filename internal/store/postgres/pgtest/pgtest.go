// Package pgtest gives tests outside package postgres a PostgreSQL store
// of their own: a fresh schema on the test server named by
// FIELDTRUST_TEST_POSTGRES (scripts/postgres-test.sh starts one and prints
// its DSN), dropped when the test ends, so tests can share the server.
package pgtest

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fieldtrust/fieldtrust/internal/store/postgres"
)

// DSN returns the test server's DSN. Without one the test skips, or fails
// when CI is set: CI must not silently test less.
func DSN(t testing.TB) string {
	t.Helper()
	dsn := os.Getenv("FIELDTRUST_TEST_POSTGRES")
	if dsn == "" {
		if os.Getenv("CI") != "" {
			t.Fatal("CI is set but FIELDTRUST_TEST_POSTGRES is empty: export FIELDTRUST_TEST_POSTGRES=\"$(./scripts/postgres-test.sh)\"")
		}
		t.Skip("FIELDTRUST_TEST_POSTGRES is not set; see scripts/postgres-test.sh")
	}
	return dsn
}

var schemas atomic.Int64

// Open returns a store in a fresh schema of the test server, closed and
// dropped when t ends.
func Open(t testing.TB) *postgres.Store {
	t.Helper()
	dsn := DSN(t)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	name := fmt.Sprintf("ft_test_%d_%d_%d", os.Getpid(), time.Now().UnixNano()%1e9, schemas.Add(1))
	if _, err := conn.Exec(ctx, `CREATE SCHEMA `+name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			t.Error(err)
			return
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, `DROP SCHEMA `+name+` CASCADE`); err != nil {
			t.Error(err)
		}
	})
	s, err := postgres.Open(ctx, withSearchPath(t, dsn, name))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// OpenKept returns a store in the named schema of the test server, created
// if missing and kept when t ends: a load test reuses a database it took
// minutes to fill (make bench-registry with FIELDTRUST_BENCH_REGISTRY_KEEP).
func OpenKept(t testing.TB, schema string) *postgres.Store {
	t.Helper()
	dsn := DSN(t)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `CREATE SCHEMA IF NOT EXISTS `+pgx.Identifier{schema}.Sanitize()); err != nil {
		t.Fatal(err)
	}
	s, err := postgres.Open(ctx, withSearchPath(t, dsn, schema))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func withSearchPath(t testing.TB, dsn, schema string) string {
	if strings.Contains(dsn, "://") {
		u, err := url.Parse(dsn)
		if err != nil {
			t.Fatal(err)
		}
		q := u.Query()
		q.Set("search_path", schema)
		u.RawQuery = q.Encode()
		return u.String()
	}
	return dsn + " search_path=" + schema
}
