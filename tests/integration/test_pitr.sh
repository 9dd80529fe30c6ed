#!/usr/bin/env bash
# Point-in-time recovery through clones: a backup, then batches of rows committed at known times,
# a restore point and a "bad" DELETE, all archived with cp into the mount. Clones recover to a
# time just before and just after the DELETE, to the DELETE's xid (exclusive), to the restore
# point and to an LSN; a target inside a deliberate gap of the archive is refused, naming the
# windows.
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

N=$(clone_count before --target-time "$BEFORE_DELETE")
[ "$N" = 4000 ] || fail "clone at $BEFORE_DELETE has $N rows, expected 4000"
log "ok: --target-time before the DELETE: $N rows"
N=$(clone_count after --target-time "$AFTER_DELETE")
[ "$N" = 0 ] || fail "clone at $AFTER_DELETE has $N rows, expected 0"
log "ok: --target-time after the DELETE: $N rows"
N=$(clone_count xid --target-xid "$DELETE_XID" --target-exclusive)
[ "$N" = 4000 ] || fail "clone at xid $DELETE_XID (exclusive) has $N rows, expected 4000"
log "ok: --target-xid $DELETE_XID --target-exclusive: $N rows"
N=$(clone_count rp --target-name before_delete)
[ "$N" = 4000 ] || fail "clone at restore point has $N rows, expected 4000"
log "ok: --target-name before_delete: $N rows"
N=$(clone_count lsn --target-lsn "$RP_LSN")
[ "$N" = 4000 ] || fail "clone at LSN $RP_LSN has $N rows, expected 4000"
log "ok: --target-lsn $RP_LSN: $N rows"

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
log "PASS"
