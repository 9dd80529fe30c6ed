#!/usr/bin/env bash
# A full disk (ENOSPC). The repository lives on a small loop-mounted ext4 file system that a
# filler file fills up:
#   (a) during cp pushes into MOUNT/wal/: a cp fails cleanly (ENOSPC or EIO) and nothing partial
#       is visible;
#   (b) during writes into a clone, by postgres and by dd: they get an error (at write or fsync);
#   (c) during a backup: a clear error, nothing listed.
# After each, the filler is deleted and, without a remount, everything works again: further
# pushes succeed, postgres on the clone restarts (crash recovery) and writes, a backup succeeds,
# verify passes, and everything acknowledged before is intact.
# Usage: bash test_enospc.sh PATH_TO_PGBACKFS
source "$(dirname "$0")/lib.sh" "$1"
source "$(dirname "$0")/fault_lib.sh"

PORT=$(free_port)
DATA=$T/data
SMALL=$T/small
REPO=$SMALL/repo
FILLER=$SMALL/filler
MNT=$T/mnt
POOL=$T/pool
CONN="host=127.0.0.1 port=$PORT user=postgres"
mkdir -p "$SMALL" "$MNT" "$POOL"
chown postgres:postgres "$T" "$POOL"

log "a 600 MiB ext4 file system on a loop device"
truncate -s 600M "$T/fs.img"
mkfs.ext4 -q -F -m 0 "$T/fs.img" || fail "mkfs.ext4"
mount -o loop "$T/fs.img" "$SMALL" || fail "loop mount (needs root and /dev/loop*)"
on_exit "umount '$SMALL' || umount -l '$SMALL'"

avail() { df --output=avail -B1 "$SMALL" | tail -1 | tr -d ' '; }
# fill KEEP_MIB: the filler takes all but KEEP_MIB of the free space.
fill() {
  rm -f "$FILLER"
  sync -f "$SMALL"
  local a
  a=$(avail)
  fallocate -l $((a - ($1 << 20))) "$FILLER" || fail "fallocate filler"
  log "filled: $(($(avail) >> 20)) MiB free"
}
unfill() { rm -f "$FILLER"; log "filler removed: $(($(avail) >> 20)) MiB free"; }

log "source: PostgreSQL 15 (pgbench scale 3) archiving its WAL to a local pool"
pg_init "$DATA"
cat >>"$DATA/postgresql.conf" <<EOF
archive_mode = on
wal_level = replica
archive_command = 'cp %p $POOL/%f'
max_wal_size = 4GB
EOF
pg_start "$DATA" "$PORT"
as_pg "$PGBIN/pgbench" -i -q -s 3 -h 127.0.0.1 -p "$PORT" -U postgres postgres \
  >"$T/pgbench.log" 2>&1 || { cat "$T/pgbench.log"; fail "pgbench -i"; }
"$PGBACKFS" init "$REPO" >/dev/null
"$PGBACKFS" backup "$REPO" -d "$CONN" --fast-checkpoint --label base >"$T/backup.out" 2>&1 ||
  { cat "$T/backup.out"; fail "base backup"; }
SNAP=$("$PGBACKFS" list "$REPO" --json | jq -r '.snapshots[-1].id')
# WAL segments full of barely compressible records (random md5 text): the pushes that fill the disk.
psql_q "$PORT" "CREATE TABLE noise (body text)"
for _ in $(seq 1 12); do
  LAST=$(psql_q "$PORT" "INSERT INTO noise SELECT md5(random()::text) || md5(random()::text)
                         FROM generate_series(1, 150000); SELECT pg_walfile_name(pg_switch_wal())")
done
for _ in $(seq 1 600); do
  [ "$(psql_q "$PORT" "SELECT last_archived_wal FROM pg_stat_archiver")" = "$LAST" ] && break
  sleep 0.1
done
mapfile -t SEGS < <(ls "$POOL" | grep -E '^[0-9A-F]{24}$' | sort)
log "${#SEGS[@]} segments to push, the last $LAST"
[ "${SEGS[-1]}" = "$LAST" ] || fail "the pool does not end with $LAST"

mount_repo "$REPO" "$MNT"
declare -A ACKED=()
NEXT=0
# push_until_fail: pushes SEGS[NEXT...] until a cp fails; sets FAILED_SEG and FAILED_MSG.
push_until_fail() {
  FAILED_SEG=""
  while [ "$NEXT" -lt "${#SEGS[@]}" ]; do
    local name=${SEGS[$NEXT]}
    if cp "$POOL/$name" "$MNT/wal/" 2>"$T/cp.err"; then
      ACKED[$name]=1
      NEXT=$((NEXT + 1))
    else
      FAILED_SEG=$name
      FAILED_MSG=$(cat "$T/cp.err")
      return 0
    fi
  done
}
check_acked() {
  for name in "${!ACKED[@]}"; do
    cmp -s "$POOL/$name" "$MNT/wal/$name" || fail "acknowledged $name differs or is missing"
  done
}

log "(a) the disk fills up during pushes into wal/"
for i in 0 1 2; do  # a few pushes with room to spare
  cp "$POOL/${SEGS[$i]}" "$MNT/wal/" || fail "push of ${SEGS[$i]}"
  ACKED[${SEGS[$i]}]=1
done
NEXT=3
fill 24
push_until_fail
[ -n "$FAILED_SEG" ] || fail "all ${#SEGS[@]} pushes succeeded on a full disk"
log "cp of $FAILED_SEG failed after ${#ACKED[@]} acknowledged pushes: $FAILED_MSG"
grep -qE "No space left on device|Input/output error" <<<"$FAILED_MSG" || fail "cp error: $FAILED_MSG"
if [ -e "$MNT/wal/$FAILED_SEG" ]; then
  cmp -s "$POOL/$FAILED_SEG" "$MNT/wal/$FAILED_SEG" || fail "the failed push $FAILED_SEG is visible and partial"
fi
check_acked
# More pushes on the full disk fail as well and change nothing.
cp "$POOL/$FAILED_SEG" "$MNT/wal/" 2>/dev/null && ACKED[$FAILED_SEG]=1 && NEXT=$((NEXT + 1))
unfill
# Without a remount: the failed push and the rest go through.
push_until_fail
[ -z "$FAILED_SEG" ] || fail "after freeing space, cp of $FAILED_SEG still fails: $FAILED_MSG"
check_acked
log "(a) ok: ${#ACKED[@]} pushes acknowledged and intact, pushes work again without a remount"

log "(b) the disk fills up during writes into a clone"
"$PGBACKFS" clone create "$REPO" c1 --from "$SNAP" >/dev/null || fail "clone create"
clone_start "$MNT" c1
psql_q "$CPORT" "CREATE TABLE marker (id int primary key, note text); INSERT INTO marker VALUES (1, 'before the disk filled')"
psql_q "$CPORT" "CHECKPOINT"
fill 16
if dd if=/dev/urandom of="$MNT/clones/c1/dd.bin" bs=1M count=200 conv=fsync 2>"$T/dd.err"; then
  fail "dd of 200 MiB into the clone on a full disk succeeded"
fi
log "dd got: $(tail -1 "$T/dd.err")"
grep -qE "No space left on device|Input/output error" "$T/dd.err" || fail "dd error: $(cat "$T/dd.err")"
PM=$(head -1 "$MNT/clones/c1/postmaster.pid")
if as_pg psql -X -q -h 127.0.0.1 -p "$CPORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -c \
  "CREATE TABLE big AS SELECT g, md5(random()::text) || md5(random()::text) AS body FROM generate_series(1, 3000000) g; CHECKPOINT" \
  >"$T/big.out" 2>&1; then
  fail "postgres wrote 200 MB to a clone on a full disk without an error"
fi
log "postgres got: $(grep -m1 -E 'ERROR|PANIC|FATAL|server closed' "$T/big.out")"
grep -E "No space left|could not (write|extend|fsync)|PANIC|server closed" "$T/big.out" "$T/c1.log" >/dev/null ||
  fail "postgres' error does not say why: $(cat "$T/big.out")"
log "postgres' log: $(grep -m1 -E "No space left|could not (write|extend|fsync)" "$T/c1.log" || true)"
unfill
rm -f "$MNT/clones/c1/dd.bin"
# postgres may have PANICked (a failed fsync); if it still runs, stop it the hard way.
if kill -0 "$PM" 2>/dev/null; then
  as_pg "$PGBIN/pg_ctl" -D "$MNT/clones/c1" -m immediate -w stop >/dev/null 2>&1 || true
fi
for _ in $(seq 1 100); do kill -0 "$PM" 2>/dev/null || break; sleep 0.1; done
rm -f "$MNT/clones/c1/postmaster.pid"
clone_start "$MNT" c1
[ "$(psql_q "$CPORT" "SELECT note FROM marker WHERE id = 1")" = "before the disk filled" ] ||
  fail "the row committed before the disk filled is gone"
psql_q "$CPORT" "CREATE TABLE after_full AS SELECT g FROM generate_series(1, 100000) g; CHECKPOINT"
dd if=/dev/urandom of="$T/dd.src" bs=1M count=16 2>/dev/null
cp "$T/dd.src" "$MNT/clones/c1/dd.bin" && sync "$MNT/clones/c1/dd.bin" || fail "a write into the clone after freeing space"
cmp "$T/dd.src" "$MNT/clones/c1/dd.bin" || fail "dd.bin differs"
rm -f "$MNT/clones/c1/dd.bin"
as_pg "$PGBIN/pg_amcheck" -h 127.0.0.1 -p "$CPORT" -U postgres --install-missing -d postgres \
  >"$T/amcheck.out" 2>&1 || { cat "$T/amcheck.out"; fail "pg_amcheck on the clone"; }
clone_stop "$MNT" c1
log "(b) ok: postgres restarted on the clone, the committed row is there, writes work, pg_amcheck passes"

# backup_on_full_disk WHAT: a backup on a full disk fails, says why and lists nothing; after the
# filler is removed the next backup succeeds and verify passes.
backup_on_full_disk() {
  local before
  before=$(snapshot_ids "$REPO")
  psql_q "$PORT" "UPDATE pgbench_accounts SET abalance = abalance + 1"
  fill 8
  if "$PGBACKFS" backup "$REPO" -d "$CONN" --fast-checkpoint --label full >"$T/full.out" 2>&1; then
    fail "$1 on a full disk succeeded"
  fi
  log "$1 failed: $(tail -1 "$T/full.out")"
  grep -qiE "no space|space left" "$T/full.out" || fail "the error of $1 does not say the disk is full"
  [ "$(snapshot_ids "$REPO")" = "$before" ] || fail "the failed $1 is listed"
  unfill
  "$PGBACKFS" backup "$REPO" -d "$CONN" --fast-checkpoint --label after-full >"$T/after.out" 2>&1 ||
    { cat "$T/after.out"; fail "$1 after freeing space"; }
  verify_ok "$REPO"
}

log "(c) the disk fills up during a backup (forwarded to the daemon)"
backup_on_full_disk "a backup forwarded to the daemon"
check_acked
log "kill -9 of the daemon that recovered from the full disk: nothing acknowledged is lost"
kill -9 "$DAEMON_PID"
unmount_dead "$MNT"
mount_repo "$REPO" "$MNT"
check_acked
"$PGBACKFS" umount "$MNT" >/dev/null || fail "umount"

log "(c') the disk fills up during a standalone backup"
backup_on_full_disk "a standalone backup"
mount_repo "$REPO" "$MNT"
check_acked
"$PGBACKFS" umount "$MNT" >/dev/null || fail "umount"
summary enospc acknowledged_pushes_checked="${#ACKED[@]}" disk_full_events=4 bytes_lost=0 partial_visible=0
log "PASS"
