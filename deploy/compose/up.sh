#!/usr/bin/env bash
# up.sh starts Cordon's local stack (docker-compose.yml): it prepares the
# host side the containers mount, starts a throwaway PostgreSQL on the host
# (reached through its unix socket only), and brings the services up
# except the job, which `docker-compose run job ...` starts per task.
#
#   deploy/compose/up.sh          # then: deploy/compose/down.sh
#
# Environment (all optional):
#   CORDON_RUN_DIR         host state: SPIFFE socket dirs, secrets, Postgres
#                          (default ${TMPDIR:-/tmp}/cordon-stack)
#   COMPOSE_PROJECT_NAME   compose project (default cordon)
#   CORDON_ALLOWLISTS      allowlist directory (default deploy/allowlists)
#   CORDON_OUTSIDE_SUBNET  the outside network (default 10.203.254.0/24)
#   CORDON_TAG             image tag (default dev; build with `make images`)
#   CORDON_SECRETS_JSON    {"name":"value"} the file provider serves
#                          (default: two made-up demo secrets)
#   CORDON_NO_BUILD=1      do not run build-images.sh first
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
export CORDON_RUN_DIR=${CORDON_RUN_DIR:-${TMPDIR:-/tmp}/cordon-stack}
export COMPOSE_PROJECT_NAME=${COMPOSE_PROJECT_NAME:-cordon}
export CORDON_ALLOWLISTS=${CORDON_ALLOWLISTS:-$root/deploy/allowlists}
export CORDON_OUTSIDE_SUBNET=${CORDON_OUTSIDE_SUBNET:-10.203.254.0/24}
export CORDON_TAG=${CORDON_TAG:-dev}
uid=65532 # the images' user

if ! docker info >/dev/null 2>&1; then
	echo "up.sh: the Docker daemon is not reachable (docker info failed); start it and retry" >&2
	exit 1
fi
if [ "${CORDON_NO_BUILD:-}" != 1 ]; then
	TAG=$CORDON_TAG "$root/deploy/docker/build-images.sh" >/dev/null
fi

# --- host side: one SPIFFE socket directory per service, so each container
# mounts only its own identity (the job mounts none).
mkdir -p "$CORDON_RUN_DIR"
chmod 0755 "$CORDON_RUN_DIR"
for svc in xds gateway dispatcher sidecar; do
	mkdir -p "$CORDON_RUN_DIR/spiffe/$svc"
done
chown -R "$uid:$uid" "$CORDON_RUN_DIR/spiffe"
# Where fake-internet writes its HTTPS certificate for clients to trust.
mkdir -p "$CORDON_RUN_DIR/fake-ca"
chown "$uid:$uid" "$CORDON_RUN_DIR/fake-ca"
# Secrets Manager stand-in, readable by the sidecar's user only.
secrets=${CORDON_SECRETS_JSON:-'{"monad_rpc_key":"demo-rpc-key-7Qx2","db_password":"demo-db-pass-9Kf4"}'}
(umask 077 && printf '%s\n' "$secrets" >"$CORDON_RUN_DIR/secrets.json")
chown "$uid:$uid" "$CORDON_RUN_DIR/secrets.json"

# --- Postgres on the host, socket only (listen_addresses empty): the
# dispatcher mounts the socket directory, so it needs no route to the host.
pg_bin=$(dirname "$(readlink -f "$(command -v pg_ctl 2>/dev/null || ls -d /usr/lib/postgresql/*/bin/pg_ctl 2>/dev/null | sort -V | tail -1)")")
if [ ! -x "$pg_bin/initdb" ]; then
	echo "up.sh: no PostgreSQL server binaries (initdb, pg_ctl); apt-get install postgresql" >&2
	exit 1
fi
as_pg=()
if [ "$(id -u)" = 0 ]; then
	as_pg=(runuser -u postgres --)
fi
pgdata=$CORDON_RUN_DIR/pgdata
pgsock=$CORDON_RUN_DIR/postgres
mkdir -p "$pgsock"
chmod 0755 "$pgsock"
if [ "$(id -u)" = 0 ]; then chown postgres "$pgsock"; fi
if [ ! -s "$pgdata/PG_VERSION" ]; then
	mkdir -p "$pgdata"
	chmod 0700 "$pgdata"
	if [ "$(id -u)" = 0 ]; then chown postgres "$pgdata"; fi
	"${as_pg[@]}" "$pg_bin/initdb" -D "$pgdata" -U postgres -A trust -E UTF8 --locale=C --no-sync >/dev/null
fi
if ! "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$pgdata" status >/dev/null 2>&1; then
	"${as_pg[@]}" "$pg_bin/pg_ctl" -D "$pgdata" -l "$pgdata/postgres.log" -w -t 30 \
		-o "-c listen_addresses='' -k $pgsock -c fsync=off -c synchronous_commit=off" start >/dev/null
fi
if ! "${as_pg[@]}" "$pg_bin/psql" -h "$pgsock" -U postgres -Atqc "SELECT 1 FROM pg_database WHERE datname = 'cordon'" postgres | grep -q 1; then
	"${as_pg[@]}" "$pg_bin/psql" -h "$pgsock" -U postgres -qc "CREATE DATABASE cordon" postgres
fi

# --- the services (the job runs per task: docker-compose run job ...).
cd "$here"
docker-compose up -d --quiet-pull sidecar fake-internet
echo "stack $COMPOSE_PROJECT_NAME is up (state in $CORDON_RUN_DIR)"
