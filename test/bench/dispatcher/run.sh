#!/usr/bin/env bash
# run.sh: dispatcher ingest benchmark (make bench-dispatcher).
# Each phase starts a throwaway durable PostgreSQL cluster, the ingest API
# and 50 mTLS sidecar clients (10 orgs) sending audit events and usage
# reports, prints items/s and ack latency, then verifies every hash chain.
#   1. closed loop: every client sends as fast as it is answered (capacity);
#   2. paced: the clients offer 50,000 items/s together (the target: about
#      49,950 audit events and 55 usage reports a second) for 60 s, five
#      checkpoint cycles at the default max_wal_size, and latency is
#      counted from each request's scheduled time. -timeline prints it
#      second by second, with CPU, steal and iowait. The 60 s are measured
#      after 30 s of the same load: a fresh cluster has no WAL segments to
#      recycle until its first checkpoint completes (about 26 s in), and
#      until then commits stop to create and fsync each new 16 MB segment,
#      which a server that has been up never does.
#   3. with BENCH_SWEEP="10000 20000 30000" (rates, items/s), one more
#      paced phase per rate: where the p99 target holds on this machine.
# Extra flags go to every phase (e.g. -timeline -durable=false -pgstat,
# -pgset name=value, -sql STATEMENT to try a schema change).
set -euo pipefail
cd "$(dirname "$0")/../../.."
export PATH=/usr/local/go/bin:$PATH
go build -o /tmp/cordon-dispatcher-bench ./test/bench/dispatcher
/tmp/cordon-dispatcher-bench -clients 50 -duration 10s "$@"
/tmp/cordon-dispatcher-bench -clients 50 -warmup 30s -duration 60s -rate 50000 "$@"
for rate in ${BENCH_SWEEP:-}; do
  /tmp/cordon-dispatcher-bench -clients 50 -warmup 30s -duration 15s -rate "$rate" "$@"
done
