#!/usr/bin/env bash
# Bad input for every command and for the mount (issue 6 part 4, DESIGN.md invariant 9).
#
# Each case runs one command that must be refused: exit 2 for bad usage, 1 for a failure (or,
# through the mount, a failing system call with the right errno), a message that names the
# problem, and no side effect. At the end the stored data is unchanged: `list --json` is the same,
# every archived WAL file has the same checksum, the clone still works, and `verify` passes.
# The number of bad inputs tried is printed as "bad inputs tried: N".
source "$(dirname "$0")/lib.sh" "$1"

REPO=$T/repo
PG=$T/pg
PG2=$T/pg2
ARCH=$T/arch   # PostgreSQL's own archive (cp), the source of real segments
MNT=$T/mnt
mkdir -p "$ARCH" "$MNT" "$T/in"
chown postgres:postgres "$T" "$ARCH"

BAD_COUNT=0
# The shell functions used as commands below, as programs (timeout runs programs).
resolve() {
  case "$1" in
    pgbf) shift; CMD=("$PGBACKFS" "$@") ;;
    as_pg) shift; CMD=(runuser -u postgres -- "$@") ;;
    *) CMD=("$@") ;;
  esac
}
# bad EXIT PATTERN DESCRIPTION CMD...: CMD exits with EXIT (within 60 s) and prints a message
# matching the extended regular expression PATTERN (case-insensitive) on stderr.
bad() {
  local want=$1 pat=$2 what=$3 rc=0
  shift 3
  resolve "$@"
  timeout 60 "${CMD[@]}" >"$T/bad.out" 2>"$T/bad.err" </dev/null || rc=$?
  if [ "$rc" != "$want" ]; then
    cat "$T/bad.out" "$T/bad.err" >&2
    fail "$what: exit $rc, expected $want"
  fi
  grep -Eqi -- "$pat" "$T/bad.err" || { cat "$T/bad.err" >&2; fail "$what: message does not match '$pat'"; }
  BAD_COUNT=$((BAD_COUNT + 1))
  log "ok ($rc) $what: $(head -c 160 "$T/bad.err" | tr '\n' ' ')"
}
# bad_sys ERRTEXT DESCRIPTION CMD...: a shell tool on the mount fails, with strerror ERRTEXT.
bad_sys() {
  local pat=$1 what=$2 rc=0
  shift 2
  resolve "$@"
  timeout 60 "${CMD[@]}" >"$T/bad.out" 2>&1 </dev/null || rc=$?
  [ "$rc" != 0 ] || fail "$what: succeeded"
  [ "$rc" != 124 ] || fail "$what: hung"
  grep -Eqi -- "$pat" "$T/bad.out" || { cat "$T/bad.out" >&2; fail "$what: not '$pat'"; }
  BAD_COUNT=$((BAD_COUNT + 1))
  log "ok ($rc) $what: $(head -c 160 "$T/bad.out" | tr '\n' ' ')"
}
pgbf() { "$PGBACKFS" "$@"; }

# --- a repository with a backup, archived WAL and a clone --------------------------------------
log "set-up: a cluster, a backup, archived WAL, a clone; a second cluster for foreign WAL"
pgbf init "$REPO" >/dev/null
pg_init "$PG"
cat >>"$PG/postgresql.conf" <<EOF
archive_mode = on
wal_level = replica
archive_command = 'cp %p $ARCH/%f'
EOF
PORT=$(free_port)
pg_start "$PG" "$PORT"
as_pg "$PGBIN/pgbench" -q -i -s 1 -h 127.0.0.1 -p "$PORT" -U postgres postgres >/dev/null 2>&1 ||
  fail "pgbench -i"
CONN="host=127.0.0.1 port=$PORT user=postgres"
pgbf backup "$REPO" -d "$CONN" --fast-checkpoint --label base >/dev/null || fail "backup"
for i in 1 2 3; do
  psql_q "$PORT" "create table t$i as select g, md5(g::text) from generate_series(1, 20000) g"
  LAST=$(psql_q "$PORT" "select pg_walfile_name(pg_switch_wal())")
done
for _ in $(seq 1 300); do [ -f "$ARCH/$LAST" ] && break; sleep 0.1; done
[ -f "$ARCH/$LAST" ] || fail "$LAST was not archived"
SEGS=()
for f in "$ARCH"/*; do
  [[ $(basename "$f") =~ ^[0-9A-F]{24}$ ]] && SEGS+=("$(basename "$f")")
done
[ ${#SEGS[@]} -ge 3 ] || fail "only ${#SEGS[@]} segments archived"
for s in "${SEGS[@]}"; do pgbf archive-push "$REPO" "$ARCH/$s" >/dev/null || fail "push $s"; done
SEG=${SEGS[-1]}          # an archived segment
SEGFILE=$ARCH/$SEG
SNAP=$(pgbf list "$REPO" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["snapshots"][0]["id"])')
pgbf clone create "$REPO" keep --from "$SNAP" >/dev/null || fail "clone create"

# Another cluster: initdb alone writes a first segment with its own system identifier.
pg_init "$PG2"
FOREIGN=$(ls "$PG2/pg_wal" | grep -E '^[0-9A-F]{24}$' | head -1)
[ -n "$FOREIGN" ] || fail "no segment in the second cluster"

# What must not change.
pgbf list "$REPO" --json >"$T/list.before"
pgbf clone list "$REPO" --json | grep -v postmaster_pid >"$T/clones.before"
checksum_archive() {  # REPO: "name md5" of every archived file, via archive-get
  local repo=$1 out=$T/fetch.tmp
  for s in "${SEGS[@]}"; do
    pgbf archive-get "$repo" "$s" "$out" || fail "archive-get $s"
    echo "$s $(md5sum <"$out" | cut -c1-32)"
  done
}
checksum_archive "$REPO" >"$T/wal.before"

# --- usage errors: exit 2 ----------------------------------------------------------------------
log "usage errors"
COMMANDS=(init backup list info restore verify mount umount archive-push archive-get
  "clone create" "clone list" "clone drop" "clone seal" "debug flush" "debug corrupt-chunk"
  expire gc)
bad 2 "usage" "no command" pgbf
bad 2 "usage" "an unknown command" pgbf explode
bad 2 "usage" "an unknown global option" pgbf --explode
for c in "${COMMANDS[@]}"; do
  # shellcheck disable=SC2086
  bad 2 "usage" "$c without its arguments" pgbf $c
  # shellcheck disable=SC2086
  bad 2 "usage" "$c with an unknown option" pgbf $c "$REPO" --no-such-option
done
bad 2 "usage" "clone without a subcommand" pgbf clone
bad 2 "usage" "clone with an unknown subcommand" pgbf clone explode "$REPO"
bad 2 "usage" "debug without a subcommand" pgbf debug
bad 2 "usage" "init with an extra argument" pgbf init "$T/new" extra
bad 2 "usage" "list with an extra argument" pgbf list "$REPO" extra
bad 2 "usage" "info with an extra argument" pgbf info "$REPO" extra
bad 2 "usage" "verify with an extra argument" pgbf verify "$REPO" "$SNAP" extra
bad 2 "usage" "restore with an extra argument" pgbf restore "$REPO" "$SNAP" "$T/r" extra
bad 2 "usage" "umount with an extra argument" pgbf umount "$MNT" extra
bad 2 "usage" "archive-push with an extra argument" pgbf archive-push "$REPO" "$SEGFILE" extra
bad 2 "usage" "archive-get with an extra argument" pgbf archive-get "$REPO" "$SEG" "$T/x" extra
bad 2 "usage" "mount with an extra argument" pgbf mount "$REPO" "$MNT" extra
bad 2 "usage" "backup without -d" pgbf backup "$REPO"
bad 2 "usage" "restore without DEST" pgbf restore "$REPO" "$SNAP"
bad 2 "usage" "archive-get without DEST" pgbf archive-get "$REPO" "$SEG"
bad 2 "usage" "clone seal without --label" pgbf clone seal "$REPO" keep
bad 2 "usage" "clone create without a source" pgbf clone create "$REPO" c1
bad 2 "usage|exclude" "clone create with --from and --target-lsn" \
  pgbf clone create "$REPO" c1 --from "$SNAP" --target-lsn 0/1
bad 2 "usage" "clone create --port 70000" pgbf clone create "$REPO" c1 --from "$SNAP" --port 70000
bad 2 "usage" "clone create --target-action explode" \
  pgbf clone create "$REPO" c1 --target-immediate --target-action explode
bad 2 "usage|chunk size" "init --chunk-size 3KiB" pgbf init "$T/new" --chunk-size 3KiB
bad 2 "usage|chunk size" "init --chunk-size 2MiB" pgbf init "$T/new" --chunk-size 2MiB
bad 2 "usage|chunk size" "init --chunk-size lots" pgbf init "$T/new" --chunk-size lots
bad 2 "usage|compression" "init --compression lz4" pgbf init "$T/new" --compression lz4
bad 2 "usage|compression" "init --compression zstd:99" pgbf init "$T/new" --compression zstd:99
bad 2 "usage" "restore --jobs 0" pgbf restore "$REPO" "$SNAP" "$T/r" --jobs 0
bad 2 "usage" "restore --jobs many" pgbf restore "$REPO" "$SNAP" "$T/r" --jobs many
bad 2 "usage" "backup --max-rate 1" pgbf backup "$REPO" -d "$CONN" --max-rate 1
bad 2 "usage" "archive-push --lock-timeout soon" pgbf archive-push "$REPO" "$SEGFILE" --lock-timeout soon
bad 2 "usage" "mount --dir-cache-mib lots" pgbf mount "$REPO" "$MNT" --dir-cache-mib lots
bad 2 "usage" "expire without a rule" pgbf expire "$REPO"
bad 2 "usage" "expire --keep-last 0" pgbf expire "$REPO" --keep-last 0
bad 2 "usage" "expire --keep-last -1" pgbf expire "$REPO" --keep-last -1
bad 2 "usage" "expire --keep-daily 0" pgbf expire "$REPO" --keep-last 1 --keep-daily 0
bad 2 "usage" "expire --keep-within soon" pgbf expire "$REPO" --keep-last 1 --keep-within soon
bad 2 "usage" "expire --keep-within -5d" pgbf expire "$REPO" --keep-last 1 --keep-within -5d
bad 2 "usage" "gc with an extra argument" pgbf gc "$REPO" extra
[ ! -e "$T/new" ] && [ ! -e "$T/r" ] || fail "a refused command left something behind"

# --- repositories that are not (usable) repositories: exit 1 -----------------------------------
log "paths that are not usable repositories"
printf 'x\n' >"$T/afile"
mkdir -p "$T/notrepo" "$T/notrepo2"
touch "$T/notrepo2/data"
make_fake() {  # NAME JSON: a directory whose pgbackfs.json holds JSON
  mkdir -p "$T/$1"
  printf '%s\n' "$2" >"$T/$1/pgbackfs.json"
}
make_fake foreign '{"tool": "pgbackrest", "format_version": 1, "chunk_size": 8192, "compression": "zstd:3"}'
make_fake garbage '{this is not json'
make_fake binary "$(head -c 300 /dev/urandom | tr -d '\0')"
make_fake array '[1, 2, 3]'
make_fake nofields '{"tool": "pgbackfs"}'
make_fake nochunk '{"tool": "pgbackfs", "format_version": 2, "compression": "zstd:3"}'
make_fake wrongtype '{"tool": "pgbackfs", "format_version": "two", "chunk_size": 8192, "compression": "zstd:3"}'
make_fake badchunk '{"tool": "pgbackfs", "format_version": 2, "chunk_size": 12345, "compression": "zstd:3"}'
make_fake badcomp '{"tool": "pgbackfs", "format_version": 2, "chunk_size": 8192, "compression": "zstd:abc"}'
make_fake version0 '{"tool": "pgbackfs", "format_version": 0, "chunk_size": 8192, "compression": "zstd:3"}'
make_fake empty ''
# A real repository with a newer format, one whose database is gone, and odd config files.
pgbf init "$T/newer" >/dev/null
python3 - "$T/newer/pgbackfs.json" <<'PY'
import json, sys
j = json.load(open(sys.argv[1])); j["format_version"] = 99
open(sys.argv[1], "w").write(json.dumps(j))
PY
pgbf init "$T/nodb" >/dev/null
rm -rf "$T/nodb/db"
mkdir -p "$T/fifo" "$T/cfgdir" "$T/devzero"
mkfifo "$T/fifo/pgbackfs.json"
mkdir "$T/cfgdir/pgbackfs.json"
ln -s /dev/zero "$T/devzero/pgbackfs.json"

declare -A WHY=(
  [nope]="does not exist" [afile]="not a directory" [notrepo]="not a pgbackfs repository"
  [notrepo2]="not a pgbackfs repository" [foreign]="not a pgbackfs repository"
  [garbage]="bad .*pgbackfs.json" [binary]="bad .*pgbackfs.json" [array]="bad .*pgbackfs.json"
  [nofields]="bad .*pgbackfs.json" [nochunk]="bad .*pgbackfs.json"
  [wrongtype]="bad .*pgbackfs.json" [badchunk]="bad .*pgbackfs.json"
  [badcomp]="bad .*pgbackfs.json" [version0]="format version"
  [empty]="bad .*pgbackfs.json" [newer]="newer than this pgbackfs supports"
  [nodb]="database|does not exist|db" [fifo]="pgbackfs.json" [cfgdir]="pgbackfs.json"
  [devzero]="pgbackfs.json")
mkdir -p "$T/mp"
for r in "${!WHY[@]}"; do
  R=$T/$r
  pat=${WHY[$r]}
  bad 1 "$pat" "list on $r" pgbf list "$R"
  bad 1 "$pat" "list --json on $r" pgbf list "$R" --json
  bad 1 "$pat" "info on $r" pgbf info "$R"
  bad 1 "$pat" "verify on $r" pgbf verify "$R"
  bad 1 "$pat" "restore from $r" pgbf restore "$R" latest "$T/dst"
  bad 1 "$pat" "backup into $r" pgbf backup "$R" -d "$CONN"
  bad 1 "$pat" "archive-push into $r" pgbf archive-push "$R" "$SEGFILE"
  bad 1 "$pat" "archive-get from $r" pgbf archive-get "$R" "$SEG" "$T/got"
  bad 1 "$pat" "clone create in $r" pgbf clone create "$R" c1 --from latest
  bad 1 "$pat" "clone list in $r" pgbf clone list "$R"
  bad 1 "$pat" "clone drop in $r" pgbf clone drop "$R" keep
  bad 1 "$pat" "clone seal in $r" pgbf clone seal "$R" keep --label x
  bad 1 "$pat" "mount of $r" pgbf mount "$R" "$T/mp"
  bad 1 "$pat" "debug flush of $r" pgbf debug flush "$R"
  bad 1 "$pat" "expire in $r" pgbf expire "$R" --keep-last 1
  bad 1 "$pat" "gc in $r" pgbf gc "$R"
  [ ! -e "$T/dst" ] && [ ! -e "$T/got" ] || fail "a refused command on $r left output behind"
  mountpoint -q "$T/mp" && fail "$r was mounted"
done
[ ! -e "$T/nope" ] || fail "a command created the missing repository"
[ ! -e "$T/newer/lock" ] && [ ! -e "$T/newer/log" ] || fail "a newer repository was written to"
bad 1 "already a pgbackfs repository" "init of an existing repository" pgbf init "$REPO"
bad 1 "not a directory" "init on a file" pgbf init "$T/afile"
bad 1 "not empty" "init in a non-empty directory" pgbf init "$T/notrepo2"
bad 1 "already a pgbackfs repository|not empty" "init over a newer repository" pgbf init "$T/newer"
bad 1 "No such file|not a directory" "init below a file" pgbf init "$T/afile/repo"

# --- unknown ids, bad names --------------------------------------------------------------------
log "unknown snapshots and clones, bad clone names"
bad 1 "unknown snapshot 'nosuch'" "restore of an unknown snapshot" pgbf restore "$REPO" nosuch "$T/dst"
bad 1 "bad snapshot id" "restore of snapshot ../$SNAP" pgbf restore "$REPO" "../$SNAP" "$T/dst"
bad 1 "bad snapshot id" "restore of an empty snapshot id" pgbf restore "$REPO" "" "$T/dst"
bad 1 "unknown snapshot" "verify of an unknown snapshot" pgbf verify "$REPO" nosuch
bad 1 "unknown snapshot" "clone create from an unknown snapshot" pgbf clone create "$REPO" c1 --from nosuch
bad 1 "snapshot" "clone create from snapshot ." pgbf clone create "$REPO" c1 --from .
bad 1 "unknown snapshot" "debug corrupt-chunk of an unknown snapshot" \
  pgbf debug corrupt-chunk "$REPO" nosuch PG_VERSION
bad 1 "not found|no such" "debug corrupt-chunk of a missing path" \
  pgbf debug corrupt-chunk "$REPO" "$SNAP" no/such/file
bad 1 "unknown snapshot|nosuch" "expire --snapshot of an unknown snapshot" pgbf expire "$REPO" --snapshot nosuch
bad 1 "snapshot" "expire --snapshot ../$SNAP" pgbf expire "$REPO" --snapshot "../$SNAP"
bad 1 "clone" "expire --snapshot of the snapshot a clone uses" pgbf expire "$REPO" --snapshot "$SNAP"
bad 1 "clone 'nosuch'" "clone drop of an unknown clone" pgbf clone drop "$REPO" nosuch
bad 1 "clone 'nosuch'" "clone seal of an unknown clone" pgbf clone seal "$REPO" nosuch --label x
bad 1 "already exists" "clone create of an existing name" pgbf clone create "$REPO" keep --from "$SNAP"
for name in . .. ../x a/b /abs "" "$(printf 'x%.0s' $(seq 1 201))"; do
  bad 1 "bad clone name|clone" "clone create named '${name:0:20}'" pgbf clone create "$REPO" "$name" --from "$SNAP"
  bad 1 "clone" "clone drop named '${name:0:20}'" pgbf clone drop "$REPO" "$name"
done
bad 1 "time|timestamp|target" "clone create --target-time yesterday-ish" \
  pgbf clone create "$REPO" c1 --target-time "not a time"
bad 1 "lsn" "clone create --target-lsn garbage" pgbf clone create "$REPO" c1 --target-lsn zz/zz
bad 1 "xid|transaction" "clone create --target-xid garbage" pgbf clone create "$REPO" c1 --target-xid abc
bad 1 "restore point|name|not found|no " "clone create --target-name unknown" \
  pgbf clone create "$REPO" c1 --target-name no-such-point
bad 1 "time|window|recover|before|no " "clone create --target-time in 1999" \
  pgbf clone create "$REPO" c1 --target-time "1999-01-01 00:00:00+00"

log "restore into bad destinations"
mkdir -p "$T/full" && echo keep >"$T/full/mine"
bad 1 "not empty" "restore into a non-empty directory" pgbf restore "$REPO" "$SNAP" "$T/full"
[ "$(ls "$T/full")" = mine ] && [ "$(cat "$T/full/mine")" = keep ] || fail "restore touched a non-empty DEST"
bad 1 "not a directory|exists" "restore onto a file" pgbf restore "$REPO" "$SNAP" "$T/afile"
[ "$(cat "$T/afile")" = x ] || fail "restore changed a file"
bad 1 "not a directory" "restore below a file" pgbf restore "$REPO" "$SNAP" "$T/afile/sub"
mkdir -p "$T/ro"
if mount -t tmpfs -o ro,size=1m tmpfs "$T/ro" 2>/dev/null; then
  on_exit "umount '$T/ro'"
  bad 1 "read-only" "restore into a read-only file system" pgbf restore "$REPO" "$SNAP" "$T/ro/dst"
  bad 1 "read-only" "archive-get into a read-only file system" pgbf archive-get "$REPO" "$SEG" "$T/ro/seg"
else
  log "SKIP: cannot mount a read-only tmpfs"
fi
mkdir -p "$T/rw" && chown postgres "$T/rw" && chmod 700 "$T/rw"
bad 1 "permission denied|locked|repository" "restore as a user who may not read the repository" \
  as_pg "$PGBACKFS" restore "$REPO" "$SNAP" "$T/rw/dst"

# --- archive-push and archive-get: names, sizes, content ---------------------------------------
log "archive-push: bad names"
for name in not-a-wal 0000000100000000000000ab 00000001000000000000001 0000000100000000000000011 \
  000000000000000000000001 "$SEG.partial.partial" "$SEG.PARTIAL" "$SEG.tmp" "$SEG " \
  00000001.HISTORY 0000001.history "$SEG.history" "$SEG.00000028" archive_status RECOVERYXLOG \
  "$(printf 'A%.0s' $(seq 1 250))"; do
  cp "$SEGFILE" "$T/in/$name" 2>/dev/null || : >"$T/in/x"
  bad 1 "not a WAL file name" "archive-push of '${name:0:40}'" pgbf archive-push "$REPO" "$T/in/$name"
done
bad 1 "not a WAL file name" "archive-push of ." pgbf archive-push "$REPO" "$T/in/."
bad 1 "not a WAL file name" "archive-push of .." pgbf archive-push "$REPO" "$T/in/.."
bad 1 "not a WAL file name" "archive-push of a path ending in /" pgbf archive-push "$REPO" "$T/in/"
bad 1 "not a WAL file name" "archive-push of /" pgbf archive-push "$REPO" /
bad 1 "not a WAL file name" "archive-get of a bad name" pgbf archive-get "$REPO" ../../etc/passwd "$T/got"
bad 1 "not a WAL file name" "archive-get of lower-case hex" pgbf archive-get "$REPO" 00000001000000000000000a "$T/got"
bad 1 "not found in the archive" "archive-get of a missing segment" \
  pgbf archive-get "$REPO" 0000000100000000000000FF "$T/got"
bad 1 "not found in the archive" "archive-get of a missing .history" pgbf archive-get "$REPO" 00000009.history "$T/got"
bad 1 "No such file" "archive-get into a missing directory" pgbf archive-get "$REPO" "$SEG" "$T/no/dir/seg"
mkdir -p "$T/isdir"
bad 1 "directory" "archive-get onto a directory" pgbf archive-get "$REPO" "$SEG" "$T/isdir"
[ ! -e "$T/got" ] || fail "a refused archive-get wrote its DEST"
[ -z "$(ls -A "$T/isdir")" ] || fail "archive-get left a temporary file behind"

log "archive-push: bad sizes and content"
NEXT=$(python3 -c "print('%08X%08X%08X' % (1, 0, int('$SEG'[16:], 16) + 1))")
NEXT2=$(python3 -c "print('%08X%08X%08X' % (1, 0, int('$SEG'[16:], 16) + 2))")
: >"$T/in/$NEXT" && bad 1 "empty" "archive-push of an empty segment" pgbf archive-push "$REPO" "$T/in/$NEXT"
for size in 100 8192 1048576 8388608 16777217 33554432; do
  head -c "$size" "$SEGFILE" >"$T/in/$NEXT"
  [ "$size" -le 16777216 ] || head -c $((size - 16777216)) /dev/zero >>"$T/in/$NEXT"
  bad 1 "bytes|size|short" "archive-push of a $size-byte segment" pgbf archive-push "$REPO" "$T/in/$NEXT"
done
head -c 16777216 /dev/zero >"$T/in/$NEXT"
bad 1 "magic|header" "archive-push of 16 MiB of zeros" pgbf archive-push "$REPO" "$T/in/$NEXT"
head -c 16777216 /dev/urandom >"$T/in/$NEXT"
bad 1 "magic|header" "archive-push of 16 MiB of random bytes" pgbf archive-push "$REPO" "$T/in/$NEXT"
cp "$SEGFILE" "$T/in/$NEXT"
bad 1 "LSN|starts at" "archive-push of a segment under the next segment's name" pgbf archive-push "$REPO" "$T/in/$NEXT"
# The first segment of a new timeline starts with pages of the old one, so only a page header
# timeline above the name's is wrong: timeline 3 in the header, 2 in the name.
python3 - "$SEGFILE" "$T/in/${SEG:0:7}2${SEG:8}" <<'PY'
import struct, sys
d = bytearray(open(sys.argv[1], 'rb').read()); d[4:8] = struct.pack('<I', 3)
open(sys.argv[2], 'wb').write(d)
PY
bad 1 "holds timeline 3" "archive-push of a segment whose header is on a later timeline" \
  pgbf archive-push "$REPO" "$T/in/${SEG:0:7}2${SEG:8}"
python3 - "$SEGFILE" "$T/in/$NEXT" <<'PY'
import sys
d = bytearray(open(sys.argv[1], 'rb').read()); d[0] ^= 0xff
open(sys.argv[2], 'wb').write(d)
PY
bad 1 "magic" "archive-push of a segment with a broken page magic" pgbf archive-push "$REPO" "$T/in/$NEXT"
python3 - "$SEGFILE" "$T/in/$SEG" <<'PY'
import sys
d = bytearray(open(sys.argv[1], 'rb').read()); d[100000] ^= 0xff
open(sys.argv[2], 'wb').write(d)
PY
bad 1 "different content" "archive-push of a different duplicate" pgbf archive-push "$REPO" "$T/in/$SEG"
cp "$PG2/pg_wal/$FOREIGN" "$T/in/$FOREIGN"
bad 1 "cluster" "archive-push of another cluster's segment" pgbf archive-push "$REPO" "$T/in/$FOREIGN"
cp "$PG2/pg_wal/$FOREIGN" "$T/in/$NEXT"
bad 1 "cluster|LSN|starts at" "archive-push of another cluster's segment, renamed" pgbf archive-push "$REPO" "$T/in/$NEXT"
head -c 20 "$SEGFILE" >"$T/in/$NEXT.partial"
bad 1 "has 20 bytes" "archive-push of a 20-byte .partial" pgbf archive-push "$REPO" "$T/in/$NEXT.partial"
head -c 16777216 /dev/urandom >"$T/in/$NEXT2.partial"
bad 1 "magic|header" "archive-push of a random .partial" pgbf archive-push "$REPO" "$T/in/$NEXT2.partial"
bad 1 "No such file" "archive-push of a missing file" pgbf archive-push "$REPO" "$T/in/0000000100000000000000EE"
mkdir -p "$T/in/0000000100000000000000ED"
bad 1 "not a regular file" "archive-push of a directory" pgbf archive-push "$REPO" "$T/in/0000000100000000000000ED"
mkfifo "$T/in/0000000100000000000000EC"
bad 1 "not a regular file" "archive-push of a FIFO" pgbf archive-push "$REPO" "$T/in/0000000100000000000000EC"
ln -sf /dev/zero "$T/in/0000000100000000000000EB"
bad 1 "not a regular file" "archive-push of /dev/zero" pgbf archive-push "$REPO" "$T/in/0000000100000000000000EB"
# Unreadable: root reads anything, so a repository and a file of postgres's, pushed by nobody.
as_pg "$PGBACKFS" init "$T/pgrepo" >/dev/null
head -c 16777216 "$SEGFILE" >"$T/in/unreadable" && chown postgres "$T/in/unreadable" && chmod 000 "$T/in/unreadable"
mkdir -p "$T/in/u" && mv "$T/in/unreadable" "$T/in/u/$SEG" && chmod 755 "$T/in/u"
bad 1 "Permission denied" "archive-push of an unreadable file" as_pg "$PGBACKFS" archive-push "$T/pgrepo" "$T/in/u/$SEG"
bad 1 "Permission denied" "archive-push into a repository the user may not write" \
  runuser -u nobody -- "$PGBACKFS" archive-push "$T/pgrepo" "$SEGFILE"
bad 1 "Permission denied" "list of a repository the user may not read" runuser -u nobody -- "$PGBACKFS" list "$REPO"
[ "$(as_pg "$PGBACKFS" list "$T/pgrepo")" = "no snapshots" ] || fail "the refused pushes changed pgrepo"

log "backup: bad servers and connection strings"
bad 1 "connection string|invalid" "backup with a broken connection string" pgbf backup "$REPO" -d "host='unclosed"
bad 1 "connection string|invalid" "backup with an unknown keyword" pgbf backup "$REPO" -d "hots=localhost"
bad 1 "connect|refused" "backup from a port nobody listens on" \
  pgbf backup "$REPO" -d "host=127.0.0.1 port=$(free_port) user=postgres connect_timeout=5"
bad 1 "nosuchrole|role" "backup as a role that does not exist" \
  pgbf backup "$REPO" -d "host=127.0.0.1 port=$PORT user=nosuchrole"
psql_q "$PORT" "create role norepl login"
bad 1 "replication|permission|REPLICATION" "backup as a role without REPLICATION" \
  pgbf backup "$REPO" -d "host=127.0.0.1 port=$PORT user=norepl dbname=postgres"
PORT2=$(free_port)
pg_start "$PG2" "$PORT2"
bad 1 "cluster" "backup of another cluster" pgbf backup "$REPO" -d "host=127.0.0.1 port=$PORT2 user=postgres" --fast-checkpoint
pg_stop "$PG2"

# --- the mount ---------------------------------------------------------------------------------
log "mount and umount: bad mountpoints, a second mount, bad owners"
OUT=$(pgbf mount "$REPO" "$MNT" --allow-other --owner postgres) || fail "mount"
DAEMON_PID=$(sed -n 's/.*daemon pid \([0-9]*\).*/\1/p' <<<"$OUT")
on_exit "'$PGBACKFS' umount '$MNT' || unmount_quiet '$MNT'; kill -9 $DAEMON_PID"
mkdir -p "$T/mp2" "$T/full2" && touch "$T/full2/x"
bad 1 "locked by pid $DAEMON_PID" "a second mount of a mounted repository" pgbf mount "$REPO" "$T/mp2"
bad 1 "already mounted|not empty|mountpoint" "a second mount on the same mountpoint" pgbf mount "$REPO" "$MNT"
bad 1 "not empty|mountpoint" "another repository on a busy mountpoint" pgbf mount "$T/pgrepo" "$MNT"
bad 1 "does not exist" "a missing mountpoint" pgbf mount "$T/pgrepo" "$T/no-such-dir"
bad 1 "not empty" "a mountpoint that is not empty" pgbf mount "$T/pgrepo" "$T/full2"
bad 1 "not a directory" "a mountpoint that is a file" pgbf mount "$T/pgrepo" "$T/afile"
bad 1 "unknown user" "--owner of a user that does not exist" pgbf mount "$T/pgrepo" "$T/mp2" --owner no-such-user
bad 1 "nothing is mounted" "umount of a directory" pgbf umount "$T/mp2"
bad 1 "nothing is mounted" "umount of a missing path" pgbf umount "$T/no-such-dir"
bad 1 "not a pgbackfs mount" "umount of /proc" pgbf umount /proc
mountpoint -q /proc || fail "umount of /proc unmounted it"
bad 1 "mountpoint|not empty|busy|not a directory|Read-only|Permission" "a mount inside the mount" \
  pgbf mount "$T/pgrepo" "$MNT/backups"
mountpoint -q "$T/mp2" && fail "a refused mount mounted something"

log "forwarded commands: the mount daemon refuses the same bad input"
bad 1 "unknown snapshot" "restore of an unknown snapshot (mounted)" pgbf restore "$REPO" nosuch "$T/dst"
bad 1 "not empty" "restore into a non-empty directory (mounted)" pgbf restore "$REPO" "$SNAP" "$T/full"
bad 1 "bad clone name" "clone create named .. (mounted)" pgbf clone create "$REPO" .. --from "$SNAP"
bad 1 "bad clone name" "clone create named ../x (mounted)" pgbf clone create "$REPO" ../x --from "$SNAP"
bad 1 "clone 'nosuch'" "clone drop of an unknown clone (mounted)" pgbf clone drop "$REPO" nosuch
bad 1 "cluster" "archive-push of another cluster's segment (mounted)" pgbf archive-push "$REPO" "$T/in/$FOREIGN"
bad 1 "different content" "archive-push of a different duplicate (mounted)" pgbf archive-push "$REPO" "$T/in/$SEG"
bad 1 "not a regular file" "archive-push of a FIFO (mounted)" pgbf archive-push "$REPO" "$T/in/0000000100000000000000EC"
bad 1 "already a pgbackfs repository" "init of the mounted repository" pgbf init "$REPO"
bad 1 "read-only|Read-only" "restore into backups/ of the mount" pgbf restore "$REPO" "$SNAP" "$MNT/backups/x"
kill -0 "$DAEMON_PID" || fail "the daemon died"

log "wal/ through the mount: bad names"
W=$MNT/wal
ls "$W" >"$T/walls.before"
for name in not-a-wal 0000000100000000000000ab 00000001000000000000001 0000000100000000000000011 \
  000000000000000000000001 "$NEXT.partial.partial" "$NEXT.Partial" "$NEXT.tmp" "$NEXT " \
  ".$NEXT" "$NEXT~" ... .. . 00000003.HISTORY "$NEXT.history" archive_status RECOVERYXLOG \
  "$(printf '\x01\x02')" 'a\b' "$NEXT.00000028" "$(printf 'A%.0s' $(seq 1 255))"; do
  case "$name" in
    # The kernel resolves these itself: wal/. is wal/, and wal/.. the read-only root.
    . | ..) bad_sys "File exists|Is a directory|Read-only" "create wal/'$name'" as_pg python3 -c \
      'import os, sys; os.open(sys.argv[1], os.O_CREAT | os.O_EXCL | os.O_WRONLY)' "$W/$name" ;;
    *) bad_sys "Invalid argument|File name too long" "cp to wal/'${name:0:40}'" as_pg cp "$SEGFILE" "$W/$name" ;;
  esac
done
bad_sys "File name too long" "cp to a 256-byte name" as_pg cp "$SEGFILE" "$W/$(printf 'B%.0s' $(seq 1 256))"
bad_sys "Invalid argument|Not a directory|No such" "cp below a segment" as_pg cp "$SEGFILE" "$W/$SEG/x"
bad_sys "Invalid argument|No such|Not a directory" "cp to wal/sub/NAME" as_pg cp "$SEGFILE" "$W/sub/$NEXT"

log "wal/ through the mount: bad sizes and content"
cp "$T/in/$FOREIGN" "$T/foreign.seg" && chmod 644 "$T/foreign.seg"
for size in 0 100 8192 1048576 16777217; do
  head -c "$size" "$SEGFILE" >"$T/sized" 2>/dev/null
  [ "$size" -le 16777216 ] || head -c 1 /dev/zero >>"$T/sized"
  chmod 644 "$T/sized"
  bad_sys "Invalid argument" "cp of a $size-byte segment" as_pg cp "$T/sized" "$W/$NEXT"
done
head -c 16777216 /dev/urandom >"$T/random.seg" && chmod 644 "$T/random.seg"
bad_sys "Invalid argument" "cp of 16 MiB of random bytes" as_pg cp "$T/random.seg" "$W/$NEXT"
head -c 16777216 /dev/zero >"$T/zero.seg" && chmod 644 "$T/zero.seg"
bad_sys "Invalid argument" "cp of 16 MiB of zeros" as_pg cp "$T/zero.seg" "$W/$NEXT"
bad_sys "Invalid argument" "cp of a segment under the next name" as_pg cp "$SEGFILE" "$W/$NEXT"
bad_sys "Invalid argument" "cp of another cluster's segment" as_pg cp "$T/foreign.seg" "$W/$FOREIGN"
bad_sys "Invalid argument" "cp of another cluster's segment, renamed" as_pg cp "$T/foreign.seg" "$W/$NEXT"
chmod 644 "$T/in/$SEG"
bad_sys "File exists" "cp of a different duplicate" as_pg cp "$T/in/$SEG" "$W/$SEG"
bad_sys "Invalid argument" "cp of a random .partial" as_pg cp "$T/random.seg" "$W/$NEXT.partial"
bad_sys "Invalid argument|No space|too large|File too large" "a 1 GiB + 1 write into wal/" \
  as_pg dd if=/dev/zero of="$W/$NEXT" bs=1 count=1 seek=1073741824 status=none
bad_sys "Invalid argument" "truncate -s 17M of a new segment" as_pg truncate -s 17M "$W/$NEXT"
bad_sys "Invalid argument|File exists" "dd of one block into an archived segment" \
  as_pg dd if=/dev/zero of="$W/$SEG" bs=8192 count=1 conv=notrunc status=none
bad_sys "Invalid argument|File exists" "truncate -s 0 of an archived segment" as_pg truncate -s 0 "$W/$SEG"
bad_sys "Operation not permitted" "append to an archived segment" as_pg bash -c "echo x >>'$W/$SEG'"
bad_sys "Operation not permitted" "rm of an archived segment" as_pg rm -f "$W/$SEG"
bad_sys "Operation not permitted" "mv of an archived segment" as_pg mv "$W/$SEG" "$W/$NEXT"
bad_sys "Operation not permitted" "ln of an archived segment" as_pg ln "$W/$SEG" "$W/$NEXT"
bad_sys "Operation not permitted" "ln -s in wal/" as_pg ln -s "$SEG" "$W/$NEXT"
bad_sys "Operation not permitted" "mkdir in wal/" as_pg mkdir "$W/$NEXT"
bad_sys "Operation not permitted" "mkfifo in wal/" mkfifo "$W/$NEXT"
bad_sys "Read-only file system" "rmdir of wal/" rmdir "$W"
bad_sys "Operation not permitted|Read-only" "mv of wal/" mv "$W" "$MNT/wal2"
# .history files PostgreSQL itself could not read ("syntax error in history file").
printf 'garbage\0\1\2 not a history file\n' >"$T/h1"
printf '1\t0/3000000\tno recovery target specified\n1\t0/4000000\tagain\n' >"$T/h2"
printf '7\t0/3000000\ta parent timeline that is not older\n' >"$T/h3"
printf '1\tnot-an-lsn\treason\n' >"$T/h4"
head -c 100000 /dev/urandom >"$T/h5"
chmod 644 "$T"/h?
for h in 1 2 3 4 5; do
  bad_sys "Invalid argument" "cp of a bad .history file ($h)" as_pg cp "$T/h$h" "$W/00000007.history"
  mkdir -p "$T/in/h$h" && cp "$T/h$h" "$T/in/h$h/00000007.history"
  bad 1 "history|timeline" "archive-push of a bad .history file ($h)" \
    pgbf archive-push "$REPO" "$T/in/h$h/00000007.history"
done
ls "$W" >"$T/walls.after"
diff "$T/walls.before" "$T/walls.after" || fail "wal/ listing changed"
for s in "${SEGS[@]}"; do cmp "$ARCH/$s" "$W/$s" || fail "$s changed in wal/"; done

log "backups/ and clones/: bad names"
bad_sys "No such file" "a lookup of backups/latest" ls "$MNT/backups/latest"
bad_sys "No such file" "a lookup of backups/nosuch" stat "$MNT/backups/nosuch"
bad_sys "No such file" "a lookup of clones/nosuch" stat "$MNT/clones/nosuch"
bad_sys "No such file" "a lookup of an unknown file in a backup" stat "$MNT/backups/$SNAP/no-such-file"
bad_sys "Not a directory" "a file used as a directory" stat "$MNT/backups/$SNAP/PG_VERSION/x"
bad_sys "File name too long" "a 256-byte name in backups/" stat "$MNT/backups/$(printf 'C%.0s' $(seq 1 256))"
[ "$(cd "$MNT/backups/$SNAP/base/.." && ls | head -1)" = "PG_VERSION" ] ||
  [ "$(cd "$MNT/backups/$SNAP/base/.." && pwd)" = "$MNT/backups/$SNAP" ] || fail ".. left the snapshot"

"$PGBACKFS" umount "$MNT" >/dev/null || fail "umount"

# --- nothing changed ---------------------------------------------------------------------------
log "the stored data is unchanged"
pgbf list "$REPO" --json >"$T/list.after"
diff "$T/list.before" "$T/list.after" || fail "list --json changed"
pgbf clone list "$REPO" --json | grep -v postmaster_pid >"$T/clones.after"
diff "$T/clones.before" "$T/clones.after" || fail "clone list changed"
checksum_archive "$REPO" >"$T/wal.after"
diff "$T/wal.before" "$T/wal.after" || fail "archived WAL changed"
pgbf verify "$REPO" >"$T/verify.out" || { cat "$T/verify.out"; fail "verify"; }
log "$(tail -1 "$T/verify.out")"
echo "bad inputs tried: $BAD_COUNT"
log "PASS: $BAD_COUNT bad inputs refused, stored data unchanged"
