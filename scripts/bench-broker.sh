#!/usr/bin/env bash
# Broker benchmark (issue 3): our broker vs. Debian's mosquitto, same PKI,
# same ACL rules, same workload, on loopback. Prints markdown tables and the
# top of our broker's CPU profiles. See docs/benchmarks.md, "Broker (issue 3)".
#
#   scripts/bench-broker.sh            # full run (~10 min on 2 cores)
#   FIELDTRUST_BROKER_BENCH_IDLE=1000 scripts/bench-broker.sh   # smaller
#
# Knobs (environment, FIELDTRUST_BROKER_BENCH_*): PUBLISHERS (16),
# SUBSCRIBERS (4), MESSAGES_QOS0 (10000), MESSAGES_QOS1 (2000) per
# publisher, WINDOW (16), PACED_PERCENT (50), PACED_SECONDS (10), IDLE
# (10000 connections).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v mosquitto >/dev/null && [ ! -x /usr/sbin/mosquitto ]; then
	echo "installing mosquitto" >&2
	apt-get install -y mosquitto >&2
fi
# 10k idle connections: each side of each connection is a descriptor.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
export FIELDTRUST_BROKER_BENCH=1
export FIELDTRUST_BROKER_BENCH_OUT="$out/tables.md"
# An explicitly empty FIELDTRUST_BROKER_BENCH_PROFILES runs without the CPU
# profiler (whose signals cost our broker latency that Mosquitto does not pay).
export FIELDTRUST_BROKER_BENCH_PROFILES="${FIELDTRUST_BROKER_BENCH_PROFILES-$out/profiles}"

# The test fails (after the whole run) on QoS 1 loss; print the tables anyway.
status=0
go test -count=1 -run '^TestBrokerBench$' -v -timeout 40m ./internal/broker/loadtest >&2 || status=$?

[ -f "$out/tables.md" ] && cat "$out/tables.md"
prof="$FIELDTRUST_BROKER_BENCH_PROFILES"
for p in qos0 qos1 qos2 v5 persistent fanout0 fanout1 resume idle; do
	[ -f "$prof/$p.pprof" ] || continue
	echo
	echo "### brokerd CPU profile: $p (go tool pprof -top)"
	echo '```'
	# An empty profile (an idle phase) has nothing to show: not a failure.
	go tool pprof -top -nodecount=25 "$prof/brokerd" "$prof/$p.pprof" 2>/dev/null | sed -n '4,35p' || true
	echo '```'
done
exit "$status"
