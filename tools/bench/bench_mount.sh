#!/usr/bin/env bash
# Mount benchmark (issue 3): the mount's hot paths, each side by side with its baseline in the
# same run, repeated, in alternating order.
#
# Usage: tools/bench/bench_mount.sh [--runs R] [--parts read,archive,cli] [--size-mib M]
#                                   [--segments N] [--cli-segments K] [--keep]
#   --runs R          repetitions of every measurement (default 3); medians and spreads are shown
#   --parts LIST      any of read, archive, cli (default all three)
#   --size-mib M      size of the file read in part read (default 1024)
#   --segments N      WAL segments archived in part archive (default 200)
#   --cli-segments K  segments pushed by `pgbackfs archive-push` in part cli (default 50)
#   --keep            keep the work directory (under $BENCH_TMP, default /var/tmp)
# Environment: PGBACKFS (default build/pgbackfs), MKSNAP (default
# build/tests/pgbackfs_make_snapshot), BENCH_TMP. Needs root, PostgreSQL 15 and pgBackRest.
#
# read     A file of M MiB that compresses about 2.5x (half random base64, half repeated text) is
#          stored as a snapshot. Each run reads it with `dd bs=1M` from local disk and through
#          MOUNT/backups/<id>, the page cache dropped before each read (cold), in alternating
#          order; then once more through the mount with the page cache kept (warm).
# archive  N real WAL segments (pgbench -i -s 200, plus updates if that falls short), read into
#          the page cache first. Each run, into fresh repositories, in alternating order: `cp` of
#          each segment into MOUNT/wal, one cp after the other (what archive_command =
#          'cp %p MOUNT/wal/%f' does), and `pgbackrest archive-push` of each (what its
#          archive_command does), one process per segment.
# cli      `pgbackfs archive-push REPO PATH` without a mount, one process per segment.
#
# pgBackRest 2.45 settings: compress-type=zst with compress-level=3 (its default for zst, and
# pgbackfs's default zstd:3), archive-async=n (its default: each archive-push compresses and
# stores one segment, so process-max, which applies to the async queue only, stays at 1).
#
# CPU: wall time on a loaded machine follows the CPU share each tool gets; the CPU seconds used
# (pgbackfs: the cp processes plus the daemon; pgBackRest: its processes) are shown as well.
# Memory: the daemon's RSS (and its peak, VmHWM) against its configured caches: chunk cache
# 64 MiB, directory cache 32 MiB, RocksDB block cache 64 MiB (`pgbackfs mount` defaults);
# the target is caches + 64 MiB = 224 MiB.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
source "$ROOT/tools/bench/lib.sh"

RUNS=3
PARTS=read,archive,cli
SIZE_MIB=1024
NSEG=200
NSEG_CLI=50
SCALE=200
while [ $# -gt 0 ]; do
  case $1 in
    --runs) RUNS=$2; shift 2 ;;
    --parts) PARTS=$2; shift 2 ;;
    --size-mib) SIZE_MIB=$2; shift 2 ;;
    --segments) NSEG=$2; shift 2 ;;
    --cli-segments) NSEG_CLI=$2; shift 2 ;;
    --keep) export BENCH_KEEP=1; shift ;;
    -h|--help) sed -n '2,34p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
PGBACKFS=$(readlink -f "${PGBACKFS:-$ROOT/build/pgbackfs}")
MKSNAP=$(readlink -f "${MKSNAP:-$ROOT/build/tests/pgbackfs_make_snapshot}")
[ -x "$PGBACKFS" ] && [ -x "$MKSNAP" ] || bench_die "build first: $PGBACKFS, $MKSNAP"
command -v pgbackrest >/dev/null || bench_die "pgbackrest is not installed"
[ "$(id -u)" = 0 ] || bench_die "run as root (mount, drop_caches; postgres runs as user postgres)"
readonly CACHES_MIB=$((64 + 32 + 64))

LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
bench_workdir
W=$BENCH_W

declare -A V  # V[key] = space-separated values, one a run
put() { V[$1]="${V[$1]:-} $2"; }
calc() { python3 -c "print(f'{$1:.${2:-2}f}')"; }
proc_cpu() { awk '{printf "%.2f\n", ($14 + $15) / 100}' "/proc/$1/stat"; }  # utime + stime, s
proc_mib() { awk -v k="$2:" '$1 == k {print int($2 / 1024)}' "/proc/$1/status"; }

# mount_repo REPO MNT: mounts, registers the unmount, prints the daemon's pid.
mount_repo() {
  local out pid
  out=$("$PGBACKFS" mount "$1" "$2" --owner postgres --allow-other)
  pid=$(sed -n 's/.*daemon pid \([0-9]*\).*/\1/p' <<<"$out")
  [ -n "$pid" ] || bench_die "no daemon pid in: $out"
  bench_defer "'$PGBACKFS' umount '$2'"
  echo "$pid"
}
umount_repo() { "$PGBACKFS" umount "$1" >/dev/null; }

echo "== pgbackfs mount benchmark ($(nproc) cores, kernel $(uname -r), $RUNS runs)"
echo "load average at the start: $LOAD0"

# ---------------------------------------------------------------- 1. sequential read
if [[ $PARTS == *read* ]]; then
  bench_log "read: writing a ${SIZE_MIB} MiB file that compresses about 2.5x"
  mkdir -p "$W/src" "$W/mnt"
  python3 - "$W/src/big" "$SIZE_MIB" <<'PY'
import base64, os, sys
path, mib = sys.argv[1], int(sys.argv[2])
with open(path, 'wb') as f:
    text = b''.join(b'row %08d | some text that repeats from page to page |\n' % i for i in range(60))
    for block in range(mib * 128):  # 8 KiB blocks: half random (base64), half text
        f.write(base64.b64encode(os.urandom(3072)))
        f.write(text[:4096])
PY
  BYTES=$(stat -c %s "$W/src/big")
  "$PGBACKFS" init "$W/repo" >/dev/null
  ID=$("$MKSNAP" "$W/repo" "$W/src")
  DAEMON=$(mount_repo "$W/repo" "$W/mnt")
  FILE=$W/mnt/backups/$ID/big
  # read_mbps FILE: MB/s of a sequential read with 1 MiB requests
  read_mbps() {
    local t0
    t0=$(bench_now)
    dd if="$1" of=/dev/null bs=1M status=none
    calc "$BYTES / 1e6 / $(bench_since "$t0")" 0
  }
  read_local() { bench_drop_caches; put read.local "$(read_mbps "$W/src/big")"; }
  read_mount() {
    bench_drop_caches
    local c0
    c0=$(proc_cpu "$DAEMON")
    put read.mount "$(read_mbps "$FILE")"
    put read.cpu "$(calc "$(proc_cpu "$DAEMON") - $c0")"
  }
  for ((run = 1; run <= RUNS; run++)); do
    if ((run % 2)); then read_local; read_mount; else read_mount; read_local; fi
    put read.warm "$(read_mbps "$FILE")"
    put read.rss "$(proc_mib "$DAEMON" VmRSS)"
    bench_log "  run $run: local ${V[read.local]##* } MB/s, mount ${V[read.mount]##* } MB/s"
  done
  cmp "$W/src/big" "$FILE" || bench_die "the file read through the mount differs"
  READ_HWM=$(proc_mib "$DAEMON" VmHWM)
  umount_repo "$W/mnt"
  rm -rf "$W/repo"
fi

# ---------------------------------------------------------------- 2. archiving
if [[ $PARTS == *archive* || $PARTS == *cli* ]]; then
  bench_log "archive: generating WAL (pgbench -i -s $SCALE, archive_command copying to a directory)"
  PG=$W/pg
  PORT=$(bench_free_port)
  mkdir -p "$W/segs" && chown postgres "$W/segs"
  pg_initdb "$PG"
  pg_start "$PG" "$PORT" -c wal_level=replica -c archive_mode=on \
    -c "archive_command=cp %p $W/segs/%f" -c max_wal_size=4GB
  as_pg "$PGBIN/pgbench" -h 127.0.0.1 -p "$PORT" -U postgres -i -s "$SCALE" -q postgres \
    >/dev/null 2>&1 || bench_die "pgbench -i failed"
  nsegs() { find "$W/segs" -regextype egrep -regex '.*/[0-9A-F]{24}' | wc -l; }
  WANT=$((NSEG > NSEG_CLI ? NSEG : NSEG_CLI))
  for _ in $(seq 1 20); do  # more WAL if pgbench -i was not enough
    [ "$(nsegs)" -ge "$WANT" ] && break
    pg_psql "$PORT" "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 10 = 0"
    pg_psql "$PORT" "SELECT pg_switch_wal()" >/dev/null
  done
  for _ in $(seq 1 600); do
    [ "$(nsegs)" -ge "$WANT" ] && break
    sleep 1
  done
  pg_stop "$PG"
  mapfile -t ALL < <(find "$W/segs" -regextype egrep -regex '.*/[0-9A-F]{24}' -printf '%f\n' | sort)
  [ "${#ALL[@]}" -ge "$WANT" ] || bench_die "only ${#ALL[@]} segments"
  chmod 755 "$W/segs" && chmod 644 "$W"/segs/*
  SEGS=("${ALL[@]:0:$NSEG}")
  warm_segments() { cat "${SEGS[@]/#/$W/segs/}" >/dev/null; }  # both tools read them cached

  CONF=$W/pgbackrest.conf
  cat >"$CONF" <<EOF
[global]
repo1-path=$W/pgbr
log-path=$W/pgbr-log
lock-path=$W/pgbr-lock
spool-path=$W/pgbr-spool
compress-type=zst
compress-level=3
archive-async=n
log-level-console=warn
log-level-file=warn

[bench]
pg1-path=$PG
pg1-port=$PORT
pg1-socket-path=$W
EOF
  chmod 644 "$CONF"
  pgbr() { runuser -u postgres -- pgbackrest --config="$CONF" --stanza=bench "$@"; }
fi

if [[ $PARTS == *archive* ]]; then
  MB=$(calc "$NSEG * 16 * 1.048576" 1)
  archive_cp() {
    rm -rf "$W/repo2" && mkdir -p "$W/mnt2"
    "$PGBACKFS" init "$W/repo2" >/dev/null
    local daemon c0 secs cpu
    daemon=$(mount_repo "$W/repo2" "$W/mnt2")
    warm_segments
    c0=$(proc_cpu "$daemon")
    bench_timed "$W/time" bash -c 'for s in "${@:3}"; do cp "$1/$s" "$2/$s" || exit 1; done' \
      x "$W/segs" "$W/mnt2/wal" "${SEGS[@]}" || bench_die "cp into the mount failed"
    read -r secs cpu <"$W/time"
    put cp.time "$secs"
    put cp.cpu "$(calc "$cpu + $(proc_cpu "$daemon") - $c0")"
    put cp.rss "$(proc_mib "$daemon" VmRSS)"
    put cp.hwm "$(proc_mib "$daemon" VmHWM)"
    umount_repo "$W/mnt2"
    # What the chunks and records take (RocksDB's live files and memtables), and what the
    # directory takes on disk now, with RocksDB's log of data already flushed still there.
    put cp.stored "$("$PGBACKFS" info "$W/repo2" --json |
      python3 -c "import json,sys; print(json.load(sys.stdin)['stored_bytes'] >> 20)")"
    put cp.du "$(($(bench_du "$W/repo2/db") >> 20))"
    bench_log "  cp into MOUNT/wal: ${secs}s"
  }
  archive_pgbr() {
    rm -rf "$W/pgbr" "$W/pgbr-log" "$W/pgbr-lock" "$W/pgbr-spool"
    mkdir -p "$W/pgbr" "$W/pgbr-log" "$W/pgbr-lock" "$W/pgbr-spool"
    chown postgres "$W/pgbr" "$W/pgbr-log" "$W/pgbr-lock" "$W/pgbr-spool"
    pgbr --no-online stanza-create >/dev/null
    warm_segments
    local secs cpu
    bench_timed "$W/time" bash -c \
      'c=$1; shift; d=$1; shift; for s in "$@"; do
         runuser -u postgres -- pgbackrest --config="$c" --stanza=bench archive-push "$d/$s" || exit 1
       done' x "$CONF" "$W/segs" "${SEGS[@]}" || bench_die "pgbackrest archive-push failed"
    read -r secs cpu <"$W/time"
    put br.time "$secs"
    put br.cpu "$cpu"
    put br.du "$(($(bench_du "$W/pgbr/archive") >> 20))"
    bench_log "  pgbackrest archive-push: ${secs}s"
  }
  for ((run = 1; run <= RUNS; run++)); do
    bench_log "archive run $run of $RUNS"
    if ((run % 2)); then archive_cp; archive_pgbr; else archive_pgbr; archive_cp; fi
    put ratio "$(calc "${V[br.time]##* } / ${V[cp.time]##* }")"
  done
fi

if [[ $PARTS == *cli* ]]; then
  CLI=("${ALL[@]:0:$NSEG_CLI}")
  for ((run = 1; run <= RUNS; run++)); do
    rm -rf "$W/repo3"
    "$PGBACKFS" init "$W/repo3" >/dev/null
    cat "${CLI[@]/#/$W/segs/}" >/dev/null
    bench_timed "$W/time" bash -c 'p=$1; r=$2; d=$3; shift 3
      for s in "$@"; do "$p" archive-push "$r" "$d/$s" || exit 1; done' \
      x "$PGBACKFS" "$W/repo3" "$W/segs" "${CLI[@]}" || bench_die "pgbackfs archive-push failed"
    read -r secs cpu <"$W/time"
    put cli.rate "$(calc "$NSEG_CLI / $secs")"
    put cli.cpu "$(calc "$cpu * 1000 / $NSEG_CLI" 0)"
    bench_log "  pgbackfs archive-push run $run: ${secs}s"
  done
fi

# ---------------------------------------------------------------- report
cell() {  # median ±spread of V[$1]
  local -a v
  local m s
  read -ra v <<<"${V[$1]}"
  read -r m s < <(bench_stats "${v[@]}")
  echo "$m ±$s"
}
per() {  # V[$1] values turned into $2 / value, as a cell
  local -a v out=()
  local x
  read -ra v <<<"${V[$1]}"
  for x in "${v[@]}"; do out+=("$(calc "$2 / $x")"); done
  local m s
  read -r m s < <(bench_stats "${out[@]}")
  echo "$m ±$s"
}

echo
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "all figures: median ±spread (max - min) of $RUNS runs"
if [[ $PARTS == *read* ]]; then
  read -ra local_v <<<"${V[read.local]}"
  read -ra mount_v <<<"${V[read.mount]}"
  ratios=()
  for i in "${!local_v[@]}"; do ratios+=("$(calc "${mount_v[$i]} / ${local_v[$i]}")"); done
  echo
  echo "sequential read of a $SIZE_MIB MiB file (dd bs=1M)"
  echo "  local disk, cold            $(cell read.local) MB/s"
  echo "  MOUNT/backups, cold         $(cell read.mount) MB/s   daemon CPU $(cell read.cpu) s"
  echo "  ratio mount / local (cold)  $(bench_stats "${ratios[@]}" | awk '{print $1 " ±" $2}')   (target >= 0.5); runs: ${ratios[*]}"
  echo "  runs, local / mount MB/s:  ${V[read.local]} /${V[read.mount]}"
  echo "  MOUNT/backups, warm         $(cell read.warm) MB/s   (kernel page cache kept: keep_cache)"
  echo "  daemon RSS after the reads  $(cell read.rss) MiB, peak $READ_HWM MiB" \
    "(caches $CACHES_MIB MiB; target <= $((CACHES_MIB + 64)))"
  echo "  (a local read far above the disk's speed came from the hypervisor's cache, which"
  echo "   dropping the guest's page cache does not empty)"
fi
if [[ $PARTS == *archive* ]]; then
  echo
  echo "archiving $NSEG WAL segments ($MB MB), one command per segment, as archive_command does"
  echo "  cp into MOUNT/wal            $(cell cp.time) s   $(per cp.time "$NSEG") segments/s" \
    "  $(per cp.time "$MB") MB/s   CPU $(cell cp.cpu) s   stored $(cell cp.stored) MiB" \
    "(du $(cell cp.du) MiB)"
  echo "  pgbackrest archive-push      $(cell br.time) s   $(per br.time "$NSEG") segments/s" \
    "  $(per br.time "$MB") MB/s   CPU $(cell br.cpu) s   repository $(cell br.du) MiB"
  echo "  ratio (segment rate, pgbackfs / pgbackrest): $(cell ratio)   (target >= 2); runs:${V[ratio]}"
  echo "  daemon RSS after archiving   $(cell cp.rss) MiB, peak $(cell cp.hwm) MiB"
fi
if [[ $PARTS == *cli* ]]; then
  echo
  echo "pgbackfs archive-push REPO PATH (no mount), $NSEG_CLI segments, one process each"
  echo "  $(cell cli.rate) segments/s, $(cell cli.cpu) ms CPU per segment"
fi
