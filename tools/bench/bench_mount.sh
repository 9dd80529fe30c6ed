#!/usr/bin/env bash
# bench_mount.sh [BUILD_DIR]: the mount's two hot paths, side by side with a baseline.
#   1. sequential read of one large file (SIZE_MIB, default 1024) through MOUNT/backups/<id>, with
#      cold caches, against the same file on local disk;
#   2. archiving NSEG (default 200) real WAL segments with `cp` into MOUNT/wal, against
#      `pgbackrest archive-push` (zstd) of the same segments.
# Needs root (drop_caches, mount), PostgreSQL 15 and pgBackRest. Prints figures and ratios.
set -euo pipefail
BUILD=$(readlink -f "${1:-build}")
PGBACKFS=$BUILD/pgbackfs
MKSNAP=$BUILD/tests/pgbackfs_make_snapshot
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
SIZE_MIB=${SIZE_MIB:-1024}
NSEG=${NSEG:-200}
PARTS=${PARTS:-read,archive}  # which parts to run
SCALE=${SCALE:-200}  # pgbench scale; more WAL is written if it falls short of NSEG segments
[ -x "$PGBACKFS" ] && [ -x "$MKSNAP" ] || { echo "build first: $PGBACKFS, $MKSNAP" >&2; exit 2; }

W=$(mktemp -d /tmp/pgbackfs-bench.XXXXXX)
chmod 755 "$W"
CLEAN=()
cleanup() {
  set +e
  for ((i = ${#CLEAN[@]} - 1; i >= 0; i--)); do eval "${CLEAN[$i]}" >/dev/null 2>&1; done
  rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
as_pg() { runuser -u postgres -- "$@"; }
now() { date +%s.%N; }
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
calc() { python3 -c "print(f'{$*:.2f}')"; }
mount_repo() {  # REPO MNT
  local out pid
  out=$("$PGBACKFS" mount "$1" "$2" --owner postgres --allow-other)
  pid=$(sed -n 's/.*daemon pid \([0-9]*\).*/\1/p' <<<"$out")
  CLEAN+=("'$PGBACKFS' umount '$2'; kill -9 $pid")
  echo "$pid"
}

echo "== pgbackfs mount benchmark ($(nproc) cores, kernel $(uname -r))"

# --- 1. sequential read ---------------------------------------------------------------------------
if [[ $PARTS == *read* ]]; then
log "writing a ${SIZE_MIB} MiB file that compresses about 2.5x"
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
"$PGBACKFS" init "$W/repo" >/dev/null
ID=$("$MKSNAP" "$W/repo" "$W/src")
DAEMON=$(mount_repo "$W/repo" "$W/mnt")
FILE=$W/mnt/backups/$ID/big
cmp -n 1048576 "$W/src/big" "$FILE"

read_mbps() {  # FILE: MB/s of a sequential read with 1 MiB requests
  local t0 t1
  t0=$(now)
  dd if="$1" of=/dev/null bs=1M status=none
  t1=$(now)
  calc "$SIZE_MIB * 1.048576 / ($t1 - $t0)"
}
drop_caches
LOCAL=$(read_mbps "$W/src/big")
drop_caches
MOUNT=$(read_mbps "$FILE")
MOUNT_WARM=$(read_mbps "$FILE")
RSS=$(awk '/VmRSS/ {print int($2 / 1024)}' "/proc/$DAEMON/status")
echo
echo "sequential read of a ${SIZE_MIB} MiB file, cold caches (dd bs=1M)"
printf '  local disk            %8s MB/s\n' "$LOCAL"
printf '  MOUNT/backups (cold)  %8s MB/s   ratio mount/local %s\n' "$MOUNT" "$(calc "$MOUNT / $LOCAL")"
printf '  MOUNT/backups (warm)  %8s MB/s   (kernel page cache kept: keep_cache)\n' "$MOUNT_WARM"
printf '  mount daemon RSS after the read: %s MiB\n' "$RSS"
"$PGBACKFS" umount "$W/mnt" >/dev/null
fi

# --- 2. archiving -------------------------------------------------------------------------------
[[ $PARTS == *archive* ]] || exit 0
log "generating WAL: pgbench -i -s $SCALE with archive_command copying to a directory"
PG=$W/pg
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$PG" "$W/segs" "$W/pglog" && chown postgres "$PG" "$W/segs" "$W/pglog" && chmod 700 "$PG"
as_pg "$PGBIN/initdb" -k -A trust -U postgres -D "$PG" >/dev/null
cat >>"$PG/postgresql.conf" <<EOF
port = $PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '/tmp'
wal_level = replica
archive_mode = on
archive_command = 'cp %p $W/segs/%f'
max_wal_size = 4GB
EOF
as_pg "$PGBIN/pg_ctl" -D "$PG" -l "$W/pglog/pg.log" -w start >/dev/null
CLEAN+=("runuser -u postgres -- $PGBIN/pg_ctl -D '$PG' -m immediate stop")
as_pg "$PGBIN/pgbench" -h 127.0.0.1 -p "$PORT" -U postgres -i -s "$SCALE" -q postgres >/dev/null 2>&1
nsegs() { ls "$W/segs" | grep -cE '^[0-9A-F]{24}$'; }
for _ in $(seq 1 20); do  # more WAL if pgbench -i was not enough
  [ "$(nsegs)" -ge "$NSEG" ] && break
  as_pg psql -X -q -h 127.0.0.1 -p "$PORT" -U postgres \
    -c "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 10 = 0" \
    -c "SELECT pg_switch_wal()" >/dev/null
  sleep 2
done
for _ in $(seq 1 600); do
  [ "$(nsegs)" -ge "$NSEG" ] && break
  sleep 1
done
mapfile -t SEGS < <(ls "$W/segs" | grep -E '^[0-9A-F]{24}$' | sort | head -n "$NSEG")
[ "${#SEGS[@]}" -eq "$NSEG" ] || { echo "only ${#SEGS[@]} segments" >&2; exit 1; }
MB=$(calc "$NSEG * 16 * 1.048576")
cat "${SEGS[@]/#/$W/segs/}" >/dev/null  # both tools read the segments from the page cache

log "cp of $NSEG segments into MOUNT/wal"
mkdir -p "$W/mnt2"
"$PGBACKFS" init "$W/repo2" >/dev/null
DAEMON=$(mount_repo "$W/repo2" "$W/mnt2")
t0=$(now)
for s in "${SEGS[@]}"; do cp "$W/segs/$s" "$W/mnt2/wal/$s"; done
t1=$(now)
CP_S=$(calc "$t1 - $t0")
RSS2=$(awk '/VmRSS/ {print int($2 / 1024)}' "/proc/$DAEMON/status")
"$PGBACKFS" umount "$W/mnt2" >/dev/null
PGBACKFS_SIZE=$(du -sm "$W/repo2/db" | cut -f1)

log "pgbackrest archive-push of the same $NSEG segments"
mkdir -p "$W/pgbr" "$W/pgbr-log" "$W/pgbr-spool"
chown postgres "$W/pgbr" "$W/pgbr-log" "$W/pgbr-spool"
cat >"$W/pgbackrest.conf" <<EOF
[global]
repo1-path=$W/pgbr
log-path=$W/pgbr-log
spool-path=$W/pgbr-spool
compress-type=zst
compress-level=3
log-level-console=warn
archive-async=n

[bench]
pg1-path=$PG
pg1-port=$PORT
pg1-socket-path=/tmp
EOF
chmod 644 "$W/pgbackrest.conf"
chmod 755 "$W/segs" && chmod 644 "$W"/segs/*
PGBR="pgbackrest --config=$W/pgbackrest.conf --stanza=bench"
as_pg $PGBR stanza-create >/dev/null
t0=$(now)
for s in "${SEGS[@]}"; do as_pg $PGBR archive-push "$W/segs/$s"; done
t1=$(now)
PGBR_S=$(calc "$t1 - $t0")
PGBR_SIZE=$(du -sm "$W/pgbr/archive" | cut -f1)

echo
echo "archiving $NSEG WAL segments ($MB MB), one command per segment, as archive_command does"
printf '  cp into MOUNT/wal          %7s s  %7s MB/s  %6s segments/s  repository %s MiB\n' \
  "$CP_S" "$(calc "$MB / $CP_S")" "$(calc "$NSEG / $CP_S")" "$PGBACKFS_SIZE"
printf '  pgbackrest archive-push    %7s s  %7s MB/s  %6s segments/s  repository %s MiB\n' \
  "$PGBR_S" "$(calc "$MB / $PGBR_S")" "$(calc "$NSEG / $PGBR_S")" "$PGBR_SIZE"
printf '  ratio (segment rate, pgbackfs / pgbackrest): %s\n' "$(calc "$PGBR_S / $CP_S")"
printf '  mount daemon RSS after archiving: %s MiB\n' "$RSS2"
