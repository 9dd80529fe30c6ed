#!/usr/bin/env bash
# Clone benchmark: PostgreSQL 15 on a pgbackfs clone against a copy restored by pgBackRest 2.45,
# from the same data, backed up by both tools in the same run.
#
# Usage: tools/bench/bench_clone.sh [--scales "10 100"] [--runs R] [--text-mb-per-scale M]
#                                   [--seconds S] [--keep]
#   --scales LIST  pgbench scales to measure, each with its own data set (default "10 100")
#   --runs R       repetitions per scale (default 2), each on a fresh clone and a fresh restore:
#                  RTO, then TPS and scans on both; the table shows medians
#   --text-mb-per-scale M  MB of random md5 text per scale unit (default 24: scale 10 gets 240 MB),
#                  so that the whole compresses 2-4x as real data does (pgbench alone: ~20x)
#   --seconds S    pgbench -c 2 duration on each copy (default 30)
#   --keep         keep the work directory (under $BENCH_TMP, default /var/tmp)
# Environment: PGBACKFS (default build/pgbackfs), BENCH_TMP.
#
# Per scale, in each run:
#   1. RTO, cold caches: `pgbackfs clone create` + pg_ctl start until a primary-key query is
#      answered by a read-write server, against `pgbackrest restore --type=immediate
#      --target-action=promote` + pg_ctl start until the same query is answered. Both recover the
#      backup to its consistent point from their own archive (the source archives into both).
#   2. pgbench -c 2 -T S on the clone and on the pgBackRest-restored local copy, each restarted
#      with the page cache dropped first (cold: the clone reads through the mount, the local copy
#      from disk), then once more right after (warm). A copy pgBackRest has just written sits in
#      the page cache, so without the restart and drop it would be compared warm against a cold
#      clone.
#   3. cold scans of pgbench_accounts on each: restart, drop caches, count(*) twice (the first
#      one also sets the hint bits of the rows pgbench changed, which with data checksums writes
#      a full-page image to WAL for each such page; the second reads the page cache); then
#      CHECKPOINT, restart, drop caches, and a clean cold count(*) that only reads (the planner
#      makes it a parallel index-only scan with heap fetches of the changed pages); then restart,
#      drop caches, and a cold sequential scan of the table (index scans turned off).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
source "$ROOT/tools/bench/lib.sh"

SCALES="10 100"
RUNS=2
TEXT_PER_SCALE=24
SECONDS_TPS=30
while [ $# -gt 0 ]; do
  case $1 in
    --scales) SCALES=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --text-mb-per-scale) TEXT_PER_SCALE=$2; shift 2 ;;
    --seconds) SECONDS_TPS=$2; shift 2 ;;
    --keep) export BENCH_KEEP=1; shift ;;
    -h|--help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
PGBACKFS=$(readlink -f "${PGBACKFS:-$ROOT/build/pgbackfs}")
[ -x "$PGBACKFS" ] || bench_die "no pgbackfs binary at '$PGBACKFS' (build it: ./tools/build.sh)"
command -v pgbackrest >/dev/null || bench_die "pgbackrest is not installed"
command -v jq >/dev/null || bench_die "jq is not installed"
[ "$(id -u)" = 0 ] || bench_die "run as root (mount, drop_caches; postgres runs as user postgres)"

LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
bench_workdir
W=$BENCH_W

port_of() { grep -E "^port = " "$1/postgresql.auto.conf" | tail -1 | awk '{print $3}'; }
# first_answer PORT: until a read-write server answers a primary-key lookup (10 ms polls).
first_answer() {
  local i
  for i in $(seq 1 60000); do
    [ "$(pg_psql "$1" "SELECT abalance = 0 OR true FROM pgbench_accounts WHERE aid = 4242" 2>/dev/null)" = t ] &&
      [ "$(pg_psql "$1" "SELECT pg_is_in_recovery()" 2>/dev/null)" = f ] && return 0
    sleep 0.01
  done
  return 1
}
# pg_up DIR LOG: pg_ctl start with the data directory's own settings (a clone's port, ...);
# pgBackRest's restore_command needs its configuration.
pg_up() {
  as_pg env PGBACKREST_CONFIG="$CONF" "$PGBIN/pg_ctl" -D "$1" -l "$2" -w -t 900 start >/dev/null ||
    { tail -20 "$2" >&2; return 1; }
  bench_defer "runuser -u postgres -- '$PGBIN/pg_ctl' -D '$1' -m immediate -w stop"
}
tps() {
  as_pg "$PGBIN/pgbench" -h 127.0.0.1 -p "$1" -U postgres -c 2 -T "$SECONDS_TPS" postgres 2>/dev/null |
    sed -n 's/^tps = \([0-9.]*\) .*/\1/p'
}
# scan DIR LOG PORT: restart (empty shared_buffers), drop caches, two timed count(*); then
# checkpoint, restart, drop caches, and a third one that finds every hint bit set; then restart,
# drop caches, and a sequential scan of the whole table. The planner answers count(*) with a
# parallel index-only scan of the primary key, which also fetches the heap pages the visibility
# map does not mark all-visible (the rows pgbench changed, at the end of the table) one 8 kB page
# at a time; the sequential scan reads the heap in order, as a full table scan does.
SEQSCAN="SET enable_indexscan = off; SET enable_indexonlyscan = off; SET enable_bitmapscan = off;
  SELECT sum(abalance) FROM pgbench_accounts"
scan() {
  local a b c d e
  restart_cold "$1" "$2"
  a=$(bench_now)
  pg_psql "$3" "SELECT count(*) FROM pgbench_accounts" >/dev/null
  b=$(bench_now)
  pg_psql "$3" "SELECT count(*) FROM pgbench_accounts" >/dev/null
  c=$(bench_now)
  pg_psql "$3" "CHECKPOINT" >/dev/null
  restart_cold "$1" "$2"
  d=$(bench_now)
  pg_psql "$3" "SELECT count(*) FROM pgbench_accounts" >/dev/null
  d=$(python3 -c "print(f'{$(bench_now) - $d:.3f}')")
  restart_cold "$1" "$2"
  e=$(bench_now)
  pg_psql "$3" "$SEQSCAN" >/dev/null
  python3 -c "print(f'{$b - $a:.3f} {$c - $b:.3f} {$d} {$(bench_now) - $e:.3f}')"
}
restart_cold() {
  pg_stop "$1"
  bench_drop_caches
  as_pg env PGBACKREST_CONFIG="$CONF" "$PGBIN/pg_ctl" -D "$1" -l "$2" -w -t 900 start >/dev/null
}
r3() { python3 -c "print(f'{$1:.3f}')"; }

declare -A V
put() { V[$1]="${V[$1]:-} $2"; }
med() { local -a v; read -ra v <<<"${V[$1]}"; bench_stats "${v[@]}" | cut -d' ' -f1; }
cell() { local -a v m s; read -ra v <<<"${V[$1]}"; read -r m s < <(bench_stats "${v[@]}"); echo "$m ±$s"; }

for SCALE in $SCALES; do
  S=$W/s$SCALE
  mkdir -p "$S" && chown postgres "$S"
  REPO=$S/repo MNT=$S/mnt SRC=$S/src BR=$S/pgbackrest-repo CONF=$S/pgbackrest.conf
  TEXT_MB=$((SCALE * TEXT_PER_SCALE))
  "$PGBACKFS" init "$REPO" >/dev/null
  mkdir -p "$MNT"
  out=$("$PGBACKFS" mount "$REPO" "$MNT" --owner postgres --allow-other)
  daemon=$(sed -n 's/.*daemon pid \([0-9]*\).*/\1/p' <<<"$out")
  bench_defer "'$PGBACKFS' umount '$MNT' || kill -9 $daemon"

  PORT=$(bench_free_port)
  cat >"$CONF" <<EOF
[global]
repo1-path=$BR
repo1-retention-full=99
compress-type=zst
process-max=2
start-fast=y
log-path=$S/pgbackrest-log
lock-path=$S/pgbackrest-lock
spool-path=$S/pgbackrest-spool
log-level-console=warn
log-level-file=info

[bench]
pg1-path=$SRC
pg1-port=$PORT
pg1-socket-path=$W
pg1-user=postgres
EOF
  chmod 644 "$CONF"
  mkdir -p "$BR" "$S/pgbackrest-log" && chown postgres "$BR" "$S/pgbackrest-log"
  pgbr() { runuser -u postgres -- env PGBACKREST_CONFIG="$CONF" pgbackrest --stanza=bench "$@"; }

  bench_log "scale $SCALE: pgbench -i + $TEXT_MB MB of md5 text, archived into both repositories"
  pg_initdb "$SRC"
  # Each segment goes to both archives; a retried cp of the same bytes succeeds.
  PG_START_ENV="PGBACKREST_CONFIG=$CONF" pg_start "$SRC" "$PORT" -c autovacuum=off \
    -c max_wal_size=4GB -c archive_mode=on \
    -c "archive_command=cp %p $MNT/wal/%f && pgbackrest --stanza=bench archive-push %p"
  pgbr stanza-create >/dev/null
  bench_make_dataset "$PORT" "$SCALE" "$TEXT_MB"
  DB_SIZE=$(pg_psql "$PORT" "SELECT pg_database_size('postgres')")
  "$PGBACKFS" backup "$REPO" -d "host=127.0.0.1 port=$PORT user=postgres" --fast-checkpoint \
    >/dev/null
  SNAP=$("$PGBACKFS" list "$REPO" --json | jq -r '.snapshots[-1].id')
  pgbr backup --type=full >/dev/null
  pg_psql "$PORT" "SELECT pg_switch_wal()" >/dev/null
  pg_stop "$SRC"
  put "s$SCALE.dbsize" "$DB_SIZE"
  bench_log "scale $SCALE: database $((DB_SIZE >> 20)) MiB, zstd -3 ratio $(bench_zstd_ratio "$SRC")"

  CPORT=0 LPORT=0
  for ((run = 1; run <= RUNS; run++)); do
    # Alternate the order so that neither tool always runs first after the data set.
    for tool in $( ((run % 2)) && echo "clone local" || echo "local clone"); do
      if [ "$tool" = clone ]; then
        [ "$run" -gt 1 ] && { pg_stop "$MNT/clones/c$SCALE"; "$PGBACKFS" clone drop "$REPO" "c$SCALE" >/dev/null; }
        bench_drop_caches
        t0=$(bench_now)
        "$PGBACKFS" clone create "$REPO" "c$SCALE" --from "$SNAP" >/dev/null
        put "s$SCALE.rto.clone.create" "$(bench_since "$t0")"
        pg_up "$MNT/clones/c$SCALE" "$S/clone.log"
        put "s$SCALE.rto.clone.started" "$(bench_since "$t0")"
        CPORT=$(port_of "$MNT/clones/c$SCALE")
        first_answer "$CPORT" || bench_die "the clone did not answer"
        put "s$SCALE.rto.clone" "$(bench_since "$t0")"
        cp "$S/clone.log" "$S/clone-run$run.log"
      else
        LOCAL=$S/local
        [ "$run" -gt 1 ] && { pg_stop "$LOCAL"; rm -rf "$LOCAL"; }
        LPORT=$(bench_free_port)
        bench_drop_caches
        t0=$(bench_now)
        mkdir -p "$LOCAL" && chown postgres "$LOCAL" && chmod 700 "$LOCAL"
        pgbr restore --pg1-path="$LOCAL" --type=immediate --target-action=promote >/dev/null
        put "s$SCALE.rto.local.restored" "$(bench_since "$t0")"
        printf "port = %s\narchive_mode = 'off'\n" "$LPORT" >>"$LOCAL/postgresql.auto.conf"
        pg_up "$LOCAL" "$S/local.log"
        first_answer "$LPORT" || bench_die "the pgBackRest copy did not answer"
        put "s$SCALE.rto.local" "$(bench_since "$t0")"
      fi
    done
    bench_log "scale $SCALE run $run: RTO clone $(echo "${V[s$SCALE.rto.clone]}" | awk '{print $NF}') s," \
      "pgBackRest restore + start $(echo "${V[s$SCALE.rto.local]}" | awk '{print $NF}') s"

    # Load on this run's fresh clone and fresh restore (both running): a single 20-second cold
    # pgbench spreads about as much as the margin it is judged by, so every run measures it.
    bench_log "scale $SCALE run $run: pgbench -c 2 -T $SECONDS_TPS on each, cold then warm"
    pg_stop "$S/local"
    restart_cold "$MNT/clones/c$SCALE" "$S/clone.log"
    as_pg env PGBACKREST_CONFIG="$CONF" "$PGBIN/pg_ctl" -D "$S/local" -l "$S/local.log" -w -t 900 \
      start >/dev/null
    put "s$SCALE.tps.clone" "$(tps "$CPORT")"
    put "s$SCALE.tps.local" "$(tps "$LPORT")"
    put "s$SCALE.tpswarm.clone" "$(tps "$CPORT")"
    put "s$SCALE.tpswarm.local" "$(tps "$LPORT")"
    bench_log "scale $SCALE run $run: cold sequential scans"
    read -r c1 c2 c3 c4 < <(scan "$MNT/clones/c$SCALE" "$S/clone.log" "$CPORT")
    read -r l1 l2 l3 l4 < <(scan "$S/local" "$S/local.log" "$LPORT")
    put "s$SCALE.scan1.clone" "$c1"; put "s$SCALE.scan2.clone" "$c2"; put "s$SCALE.scan3.clone" "$c3"
    put "s$SCALE.scan1.local" "$l1"; put "s$SCALE.scan2.local" "$l2"; put "s$SCALE.scan3.local" "$l3"
    put "s$SCALE.seqscan.clone" "$c4"; put "s$SCALE.seqscan.local" "$l4"
  done

  pg_stop "$MNT/clones/c$SCALE"
  pg_stop "$S/local"
  "$PGBACKFS" umount "$MNT"
  rm -rf "$S/local" "$SRC"
done

echo
echo "== clone benchmark: pgbench scales $SCALES + ${TEXT_PER_SCALE} MB of md5 text per scale unit"
echo "$("$PGBACKFS" --version 2>/dev/null | head -1) (source $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)), $(pgbackrest version)," \
  "PostgreSQL $(as_pg "$PGBIN/postgres" --version | awk '{print $3}'), $(nproc) cores"
echo "load average at the start: $LOAD0, at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "RTO cells: median ±spread over $RUNS run(s), seconds, cold caches; scan cells: clone speed / local speed"
echo
printf '%-7s %-9s %-18s %-26s %-9s %-22s %-22s %-12s %-14s %-14s\n' scale "db MiB" "RTO clone (s)" \
  "RTO pgBackRest+start (s)" "ratio" "TPS clone/local cold" "TPS clone/local warm" \
  "hint count" "cold count(*)" "cold seq scan"
first=
for SCALE in $SCALES; do
  ratio=$(python3 -c "print(f'{$(med s$SCALE.rto.clone) / $(med s$SCALE.rto.local):.3f}')")
  tpsr="$(med s$SCALE.tps.clone)/$(med s$SCALE.tps.local)=$(python3 -c "print(f'{$(med s$SCALE.tps.clone) / $(med s$SCALE.tps.local):.2f}')")"
  tpsw="$(med s$SCALE.tpswarm.clone)/$(med s$SCALE.tpswarm.local)=$(python3 -c "print(f'{$(med s$SCALE.tpswarm.clone) / $(med s$SCALE.tpswarm.local):.2f}')")"
  scanr=$(python3 -c "print(f'{$(med s$SCALE.scan1.local) / $(med s$SCALE.scan1.clone):.2f}')")
  scan3r=$(python3 -c "print(f'{$(med s$SCALE.scan3.local) / $(med s$SCALE.scan3.clone):.2f}')")
  seqr=$(python3 -c "print(f'{$(med s$SCALE.seqscan.local) / $(med s$SCALE.seqscan.clone):.2f}')")
  printf '%-7s %-9s %-18s %-26s %-9s %-22s %-22s %-12s %-14s %-14s\n' "$SCALE" "$(python3 -c "print(round($(med s$SCALE.dbsize) / 1048576))")" \
    "$(cell s$SCALE.rto.clone)" "$(cell s$SCALE.rto.local)" "$ratio" "$tpsr" "$tpsw" "$scanr" "$scan3r" "$seqr"
  [ -z "$first" ] && first=$SCALE
done
for SCALE in $SCALES; do
  [ "$SCALE" = "$first" ] && continue
  echo "RTO growth from scale $first to $SCALE: clone $(python3 -c "print(f'{$(med s$SCALE.rto.clone) / $(med s$first.rto.clone):.2f}')")x" \
    "(target <= 1.5x), pgBackRest restore + start $(python3 -c "print(f'{$(med s$SCALE.rto.local) / $(med s$first.rto.local):.2f}')")x"
done
echo
echo "per-run values:"
for k in $(printf '%s\n' "${!V[@]}" | sort); do printf '  %-22s %s\n' "$k" "${V[$k]}"; done
