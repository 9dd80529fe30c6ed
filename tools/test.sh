#!/usr/bin/env bash
# Installs dependencies, checks formatting, builds, and runs every test (unit and integration).
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
cd "${BUILD_DIR:-build}"
ctest --output-on-failure --timeout 900 "$@"
