#!/usr/bin/env bash
# All four phases of authd-load (register, login, refresh, me) against a
# release `authd serve` on Postgres + Redis (or, with EMBEDDED=1, on the
# embedded default), with --server-pid so every per-CPU-second figure is the
# authd process's own (utime + stime over the phase). Needs the local
# Postgres (postgres@127.0.0.1:5432, trust auth) and Redis on 6379.
#   cargo build --release -p authd -p authd-loadtest && scripts/bench-phases.sh
#   EMBEDDED=1 scripts/bench-phases.sh
#   CONCURRENCY=32 DURATION=10 scripts/bench-phases.sh
set -euo pipefail
WORK=$(mktemp -d)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${AUTHD_BIN:-$ROOT/target/release/authd}
LOAD=${AUTHD_LOAD_BIN:-$ROOT/target/release/authd-load}
DB=authd_phases_$$
PORT=18082
TOKEN=bench-platform-token-0123456789abcdef
export AUTHD_MASTER_KEY=$(head -c32 /dev/urandom | base64) \
  AUTHD_PLATFORM_TOKEN=$TOKEN AUTHD_LISTEN=127.0.0.1:$PORT RUST_LOG=error
if [[ ${EMBEDDED:-0} == 1 ]]; then
  export AUTHD_DATA_DIR=$WORK/data
  $BIN serve 2>"$WORK/authd.log" & PID=$!
  trap 'kill $PID; wait $PID 2>/dev/null; rm -rf "$WORK"' EXIT
else
  psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE $DB"
  export DATABASE_URL=postgres://postgres@127.0.0.1:5432/$DB REDIS_URL=redis://127.0.0.1:6379 AUTHD_REDIS_PREFIX=phases$$
  $BIN migrate 2>/dev/null
  $BIN serve 2>"$WORK/authd.log" & PID=$!
  trap 'kill $PID; wait $PID 2>/dev/null; psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)"; rm -rf "$WORK"' EXIT
fi
for i in $(seq 50); do curl -s -o /dev/null http://127.0.0.1:$PORT/healthz && break; sleep 0.2; done
# The server's argon2 parameters are its defaults, which are authd-load's too.
$LOAD --url http://127.0.0.1:$PORT --platform-token "$TOKEN" --server-pid $PID \
  --concurrency "${CONCURRENCY:-16}" --duration-secs "${DURATION:-8}"
