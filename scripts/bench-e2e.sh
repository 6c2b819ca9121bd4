#!/usr/bin/env bash
# The end-to-end workload benchmark of docs/benchmarks.md ("End to end
# (issue 6)"): 100,000 sealed snapshots × 340 values through broker and
# ingest into SQLite, then into PostgreSQL, and the common queries through
# the HTTPS API.
#
#   scripts/bench-e2e.sh                 # both, full workload (~15 min)
#   scripts/bench-e2e.sh sqlite          # one of them
#   FIELDTRUST_E2E_SCALE=0.01 scripts/bench-e2e.sh   # a quick try
#
# PostgreSQL is the throwaway cluster of scripts/postgres-test.sh; each run
# gets a fresh database (dropped afterwards). Other knobs are passed
# through: FIELDTRUST_E2E_WINDOW, FIELDTRUST_E2E_AHEAD,
# FIELDTRUST_E2E_CPUPROFILE (the test appends -sqlite / -postgres here).
# The Markdown rows of each run are appended to FIELDTRUST_E2E_REPORT
# (default: bench-e2e-report.md in the current directory).
set -euo pipefail
cd "$(dirname "$0")/.."

dbs=("$@")
[ ${#dbs[@]} -eq 0 ] && dbs=(sqlite postgres)
export FIELDTRUST_E2E_BENCH=1
export FIELDTRUST_E2E_REPORT="${FIELDTRUST_E2E_REPORT:-$PWD/bench-e2e-report.md}"
profile="${FIELDTRUST_E2E_CPUPROFILE:-}"

bin="$(mktemp -d)/loadgen.test"
go test -c -o "$bin" ./internal/loadgen

for db in "${dbs[@]}"; do
  export FIELDTRUST_E2E_DB="$db"
  [ -n "$profile" ] && export FIELDTRUST_E2E_CPUPROFILE="$profile-$db"
  case "$db" in
  sqlite)
    unset FIELDTRUST_E2E_DSN
    ;;
  postgres)
    base="$(./scripts/postgres-test.sh)"
    name="ft_e2e_$$_$(date +%s)"
    dir="${FT_PG_DIR:-/tmp/ft-pg}"
    port="${FT_PG_PORT:-55432}"
    run_psql() {
      if [ "$(id -u)" -eq 0 ]; then
        su -s /bin/sh postgres -c "psql -h '$dir' -p $port -U postgres -X -q -d postgres -c \"$1\""
      else
        psql -h "$dir" -p "$port" -U postgres -X -q -d postgres -c "$1"
      fi
    }
    run_psql "CREATE DATABASE $name"
    trap 'run_psql "DROP DATABASE IF EXISTS $name WITH (FORCE)" || true' EXIT
    export FIELDTRUST_E2E_DSN="${base%/*}/$name?sslmode=disable"
    ;;
  *)
    echo "bench-e2e: unknown database $db (sqlite or postgres)" >&2
    exit 2
    ;;
  esac
  echo "== $db" >&2
  (cd internal/loadgen && "$bin" -test.run '^TestEndToEnd$' -test.v -test.timeout 60m -test.count 1)
  if [ "$db" = postgres ]; then
    run_psql "DROP DATABASE IF EXISTS $name WITH (FORCE)"
    trap - EXIT
  fi
done
echo "report rows appended to $FIELDTRUST_E2E_REPORT" >&2
