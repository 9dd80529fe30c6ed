#!/usr/bin/env bash
# Retention: expire and gc on a real repository, mounted, with a server archiving into it.
#   1. three backups with pgbench traffic between them, a clone of the first;
#   2. expire --keep-last 1 keeps the clone's snapshot and removes the middle one; dropping the
#      clone lets the next expire remove the first one and the WAL before the last backup;
#   3. gc, run while cp pushes into wal/ and a backup run beside it, frees space; verify passes;
#      a clone of the kept backup recovers with the remaining WAL and has the rows;
#   4. bad input: missing or zero --keep-last, a bad duration, unknown or cloned snapshots;
#   5. kill -9 of gc (unmounted) at random moments: verify passes afterwards, a backup restores.
# Usage: bash test_retention.sh PATH_TO_PGBACKFS
source "$(dirname "$0")/lib.sh" "$1"

PORT=$(free_port)
DATA=$T/data REPO=$T/repo MNT=$T/mnt
chown postgres "$T"
"$PGBACKFS" init "$REPO" >/dev/null
mkdir -p "$MNT"
"$PGBACKFS" mount "$REPO" "$MNT" --owner postgres --allow-other
on_exit "'$PGBACKFS' umount '$MNT' || fusermount3 -u '$MNT'"

pg_init "$DATA"
pg_start "$DATA" "$PORT" archive_mode=on "archive_command='cp %p $MNT/wal/%f'"
as_pg "$PGBIN/pgbench" -i -q -s 2 -h 127.0.0.1 -p "$PORT" -U postgres postgres >/dev/null 2>&1
backup() {
  "$PGBACKFS" backup "$REPO" -d "host=127.0.0.1 port=$PORT user=postgres" --fast-checkpoint \
    --label "$1" >/dev/null || fail "backup $1"
  "$PGBACKFS" list "$REPO" --json | jq -r '.snapshots[-1].id'
}
traffic() {
  as_pg "$PGBIN/pgbench" -n -t 300 -c 2 -h 127.0.0.1 -p "$PORT" -U postgres postgres >/dev/null 2>&1 ||
    fail "pgbench"
  psql_q "$PORT" "select pg_switch_wal()" >/dev/null
}
wait_archived() {  # writes a little WAL, switches, and waits for that segment in the mount
  local last
  psql_q "$PORT" "create table if not exists tick(t timestamptz); insert into tick values (now())"
  last=$(psql_q "$PORT" "select pg_walfile_name(pg_current_wal_lsn())")
  psql_q "$PORT" "select pg_switch_wal()" >/dev/null
  for _ in $(seq 1 120); do
    [ -f "$MNT/wal/$last" ] && return 0
    sleep 0.5
  done
  fail "WAL up to $last was not archived"
}
wal_count() { ls "$MNT/wal" | grep -c -v history || true; }

S1=$(backup one)
traffic
S2=$(backup two)
traffic
S3=$(backup three)
traffic
wait_archived
"$PGBACKFS" clone create "$REPO" keep --from "$S1" >/dev/null
log "backups $S1 $S2 $S3; $(wal_count) WAL files archived"

# 2. expire.
before=$("$PGBACKFS" list "$REPO" --json | jq -r '[.snapshots[].id] | join(" ")')
"$PGBACKFS" expire "$REPO" --keep-last 1 --dry-run >"$T/dry.out"
grep -q "would remove" "$T/dry.out" || { cat "$T/dry.out" >&2; fail "dry run said nothing"; }
[ "$("$PGBACKFS" list "$REPO" --json | jq -r '[.snapshots[].id] | join(" ")')" = "$before" ] ||
  fail "a dry run removed something"
"$PGBACKFS" expire "$REPO" --keep-last 1 --json >"$T/expire1.json"
[ "$(jq -r --arg s "$S1" '.snapshots[] | select(.id == $s) | .kept' "$T/expire1.json")" = true ] ||
  fail "the cloned snapshot was expired"
jq -r --arg s "$S1" '.snapshots[] | select(.id == $s) | .reasons[]' "$T/expire1.json" | grep -q "clone keep" ||
  fail "the reason for keeping $S1 does not name the clone"
[ "$("$PGBACKFS" list "$REPO" --json | jq -r '[.snapshots[].id] | join(" ")')" = "$S1 $S3" ] ||
  fail "expected $S1 $S3 after the first expire"
# WAL from the segment in which the oldest kept backup starts is kept, what lies before it goes.
seg_of() {  # SNAPSHOT: log and segment (16 hex digits) of its start
  local lsn
  lsn=$("$PGBACKFS" list "$REPO" --json | jq -r --arg s "$1" '.snapshots[] | select(.id == $s) | .start_lsn')
  psql_q "$PORT" "select substr(pg_walfile_name('$lsn'), 9)"
}
[ "$(jq -r '.wal_first_kept' "$T/expire1.json")" = "$(seg_of "$S1")" ] ||
  fail "expire kept WAL from $(jq -r '.wal_first_kept' "$T/expire1.json"), $S1 starts in $(seg_of "$S1")"
[ -f "$MNT/wal/00000001$(seg_of "$S1")" ] || fail "the segment $S1 starts in was removed"
[ -d "$MNT/backups/$S2" ] && fail "an expired backup is still in backups/"
expect_fail "expire --snapshot of a cloned snapshot" "$PGBACKFS" expire "$REPO" --snapshot "$S1"

"$PGBACKFS" clone drop "$REPO" keep >/dev/null
wal_before=$(wal_count)
"$PGBACKFS" expire "$REPO" --keep-last 1 >"$T/expire2.out"
[ "$("$PGBACKFS" list "$REPO" --json | jq -r '[.snapshots[].id] | join(" ")')" = "$S3" ] ||
  fail "expected only $S3 after the second expire"
wal_after=$(wal_count)
[ "$wal_after" -lt "$wal_before" ] || fail "no WAL removed ($wal_before -> $wal_after)"
first_kept=$(ls "$MNT/wal" | grep -v history | head -1)
[ "$first_kept" = "00000001$(seg_of "$S3")" ] || fail "first WAL kept is $first_kept, $S3 starts in $(seg_of "$S3")"
log "expire: $(tail -1 "$T/expire2.out"); first WAL kept $first_kept"

# 3. gc beside pushes and a backup.
as_pg "$PGBIN/pgbench" -n -T 8 -c 2 -h 127.0.0.1 -p "$PORT" -U postgres postgres >/dev/null 2>&1 &
PGB=$!
( for _ in 1 2 3 4; do psql_q "$PORT" "select pg_switch_wal()" >/dev/null; sleep 1.5; done ) &
SW=$!
"$PGBACKFS" backup "$REPO" -d "host=127.0.0.1 port=$PORT user=postgres" --fast-checkpoint \
  --label during-gc \
  >"$T/backup-during-gc.out" 2>&1 &
BK=$!
sleep 1
"$PGBACKFS" gc "$REPO" --json >"$T/gc.json" || { cat "$T/gc.json" >&2; fail "gc"; }
wait $BK || { cat "$T/backup-during-gc.out" >&2; fail "the backup beside gc failed"; }
wait $PGB || fail "pgbench beside gc failed"
wait $SW
wait_archived
[ "$(psql_q "$PORT" "select failed_count from pg_stat_archiver")" = 0 ] || fail "archiving failed beside gc"
deleted=$(jq -r '.deleted_chunks' "$T/gc.json")
[ "$deleted" -gt 0 ] || fail "gc deleted nothing"
log "gc: deleted $deleted chunks ($(jq -r '.deleted_bytes' "$T/gc.json") bytes); chunk store" \
  "$(jq -r '.chunk_store_bytes_before' "$T/gc.json") -> $(jq -r '.chunk_store_bytes_after' "$T/gc.json") bytes"
"$PGBACKFS" verify "$REPO" >"$T/verify.out" || { cat "$T/verify.out" >&2; fail "verify after gc"; }
S4=$("$PGBACKFS" list "$REPO" --json | jq -r '.snapshots[-1].id')
[ "$S4" != "$S3" ] || fail "the backup beside gc is not listed"
# Every archived segment still reads back as the server wrote it (the server keeps the recent ones).
checked=0
for f in "$DATA"/pg_wal/0000000*; do
  n=$(basename "$f")
  [ -f "$MNT/wal/$n" ] || continue
  cmp -s "$f" "$MNT/wal/$n" || fail "archived $n differs after gc"
  checked=$((checked + 1))
done
log "$checked archived segments still byte-identical to the server's"

rows=$(psql_q "$PORT" "select count(*) from pgbench_history")
"$PGBACKFS" clone create "$REPO" after-gc --from "$S3" >/dev/null
CP=$(grep -E '^port = ' "$MNT/clones/after-gc/postgresql.auto.conf" | tail -1 | awk '{print $3}')
as_pg "$PGBIN/pg_ctl" -D "$MNT/clones/after-gc" -l "$T/after-gc.log" -w -t 120 start >/dev/null || {
  tail -20 "$T/after-gc.log" >&2; fail "a clone of the kept backup did not start after gc"; }
on_exit "as_pg $PGBIN/pg_ctl -D '$MNT/clones/after-gc' -m immediate stop"
for _ in $(seq 1 120); do
  [ "$(psql_q "$CP" "select pg_is_in_recovery()" 2>/dev/null)" = f ] && break
  sleep 0.5
done
got=$(psql_q "$CP" "select count(*) from pgbench_accounts")
[ "$got" = 200000 ] || fail "clone after gc: $got accounts"
pg_stop "$MNT/clones/after-gc"
"$PGBACKFS" clone drop "$REPO" after-gc >/dev/null
log "clone of $S3 after gc recovers and has all accounts ($rows history rows on the source)"

# 4. bad input.
expect_fail "expire without a rule" "$PGBACKFS" expire "$REPO"
expect_fail "expire --keep-last 0" "$PGBACKFS" expire "$REPO" --keep-last 0
expect_fail "expire --keep-within 3x" "$PGBACKFS" expire "$REPO" --keep-last 1 --keep-within 3x
expect_fail "expire --snapshot unknown" "$PGBACKFS" expire "$REPO" --snapshot 20990101-000000
rc=0; "$PGBACKFS" expire "$REPO" >/dev/null 2>&1 || rc=$?
[ $rc = 2 ] || fail "a usage error must exit 2, not $rc"
pg_stop "$DATA"
"$PGBACKFS" umount "$MNT"

# 5. kill -9 of gc. An expired backup leaves garbage to collect in each round.
ITERS=${GC_KILL_ITERS:-4}
killed=0
for i in $(seq 1 "$ITERS"); do
  pg_start "$DATA" "$PORT"
  as_pg "$PGBIN/pgbench" -n -t 200 -h 127.0.0.1 -p "$PORT" -U postgres postgres >/dev/null 2>&1
  "$PGBACKFS" backup "$REPO" -d "host=127.0.0.1 port=$PORT user=postgres" --fast-checkpoint >/dev/null
  pg_stop "$DATA"
  "$PGBACKFS" expire "$REPO" --keep-last 1 >/dev/null
  "$PGBACKFS" gc "$REPO" >"$T/gc-kill.out" 2>&1 &
  G=$!
  sleep "$(printf "0.%03d" $((RANDOM % 200)))"
  if kill -9 $G 2>/dev/null; then killed=$((killed + 1)); fi
  wait $G 2>/dev/null || true
  "$PGBACKFS" verify "$REPO" >"$T/verify-kill.out" || { cat "$T/verify-kill.out" >&2; fail "verify after kill -9 of gc ($i)"; }
done
"$PGBACKFS" gc "$REPO" >/dev/null || fail "gc after the kills"
LAST=$("$PGBACKFS" list "$REPO" --json | jq -r '.snapshots[-1].id')
"$PGBACKFS" restore "$REPO" "$LAST" "$T/restored" >/dev/null || fail "restore after the kills"
"$PGBIN/pg_verifybackup" -n "$T/restored" >/dev/null || fail "pg_verifybackup after the kills"
log "kill -9 of gc: $killed of $ITERS runs killed before they finished; verify passed after each; restore ok"
log "PASS"
