#!/usr/bin/env bash
# The container image's runtime contract, tested on the locally built binary
# (no image can be built here: there is no Docker engine).
#
#   scripts/check-runtime.sh [PATH-TO-AUTHD]
#
# The image (Dockerfile) runs authd as uid 10001 with a read-only root
# filesystem, a tmpfs /tmp, its data dir as the only writable volume, and
# secrets as read-only files; Kubernetes adds: no capabilities, no privilege
# escalation, SIGTERM on stop. This script recreates that around the binary
# (default target/debug/authd, or AUTHD_BIN, or the argument):
#
#   - a private mount namespace (unshare) where / is remounted read-only, /tmp
#     is a fresh tmpfs and only the data dir is bind-mounted writable;
#   - setpriv: uid/gid 10001, no supplementary groups, no capabilities (also
#     none in the bounding set), no_new_privs;
#   - a read-only working directory (mode 0555) and a clean environment with
#     the image's variables and the platform token as AUTHD_PLATFORM_TOKEN_FILE;
#
# then runs `authd migrate` and `authd serve` there and checks: /healthz and
# /readyz answer, the platform API and /metrics are on the admin listener only
# and the token file works, the data dir holds the generated master key
# (0600, owned by 10001); on SIGTERM /readyz turns 503 at once while /healthz
# still answers, and the process exits 0 within the shutdown delay plus the
# drain time.
#
# Without the binary (not built yet) it warns and exits 0. Without root (or
# where unshare is not allowed) it runs the weaker variant: the current user,
# a read-only working directory, only the data dir writable by convention.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

UID_GID=10001
SHUTDOWN_DELAY=2
DRAIN=3

step() { printf '==> %s\n' "$*" >&2; }
note() { printf '    %s\n' "$*" >&2; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() {
  printf 'error: %s\n' "$*" >&2
  [[ -n "${LOG:-}" && -s "${LOG:-}" ]] && { printf -- '--- authd output (last 30 lines)\n' >&2; tail -n 30 "$LOG" >&2; }
  exit 1
}
have() { command -v "$1" >/dev/null 2>&1; }

BIN=${1:-${AUTHD_BIN:-$ROOT/target/debug/authd}}
step "runtime contract of the image (unprivileged, read-only root, SIGTERM)"
if [[ ! -x "$BIN" ]]; then
  warn "$BIN not found (build it with cargo build -p authd): runtime contract NOT checked"
  exit 0
fi
have curl || die "curl is needed (Debian: apt-get install curl)"

# Sandboxing needs root (to switch user and mount); test it for real.
SANDBOX=0
if [[ $(id -u) -eq 0 ]] && have unshare && have setpriv && have mount &&
  unshare --mount --propagation private true 2>/dev/null; then
  SANDBOX=1
else
  warn "no root or no unshare here: weaker check (current user, read-only working directory only)"
fi

# /var/tmp, not /tmp: the sandbox mounts a fresh tmpfs over /tmp.
WORK=$(mktemp -d /var/tmp/authd-runtime.XXXXXX)
PID=""
cleanup() {
  [[ -n "$PID" ]] && kill -KILL "$PID" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
chmod 0755 "$WORK"
DATA="$WORK/data"
RO="$WORK/cwd"
SECRETS="$WORK/secrets"
LOG="$WORK/authd.log"
mkdir -p "$DATA" "$RO" "$SECRETS"
TOKEN=$(head -c 32 /dev/urandom | base64 | tr -d '\n=+/')
printf '%s\n' "$TOKEN" >"$SECRETS/AUTHD_PLATFORM_TOKEN"
if [[ $SANDBOX -eq 1 ]]; then
  # As Kubernetes mounts them: owner root, group fsGroup, mode 0440.
  chown 0:"$UID_GID" "$SECRETS" "$SECRETS/AUTHD_PLATFORM_TOKEN"
  chmod 0750 "$SECRETS"
  chmod 0440 "$SECRETS/AUTHD_PLATFORM_TOKEN"
  chown "$UID_GID:$UID_GID" "$DATA"
  chmod 0700 "$DATA"
  # The binary must be reachable by uid 10001 inside the sandbox (as
  # /usr/local/bin/authd is in the image): a checkout under a private home,
  # or under /tmp (hidden by the sandbox's tmpfs), is not, so always copy it.
  install -m 0555 "$BIN" "$WORK/authd"
  BIN="$WORK/authd"
fi
chmod 0555 "$RO"

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() {
  local p i
  for ((i = 0; i < 200; i++)); do
    p=$((20000 + RANDOM % 10000))
    port_in_use "$p" || { echo "$p"; return 0; }
  done
  die "no free loopback port"
}
HTTP_PORT=$(free_port)
ADMIN_PORT=$(free_port)
while [[ $ADMIN_PORT == "$HTTP_PORT" ]]; do ADMIN_PORT=$(free_port); done

# Runs `authd "$@"` the way the image does. The environment is cleared and
# only the image's variables (with loopback addresses) are set. It execs, so
# call it in a subshell: `( run_authd ... )` or `run_authd ... &`, whose pid
# is then authd's own (env, unshare, bash and setpriv all exec).
run_authd() {
  local envs=(
    PATH=/usr/local/bin:/usr/bin:/bin
    AUTHD_LISTEN="127.0.0.1:$HTTP_PORT"
    AUTHD_ADMIN_LISTEN="127.0.0.1:$ADMIN_PORT"
    AUTHD_DATA_DIR="$DATA"
    AUTHD_PLATFORM_TOKEN_FILE="$SECRETS/AUTHD_PLATFORM_TOKEN"
    AUTHD_SHUTDOWN_DELAY_SECS="$SHUTDOWN_DELAY"
    AUTHD_DRAIN_SECS="$DRAIN"
    AUTHD_LOG_FORMAT=json
    RUST_LOG=info
  )
  if [[ $SANDBOX -eq 1 ]]; then
    # shellcheck disable=SC2016 # the inner script expands its own arguments
    exec env -i "${envs[@]}" unshare --mount --propagation private -- /bin/bash -c '
      set -e
      data=$1 cwd=$2 id=$3
      shift 3
      mount --bind "$data" "$data"            # the data volume stays writable
      mount -o remount,bind,ro /              # readOnlyRootFilesystem
      mount -t tmpfs -o size=16m,mode=1777,nosuid,nodev tmpfs /tmp   # the emptyDir on /tmp
      if touch /.authd-rw-probe 2>/dev/null; then echo "the root filesystem is still writable" >&2; exit 97; fi
      cd "$cwd"
      exec setpriv --reuid="$id" --regid="$id" --clear-groups --no-new-privs \
        --inh-caps=-all --bounding-set=-all -- "$@"
    ' _ "$DATA" "$RO" "$UID_GID" "$BIN" "$@"
  else
    cd "$RO"
    exec env -i "${envs[@]}" "$BIN" "$@"
  fi
}

PUB="http://127.0.0.1:$HTTP_PORT"
ADM="http://127.0.0.1:$ADMIN_PORT"
# Prints the HTTP status of a request (000 when nothing answers).
status() { curl -s -o /dev/null -w '%{http_code}' --max-time 3 "$@" || true; }
expect() {
  local want=$1 what=$2 got
  shift 2
  got=$(status "$@")
  [[ "$got" == "$want" ]] || die "$what: HTTP $got, expected $want"
  note "ok $what: $got"
}

if [[ $SANDBOX -eq 1 ]]; then
  note "sandbox: uid/gid $UID_GID, no capabilities, no_new_privs, / read-only, tmpfs /tmp, writable: ${DATA#"$WORK"/} only"
fi
note "binary: ${BIN#"$ROOT"/}"

# `authd migrate` (the Helm hook's command; on the embedded default it
# creates and migrates the SQLite file).
(run_authd migrate) >"$LOG" 2>&1 || die "authd migrate failed in the sandbox"
note "ok authd migrate"

run_authd serve >>"$LOG" 2>&1 &
PID=$!
[[ $SANDBOX -eq 0 ]] || sleep 0.2
[[ $(cat "/proc/$PID/comm" 2>/dev/null) == authd* ]] || note "(pid $PID is $(cat "/proc/$PID/comm" 2>/dev/null) so far)"
for ((i = 0; i < 300; i++)); do
  [[ $(status "$PUB/healthz") == 200 ]] && break
  kill -0 "$PID" 2>/dev/null || { wait "$PID" || true; PID=""; die "authd serve exited during start-up"; }
  sleep 0.1
done
expect 200 "GET /healthz (public)" "$PUB/healthz"
expect 200 "GET /readyz (public)" "$PUB/readyz"
expect 200 "GET /healthz (admin)" "$ADM/healthz"
expect 200 "GET /metrics (admin)" "$ADM/metrics"
expect 404 "GET /metrics (public: admin listener only)" "$PUB/metrics"
QUERY='{"query":"{ tenants { nodes { slug } } }"}'
expect 404 "POST /graphql platform API (public: admin listener only)" -X POST "$PUB/graphql" -H 'Content-Type: application/json' -d "$QUERY"
expect 401 "POST /graphql platform API without the token" -X POST "$ADM/graphql" -H 'Content-Type: application/json' -d "$QUERY"
expect 200 "POST /graphql platform API with the token from AUTHD_PLATFORM_TOKEN_FILE" -X POST "$ADM/graphql" \
  -H 'Content-Type: application/json' -H "Authorization: Bearer $TOKEN" -d "$QUERY"
body=$(curl -s --max-time 3 -X POST "$ADM/graphql" -H 'Content-Type: application/json' -H "Authorization: Bearer $TOKEN" -d "$QUERY")
[[ "$body" == *'"tenants"'* && "$body" != *'"errors"'* ]] || die "platform API answered: $body"
grep -q "$TOKEN" "$LOG" && die "the platform token appears in authd's output"

# What the data volume holds: the generated master key, private to 10001.
[[ -f "$DATA/master.key" ]] || die "no master.key generated in the data dir"
[[ ! -e "$DATA/platform-token" ]] || die "a platform-token file was generated although AUTHD_PLATFORM_TOKEN_FILE was given"
mode=$(stat -c '%a' "$DATA/master.key")
[[ "$mode" == 600 ]] || die "master.key has mode $mode, expected 600"
if [[ $SANDBOX -eq 1 ]]; then
  owners=$(find "$DATA" -mindepth 1 ! -uid "$UID_GID" -printf '%P ')
  [[ -z "$owners" ]] || die "files in the data dir not owned by $UID_GID: $owners"
fi
note "ok data dir: $(find "$DATA" -mindepth 1 -maxdepth 1 -printf '%f ' | tr -s ' ')(master.key 0600)"
[[ -z "$(ls -A "$RO")" ]] || die "authd wrote into its working directory"

# SIGTERM: not ready at once, still serving during the delay, then exit 0.
start=$(date +%s%N)
kill -TERM "$PID"
got=""
for ((i = 0; i < 20; i++)); do
  got=$(status "$PUB/readyz")
  [[ "$got" == 503 ]] && break
  sleep 0.05
done
[[ "$got" == 503 ]] || die "after SIGTERM /readyz answered $got, expected 503 at once"
note "ok SIGTERM: /readyz 503 at once"
expect 200 "SIGTERM: /healthz still served during AUTHD_SHUTDOWN_DELAY_SECS=$SHUTDOWN_DELAY" "$PUB/healthz"
limit=$((SHUTDOWN_DELAY + DRAIN + 10))
for ((i = 0; i < limit * 10; i++)); do
  kill -0 "$PID" 2>/dev/null || break
  sleep 0.1
done
kill -0 "$PID" 2>/dev/null && die "authd still running ${limit}s after SIGTERM"
rc=0
wait "$PID" || rc=$?
PID=""
elapsed=$((($(date +%s%N) - start) / 1000000))
[[ $rc -eq 0 ]] || die "authd exited with status $rc after SIGTERM, expected 0"
((elapsed >= SHUTDOWN_DELAY * 1000)) || die "authd exited after ${elapsed} ms, before the ${SHUTDOWN_DELAY}s shutdown delay"
note "ok SIGTERM: exit 0 after ${elapsed} ms (delay ${SHUTDOWN_DELAY}s, drain up to ${DRAIN}s)"
printf 'runtime contract: passed\n' >&2
