#!/usr/bin/env bash
# `me` (token check + user) throughput of a release authd on Postgres + Redis,
# reported per authd CPU-second (utime + stime of the authd process over the
# run) beside req/s and p50/p99, with wrk on the same machine. Needs the local
# Postgres (postgres@127.0.0.1:5432, trust auth), Redis on 6379, and wrk.
#   cargo build --release -p authd && scripts/bench-me.sh
#   EMBEDDED=1 scripts/bench-me.sh    # the same on the embedded default (SQLite)
#   PERF=/tmp/me.data scripts/bench-me.sh   # also record a perf profile of authd (perf report -i ...)
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/bench-server.sh"
bench_server bench 18081
gql() { curl -s "$1" -H 'Content-Type: application/json' ${3:+-H "Authorization: Bearer $3"} -d "$2"; }
gql $U/graphql '{"query":"mutation { createTenant(input: {slug: \"bench\", name: \"Bench\", adminEmail: \"admin@bench.test\", adminPassword: \"a long admin passphrase\"}) { id } }"}' "$TOKEN" >/dev/null
ADMIN=$(gql $U/t/bench/graphql '{"query":"mutation { login(input: {email: \"admin@bench.test\", password: \"a long admin passphrase\"}) { ... on AuthTokens { accessToken } } }"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["login"]["accessToken"])')
gql $U/t/bench/graphql '{"query":"mutation { updateTenantSettings(input: {rateLimits: {tenantRequestsPerSecond: 100000}}) { passwordMinLength } }"}' "$ADMIN" >/dev/null
cat >"$WORK/me.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"query":"{ me { id } }"}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $ADMIN"
LUA
cpu() { awk '{print $14+$15}' /proc/$PID/stat; }
wrk -t2 -c32 -d3s -s "$WORK/me.lua" $U/t/bench/graphql >/dev/null   # warm-up
c0=$(cpu); t0=$(date +%s.%N)
if [[ -n ${PERF:-} ]]; then perf record -F 999 -g -o "$PERF" -p $PID -- sleep 8 >/dev/null 2>&1 & PERF_PID=$!; fi
wrk -t2 -c32 -d10s -s "$WORK/me.lua" --latency $U/t/bench/graphql >"$WORK/me.out"
if [[ -n ${PERF:-} ]]; then wait $PERF_PID || true; fi
c1=$(cpu); t1=$(date +%s.%N)
reqs=$(grep -E "requests in" "$WORK/me.out" | awk '{print $1}')
non2xx=$(grep -E "Non-2xx" "$WORK/me.out" | awk '{print $NF}' || true)
python3 - "$reqs" "$c0" "$c1" "$t0" "$t1" <<PY
import sys
reqs, c0, c1, t0, t1 = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
cpu = (c1 - c0) / 100
wall = t1 - t0
print(f"me: {reqs} requests in {wall:.1f} s = {reqs/wall:.0f} req/s; authd CPU {cpu:.1f} s ({100*cpu/wall:.0f} %) = {reqs/cpu:.0f} req per authd CPU-second")
PY
grep -E "50%|99%|Non-2xx" "$WORK/me.out" || true
