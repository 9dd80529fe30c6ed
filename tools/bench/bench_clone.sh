#!/usr/bin/env bash
# bench_clone.sh [BUILD_DIR]: PostgreSQL 15 on a clone in the mount against a local copy of the
# same snapshot made with `pgbackfs restore`:
#   1. RTO: from `pgbackfs clone create` to the first answered primary-key query (cold caches,
#      then warm), and the same for restore + start of the local copy;
#   2. pgbench -c 2 for BENCH_SECONDS (default 30) on each;
#   3. a cold sequential scan of pgbench_accounts on each (restart, drop_caches, count(*) twice:
#      the first one also sets hint bits and writes them back).
# SCALE (default 10) is the pgbench scale. Needs root (drop_caches, mount) and PostgreSQL 15.
set -euo pipefail
BUILD=$(readlink -f "${1:-build}")
PGBACKFS=$BUILD/pgbackfs
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
SCALE=${SCALE:-10}
BENCH_SECONDS=${BENCH_SECONDS:-30}
[ -x "$PGBACKFS" ] || { echo "build first: $PGBACKFS" >&2; exit 2; }

W=$(mktemp -d /tmp/pgbackfs-bench.XXXXXX)
chmod 755 "$W"
chown postgres:postgres "$W"
CLEAN=()
cleanup() {
  set +e
  for ((i = ${#CLEAN[@]} - 1; i >= 0; i--)); do eval "${CLEAN[$i]}" >/dev/null 2>&1; done
  rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
as_pg() { runuser -u postgres -- "$@"; }
now() { date +%s.%N; }
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
calc() { python3 -c "print(f'{$*:.2f}')"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
q() { local port=$1; shift; as_pg psql -X -q -At -h 127.0.0.1 -p "$port" -U postgres -c "$*" postgres; }
pg_up() {  # DIR LOG: start and wait until it is read-write
  as_pg "$PGBIN/pg_ctl" -D "$1" -l "$2" -w -t 600 start >/dev/null
  CLEAN+=("as_pg $PGBIN/pg_ctl -D '$1' -m immediate stop")
}
pg_down() { as_pg "$PGBIN/pg_ctl" -D "$1" -m fast -w -t 600 stop >/dev/null; }
port_of() { grep -E "^port = " "$1/postgresql.auto.conf" | tail -1 | awk '{print $3}'; }
first_answer() {  # PORT: loops until a primary-key query is answered by a read-write server
  for _ in $(seq 1 6000); do
    [ "$(q "$1" "SELECT abalance = 0 OR true FROM pgbench_accounts WHERE aid = 4242" 2>/dev/null)" = t ] &&
      [ "$(q "$1" "SELECT pg_is_in_recovery()" 2>/dev/null)" = f ] && return 0
    sleep 0.02
  done
  return 1
}

REPO=$W/repo MNT=$W/mnt SRC=$W/src LOCAL=$W/local
echo "== pgbackfs clone benchmark: pgbench scale $SCALE, $(nproc) cores, kernel $(uname -r)"
"$PGBACKFS" init "$REPO" >/dev/null
mkdir -p "$MNT"
out=$("$PGBACKFS" mount "$REPO" "$MNT" --owner postgres --allow-other)
DAEMON=$(sed -n 's/.*daemon pid \([0-9]*\).*/\1/p' <<<"$out")
CLEAN+=("'$PGBACKFS' umount '$MNT'; kill -9 $DAEMON")

log "source: pgbench -i -s $SCALE, archiving into the mount"
mkdir -p "$SRC" && chown postgres "$SRC" && chmod 700 "$SRC"
as_pg "$PGBIN/initdb" -k -A trust -U postgres -D "$SRC" >/dev/null
PORT=$(free_port)
cat >>"$SRC/postgresql.conf" <<EOF
port = $PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '/tmp'
archive_mode = on
wal_level = replica
archive_command = 'cp %p $MNT/wal/%f'
EOF
pg_up "$SRC" "$W/src.log"
as_pg "$PGBIN/pgbench" -i -q -s "$SCALE" -h 127.0.0.1 -p "$PORT" -U postgres postgres >/dev/null 2>&1
"$PGBACKFS" backup "$REPO" -d "host=127.0.0.1 port=$PORT user=postgres" --fast-checkpoint >/dev/null
SNAP=$("$PGBACKFS" list "$REPO" --json | jq -r '.snapshots[-1].id')
q "$PORT" "SELECT pg_switch_wal()" >/dev/null
sleep 2
pg_down "$SRC"

echo
echo "-- 1. RTO: command to first answered primary-key query"
drop_caches
T0=$(now)
"$PGBACKFS" clone create "$REPO" cold --from "$SNAP" >/dev/null
pg_up "$MNT/clones/cold" "$W/cold.log"
first_answer "$(port_of "$MNT/clones/cold")"
RTO_COLD=$(calc "$(now) - $T0")
pg_down "$MNT/clones/cold"
T0=$(now)
"$PGBACKFS" clone create "$REPO" bench --from "$SNAP" >/dev/null
pg_up "$MNT/clones/bench" "$W/bench.log"
CLONE=$MNT/clones/bench
CPORT=$(port_of "$CLONE")
first_answer "$CPORT"
RTO_WARM=$(calc "$(now) - $T0")
echo "clone, cold caches:  $RTO_COLD s"
echo "clone, warm caches:  $RTO_WARM s"

drop_caches
T0=$(now)
"$PGBACKFS" restore "$REPO" "$SNAP" "$LOCAL" >/dev/null
chown -R postgres:postgres "$LOCAL" && chmod 700 "$LOCAL"
LPORT=$(free_port)
rm -f "$LOCAL/postmaster.pid" "$LOCAL/postmaster.opts"
touch "$LOCAL/recovery.signal" && chown postgres "$LOCAL/recovery.signal"
cat >>"$LOCAL/postgresql.auto.conf" <<EOF
port = $LPORT
restore_command = 'cp $MNT/wal/%f "%p"'
recovery_target = 'immediate'
recovery_target_action = 'promote'
archive_mode = 'off'
EOF
pg_up "$LOCAL" "$W/local.log"
first_answer "$LPORT"
RTO_LOCAL=$(calc "$(now) - $T0")
echo "restore + start of a local copy, cold caches: $RTO_LOCAL s"

echo
echo "-- 2. pgbench -c 2 -T $BENCH_SECONDS"
tps() {
  as_pg "$PGBIN/pgbench" -h 127.0.0.1 -p "$1" -U postgres -c 2 -T "$BENCH_SECONDS" postgres 2>/dev/null |
    sed -n 's/^tps = \([0-9.]*\) .*/\1/p'
}
TPS_CLONE=$(tps "$CPORT")
TPS_LOCAL=$(tps "$LPORT")
echo "clone: $TPS_CLONE tps   local: $TPS_LOCAL tps   clone/local: $(calc "$TPS_CLONE / $TPS_LOCAL")"

echo
echo "-- 3. cold sequential scan: SELECT count(*) FROM pgbench_accounts, twice"
scan() {  # DIR LOG PORT: restart (empty shared_buffers), drop caches, two timed scans
  pg_down "$1"
  drop_caches
  pg_up "$1" "$2"
  local a b c
  a=$(now)
  q "$3" "SELECT count(*) FROM pgbench_accounts" >/dev/null
  b=$(now)
  q "$3" "SELECT count(*) FROM pgbench_accounts" >/dev/null
  c=$(now)
  echo "$(calc "$b - $a") $(calc "$c - $b")"
}
SIZE=$(q "$CPORT" "SELECT pg_size_pretty(pg_relation_size('pgbench_accounts'))")
read -r C1 C2 < <(scan "$CLONE" "$W/bench.log" "$CPORT")
read -r L1 L2 < <(scan "$LOCAL" "$W/local.log" "$LPORT")
echo "pgbench_accounts: $SIZE"
echo "clone: first $C1 s, second $C2 s   local: first $L1 s, second $L2 s"
echo "local/clone speed: first $(calc "$L1 / $C1"), second $(calc "$L2 / $C2")"
