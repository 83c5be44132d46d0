#!/usr/bin/env bash
# Run the whole authd test suite: formatting, clippy and every test target.
#
#   scripts/test.sh [--setup-only [--keep]] [--no-lint] [CARGO TEST ARGS...]
#   scripts/test.sh --stop
#
# The integration tests need a real Postgres, Redis, a Redis Cluster, Python
# and Node tools and a headless Chromium. This script finds or starts each of
# them, exports where they are, runs cargo, and stops whatever
# it started. It is what CI runs (.ci/run) and what a new laptop runs, so it
# assumes nothing is installed beyond bash, cargo, python3 and node/npm, and
# installs the rest with apt when it may (root, or password-less sudo).
#
# Options (must come before any cargo argument):
#   --setup-only  prepare the environment, print it as `export` lines on
#                 stdout, stop the private servers again and exit: a check of
#                 the setup without a build
#   --keep        with --setup-only: leave the private servers running, for a
#                 shell that runs cargo itself:
#                   eval "$(scripts/test.sh --setup-only --keep)"
#                   cargo test -p authd-store
#                   scripts/test.sh --stop
#   --stop        stop private servers left running by --keep (or by a run
#                 that was killed), then exit; every run also does this first
#   --no-lint     skip `cargo fmt --check`, `cargo machete` (unused
#                 dependencies), `cargo deny` (licenses, bans, sources) and
#                 `cargo clippy`
#   -h, --help    show this text
# Everything else is passed to `cargo test --workspace --all-targets`, e.g.
#   scripts/test.sh -- refresh_token          # only tests whose name matches
#   scripts/test.sh --no-lint -- --nocapture
# (`-p` and `--test` do not narrow it: cargo ignores `-p` with --workspace, and
# --all-targets already selects every target; for that, use
# `--setup-only --keep` as above and run cargo yourself.)
#
# Environment (all optional):
#   AUTHD_TEST_DATABASE_URL        a Postgres superuser URL to use as is
#   AUTHD_TEST_REDIS_URL           a Redis URL to use as is
#   AUTHD_TEST_REDIS_CLUSTER_URL   comma-separated seed URLs of a Redis Cluster
#   AUTHD_TEST_FORCE_PRIVATE_PG=1     start a private Postgres even if one answers on 5432
#   AUTHD_TEST_FORCE_PRIVATE_REDIS=1  start a private Redis even if one answers on 6379
#
# Exported to the tests:
#   AUTHD_TEST_DATABASE_URL, AUTHD_TEST_REDIS_URL, AUTHD_TEST_REDIS_CLUSTER_URL,
#   AUTHD_TEST_TLS_DATABASE_URL and AUTHD_TEST_TLS_REDIS_URL (a private
#   Postgres and a TLS-only Redis serving a certificate of a test CA,
#   AUTHD_TEST_TLS_CA_FILE),
#   AUTHD_TEST_PYTHON (venv python with the
#   pinned tools), AUTHD_TEST_NODE (node), AUTHD_TEST_SCRIPTS (absolute path of
#   tests/scripts: cargo runs test binaries with the crate as cwd, so a
#   relative path would not resolve), AUTHD_TEST_CHROMIUM and
#   AUTHD_TEST_CHROMEDRIVER (when installed).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

ENV_DIR="$ROOT/target/test-env"
SCRIPTS_DIR="$ROOT/tests/scripts"

SETUP_ONLY=0
KEEP=0
STOP=0
LINT=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --setup-only) SETUP_ONLY=1 ;;
    --keep) KEEP=1 ;;
    --stop) STOP=1 ;;
    --no-lint) LINT=0 ;;
    -h | --help)
      sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
      exit 0
      ;;
    *) break ;;
  esac
  shift
done
CARGO_TEST_ARGS=("$@")
if [[ $KEEP -eq 1 && $SETUP_ONLY -eq 0 ]]; then
  echo "--keep only makes sense with --setup-only" >&2
  exit 2
fi

# Progress goes to stderr so that `--setup-only` can print only the exports on
# stdout.
step() { printf '==> %s\n' "$*" >&2; }
note() { printf '    %s\n' "$*" >&2; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}
have() { command -v "$1" >/dev/null 2>&1; }

# ---------------------------------------------------------------------------
# Clean-up: every private server registers how to stop it; the EXIT trap runs
# them in reverse order whether the suite passed, failed or was interrupted.
# ---------------------------------------------------------------------------
CLEANUPS=()
on_exit() {
  local rc=$? i
  trap - EXIT
  # --keep hands a working environment over; a failed setup is still undone.
  [[ $KEEP -eq 1 && $rc -eq 0 ]] && exit 0
  for ((i = ${#CLEANUPS[@]} - 1; i >= 0; i--)); do
    eval "${CLEANUPS[i]}" >/dev/null 2>&1 || true
  done
  exit "$rc"
}
trap on_exit EXIT
# Turn signals into a normal exit so the EXIT trap runs (and the status says why).
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

mkdir -p "$ENV_DIR"

# Two runs in one checkout would fight over the private servers' directories.
# The servers are started with fd 9 closed, so that one left behind by a
# killed run does not hold the lock (stop_leftovers deals with it instead).
if have flock; then
  exec 9>"$ENV_DIR/.lock"
  flock -n 9 || die "another scripts/test.sh (or a process it started) is running in this checkout: fuser -v $ENV_DIR/.lock"
fi

# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

# Something accepts TCP connections on 127.0.0.1:$1.
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# A free loopback port below the ephemeral range (32768+ by default), so that
# it cannot be taken by an outgoing connection meanwhile: a connect test does
# not see a port that an outgoing connection holds, and a server's bind on it
# then fails. With `--bus`, the port 10000 above must be free too (Redis
# Cluster's bus port), so the port comes from 20000 up to 10000 below the
# ephemeral range (bus ports 30000-32767 never collide with the ports handed
# out here, 20000-29999). Each server is started before the next port is
# chosen, so a port handed out earlier in this run is already seen as taken.
free_port() {
  local p i span=10000 ephemeral
  if [[ "${1:-}" == --bus ]]; then
    ephemeral=$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || true)
    ephemeral=${ephemeral:-32768}
    span=$((ephemeral - 30000))
    ((span > 0)) || die "the ephemeral port range starts at $ephemeral, below Redis Cluster's bus ports"
  fi
  for ((i = 0; i < 200; i++)); do
    p=$((20000 + RANDOM % span))
    port_in_use "$p" && continue
    if [[ "${1:-}" == --bus ]]; then port_in_use $((p + 10000)) && continue; fi
    echo "$p"
    return 0
  done
  die "no free loopback port found"
}

# Run apt-get as root, or through password-less sudo; fail when neither is
# possible. `apt-get update` runs once, and only when something is installed,
# because on a fresh machine the package lists are empty.
APT_UPDATED=0
can_apt() {
  have apt-get || return 1
  [[ $(id -u) -eq 0 ]] && return 0
  have sudo && sudo -n true 2>/dev/null
}
apt_install() {
  can_apt || return 1
  local sudo=()
  [[ $(id -u) -eq 0 ]] || sudo=(sudo -n)
  # apt's progress output is long; keep it in a log and show it on failure.
  local log="$ENV_DIR/apt.log"
  if [[ $APT_UPDATED -eq 0 ]]; then
    note "apt-get update"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q >"$log" 2>&1 || {
      tail -n 20 "$log" >&2
      return 1
    }
    APT_UPDATED=1
  fi
  note "apt-get install $* (log: ${log#"$ROOT"/})"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q --no-install-recommends "$@" >>"$log" 2>&1 || {
    tail -n 20 "$log" >&2
    return 1
  }
}

# Wait until a command succeeds, up to $1 seconds.
wait_for() {
  local timeout=$1 i
  shift
  for ((i = 0; i < timeout * 10; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  return 1
}

# ---------------------------------------------------------------------------
# Postgres
# ---------------------------------------------------------------------------

# $1 accepts a password-less login and is a superuser (the tests create a
# database per test and the application role themselves). -w: never prompt,
# CI has no terminal.
PG_ERROR=""
pg_superuser_ok() {
  local out
  have psql || { PG_ERROR="psql not found"; return 1; }
  out=$(PGCONNECT_TIMEOUT=5 psql "$1" -wXAtq -c 'select rolsuper from pg_roles where rolname = current_user' 2>&1) || true
  [[ "$out" == t ]] && return 0
  PG_ERROR=${out:-"not a superuser"}
  PG_ERROR=${PG_ERROR//$'\n'/ }
  return 1
}

# The newest installed Postgres server binaries: on Debian they live under
# /usr/lib/postgresql/<major>/bin and only the wrappers are on PATH.
pg_bindir() {
  local d
  for d in $(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V -r); do
    [[ -x "$d/initdb" && -x "$d/pg_ctl" ]] && { echo "$d"; return 0; }
  done
  if have pg_config && [[ -x "$(pg_config --bindir)/initdb" ]]; then
    pg_config --bindir
    return 0
  fi
  if have initdb && have pg_ctl; then
    dirname "$(command -v initdb)"
    return 0
  fi
  return 1
}

# Postgres refuses to run as root, so when this script is root the private
# cluster runs as the `postgres` system user (created by Debian's package).
PG_USER=""
as_pg() {
  if [[ -n "$PG_USER" ]]; then
    runuser -u "$PG_USER" -- "$@"
  else
    "$@"
  fi
}

# start_private_postgres [NAME [SERVER OPTIONS]]: a private cluster under
# $ENV_DIR/NAME (default pg); sets PRIVATE_PG_URL and PRIVATE_PG_DIR.
start_private_postgres() {
  local name=${1:-pg} extra=${2:-} bindir dir data sock port ver
  bindir=$(pg_bindir) || {
    note "no Postgres server installed; installing Debian's postgresql"
    apt_install postgresql ||
      die "Postgres is not installed and cannot be installed here (needs root or sudo). Install postgresql, or set AUTHD_TEST_DATABASE_URL."
    bindir=$(pg_bindir) || die "postgresql installed but no initdb found"
  }
  ver=$("$bindir/postgres" --version | sed -E 's/^[^0-9]*([0-9]+).*/\1/')

  dir="$ENV_DIR/$name"
  data="$dir/data"
  mkdir -p "$dir"
  if [[ $(id -u) -eq 0 ]]; then
    getent passwd postgres >/dev/null ||
      useradd --system --home-dir /var/lib/postgresql --shell /usr/sbin/nologin postgres
    PG_USER=postgres
    # The server must be able to reach its data directory: a checkout under a
    # private home (mode 700) is not traversable by `postgres`, so fall back
    # to a directory under /tmp there.
    if ! runuser -u postgres -- test -x "$dir"; then
      dir=$(mktemp -d "/tmp/authd-test-$name.XXXXXX")
      data="$dir/data"
      CLEANUPS+=("rm -rf '$dir'")
    fi
    chown postgres: "$dir"
  fi

  # A cluster left by an earlier run is reused (initdb costs seconds) unless
  # it belongs to another major version.
  if [[ -f "$data/PG_VERSION" && $(cat "$data/PG_VERSION") != "$ver" ]]; then
    rm -rf "$data"
  fi
  if [[ ! -f "$data/PG_VERSION" ]]; then
    note "initdb $data (Postgres $ver)"
    rm -rf "$data"
    as_pg "$bindir/initdb" --auth=trust -U postgres -E UTF8 --locale=C.UTF-8 -D "$data" >"$dir/initdb.log" 2>&1 ||
      as_pg "$bindir/initdb" --auth=trust -U postgres -E UTF8 --no-locale -D "$data" >"$dir/initdb.log" 2>&1 ||
      die "initdb failed; see $dir/initdb.log"
  fi

  # A Unix socket path is limited to ~107 bytes; a deep checkout gets /tmp.
  sock="$dir/run"
  if [[ ${#sock} -gt 80 ]]; then
    sock=$(mktemp -d /tmp/authd-pg-sock.XXXXXX)
    CLEANUPS+=("rm -rf '$sock'")
  fi
  mkdir -p "$sock"
  [[ -z "$PG_USER" ]] || chown "$PG_USER": "$sock"

  PRIVATE_PG_DIR=$dir
  # Hook for callers that must place files the server reads (certificates).
  if [[ -n "${PG_PREPARE:-}" ]]; then "$PG_PREPARE" "$dir"; fi
  port=$(free_port)
  note "starting a private Postgres on 127.0.0.1:$port"
  # fsync and friends are off: a test cluster is disposable and this makes
  # per-test database creation several times faster. Many connections,
  # because every test opens its own pools.
  as_pg "$bindir/pg_ctl" -D "$data" -l "$dir/postgres.log" -w -t 60 \
    -o "-k '$sock' -h 127.0.0.1 -p $port -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300 $extra" \
    start >/dev/null 9>&- || die "private Postgres did not start; see $dir/postgres.log"
  CLEANUPS+=("as_pg '$bindir/pg_ctl' -D '$data' -m fast -w -t 30 stop; rm -f '$ENV_DIR/$name.started'")
  # Also record it for the next run, in case this one is killed with SIGKILL.
  printf '%s\n%s\n%s\n' "$bindir" "$data" "$PG_USER" >"$ENV_DIR/$name.started"

  PRIVATE_PG_URL="postgres://postgres@127.0.0.1:$port/postgres"
  pg_superuser_ok "$PRIVATE_PG_URL" || die "private Postgres refuses the superuser login: $PG_ERROR"
}

setup_postgres() {
  step "Postgres"
  if [[ -n "${AUTHD_TEST_DATABASE_URL:-}" ]]; then
    note "using AUTHD_TEST_DATABASE_URL as given"
    if have psql && ! pg_superuser_ok "$AUTHD_TEST_DATABASE_URL"; then
      die "AUTHD_TEST_DATABASE_URL must log in as a superuser without a prompt: $PG_ERROR"
    fi
  elif [[ "${AUTHD_TEST_FORCE_PRIVATE_PG:-0}" != 1 ]] &&
    pg_superuser_ok "postgres://postgres@127.0.0.1:5432/postgres"; then
    note "using the Postgres on 127.0.0.1:5432"
    AUTHD_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:5432/postgres"
  else
    if [[ "${AUTHD_TEST_FORCE_PRIVATE_PG:-0}" == 1 ]]; then
      note "AUTHD_TEST_FORCE_PRIVATE_PG=1"
    elif port_in_use 5432; then
      note "127.0.0.1:5432 refuses a password-less superuser login ($PG_ERROR)"
    else
      note "nothing answers on 127.0.0.1:5432"
    fi
    start_private_postgres
    AUTHD_TEST_DATABASE_URL=$PRIVATE_PG_URL
  fi
  export AUTHD_TEST_DATABASE_URL
  note "AUTHD_TEST_DATABASE_URL=$AUTHD_TEST_DATABASE_URL"
  drop_orphan_test_databases
  # And at the end: what this run's tests left (a test killed mid-way).
  CLEANUPS+=("drop_orphan_test_databases")
}

# Test databases are named authd_test_<pid>_<uuid> and dropped by the test
# that made them; a run that was killed leaves some behind. Drop those whose
# process is gone (and the unnamed ones of older versions), never another
# live run's.
drop_orphan_test_databases() {
  have psql || return 0
  local db pid n=0
  while read -r db; do
    [[ -n "$db" ]] || continue
    if [[ "$db" =~ ^authd_test_([0-9]+)_ ]]; then
      pid=${BASH_REMATCH[1]}
      kill -0 "$pid" 2>/dev/null && continue
    elif [[ ! "$db" =~ ^authd_test_[0-9a-f]{32}$ ]]; then
      continue
    fi
    psql "$AUTHD_TEST_DATABASE_URL" -qAtc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 && n=$((n + 1))
  done < <(psql "$AUTHD_TEST_DATABASE_URL" -Atc "SELECT datname FROM pg_database WHERE datname LIKE 'authd\_test\_%'" 2>/dev/null)
  [[ $n -eq 0 ]] || note "dropped $n test databases left by earlier runs"
}

# ---------------------------------------------------------------------------
# Redis
# ---------------------------------------------------------------------------

ensure_redis_installed() {
  have redis-server && have redis-cli && return 0
  note "installing Debian's redis-server"
  apt_install redis-server redis-tools ||
    die "Redis is not installed and cannot be installed here (needs root or sudo). Install redis-server, or set AUTHD_TEST_REDIS_URL."
  # Debian's package may start a system Redis on 6379; we leave it alone and
  # start our own, so that the setup is the same everywhere.
}

# Start a redis-server on 127.0.0.1:$1 with its files in $2, plus any extra
# flags. No persistence: tests start from nothing. noeviction: authd refuses
# a Redis that evicts (an evicted deny-list entry would revive a session).
start_redis_server() {
  local port=$1 dir=$2
  shift 2
  mkdir -p "$dir"
  rm -f "$dir/redis.pid"
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
    --daemonize yes --maxmemory-policy noeviction --dir "$dir" \
    --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" "$@" >/dev/null 9>&-
  CLEANUPS+=("stop_pidfile '$dir/redis.pid'")
  wait_for 10 redis_ping "$port" || return 1
}
redis_ping() { [[ $(redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null) == PONG ]]; }

# Stop the process named in a pid file (a server we started), and wait for it.
# A daemon's exited process can linger as a zombie until init reaps it, which
# `kill -0` still sees, so look at its state instead.
pid_running() {
  local state
  state=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
  [[ -n "$state" && "$state" != Z* ]]
}
stop_pidfile() {
  local pid
  [[ -f "$1" ]] || return 0
  pid=$(cat "$1")
  # After a reboot the number may belong to someone else: only a redis-server
  # (the one thing started with a pid file here) is stopped.
  if [[ -n "$pid" && $(ps -o args= -p "$pid" 2>/dev/null) == redis-server* ]] && kill "$pid" 2>/dev/null; then
    wait_for 10 eval "! pid_running $pid" || kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$1"
}

setup_redis() {
  step "Redis"
  if [[ -n "${AUTHD_TEST_REDIS_URL:-}" ]]; then
    note "using AUTHD_TEST_REDIS_URL as given"
  elif [[ "${AUTHD_TEST_FORCE_PRIVATE_REDIS:-0}" != 1 ]] && have redis-cli && redis_ping 6379 &&
    [[ $(redis-cli -h 127.0.0.1 -p 6379 config get maxmemory-policy 2>/dev/null | tail -n 1) == noeviction ]]; then
    note "using the Redis on 127.0.0.1:6379"
    AUTHD_TEST_REDIS_URL="redis://127.0.0.1:6379"
  else
    if [[ "${AUTHD_TEST_FORCE_PRIVATE_REDIS:-0}" == 1 ]]; then
      note "AUTHD_TEST_FORCE_PRIVATE_REDIS=1"
    elif have redis-cli && redis_ping 6379; then
      note "the Redis on 127.0.0.1:6379 may evict keys, which authd refuses"
    else
      note "no Redis answers on 127.0.0.1:6379"
    fi
    ensure_redis_installed
    local port
    port=$(free_port)
    note "starting a private Redis on 127.0.0.1:$port"
    start_redis_server "$port" "$ENV_DIR/redis" ||
      die "private Redis did not start; see $ENV_DIR/redis/redis.log"
    AUTHD_TEST_REDIS_URL="redis://127.0.0.1:$port"
  fi
  export AUTHD_TEST_REDIS_URL
  note "AUTHD_TEST_REDIS_URL=$AUTHD_TEST_REDIS_URL"
}

# Three masters, no replicas: the smallest real Redis Cluster, enough to
# check that a tenant's keys share one hash slot ({tenant} tags) and that
# the client follows MOVED redirects. A fresh cluster every run, since
# nodes.conf pins the ports it was created with.
start_redis_cluster() {
  local dir="$ENV_DIR/redis-cluster" ports=() seeds=() nodes=() p i
  rm -rf "$dir"
  for i in 1 2 3; do
    p=$(free_port --bus)
    ports+=("$p")
    start_redis_server "$p" "$dir/$p" --cluster-enabled yes \
      --cluster-config-file nodes.conf --cluster-node-timeout 5000 || return 1
    nodes+=("127.0.0.1:$p")
    seeds+=("redis://127.0.0.1:$p")
  done
  redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes \
    >"$dir/create.log" 2>&1 || return 1
  for p in "${ports[@]}"; do
    wait_for 20 eval "redis-cli -h 127.0.0.1 -p $p cluster info | grep -q '^cluster_state:ok'" || return 1
  done
  AUTHD_TEST_REDIS_CLUSTER_URL=$(IFS=,; echo "${seeds[*]}")
  export AUTHD_TEST_REDIS_CLUSTER_URL
}

setup_redis_cluster() {
  step "Redis Cluster"
  if [[ -n "${AUTHD_TEST_REDIS_CLUSTER_URL:-}" ]]; then
    note "using AUTHD_TEST_REDIS_CLUSTER_URL as given"
  else
    ensure_redis_installed
    # Required: the token-lifecycle and rate-limit tests also run against it
    # (the `all!` macro in tests/blackbox/harness.rs) and fail without it.
    start_redis_cluster ||
      die "could not start a Redis Cluster (see $ENV_DIR/redis-cluster), or set AUTHD_TEST_REDIS_CLUSTER_URL"
  fi
  export AUTHD_TEST_REDIS_CLUSTER_URL
  note "AUTHD_TEST_REDIS_CLUSTER_URL=$AUTHD_TEST_REDIS_CLUSTER_URL"
}

# Servers that a killed earlier run (SIGKILL, a closed terminal) left behind
# would hold ports and directories; stop them before starting new ones.
stop_leftovers() {
  local f bindir data user
  for f in "$ENV_DIR"/redis/redis.pid "$ENV_DIR"/redis-cluster/*/redis.pid; do
    [[ -f "$f" ]] || continue
    note "stopping a private Redis left by an earlier run (${f#"$ROOT"/})"
    stop_pidfile "$f"
  done
  for f in "$ENV_DIR"/redis-tls/redis.pid; do
    [[ -f "$f" ]] || continue
    note "stopping a private TLS Redis left by an earlier run"
    stop_pidfile "$f"
  done
  for f in "$ENV_DIR"/pg.started "$ENV_DIR"/pg-tls.started; do
    [[ -f "$f" ]] || continue
    { read -r bindir; read -r data; read -r user; } <"$f" || true
    if [[ -x "$bindir/pg_ctl" && -d "$data" ]]; then
      note "stopping a private Postgres left by an earlier run ($data)"
      PG_USER=$user as_pg "$bindir/pg_ctl" -D "$data" -m fast -w -t 30 stop >/dev/null 2>&1 || true
    fi
    rm -f "$f"
  done
  return 0
}

# ---------------------------------------------------------------------------
# TLS: a private CA, and a Postgres and a Redis that its certificate serves
# ---------------------------------------------------------------------------

# A CA and a server certificate for localhost / 127.0.0.1 (kept for 30 days;
# remade when less than a day is left).
make_test_certs() {
  TLS_DIR="$ENV_DIR/tls"
  mkdir -p "$TLS_DIR"
  if ! have openssl; then
    apt_install openssl || die "openssl is needed to make the test certificates (Debian: apt-get install openssl)"
  fi
  if [[ -f "$TLS_DIR/server.crt" ]] && openssl x509 -checkend 86400 -noout -in "$TLS_DIR/server.crt" >/dev/null 2>&1; then
    return 0
  fi
  note "making a test CA and a server certificate in $TLS_DIR"
  (
    cd "$TLS_DIR"
    openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=authd test CA" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -keyout ca.key -out ca.crt
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout server.key -out server.csr
    printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1" "basicConstraints=critical,CA:FALSE" \
      "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth" >server.ext
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 \
      -extfile server.ext -out server.crt
  ) >"$TLS_DIR/openssl.log" 2>&1 || die "could not make the test certificates; see $TLS_DIR/openssl.log"
  chmod 600 "$TLS_DIR"/*.key
}

# Postgres reads its key only when the server's user owns it, mode 0600.
# Relative file names in the server options resolve in the data directory.
place_pg_certs() {
  cp "$TLS_DIR/server.crt" "$TLS_DIR/server.key" "$1/data/"
  chmod 600 "$1/data/server.key"
  [[ -z "$PG_USER" ]] || chown "$PG_USER": "$1/data/server.crt" "$1/data/server.key"
}

setup_tls() {
  step "TLS Postgres and TLS Redis (private CA)"
  make_test_certs
  PG_PREPARE=place_pg_certs start_private_postgres pg-tls "-c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key"
  local pg_port=${PRIVATE_PG_URL##*:}
  pg_port=${pg_port%%/*}
  # The certificate names localhost; verify-full checks the name and the chain.
  AUTHD_TEST_TLS_DATABASE_URL="postgres://postgres@localhost:$pg_port/postgres?sslmode=verify-full&sslrootcert=$TLS_DIR/ca.crt"
  ensure_redis_installed
  local port dir="$ENV_DIR/redis-tls"
  port=$(free_port)
  mkdir -p "$dir"
  rm -f "$dir/redis.pid"
  note "starting a TLS-only Redis on 127.0.0.1:$port"
  redis-server --port 0 --tls-port "$port" --bind 127.0.0.1 --save "" --appendonly no \
    --daemonize yes --maxmemory-policy noeviction --dir "$dir" \
    --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" \
    --tls-cert-file "$TLS_DIR/server.crt" --tls-key-file "$TLS_DIR/server.key" \
    --tls-ca-cert-file "$TLS_DIR/ca.crt" --tls-auth-clients no >/dev/null 9>&- ||
    die "the TLS Redis did not start (is redis-server built with TLS?); see $dir/redis.log"
  CLEANUPS+=("stop_pidfile '$dir/redis.pid'")
  wait_for 10 eval "[[ \$(redis-cli --tls --cacert '$TLS_DIR/ca.crt' -h localhost -p $port ping 2>/dev/null) == PONG ]]" ||
    die "the TLS Redis does not answer; see $dir/redis.log"
  AUTHD_TEST_TLS_REDIS_URL="rediss://localhost:$port"
  AUTHD_TEST_TLS_CA_FILE="$TLS_DIR/ca.crt"
  export AUTHD_TEST_TLS_DATABASE_URL AUTHD_TEST_TLS_REDIS_URL AUTHD_TEST_TLS_CA_FILE
  note "AUTHD_TEST_TLS_DATABASE_URL=$AUTHD_TEST_TLS_DATABASE_URL"
  note "AUTHD_TEST_TLS_REDIS_URL=$AUTHD_TEST_TLS_REDIS_URL"
}

# ---------------------------------------------------------------------------
# Test tools
# ---------------------------------------------------------------------------

# A sha256 of the given files, to tell whether an install is up to date
# (shasum where coreutils' sha256sum is missing, as on macOS).
fingerprint() {
  if have sha256sum; then cat "$@" | sha256sum; else cat "$@" | shasum -a 256; fi | cut -d' ' -f1
}

setup_python() {
  step "Python tools"
  local venv="$ENV_DIR/venv" req="$SCRIPTS_DIR/requirements.txt" marker want
  have python3 || die "python3 is required (Debian: apt-get install python3 python3-venv)"
  if [[ ! -x "$venv/bin/python" ]] || ! "$venv/bin/python" -c '' 2>/dev/null; then
    rm -rf "$venv"
    note "creating $venv"
    if ! python3 -m venv "$venv" >/dev/null 2>&1; then
      # Debian splits venv/ensurepip out of python3.
      rm -rf "$venv"
      apt_install python3-venv || die "python3 -m venv failed and python3-venv cannot be installed"
      python3 -m venv "$venv" || die "python3 -m venv failed"
    fi
  fi
  marker="$venv/.authd-requirements.sha256"
  want=$(fingerprint "$req")
  if [[ ! -f "$marker" || $(cat "$marker") != "$want" ]]; then
    note "pip install -r tests/scripts/requirements.txt"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$req" >&2 ||
      die "pip install failed"
    echo "$want" >"$marker"
  else
    note "venv up to date"
  fi
  AUTHD_TEST_PYTHON="$venv/bin/python"
  export AUTHD_TEST_PYTHON
}

# What a fresh Debian machine lacks for the rest of this script: installed
# with apt when allowed, else named exactly.
setup_base_tools() {
  step "Base tools"
  local missing=() tool pkg
  for tool in curl:curl unzip:unzip openssl:openssl psql:postgresql-client node:nodejs npm:npm; do
    have "${tool%%:*}" || missing+=("${tool#*:}")
  done
  if [[ ${#missing[@]} -eq 0 ]]; then
    note "already installed"
  elif ! apt_install "${missing[@]}"; then
    die "missing ${missing[*]} and cannot install them here (needs apt as root or sudo): install them (Debian: apt-get install ${missing[*]})"
  fi
  if have rustup; then
    for pkg in rustfmt clippy; do
      rustup component list --installed 2>/dev/null | grep -q "^$pkg" || rustup component add "$pkg" >&2 || true
    done
  fi
}

setup_node() {
  step "Node tools"
  local marker="$ENV_DIR/npm.sha256" want
  if ! have node || ! have npm; then
    warn "node/npm not found: tests that run tests/scripts/*.mjs will fail (Debian: apt-get install nodejs npm)"
    return 0
  fi
  # npm ci reinstalls from scratch every time, so only run it when the lock
  # file changed or node_modules is gone.
  want=$(fingerprint "$SCRIPTS_DIR/package.json" "$SCRIPTS_DIR/package-lock.json")
  if [[ ! -f "$marker" || $(cat "$marker") != "$want" || ! -d "$SCRIPTS_DIR/node_modules/jose" || ! -d "$SCRIPTS_DIR/node_modules/oidc-provider" ]]; then
    note "npm ci in tests/scripts"
    (cd "$SCRIPTS_DIR" && npm ci --no-audit --no-fund --update-notifier=false --loglevel=error >/dev/null) || die "npm ci failed"
    echo "$want" >"$marker"
  else
    note "node_modules up to date"
  fi
  AUTHD_TEST_NODE=$(command -v node)
  export AUTHD_TEST_NODE
}

# Browser and OTP tools come from Debian. Without them only the tests that
# use them fail, each with a message naming the missing tool, so a machine
# where apt is not allowed can still run the rest.
setup_system_tools() {
  step "System tools (oathtool, chromium, chromedriver)"
  local missing=()
  have oathtool || missing+=(oathtool)
  have chromium || missing+=(chromium)
  have chromedriver || missing+=(chromium-driver)
  if [[ ${#missing[@]} -gt 0 ]]; then
    if ! apt_install "${missing[@]}"; then
      warn "could not install ${missing[*]} (needs apt as root or sudo); tests that need them will fail"
    fi
  else
    note "already installed"
  fi
  if have chromium; then
    AUTHD_TEST_CHROMIUM=$(command -v chromium)
    export AUTHD_TEST_CHROMIUM
  fi
  if have chromedriver; then
    AUTHD_TEST_CHROMEDRIVER=$(command -v chromedriver)
    export AUTHD_TEST_CHROMEDRIVER
  fi
  return 0
}

# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------

stop_leftovers
if [[ $STOP -eq 1 ]]; then
  step "stopped private servers left by earlier runs"
  exit 0
fi
setup_base_tools
setup_postgres
setup_redis
setup_redis_cluster
setup_tls
setup_python
setup_node
setup_system_tools
AUTHD_TEST_SCRIPTS="$SCRIPTS_DIR"
export AUTHD_TEST_SCRIPTS

# The JWT verifiers and the TOTP helper are the tests' independent judges; a
# broken install must fail here, by name, not as a puzzling Rust failure.
step "Checking the test helpers"
"$AUTHD_TEST_PYTHON" "$SCRIPTS_DIR/selftest.py" >&2 || die "tests/scripts/selftest.py failed"

if [[ $SETUP_ONLY -eq 1 ]]; then
  if [[ $KEEP -eq 1 ]]; then
    step "environment ready; private servers keep running until: scripts/test.sh --stop"
  else
    step "environment ready (--setup-only: stopping here)"
  fi
  for v in AUTHD_TEST_DATABASE_URL AUTHD_TEST_REDIS_URL AUTHD_TEST_REDIS_CLUSTER_URL \
    AUTHD_TEST_TLS_DATABASE_URL AUTHD_TEST_TLS_REDIS_URL AUTHD_TEST_TLS_CA_FILE \
    AUTHD_TEST_PYTHON AUTHD_TEST_NODE AUTHD_TEST_SCRIPTS AUTHD_TEST_CHROMIUM AUTHD_TEST_CHROMEDRIVER; do
    # Single-quoted for the shell: no value here contains a quote.
    [[ -n "${!v:-}" ]] && printf "export %s='%s'\n" "$v" "${!v}"
  done
  exit 0
fi

# The Helm chart and the Dockerfile, offline (pinned helm binaries and
# kubernetes-validate are fetched once into target/test-env).
bash scripts/check-helm.sh

have cargo || die "cargo not found (install Rust with rustup)"
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"

# Dependencies that no source of their crate names (cargo-machete: a fast
# search of each crate's sources, no build). Installed when missing, which
# takes a minute or two. Crates listed in MACHETE_PENDING are not checked
# (none today; a crate whose unused dependencies cannot go at once is listed
# here until they can). A false positive
# (a dependency named only through a macro) goes into the crate's
# [package.metadata.cargo-machete] ignored list.
MACHETE_VERSION=0.9.2
MACHETE_PENDING=()
unused_dependencies() {
  local dirs=() d p pending
  if ! have cargo-machete; then
    step "cargo install cargo-machete@$MACHETE_VERSION --locked"
    cargo install cargo-machete --version "$MACHETE_VERSION" --locked --quiet 9>&- ||
      die "could not install cargo-machete (needed for the unused-dependency check; --no-lint skips it)"
  fi
  for d in crates/*/ tests/; do
    d=${d%/}
    [[ -f "$d/Cargo.toml" ]] || continue
    pending=0
    for p in "${MACHETE_PENDING[@]+"${MACHETE_PENDING[@]}"}"; do [[ "$d" == "$p" ]] && pending=1; done
    [[ $pending -eq 1 ]] || dirs+=("$d")
  done
  step "cargo machete (unused dependencies)"
  cargo machete --skip-target-dir "${dirs[@]}" 9>&-
}

# Licenses, banned crates and sources of every dependency (deny.toml),
# offline. Installed when missing (a few minutes, once per machine).
DENY_VERSION=0.20.2
dependency_policy() {
  if ! have cargo-deny; then
    step "cargo install cargo-deny@$DENY_VERSION --locked"
    cargo install cargo-deny --version "$DENY_VERSION" --locked --quiet 9>&- ||
      die "could not install cargo-deny (needed for the dependency policy check; --no-lint skips it)"
  fi
  # cargo deny reads `cargo metadata`, which wants every crate of the lock
  # file on disk, those of other platforms too (windows-link, ...): a build
  # fetches only the host's, so fetch them all first (from the registry,
  # the one network access the check needs).
  step "cargo fetch --locked (every platform's crates, for cargo deny)"
  cargo fetch --locked 9>&-
  step "cargo deny check bans licenses sources"
  cargo deny --offline check bans licenses sources 9>&-
}

if [[ $LINT -eq 1 ]]; then
  # Cheap checks of the non-Rust parts first, so they fail in seconds.
  step "GraphiQL assets and test scripts"
  bash scripts/update-graphiql-assets.sh --check
  "$AUTHD_TEST_PYTHON" -m py_compile "$SCRIPTS_DIR"/*.py
  step "cargo fmt --all -- --check"
  cargo fmt --all -- --check 9>&-
  unused_dependencies
  dependency_policy
  step "cargo clippy --workspace --all-targets -- -D warnings"
  cargo clippy --workspace --all-targets -- -D warnings 9>&-
fi

# fd 9 (the lock) is closed for cargo so that a process a test leaks cannot
# hold it and block the next run.
step "cargo test --workspace --all-targets ${CARGO_TEST_ARGS[*]}"
cargo test --workspace --all-targets "${CARGO_TEST_ARGS[@]}" 9>&-

# The container image's runtime contract, on the binary cargo test just built.
bash scripts/check-runtime.sh 9>&-
