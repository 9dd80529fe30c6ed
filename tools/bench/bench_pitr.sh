#!/usr/bin/env bash
# PITR benchmark: time to a running server at a target time about 1 GiB of WAL after the backup,
# pgbackfs against pgBackRest 2.45 on the same data, side by side.
#
# Usage: tools/bench/bench_pitr.sh [--scale N] [--text-mb M] [--wal-mib W] [--runs R] [--keep]
#   --scale N    pgbench scale (default 10)
#   --text-mb M  size of the random text table (default 200)
#   --wal-mib W  WAL to generate after the backups (default 1024)
#   --runs R     repetitions of the three measurements, order rotated (default 2)
#   --keep       keep the work directory (under $BENCH_TMP, default /var/tmp)
# Environment: PGBACKFS (default build/pgbackfs), BENCH_TMP.
#
# Set-up (once): a cluster with pgbench data plus a table of md5 text, archiving every segment
# both with `cp` into a pgbackfs mount and with `pgbackrest archive-push`; a backup with each
# tool; then W MiB of WAL from pgbench (tpcb-like, plus updates of the text table); the target
# time is taken near the end, and a little more WAL follows it.
# Measured (page cache dropped before each), from the command to the first answer of a
# primary-key query on a promoted, read-write server at the target:
#   clone:       pgbackfs clone create --target-time T; pg_ctl start (postgres replays the WAL)
#   materialize: pgbackfs clone create --target-time T --materialize; pg_ctl start (no replay)
#   pgbackrest:  pgbackrest restore --type=time --target=T --target-action=promote; pg_ctl start
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
source "$ROOT/tools/bench/lib.sh"

SCALE=10
TEXT_MB=200
WAL_MIB=1024
RUNS=2
while [ $# -gt 0 ]; do
  case $1 in
    --scale) SCALE=$2; shift 2 ;;
    --text-mb) TEXT_MB=$2; shift 2 ;;
    --wal-mib) WAL_MIB=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --keep) export BENCH_KEEP=1; shift ;;
    -h|--help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
PGBACKFS=$(readlink -f "${PGBACKFS:-$ROOT/build/pgbackfs}")
[ -x "$PGBACKFS" ] || bench_die "no pgbackfs binary at '$PGBACKFS' (build it: BUILD_DIR=build ./tools/build.sh)"
command -v pgbackrest >/dev/null || bench_die "pgbackrest is not installed"
[ "$(id -u)" = 0 ] || bench_die "run as root (mount, drop_caches; postgres runs as user postgres)"

LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
bench_workdir
W=$BENCH_W
SRC=$W/src BF=$W/pgbackfs-repo MNT=$W/mnt BR=$W/pgbackrest-repo CONF=$W/pgbackrest.conf
PORT=$(bench_free_port)

# ---------------------------------------------------------------- set-up
"$PGBACKFS" init "$BF" >/dev/null
mkdir -p "$MNT"
"$PGBACKFS" mount "$BF" "$MNT" --owner postgres --allow-other >/dev/null
bench_defer "'$PGBACKFS' umount '$MNT' || fusermount3 -u -z '$MNT'"

bench_pgbackrest_conf "$CONF" "$BR" "$SRC" "$PORT"

bench_log "source: pgbench scale $SCALE + $TEXT_MB MB of md5 text, archived by cp into the mount and by pgbackrest"
pg_initdb "$SRC"
# The archive settings live on the command line only, so that no restored copy archives.
PG_START_ENV="PGBACKREST_CONFIG=$CONF" pg_start "$SRC" "$PORT" -c autovacuum=off \
  -c max_wal_size=2GB -c archive_mode=on \
  -c "archive_command=cp %p $MNT/wal/%f && pgbackrest --stanza=bench archive-push %p"
pgbr stanza-create >/dev/null
bench_make_dataset "$PORT" "$SCALE" "$TEXT_MB"
TEXT_ROWS=$(pg_psql "$PORT" "SELECT max(id) FROM bench_text")
DB_SIZE=$(pg_psql "$PORT" "SELECT pg_size_pretty(pg_database_size('postgres'))")

bench_log "backups"
"$PGBACKFS" backup "$BF" -d "host=127.0.0.1 port=$PORT user=postgres" --fast-checkpoint >/dev/null
pgbr backup --type=full >/dev/null
START_LSN=$(pg_psql "$PORT" "SELECT pg_current_wal_lsn()")

bench_log "generating $WAL_MIB MiB of WAL (pgbench tpcb-like + text updates)"
cat >"$W/text.sql" <<EOF
\set id random(1, $TEXT_ROWS)
UPDATE bench_text SET body = md5(random()::text) || md5(random()::text) || md5(random()::text)
    || md5(random()::text) || md5(random()::text) || md5(random()::text)
    || md5(random()::text) || md5(random()::text) WHERE id = :id;
EOF
chmod 644 "$W/text.sql"
mib_between() { pg_psql "$PORT" "SELECT floor(($2::pg_lsn - '$1'::pg_lsn) / 1048576)::bigint"; }
pgbench_for() {  # SECONDS
  as_pg "$PGBIN/pgbench" -h 127.0.0.1 -p "$PORT" -U postgres -n -c 2 -j 2 -T "$1" \
    -b tpcb-like@4 -f "$W/text.sql@1" postgres >/dev/null 2>&1 || bench_die "pgbench failed"
}
T_GEN=$(bench_now)
while true; do
  done_mib=$(mib_between "$START_LSN" "pg_current_wal_lsn()") || bench_die "cannot read the WAL position"
  [ "$done_mib" -lt "$WAL_MIB" ] || break
  pgbench_for 10
done
TARGET=$(pg_psql "$PORT" "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'")
TARGET_LSN=$(pg_psql "$PORT" "SELECT pg_current_wal_lsn()")
pgbench_for 3  # commits after the target: recovery stops at it, not at the end of the WAL
GEN_SECS=$(bench_since "$T_GEN")
WAL_TO_TARGET=$(mib_between "$START_LSN" "'$TARGET_LSN'")
LAST=$(pg_psql "$PORT" "SELECT pg_walfile_name(pg_current_wal_lsn())")
pg_psql "$PORT" "SELECT pg_switch_wal()" >/dev/null
bench_log "waiting for the archive to catch up with $LAST"
for _ in $(seq 1 1200); do
  [ "$(pg_psql "$PORT" "SELECT coalesce(last_archived_wal >= '$LAST', false) FROM pg_stat_archiver")" = t ] && break
  sleep 0.5
done
[ "$(pg_psql "$PORT" "SELECT coalesce(last_archived_wal >= '$LAST', false) FROM pg_stat_archiver")" = t ] ||
  bench_die "archiving did not catch up"
pg_stop "$SRC"
bench_log "target $TARGET ($TARGET_LSN, $WAL_TO_TARGET MiB of WAL after the backup, made in ${GEN_SECS}s)"
BF_DU=$(bench_du "$BF")
BR_DU=$(bench_du "$BR")

# ---------------------------------------------------------------- measurements
# answer PORT: waits for a read-write server that answers a primary-key query; prints its
# count of pgbench_history rows (every method and run must stop at the same transaction).
answer() {
  local port=$1
  for _ in $(seq 1 60000); do
    if [ "$(pg_psql "$port" "SELECT pg_is_in_recovery()" 2>/dev/null)" = f ] &&
      [ -n "$(pg_psql "$port" "SELECT abalance FROM pgbench_accounts WHERE aid = 4242" 2>/dev/null)" ]; then
      pg_psql "$port" "SELECT count(*) FROM pgbench_history"
      return 0
    fi
    sleep 0.05
  done
  return 1
}
declare -A V
put() { V[$1]="${V[$1]:-} $2"; }
REF_ROWS=
check_rows() {  # METHOD ROWS
  [ -n "$REF_ROWS" ] || REF_ROWS=$2
  [ "$2" = "$REF_ROWS" ] || bench_die "$1 recovered $2 pgbench_history rows, another method $REF_ROWS"
}

# Each run_* sets SECS (not run in $(...): what it defers and records must reach this shell).
run_clone() {  # NAME [--materialize]
  local name=$1 t0 port extra=${2:-} t1 rows
  bench_drop_caches
  t0=$(bench_now)
  # shellcheck disable=SC2086  # extra: zero or one word
  "$PGBACKFS" clone create "$BF" "$name" --target-time "$TARGET" $extra >"$W/$name.out" 2>&1 ||
    { cat "$W/$name.out" >&2; bench_die "clone create $name failed"; }
  t1=$(bench_now)
  port=$(grep -E '^port = ' "$MNT/clones/$name/postgresql.auto.conf" | tail -1 | awk '{print $3}')
  as_pg "$PGBIN/pg_ctl" -D "$MNT/clones/$name" -l "$W/$name.log" -w -t 3600 start >/dev/null ||
    { tail -20 "$W/$name.log" >&2; bench_die "clone $name did not start"; }
  bench_defer "runuser -u postgres -- '$PGBIN/pg_ctl' -D '$MNT/clones/$name' -m immediate -w stop"
  rows=$(answer "$port") || bench_die "clone $name never answered"
  SECS=$(bench_since "$t0")
  check_rows "$name" "$rows"
  if [ -n "$extra" ]; then
    ! grep -q "redo starts at" "$W/$name.log" || bench_die "materialized clone $name replayed WAL at start"
    bench_log "  $name: $(grep -o 'replayed the WAL .*' "$W/$name.out" | grep -o 'in [0-9.]* s, shut down in [0-9.]* s')"
    put mat.replay "$(python3 -c "print(f'{$t1 - $t0:.2f}')")"
    put mat.start "$(python3 -c "print(f'{$SECS - ($t1 - $t0):.2f}')")"
  fi
  pg_stop "$MNT/clones/$name"
  "$PGBACKFS" clone drop "$BF" "$name" >/dev/null
}

run_pgbackrest() {  # DIR
  local dir=$1 t0 port rows
  rm -rf "$dir"
  mkdir -p "$dir" && chown postgres "$dir" && chmod 700 "$dir"
  port=$(bench_free_port)
  bench_drop_caches
  t0=$(bench_now)
  pgbr --pg1-path="$dir" --type=time "--target=$TARGET" --target-action=promote restore \
    >"$W/pgbackrest-restore.out" 2>&1 || { cat "$W/pgbackrest-restore.out" >&2; bench_die "pgbackrest restore failed"; }
  # Its restore_command (pgbackrest archive-get) finds the configuration through the environment.
  as_pg env PGBACKREST_CONFIG="$CONF" "$PGBIN/pg_ctl" -D "$dir" -l "$W/pgbackrest-restore.log" -w -t 3600 start \
    -o "-p $port -k $W -c listen_addresses=127.0.0.1 -c archive_mode=off" >/dev/null ||
    { tail -20 "$W/pgbackrest-restore.log" >&2; bench_die "the restored copy did not start"; }
  bench_defer "runuser -u postgres -- '$PGBIN/pg_ctl' -D '$dir' -m immediate -w stop"
  rows=$(answer "$port") || bench_die "the restored copy never answered"
  SECS=$(bench_since "$t0")
  check_rows pgbackrest "$rows"
  pg_stop "$dir"
  rm -rf "$dir"
}

for ((run = 1; run <= RUNS; run++)); do
  order=(clone materialize pgbackrest)
  for ((k = 0; k < (run - 1) % 3; k++)); do order=("${order[@]:1}" "${order[0]}"); done
  bench_log "run $run of $RUNS: ${order[*]}"
  for m in "${order[@]}"; do
    case $m in
      clone) run_clone "pitr$run" ;;
      materialize) run_clone "mat$run" --materialize ;;
      pgbackrest) run_pgbackrest "$W/restore" ;;
    esac
    put "$m" "$SECS"
    bench_log "  $m: ${SECS}s"
  done
done

# ---------------------------------------------------------------- report
stats_of() { local -a vals; read -ra vals <<<"${V[$1]}"; bench_stats "${vals[@]}"; }
cell() { local m s; read -r m s < <(stats_of "$1"); printf '%.1f ±%.1f' "$m" "$s"; }
med() { stats_of "$1" | cut -d' ' -f1; }
ratio() { python3 -c "print(f'{$(med "$1") / $(med "$2"):.2f}')"; }
LOAD1=$(cut -d' ' -f1-3 /proc/loadavg)
cat <<EOF

== PITR: time to a running server at a target $WAL_TO_TARGET MiB of WAL after the backup
data: pgbench scale $SCALE + $TEXT_MB MB text (database $DB_SIZE); $(nproc) cores; load $LOAD0 -> $LOAD1
repositories on disk (backup + archived WAL): pgbackfs $((BF_DU >> 20)) MiB, pgBackRest $((BR_DU >> 20)) MiB
median ±spread (max-min) of $RUNS runs, seconds; values: clone [${V[clone]} ], materialize [${V[materialize]} ], pgbackrest [${V[pgbackrest]} ]

| | seconds | vs pgBackRest |
| --- | --- | --- |
| pgbackfs clone --target-time + pg_ctl start (postgres replays) | $(cell clone) | $(ratio clone pgbackrest) |
| pgbackfs clone --target-time --materialize + pg_ctl start | $(cell materialize) | $(ratio materialize pgbackrest) |
|   of which clone create --materialize | $(cell mat.replay) | |
|   of which pg_ctl start to the first answer | $(cell mat.start) | |
| pgbackrest restore --type=time + pg_ctl start | $(cell pgbackrest) | 1 |
EOF
