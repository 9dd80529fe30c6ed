#!/usr/bin/env bash
# The demo proper (tools/demo.sh installs and builds first). Usage: demo_run.sh PATH_TO_PGBACKFS
# Creates a repository, mounts it, runs a throwaway PostgreSQL 15 that archives into the mount,
# takes a backup, clones it, starts postgres on the clone, queries it, and cleans up.
set -euo pipefail
PGBACKFS=$(readlink -f "${1:?usage: $0 PATH_TO_PGBACKFS}")
PGBIN=/usr/lib/postgresql/15/bin
W=$(mktemp -d /tmp/pgbackfs-demo.XXXXXX)
chmod 755 "$W"
chown postgres:postgres "$W"  # the servers write their logs here
REPO=$W/repo MNT=$W/mnt SRC=$W/src
CLEAN=()
cleanup() {
  set +e
  for ((i=${#CLEAN[@]}-1; i>=0; i--)); do eval "${CLEAN[$i]}" >/dev/null 2>&1; done
  rm -rf "$W"
}
trap cleanup EXIT
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
as_pg() { runuser -u postgres -- "$@"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port)

step "create a repository and mount it"
"$PGBACKFS" init "$REPO"
mkdir -p "$MNT"
"$PGBACKFS" mount "$REPO" "$MNT" --owner postgres --allow-other
CLEAN+=("'$PGBACKFS' umount '$MNT'")
ls -l "$MNT"

step "start a throwaway PostgreSQL 15 whose archive_command copies into the mount"
mkdir -p "$SRC" && chown postgres "$SRC" && chmod 700 "$SRC"
as_pg "$PGBIN/initdb" -k -A trust -U postgres -D "$SRC" >/dev/null
as_pg "$PGBIN/pg_ctl" -D "$SRC" -l "$W/src.log" -w start -o "-p $PORT -k /tmp -c listen_addresses=127.0.0.1 \
  -c archive_mode=on -c wal_level=replica -c \"archive_command=cp %p $MNT/wal/%f\"" >/dev/null
CLEAN+=("runuser -u postgres -- $PGBIN/pg_ctl -D '$SRC' -m immediate stop")
PSQL="as_pg psql -X -q -At -h 127.0.0.1 -p $PORT -U postgres"
as_pg "$PGBIN/pgbench" -h 127.0.0.1 -p "$PORT" -U postgres -i -s 5 -q postgres 2>&1 | tail -1
$PSQL -c "CREATE TABLE notes AS SELECT g AS id, md5(g::text) AS body FROM generate_series(1, 100000) g"
$PSQL -c "SELECT pg_switch_wal()" >/dev/null

step "take a backup (it lands in MOUNT/backups/ at once)"
"$PGBACKFS" backup "$REPO" -d "host=127.0.0.1 port=$PORT user=postgres" --fast-checkpoint --label demo
ID=$("$PGBACKFS" list "$REPO" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["snapshots"][-1]["id"])')
ls "$MNT/backups/$ID" | head -30 | tr '\n' ' '; echo
du -sh "$MNT/backups/$ID"

step "rows written after the backup, archived through cp into the mount"
$PSQL -c "INSERT INTO notes SELECT g, 'after backup' FROM generate_series(100001, 100010) g"
$PSQL -c "SELECT pg_switch_wal()" >/dev/null
for _ in $(seq 1 60); do
  [ "$($PSQL -c "SELECT last_archived_wal = pg_walfile_name(pg_current_wal_lsn() - 1) OR failed_count > 0 FROM pg_stat_archiver")" = t ] && break
  sleep 0.5
done
$PSQL -c "SELECT archived_count, failed_count, last_archived_wal FROM pg_stat_archiver"
ls "$MNT/wal" | tail -3

step "clone the backup and start postgres on the clone"
START=$(date +%s.%N)
"$PGBACKFS" clone create "$REPO" demo --from "$ID"
as_pg "$PGBIN/pg_ctl" -D "$MNT/clones/demo" -l "$W/clone.log" -w -t 120 start >/dev/null
CLEAN+=("runuser -u postgres -- $PGBIN/pg_ctl -D '$MNT/clones/demo' -m fast stop")
CPORT=$(grep -E "^port = " "$MNT/clones/demo/postgresql.auto.conf" | tail -1 | awk '{print $3}')
COUNT=$(as_pg psql -X -At -h 127.0.0.1 -p "$CPORT" -U postgres -c "SELECT count(*) FROM pgbench_accounts")
END=$(date +%s.%N)
printf 'clone answered its first query %.2f s after clone create: pgbench_accounts has %s rows\n' \
  "$(python3 -c "print($END - $START)")" "$COUNT"
as_pg psql -X -At -h 127.0.0.1 -p "$CPORT" -U postgres -c "SELECT count(*) AS notes_rows FROM notes"
as_pg psql -X -At -h 127.0.0.1 -p "$CPORT" -U postgres -c "INSERT INTO notes VALUES (0, 'written on the clone') RETURNING id, body"

step "summary"
"$PGBACKFS" list "$REPO"
"$PGBACKFS" clone list "$REPO"
"$PGBACKFS" info "$REPO"
"$PGBACKFS" verify "$REPO"
as_pg "$PGBIN/pg_ctl" -D "$MNT/clones/demo" -m fast -w stop >/dev/null
echo
echo "demo finished: backup, archive through cp, clone, start and query all worked"
