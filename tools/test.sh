#!/usr/bin/env bash
# Installs dependencies, checks formatting, builds, and runs every test (unit and integration),
# then the reliability checks (docs/RELIABILITY.md): the unit tests and the core and mount
# integration tests again under ASan+UBSan+LeakSanitizer (build-asan), and every libFuzzer target
# for a bounded time (build-fuzz, clang). SANITIZERS=0 skips those two steps.
# This is the README's test command, and .ci/run calls exactly it.
set -euo pipefail
cd "$(dirname "$0")/.."
./tools/setup.sh
echo "== format check"
files=$(git ls-files '*.cc' '*.h' 2>/dev/null || find repo fs tools tests -name '*.cc' -o -name '*.h')
clang-format --dry-run -Werror $files
echo "== build"
BUILD_DIR=${BUILD_DIR:-build} ./tools/build.sh
echo "== tests"
(cd "${BUILD_DIR:-build}" && ctest --output-on-failure --timeout 900 "$@")
if [ "${SANITIZERS:-1}" != 0 ]; then
  echo "== ASan+UBSan build"
  BUILD_DIR=build-asan ./tools/build.sh -DPGBACKFS_SANITIZE=ON
  echo "== ASan+UBSan tests"
  tests/sanitizers/run_asan.sh build-asan
  echo "== fuzz build"
  CC=clang-14 CXX=clang++-14 BUILD_DIR=build-fuzz ./tools/build.sh -DPGBACKFS_FUZZ=ON
  echo "== fuzz (${FUZZ_SECONDS:-10} s per target)"
  tests/fuzz/run.sh build-fuzz "${FUZZ_SECONDS:-10}"
fi
