# shellcheck shell=bash
# Shared helpers for the benchmarks in tools/bench/ (source it; it defines functions only, plus
# PGBIN). Everything a bench starts goes through bench_defer, so that one EXIT trap stops it.
#
#   bench_workdir              a fresh work directory in $BENCH_W (under $BENCH_TMP or /var/tmp),
#                              removed at exit unless BENCH_KEEP=1
#   bench_defer CMD            run CMD (a string) at exit, last registered first
#   pg_initdb DIR              initdb -k as postgres
#   pg_start DIR PORT [OPT...] start postgres on 127.0.0.1:PORT, socket in $BENCH_W; stopped at exit
#   pg_stop DIR                fast shutdown
#   pg_psql PORT SQL           run SQL as postgres, print unaligned tuples
#   bench_make_dataset PORT SCALE TEXT_MB
#                              pgbench -i -s SCALE, plus bench_text, about TEXT_MB of random
#                              hex text (md5 strings: zstd packs them about 2x), vacuumed
#   bench_zstd_ratio DIR       size of a tar of DIR (without pg_wal/) / that tar through zstd -3
#   bench_drop_caches          sync and drop the page cache (warns once when not allowed)
#   bench_now / bench_since T  wall-clock seconds
#   bench_du PATH              bytes on disk (du -s, allocated blocks)
#   bench_stats V...           "median spread" where spread is max-min
#   bench_timed FILE CMD...    run CMD; write its wall and CPU seconds to FILE
#   bench_pg_cpu DATADIR       CPU seconds used by a running cluster so far
#   bench_free_port            a free TCP port on 127.0.0.1
#   bench_pgbackrest_conf CONF REPO PGDATA PORT [DIR]
#                              a pgBackRest configuration (stanza bench, zst, process-max 2) for
#                              the cluster in PGDATA on 127.0.0.1:PORT, socket in $BENCH_W, logs,
#                              locks and spool under DIR (default $BENCH_W); makes REPO. Then
#                              pgbr ARGS... runs `pgbackrest --stanza=bench ARGS` as postgres

PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
BENCH_DEFERRED=()

bench_log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
bench_die() { bench_log "error: $*"; exit 1; }

bench_run_deferred() {
  local i
  set +e
  for ((i = ${#BENCH_DEFERRED[@]} - 1; i >= 0; i--)); do
    eval "${BENCH_DEFERRED[$i]}" >/dev/null 2>&1
  done
  BENCH_DEFERRED=()
}
bench_defer() { BENCH_DEFERRED+=("$1"); }

bench_workdir() {
  local base=${BENCH_TMP:-/var/tmp}
  BENCH_W=$(mktemp -d "$base/pgbackfs-bench.XXXXXX")
  chmod 755 "$BENCH_W"
  chown postgres "$BENCH_W"
  if [ "${BENCH_KEEP:-0}" != 1 ]; then
    bench_defer "rm -rf '$BENCH_W'"
  else
    bench_log "keeping $BENCH_W"
  fi
  trap 'bench_run_deferred' EXIT
  trap 'exit 130' INT TERM
}

as_pg() { runuser -u postgres -- "$@"; }

bench_free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

pg_initdb() {
  mkdir -p "$1" && chown postgres "$1" && chmod 700 "$1"
  as_pg "$PGBIN/initdb" -k -A trust -U postgres -D "$1" >/dev/null
}

# pg_start DIR PORT [-c name=value ...]: extra arguments go to postgres as they are.
pg_start() {
  local dir=$1 port=$2 opts
  shift 2
  opts="-p $port -k $BENCH_W -c listen_addresses=127.0.0.1"
  local a
  for a in "$@"; do opts+=" $(printf '%q' "$a")"; done
  # shellcheck disable=SC2086  # PG_START_ENV: zero or more NAME=VALUE words
  as_pg env ${PG_START_ENV:-} "$PGBIN/pg_ctl" -D "$dir" -l "$BENCH_W/pg-$port.log" -w -t 300 \
    start -o "$opts" >/dev/null || { tail -20 "$BENCH_W/pg-$port.log" >&2; return 1; }
  bench_defer "runuser -u postgres -- '$PGBIN/pg_ctl' -D '$dir' -m immediate -w stop"
}

pg_stop() { as_pg "$PGBIN/pg_ctl" -D "$1" -m fast -w -t 300 stop >/dev/null; }

pg_psql() {
  as_pg "$PGBIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$1" -U postgres -d postgres \
    -c "$2"
}

bench_make_dataset() {
  local port=$1 scale=$2 text_mb=$3
  as_pg "$PGBIN/pgbench" -h 127.0.0.1 -p "$port" -U postgres -i -s "$scale" -q postgres \
    >/dev/null 2>&1 || bench_die "pgbench -i failed"
  # One row: an int and 8 md5 strings (256 hex chars), about 300 bytes with the tuple header, so
  # about 27 rows a page. Hex text is the realistic part: zstd gets about 2x on it.
  local rows=$((text_mb * 1024 * 1024 / 300))
  pg_psql "$port" "CREATE TABLE bench_text (id int PRIMARY KEY, body text);
    INSERT INTO bench_text SELECT g, md5(g::text || 'a' || r::text) || md5(g::text || 'b' || r::text)
        || md5(g::text || 'c' || r::text) || md5(g::text || 'd' || r::text)
        || md5(g::text || 'e' || r::text) || md5(g::text || 'f' || r::text)
        || md5(g::text || 'g' || r::text) || md5(g::text || 'h' || r::text)
      FROM (SELECT g, random() AS r FROM generate_series(1, $rows) g) s;" ||
    bench_die "could not fill bench_text"
  pg_psql "$port" "VACUUM (FREEZE, ANALYZE)" >/dev/null
  pg_psql "$port" "CHECKPOINT" >/dev/null
}

bench_zstd_ratio() {
  local raw packed
  raw=$(tar -C "$1" --exclude=./pg_wal -cf - . 2>/dev/null | wc -c)
  packed=$(tar -C "$1" --exclude=./pg_wal -cf - . 2>/dev/null | zstd -3 -q -T1 -c | wc -c)
  python3 -c "print(f'{$raw / $packed:.2f}')"
}

BENCH_DROP_WARNED=0
bench_drop_caches() {
  sync
  if ! { echo 3 >/proc/sys/vm/drop_caches; } 2>/dev/null; then
    [ "$BENCH_DROP_WARNED" = 1 ] || bench_log "warning: cannot drop the page cache (not root?)"
    BENCH_DROP_WARNED=1
  fi
}

bench_now() { date +%s.%N; }
bench_since() { python3 -c "import sys; print(f'{$(date +%s.%N) - $1:.3f}')"; }

bench_du() { du -s --block-size=1 "$1" | cut -f1; }

# bench_stats V...: median and spread (max - min), for a table cell.
bench_stats() {
  python3 - "$@" <<'PY'
import statistics, sys
v = [float(x) for x in sys.argv[1:]]
print(f"{statistics.median(v):.6g} {max(v) - min(v):.6g}")
PY
}

# bench_timed FILE CMD...: run CMD, write "WALL_S CPU_S" (CPU = user + sys of CMD and the
# children it waited for) to FILE, return CMD's exit status. The CPU time barely moves with the
# load from other processes on a shared machine, the wall time does.
bench_timed() {
  local file=$1
  shift
  python3 - "$file" "$@" <<'PY'
import resource, subprocess, sys, time
t = time.monotonic()
rc = subprocess.call(sys.argv[2:])
wall = time.monotonic() - t
r = resource.getrusage(resource.RUSAGE_CHILDREN)
with open(sys.argv[1], "w") as f:
    f.write(f"{wall:.3f} {r.ru_utime + r.ru_stime:.3f}\n")
sys.exit(rc)
PY
}

# bench_pg_cpu DATADIR: CPU seconds used so far by the cluster: the postmaster, its live children,
# and (through the postmaster's cutime/cstime) the children it already reaped, such as a walsender.
bench_pg_cpu() {
  python3 - "$1" <<'PY'
import os, sys
tck = os.sysconf("SC_CLK_TCK")
pm = int(open(os.path.join(sys.argv[1], "postmaster.pid")).readline())
def stat(pid):
    s = open(f"/proc/{pid}/stat").read()
    return s[s.rindex(")") + 2:].split()  # fields from 3 (state) on
total = 0
for pid in os.listdir("/proc"):
    if not pid.isdigit():
        continue
    try:
        f = stat(pid)
    except OSError:
        continue
    if int(pid) == pm or int(f[1]) == pm:  # f[1] is the ppid
        total += sum(int(x) for x in f[11:15])  # utime stime cutime cstime
print(f"{total / tck:.2f}")
PY
}

bench_pgbackrest_conf() {
  local conf=$1 repo=$2 pgdata=$3 port=$4 dir=${5:-$BENCH_W}
  cat >"$conf" <<EOF
[global]
repo1-path=$repo
repo1-retention-full=99
compress-type=zst
process-max=2
start-fast=y
log-path=$dir/pgbackrest-log
lock-path=$dir/pgbackrest-lock
spool-path=$dir/pgbackrest-spool
log-level-console=warn
log-level-file=info

[bench]
pg1-path=$pgdata
pg1-port=$port
pg1-socket-path=$BENCH_W
pg1-user=postgres
EOF
  chmod 644 "$conf"
  mkdir -p "$repo" "$dir/pgbackrest-log" && chown postgres "$repo" "$dir/pgbackrest-log"
  BENCH_PGBR_CONF=$conf
}
pgbr() { runuser -u postgres -- env PGBACKREST_CONFIG="$BENCH_PGBR_CONF" pgbackrest --stanza=bench "$@"; }
