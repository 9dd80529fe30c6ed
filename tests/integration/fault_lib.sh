# Helpers shared by the fault-injection tests (test_fault_*.sh, test_enospc.sh), on top of lib.sh.
# Usage: source "$(dirname "$0")/fault_lib.sh"   (after lib.sh)

ITERS=${FAULT_ITERS:-10}  # CI default; tools/reliability.sh runs the full count
SEED=${FAULT_SEED:-$$}
RANDOM=$SEED
FAULT_START=$(date +%s)

# mount_repo REPO MNT: mounts with --allow-other --owner postgres, sets DAEMON_PID; the unmount at
# exit is registered once per mountpoint.
declare -A _FAULT_MOUNTS=()
mount_repo() {
  local repo=$1 mnt=$2 out
  out=$("$PGBACKFS" mount "$repo" "$mnt" --allow-other --owner postgres) || fail "mount $repo"
  DAEMON_PID=$(sed -n 's/.*daemon pid \([0-9]*\).*/\1/p' <<<"$out")
  [ -n "$DAEMON_PID" ] || fail "no daemon pid in: $out"
  if [ -z "${_FAULT_MOUNTS[$mnt]:-}" ]; then
    _FAULT_MOUNTS[$mnt]=1
    on_exit "'$PGBACKFS' umount '$mnt' || unmount_quiet '$mnt'"
  fi
}

# in_mount_table MNT: MNT is mounted, alive or dead (mountpoint(1) cannot stat a dead one).
in_mount_table() { awk -v m="$1" '$2 == m { found = 1 } END { exit !found }' /proc/mounts; }

# unmount_dead MNT: unmounts a mount whose daemon was killed (nothing if it is not mounted).
unmount_dead() {
  in_mount_table "$1" || return 0
  "$PGBACKFS" umount "$1" >/dev/null 2>&1 || fusermount3 -uz "$1" 2>/dev/null || umount -l "$1" || true
  ! in_mount_table "$1" || fail "the dead mount $1 is still mounted"
}

# random_sleep MAX_MS: sleeps a random time in [0, MAX_MS) ms and sets SLEPT_MS.
random_sleep() {
  SLEPT_MS=$((RANDOM * 32768 + RANDOM))
  SLEPT_MS=$((SLEPT_MS % $1))
  sleep "$(printf '%d.%03d' $((SLEPT_MS / 1000)) $((SLEPT_MS % 1000)))"
}

now_ms() { date +%s%3N; }

# kill_at_random PID MAX_MS: kill -9 of PID after a random time in [0, MAX_MS) ms (SLEPT_MS), then
# waits for it. KILLED=1 if it was still running, 0 if it had finished first (exit code in RC).
kill_at_random() {
  local pid=$1
  random_sleep "$2"
  KILLED=0 RC=0
  if kill -9 "$pid" 2>/dev/null; then KILLED=1; fi
  wait "$pid" 2>/dev/null || RC=$?
}

# clone_start MNT NAME: starts postgres on MNT/clones/NAME (log $T/NAME.log), waits until it is
# read-write, sets CPORT.
clone_start() {
  local mnt=$1 name=$2
  as_pg "$PGBIN/pg_ctl" -D "$mnt/clones/$name" -l "$T/$name.log" -w -t 300 start >/dev/null || {
    tail -40 "$T/$name.log" >&2; fail "postgres did not start on clone $name"; }
  on_exit "as_pg $PGBIN/pg_ctl -D '$mnt/clones/$name' -m immediate stop"
  CPORT=$(grep -E "^port = " "$mnt/clones/$name/postgresql.auto.conf" | tail -1 | awk '{print $3}')
  for _ in $(seq 1 240); do
    [ "$(psql_q "$CPORT" "SELECT pg_is_in_recovery()" 2>/dev/null)" = f ] && return 0
    sleep 0.25
  done
  fail "clone $name did not leave recovery"
}
clone_stop() {
  as_pg "$PGBIN/pg_ctl" -D "$1/clones/$2" -m fast -w -t 300 stop >/dev/null || fail "stop clone $2"
}

snapshot_ids() { "$PGBACKFS" list "$1" --json | jq -r '.snapshots[].id' | sort | tr '\n' ' '; }

# verify_ok REPO [SNAPSHOT]: verify must pass.
verify_ok() {
  "$PGBACKFS" verify "$@" >"$T/verify.out" 2>&1 || { cat "$T/verify.out" >&2; fail "verify $*"; }
}

# summary NAME KEY=VALUE...: the line docs/RELIABILITY.md quotes.
summary() {
  local name=$1; shift
  log "FAULT-SUMMARY $name: $* seconds=$(($(date +%s) - FAULT_START)) seed=$SEED"
}
