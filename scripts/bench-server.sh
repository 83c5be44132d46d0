# Sourced by the bench-*.sh scripts: starts a release authd to measure and
# stops it again on exit (dropping its database).
#
#   . "$(dirname "${BASH_SOURCE[0]}")/bench-server.sh"
#   bench_server NAME PORT [cheap-argon2] [no-autovacuum]
#
# On Postgres + Redis (the local Postgres, postgres@127.0.0.1:5432 with
# trust auth, and Redis on 6379): a fresh database authd_NAME_<pid>, Redis
# keys under NAME<pid>. With EMBEDDED=1 (where the script allows it): the
# embedded default in a temporary data dir. `cheap-argon2` makes password
# hashing nearly free (for benchmarks that create tenants, not hash);
# `no-autovacuum` keeps autovacuum's transactions out of Postgres's count.
#
# Sets ROOT, BIN (AUTHD_BIN or the release build), LOAD (AUTHD_LOAD_BIN or
# the release authd-load), WORK (a temporary directory), TOKEN (the platform
# token), DB (the database name, Postgres only), PID (authd's) and U (its
# base URL); exports authd's environment, DATABASE_URL included.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${AUTHD_BIN:-$ROOT/target/release/authd}
LOAD=${AUTHD_LOAD_BIN:-$ROOT/target/release/authd-load}
TOKEN=bench-platform-token-0123456789abcdef

bench_server() {
  local name=$1 port=$2 option
  WORK=$(mktemp -d)
  U=http://127.0.0.1:$port
  export AUTHD_MASTER_KEY=$(head -c32 /dev/urandom | base64) \
    AUTHD_PLATFORM_TOKEN=$TOKEN AUTHD_LISTEN=127.0.0.1:$port RUST_LOG=error
  local vacuum=1
  for option in "${@:3}"; do
    case $option in
      cheap-argon2) export AUTHD_ARGON2_MEMORY_KIB=64 AUTHD_ARGON2_ITERATIONS=1 ;;
      no-autovacuum) vacuum=0 ;;
      *) echo "bench_server: unknown option $option" >&2; return 2 ;;
    esac
  done
  if [[ ${EMBEDDED:-0} == 1 ]]; then
    # The embedded default: SQLite and the SQLite token store in a data dir.
    export AUTHD_DATA_DIR=$WORK/data
    $BIN serve 2>"$WORK/authd.log" & PID=$!
    trap 'kill $PID; wait $PID 2>/dev/null; rm -rf "$WORK"' EXIT
  else
    DB=authd_${name}_$$
    psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE $DB"
    export DATABASE_URL=postgres://postgres@127.0.0.1:5432/$DB REDIS_URL=redis://127.0.0.1:6379 \
      AUTHD_REDIS_PREFIX=$name$$
    $BIN migrate 2>/dev/null
    if [[ $vacuum == 0 ]]; then
      # Autovacuum's transactions count for the database too: off for the
      # bench's tables, so that what is counted is authd's.
      psql -h 127.0.0.1 -U postgres -d "$DB" -qtAc \
        "SELECT format('ALTER TABLE %I SET (autovacuum_enabled = false);', tablename) FROM pg_tables WHERE schemaname = 'public'" |
        psql -h 127.0.0.1 -U postgres -d "$DB" -q
    fi
    $BIN serve 2>"$WORK/authd.log" & PID=$!
    trap 'kill $PID; wait $PID 2>/dev/null; psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)"; rm -rf "$WORK"' EXIT
  fi
  for _ in $(seq 50); do curl -s -o /dev/null "$U/healthz" && break; sleep 0.2; done
}
