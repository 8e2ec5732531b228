#!/usr/bin/env bash
# down.sh stops what up.sh started: the compose project (containers,
# networks, volumes), the host Postgres, and removes CORDON_RUN_DIR.
# Safe to run twice, or after a failed up.sh.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
export CORDON_RUN_DIR=${CORDON_RUN_DIR:-${TMPDIR:-/tmp}/cordon-stack}
export COMPOSE_PROJECT_NAME=${COMPOSE_PROJECT_NAME:-cordon}
export CORDON_ALLOWLISTS=${CORDON_ALLOWLISTS:-$root/deploy/allowlists}

(cd "$here" && docker-compose down --volumes --remove-orphans --timeout 5) || true

pgdata=$CORDON_RUN_DIR/pgdata
if [ -s "$pgdata/postmaster.pid" ]; then
	pg_ctl=$(command -v pg_ctl 2>/dev/null || ls -d /usr/lib/postgresql/*/bin/pg_ctl 2>/dev/null | sort -V | tail -1)
	as_pg=()
	if [ "$(id -u)" = 0 ]; then as_pg=(runuser -u postgres --); fi
	"${as_pg[@]}" "$pg_ctl" -D "$pgdata" -m fast -w -t 30 stop >/dev/null || true
fi
case "$CORDON_RUN_DIR" in
/ | "") ;;
*) rm -rf "$CORDON_RUN_DIR" ;;
esac
