#!/usr/bin/env bash
# Concurrency stress on one mounted repository (issue 6 part 6). For STRESS_SECONDS (default 60;
# a longer run: STRESS_SECONDS=600), all at once:
#   - PostgreSQL archives into MOUNT/wal with cp (archive_command) while pgbench runs on it;
#   - STRESS_WRITERS cp loops push their own share of a pool of real segments into MOUNT/wal, then
#     push them again and again (identical duplicates);
#   - STRESS_READERS loops read files of several snapshots with O_DIRECT (through the daemon, not
#     the page cache) and compare their checksums with those of a local restore, and run
#     pg_verifybackup on the newest backup (the server's own checksums);
#   - `pgbackfs backup` of the live server runs back to back (forwarded to the mount daemon);
#   - a clone runs PostgreSQL under pgbench.
# Nothing may fail. Afterwards every pushed file is byte-identical, the archiver never failed,
# and `verify` passes. The figures are printed as "stress: ...".
source "$(dirname "$0")/lib.sh" "$1"

DURATION=${STRESS_SECONDS:-60}
WRITERS=${STRESS_WRITERS:-3}
READERS=${STRESS_READERS:-2}
POOL_SEGMENTS=${STRESS_POOL_SEGMENTS:-18}
REPO=$T/repo
MNT=$T/mnt
PG=$T/pg
POOL=$T/pool
RESTORED=$T/restored
OPS=$T/ops
mkdir -p "$MNT" "$POOL" "$RESTORED" "$OPS"
chown postgres:postgres "$T" "$POOL"
PORT=$(free_port)
CPORT=$(free_port)

log "set-up: a source cluster, a pool of $POOL_SEGMENTS archived segments, two backups"
"$PGBACKFS" init "$REPO" >/dev/null
pg_init "$PG"
cat >>"$PG/postgresql.conf" <<EOF
archive_mode = on
wal_level = replica
archive_command = 'cp %p $POOL/%f'
wal_keep_size = 2GB
max_wal_senders = 10
EOF
pg_start "$PG" "$PORT"
CONN="host=127.0.0.1 port=$PORT user=postgres"
as_pg "$PGBIN/pgbench" -q -i -s 2 -h 127.0.0.1 -p "$PORT" -U postgres postgres >/dev/null 2>&1 ||
  fail "pgbench -i"
psql_q "$PORT" "create table filler (id int, body text)"
"$PGBACKFS" backup "$REPO" -d "$CONN" --fast-checkpoint --label before-1 >/dev/null || fail "backup 1"
for i in $(seq 1 "$POOL_SEGMENTS"); do
  psql_q "$PORT" "insert into filler select g, md5(g::text) from generate_series(1, 2000) g" >/dev/null
  LAST=$(psql_q "$PORT" "select pg_walfile_name(pg_switch_wal())")
  [ "$i" = $((POOL_SEGMENTS / 2)) ] && { "$PGBACKFS" backup "$REPO" -d "$CONN" --fast-checkpoint \
    --label before-2 >/dev/null || fail "backup 2"; }
done
for _ in $(seq 1 600); do [ -f "$POOL/$LAST" ] && break; sleep 0.1; done
[ -f "$POOL/$LAST" ] || fail "$LAST was not archived into the pool"
mapfile -t SEGS < <(ls "$POOL" | grep -E '^[0-9A-F]{24}$')
[ ${#SEGS[@]} -ge "$POOL_SEGMENTS" ] || fail "only ${#SEGS[@]} segments in the pool"
chmod 644 "$POOL"/*
mapfile -t SNAPS < <("$PGBACKFS" list "$REPO" --json |
  python3 -c 'import json,sys; [print(s["id"]) for s in json.load(sys.stdin)["snapshots"]]')
[ ${#SNAPS[@]} = 2 ] || fail "expected 2 snapshots"
# The originals: each snapshot restored locally, and the checksums of 40 of its files.
for s in "${SNAPS[@]}"; do
  "$PGBACKFS" restore "$REPO" "$s" "$RESTORED/$s" >/dev/null || fail "restore $s"
  (cd "$RESTORED/$s" && find . -type f -size +0 | sort | awk 'NR % 7 == 1' | head -40 |
    xargs md5sum | sed "s|  \./|  $s/|") >>"$T/originals.md5"
done
log "$(wc -l <"$T/originals.md5") reference checksums from local restores of ${SNAPS[*]}"

log "mount, switch the source's archive_command to the mount, start a clone"
OUT=$("$PGBACKFS" mount "$REPO" "$MNT" --allow-other --owner postgres) || fail "mount"
DAEMON_PID=$(sed -n 's/.*daemon pid \([0-9]*\).*/\1/p' <<<"$OUT")
on_exit "'$PGBACKFS' umount '$MNT' || unmount_quiet '$MNT'"
on_exit "grep -qa pgbackfs /proc/$DAEMON_PID/cmdline && kill -9 $DAEMON_PID"
psql_q "$PORT" "alter system set archive_command = 'cp %p $MNT/wal/%f'" >/dev/null
psql_q "$PORT" "select pg_reload_conf()" >/dev/null
"$PGBACKFS" clone create "$REPO" busy --from "${SNAPS[0]}" --port "$CPORT" >/dev/null || fail "clone create"
as_pg "$PGBIN/pg_ctl" -D "$MNT/clones/busy" -l "$T/clone.log" -w -t 120 start >/dev/null ||
  { tail -20 "$T/clone.log"; fail "the clone did not start"; }
on_exit "as_pg $PGBIN/pg_ctl -D '$MNT/clones/busy' -m immediate stop"
for _ in $(seq 1 120); do
  [ "$(psql_q "$CPORT" "select pg_is_in_recovery()" 2>/dev/null)" = f ] && break
  sleep 0.5
done
[ "$(psql_q "$CPORT" "select pg_is_in_recovery()")" = f ] || fail "the clone is still in recovery"
DEADLINE=$(($(date +%s) + DURATION))
RSS_BEFORE=$(awk '/VmRSS/ {print $2}' /proc/$DAEMON_PID/status)

log "stress for $DURATION s: $WRITERS writers, $READERS readers, backups, pgbench on source and clone"
# Writer k pushes segments k, k+WRITERS, ... first, then again and again until the deadline.
writer() {
  local k=$1 n=0 dup=0 round=0 i
  while :; do
    for ((i = k; i < ${#SEGS[@]}; i += WRITERS)); do
      if ! as_pg cp "$POOL/${SEGS[$i]}" "$MNT/wal/${SEGS[$i]}" 2>>"$OPS/writer$k.err"; then
        echo "cp of ${SEGS[$i]} failed" >>"$OPS/errors"
      fi
      n=$((n + 1)); [ $round -gt 0 ] && dup=$((dup + 1))
      [ "$(date +%s)" -ge "$DEADLINE" ] && break 2
    done
    round=$((round + 1))
  done
  echo "$n $dup" >"$OPS/writer$k"
}
# A reader compares files of the first snapshots with the local restore (O_DIRECT reads go to the
# daemon every time) and, now and then, runs pg_verifybackup on the newest backup.
reader() {
  local k=$1 n=0 bytes=0 verified=0 line sum path newest
  mapfile -t LINES <"$T/originals.md5"
  while [ "$(date +%s)" -lt "$DEADLINE" ]; do
    line=${LINES[$((RANDOM % ${#LINES[@]}))]}
    sum=${line%% *}
    path=${line#*  }
    if [ "$(dd if="$MNT/backups/$path" iflag=direct bs=1M status=none | md5sum | cut -c1-32)" != "$sum" ]; then
      echo "reader $k: backups/$path differs from the original" >>"$OPS/errors"
    fi
    n=$((n + 1)); bytes=$((bytes + $(stat -c %s "$RESTORED/$path")))
    if [ $((n % 25)) = 0 ]; then
      newest=$(ls "$MNT/backups" | tail -1)
      if ! as_pg "$PGBIN/pg_verifybackup" -n -q "$MNT/backups/$newest" >>"$OPS/reader$k.err" 2>&1; then
        echo "reader $k: pg_verifybackup of $newest failed" >>"$OPS/errors"
      fi
      verified=$((verified + 1))
    fi
  done
  echo "$n $bytes $verified" >"$OPS/reader$k"
}
backups() {
  local n=0
  while [ "$(date +%s)" -lt "$DEADLINE" ]; do
    if "$PGBACKFS" backup "$REPO" -d "$CONN" --fast-checkpoint --label "stress-$n" >>"$OPS/backup.log" 2>&1; then
      n=$((n + 1))
    else
      echo "backup $n failed" >>"$OPS/errors"
      sleep 1
    fi
  done
  echo "$n" >"$OPS/backups"
}
PIDS=()
for k in $(seq 0 $((WRITERS - 1))); do writer "$k" & PIDS+=($!); done
for k in $(seq 1 "$READERS"); do reader "$k" & PIDS+=($!); done
backups & PIDS+=($!)
as_pg "$PGBIN/pgbench" -n -c 2 -R 40 -T "$DURATION" -h 127.0.0.1 -p "$PORT" -U postgres postgres \
  >"$OPS/pgbench-source.log" 2>&1 & PIDS+=($!)
as_pg "$PGBIN/pgbench" -n -c 2 -R 40 -T "$DURATION" -h 127.0.0.1 -p "$CPORT" -U postgres postgres \
  >"$OPS/pgbench-clone.log" 2>&1 & PIDS+=($!)
kill_jobs() { [ ${#PIDS[@]} = 0 ] || kill "${PIDS[@]}"; }
on_exit kill_jobs
# Switch segments on the source now and then, so that the archiver pushes during the stress.
SWITCHES=0
while [ "$(date +%s)" -lt "$DEADLINE" ]; do
  sleep 3
  psql_q "$PORT" "select pg_switch_wal()" >/dev/null && SWITCHES=$((SWITCHES + 1))
  echo "$(($(date +%s) - DEADLINE + DURATION)) $(awk '/VmRSS/ {print $2}' /proc/$DAEMON_PID/status)" >>"$OPS/rss"
done
STATUS=0
for p in "${PIDS[@]}"; do wait "$p" || STATUS=1; done
PIDS=()
RSS_AFTER=$(awk '/VmRSS/ {print $2}' /proc/$DAEMON_PID/status)
[ ! -s "$OPS/errors" ] || { cat "$OPS/errors" "$OPS"/*.err 2>/dev/null | head -30; fail "errors during the stress"; }
[ $STATUS = 0 ] || { tail -5 "$OPS"/pgbench-*.log; fail "a stress job exited non-zero"; }
for f in source clone; do
  grep -q "number of failed transactions: 0\|^number of transactions actually processed" "$OPS/pgbench-$f.log" ||
    { cat "$OPS/pgbench-$f.log"; fail "pgbench on the $f"; }
  grep -qi "error" "$OPS/pgbench-$f.log" && { cat "$OPS/pgbench-$f.log"; fail "pgbench errors on the $f"; }
done

log "after the stress: the archive, the archiver, the clone, verify"
FINAL=$(psql_q "$PORT" "select pg_walfile_name(pg_switch_wal())")
for _ in $(seq 1 600); do
  [ "$(psql_q "$PORT" "select coalesce(last_archived_wal, '') from pg_stat_archiver")" \> "$FINAL" ] ||
    [ "$(psql_q "$PORT" "select coalesce(last_archived_wal, '') from pg_stat_archiver")" = "$FINAL" ] && break
  sleep 0.1
done
[ "$(psql_q "$PORT" "select failed_count from pg_stat_archiver")" = 0 ] ||
  { tail -20 "$PG.log"; fail "the archiver failed $(psql_q "$PORT" "select failed_count from pg_stat_archiver") times"; }
ARCHIVED=$(psql_q "$PORT" "select archived_count from pg_stat_archiver")
compared=0
for s in "${SEGS[@]}"; do
  cmp "$POOL/$s" "$MNT/wal/$s" || fail "$s differs in wal/"
  compared=$((compared + 1))
done
for done_file in "$PG"/pg_wal/archive_status/*.done; do
  name=$(basename "$done_file" .done)
  [[ $name =~ ^[0-9A-F]{24}$ ]] && [ -f "$PG/pg_wal/$name" ] || continue
  [ -e "$POOL/$name" ] && continue
  cmp "$PG/pg_wal/$name" "$MNT/wal/$name" || fail "$name archived by PostgreSQL differs in wal/"
  compared=$((compared + 1))
done
log "$compared archived files are byte-identical"
CLONE_ROWS=$(psql_q "$CPORT" "select count(*) from pgbench_history")
as_pg "$PGBIN/pg_ctl" -D "$MNT/clones/busy" -m fast -w -t 120 stop >/dev/null || fail "stop the clone"
"$PGBACKFS" clone seal "$REPO" busy --label after-stress >/dev/null || fail "seal the clone"
"$PGBACKFS" umount "$MNT" >/dev/null || fail "umount"
"$PGBACKFS" verify "$REPO" >"$T/verify.out" || { cat "$T/verify.out"; fail "verify after the stress"; }
log "$(tail -1 "$T/verify.out")"
NSNAP=$("$PGBACKFS" list "$REPO" --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["snapshots"]))')

read -r W_N W_DUP < <(cat "$OPS"/writer* | awk '{n += $1; d += $2} END {print n, d}')
read -r R_N R_BYTES R_VER < <(cat "$OPS"/reader? | awk '{n += $1; b += $2; v += $3} END {print n, b, v}')
B_N=$(cat "$OPS/backups")
TPS_SRC=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$OPS/pgbench-source.log" | head -1)
TPS_CLONE=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$OPS/pgbench-clone.log" | head -1)
TX_CLONE=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$OPS/pgbench-clone.log")
echo "stress: ${DURATION}s; cp pushes $W_N by $WRITERS writers ($((W_N - W_DUP)) first, $W_DUP identical re-pushes) of ${#SEGS[@]} pool segments; archiver pushed $ARCHIVED (0 failed, $SWITCHES switches); O_DIRECT reads $R_N files ($((R_BYTES / 1048576)) MiB) all matching; pg_verifybackup runs $R_VER; backups committed during the stress $B_N; pgbench source ${TPS_SRC} tps, clone ${TPS_CLONE} tps ($TX_CLONE transactions, $CLONE_ROWS history rows); archived files compared $compared; snapshots at the end $NSNAP; daemon RSS ${RSS_BEFORE} -> ${RSS_AFTER} KiB (max $(sort -k2 -n "$OPS/rss" | tail -1 | cut -d' ' -f2)); verify ok"
log "daemon RSS (s KiB): $(tr '\n' ',' <"$OPS/rss")"
log "PASS"
