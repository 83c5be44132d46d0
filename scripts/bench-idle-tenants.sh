#!/usr/bin/env bash
# What idle tenants cost: a release authd on Postgres + Redis knows
# ACTIVE + COLD tenants; ACTIVE of them are touched once (their actors
# start), then nothing happens for MEASURE seconds while this script reads
# the authd process's CPU (utime + stime), its RSS, and the transactions
# Postgres committed for authd's database. Then the first request (a JWKS
# fetch, as a resource server makes) to each of the COLD tenants, which
# nobody touched, is timed: p50 and p99.
#   cargo build --release -p authd && scripts/bench-idle-tenants.sh [ACTIVE] [COLD] [MEASURE]
# Needs the local Postgres (postgres@127.0.0.1:5432, trust auth), Redis on
# 6379, curl and python3.
set -euo pipefail
ACTIVE=${1:-2000}
COLD=${2:-200}
MEASURE=${3:-30}
# Postgres + Redis only (what is counted is Postgres's transactions).
EMBEDDED=0
. "$(dirname "${BASH_SOURCE[0]}")/bench-server.sh"
PORT=18084
bench_server bench_idle $PORT cheap-argon2 no-autovacuum
python3 - "$PORT" "$TOKEN" "$ACTIVE" "$COLD" "$MEASURE" "$PID" "$DB" <<'PY'
import concurrent.futures, json, subprocess, sys, time, urllib.request
port, token, active, cold, measure, pid, db = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6], sys.argv[7]
base = f"http://127.0.0.1:{port}"

def post(path, query, bearer=None):
    req = urllib.request.Request(base + path, data=json.dumps({"query": query}).encode(),
                                 headers={"Content-Type": "application/json", **({"Authorization": f"Bearer {bearer}"} if bearer else {})})
    return json.load(urllib.request.urlopen(req))

def create(i):
    slug = f"idle-{i:06d}"
    q = f'mutation {{ createTenant(input: {{slug: "{slug}", name: "Idle {i}", adminEmail: "admin@{slug}.test", adminPassword: "a long admin passphrase"}}) {{ id }} }}'
    body = post("/graphql", q, token)
    assert body.get("data"), body
    return slug

t0 = time.time()
with concurrent.futures.ThreadPoolExecutor(8) as pool:
    slugs = list(pool.map(create, range(active + cold)))
print(f"created {len(slugs)} tenants in {time.time() - t0:.0f} s")
with concurrent.futures.ThreadPoolExecutor(8) as pool:
    list(pool.map(lambda s: post(f"/t/{s}/graphql", "{ __typename }"), slugs[:active]))

def cpu():
    f = open(f"/proc/{pid}/stat").read().split()
    return (int(f[13]) + int(f[14])) / 100

def rss():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

def xacts():
    out = subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-tAc",
                          f"SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = '{db}'"],
                         capture_output=True, text=True, check=True).stdout
    return int(out.strip())

# Each tenant's first tick (5 s after it starts) runs its audit retention once
# (then every 6 hours): let that pass, and measure the steady state.
time.sleep(15)
c0, x0, w0 = cpu(), xacts(), time.time()
time.sleep(measure)
c1, x1, w1 = cpu(), xacts(), time.time()
wall = w1 - w0
# psql reads the statistics from the `postgres` database: only authd works on $DB.
print(f"{active} active tenants idle for {wall:.0f} s: authd CPU {100 * (c1 - c0) / wall:.2f} % of one core, "
      f"Postgres {(x1 - x0) / wall:.2f} transactions/s from authd, RSS {rss():.0f} MiB")
lat = []
for s in slugs[active:]:
    t = time.perf_counter()
    urllib.request.urlopen(f"{base}/t/{s}/.well-known/jwks.json").read()
    lat.append((time.perf_counter() - t) * 1000)
lat.sort()
p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]
print(f"first JWKS of {len(lat)} untouched tenants: p50 {p(0.5):.1f} ms, p99 {p(0.99):.1f} ms")
PY
