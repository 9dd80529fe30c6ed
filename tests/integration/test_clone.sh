#!/usr/bin/env bash
# Instant restore: PostgreSQL 15 runs directly on a writable copy-on-write clone in the mount.
#   a pgbench database is backed up while mounted; a clone of it starts with the same rows and
#   runs pgbench; sealed, it becomes a snapshot whose own clone has the pgbench changes; the
#   original snapshot never changes (verify, pg_verifybackup); a kill -9 of the daemon while
#   pgbench runs on a clone loses nothing committed, and crash recovery plus pg_amcheck pass after
#   a remount; bad input (unknown snapshot, taken or bad names, drop or seal of a running clone,
#   mkdir in clones/) is refused.
# Usage: bash test_clone.sh PATH_TO_PGBACKFS   (PGBENCH_SECONDS: 30 by default)
source "$(dirname "$0")/lib.sh" "$1"

REPO=$T/repo
MNT=$T/mnt
SRC=$T/src
PORT=$(free_port)
SECONDS_RUN=${PGBENCH_SECONDS:-30}
mkdir -p "$MNT"
chown postgres:postgres "$T"  # server logs go here

# mount_repo: mounts REPO on MNT, registers an unmount at exit, and sets DAEMON_PID.
mount_repo() {
  local out
  out=$("$PGBACKFS" mount "$REPO" "$MNT" --allow-other --owner postgres) || fail "mount"
  DAEMON_PID=$(sed -n 's/.*daemon pid \([0-9]*\).*/\1/p' <<<"$out")
  [ -n "$DAEMON_PID" ] || fail "no daemon pid in: $out"
  on_exit "'$PGBACKFS' umount '$MNT' || unmount_quiet '$MNT'; kill -9 $DAEMON_PID"
  log "mounted $REPO on $MNT (daemon pid $DAEMON_PID)"
}

clone_port() { grep -E "^port = " "$MNT/clones/$1/postgresql.auto.conf" | tail -1 | awk '{print $3}'; }

# clone_start NAME: starts postgres on MOUNT/clones/NAME (log in $T/NAME.log) and sets CPORT.
clone_start() {
  local name=$1
  as_pg "$PGBIN/pg_ctl" -D "$MNT/clones/$name" -l "$T/$name.log" -w -t 300 start >/dev/null || {
    tail -40 "$T/$name.log" >&2; fail "postgres did not start on clone $name"; }
  on_exit "as_pg $PGBIN/pg_ctl -D '$MNT/clones/$name' -m immediate stop"
  CPORT=$(clone_port "$name")
  for _ in $(seq 1 240); do  # recovery_target_action = promote: wait until it is read-write
    [ "$(psql_q "$CPORT" "SELECT pg_is_in_recovery()" 2>/dev/null)" = f ] && return 0
    sleep 0.25
  done
  fail "clone $name did not leave recovery"
}
clone_stop() {
  as_pg "$PGBIN/pg_ctl" -D "$MNT/clones/$1" -m fast -w -t 300 stop >/dev/null ||
    fail "pg_ctl stop on clone $1"
}

# run_pgbench PORT SECONDS LOG: pgbench -c 2; fails on any error.
run_pgbench() {
  as_pg "$PGBIN/pgbench" -h 127.0.0.1 -p "$1" -U postgres -c 2 -T "$2" postgres >"$3" 2>&1 || {
    tail -30 "$3" >&2; fail "pgbench on port $1"; }
  grep -q "number of failed transactions: 0 " "$3" || { cat "$3" >&2; fail "pgbench had failures"; }
  log "pgbench: $(grep -E '^tps' "$3" | head -1)"
}

"$PGBACKFS" init "$REPO" >/dev/null
mount_repo

log "source: PostgreSQL 15 on port $PORT archiving into the mount, pgbench scale 5"
pg_init "$SRC"
cat >>"$SRC/postgresql.conf" <<EOF
archive_mode = on
wal_level = replica
archive_command = 'cp %p $MNT/wal/%f'
EOF
pg_start "$SRC" "$PORT"
as_pg "$PGBIN/pgbench" -i -q -s 5 -h 127.0.0.1 -p "$PORT" -U postgres postgres \
  >"$T/pgbench-init.log" 2>&1 || { cat "$T/pgbench-init.log"; fail "pgbench -i"; }
"$PGBACKFS" backup "$REPO" -d "host=127.0.0.1 port=$PORT user=postgres" --fast-checkpoint \
  --label base >"$T/backup.log" 2>&1 || { cat "$T/backup.log"; fail "backup while mounted"; }
SNAP=$("$PGBACKFS" list "$REPO" --json | jq -r '.snapshots[-1].id')
SRC_ACCOUNTS=$(psql_q "$PORT" "SELECT count(*) FROM pgbench_accounts")
SRC_SUM=$(psql_q "$PORT" "SELECT sum(abalance) FROM pgbench_accounts")
psql_q "$PORT" "SELECT pg_switch_wal()" >/dev/null
log "backed up as snapshot $SNAP ($SRC_ACCOUNTS accounts)"
SNAP_LISTING=$(cd "$MNT/backups/$SNAP" && find . -printf '%p %s %m\n' | sort | md5sum)

log "1. clone create + pg_ctl start: the clone answers with the source's rows"
START=$(date +%s.%N)
"$PGBACKFS" clone create "$REPO" c1 --from "$SNAP" >"$T/create.out" || fail "clone create c1"
[ -d "$MNT/clones/c1" ] || fail "clones/c1 does not show at once"
[ "$(stat -c '%U %a' "$MNT/clones/c1")" = "postgres 700" ] ||
  fail "owner/mode of clones/c1: $(stat -c '%U %a' "$MNT/clones/c1")"
[ -f "$MNT/clones/c1/recovery.signal" ] || fail "no recovery.signal in the clone"
[ ! -e "$MNT/clones/c1/postmaster.pid" ] || fail "a stale postmaster.pid in the clone"
clone_start c1
[ "$(psql_q "$CPORT" "SELECT abalance FROM pgbench_accounts WHERE aid = 4242")" = 0 ] ||
  fail "point query"
END=$(date +%s.%N)
log "clone c1 answered a primary-key query $(python3 -c "print(f'{$END - $START:.2f}')") s after clone create"
[ "$(psql_q "$CPORT" "SELECT count(*) FROM pgbench_accounts")" = "$SRC_ACCOUNTS" ] ||
  fail "row count on the clone differs from the source"
[ "$(psql_q "$CPORT" "SELECT sum(abalance) FROM pgbench_accounts")" = "$SRC_SUM" ] ||
  fail "balance sum on the clone differs from the source"
# The mount may hold half of the kernel's dirty limit, not FUSE's 1% (fs/mount.cc, TuneBdi).
BDI=/sys/class/bdi/$(mountpoint -d "$MNT")
[ -e "$BDI/max_ratio" ] || fail "no $BDI/max_ratio for the mount"
if [ -w "$BDI/max_ratio" ]; then
  [ "$(cat "$BDI/max_ratio")" = 50 ] || fail "max_ratio of the mount: $(cat "$BDI/max_ratio")"
fi

log "pgbench -c 2 for $SECONDS_RUN s on clone c1"
run_pgbench "$CPORT" "$SECONDS_RUN" "$T/pgbench-c1.log"
HISTORY=$(psql_q "$CPORT" "SELECT count(*) FROM pgbench_history")
[ "$HISTORY" -gt 0 ] || fail "pgbench wrote no history"
CLONE_SUM=$(psql_q "$CPORT" "SELECT sum(abalance) FROM pgbench_accounts")
psql_q "$CPORT" "CHECKPOINT"
[ "$(psql_q "$PORT" "SELECT count(*) FROM pgbench_history")" = 0 ] || fail "the source changed"

log "6a. drop and seal of a running clone are refused"
expect_fail "clone drop while its postgres runs" "$PGBACKFS" clone drop "$REPO" c1
grep -q "running postmaster" "$T/expect_fail.out" || fail "drop refusal does not say why"
expect_fail "clone seal while its postgres runs" "$PGBACKFS" clone seal "$REPO" c1 --label x
grep -q "running postmaster" "$T/expect_fail.out" || fail "seal refusal does not say why"

log "2. stop, seal, clone the sealed snapshot: the pgbench changes are there"
clone_stop c1
# A file written through the mount, never fsynced and still open (so the kernel's writeback
# cache may still hold it: close would write it back): the seal still gets all of it.
head -c 3000000 /dev/urandom >"$T/notes"
python3 - "$T/notes" "$MNT/clones/c1/notes.bin" "$T/notes.written" <<'PY' &
import sys, time
data = open(sys.argv[1], 'rb').read()
f = open(sys.argv[2], 'wb')
f.write(data)
f.flush()  # into the kernel, not to the disk
open(sys.argv[3], 'w').close()
time.sleep(30)
PY
WRITER=$!
on_exit "kill $WRITER"
for _ in $(seq 1 100); do [ -e "$T/notes.written" ] && break; sleep 0.1; done
"$PGBACKFS" clone seal "$REPO" c1 --label after-pgbench >"$T/seal.out" 2>&1 ||
  { cat "$T/seal.out"; fail "clone seal"; }
kill "$WRITER" 2>/dev/null || true
SEALED=$(sed -n "s/.*as snapshot \([^ ]*\) .*/\1/p" "$T/seal.out")
[ -n "$SEALED" ] && [ -d "$MNT/backups/$SEALED" ] || fail "sealed snapshot: $(cat "$T/seal.out")"
cmp "$T/notes" "$MNT/backups/$SEALED/notes.bin" || fail "the sealed snapshot lacks unsynced writes"
log "$(cat "$T/seal.out")"
"$PGBACKFS" clone create "$REPO" c2 --from "$SEALED" >/dev/null || fail "clone create c2"
# A stopped cluster restarts as it is: no targeted recovery (nothing to redo would fail it).
[ ! -e "$MNT/clones/c2/recovery.signal" ] || fail "recovery.signal in a clone of a sealed clone"
[ "$(grep -c "Added by pgbackfs clone create" "$MNT/clones/c2/postgresql.auto.conf")" = 1 ] ||
  fail "postgresql.auto.conf of c2 has more than one pgbackfs block"
clone_start c2
[ "$(psql_q "$CPORT" "SELECT count(*) FROM pgbench_history")" = "$HISTORY" ] ||
  fail "pgbench_history on c2 differs from c1 at seal"
[ "$(psql_q "$CPORT" "SELECT sum(abalance) FROM pgbench_accounts")" = "$CLONE_SUM" ] ||
  fail "balances on c2 differ from c1 at seal"

log "3. the original snapshot is unchanged"
"$PGBACKFS" verify "$REPO" "$SNAP" >"$T/verify.out" 2>&1 || { cat "$T/verify.out"; fail "verify $SNAP"; }
as_pg "$PGBIN/pg_verifybackup" -n "$MNT/backups/$SNAP" >"$T/verifybackup.out" 2>&1 || {
  cat "$T/verifybackup.out"; fail "pg_verifybackup -n backups/$SNAP"; }
[ "$(cd "$MNT/backups/$SNAP" && find . -printf '%p %s %m\n' | sort | md5sum)" = "$SNAP_LISTING" ] ||
  fail "the listing of backups/$SNAP changed"

log "6b. bad input is refused"
expect_fail "clone of an unknown snapshot" "$PGBACKFS" clone create "$REPO" c9 --from 20000101-000000
expect_fail "clone with a taken name" "$PGBACKFS" clone create "$REPO" c1 --from "$SNAP"
grep -q "already exists" "$T/expect_fail.out" || fail "taken name: the message does not say so"
expect_fail "clone name with '/'" "$PGBACKFS" clone create "$REPO" "a/b" --from "$SNAP"
expect_fail "mkdir in clones/" mkdir "$MNT/clones/x"
grep -q "Operation not permitted" "$T/expect_fail.out" || fail "mkdir in clones/: not EPERM"
expect_fail "rmdir of a clone" rmdir "$MNT/clones/c1"
expect_fail "rename of a clone" mv "$MNT/clones/c1" "$MNT/clones/c1b"
expect_fail "a file in clones/" touch "$MNT/clones/x"
expect_fail "drop of an unknown clone" "$PGBACKFS" clone drop "$REPO" nope
[ "$(ls "$MNT/clones" | tr '\n' ' ')" = "c1 c2 " ] || fail "clones/: $(ls "$MNT/clones")"
"$PGBACKFS" clone drop "$REPO" c1 >/dev/null || fail "drop of the stopped clone c1"
[ ! -e "$MNT/clones/c1" ] || fail "clones/c1 still shows after drop"
"$PGBACKFS" clone list "$REPO" --json | jq -e '.clones | length == 1' >/dev/null || fail "clone list"

log "4. kill -9 of the daemon while pgbench runs on clone c2"
psql_q "$CPORT" "CREATE TABLE marker (id int PRIMARY KEY, note text)"
psql_q "$CPORT" "INSERT INTO marker VALUES (1, 'committed before the kill')"
PM=$(head -1 "$MNT/clones/c2/postmaster.pid")
CHILDREN=$(ps -o pid= --ppid "$PM" | tr '\n' ' ')
as_pg "$PGBIN/pgbench" -h 127.0.0.1 -p "$CPORT" -U postgres -c 2 -T 60 postgres \
  >"$T/pgbench-kill.log" 2>&1 &
BENCH=$!
sleep 5
psql_q "$CPORT" "INSERT INTO marker VALUES (2, 'committed during pgbench')"
# A write through an O_DSYNC descriptor is in the store when write() returns: no fsync, no close.
python3 - "$MNT/clones/c2/dsync.bin" "$T/dsync.written" <<'PY' &
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_DSYNC, 0o600)
os.pwrite(fd, b"dsync-" * 3000, 5)
open(sys.argv[2], "w").close()
import time; time.sleep(3600)
PY
DSYNC_WRITER=$!
on_exit "kill -9 $DSYNC_WRITER"
for _ in $(seq 1 100); do [ -e "$T/dsync.written" ] && break; sleep 0.1; done
[ -e "$T/dsync.written" ] || fail "the O_DSYNC write did not return"
kill -9 "$DAEMON_PID"
log "killed the daemon (pid $DAEMON_PID) under postgres pid $PM"
wait "$BENCH" && log "pgbench exited 0 after the kill?" || log "pgbench failed as expected: $(tail -1 "$T/pgbench-kill.log")"
# The data directory is gone with the mount, so pg_ctl cannot stop it: an immediate shutdown by
# pid, then whatever is left of its processes.
kill -QUIT "$PM" 2>/dev/null || true
for _ in $(seq 1 40); do kill -0 "$PM" 2>/dev/null || break; sleep 0.25; done
for p in $PM $CHILDREN; do kill -9 "$p" 2>/dev/null || true; done
"$PGBACKFS" umount "$MNT" >/dev/null 2>&1 || fusermount3 -uz "$MNT" || fail "unmount of the dead mount"
mount_repo
clone_start c2
log "crash recovery on c2: $(grep -c "redo done\|database system is ready" "$T/c2.log") recovery lines in its log"
[ "$(psql_q "$CPORT" "SELECT string_agg(id::text, ',' ORDER BY id) FROM marker")" = "1,2" ] ||
  fail "rows committed before the kill are missing"
python3 -c "
import sys
d = open(sys.argv[1], 'rb').read()
sys.exit(0 if d == b'\\0' * 5 + b'dsync-' * 3000 else 1)" "$MNT/clones/c2/dsync.bin" ||
  fail "the O_DSYNC write made before the kill is not all there"
kill -9 "$DSYNC_WRITER" 2>/dev/null || true
as_pg "$PGBIN/pg_amcheck" -h 127.0.0.1 -p "$CPORT" -U postgres --install-missing \
  --heapallindexed -d postgres >"$T/amcheck.out" 2>&1 || { cat "$T/amcheck.out"; fail "pg_amcheck"; }
log "pg_amcheck --heapallindexed passed on c2 after the crash"
run_pgbench "$CPORT" 5 "$T/pgbench-after.log"
clone_stop c2
"$PGBACKFS" verify "$REPO" "$SNAP" >"$T/verify2.out" 2>&1 || { cat "$T/verify2.out"; fail "verify after the crash"; }
log "PASS"
