#!/usr/bin/env bash
# run.sh: sustained dispatcher ingest benchmark (make bench-dispatcher).
# Starts a throwaway PostgreSQL cluster, the ingest API and 50 mTLS sidecar
# clients for ~20s, prints items/s and ack latency, then verifies the chains.
# Extra flags are passed to the tool (e.g. -duration 60s -durable=false).
set -euo pipefail
cd "$(dirname "$0")/../../.."
export PATH=/usr/local/go/bin:$PATH
go build -o /tmp/cordon-dispatcher-bench ./test/bench/dispatcher
exec /tmp/cordon-dispatcher-bench -clients 50 -duration 20s "$@"
