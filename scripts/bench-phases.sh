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
. "$(dirname "${BASH_SOURCE[0]}")/bench-server.sh"
bench_server phases 18082
# The server's argon2 parameters are its defaults, which are authd-load's too.
"$LOAD" --url "$U" --platform-token "$TOKEN" --server-pid $PID \
  --concurrency "${CONCURRENCY:-16}" --duration-secs "${DURATION:-8}"
