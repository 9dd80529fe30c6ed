#!/usr/bin/env bash
# Builds pgbackfs with ThreadSanitizer into ./build-tsan (or $BUILD_DIR) and runs the unit tests
# under it: the FUSE driver (fs_*, mounted for real), the chunk store, trees, snapshots, clones,
# the WAL archive and index, the control socket. Fails on any report. Extra arguments go to the
# test binary (e.g. --gtest_filter='FsClone*'). docs/RELIABILITY.md says how long it takes.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build-tsan}
BUILD_TYPE=${BUILD_TYPE:-RelWithDebInfo} BUILD_DIR=$BUILD_DIR ./tools/build.sh -DPGBACKFS_TSAN=ON
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
# halt_on_error: the first race fails the run; the report goes to stderr and to $logs.
export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:history_size=4:log_path=$logs/tsan:suppressions=$PWD/tests/sanitizers/tsan.supp"
status=0
"$BUILD_DIR/tests/pgbackfs_unit_tests" --gtest_brief=1 "$@" || status=$?
if compgen -G "$logs/tsan*" >/dev/null; then
  cat "$logs"/tsan*
  echo "tsan.sh: ThreadSanitizer reported the races above" >&2
  status=1
fi
[ "$status" = 0 ] && echo "tsan.sh: no ThreadSanitizer reports"
exit "$status"
