#!/usr/bin/env bash
# `pgbackfs backup` against a real PostgreSQL 15, then restore and verify:
#   a backup is listed with the right metadata; a kill -9 in the middle leaves nothing listed and a
#   re-run works; a second backup while one runs, a bad connection string, a role without
#   REPLICATION, tablespaces and another cluster are refused with clear messages; a restored copy
#   passes pg_verifybackup and starts with the same rows; after 5% of the rows change, the next
#   backup stores under a quarter of the first; a damaged chunk is found by verify, read through
#   the mount (backups/ and an unchanged file of a clone) as EIO and never as wrong bytes, and
#   refused by restore; bytes flipped in RocksDB's table files likewise.
# Usage: bash test_backup_restore.sh PATH_TO_PGBACKFS
source "$(dirname "$0")/lib.sh" "$1"

PORT=$(free_port)
DATA=$T/data
REPO=$T/repo
CONN="host=127.0.0.1 port=$PORT user=postgres"
SCALE=5

# expect_error CODE PATTERN DESCRIPTION CMD...: the command exits with CODE and says PATTERN.
expect_error() {
  local code=$1 pattern=$2 what=$3 rc=0
  shift 3
  "$@" >"$T/err.out" 2>&1 || rc=$?
  [ "$rc" -eq "$code" ] || { cat "$T/err.out" >&2; fail "$what: exit code $rc, expected $code"; }
  grep -q -- "$pattern" "$T/err.out" || {
    cat "$T/err.out" >&2; fail "$what: the message does not say '$pattern'"; }
  log "ok (refused): $what: $(head -c 400 "$T/err.out" | tr '\n' ' ')"
}

snapshots() { "$PGBACKFS" list "$REPO" --json | jq -c '.snapshots'; }
snapshot_count() { snapshots | jq length; }
field() { snapshots | jq -r ".[$1].$2"; }  # field INDEX NAME
row_counts() {  # row_counts PORT: the pgbench tables' row counts and balance sum, one line
  psql_q "$1" "select (select count(*) from pgbench_accounts) || ' ' ||
                      (select count(*) from pgbench_branches) || ' ' ||
                      (select count(*) from pgbench_tellers) || ' ' ||
                      (select coalesce(sum(abalance), 0) from pgbench_accounts)"
}
# restore_and_check SNAPSHOT DIR PORT: restores, runs pg_verifybackup, starts a server on the copy
# and sets COUNTS to its row counts; stops it again. (Not run in a subshell: pg_start registers
# its cleanup in this shell.)
restore_and_check() {
  local snap=$1 dir=$2 port=$3
  "$PGBACKFS" restore "$REPO" "$snap" "$dir" >"$T/restore.out" 2>&1 || {
    cat "$T/restore.out" >&2; fail "restore of $snap"; }
  chown -R postgres:postgres "$dir" && chmod 700 "$dir"
  as_pg "$PGBIN/pg_verifybackup" "$dir" >"$T/verifybackup.out" 2>&1 || {
    cat "$T/verifybackup.out" >&2; fail "pg_verifybackup on the restored snapshot $snap"; }
  pg_start "$dir" "$port"
  COUNTS=$(row_counts "$port")
  pg_stop "$dir"
}

log "setting up PostgreSQL 15 on port $PORT (pgbench scale $SCALE)"
pg_init "$DATA"
pg_start "$DATA" "$PORT"
as_pg "$PGBIN/pgbench" -i -q -s "$SCALE" -h 127.0.0.1 -p "$PORT" -U postgres postgres \
  >"$T/pgbench.log" 2>&1 || { cat "$T/pgbench.log"; fail "pgbench -i"; }
SYSID=$(as_pg "$PGBIN/pg_controldata" "$DATA" | awk -F: '/Database system identifier/ {gsub(/ /, "", $2); print $2}')
ORIGINAL_COUNTS=$(row_counts "$PORT")
"$PGBACKFS" init "$REPO" >/dev/null

log "first backup"
"$PGBACKFS" backup "$REPO" -d "$CONN" --fast-checkpoint --label "first 'quoted' label" \
  >"$T/backup1.out" 2>&1 || { cat "$T/backup1.out" >&2; fail "first backup"; }
cat "$T/backup1.out" >&2
[ "$(snapshot_count)" = 1 ] || fail "list does not show exactly one snapshot: $(snapshots)"
SNAP1=$(field 0 id)
grep -q "backup $SNAP1 committed" "$T/backup1.out" || fail "the backup's output does not name $SNAP1"
[ "$(field 0 kind)" = backup ] || fail "kind: $(field 0 kind)"
[ "$(field 0 label)" = "first 'quoted' label" ] || fail "label: $(field 0 label)"
[ "$(field 0 system_identifier)" = "$SYSID" ] || fail "system identifier $(field 0 system_identifier), expected $SYSID"
[ "$(field 0 timeline)" = 1 ] || fail "timeline: $(field 0 timeline)"
[ "$(field 0 pg_version_num)" -ge 150000 ] || fail "pg_version_num: $(field 0 pg_version_num)"
[[ "$(field 0 start_lsn)" =~ ^[0-9A-F]+/[0-9A-F]+$ ]] || fail "start_lsn: $(field 0 start_lsn)"
[[ "$(field 0 end_lsn)" =~ ^[0-9A-F]+/[0-9A-F]+$ ]] || fail "end_lsn: $(field 0 end_lsn)"
[ "$(field 0 file_count)" -gt 100 ] || fail "file_count: $(field 0 file_count)"
BYTES1=$(field 0 bytes_added)
LOGICAL1=$(field 0 logical_size)
[ "$BYTES1" -gt 0 ] && [ "$LOGICAL1" -gt $((50 << 20)) ] || fail "sizes: added $BYTES1, logical $LOGICAL1"
log "ok: snapshot $SNAP1, logical $LOGICAL1 bytes, added $BYTES1 bytes"

log "connection errors"
SECRET=Pa55-w0rd-TopSecret
expect_error 1 "could not connect" "unreachable server" \
  "$PGBACKFS" backup "$REPO" -d "host=127.0.0.1 port=$(free_port) user=postgres password=$SECRET"
! grep -q "$SECRET" "$T/err.out" || fail "the error message shows the password"
expect_error 1 "could not connect" "unreachable server (URI)" \
  "$PGBACKFS" backup "$REPO" -d "postgresql://postgres:$SECRET@127.0.0.1:$(free_port)/postgres"
! grep -q "$SECRET" "$T/err.out" || fail "the error message shows the password of a URI"
expect_error 1 "invalid connection string" "malformed connection string" \
  "$PGBACKFS" backup "$REPO" -d "hostname=127.0.0.1 password=$SECRET"
! grep -q "$SECRET" "$T/err.out" || fail "the error message shows the password"
psql_q "$PORT" "create role norepl login"
expect_error 1 "REPLICATION" "role without REPLICATION" \
  "$PGBACKFS" backup "$REPO" -d "host=127.0.0.1 port=$PORT user=norepl"
expect_error 2 "dbname" "no connection string" "$PGBACKFS" backup "$REPO"

log "tablespaces are refused"
mkdir "$T/tblspc" && chown postgres:postgres "$T/tblspc"
psql_q "$PORT" "create tablespace extra location '$T/tblspc'"
expect_error 1 "tablespaces are not supported yet" "cluster with a tablespace" \
  "$PGBACKFS" backup "$REPO" -d "$CONN" --fast-checkpoint
psql_q "$PORT" "drop tablespace extra"
[ "$(snapshot_count)" = 1 ] || fail "a refused backup was listed: $(snapshots)"

log "kill -9 in the middle of a backup"
# --max-rate (kB/s, hidden) keeps the backup running for a few seconds.
"$PGBACKFS" backup "$REPO" -d "$CONN" --fast-checkpoint --max-rate 32768 >"$T/killed.out" 2>&1 &
KILLED=$!
sleep 1
kill -0 "$KILLED" 2>/dev/null || { cat "$T/killed.out" >&2; fail "the backup ended within 1 s"; }
kill -9 "$KILLED"
wait "$KILLED" 2>/dev/null || true
[ "$(snapshot_count)" = 1 ] || fail "the killed backup is listed: $(snapshots)"
"$PGBACKFS" verify "$REPO" >"$T/verify.out" 2>&1 || {
  cat "$T/verify.out" >&2; fail "verify after the kill"; }
log "ok: nothing listed after kill -9, verify passes"

log "a second backup while one runs"
"$PGBACKFS" backup "$REPO" -d "$CONN" --fast-checkpoint --max-rate 32768 >"$T/rerun.out" 2>&1 &
RERUN=$!
for _ in $(seq 100); do
  grep -q "pid $RERUN" "$REPO/lock" 2>/dev/null && break
  sleep 0.05
done
expect_error 1 "is locked by pid $RERUN" "concurrent backup" \
  "$PGBACKFS" backup "$REPO" -d "$CONN" --fast-checkpoint
wait "$RERUN" || { cat "$T/rerun.out" >&2; fail "the re-run after kill -9 failed"; }
[ "$(snapshot_count)" = 2 ] || fail "expected 2 snapshots after the re-run: $(snapshots)"
log "ok: re-run after kill -9 succeeded"

log "a backup of another cluster is refused"
OTHER_PORT=$(free_port)
pg_init "$T/other"
pg_start "$T/other" "$OTHER_PORT"
expect_error 1 "cluster" "another cluster" \
  "$PGBACKFS" backup "$REPO" -d "host=127.0.0.1 port=$OTHER_PORT user=postgres" --fast-checkpoint
pg_stop "$T/other"
[ "$(snapshot_count)" = 2 ] || fail "the refused backup was listed: $(snapshots)"

log "restore, pg_verifybackup, start, compare rows"
restore_and_check "$SNAP1" "$T/restored1" "$(free_port)"
[ "$COUNTS" = "$ORIGINAL_COUNTS" ] || fail "restored rows '$COUNTS', original '$ORIGINAL_COUNTS'"
log "ok: restored copy has the same rows ($COUNTS)"

log "5% of the rows change (a contiguous range), then a new backup"
psql_q "$PORT" "update pgbench_accounts set abalance = abalance + 7 where aid <= $((SCALE * 100000 / 20))"
CHANGED_COUNTS=$(row_counts "$PORT")
"$PGBACKFS" backup "$REPO" -d "$CONN" --fast-checkpoint >"$T/backup3.out" 2>&1 || {
  cat "$T/backup3.out" >&2; fail "backup after the update"; }
cat "$T/backup3.out" >&2
SNAP3=$(field 2 id)
BYTES3=$(field 2 bytes_added)
[ $((BYTES3 * 4)) -lt "$BYTES1" ] || fail "the second backup added $BYTES3 bytes, not under 25% of $BYTES1"
log "ok: second backup added $BYTES3 bytes ($((BYTES3 * 100 / BYTES1))% of the first)"
restore_and_check "$SNAP3" "$T/restored3" "$(free_port)"
[ "$COUNTS" = "$CHANGED_COUNTS" ] || fail "restored rows '$COUNTS', expected '$CHANGED_COUNTS'"
log "ok: the second backup restores with the changed rows"

log "verify, then a damaged chunk in a copy of the repository"
"$PGBACKFS" verify "$REPO" >"$T/verify.out" 2>&1 || { cat "$T/verify.out" >&2; fail "verify"; }
REL=$(psql_q "$PORT" "select pg_relation_filepath('pgbench_accounts')")
cp -a "$REPO" "$T/copy1"
"$PGBACKFS" debug corrupt-chunk "$T/copy1" "$SNAP1" "$REL" --offset 8192 >/dev/null
expect_error 1 "$REL" "verify of one damaged snapshot" "$PGBACKFS" verify "$T/copy1" "$SNAP1"
expect_error 1 "file '$REL' offset 8192" "verify of a damaged repository" "$PGBACKFS" verify "$T/copy1"
expect_error 1 "$REL" "restore of a damaged snapshot" "$PGBACKFS" restore "$T/copy1" "$SNAP1" "$T/damaged"
# The damaged page's range was never written (it reads as the zeros of a fresh file).
if [ -f "$T/damaged/$REL" ]; then
  dd if="$T/damaged/$REL" bs=8192 skip=1 count=1 2>/dev/null | cmp -s - <(head -c 8192 /dev/zero) ||
    fail "restore wrote the damaged page"
fi

log "reads through the mount of the damaged copy: EIO at the damaged page, never wrong bytes"
mkdir -p "$T/mnt.orig" "$T/mnt.copy"
mount_ro() {  # mount_ro REPO MNT: mounts and registers the unmount at exit
  "$PGBACKFS" mount "$1" "$2" >/dev/null || fail "mount $1"
  on_exit "'$PGBACKFS' umount '$2' || unmount_quiet '$2'"
}
# compare_tree ORIG DAMAGED: reads every file of DAMAGED in 8 KiB pieces; each piece is either
# byte-identical to ORIG or fails with EIO. Prints "files bytes eio-pieces first-eio-path:offset".
compare_tree() {
  python3 - "$1" "$2" <<'PY'
import errno, os, sys
orig, damaged = sys.argv[1], sys.argv[2]
files = nbytes = eio = 0
first = "-"
for root, dirs, names in os.walk(orig):
    dirs.sort()
    for name in sorted(names):
        o = os.path.join(root, name)
        rel = os.path.relpath(o, orig)
        if os.path.islink(o) or not os.path.isfile(o):
            continue
        files += 1
        try:
            fd = open(os.path.join(damaged, rel), "rb", buffering=0)
        except OSError as e:  # a damaged directory listing or snapshot record
            if e.errno != errno.EIO:
                raise
            eio += 1
            first = first if first != "-" else "%s:open" % rel
            continue
        with open(o, "rb") as fo, fd:
            want_all = fo.read()
            for off in range(0, len(want_all), 8192):
                want = want_all[off:off + 8192]
                try:
                    got = os.pread(fd.fileno(), len(want), off)
                except OSError as e:
                    if e.errno != errno.EIO:
                        raise
                    eio += 1
                    if first == "-":
                        first = "%s:%d" % (rel, off)
                    continue
                if got != want:
                    sys.exit("WRONG BYTES: %s offset %d" % (rel, off))
                nbytes += len(got)
print(files, nbytes, eio, first)
PY
}
mount_ro "$REPO" "$T/mnt.orig"
mount_ro "$T/copy1" "$T/mnt.copy"
read -r files bytes eio first < <(compare_tree "$T/mnt.orig/backups/$SNAP1" "$T/mnt.copy/backups/$SNAP1") ||
  fail "reading backups/$SNAP1 of the damaged copy"
[ "$first" = "$REL:8192" ] || fail "expected EIO at $REL:8192 first, got $first ($eio EIO pieces)"
log "ok: backups/$SNAP1: $files files, $bytes bytes identical, $eio piece(s) EIO (first at $first)"
grep -q "$REL" "$T/copy1/log/mount.log" || fail "the mount log does not name the damaged file"
"$PGBACKFS" clone create "$T/copy1" damaged --from "$SNAP1" >/dev/null || fail "clone of the damaged snapshot"
read -r files bytes eio first < <(compare_tree "$T/mnt.orig/backups/$SNAP1/base" "$T/mnt.copy/clones/damaged/base") ||
  fail "reading the clone's unchanged files"
[ "$first" = "${REL#base/}:8192" ] || fail "clone: expected EIO at $REL:8192, got $first"
log "ok: clones/damaged/base: $files files, $bytes bytes identical, $eio piece(s) EIO"
"$PGBACKFS" umount "$T/mnt.copy" >/dev/null || fail "umount"

log "bytes flipped inside RocksDB table files (copies of the repository)"
# flip_bytes SEED FILE POSITION...: XORs one byte at each POSITION of FILE; a position "r" is a
# random one in the first 90% of the file (its data blocks; the index and footer are at the end).
flip_bytes() {
  python3 - "$@" <<'PY'
import os, random, sys
rng = random.Random(int(sys.argv[1]))
path = sys.argv[2]
size = os.path.getsize(path)
with open(path, "r+b") as f:
    for p in sys.argv[3:]:
        pos = rng.randrange(size * 9 // 10) if p == "r" else int(p)
        f.seek(pos)
        b = f.read(1)
        f.seek(pos)
        f.write(bytes([b[0] ^ 0x5a]))
        print("flipped %s offset %d" % (os.path.basename(path), pos), file=sys.stderr)
PY
}
# check_copy COPY: every snapshot of COPY read through a mount is byte-identical to the original
# or EIO, never wrong bytes; restore refuses each snapshot verify found damaged. Needs verify's
# output in $T/err.out.
TOTAL_EIO=0
check_copy() {
  local copy=$1 snap files bytes eio first
  mount_ro "$copy" "$T/mnt.copy"
  for snap in $("$PGBACKFS" list "$REPO" --json | jq -r '.snapshots[].id'); do
    read -r files bytes eio first < <(compare_tree "$T/mnt.orig/backups/$snap" "$T/mnt.copy/backups/$snap") ||
      fail "reading backups/$snap of $copy (flip seed $FLIP_SEED)"
    TOTAL_EIO=$((TOTAL_EIO + eio))
    log "$(basename "$copy") backups/$snap: $files files, $bytes bytes identical, $eio piece(s) EIO (first at $first)"
    if grep "^DAMAGED snapshot '$snap' file " "$T/err.out" | grep -vq "WAL needed"; then
      expect_fail "restore of damaged snapshot $snap" "$PGBACKFS" restore "$copy" "$snap" "$T/damaged-$snap"
    fi
  done
  "$PGBACKFS" umount "$T/mnt.copy" >/dev/null || fail "umount"
}
FLIP_SEED=${FLIP_SEED:-$$}
cp -a "$REPO" "$T/copy2"
"$PGBACKFS" debug flush "$T/copy2"
# The largest table file holds chunks: two flips there, and verify names what they damage.
SST=$(ls -S "$T"/copy2/db/*.sst | head -1)
flip_bytes "$FLIP_SEED" "$SST" "$(($(stat -c %s "$SST") / 3))" r
expect_error 1 "DAMAGED snapshot" "verify after byte flips in $(basename "$SST") (seed $FLIP_SEED)" "$PGBACKFS" verify "$T/copy2"
grep -qE "^DAMAGED snapshot '[^']+' file '[^']+' offset [0-9]+" "$T/err.out" ||
  fail "verify does not name a snapshot, file and offset"
grep -E "^DAMAGED snapshot '[^']+' file '[^']+' offset [0-9]+" "$T/err.out" | sed -n 1,3p >&2
check_copy "$T/copy2"
# One flip in each of the other table files (metadata, the WAL index, more chunks): verify fails
# and says where (a snapshot and file, or the damaged table file), and no read returns wrong bytes.
cp -a "$REPO" "$T/copy3"
"$PGBACKFS" debug flush "$T/copy3"
for sst in $(ls -S "$T"/copy3/db/*.sst | tail -n +2); do flip_bytes "$FLIP_SEED" "$sst" r; done
expect_error 1 "DAMAGED\|Corruption" "verify after a byte flip in every other table file (seed $FLIP_SEED)" \
  "$PGBACKFS" verify "$T/copy3"
grep -q "DAMAGED snapshot '[^']*' file '[^']*' offset [0-9]*\|Corruption.*\.sst" "$T/err.out" ||
  fail "verify does not say what is damaged"
if grep -q "open rocksdb" "$T/err.out"; then
  # A damaged block that RocksDB reads at open (a small table's index or properties): nothing
  # opens the repository, and each command says which file is damaged.
  expect_error 1 "Corruption.*\.sst" "mount of a repository whose tables do not open" \
    "$PGBACKFS" mount "$T/copy3" "$T/mnt.copy"
  expect_error 1 "Corruption.*\.sst" "restore from a repository whose tables do not open" \
    "$PGBACKFS" restore "$T/copy3" "$SNAP1" "$T/damaged3"
else
  check_copy "$T/copy3"
fi
"$PGBACKFS" umount "$T/mnt.orig" >/dev/null || fail "umount"
log "ok: no wrong bytes read; $TOTAL_EIO pieces EIO"
log "FAULT-SUMMARY corruption: damaged_copies=3 byte_flips=$((2 + $(ls "$T"/copy3/db/*.sst | wc -l) - 1)) eio_pieces=$TOTAL_EIO wrong_bytes=0 seed=$FLIP_SEED"
"$PGBACKFS" verify "$REPO" >"$T/verify.out" 2>&1 || { cat "$T/verify.out" >&2; fail "the original repository no longer verifies"; }
log "PASS"
