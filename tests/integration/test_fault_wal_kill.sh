#!/usr/bin/env bash
# Fault injection: kill -9 of the mount daemon at a random point while two loops of `cp` push
# distinct real WAL segments (made by a PostgreSQL 15 server) into MOUNT/wal/. After each kill
# the dead mount is unmounted and the repository remounted, and:
#   - every push whose cp returned 0 (in this and every earlier iteration) is present and
#     byte-identical (invariant 1);
#   - nothing else is visible but the interrupted pushes, and those only complete (invariant 3);
#   - each interrupted cp can be run again and succeeds.
# At the end `verify` passes and every acknowledged file is compared once more.
# Iterations: FAULT_ITERS (default 10, CI; tools/reliability.sh runs 60). FAULT_SEED repeats a run.
# Usage: bash test_fault_wal_kill.sh PATH_TO_PGBACKFS
source "$(dirname "$0")/lib.sh" "$1"
source "$(dirname "$0")/fault_lib.sh"

POOL_SIZE=${FAULT_WAL_POOL:-60}  # distinct segments; a new repository starts when all are used
MAX_DELAY_MS=1500
PORT=$(free_port)
PG=$T/pg
POOL=$T/pool
MNT=$T/mnt
mkdir -p "$POOL" "$MNT"
chown postgres:postgres "$T" "$POOL"
log "seed $SEED, $ITERS iterations"

log "making $POOL_SIZE WAL segments with PostgreSQL 15"
pg_init "$PG"
cat >>"$PG/postgresql.conf" <<EOF
archive_mode = on
wal_level = replica
archive_command = 'cp %p $POOL/%f'
max_wal_size = 4GB
checkpoint_timeout = 1h
EOF
pg_start "$PG" "$PORT"
psql_q "$PORT" "CREATE TABLE filler (id int, body text)"
LAST=""
for i in $(seq 1 "$POOL_SIZE"); do
  # About 3 MiB of real records per segment (every 8th one full), the rest of it the zeros
  # pg_switch_wal leaves.
  rows=20000
  [ $((i % 8)) = 0 ] && rows=120000
  LAST=$(psql_q "$PORT" "INSERT INTO filler SELECT g, md5(g::text) || md5((g + $i)::text)
                         FROM generate_series(1, $rows) g;
                         SELECT pg_walfile_name(pg_switch_wal())")
done
for _ in $(seq 1 600); do
  [ "$(psql_q "$PORT" "SELECT last_archived_wal FROM pg_stat_archiver")" = "$LAST" ] && break
  sleep 0.1
done
[ -f "$POOL/$LAST" ] || fail "the last segment $LAST was not archived"
pg_stop "$PG"
# The segments the loop pushes: whole 16 MiB segments, made sparse so the pool stays small.
rm -f "$POOL"/*.partial "$POOL"/*.history "$POOL"/*.backup
for f in "$POOL"/*; do fallocate --dig-holes "$f"; done
mapfile -t SEGS < <(ls "$POOL" | grep -E '^[0-9A-F]{24}$' | sort)
[ "${#SEGS[@]}" -ge "$POOL_SIZE" ] || fail "only ${#SEGS[@]} segments in the pool"
log "pool: ${#SEGS[@]} segments, $(du -sh "$POOL" | cut -f1) on disk"


EPOCH=0
NEXT=0  # index in SEGS of the next segment to push
declare -A ACKED=()  # name -> 1: cp returned 0 (this epoch's repository)
new_epoch() {
  EPOCH=$((EPOCH + 1))
  REPO=$T/repo$EPOCH
  "$PGBACKFS" init "$REPO" >/dev/null
  NEXT=0
  ACKED=()
  log "epoch $EPOCH: new repository $REPO"
}
new_epoch

# push_loop FIRST STEP OUT: pushes SEGS[FIRST], SEGS[FIRST+STEP], ... and stops at the first cp
# that fails (the daemon is gone); writes "start INDEX" before and "ok INDEX" after each cp that
# returned 0.
push_loop() {
  local i=$1 step=$2 out=$3
  while [ "$i" -lt "${#SEGS[@]}" ]; do
    echo "start $i" >>"$out"
    cp "$POOL/${SEGS[$i]}" "$MNT/wal/" 2>>"$out.err" || return 0
    echo "ok $i" >>"$out"
    i=$((i + step))
  done
}

# check_visible: every acknowledged file is there and identical; anything else visible is one
# of the INTERRUPTED pushes and identical too.
check_visible() {
  local name
  for name in "${!ACKED[@]}"; do
    [ -e "$MNT/wal/$name" ] || fail "iteration $it: $name was acknowledged but is missing"
  done
  for name in "${NEWLY_ACKED[@]}"; do
    cmp -s "$POOL/$name" "$MNT/wal/$name" ||
      fail "iteration $it: $name was acknowledged but differs (bytes lost)"
    CHECKED=$((CHECKED + 1))
  done
  VISIBLE=0
  for f in "$MNT"/wal/*; do
    [ -e "$f" ] || continue
    name=$(basename "$f")
    VISIBLE=$((VISIBLE + 1))
    [ -n "${ACKED[$name]:-}" ] && continue
    [[ " ${INTERRUPTED[*]} " == *" $name "* ]] || fail "iteration $it: $name is visible but was never pushed"
    cmp -s "$POOL/$name" "$f" || fail "iteration $it: the interrupted push $name is visible and partial"
    COMMITTED_UNACKED=$((COMMITTED_UNACKED + 1))
  done
}

KILLS=0 ACKED_TOTAL=0 CHECKED=0 REDONE=0 COMMITTED_UNACKED=0
for it in $(seq 1 "$ITERS"); do
  if [ $((NEXT + 8)) -ge "${#SEGS[@]}" ]; then new_epoch; fi
  mount_repo "$REPO" "$MNT"
  rm -f "$T"/loop.*
  push_loop "$NEXT" 2 "$T/loop.a" &
  LOOP_A=$!
  push_loop $((NEXT + 1)) 2 "$T/loop.b" &
  LOOP_B=$!
  random_sleep "$MAX_DELAY_MS"
  kill -9 "$DAEMON_PID"
  KILLS=$((KILLS + 1))
  wait "$LOOP_A" "$LOOP_B" || true
  # Which pushes were acknowledged, and which were under way when the daemon died.
  NEWLY_ACKED=()
  INTERRUPTED=()
  hi=$NEXT  # one past the highest index either loop started
  for l in "$T/loop.a" "$T/loop.b"; do
    [ -f "$l" ] || continue
    while read -r what idx; do
      [ $((idx + 1)) -gt "$hi" ] && hi=$((idx + 1))
      [ "$what" = ok ] && { NEWLY_ACKED+=("${SEGS[$idx]}"); ACKED[${SEGS[$idx]}]=1; }
    done <"$l"
    last=$(tail -1 "$l")
    [[ $last == start\ * ]] && INTERRUPTED+=("${SEGS[${last#start }]}")
  done
  ACKED_TOTAL=$((ACKED_TOTAL + ${#NEWLY_ACKED[@]}))
  unmount_dead "$MNT"
  mount_repo "$REPO" "$MNT"
  check_visible
  # The interrupted cps run again and succeed.
  for name in "${INTERRUPTED[@]}"; do
    cp "$POOL/$name" "$MNT/wal/" || fail "iteration $it: re-running the interrupted cp of $name"
    cmp -s "$POOL/$name" "$MNT/wal/$name" || fail "iteration $it: $name differs after the re-run"
    ACKED[$name]=1
    REDONE=$((REDONE + 1))
  done
  # A loop that stopped early left indices below hi unpushed: push them now so the archive stays
  # contiguous (verify checks the WAL needed by snapshots only, but a real archive has no gaps).
  for ((k = NEXT; k < hi; k++)); do
    name=${SEGS[$k]}
    [ -n "${ACKED[$name]:-}" ] && continue
    cp "$POOL/$name" "$MNT/wal/" || fail "iteration $it: pushing $name after the remount"
    ACKED[$name]=1
  done
  NEXT=$hi
  log "iteration $it: killed after ${SLEPT_MS} ms; ${#NEWLY_ACKED[@]} acknowledged pushes checked," \
    "interrupted: ${INTERRUPTED[*]:-none}; $VISIBLE files in wal/"
  "$PGBACKFS" umount "$MNT" >/dev/null || fail "umount after iteration $it"
done

log "verify and a final comparison of every acknowledged file (epoch $EPOCH)"
"$PGBACKFS" verify "$REPO" >"$T/verify.out" 2>&1 || { cat "$T/verify.out" >&2; fail "verify"; }
tail -1 "$T/verify.out" >&2
mount_repo "$REPO" "$MNT"
for name in "${!ACKED[@]}"; do
  cmp -s "$POOL/$name" "$MNT/wal/$name" || fail "final check: $name differs"
done
"$PGBACKFS" umount "$MNT" >/dev/null || fail "final umount"
for e in $(seq 1 "$EPOCH"); do
  [ "$e" = "$EPOCH" ] && continue
  "$PGBACKFS" verify "$T/repo$e" >"$T/verify.out" 2>&1 || { cat "$T/verify.out" >&2; fail "verify of epoch $e"; }
done
summary wal-kill iterations="$ITERS" kills="$KILLS" acknowledged_pushes_checked="$CHECKED" \
  interrupted_cp_redone="$REDONE" committed_but_unacknowledged="$COMMITTED_UNACKED" \
  repositories="$EPOCH" bytes_lost=0 partial_visible=0
log "PASS"
