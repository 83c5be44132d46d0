#!/usr/bin/env bash
# Tenants at scale: a release authd on a fresh Postgres database and the
# local Redis, measured by `authd-load --scale`: it creates N tenants (through
# the platform API, with cheap argon2 parameters on the server so that
# creating them is not a hashing benchmark), touches ACTIVE of them, reads
# authd's CPU, RSS and Postgres transactions over an idle window, then times
# the first JWKS and the first GraphQL request of untouched tenants.
#   cargo build --release -p authd -p authd-loadtest && scripts/bench-scale.sh [N] [ACTIVE] [IDLE_SECS]
# Needs the local Postgres (postgres@127.0.0.1:5432, trust auth), Redis on
# 6379 and psql. The database is dropped at the end.
set -euo pipefail
N=${1:-100000}
ACTIVE=${2:-2000}
IDLE=${3:-30}
# Postgres + Redis only (the load tool counts Postgres's transactions).
EMBEDDED=0
. "$(dirname "${BASH_SOURCE[0]}")/bench-server.sh"
bench_server bench_scale 18083 cheap-argon2 no-autovacuum
"$LOAD" --url "$U" --platform-token "$TOKEN" --server-pid $PID --database-url "$DATABASE_URL" \
  --argon2-memory-kib 64 --argon2-iterations 1 --concurrency 16 \
  --scale "$N" --scale-active "$ACTIVE" --scale-idle-secs "$IDLE"
