# fieldtrust: 'make run' starts the platform with a demo fleet, 'make test'
# runs every test (installing the system packages the tests need first).
GO      ?= go
BIN     := bin/fieldtrust
DATA    ?= ./fieldtrust-data

.PHONY: build run up test test-cluster bench-cluster deps vet fuzz bench bench-broker bench-idle bench-registry bench-dcc bench-console bench-agents load-firmware clean

build:
	$(GO) build -o $(BIN) ./cmd/fieldtrust

# The platform plus a demo fleet: a device maker, two customers, three
# gateways that onboard over EST and publish sealed snapshots.
run: build
	./$(BIN) demo --data $(DATA)

# The platform alone.
up: build
	./$(BIN) up --data $(DATA)

deps:
	./scripts/deps.sh

vet:
	$(GO) vet ./...
	@$(GO) mod tidy -diff >/dev/null || { echo "go.mod/go.sum are not tidy: run 'go mod tidy'"; $(GO) mod tidy -diff; exit 1; }
	@test -z "$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))" || { echo "gofmt needed:"; gofmt -l .; exit 1; }

# CI=true makes tests that need a real peer (openssl, mosquitto, PostgreSQL)
# fail instead of skipping when it is missing. scripts/postgres-test.sh
# starts (or reuses) a throwaway PostgreSQL cluster and prints its DSN.
test: deps vet
	FIELDTRUST_TEST_POSTGRES="$$(./scripts/postgres-test.sh)" && export FIELDTRUST_TEST_POSTGRES && \
	CI=$${CI:-true} $(GO) test -race -count=1 ./...

# The multi-node tests (docs/scale.md): three 'fieldtrust up --broker
# cluster' processes on one PostgreSQL, one killed with SIGKILL mid-traffic
# (about 1-2 min); .ci/run runs it after 'make test'.
test-cluster: deps
	FIELDTRUST_TEST_POSTGRES="$$(./scripts/postgres-test.sh)" && export FIELDTRUST_TEST_POSTGRES && \
	FIELDTRUST_TEST_CLUSTER=1 CI=$${CI:-true} $(GO) test -count=1 -run '^(TestClusterKill9|TestClusterDrain)$$' -v -timeout 10m ./cmd/fieldtrust/

# Cluster throughput with 1, 2 and 3 nodes on this machine, snapshots/s
# stored and per-node CPU (docs/benchmarks.md "Cluster"; a few minutes).
bench-cluster: deps
	FIELDTRUST_TEST_POSTGRES="$$(./scripts/postgres-test.sh)" && export FIELDTRUST_TEST_POSTGRES && \
	FIELDTRUST_TEST_CLUSTER=1 FIELDTRUST_BENCH_CLUSTER=1 $(GO) test -count=1 -run '^TestClusterThroughput$$' -v -timeout 30m ./cmd/fieldtrust/

# Short fuzzing runs of every fuzz target (FUZZTIME per target).
FUZZTIME ?= 30s
fuzz:
	./scripts/fuzz.sh $(FUZZTIME)

bench:
	$(GO) test -run='^$$' -bench=. -benchmem ./...

# Load tests, outside 'make test' (docs/benchmarks.md): the broker against
# Mosquitto in one run (~15 min), and idle connections on one broker
# process (FIELDTRUST_IDLE_CONNS, default 100000, capped by the open-file
# limit; ~10 min at 20,000).
bench-broker: deps
	./scripts/bench-broker.sh

bench-idle: deps
	FIELDTRUST_IDLE_BENCH=1 $(GO) test -count=1 -run '^TestIdleConnections$$' -v -timeout 60m ./internal/broker/loadtest

# The DCC registry with FIELDTRUST_BENCH_REGISTRY DCCs (default 1,000,000)
# on SQLite, and on PostgreSQL when FIELDTRUST_TEST_POSTGRES is set; and
# XAdES sign/verify of 50 KB to 5 MB DCCs beside xmlsec1 (docs/dcc.md).
FIELDTRUST_BENCH_REGISTRY ?= 1000000
bench-registry: deps
	FIELDTRUST_BENCH_REGISTRY=$(FIELDTRUST_BENCH_REGISTRY) $(GO) test -count=1 -run '^TestRegistryLoad$$' -v -timeout 6h ./internal/dcc/registry

bench-dcc: deps
	$(GO) test -run='^$$' -bench='^Benchmark(Sign|Verify|Xmlsec1)$$' ./internal/dcc/xades

# The console's heavy views on SQLite: the fleet at 10,000 devices and a
# chart over a day of 1 Hz data (~1 min; docs/benchmarks.md).
bench-console:
	FIELDTRUST_CONSOLE_BENCH=1 $(GO) test -count=1 -run '^TestViewTimes$$' -v ./internal/console

# A firmware rollout of a 20 MiB artifact to 100 in-process gateways on
# loopback (FIELDTRUST_FIRMWARE_GATEWAYS, FIELDTRUST_FIRMWARE_MIB; a few
# minutes, ~4 GiB of temporary disk): docs/benchmarks.md "Firmware".
load-firmware:
	FIELDTRUST_FIRMWARE_LOAD=1 $(GO) test -count=1 -run '^TestFirmwareLoad$$' -v -timeout 60m ./internal/devicemsg

# HTTPS agents (docs/benchmarks.md "HTTPS agents"): token requests, exchange
# posts and the access-token check, over real TLS on SQLite (~1 min).
bench-agents:
	$(GO) test -run '^$$' -bench . -benchtime 5s ./internal/agent

clean:
	rm -rf bin
