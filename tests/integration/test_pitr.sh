#!/usr/bin/env bash
# Point-in-time recovery through clones: a backup, then batches of rows committed at known times,
# a restore point and a "bad" DELETE, all archived with cp into the mount. Clones recover to a
# time just before and just after the DELETE, to the DELETE's xid (exclusive), to the restore
# point and to an LSN; a target inside a deliberate gap of the archive is refused, naming the
# windows. Materialized clones (--materialize: pgbackfs replays the WAL itself) start with no
# redo and hold the same rows, also once sealed; without a mount the replay uses a private one.
# Usage: bash test_pitr.sh PATH_TO_PGBACKFS
source "$(dirname "$0")/lib.sh" "$1"

PORT=$(free_port)
DATA=$T/data REPO=$T/repo MNT=$T/mnt
chown postgres "$T"

"$PGBACKFS" init "$REPO" >/dev/null
mkdir -p "$MNT"
"$PGBACKFS" mount "$REPO" "$MNT" --owner postgres --allow-other
on_exit "'$PGBACKFS' umount '$MNT' || fusermount3 -u '$MNT'"

pg_init "$DATA"
pg_start "$DATA" "$PORT" archive_mode=on "archive_command='cp %p $MNT/wal/%f'" archive_timeout=0
psql_q "$PORT" "create table t(id int primary key, batch int, payload text)"
psql_q "$PORT" "insert into t select g, 0, md5(g::text) from generate_series(1, 1000) g"
"$PGBACKFS" backup "$REPO" -d "host=127.0.0.1 port=$PORT user=postgres" --fast-checkpoint >/dev/null
SNAP=$("$PGBACKFS" list "$REPO" --json | jq -r '.snapshots[-1].id')

# Batches with known commit times, one second apart.
for b in 1 2 3; do
  psql_q "$PORT" "insert into t select g, $b, md5(g::text) from generate_series($b * 1000 + 1, $b * 1000 + 1000) g"
  sleep 1.1
done
BEFORE_DELETE=$(psql_q "$PORT" "select to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'")
sleep 1.1
psql_q "$PORT" "select pg_create_restore_point('before_delete')" >/dev/null
RP_LSN=$(psql_q "$PORT" "select pg_current_wal_lsn()")
DELETE_XID=$(psql_q "$PORT" "begin; delete from t; select txid_current(); commit;" | head -1)
sleep 1.1
AFTER_DELETE=$(psql_q "$PORT" "select to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'")
psql_q "$PORT" "insert into t values (999999, 9, 'after')"
LAST=$(psql_q "$PORT" "select pg_walfile_name(pg_current_wal_lsn())")
psql_q "$PORT" "select pg_switch_wal()" >/dev/null
for _ in $(seq 1 120); do
  [ "$(psql_q "$PORT" "select coalesce(last_archived_wal >= '$LAST', false) from pg_stat_archiver")" = t ] && break
  sleep 0.5
done
[ "$(psql_q "$PORT" "select failed_count from pg_stat_archiver")" = 0 ] || fail "archiving failed"
log "archived up to $LAST; delete xid $DELETE_XID; restore point at $RP_LSN"
"$PGBACKFS" info "$REPO" | grep -A3 "recoverable windows" >&2

# clone_count NAME TARGET-OPTIONS...: creates a clone, starts it, prints count(*) of t.
clone_count() {
  local name=$1; shift
  "$PGBACKFS" clone create "$REPO" "$name" "$@" >"$T/$name.create" 2>&1 || {
    cat "$T/$name.create" >&2; fail "clone create $name $*"; }
  local port
  port=$(grep -E '^port = ' "$MNT/clones/$name/postgresql.auto.conf" | tail -1 | awk '{print $3}')
  as_pg "$PGBIN/pg_ctl" -D "$MNT/clones/$name" -l "$T/$name.log" -w -t 120 start >/dev/null || {
    tail -20 "$T/$name.log" >&2; fail "clone $name did not start"; }
  on_exit "as_pg $PGBIN/pg_ctl -D '$MNT/clones/$name' -m immediate stop"
  # Wait until recovery ended (promote).
  for _ in $(seq 1 120); do
    [ "$(psql_q "$port" "select pg_is_in_recovery()")" = f ] && break
    sleep 0.5
  done
  psql_q "$port" "select count(*) from t"
  as_pg "$PGBIN/pg_ctl" -D "$MNT/clones/$name" -m fast -w stop >/dev/null
}

# rows_ok COUNT EXPECTED WHAT: a clone's row count, checked and logged.
rows_ok() { [ "$1" = "$2" ] || fail "$3: $1 rows, expected $2"; log "ok: $3: $1 rows"; }

rows_ok "$(clone_count before --target-time "$BEFORE_DELETE")" 4000 "--target-time before the DELETE"
rows_ok "$(clone_count after --target-time "$AFTER_DELETE")" 0 "--target-time after the DELETE"
rows_ok "$(clone_count xid --target-xid "$DELETE_XID" --target-exclusive)" 4000 \
  "--target-xid $DELETE_XID --target-exclusive"
rows_ok "$(clone_count rp --target-name before_delete)" 4000 "--target-name before_delete"
rows_ok "$(clone_count lsn --target-lsn "$RP_LSN")" 4000 "--target-lsn $RP_LSN"

# mat_count NAME TARGET-OPTIONS...: a materialized clone; its first start must replay nothing.
# Prints count(*) of t.
mat_count() {
  local name=$1; shift
  "$PGBACKFS" clone create "$REPO" "$name" "$@" --materialize --progress >"$T/$name.create" 2>&1 || {
    cat "$T/$name.create" >&2; fail "clone create $name $* --materialize"; }
  grep -q '^replay: ' "$T/$name.create" || { cat "$T/$name.create" >&2; fail "$name: no progress shown"; }
  started_count "$name"
}

# started_count NAME: starts a clone that must need no WAL replay, prints count(*) of t, stops it.
started_count() {
  local name=$1 dir=$MNT/clones/$1 port
  [ ! -e "$dir/recovery.signal" ] || fail "$name: recovery.signal left behind"
  ! grep -E '^recovery_target' "$dir/postgresql.auto.conf" >/dev/null ||
    fail "$name: recovery settings left in postgresql.auto.conf"
  port=$(grep -E '^port = ' "$dir/postgresql.auto.conf" | tail -1 | awk '{print $3}')
  as_pg "$PGBIN/pg_ctl" -D "$dir" -l "$T/$name.log" -w -t 120 start >/dev/null || {
    tail -20 "$T/$name.log" >&2; fail "clone $name did not start"; }
  on_exit "as_pg $PGBIN/pg_ctl -D '$dir' -m immediate stop"
  grep -q "database system was shut down at" "$T/$name.log" || {
    cat "$T/$name.log" >&2; fail "$name: not started from a clean shutdown"; }
  ! grep -q "redo starts at" "$T/$name.log" || { cat "$T/$name.log" >&2; fail "$name: WAL replay at start"; }
  [ "$(psql_q "$port" "select pg_is_in_recovery()")" = f ] || fail "$name: in recovery"
  psql_q "$port" "select count(*) from t"
  as_pg "$PGBIN/pg_ctl" -D "$dir" -m fast -w stop >/dev/null
}

rows_ok "$(mat_count mat_before --target-time "$BEFORE_DELETE")" 4000 \
  "--materialize --target-time before the DELETE, no redo at start"
rows_ok "$(mat_count mat_xid --target-xid "$DELETE_XID" --target-exclusive)" 4000 \
  "--materialize --target-xid $DELETE_XID --target-exclusive, no redo at start"
# Sealed, the point in time is a snapshot; a clone of it starts as it is, with the same rows.
MAT_SNAP=$("$PGBACKFS" clone seal "$REPO" mat_before --label before-delete | sed -n 's/.* as snapshot \([^ ]*\) .*/\1/p')
[ -n "$MAT_SNAP" ] || fail "clone seal of a materialized clone"
"$PGBACKFS" clone create "$REPO" mat_sealed --from "$MAT_SNAP" >/dev/null
rows_ok "$(started_count mat_sealed)" 4000 "clone of sealed materialized clone $MAT_SNAP, no redo at start"

expect_fail "--materialize with missing binaries" "$PGBACKFS" clone create "$REPO" bad5 \
  --target-time "$BEFORE_DELETE" --materialize --pg-bin /nonexistent
grep -q "PostgreSQL 15 server binary 'postgres'" "$T/expect_fail.out" &&
  grep -q "/nonexistent" "$T/expect_fail.out" || fail "the error does not name what it needs"
# A replay that fails (a stand-in postgres that reports version 15 and dies) fails the command
# with the server's words, and leaves no clone behind.
mkdir -p "$T/fakebin"
printf '#!/bin/sh\n[ "$1" = --version ] && { echo "postgres (PostgreSQL) 15.99"; exit 0; }\necho "FATAL:  simulated replay failure"; exit 1\n' >"$T/fakebin/postgres"
chmod 755 "$T/fakebin" "$T/fakebin/postgres"
expect_fail "--materialize with a failing server" "$PGBACKFS" clone create "$REPO" bad6 \
  --target-time "$BEFORE_DELETE" --materialize --pg-bin "$T/fakebin"
grep -q "simulated replay failure" "$T/expect_fail.out" || fail "the error lacks the server log"
! "$PGBACKFS" clone list "$REPO" | grep -q '^bad6 ' || fail "a failed materialization left its clone"
[ ! -e "$MNT/clones/bad6" ] || fail "a failed materialization left its clone in the mount"

expect_fail "unknown restore point" "$PGBACKFS" clone create "$REPO" bad1 --target-name nope
expect_fail "unknown xid" "$PGBACKFS" clone create "$REPO" bad2 --target-xid 4000000000
expect_fail "time before the first backup" "$PGBACKFS" clone create "$REPO" bad3 --target-time "2000-01-01 00:00:00+00"
expect_fail "bad time" "$PGBACKFS" clone create "$REPO" bad4 --target-time "yesterday-ish"

# A gap: the same history archived into a second repository without one segment. A target
# after the gap is refused, and the message names the windows.
REPO2=$T/repo2
"$PGBACKFS" init "$REPO2" >/dev/null
"$PGBACKFS" backup "$REPO2" -d "host=127.0.0.1 port=$PORT user=postgres" --fast-checkpoint >/dev/null
psql_q "$PORT" "insert into t values (1000001, 10, 'x')"
G1=$(psql_q "$PORT" "select pg_walfile_name(pg_current_wal_lsn())")
psql_q "$PORT" "select pg_switch_wal()" >/dev/null
psql_q "$PORT" "insert into t values (1000002, 11, 'y')"
GAP_TIME=$(psql_q "$PORT" "select to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'")
psql_q "$PORT" "select pg_switch_wal()" >/dev/null
sleep 1
for f in "$DATA"/pg_wal/0000000*; do
  name=$(basename "$f")
  [ "$name" = "$G1" ] && continue   # the missing segment
  [ "$name" \> "$G1" ] || continue
  "$PGBACKFS" archive-push "$REPO2" "$f" >/dev/null 2>&1 || true
done
"$PGBACKFS" clone create "$REPO2" gap --target-time "$GAP_TIME" >"$T/gap.out" 2>&1 &&
  fail "a target after a gap was accepted: $(cat "$T/gap.out")"
grep -q "recoverable windows" "$T/gap.out" || { cat "$T/gap.out" >&2; fail "the refusal does not name the windows"; }
log "ok: a target after a gap is refused: $(tr '\n' ' ' < "$T/gap.out" | head -c 300)"

# Without a mount, --materialize mounts the repository privately for the replay.
pg_stop "$DATA"  # its archiver writes into the mount
"$PGBACKFS" umount "$MNT" >/dev/null
"$PGBACKFS" clone create "$REPO" mat_local --target-time "$BEFORE_DELETE" --materialize >"$T/mat_local.create" 2>&1 || {
  cat "$T/mat_local.create" >&2; fail "--materialize without a mount"; }
grep -q "pgbackfs-materialize" /proc/mounts && fail "the private mount is still mounted"
"$PGBACKFS" mount "$REPO" "$MNT" --owner postgres --allow-other >/dev/null
rows_ok "$(started_count mat_local)" 4000 "--materialize without a mount (private mount), no redo at start"
log "PASS"
