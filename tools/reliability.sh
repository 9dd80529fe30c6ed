#!/usr/bin/env bash
# The full fault-injection run (docs/RELIABILITY.md): the CI tests with the full iteration counts.
#   tools/reliability.sh [BUILD_DIR]      (default: build; builds nothing)
# Environment: FAULT_ITERS (default 60) for the kill -9 loops, FAULT_SEED to repeat a run,
# ENOSPC_RUNS (default 3) repetitions of the full-disk test.
# Prints one FAULT-SUMMARY line per test; the logs go to $BUILD_DIR/reliability/.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${1:-build}
BIN=$(readlink -f "$BUILD_DIR/pgbackfs")
[ -x "$BIN" ] || { echo "no $BIN: build first (tools/build.sh)" >&2; exit 2; }
OUT=$BUILD_DIR/reliability
mkdir -p "$OUT"
export FAULT_ITERS=${FAULT_ITERS:-60}
ENOSPC_RUNS=${ENOSPC_RUNS:-3}
failed=0
run() {  # run LOGNAME SCRIPT [ENV=VALUE...]
  local name=$1 script=$2 start rc=0
  shift 2
  start=$(date +%s)
  env "$@" bash "tests/integration/$script" "$BIN" >"$OUT/$name.log" 2>&1 || rc=$?
  if [ "$rc" = 0 ]; then
    echo "PASS $name ($(($(date +%s) - start)) s): $(grep -o 'FAULT-SUMMARY.*' "$OUT/$name.log" | tail -1)"
  else
    echo "FAIL $name ($(($(date +%s) - start)) s): see $OUT/$name.log"
    failed=$((failed + 1))
  fi
}
run wal-kill test_fault_wal_kill.sh
run kill-backup-seal test_fault_kill.sh FAULT_ITERS=$((FAULT_ITERS / 2))
for i in $(seq 1 "$ENOSPC_RUNS"); do run "enospc-$i" test_enospc.sh; done
for i in 1 2 3; do run "corruption-$i" test_backup_restore.sh; done
echo "$failed failed"
[ "$failed" = 0 ]
