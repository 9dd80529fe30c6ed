# Shared helpers for integration tests: a private temp directory, free ports, a throwaway
# PostgreSQL 15 run as the postgres user, and cleanup of everything started, also on failure.
# Usage: source "$(dirname "$0")/lib.sh" "$1"   ($1 = path to the pgbackfs binary)
set -euo pipefail

PGBACKFS=${1:?usage: $0 PATH_TO_PGBACKFS}
PGBACKFS=$(readlink -f "$PGBACKFS")
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
T=$(mktemp -d /tmp/pgbackfs-test.XXXXXX)
chmod 755 "$T"
_CLEANUP=()

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
fail() { log "FAIL: $*"; exit 1; }

# Registers a command to run at exit (last registered runs first).
on_exit() { _CLEANUP+=("$*"); }
_run_cleanup() {
  local rc=$?
  set +e
  for ((i=${#_CLEANUP[@]}-1; i>=0; i--)); do eval "${_CLEANUP[$i]}" >/dev/null 2>&1; done
  if [ $rc -eq 0 ] && [ -z "${KEEP_TMP:-}" ]; then rm -rf "$T"; else log "kept $T"; fi
  exit $rc
}
trap _run_cleanup EXIT
trap 'exit 130' INT TERM

# A TCP port nobody listens on.
free_port() {
  python3 - <<'PY'
import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()
PY
}

as_pg() { runuser -u postgres -- "$@"; }

# pg_init DATADIR: initdb with checksums, owned by postgres.
pg_init() {
  local dir=$1
  mkdir -p "$dir" && chown postgres:postgres "$dir" && chmod 700 "$dir"
  as_pg "$PGBIN/initdb" -k -A trust -U postgres -D "$dir" >"$T/initdb.log" 2>&1 || {
    cat "$T/initdb.log"; fail "initdb $dir"; }
}

# pg_start DATADIR PORT [extra postgres -c options...]: starts and registers a stop at exit.
pg_start() {
  local dir=$1 port=$2; shift 2
  local opts="-p $port -k /tmp -c listen_addresses=127.0.0.1"
  for o in "$@"; do opts="$opts -c $o"; done
  chown postgres:postgres "$T" 2>/dev/null || true
  as_pg "$PGBIN/pg_ctl" -D "$dir" -l "$dir.log" -o "$opts" -w -t 120 start >/dev/null || {
    tail -30 "$dir.log" >&2; fail "postgres did not start on $dir"; }
  on_exit "as_pg $PGBIN/pg_ctl -D '$dir' -m immediate stop"
}

pg_stop() { as_pg "$PGBIN/pg_ctl" -D "$1" -m fast -w -t 120 stop >/dev/null; }

# psql_q PORT SQL: one value, unaligned.
psql_q() {
  local port=$1; shift
  as_pg psql -X -q -At -h 127.0.0.1 -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 -c "$*"
}

# Unmounts MOUNTPOINT if mounted (used in cleanup).
unmount_quiet() { mountpoint -q "$1" && { fusermount3 -u "$1" || umount -l "$1"; } || true; }

expect_fail() {  # expect_fail DESCRIPTION CMD...: the command must exit non-zero
  local what=$1; shift
  if "$@" >"$T/expect_fail.out" 2>&1; then cat "$T/expect_fail.out" >&2; fail "$what: succeeded"; fi
  log "ok (refused): $what: $(head -c 300 "$T/expect_fail.out" | tr '\n' ' ')"
}
