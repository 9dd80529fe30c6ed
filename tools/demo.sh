#!/usr/bin/env bash
# The main job end to end on an embedded default, on a fresh machine:
# install dependencies, build, create a repository, mount it, start a throwaway PostgreSQL 15
# whose archive_command copies into the mount, take a backup, bring a copy of it up, query it,
# and print what happened. Everything lives in one temporary directory and is stopped at exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
./tools/setup.sh
BUILD_DIR=${BUILD_DIR:-build} ./tools/build.sh
exec bash "$ROOT/tools/demo_run.sh" "$ROOT/${BUILD_DIR:-build}/pgbackfs"
