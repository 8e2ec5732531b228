# Cordon. Two commands for a newcomer: `make demo` and `make test`.
# Every target installs what it needs (Debian packages, Go modules).

SHELL := /bin/bash
GO ?= go
BIN := $(CURDIR)/bin
export PATH := /usr/local/go/bin:$(PATH)

.PHONY: all build images test demo demo-local stack-up stack-down deps-test vet generate bench-egress bench-xds bench-dispatcher clean

all: build

build:
	@mkdir -p $(BIN)
	CGO_ENABLED=0 $(GO) build -trimpath -tags grpcnotrace -o $(BIN)/ ./egress-proxy/cmd/... ./xds/cmd/... ./sidecar/cmd/... ./dispatcher/cmd/... ./test/cmd/...

# images builds one FROM scratch image per binary (cordon/<name>:dev), from
# static binaries compiled here: no registry is needed.
images:
	@./deploy/docker/build-images.sh

# deps-test installs what the test suite needs on a fresh Debian machine.
deps-test:
	@./test/scripts/ensure-deps.sh test

vet:
	$(GO) vet ./...

# test runs every test: unit, integration (real DNS, TLS, Postgres, eBPF),
# fuzz seed corpora, and the end-to-end suite.
test: deps-test vet
	./bpf/check-generated.sh
	$(GO) test -count=1 -timeout 15m ./...

# demo runs Cordon's main job twice: first one task of acme/block_follower
# through the compose stack that reproduces the Fargate topology (sidecar +
# job on an internal network, only the gateway on both, xds, dispatcher and
# Postgres rows), then the same job on loopback against a gallery of bypass
# attempts, and the security team's lint and review of an allowlist edit.
demo: build
	@./test/scripts/ensure-deps.sh test
	@./deploy/compose/demo.sh
	@./test/scripts/demo.sh

# demo-local is the second half of demo alone: no Docker needed.
demo-local: build
	@./test/scripts/demo.sh

# The compose stack by hand (deploy/compose/README.md).
stack-up: build
	@./deploy/compose/up.sh

stack-down:
	@./deploy/compose/down.sh

clean:
	rm -rf $(BIN)

# generate rebuilds the committed bpf2go output (installs clang if missing).
generate:
	@./test/scripts/ensure-deps.sh generate
	@./bpf/generate.sh

# Benchmarks print tables; they are not part of make test.
bench-egress: build
	@./test/scripts/ensure-deps.sh bench
	@./test/bench/egress/run.sh

bench-xds:
	@./test/bench/xds/run.sh

bench-dispatcher:
	@./test/bench/dispatcher/run.sh
