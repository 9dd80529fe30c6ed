#!/usr/bin/env bash
# Regenerates the seed corpora in tests/fuzz/corpus/ with the real encoders (make_seeds) and GNU
# tar. Inputs that once crashed a target (tests/fuzz/corpus/<target>/crash-*) are left alone.
#   tests/fuzz/make_seeds.sh [BUILD_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build-fuzz}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/d/base/1" "$tmp/d/global"
printf '15\n' >"$tmp/d/PG_VERSION"
head -c 9000 /dev/zero | tr '\0' 'x' >"$tmp/d/base/1/1259"
: >"$tmp/d/global/pg_control"
ln -s /var/lib/postgresql/ts "$tmp/d/pg_tblspc_link"
long=$(printf 'n%.0s' {1..120})
mkdir -p "$tmp/d/$long" && printf 'long\n' >"$tmp/d/$long/$long"
opts=(--blocking-factor=1 --owner=0 --group=0 --numeric-owner --mtime=2026-11-22 --sort=name -C "$tmp/d")
tar --format=ustar "${opts[@]}" -cf "$tmp/ustar.tar" PG_VERSION base global pg_tblspc_link
tar --format=gnu "${opts[@]}" -cf "$tmp/gnu-longname.tar" .
tar --format=pax "${opts[@]}" -cf "$tmp/pax-longname.tar" "$long" PG_VERSION
"$build/tests/fuzz/make_seeds" tests/fuzz/corpus tests/unit/testdata/pg15-000000010000000000000009.head \
  "$tmp"/*.tar
du -sh tests/fuzz/corpus
