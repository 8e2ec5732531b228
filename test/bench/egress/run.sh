#!/usr/bin/env bash
# run.sh: the egress proxy benchmark behind `make bench-egress`.
#
# Starts the loopback upstream (HTTP + DNS) of test/loadgen, then measures in
# turn: direct, cordon-egress (when ./bin/cordon-egress exists), squid and
# tinyproxy, each started here from a generated config with equivalent allow
# rules (only upstream.bench.test on the upstream's port, plain HTTP and
# CONNECT), one proxy running at a time. Prints one table. Everything runs on
# 127.0.0.x; every process started here is stopped on exit.
#
# Tunables (environment): BENCH_CLIENTS (16), BENCH_DURATION (10s),
# BENCH_WARMUP (2s), BENCH_IDLE (10000), BENCH_BIG_SIZE (1073741824),
# BENCH_ONLY (space-separated subset of: direct tcp-relay cordon-egress squid
# tinyproxy),
# BENCH_KEEP=1 keeps the temp dir (configs, proxy logs, JSON results).
set -euo pipefail

cd "$(dirname "$0")/../../.."
root=$PWD
export PATH="/usr/local/go/bin:$PATH"

clients=${BENCH_CLIENTS:-16}
duration=${BENCH_DURATION:-10s}
warmup=${BENCH_WARMUP:-2s}
idle=${BENCH_IDLE:-10000}
big=${BENCH_BIG_SIZE:-1073741824}
only=${BENCH_ONLY:-direct tcp-relay cordon-egress squid tinyproxy}
name=upstream.bench.test
upstream_ip=127.0.0.2
cordon_ip=127.0.0.3
squid_ip=127.0.0.4
tinyproxy_ip=127.0.0.5
relay_ip=127.0.0.6
# Each proxy holds two descriptors per idle tunnel (client and upstream side)
# plus its own; the load tool and the upstream hold one each.
nofile=65536

say() { echo "bench-egress: $*" >&2; }

tmp=$(mktemp -d /tmp/cordon-bench-egress.XXXXXX)
chmod 755 "$tmp" # proxies drop privileges and must read their configs
mkdir -p "$tmp/results"

pids=()
stop_pid() { # stop_pid PID: TERM, up to 10 s grace, then KILL; reap
  local pid=$1 i
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  local pid
  for pid in "${pids[@]}"; do stop_pid "$pid"; done
  if [ "${BENCH_KEEP:-}" = 1 ]; then say "kept $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ "$(ulimit -Hn)" != unlimited ] && [ "$(ulimit -Hn)" -lt "$nofile" ]; then
  ulimit -Hn "$nofile" 2>/dev/null ||
    say "cannot raise the hard open-file limit to $nofile (needs root with CAP_SYS_RESOURCE)"
fi
ulimit -Sn "$(ulimit -Hn)"
limit=$(ulimit -Hn)
if [ "$limit" != unlimited ] && ((limit < 2 * idle + 400)); then
  # A proxy needs two descriptors per tunnel plus its own (squid keeps 100
  # in reserve). Measure as many as fit; the table projects to 10,000 from
  # the measured per-tunnel cost and says so.
  idle=$(((limit - 400) / 2))
  say "open-file limit $limit (hard, cannot be raised here) fits $idle idle tunnels per proxy, not ${BENCH_IDLE:-10000}"
fi

say "building the load tool"
go build -o "$tmp/loadgen" ./test/loadgen/cmd/loadgen
lg="$tmp/loadgen"

"$lg" upstream --listen "$upstream_ip:0" --name "$name" --big-size "$big" \
  --env-file "$tmp/upstream.env" 2>"$tmp/upstream.log" &
upstream_pid=$!
pids+=("$upstream_pid")
for ((i = 0; i < 300; i++)); do
  [ -f "$tmp/upstream.env" ] && break
  kill -0 "$upstream_pid" 2>/dev/null || { cat "$tmp/upstream.log" >&2; exit 1; }
  sleep 0.1
done
[ -f "$tmp/upstream.env" ] || { say "upstream did not start in 30 s"; cat "$tmp/upstream.log" >&2; exit 1; }
# shellcheck disable=SC1091
. "$tmp/upstream.env" # UPSTREAM_IP UPSTREAM_PORT UPSTREAM_ADDR DNS_ADDR
echo "$UPSTREAM_IP $name" >"$tmp/hosts"
say "upstream $name = $UPSTREAM_ADDR, dns $DNS_ADDR"

wanted() { [[ " $only " == *" $1 "* ]]; }

skip() { # skip NAME REASON
  say "$1: $2"
  "$lg" skip --name "$1" --reason "$2" --out "$tmp/results/$1.json"
}

# logged NAME CMD...: run CMD in the background, keeping the first MiB of its
# output in $tmp/NAME.out (a proxy that logs every request must not fill the
# disk or block on a full pipe). Sets started_pid.
logged() {
  local n=$1
  shift
  "$@" > >(head -c 1048576 >"$tmp/$n.out"; cat >/dev/null) 2>&1 &
  started_pid=$!
  pids+=("$started_pid")
}

# wait_listen NAME PID IP PORT: wait up to 15 s for the proxy to accept.
wait_listen() {
  local i
  for ((i = 0; i < 150; i++)); do
    if ! kill -0 "$2" 2>/dev/null; then
      say "$1 exited during start-up; its output:"
      tail -n 20 "$tmp/$1.out" >&2 || true
      return 1
    fi
    if (exec 3<>"/dev/tcp/$3/$4") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  say "$1 did not listen on $3:$4 within 15 s"
  return 1
}

# measure NAME PROXY PID: one loadgen run into results/NAME.json.
measure() {
  say "measuring $1 (about $(( (2 * (${duration%s} + ${warmup%s})) + 10 )) s)"
  local args=(run --name "$1" --host "$name" --upstream "$UPSTREAM_ADDR"
    --clients "$clients" --duration "$duration" --warmup "$warmup"
    --idle "$idle" --big-size "$big" --out "$tmp/results/$1.json")
  [ -n "$2" ] && args+=(--proxy "$2" --pid "$3")
  if ! "$lg" "${args[@]}" 2>>"$tmp/loadgen.log"; then
    tail -n 5 "$tmp/loadgen.log" >&2
    skip "$1" "load tool failed: $(tail -n 1 "$tmp/loadgen.log")"
  fi
}

# run_proxy NAME IP PORT CMD...: start, wait, measure, stop.
run_proxy() {
  local n=$1 ip=$2 port=$3
  shift 3
  logged "$n" "$@"
  local pid=$started_pid
  if wait_listen "$n" "$pid" "$ip" "$port"; then
    measure "$n" "$ip:$port" "$pid"
  else
    skip "$n" "did not start (BENCH_KEEP=1 keeps $n.out)"
  fi
  stop_pid "$pid"
}

# --- direct -----------------------------------------------------------------
if wanted direct; then measure direct "" ""; fi

# --- tcp-relay ----------------------------------------------------------------
# Not a proxy: loadgen relay copies bytes between each client connection and
# its own upstream connection and does nothing else (no HTTP, no checks, no
# logs), measured as a direct target whose upstream is the relay. It is the
# second TCP hop alone, what every proxy pays before doing any work; its
# ratios bound what a proxy can reach on this machine.
if wanted tcp-relay; then
  "$lg" relay --listen "$relay_ip:0" --to "$UPSTREAM_ADDR" --env-file "$tmp/relay.env" 2>"$tmp/relay.log" &
  relay_pid=$!
  pids+=("$relay_pid")
  for ((i = 0; i < 100; i++)); do
    [ -f "$tmp/relay.env" ] && break
    sleep 0.1
  done
  if [ -f "$tmp/relay.env" ]; then
    . "$tmp/relay.env" # RELAY_ADDR
    # The relay's memory is not interesting: no idle phase.
    UPSTREAM_ADDR=$RELAY_ADDR idle=-1 measure tcp-relay "" ""
  else
    skip tcp-relay "did not start: $(tail -n 1 "$tmp/relay.log")"
  fi
  stop_pid "$relay_pid"
fi

# --- cordon-egress ------------------------------------------------------------
if wanted cordon-egress; then
  if [ -x "$root/bin/cordon-egress" ]; then
    mkdir -p "$tmp/allowlists"
    cat >"$tmp/allowlists/bench.yaml" <<YAML
version: 1
org: bench
endpoint_sets:
  bench_upstream:
    entries:
      - host: $name
        ports: [$UPSTREAM_PORT]
jobs:
  load:
    class: user
    mode: enforce
    allow: [bench_upstream]
YAML
    port=$("$lg" freeport --host "$cordon_ip")
    # 127.0.0.0/8 is treated as public only so the upstream on loopback is
    # reachable; the name still goes through resolve + classify + dial.
    # --dns-cache-max-ttl: cache answers (capped at 30 s) like any production
    # proxy (squid caches too) instead of one DNS query per request.
    # --max-concurrent: the per-job connection limit must fit 10,000 idle
    # tunnels, or the idle phase measures the limit instead of memory.
    run_proxy cordon-egress "$cordon_ip" "$port" \
      "$root/bin/cordon-egress" serve --listen "$cordon_ip:$port" \
      --allowlists "$tmp/allowlists" --job bench/load \
      --unsafe-allow-cidr 127.0.0.0/8 --dns-server "$DNS_ADDR" \
      --dns-cache-max-ttl 30s --max-concurrent 20000
  else
    skip cordon-egress "not built: ./bin/cordon-egress is missing (make build)"
  fi
fi

# --- squid --------------------------------------------------------------------
if wanted squid; then
  if command -v squid >/dev/null; then
    port=$("$lg" freeport --host "$squid_ip")
    mkdir -p "$tmp/squid"
    if [ "$(id -u)" = 0 ] && id proxy >/dev/null 2>&1; then chown proxy: "$tmp/squid"; fi
    cat >"$tmp/squid/squid.conf" <<CONF
# Generated by test/bench/egress/run.sh: a filtering forward proxy with the
# same rules as the others, no cache, no access log, one worker.
http_port $squid_ip:$port
workers 1
max_filedescriptors $nofile
pid_filename $tmp/squid/squid.pid
cache_log $tmp/squid/cache.log
access_log none
cache_store_log none
logfile_rotate 0
debug_options ALL,1
cache deny all
cache_mem 0 MB
coredump_dir $tmp/squid
# The upstream name resolves from this file, never from /etc/hosts or DNS.
hosts_file $tmp/hosts
acl bench_host dstdomain $name
acl bench_port port $UPSTREAM_PORT
acl CONNECT method CONNECT
http_access allow bench_host bench_port
http_access deny all
client_persistent_connections on
server_persistent_connections on
half_closed_clients off
shutdown_lifetime 0 seconds
icp_port 0
htcp_port 0
pinger_enable off
CONF
    run_proxy squid "$squid_ip" "$port" squid -N -f "$tmp/squid/squid.conf"
  else
    skip squid "not installed (apt-get install squid)"
  fi
fi

# --- tinyproxy ----------------------------------------------------------------
if wanted tinyproxy; then
  if ! command -v tinyproxy >/dev/null; then
    skip tinyproxy "not installed (apt-get install tinyproxy)"
  elif [ "$(id -u)" != 0 ] || ! command -v unshare >/dev/null; then
    # tinyproxy resolves with getaddrinfo (/etc/hosts, then DNS) and has no
    # option to point it elsewhere; we give it a private /etc/hosts in its
    # own mount namespace, which needs root.
    skip tinyproxy "needs root and unshare(1) to give it a private /etc/hosts"
  else
    port=$("$lg" freeport --host "$tinyproxy_ip")
    mkdir -p "$tmp/tinyproxy"
    chown nobody: "$tmp/tinyproxy"
    echo "$name" >"$tmp/tinyproxy/filter"
    cat >"$tmp/tinyproxy/tinyproxy.conf" <<CONF
# Generated by test/bench/egress/run.sh.
User nobody
Group nogroup
Listen $tinyproxy_ip
Port $port
Timeout 600
MaxClients 12000
LogFile "$tmp/tinyproxy/tinyproxy.log"
LogLevel Error
PidFile "$tmp/tinyproxy/tinyproxy.pid"
# Default deny: only the upstream name (fnmatch, exact).
Filter "$tmp/tinyproxy/filter"
FilterType fnmatch
FilterDefaultDeny Yes
# CONNECT only to the upstream port. tinyproxy cannot restrict the port of
# plain-HTTP requests without URL filtering, which does not apply to CONNECT.
ConnectPort $UPSTREAM_PORT
CONF
    run_proxy tinyproxy "$tinyproxy_ip" "$port" \
      unshare --mount --propagation private sh -c 'mount --bind "$1" /etc/hosts && exec tinyproxy -d -c "$2"' \
      sh "$tmp/hosts" "$tmp/tinyproxy/tinyproxy.conf"
  fi
fi

# --- table --------------------------------------------------------------------
files=()
for n in direct tcp-relay cordon-egress squid tinyproxy; do
  [ -f "$tmp/results/$n.json" ] && files+=("$tmp/results/$n.json")
done
echo
"$lg" table "${files[@]}"
echo
echo "Proxies: $(squid -v 2>/dev/null | head -n 1 || echo 'squid: not installed'); $(tinyproxy -v 2>/dev/null || echo 'tinyproxy: not installed')."
echo "Open-file limit for the proxies: $(ulimit -Hn); each idle tunnel costs a proxy two descriptors, so 10,000 need about 20,400."
