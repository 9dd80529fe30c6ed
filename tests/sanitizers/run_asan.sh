#!/usr/bin/env bash
# Runs the tests of an ASan+UBSan build (-DPGBACKFS_SANITIZE=ON) with LeakSanitizer on: all unit
# tests, and the integration tests that cover the core and the mount. The mount daemon forks
# away from the test, and postgres runs `pgbackfs archive-push` as another user, so every report
# goes to a file in a shared directory (log_path, one file per process) instead of a stderr that
# nobody reads; the run fails if any report file appears, whatever the tests said.
#   tests/sanitizers/run_asan.sh [BUILD_DIR] [extra ctest arguments]
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build-asan}
shift $(( $# >= 1 ? 1 : 0 ))
supp=$PWD/tests/sanitizers
reports=$(mktemp -d /tmp/pgbackfs-sanitizer.XXXXXX)
chmod 1777 "$reports"  # archive-push runs as postgres
trap 'rm -rf "$reports"' EXIT
export ASAN_OPTIONS="log_path=$reports/asan:detect_leaks=1:strict_string_checks=1:check_initialization_order=1:detect_stack_use_after_return=1:abort_on_error=0"
export LSAN_OPTIONS="suppressions=$supp/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="log_path=$reports/ubsan:print_stacktrace=1:halt_on_error=1:suppressions=$supp/ubsan.supp"
tests=${ASAN_INTEGRATION_TESTS:-test_backup_restore|test_mount_archive|test_archive_cli|test_clone|test_wal_index}
status=0
(cd "$build" && ctest --output-on-failure --timeout 900 -L unit "$@") || status=$?
(cd "$build" && ctest --output-on-failure --timeout 1800 -R "^integration\.($tests)\$" "$@") ||
  status=$?
if compgen -G "$reports/*" >/dev/null; then
  for f in "$reports"/*; do
    echo "==== sanitizer report $(basename "$f")"
    cat "$f"
  done
  echo "run_asan.sh: sanitizer reports above" >&2
  status=1
fi
[ "$status" = 0 ] && echo "run_asan.sh: no sanitizer reports"
exit "$status"
