#!/usr/bin/env bash
# Runs every libFuzzer target of BUILD_DIR (configured with -DPGBACKFS_FUZZ=ON) for SECONDS each,
# starting from its checked-in corpus in tests/fuzz/corpus/<target>/, which holds the seeds and
# every input that once crashed a target (so a regression fails at once). New inputs go to a
# scratch directory, never into the checked-in corpus. Fails if any target crashes, leaks or
# times out; the crashing input is kept in BUILD_DIR/fuzz-artifacts/ and printed in hex.
#   tests/fuzz/run.sh [BUILD_DIR] [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build-fuzz}
secs=${2:-10}
shift $(( $# >= 2 ? 2 : $# ))
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(fuzz_tar fuzz_snapshot fuzz_wal_segment fuzz_wal_index
                                     fuzz_control fuzz_backup_stream)
artifacts=$build/fuzz-artifacts
mkdir -p "$artifacts"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=()
for t in "${targets[@]}"; do
  mkdir -p "$work/$t"
  max_len=16384
  case $t in fuzz_wal_segment | fuzz_backup_stream) max_len=65536 ;; esac
  start=$(date +%s)
  rc=0
  "$build/tests/fuzz/$t" -max_total_time="$secs" -max_len=$max_len -timeout=20 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$artifacts/$t-" "$work/$t" "tests/fuzz/corpus/$t" \
    >"$work/$t.log" 2>&1 || rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/$t.log")
  cov=$(grep -o 'cov: [0-9]*' "$work/$t.log" | tail -1 || true)
  echo "fuzz: $t: ${execs:-?} executions in $(( $(date +%s) - start )) s, $cov, exit $rc"
  if [ "$rc" != 0 ]; then
    failed+=("$t")
    grep -v '^#' "$work/$t.log" | tail -60
    for f in "$artifacts/$t-"*; do
      [ -f "$f" ] || continue
      echo "crashing input $f:"
      od -A x -t x1z "$f" | head -40
    done
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: FAILED: ${failed[*]}" >&2
  exit 1
fi
