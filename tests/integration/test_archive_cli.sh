#!/usr/bin/env bash
# archive-push and archive-get as a real PostgreSQL 15's archive_command and restore_command:
# every archived segment comes back byte for byte and pg_waldump reads it; bad input (a wrong name
# or size, a different duplicate, another cluster's WAL) fails with exit 1 and changes nothing;
# a pg_basebackup restored with restore_command replays the archive, promotes, and archives its
# new timeline (.history, .partial) into the same repository.
source "$(dirname "$0")/lib.sh" "$1"

REPO=$T/repo
PG=$T/pg
FETCH=$T/fetched
BAD=$T/bad
mkdir -p "$FETCH" "$BAD"
chown postgres:postgres "$T" "$FETCH" "$BAD"

# Everything runs as postgres: archive_command does, and the repository's lock and RocksDB files
# must stay usable by it.
pgb() { as_pg "$PGBACKFS" "$@"; }

pgb init "$REPO" >/dev/null
pg_init "$PG"
cat >>"$PG/postgresql.conf" <<EOF
archive_mode = on
archive_command = '$PGBACKFS archive-push $REPO %p'
checkpoint_timeout = 1h
EOF
PORT=$(free_port)
pg_start "$PG" "$PORT"

# wait_archived PORT SEGMENT: until pg_stat_archiver has archived SEGMENT (or a later one).
wait_archived() {
  local port=$1 seg=$2 last=""
  for _ in $(seq 1 600); do
    last=$(psql_q "$port" "select coalesce(last_archived_wal, '') from pg_stat_archiver")
    # Segment names sort in LSN order within a timeline; ignore .history files.
    if [ ${#last} -ge 24 ] && [[ ! "${last:0:24}" < "$seg" ]]; then return 0; fi
    sleep 0.1
  done
  psql_q "$port" "select * from pg_stat_archiver" >&2
  fail "segment $seg was not archived (last archived: '$last')"
}

log "pgbench -i -s 1 and segment switches"
as_pg "$PGBIN/pgbench" -q -i -s 1 -h 127.0.0.1 -p "$PORT" -U postgres postgres >/dev/null 2>&1 ||
  fail "pgbench -i"
for i in 1 2 3 4; do
  psql_q "$PORT" "create table t$i as select g, md5(g::text) from generate_series(1, 20000) g" >/dev/null
  LAST=$(psql_q "$PORT" "select pg_walfile_name(pg_switch_wal())")
done
wait_archived "$PORT" "$LAST"
[ "$(psql_q "$PORT" "select failed_count from pg_stat_archiver")" = 0 ] ||
  fail "archive_command failed: $(psql_q "$PORT" "select last_failed_wal from pg_stat_archiver")"

# Every segment PostgreSQL marked as archived comes back identical, and pg_waldump reads it.
SEGS=()
for done in "$PG"/pg_wal/archive_status/*.done; do
  name=$(basename "$done" .done)
  [[ $name =~ ^[0-9A-F]{24}$ ]] && SEGS+=("$name")
done
[ ${#SEGS[@]} -ge 5 ] || fail "expected at least 5 archived segments, found ${#SEGS[@]}"
log "archived ${#SEGS[@]} segments: ${SEGS[0]} .. ${SEGS[-1]}"
for name in "${SEGS[@]}"; do
  pgb archive-get "$REPO" "$name" "$FETCH/$name" || fail "archive-get $name"
  cmp "$FETCH/$name" "$PG/pg_wal/$name" || fail "$name differs from pg_wal's copy"
done
[ "$(stat -c %U "$FETCH/${SEGS[0]}")" = postgres ] || fail "fetched file not owned by postgres"
# pg_waldump over the whole fetched range. It stops at the first error, which must only be the end
# of the WAL (zeros after the last switch).
rc=0
as_pg "$PGBIN/pg_waldump" -p "$FETCH" "${SEGS[0]}" "${SEGS[-1]}" >"$T/waldump.out" 2>&1 || rc=$?
records=$(grep -c '^rmgr:' "$T/waldump.out" || true)
[ "$records" -gt 1000 ] || { tail "$T/waldump.out" >&2; fail "pg_waldump read only $records records"; }
grep -q '^rmgr: Heap' "$T/waldump.out" || fail "pg_waldump found no heap records"
if [ $rc -ne 0 ]; then
  tail -1 "$T/waldump.out" | grep -q 'invalid record length\|could not find file' ||
    { tail -3 "$T/waldump.out" >&2; fail "pg_waldump failed inside the archived range"; }
fi
log "pg_waldump read $records records from the fetched segments"

FIRST=${SEGS[0]}
SUM_BEFORE=$(md5sum <"$FETCH/$FIRST")

log "identical duplicate: exit 0"
pgb archive-push "$REPO" "$PG/pg_wal/$FIRST" >"$T/dup.out" || fail "identical duplicate refused"
grep -q "already archived" "$T/dup.out" || fail "no duplicate note: $(cat "$T/dup.out")"

log "bad input: exit 1, nothing stored changes"
expect_status1() {  # expect_status1 DESCRIPTION MESSAGE_PATTERN CMD...
  local what=$1 pattern=$2 rc=0; shift 2
  "$@" >"$T/bad.out" 2>&1 || rc=$?
  [ $rc -eq 1 ] || { cat "$T/bad.out" >&2; fail "$what: exit $rc, expected 1"; }
  grep -q "$pattern" "$T/bad.out" || { cat "$T/bad.out" >&2; fail "$what: message lacks '$pattern'"; }
  log "ok (exit 1): $what: $(head -c 300 "$T/bad.out" | tr '\n' ' ')"
}
# A different file under an archived name.
cp "$PG/pg_wal/$FIRST" "$BAD/$FIRST"
printf '\x42' | dd of="$BAD/$FIRST" bs=1 seek=200000 conv=notrunc status=none
chown postgres "$BAD/$FIRST"
expect_status1 "different duplicate" "already archived with different content" \
  pgb archive-push "$REPO" "$BAD/$FIRST"
# Not a WAL file name.
cp "$PG/pg_wal/$FIRST" "$BAD/xlog-copy"
expect_status1 "wrong name" "not a WAL file name" pgb archive-push "$REPO" "$BAD/xlog-copy"
expect_status1 "lower-case name" "not a WAL file name" \
  pgb archive-push "$REPO" "$BAD/0000000100000000000000ff"
# A truncated segment under a name not archived yet.
NEXT=$(printf '%s%08X' "${SEGS[-1]:0:16}" $((16#${SEGS[-1]:16:8} + 40)))
head -c 8388608 "$PG/pg_wal/${SEGS[-1]}" >"$BAD/$NEXT"
chown postgres "$BAD/$NEXT"
expect_status1 "wrong size" "segment size" pgb archive-push "$REPO" "$BAD/$NEXT"
# Right size, but the page header says another segment.
cp "$PG/pg_wal/${SEGS[-1]}" "$BAD/$NEXT"
expect_status1 "header of another segment" "its name says" pgb archive-push "$REPO" "$BAD/$NEXT"
expect_status1 "nothing stored for $NEXT" "not found in the archive" \
  pgb archive-get "$REPO" "$NEXT" "$FETCH/$NEXT"
[ ! -e "$FETCH/$NEXT" ] || fail "archive-get created $FETCH/$NEXT for a missing file"
# Another cluster's first segment.
pg_init "$T/other"
mkdir -p "$BAD/other-cluster"
cp "$T/other/pg_wal/000000010000000000000001" "$BAD/other-cluster/"
chown -R postgres "$BAD/other-cluster"
SYSID=$(as_pg "$PGBIN/pg_controldata" "$PG" | awk -F: '/system identifier/ {gsub(/ /, "", $2); print $2}')
OTHER=$(as_pg "$PGBIN/pg_controldata" "$T/other" | awk -F: '/system identifier/ {gsub(/ /, "", $2); print $2}')
expect_status1 "another cluster's segment" "$OTHER" \
  pgb archive-push "$REPO" "$BAD/other-cluster/000000010000000000000001"
grep -q "$SYSID" "$T/bad.out" || fail "the message does not name this repository's cluster $SYSID"
expect_status1 "missing file" "No such file" pgb archive-push "$REPO" "$BAD/000000010000000000000077"
expect_status1 "absent history file" "not found in the archive" \
  pgb archive-get "$REPO" 00000009.history "$FETCH/RECOVERYHISTORY"
rc=0; pgb archive-get "$REPO" "$FIRST" >/dev/null 2>&1 || rc=$?
[ $rc -eq 2 ] || fail "archive-get without DEST: exit $rc, expected 2 (usage)"

pgb archive-get "$REPO" "$FIRST" "$FETCH/check" || fail "archive-get $FIRST after bad pushes"
[ "$(md5sum <"$FETCH/check")" = "$SUM_BEFORE" ] || fail "$FIRST changed after bad pushes"
cmp "$FETCH/check" "$PG/pg_wal/$FIRST" || fail "$FIRST differs from pg_wal's copy"

log "restore_command: a pg_basebackup recovered from the archive, promoted to timeline 2"
BB=$T/restored
mkdir -p "$BB" && chown postgres:postgres "$BB" && chmod 700 "$BB"
as_pg "$PGBIN/pg_basebackup" -h 127.0.0.1 -p "$PORT" -U postgres -D "$BB" -X none -c fast ||
  fail "pg_basebackup"
LAST=$(psql_q "$PORT" "select pg_walfile_name(pg_switch_wal())")
wait_archived "$PORT" "$LAST"
# Then, in a segment that is never archived: rows, a restore point, more rows. A DBA salvages the
# segment from the old server's pg_wal; recovery reads it there after the archive says it has
# none, stops at the restore point, and at promotion archives it as a .partial.
psql_q "$PORT" "create table after_backup as select g from generate_series(1, 12345) g" >/dev/null
psql_q "$PORT" "select pg_create_restore_point('rp')" >/dev/null
psql_q "$PORT" "create table after_rp as select g from generate_series(1, 10) g" >/dev/null
CURRENT=$(psql_q "$PORT" "select pg_walfile_name(pg_current_wal_lsn())")
cp "$PG/pg_wal/$CURRENT" "$BB/pg_wal/" && chown postgres "$BB/pg_wal/$CURRENT"
# Both servers may push at once from here on: archive-push waits for the repository's lock.
cat >>"$BB/postgresql.conf" <<EOF
restore_command = '$PGBACKFS archive-get $REPO %f %p'
archive_command = '$PGBACKFS archive-push $REPO %p'
recovery_target_name = 'rp'
recovery_target_action = 'promote'
EOF
touch "$BB/recovery.signal" && chown postgres "$BB/recovery.signal"
PORT2=$(free_port)
pg_start "$BB" "$PORT2"
for _ in $(seq 1 600); do
  [ "$(psql_q "$PORT2" "select pg_is_in_recovery()" 2>/dev/null)" = f ] && break
  sleep 0.1
done
[ "$(psql_q "$PORT2" "select pg_is_in_recovery()")" = f ] || fail "restored server did not promote"
[ "$(psql_q "$PORT2" "select count(*) from after_backup")" = 12345 ] ||
  fail "restored server lacks the rows written after the backup"
[ "$(psql_q "$PORT2" "select count(*) from pg_class where relname = 'after_rp'")" = 0 ] ||
  fail "restored server replayed past the restore point"
[ "$(psql_q "$PORT2" "select timeline_id from pg_control_checkpoint()")" = 2 ] ||
  log "note: restored server's checkpoint timeline is not 2 yet"
psql_q "$PORT2" "create table on_tli2 as select g from generate_series(1, 1000) g" >/dev/null
LAST2=$(psql_q "$PORT2" "select pg_walfile_name(pg_switch_wal())")
wait_archived "$PORT2" "$LAST2"
pgb archive-get "$REPO" 00000002.history "$FETCH/00000002.history" ||
  fail "the new timeline's history file was not archived"
cmp "$FETCH/00000002.history" "$BB/pg_wal/00000002.history" || fail "00000002.history differs"
# Recovery ended inside a segment: PostgreSQL archived the old timeline's segment as .partial.
PARTIAL=$(cd "$BB/pg_wal" && ls | grep '\.partial$' | head -1 || true)
[ -n "$PARTIAL" ] || fail "no .partial segment after promotion in the middle of a segment"
pgb archive-get "$REPO" "$PARTIAL" "$FETCH/$PARTIAL" || fail "archive-get $PARTIAL"
cmp "$FETCH/$PARTIAL" "$BB/pg_wal/$PARTIAL" || fail "$PARTIAL differs"
log "archived and fetched $PARTIAL"
pgb archive-get "$REPO" "$LAST2" "$FETCH/$LAST2" || fail "archive-get $LAST2"
cmp "$FETCH/$LAST2" "$BB/pg_wal/$LAST2" || fail "$LAST2 differs"
[ "$(psql_q "$PORT2" "select failed_count from pg_stat_archiver")" = 0 ] ||
  fail "the restored server's archive_command failed"
[ "$(psql_q "$PORT" "select failed_count from pg_stat_archiver")" = 0 ] ||
  fail "the original server's archive_command failed"
log "PASS"
