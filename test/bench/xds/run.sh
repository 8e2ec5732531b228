#!/usr/bin/env bash
# run.sh: the control plane push benchmark behind `make bench-xds`.
#
# Builds cordon-xds, then runs test/bench/xds (xdsbench): one cordon-xds
# process serving 1,000 real ADS client streams (mTLS, loopback), an
# allowlist file edited BENCH_EDITS times, and the time from each write to
# every client's ACK, with the control plane's CPU and RSS. Prints a table.
#
# Tunables (environment): BENCH_CLIENTS (1000), BENCH_ORGS (1), BENCH_EDITS (5).
set -euo pipefail

cd "$(dirname "$0")/../../.."
export PATH="/usr/local/go/bin:$PATH"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
CGO_ENABLED=0 go build -o "$tmp/cordon-xds" ./xds/cmd/cordon-xds
go build -o "$tmp/xdsbench" ./test/bench/xds
"$tmp/xdsbench" -xds-bin "$tmp/cordon-xds" \
  -clients "${BENCH_CLIENTS:-1000}" -orgs "${BENCH_ORGS:-1}" -edits "${BENCH_EDITS:-5}"
