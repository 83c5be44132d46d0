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
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${AUTHD_BIN:-$ROOT/target/release/authd}
LOAD=${AUTHD_LOAD_BIN:-$ROOT/target/release/authd-load}
WORK=$(mktemp -d)
DB=authd_bench_scale_$$
PORT=18083
TOKEN=bench-platform-token-0123456789abcdef
psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE $DB"
export DATABASE_URL=postgres://postgres@127.0.0.1:5432/$DB REDIS_URL=redis://127.0.0.1:6379 \
  AUTHD_REDIS_PREFIX=benchscale$$ AUTHD_MASTER_KEY=$(head -c32 /dev/urandom | base64) \
  AUTHD_PLATFORM_TOKEN=$TOKEN AUTHD_LISTEN=127.0.0.1:$PORT RUST_LOG=error \
  AUTHD_ARGON2_MEMORY_KIB=64 AUTHD_ARGON2_ITERATIONS=1
$BIN migrate 2>/dev/null
# Autovacuum's transactions count for the database too: off for the bench's
# tables, so that what is counted is authd's.
psql -h 127.0.0.1 -U postgres -d "$DB" -qtAc \
  "SELECT format('ALTER TABLE %I SET (autovacuum_enabled = false);', tablename) FROM pg_tables WHERE schemaname = 'public'" |
  psql -h 127.0.0.1 -U postgres -d "$DB" -q
$BIN serve 2>"$WORK/authd.log" & PID=$!
trap 'kill $PID; wait $PID 2>/dev/null; psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)"; rm -rf "$WORK"' EXIT
for i in $(seq 50); do curl -s -o /dev/null http://127.0.0.1:$PORT/healthz && break; sleep 0.2; done
"$LOAD" --url http://127.0.0.1:$PORT --platform-token "$TOKEN" --server-pid $PID --database-url "$DATABASE_URL" \
  --argon2-memory-kib 64 --argon2-iterations 1 --concurrency 16 \
  --scale "$N" --scale-active "$ACTIVE" --scale-idle-secs "$IDLE"
