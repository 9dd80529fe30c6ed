#!/usr/bin/env bash
# Installs every build, test and benchmark dependency of pgbackfs on a fresh Debian 12 machine.
set -euo pipefail
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends \
  build-essential cmake pkg-config clang-format clang-14 libclang-rt-14-dev \
  libfuse3-dev fuse3 librocksdb-dev libzstd-dev libxxhash-dev libspdlog-dev libfmt-dev \
  libpq-dev libgtest-dev libgmock-dev libcli11-dev nlohmann-json3-dev \
  postgresql-15 postgresql-client-15 postgresql-contrib pgbackrest \
  procps psmisc util-linux coreutils python3 jq >/dev/null
# The Debian postgresql package starts a cluster of its own; the tests never use it.
