#!/usr/bin/env bash
# Backup benchmark, pgbackfs against pgBackRest 2.45 on the same PostgreSQL 15, side by side.
#
# Usage: tools/bench/bench_backup.sh [--scale N] [--runs R] [--text-mb M] [--init-args ARGS] [--keep]
#   --scale N    pgbench scale (default 50)
#   --runs R     repetitions; each prints medians and spread (max - min) (default 3)
#   --text-mb M  size of the random text table (default 30 MB per scale unit, which makes the whole
#                data directory compress about 3x with zstd -3; pgbench alone compresses ~18x)
#   --init-args ARGS  extra arguments for `pgbackfs init` (say "--compression zstd:1")
#   --keep       keep the work directory (under $BENCH_TMP, default /var/tmp)
# Environment: PGBACKFS (default build/pgbackfs), BENCH_TMP.
#
# Each run starts from the same stopped copy of the data set, with fresh repositories, so the runs
# measure the same thing. The order of the two tools alternates between runs. Caches are dropped
# before each backup. Steps of a run:
#   full:        pgbackfs backup --fast-checkpoint | pgbackrest backup --type=full (start-fast)
#   contiguous:  UPDATE 5% of pgbench_accounts (aid <= N/20), CHECKPOINT, a backup with both
#                (pgBackRest --type=incr)
#   spread:      UPDATE aid % 20 = 0 (touches every heap page), CHECKPOINT, a backup with both
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
source "$ROOT/tools/bench/lib.sh"

SCALE=50
RUNS=3
TEXT_MB=
INIT_ARGS=
while [ $# -gt 0 ]; do
  case $1 in
    --scale) SCALE=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --text-mb) TEXT_MB=$2; shift 2 ;;
    --init-args) INIT_ARGS=$2; shift 2 ;;
    --keep) export BENCH_KEEP=1; shift ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
TEXT_MB=${TEXT_MB:-$((SCALE * 30))}
PGBACKFS=$(readlink -f "${PGBACKFS:-$ROOT/build/pgbackfs}")
[ -x "$PGBACKFS" ] || bench_die "no pgbackfs binary at '$PGBACKFS' (build it: BUILD_DIR=build ./tools/build.sh)"
command -v pgbackrest >/dev/null || bench_die "pgbackrest is not installed"
[ "$(id -u)" = 0 ] || bench_die "run as root (postgres runs as user postgres through runuser)"

LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
bench_workdir
W=$BENCH_W
GOLD=$W/gold DATA=$W/data BF=$W/pgbackfs-repo BR=$W/pgbackrest-repo CONF=$W/pgbackrest.conf
PORT=$(bench_free_port)
ROWS=$((SCALE * 100000))

# ---------------------------------------------------------------- data set (once)
bench_log "data set: pgbench scale $SCALE + ${TEXT_MB} MB of md5 text"
pg_initdb "$GOLD"
# wal_recycle=off: no segments recycled ahead for later, a smaller copy of the data directory.
pg_start "$GOLD" "$PORT" -c autovacuum=off -c max_wal_size=4GB -c wal_recycle=off
bench_make_dataset "$PORT" "$SCALE" "$TEXT_MB"

DB_SIZE=$(pg_psql "$PORT" "SELECT pg_database_size('postgres')")
ACC_SIZE=$(pg_psql "$PORT" "SELECT pg_total_relation_size('pgbench_accounts')")
TXT_SIZE=$(pg_psql "$PORT" "SELECT pg_total_relation_size('bench_text')")
pg_stop "$GOLD"
DATA_BYTES=$(du -sb --exclude=pg_wal "$GOLD" | cut -f1)
bench_log "compressing a tar of the data directory with zstd -3"
ZRATIO=$(bench_zstd_ratio "$GOLD")
bench_log "data directory $((DATA_BYTES >> 20)) MiB (pg_wal $(($(du -sb "$GOLD/pg_wal" | cut -f1) >> 20)) MiB), zstd -3 ratio $ZRATIO"

cat >"$CONF" <<EOF
[global]
repo1-path=$BR
repo1-retention-full=99
compress-type=zst
process-max=2
start-fast=y
log-path=$W/pgbackrest-log
lock-path=$W/pgbackrest-lock
spool-path=$W/pgbackrest-spool
log-level-console=warn
log-level-file=info

[bench]
pg1-path=$DATA
pg1-port=$PORT
pg1-socket-path=$W
pg1-user=postgres
EOF
chmod 644 "$CONF"
mkdir -p "$W/pgbackrest-log" && chown postgres "$W/pgbackrest-log"
export PGBACKREST_CONFIG=$CONF
pgbr() { runuser -u postgres -- env PGBACKREST_CONFIG="$CONF" pgbackrest --stanza=bench "$@"; }

# ---------------------------------------------------------------- measurements
declare -A V  # V[key] = space-separated values, one a run

put() { V[$1]="${V[$1]:-} $2"; }

bf_last_json() {
  "$PGBACKFS" list "$BF" --json |
    python3 -c "import json,sys; s=json.load(sys.stdin)['snapshots'][-1]; print(s['$1'])"
}

# backup_bf STEP: one pgbackfs backup; records time, rate, bytes_added, du delta.
backup_bf() {
  local step=$1 before secs cpu srv0
  before=$(bench_du "$BF")
  bench_drop_caches
  srv0=$(bench_pg_cpu "$DATA")
  bench_timed "$W/time" "$PGBACKFS" backup "$BF" -d "host=127.0.0.1 port=$PORT user=postgres" \
    --fast-checkpoint --label "$step" >"$W/bf-$step-$run.out" 2>&1 ||
    { cat "$W/bf-$step-$run.out" >&2; return 1; }
  read -r secs cpu <"$W/time"
  put "bf.$step.cpu" "$cpu"
  put "bf.$step.srvcpu" "$(python3 -c "print(f'{$(bench_pg_cpu "$DATA") - $srv0:.2f}')")"
  local logical added du
  logical=$(bf_last_json logical_size)
  added=$(bf_last_json bytes_added)
  du=$(bench_du "$BF")
  put "bf.$step.time" "$secs"
  put "bf.$step.mbps" "$(python3 -c "print(f'{$logical / 1e6 / $secs:.1f}')")"
  put "bf.$step.added" "$added"
  put "bf.$step.du" "$du"
  put "bf.$step.dudelta" "$((du - before))"
  put "bf.$step.logical" "$logical"
  bench_log "  pgbackfs   $step: ${secs}s, added $((added >> 10)) KiB, repo $((du >> 10)) KiB"
}

# backup_br STEP TYPE: one pgBackRest backup.
backup_br() {
  local step=$1 type=$2 before_b secs cpu srv0
  before_b=$(bench_du "$BR/backup")
  bench_drop_caches
  srv0=$(bench_pg_cpu "$DATA")
  bench_timed "$W/time" runuser -u postgres -- env PGBACKREST_CONFIG="$CONF" pgbackrest \
    --stanza=bench backup --type="$type" >"$W/br-$step-$run.out" 2>&1 ||
    { cat "$W/br-$step-$run.out" >&2; return 1; }
  read -r secs cpu <"$W/time"
  put "br.$step.cpu" "$cpu"
  put "br.$step.srvcpu" "$(python3 -c "print(f'{$(bench_pg_cpu "$DATA") - $srv0:.2f}')")"
  local logical b a
  logical=$(pgbr info --output=json |
    python3 -c "import json,sys; print(json.load(sys.stdin)[0]['backup'][-1]['info']['size'])")
  b=$(bench_du "$BR/backup")
  a=$(bench_du "$BR/archive")
  put "br.$step.time" "$secs"
  put "br.$step.mbps" "$(python3 -c "print(f'{$logical / 1e6 / $secs:.1f}')")"
  put "br.$step.du" "$((a + b))"
  put "br.$step.dubackup" "$b"
  put "br.$step.duarchive" "$a"
  put "br.$step.dudelta" "$((b - before_b))"
  put "br.$step.archdelta" "$((a - BR_ARCHIVE_BEFORE))"  # all the WAL since the last backup
  BR_ARCHIVE_BEFORE=$a
  put "br.$step.logical" "$logical"
  bench_log "  pgBackRest $step: ${secs}s, backup dir +$(((b - before_b) >> 10)) KiB, archive $((a >> 10)) KiB"
}

# both STEP PGBR_TYPE: the two tools, in the order of this run.
both() {
  if ((run % 2)); then
    backup_bf "$1"; backup_br "$1" "$2"
  else
    backup_br "$1" "$2"; backup_bf "$1"
  fi
}

for ((run = 1; run <= RUNS; run++)); do
  bench_log "run $run of $RUNS"
  rm -rf "$DATA" "$BF" "$BR" "$W/pgbackrest-lock" "$W/pgbackrest-spool" "$W"/pgbackrest-log/*
  cp -a "$GOLD" "$DATA"
  mkdir -p "$BR" && chown postgres "$BR"
  PG_START_ENV="PGBACKREST_CONFIG=$CONF" pg_start "$DATA" "$PORT" -c autovacuum=off \
    -c archive_mode=on -c "archive_command=pgbackrest --stanza=bench archive-push %p"
  pgbr stanza-create >/dev/null
  BR_ARCHIVE_BEFORE=$(bench_du "$BR/archive")
  # shellcheck disable=SC2086  # INIT_ARGS is a list of words
  "$PGBACKFS" init "$BF" $INIT_ARGS >/dev/null

  both full full

  pg_psql "$PORT" "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid <= $((ROWS / 20))"
  pg_psql "$PORT" "CHECKPOINT"
  both contiguous incr

  pg_psql "$PORT" "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 20 = 0"
  pg_psql "$PORT" "CHECKPOINT"
  both spread incr

  pg_stop "$DATA"
done

# ---------------------------------------------------------------- report
stats_of() {  # the values of V[$1], as bench_stats prints them
  local -a vals
  read -ra vals <<<"${V[$1]}"
  bench_stats "${vals[@]}"
}
med() { stats_of "$1" | cut -d' ' -f1; }
cell() {  # median ± spread, scaled by $2 (a divisor), $3 decimals
  local m s
  read -r m s < <(stats_of "$1")
  python3 -c "print(f'{$m / $2:.$3f} ±{$s / $2:.$3f}')"
}
ratio() { python3 -c "print(f'{$(med "$1") / $(med "$2"):.3f}')"; }
M=1048576

echo
echo "== backup benchmark: pgbench scale $SCALE + $TEXT_MB MB of md5 text, $RUNS run(s)"
echo "data directory (without pg_wal): $((DATA_BYTES / M)) MiB; database $((DB_SIZE / M)) MiB" \
  "(pgbench_accounts $((ACC_SIZE / M)) MiB, bench_text $((TXT_SIZE / M)) MiB)"
echo "compression ratio of the data directory (tar | zstd -3): ${ZRATIO}x"
echo "$("$PGBACKFS" --version 2>/dev/null | head -1) ($PGBACKFS, source $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null), init ${INIT_ARGS:-with defaults}), $(pgbackrest version)," \
  "PostgreSQL $(as_pg "$PGBIN/postgres" --version | awk '{print $3}'), $(nproc) cores"
echo "load average at the start: $LOAD0, at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "cells: median ±spread (max - min) over $RUNS run(s); sizes in MiB"
echo
printf '%-50s %-20s %-20s\n' "" "pgbackfs" "pgBackRest"
row() { printf '%-50s %-20s %-20s\n' "$1" "$2" "$3"; }
row "full: time (s)" "$(cell bf.full.time 1 2)" "$(cell br.full.time 1 2)"
row "full: CPU s, backup command" "$(cell bf.full.cpu 1 2)" "$(cell br.full.cpu 1 2)"
row "full: CPU s, PostgreSQL (walsender, checkpoint...)" "$(cell bf.full.srvcpu 1 2)" "$(cell br.full.srvcpu 1 2)"
row "full: MB/s (logical size / time)" "$(cell bf.full.mbps 1 1)" "$(cell br.full.mbps 1 1)"
row "full: logical size" "$(cell bf.full.logical $M 1)" "$(cell br.full.logical $M 1)"
row "full: repository on disk (du)" "$(cell bf.full.du $M 1)" "$(cell br.full.du $M 1)"
row "  of which pgBackRest backup/ | archive/" "" "$(med br.full.dubackup | awk -v m=$M '{printf "%.1f", $1/m}') | $(med br.full.duarchive | awk -v m=$M '{printf "%.1f", $1/m}')"
row "full: bytes_added (pgbackfs list --json)" "$(cell bf.full.added $M 1)" ""
for step in contiguous spread; do
  label=$([ $step = contiguous ] && echo "5% contiguous" || echo "spread (aid%20)")
  row "$label: time (s)" "$(cell bf.$step.time 1 2)" "$(cell br.$step.time 1 2)"
  row "$label: CPU s, command + PostgreSQL" "$(cell bf.$step.cpu 1 2) + $(med bf.$step.srvcpu)" "$(cell br.$step.cpu 1 2) + $(med br.$step.srvcpu)"
  row "$label: bytes_added" "$(cell bf.$step.added $M 2)" ""
  row "$label: du delta (pgBackRest: backup/)" "$(cell bf.$step.dudelta $M 2)" "$(cell br.$step.dudelta $M 2)"
  row "$label: pgBackRest archive/ delta (WAL)" "" "$(cell br.$step.archdelta $M 2)"
done
echo
echo "ratios pgbackfs / pgBackRest (of the medians)"
printf '  %-58s %s  (target <= 1)\n' "full backup time" "$(ratio bf.full.time br.full.time)"
printf '  %-58s %s\n' "full backup CPU (command + PostgreSQL)" "$(python3 -c "print(f'{($(med bf.full.cpu) + $(med bf.full.srvcpu)) / ($(med br.full.cpu) + $(med br.full.srvcpu)):.3f}')")"
printf '  %-58s %s  (target <= 1)\n' "repository size after full (du, pgBackRest backup+archive)" \
  "$(ratio bf.full.du br.full.du)"
printf '  %-58s %s\n' "  same, against pgBackRest backup/ only" "$(ratio bf.full.du br.full.dubackup)"
printf '  %-58s %s  (target <= 0.333)\n' "5% contiguous: bytes_added / pgBackRest backup/ delta" \
  "$(ratio bf.contiguous.added br.contiguous.dudelta)"
printf '  %-58s %s\n' "5% contiguous: du delta / pgBackRest backup/ delta" \
  "$(ratio bf.contiguous.dudelta br.contiguous.dudelta)"
printf '  %-58s %s\n' "spread: bytes_added / pgBackRest backup/ delta" \
  "$(ratio bf.spread.added br.spread.dudelta)"
printf '  %-58s %s\n' "incremental time, 5% contiguous" "$(ratio bf.contiguous.time br.contiguous.time)"
echo
echo "per-run values:"
for k in $(printf '%s\n' "${!V[@]}" | sort); do printf '  %-24s %s\n' "$k" "${V[$k]}"; done
