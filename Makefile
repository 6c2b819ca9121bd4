# fieldtrust: 'make run' starts the platform with a demo fleet, 'make test'
# runs every test (installing the system packages the tests need first).
GO      ?= go
BIN     := bin/fieldtrust
DATA    ?= ./fieldtrust-data

.PHONY: build run up test deps vet fuzz bench bench-broker bench-idle bench-registry bench-dcc bench-agents clean

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

# HTTPS agents (docs/benchmarks.md "HTTPS agents"): token requests, exchange
# posts and the access-token check, over real TLS on SQLite (~1 min).
bench-agents:
	$(GO) test -run '^$$' -bench . -benchtime 5s ./internal/agent

clean:
	rm -rf bin
