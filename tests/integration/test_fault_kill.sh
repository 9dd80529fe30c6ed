#!/usr/bin/env bash
# Fault injection: kill -9 at random points of the commands that write snapshots.
#   backup (standalone): killed at a random point of its run, nothing is listed, verify passes,
#     and a re-run succeeds;
#   backup forwarded to the mount daemon: the daemon is killed, after a remount nothing is listed
#     and verify passes;
#   clone seal (standalone, and forwarded to the daemon): either the seal committed fully (the new
#     snapshot verifies and a clone of it starts with the sealed rows) or nothing new is visible;
#     either way the clone is intact (same rows) and can be sealed again;
#   expire: the snapshots listed afterwards are all of them or exactly what the plan keeps;
#   gc (standalone, and forwarded to the daemon while WAL pushes run): verify passes after each
#     kill (every chunk a kept snapshot or WAL file needs is there), pushes acknowledged are
#     intact, and gc runs again.
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

BACKUP_KILLS=0 BACKUP_COMMITTED=0
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
    after=$(snapshot_ids "$REPO")
    verify_ok "$REPO"
    if [ "$after" = "$before" ]; then
      log "backup iteration $it: killed after $SLEPT_MS ms; nothing listed, verify passes"
    else
      # Killed after its commit (before it printed or exited): then it is complete.
      [ "$(comm -13 <(tr ' ' '\n' <<<"$before") <(tr ' ' '\n' <<<"$after") | grep -c .)" = 1 ] ||
        fail "iteration $it: '$after' after a killed backup, before '$before'"
      BACKUP_COMMITTED=$((BACKUP_COMMITTED + 1))
      log "backup iteration $it: killed after $SLEPT_MS ms, after its commit; the new snapshot verifies"
    fi
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
    after=$(snapshot_ids "$REPO")
    if [ "$after" != "$before" ]; then  # killed after the commit, before the reply: complete
      [ "$(comm -13 <(tr ' ' '\n' <<<"$before") <(tr ' ' '\n' <<<"$after") | grep -c .)" = 1 ] ||
        fail "'$after' after the daemon was killed during a backup, before '$before'"
      BACKUP_COMMITTED=$((BACKUP_COMMITTED + 1))
    fi
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

GC_ITERS=$(((ITERS + 4) / 5))
EXPIRE_KILLS=0 GC_KILLS=0 GC_PUSHES=0
log "kill -9 of expire and gc, $GC_ITERS rounds"
# WAL segments for pushes during a forwarded gc (the source archives nowhere; take its pg_wal).
mkdir -p "$T/segs"
t0=$(now_ms)
"$PGBACKFS" gc "$REPO" >"$T/gc.out" 2>&1 || { cat "$T/gc.out"; fail "gc"; }
GC_MS=$(($(now_ms) - t0))
log "gc took $GC_MS ms"
for round in $(seq 1 "$GC_ITERS"); do
  psql_q "$PORT" "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid <= 100000"
  "$PGBACKFS" backup "$REPO" -d "$CONN" --fast-checkpoint --label "gc round $round" >/dev/null 2>&1 ||
    fail "backup in gc round $round"
  before=$(snapshot_ids "$REPO")
  t0=$(now_ms)
  "$PGBACKFS" expire "$REPO" --keep-last 2 --dry-run --json >"$T/plan.json" || fail "expire --dry-run"
  EXPIRE_MS=$((($(now_ms) - t0) * 3 / 2))
  planned=$(jq -r '.snapshots[] | select(.kept) | .id' "$T/plan.json" | sort | tr '\n' ' ')
  "$PGBACKFS" expire "$REPO" --keep-last 2 >"$T/expire.out" 2>&1 &
  kill_at_random $! "$EXPIRE_MS"
  EXPIRE_KILLS=$((EXPIRE_KILLS + KILLED))
  after=$(snapshot_ids "$REPO")
  expire_what="finished before the kill"
  [ "$KILLED" = 0 ] || expire_what="killed $([ "$after" = "$before" ] && echo before || echo after) its commit"
  [ "$after" = "$before" ] || [ "$after" = "$planned" ] ||
    fail "after a killed expire: '$after', neither all '$before' nor the plan '$planned'"
  verify_ok "$REPO"
  "$PGBACKFS" expire "$REPO" --keep-last 2 >/dev/null || fail "expire after the kill"
  [ "$(snapshot_ids "$REPO")" = "$planned" ] || fail "expire re-run: $(snapshot_ids "$REPO"), plan $planned"
  t0=$(now_ms)
  if [ $((round % 2)) = 1 ]; then
    "$PGBACKFS" gc "$REPO" >"$T/gc.out" 2>&1 &
    kill_at_random $! "$GC_MS"
    GC_KILLS=$((GC_KILLS + KILLED))
    gc_what="finished before the kill at"
    [ "$KILLED" = 0 ] || gc_what="killed after"
    log "gc round $round: expire $expire_what; standalone gc $gc_what $SLEPT_MS ms (of ~$GC_MS)"
  else
    mount_repo "$REPO" "$MNT"
    # Pushes of this cluster's WAL (re-pushes of the same bytes are acknowledged too).
    for _ in 1 2; do
      psql_q "$PORT" "INSERT INTO notes SELECT g, md5(g::text) FROM generate_series(1, 20000) g"
      psql_q "$PORT" "SELECT pg_switch_wal()" >/dev/null
    done
    cur=$(psql_q "$PORT" "SELECT pg_walfile_name(pg_current_wal_lsn())")
    for f in $(ls "$DATA/pg_wal" | grep -E '^[0-9A-F]{24}$' | awk -v cur="$cur" '$0 < cur' | tail -3); do
      cp "$DATA/pg_wal/$f" "$T/segs/"
    done
    (for f in "$T"/segs/*; do cp "$f" "$MNT/wal/" && echo "$(basename "$f")" >>"$T/pushed"; done) 2>/dev/null &
    P=$!
    "$PGBACKFS" gc "$REPO" >"$T/gc.out" 2>&1 &
    G=$!
    random_sleep "$GC_MS"
    kill -9 "$DAEMON_PID"
    GC_KILLS=$((GC_KILLS + 1))
    wait "$G" "$P" 2>/dev/null || true
    unmount_dead "$MNT"
    mount_repo "$REPO" "$MNT"
    if [ -f "$T/pushed" ]; then
      while read -r name; do
        cmp -s "$T/segs/$name" "$MNT/wal/$name" || fail "pushed $name is not intact after the kill"
        GC_PUSHES=$((GC_PUSHES + 1))
      done <"$T/pushed"
      rm -f "$T/pushed"
    fi
    "$PGBACKFS" umount "$MNT" >/dev/null || fail "umount"
    log "gc round $round: expire $expire_what; daemon killed during a forwarded gc after $SLEPT_MS ms, pushes running"
  fi
  verify_ok "$REPO"
  t0=$(now_ms)
  "$PGBACKFS" gc "$REPO" >"$T/gc.out" 2>&1 || { cat "$T/gc.out"; fail "gc after the kill"; }
  GC_MS=$(($(now_ms) - t0))
  verify_ok "$REPO"
done
check_sealed "$("$PGBACKFS" list "$REPO" --json | jq -r '[.snapshots[] | select(.kind == "sealed-clone")][-1].id')"
summary kill-backup-seal-gc backup_kills="$BACKUP_KILLS" backups_committed_before_kill="$BACKUP_COMMITTED" \
  seal_kills="$SEAL_KILLS" \
  expire_kills="$EXPIRE_KILLS" gc_kills="$GC_KILLS" pushes_during_gc_checked="$GC_PUSHES" \
  seals_committed_before_kill="$SEAL_COMMITTED" seals_left_nothing="$SEAL_NOTHING" \
  sealed_snapshots_started="$CHECKED_SEALS" snapshots="$("$PGBACKFS" list "$REPO" --json | jq '.snapshots | length')" \
  bytes_lost=0 partial_visible=0
log "PASS"
