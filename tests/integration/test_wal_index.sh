#!/usr/bin/env bash
# The WAL parser and index against real PostgreSQL 15 WAL (1 MiB segments), with pg_waldump as the
# oracle: a server archives WAL while transactions commit, abort, prepare, a restore point is
# made, a big insert makes records cross segment boundaries, then a DELETE and pg_switch_wal.
#   - `pgbackfs debug wal-parse` reports the same commits/aborts (xid, LSN, time), restore point,
#     checkpoints (redo, timeline) and switch records as pg_waldump for the same files, and ends
#     each where pg_waldump's next record begins (MAXALIGNed, past a page header), records that
#     span pages included;
#   - a damaged segment is refused with a message naming the file and LSN;
#   - `pgbackfs debug wal-index` (shuffled, then in order) and `wal-find` answer the xid, restore
#     point and time queries as pg_waldump's output says, with no gap and nothing unverified.
# Usage: bash test_wal_index.sh PATH_TO_PGBACKFS
source "$(dirname "$0")/lib.sh" "$1"

rc=0
"$PGBACKFS" debug wal-parse "$T/no-such-file" >/dev/null 2>&1 || rc=$?
if [ "$rc" -eq 2 ]; then  # a usage error: the subcommand does not exist
  log "SKIP: this build has no 'pgbackfs debug wal-parse' (AddDebugWalCommands is not registered in tools/cli.cc)"
  exit 0
fi

PORT=$(free_port)
DATA=$T/data
ARCHIVE=$T/archive
REPO=$T/repo
export TZ=UTC

log "PostgreSQL 15 with 1 MiB WAL segments on port $PORT"
mkdir -p "$DATA" "$ARCHIVE" && chown postgres:postgres "$DATA" "$ARCHIVE" && chmod 700 "$DATA"
as_pg "$PGBIN/initdb" -k -A trust -U postgres --wal-segsize=1 -D "$DATA" >"$T/initdb.log" 2>&1 || {
  cat "$T/initdb.log"; fail "initdb"; }
pg_start "$DATA" "$PORT" archive_mode=on "archive_command='cp %p $ARCHIVE/%f'" \
  max_prepared_transactions=5 wal_level=replica autovacuum=off

q() { psql_q "$PORT" "$@"; }
q "select pg_switch_wal()" >/dev/null
q "checkpoint"
q "create table t(id int primary key, v text)"
for i in 1 2 3; do q "insert into t select g, md5(g::text) from generate_series($i*10, $i*10+9) g"; done
q "begin; insert into t values (1000, 'x'); rollback;"
q "begin; insert into t values (2000, 'p'); prepare transaction 'p1';"
q "commit prepared 'p1'"
q "begin; insert into t values (3000, 'q'); prepare transaction 'p2';"
q "rollback prepared 'p2'"
# 2000 subtransactions with an xid each: the commit record lists them (8 KB), so it spans pages.
q "do \$\$ begin for i in 1..2000 loop begin insert into t values (200000 + i, 's'); exception when others then null; end; end loop; end \$\$"
# About 4 MiB of WAL in small transactions and one big one: records cross pages and segments.
for i in $(seq 1 20); do
  q "insert into t select g, repeat(md5(g::text), 4) from generate_series($i*1000+10000, $i*1000+10999) g"
done
q "insert into t select g, repeat(md5(g::text), 8) from generate_series(100000, 110000) g"
q "select pg_create_restore_point('before_delete')" >/dev/null
DEL_XID=$(q "with d as (delete from t where id < 20 returning 1) select txid_current() from (select count(*) from d) c")
q "checkpoint"
LAST=$(q "select pg_walfile_name(pg_current_wal_lsn())")
q "select pg_switch_wal()" >/dev/null
for _ in $(seq 1 100); do
  [ -f "$ARCHIVE/$LAST" ] && break
  sleep 0.2
done
[ -f "$ARCHIVE/$LAST" ] || fail "segment $LAST was not archived"
pg_stop "$DATA"

mapfile -t FILES < <(ls "$ARCHIVE" | grep -E '^[0-9A-F]{24}$' | sort)
[ "${#FILES[@]}" -ge 4 ] || fail "expected at least 4 archived segments, got ${#FILES[@]}"
PATHS=("${FILES[@]/#/$ARCHIVE/}")
log "${#FILES[@]} archived segments: ${FILES[0]} .. ${FILES[-1]}"

"$PGBACKFS" debug wal-parse --stats "${PATHS[@]}" >"$T/ours.txt" 2>"$T/ours.err" || {
  cat "$T/ours.txt" "$T/ours.err" >&2; fail "debug wal-parse failed"; }
cat "$T/ours.err" >&2
as_pg "$PGBIN/pg_waldump" -p "$ARCHIVE" "${FILES[0]}" "${FILES[-1]}" >"$T/waldump.txt" 2>"$T/waldump.err" || true
grep -q "SWITCH" "$T/waldump.txt" || { cat "$T/waldump.err" >&2; fail "pg_waldump printed nothing useful"; }

# Normalizes both outputs to "TYPE lsn xid time" / "RESTORE_POINT lsn name" /
# "CHECKPOINT_* lsn redo tli" / "SWITCH lsn" lines, and compares them.
if ! python3 - "$T/ours.txt" "$T/waldump.txt" "$T" <<'PY'
import re, sys
ours_path, dump_path, tmp = sys.argv[1:4]
def lsn(s):
    hi, lo = s.split('/')
    return '%X/%X' % (int(hi, 16), int(lo, 16))
ours = []
for line in open(ours_path):
    f = line.split()
    if not f or f[0] == 'file':
        continue
    t, l = f[0], lsn(f[2])
    if t in ('COMMIT', 'ABORT', 'COMMIT_PREPARED', 'ABORT_PREPARED'):
        m = re.search(r' xid (\d+) time (.*)$', line)
        ours.append('%s %s %s %s' % (t, l, m.group(1), m.group(2)))
    elif t == 'RESTORE_POINT':
        ours.append('%s %s %s' % (t, l, re.search(r"name '(.*)'", line).group(1)))
    elif t.startswith('CHECKPOINT'):
        m = re.search(r' redo (\S+) this_tli (\d+)', line)
        ours.append('%s %s redo %s tli %s' % (t, l, lsn(m.group(1)), m.group(2)))
    elif t == 'SWITCH':
        ours.append('SWITCH %s' % l)
theirs = []
for line in open(dump_path):
    m = re.match(r'rmgr: (\S+)\s+len .*?tx:\s+(\d+), lsn: (\S+), prev \S+, desc: (\S+) ?(.*)$', line)
    if not m:
        continue
    rmgr, tx, l, t, rest = m.groups()
    l = lsn(l.rstrip(','))
    if rmgr == 'Transaction' and t in ('COMMIT', 'ABORT'):
        theirs.append('%s %s %s %s' % (t, l, tx, rest.split(';')[0]))
    elif rmgr == 'Transaction' and t in ('COMMIT_PREPARED', 'ABORT_PREPARED'):
        xid, when = rest.split(': ', 1)
        theirs.append('%s %s %s %s' % (t, l, xid, when.split(';')[0]))
    elif rmgr == 'XLOG' and t == 'RESTORE_POINT':
        theirs.append('%s %s %s' % (t, l, rest.strip()))
    elif rmgr == 'XLOG' and t.startswith('CHECKPOINT'):
        r = re.search(r'redo (\S+); tli (\d+);', rest)
        theirs.append('%s %s redo %s tli %s' % (t, l, lsn(r.group(1)), r.group(2)))
    elif rmgr == 'XLOG' and t == 'SWITCH':
        theirs.append('SWITCH %s' % l)
open(tmp + '/ours.norm', 'w').write('\n'.join(ours) + '\n')
open(tmp + '/waldump.norm', 'w').write('\n'.join(theirs) + '\n')
kinds = {}
for x in ours:
    kinds[x.split()[0]] = kinds.get(x.split()[0], 0) + 1
print('events:', ' '.join('%s=%d' % kv for kv in sorted(kinds.items())))
sys.exit(0 if ours == theirs else 1)
PY
then
  diff "$T/ours.norm" "$T/waldump.norm" | head -20 >&2 || true
  fail "wal-parse and pg_waldump disagree"
fi
for kind in COMMIT ABORT COMMIT_PREPARED ABORT_PREPARED RESTORE_POINT CHECKPOINT_ONLINE SWITCH; do
  grep -q "^$kind " "$T/ours.norm" || fail "no $kind event in the WAL read"
done
# Ends: PostgreSQL's next record starts at our end MAXALIGNed, or past the page header if that is
# a page boundary (1 MiB segments, 8 KiB pages). A switch record's next one is in the next segment.
if ! python3 - "$T/ours.txt" "$T/waldump.txt" <<'PY'
import bisect, re, sys
ours_path, dump_path = sys.argv[1:3]
def lsn(s):
    hi, lo = s.split('/')
    return int(hi, 16) << 32 | int(lo, 16)
starts = sorted(lsn(m.group(1)) for m in
                (re.search(r', lsn: (\S+), prev', l) for l in open(dump_path)) if m)
checked = spanning = bad = 0
for line in open(ours_path):
    f = line.split()
    if not f or f[0] in ('file', 'SWITCH'):
        continue
    start, end = lsn(f[2]), lsn(f[4])
    i = bisect.bisect_right(starts, start)
    if i == len(starts):
        continue  # the last record pg_waldump read
    expected = (end + 7) & ~7
    if expected % 8192 == 0:
        expected += 40 if expected % (1 << 20) == 0 else 24
    checked += 1
    spanning += start // 8192 != (end - 1) // 8192
    if starts[i] != expected:
        bad += 1
        print('%s at %s ends at %s, but the next record is at %X/%X' %
              (f[0], f[2], f[4], starts[i] >> 32, starts[i] & 0xFFFFFFFF))
print('ends: %d events checked against the next record, %d of them span pages' % (checked, spanning))
sys.exit(1 if bad or spanning == 0 else 0)
PY
then
  fail "event ends disagree with pg_waldump (or no event spans pages)"
fi

CROSSING=$(awk '/^file/ && / continues 1 / {n++} END {print n+0}' "$T/ours.txt")
[ "$CROSSING" -ge 1 ] || fail "expected records crossing a segment boundary"
log "ok: wal-parse agrees with pg_waldump ($(wc -l <"$T/ours.norm") events, $CROSSING segment-crossing records)"

# A damaged segment is an error naming the file and the record's LSN.
BAD=$T/bad/${FILES[2]}
mkdir -p "$T/bad" && cp "$ARCHIVE/${FILES[2]}" "$BAD"
head -c 64 /dev/zero | tr '\0' '\377' | dd of="$BAD" bs=1 seek=300000 conv=notrunc status=none
expect_fail "a damaged segment" "$PGBACKFS" debug wal-parse "$BAD"
grep -q "${FILES[2]}" "$T/expect_fail.out" && grep -qE "at [0-9A-F]+/[0-9A-F]+" "$T/expect_fail.out" ||
  fail "the error does not name the segment and LSN"

# The index: shuffled first (records crossing into a segment indexed first stay unverified), then
# in order (they are resolved), then queries checked against pg_waldump.
"$PGBACKFS" init "$REPO" >/dev/null
mapfile -t SHUFFLED < <(printf '%s\n' "${PATHS[@]}" | shuf --random-source=<(yes))
"$PGBACKFS" debug wal-index "$REPO" "${SHUFFLED[@]}" >"$T/index1.txt" || {
  cat "$T/index1.txt" >&2; fail "wal-index (shuffled)"; }
"$PGBACKFS" debug wal-index "$REPO" "${PATHS[@]}" >"$T/index2.txt" || {
  cat "$T/index2.txt" >&2; fail "wal-index (in order)"; }
"$PGBACKFS" debug wal-find "$REPO" --segments >"$T/segments.txt"
grep -q "FAILED" "$T/segments.txt" && { cat "$T/segments.txt" >&2; fail "a segment failed to index"; }
# Only the first archived segment may start with a record it cannot check (its predecessor, from
# before archiving was on, is not archived).
grep "unverified-head" "$T/segments.txt" | grep -qv "^segment ${FILES[0]}:" && {
  cat "$T/segments.txt" >&2; fail "unverified records left"; }
grep -q "missing 0 failed 0" "$T/segments.txt" || { cat "$T/segments.txt" >&2; fail "gaps reported"; }

# The DELETE's commit, as pg_waldump shows it.
read -r _ DEL_LSN _ DEL_TIME < <(grep "^COMMIT [^ ]* $DEL_XID " "$T/waldump.norm")
[ -n "$DEL_LSN" ] || fail "pg_waldump shows no commit of the DELETE's xid $DEL_XID"
"$PGBACKFS" debug wal-find "$REPO" --xid "$DEL_XID" >"$T/xid.txt"
grep -q "^COMMIT lsn $DEL_LSN .* xid $DEL_XID time $DEL_TIME" "$T/xid.txt" || {
  cat "$T/xid.txt" >&2; fail "wal-find --xid $DEL_XID"; }
read -r _ RP_LSN _ < <(grep '^RESTORE_POINT ' "$T/waldump.norm")
"$PGBACKFS" debug wal-find "$REPO" --restore-point before_delete >"$T/rp.txt"
grep -q "^latest: RESTORE_POINT lsn $RP_LSN " "$T/rp.txt" || { cat "$T/rp.txt" >&2; fail "wal-find --restore-point"; }
# A time just after the transaction record before the DELETE's: that one is before, the DELETE's
# is at or after.
read -r _ PREV_LSN _ PREV_TIME < <(grep -E '^(COMMIT|ABORT)' "$T/waldump.norm" |
  grep -B1 "^COMMIT $DEL_LSN " | head -1)
TARGET=$(python3 -c "
import datetime,sys
t=datetime.datetime.strptime('$PREV_TIME'.replace(' UTC',''), '%Y-%m-%d %H:%M:%S.%f')
print((t+datetime.timedelta(microseconds=1)).strftime('%Y-%m-%d %H:%M:%S.%f'))")
"$PGBACKFS" debug wal-find "$REPO" --time "$TARGET" >"$T/time.txt"
grep -q "^before: .* lsn $PREV_LSN " "$T/time.txt" && grep -q "^at_or_after: COMMIT lsn $DEL_LSN " "$T/time.txt" || {
  cat "$T/time.txt" >&2; fail "wal-find --time $TARGET"; }
log "ok: the index answers xid $DEL_XID, restore point before_delete and time $TARGET as pg_waldump says"
