#!/usr/bin/env bash
# Fault injection: kill -9 at random points of the commands that write snapshots.
#   backup (standalone): killed at a random point of its run, nothing is listed, verify passes,
#     and a re-run succeeds;
#   backup forwarded to the mount daemon: the daemon is killed, after a remount nothing is listed
#     and verify passes;
#   clone seal (standalone, and forwarded to the daemon): either the seal committed fully (the new
#     snapshot verifies and a clone of it starts with the sealed rows) or nothing new is visible;
#     either way the clone is intact (same rows) and can be sealed again.
# gc and expire do not exist yet; nothing to kill there.
# Iterations: FAULT_ITERS (default 10: CI; tools/reliability.sh runs more).
# Usage: bash test_fault_kill.sh PATH_TO_PGBACKFS
source "$(dirname "$0")/lib.sh" "$1"
source "$(dirname "$0")/fault_lib.sh"

BACKUP_ITERS=$(((ITERS + 1) / 2))
SEAL_ITERS=$(((ITERS + 1) / 2))
PORT=$(free_port)
DATA=$T/data
REPO=$T/repo
MNT=$T/mnt
CONN="host=127.0.0.1 port=$PORT user=postgres"
mkdir -p "$MNT"
chown postgres:postgres "$T"

log "source: PostgreSQL 15, pgbench scale 5"
pg_init "$DATA"
pg_start "$DATA" "$PORT"
as_pg "$PGBIN/pgbench" -i -q -s 5 -h 127.0.0.1 -p "$PORT" -U postgres postgres \
  >"$T/pgbench.log" 2>&1 || { cat "$T/pgbench.log"; fail "pgbench -i"; }
psql_q "$PORT" "CREATE TABLE notes AS SELECT g AS id, md5(g::text) AS body FROM generate_series(1, 200000) g"
"$PGBACKFS" init "$REPO" >/dev/null

log "a first backup, to time one"
t0=$(now_ms)
"$PGBACKFS" backup "$REPO" -d "$CONN" --fast-checkpoint --label first >"$T/backup.out" 2>&1 ||
  { cat "$T/backup.out"; fail "first backup"; }
BACKUP_MS=$(($(now_ms) - t0))
SNAP=$("$PGBACKFS" list "$REPO" --json | jq -r '.snapshots[-1].id')
log "backup $SNAP took $BACKUP_MS ms"

BACKUP_KILLS=0 BACKUP_KILLS_MID=0
log "kill -9 of a standalone backup, $BACKUP_ITERS times"
for it in $(seq 1 "$BACKUP_ITERS"); do
  before=$(snapshot_ids "$REPO")
  psql_q "$PORT" "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid <= $((it * 5000))"
  "$PGBACKFS" backup "$REPO" -d "$CONN" --fast-checkpoint --label "killed $it" >"$T/killed.out" 2>&1 &
  B=$!
  t0=$(now_ms)
  random_sleep "$BACKUP_MS"
  if kill -9 "$B" 2>/dev/null; then
    BACKUP_KILLS=$((BACKUP_KILLS + 1))
    wait "$B" 2>/dev/null || true
    [ "$(snapshot_ids "$REPO")" = "$before" ] || fail "iteration $it: the killed backup is listed"
    verify_ok "$REPO"
    log "backup iteration $it: killed after $SLEPT_MS ms; nothing listed, verify passes"
  else
    wait "$B" || { cat "$T/killed.out"; fail "iteration $it: the backup failed"; }
    BACKUP_MS=$(($(now_ms) - t0))  # later backups store less: aim at their duration
    log "backup iteration $it: finished before the kill at $SLEPT_MS ms (took $BACKUP_MS ms)"
  fi
done
log "a re-run after the kills"
"$PGBACKFS" backup "$REPO" -d "$CONN" --fast-checkpoint --label rerun >"$T/rerun.out" 2>&1 ||
  { cat "$T/rerun.out"; fail "backup after the kills"; }
RERUN=$("$PGBACKFS" list "$REPO" --json | jq -r '.snapshots[-1].id')
verify_ok "$REPO" "$RERUN"

log "kill -9 of the mount daemon during a forwarded backup, 2 times"
for it in 1 2; do
  mount_repo "$REPO" "$MNT"
  before=$(snapshot_ids "$REPO")
  "$PGBACKFS" backup "$REPO" -d "$CONN" --fast-checkpoint --label "daemon killed" >"$T/fwd.out" 2>&1 &
  B=$!
  random_sleep "$BACKUP_MS"
  kill -9 "$DAEMON_PID"
  BACKUP_KILLS=$((BACKUP_KILLS + 1))
  if wait "$B"; then
    # It finished before the kill: then it must be listed.
    unmount_dead "$MNT"
    [ "$(snapshot_ids "$REPO")" != "$before" ] || fail "forwarded backup said ok but is not listed"
    log "forwarded backup $it: committed before the kill at $SLEPT_MS ms"
  else
    unmount_dead "$MNT"
    [ "$(snapshot_ids "$REPO")" = "$before" ] || fail "the backup of the killed daemon is listed"
    log "forwarded backup $it: daemon killed after $SLEPT_MS ms; the client failed: $(tail -1 "$T/fwd.out")"
  fi
  verify_ok "$REPO"
done

log "a clone with changes to seal"
"$PGBACKFS" clone create "$REPO" work --from "$RERUN" >/dev/null || fail "clone create"
mount_repo "$REPO" "$MNT"
clone_start "$MNT" work
psql_q "$CPORT" "CREATE TABLE sealed_rows AS SELECT g AS id, md5(g::text) || md5((g * 7)::text) AS body FROM generate_series(1, 400000) g"
psql_q "$CPORT" "UPDATE pgbench_accounts SET abalance = abalance - 3 WHERE aid % 50 = 0"
CHECK_SQL="SELECT (SELECT count(*) FROM sealed_rows) || ' ' || (SELECT sum(hashtext(body)) FROM sealed_rows) || ' ' || (SELECT sum(abalance) FROM pgbench_accounts)"
EXPECTED=$(psql_q "$CPORT" "$CHECK_SQL")
clone_stop "$MNT" work
"$PGBACKFS" umount "$MNT" >/dev/null || fail "umount"

# check_sealed SNAPSHOT: verify it, clone it, start the clone and compare the rows.
CHECKED_SEALS=0
check_sealed() {
  local snap=$1 name=check$CHECKED_SEALS
  verify_ok "$REPO" "$snap"
  "$PGBACKFS" clone create "$REPO" "$name" --from "$snap" >/dev/null || fail "clone of sealed $snap"
  mount_repo "$REPO" "$MNT"
  clone_start "$MNT" "$name"
  [ "$(psql_q "$CPORT" "$CHECK_SQL")" = "$EXPECTED" ] || fail "sealed snapshot $snap: rows differ"
  clone_stop "$MNT" "$name"
  "$PGBACKFS" clone drop "$REPO" "$name" >/dev/null || fail "drop $name"
  "$PGBACKFS" umount "$MNT" >/dev/null || fail "umount"
  CHECKED_SEALS=$((CHECKED_SEALS + 1))
}

log "a first seal, to time one"
t0=$(now_ms)
"$PGBACKFS" clone seal "$REPO" work --label "seal 0" >"$T/seal.out" 2>&1 || { cat "$T/seal.out"; fail "seal"; }
SEAL_MS=$(($(now_ms) - t0))
log "seal took $SEAL_MS ms: $(cat "$T/seal.out")"

SEAL_KILLS=0 SEAL_COMMITTED=0 SEAL_NOTHING=0
# seal_outcome BEFORE: what a killed seal left, in OUTCOME: "nothing" (then verify passes) or
# the one new snapshot, which is then verified, cloned and started.
seal_outcome() {
  local before=$1 after
  after=$(snapshot_ids "$REPO")
  if [ "$after" = "$before" ]; then
    SEAL_NOTHING=$((SEAL_NOTHING + 1))
    verify_ok "$REPO"
    OUTCOME=nothing
    return
  fi
  OUTCOME=$(comm -13 <(tr ' ' '\n' <<<"$before" | sed '/^$/d') <(tr ' ' '\n' <<<"$after" | sed '/^$/d'))
  [ "$(wc -w <<<"$OUTCOME")" = 1 ] || fail "more than one new snapshot after a killed seal: $OUTCOME"
  SEAL_COMMITTED=$((SEAL_COMMITTED + 1))
  check_sealed "$OUTCOME"
}

log "kill -9 of clone seal (standalone), $SEAL_ITERS times"
for it in $(seq 1 "$SEAL_ITERS"); do
  before=$(snapshot_ids "$REPO")
  "$PGBACKFS" clone seal "$REPO" work --label "killed seal $it" >"$T/seal.out" 2>&1 &
  S=$!
  t0=$(now_ms)
  random_sleep $((SEAL_MS + SEAL_MS / 10 + 1))
  if kill -9 "$S" 2>/dev/null; then
    SEAL_KILLS=$((SEAL_KILLS + 1))
    wait "$S" 2>/dev/null || true
    seal_outcome "$before"
    log "seal iteration $it: killed after $SLEPT_MS ms: $OUTCOME"
  else
    wait "$S" || { cat "$T/seal.out"; fail "seal iteration $it failed"; }
    SEAL_MS=$(($(now_ms) - t0))  # a clone sealed before seals faster: aim at that
    check_sealed "$(sed -n 's/.*as snapshot \([^ ]*\) .*/\1/p' "$T/seal.out")"
    log "seal iteration $it: finished before the kill at $SLEPT_MS ms (took $SEAL_MS ms)"
  fi
done

log "kill -9 of the daemon during a forwarded clone seal, 2 times"
for it in 1 2; do
  mount_repo "$REPO" "$MNT"
  before=$(snapshot_ids "$REPO")
  "$PGBACKFS" clone seal "$REPO" work --label "daemon killed $it" >"$T/seal.out" 2>&1 &
  S=$!
  random_sleep $((SEAL_MS + 200))
  kill -9 "$DAEMON_PID"
  wait "$S" 2>/dev/null || true
  unmount_dead "$MNT"
  SEAL_KILLS=$((SEAL_KILLS + 1))
  seal_outcome "$before"
  log "forwarded seal $it: daemon killed after $SLEPT_MS ms: $OUTCOME"
done

log "the clone is intact and seals again"
mount_repo "$REPO" "$MNT"
clone_start "$MNT" work
[ "$(psql_q "$CPORT" "$CHECK_SQL")" = "$EXPECTED" ] || fail "the clone's rows changed"
clone_stop "$MNT" work
"$PGBACKFS" umount "$MNT" >/dev/null || fail "umount"
"$PGBACKFS" clone seal "$REPO" work --label final >"$T/seal.out" 2>&1 || { cat "$T/seal.out"; fail "final seal"; }
check_sealed "$(sed -n 's/.*as snapshot \([^ ]*\) .*/\1/p' "$T/seal.out")"
verify_ok "$REPO"
summary kill-backup-seal backup_kills="$BACKUP_KILLS" seal_kills="$SEAL_KILLS" \
  seals_committed_before_kill="$SEAL_COMMITTED" seals_left_nothing="$SEAL_NOTHING" \
  sealed_snapshots_started="$CHECKED_SEALS" snapshots="$("$PGBACKFS" list "$REPO" --json | jq '.snapshots | length')" \
  bytes_lost=0 partial_visible=0
log "PASS"
