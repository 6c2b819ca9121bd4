#!/usr/bin/env bash
# Starts (or reuses) a throwaway PostgreSQL cluster for the test suite and
# prints its DSN on stdout, so that
#
#   export FIELDTRUST_TEST_POSTGRES="$(./scripts/postgres-test.sh)"
#
# runs the store conformance suite against PostgreSQL too. The cluster lives
# in FT_PG_DIR (default /tmp/ft-pg), listens on 127.0.0.1:FT_PG_PORT
# (default 55432) and a Unix socket in FT_PG_DIR, trusts local connections,
# and is meant for tests only: commits do not wait for the WAL flush
# (synchronous_commit=off: a crash loses the last moments, never
# consistency). Idempotent: a cluster that
# already runs there is reused. './scripts/postgres-test.sh stop' stops it;
# remove FT_PG_DIR afterwards to start from scratch.
#
# Needs Debian's postgresql package (scripts/deps.sh installs it). The server
# refuses to run as root, so as root it runs as the postgres user.
set -euo pipefail

dir="${FT_PG_DIR:-/tmp/ft-pg}"
port="${FT_PG_PORT:-55432}"
db="fieldtrust_test"
data="$dir/data"

bindir=""
for d in /usr/lib/postgresql/*/bin; do
  [ -x "$d/initdb" ] && bindir="$d" # the highest version wins (glob order)
done
if [ -z "$bindir" ]; then
  if command -v initdb >/dev/null && command -v pg_ctl >/dev/null; then
    bindir="$(dirname "$(command -v initdb)")"
  else
    echo "postgres-test: no PostgreSQL server found; run scripts/deps.sh" >&2
    exit 1
  fi
fi

# as runs a command as the cluster's owner.
if [ "$(id -u)" -eq 0 ]; then
  owner=postgres
  as() { su -s /bin/sh postgres -c "$*"; }
else
  owner="$(id -un)"
  as() { sh -c "$*"; }
fi

if [ "${1:-}" = "stop" ]; then
  if [ -f "$data/postmaster.pid" ]; then
    as "'$bindir/pg_ctl' -D '$data' -m fast -w stop" >&2
  fi
  exit 0
fi

if [ ! -f "$data/PG_VERSION" ]; then
  rm -rf "$data"
  install -d -m 0700 -o "$owner" "$dir"
  as "'$bindir/initdb' -D '$data' -A trust -U postgres -E UTF8 --locale=C.UTF-8" >"$dir/initdb.log" 2>&1 || {
    cat "$dir/initdb.log" >&2
    echo "postgres-test: initdb failed" >&2
    exit 1
  }
fi

if ! as "'$bindir/pg_ctl' -D '$data' status" >/dev/null 2>&1; then
  as "'$bindir/pg_ctl' -D '$data' -l '$dir/server.log' -w -t 60 start -o \"-k '$dir' -p $port -c listen_addresses=127.0.0.1 -c synchronous_commit=off -c max_connections=200\"" >&2 || {
    tail -n 30 "$dir/server.log" >&2 || true
    echo "postgres-test: could not start the server in $data" >&2
    exit 1
  }
fi

psql() { "$bindir/psql" -h "$dir" -p "$port" -U postgres -X -q -v ON_ERROR_STOP=1 "$@"; }
for _ in $(seq 1 50); do
  psql -d postgres -c 'SELECT 1' >/dev/null 2>&1 && break
  sleep 0.2
done
if [ "$(psql -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'")" != "1" ]; then
  psql -d postgres -c "CREATE DATABASE $db" >&2
fi

echo "postgres://postgres@127.0.0.1:$port/$db?sslmode=disable"
