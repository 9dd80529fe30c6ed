#!/usr/bin/env bash
# Permissions and secrets (issue 6 part 5):
# - the repository directory is 0700 (also under umask 000), its control socket 0600, and a user
#   other than the daemon's cannot reach the socket nor get a command run by the daemon;
# - without --allow-other no other user (not even --owner) can stat the mount; with
#   --allow-other --owner postgres, default_permissions lets only the owner (and root) in: others
#   get EACCES;
# - no write of any kind reaches backups/ (EROFS), also as root, which default_permissions lets
#   through to the file system;
# - no name with '/', '..' or NUL escapes its directory; a symlink in a clone pointing outside is
#   only ever a symlink (sealed and restored as one, never followed by the daemon);
# - passwords given in a connection string or in PGPASSWORD appear nowhere: not in the
#   repository's files or log, not in list/info/verify output, not in any process's command line
#   while the backup runs (pgbackfs overwrites them in its argv), not in error messages.
source "$(dirname "$0")/lib.sh" "$1"

REPO=$T/repo
MNT=$T/mnt
PG=$T/pg
PORT=$(free_port)
mkdir -p "$MNT"
CHECKS=0
ok() { CHECKS=$((CHECKS + 1)); log "ok: $*"; }
as_nobody() { runuser -u nobody -- "$@"; }
# denied ERRTEXT DESCRIPTION CMD...: CMD fails with strerror ERRTEXT.
denied() {
  local pat=$1 what=$2 rc=0
  shift 2
  case "$1" in
    as_pg) shift; set -- runuser -u postgres -- "$@" ;;
    as_nobody) shift; set -- runuser -u nobody -- "$@" ;;
  esac
  timeout 60 "$@" >"$T/denied.out" 2>&1 </dev/null || rc=$?
  [ "$rc" != 0 ] || fail "$what: succeeded"
  [ "$rc" != 124 ] || fail "$what: hung"
  grep -Eq -- "$pat" "$T/denied.out" || { cat "$T/denied.out" >&2; fail "$what: not '$pat'"; }
  ok "$what ($(head -c 120 "$T/denied.out" | tr '\n' ' '))"
}
mode_of() { stat -c %a "$1"; }

# --- the repository's own modes ----------------------------------------------------------------
log "repository modes under umask 000"
(umask 000 && "$PGBACKFS" init "$REPO" >/dev/null) || fail "init"
[ "$(mode_of "$REPO")" = 700 ] || fail "repository mode $(mode_of "$REPO")"
ok "a repository made under umask 000 is 0700"
mkdir -m 777 "$T/empty-repo"
(umask 000 && "$PGBACKFS" init "$T/empty-repo" >/dev/null) || fail "init into an empty directory"
[ "$(mode_of "$T/empty-repo")" = 700 ] || fail "an existing empty directory stayed $(mode_of "$T/empty-repo")"
ok "init into an existing 0777 directory makes it 0700"
# mount_repo [OPTIONS...]: mounts REPO on MNT, sets DAEMON_PID, unmounts at exit.
mount_repo() {
  local out
  out=$(umask 000 && "$PGBACKFS" mount "$REPO" "$MNT" "$@") || fail "mount $*"
  DAEMON_PID=$(sed -n 's/.*daemon pid \([0-9]*\).*/\1/p' <<<"$out")
  [ -n "$DAEMON_PID" ] || fail "no daemon pid in: $out"
  on_exit "'$PGBACKFS' umount '$MNT' || unmount_quiet '$MNT'; grep -qa pgbackfs /proc/$DAEMON_PID/cmdline && kill -9 $DAEMON_PID"
}
mount_repo
[ "$(mode_of "$REPO/control.sock")" = 600 ] || fail "control.sock mode $(mode_of "$REPO/control.sock")"
[ "$(mode_of "$REPO/log")" = 700 ] || fail "log/ mode $(mode_of "$REPO/log")"
[ "$(mode_of "$REPO/lock")" = 600 ] || fail "lock mode $(mode_of "$REPO/lock")"
ok "control.sock 0600, log/ 0700, lock 0600 (daemon started under umask 000)"
for f in "$REPO" "$REPO"/*; do
  [ $(($(stat -c '0%a' "$f") & 07)) = 0 ] || fail "'$f' is open to others: $(mode_of "$f")"
done
ok "nothing at the top of the repository is open to others"

log "other users and the control socket"
denied "Permission denied" "nobody lists the repository" as_nobody "$PGBACKFS" list "$REPO"
denied "Permission denied" "nobody connects to control.sock" as_nobody python3 -c '
import socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])' "$REPO/control.sock"
# Even with the directory and socket opened up, the daemon refuses another user (SO_PEERCRED).
chmod 755 "$REPO" && chmod 666 "$REPO/control.sock"
as_nobody python3 - "$REPO/control.sock" >"$T/peer.out" 2>&1 <<'PY' || true
import os, socket, struct, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
args = [b"pgbackfs", b"list", b"/"]
payload = struct.pack("<I", len(args)) + b"".join(struct.pack("<I", len(a)) + a for a in args)
payload += struct.pack("<I", 1) + b"/"
msg = b"PGBFCTL1" + struct.pack("<I", len(payload)) + payload
try:
    socket.send_fds(s, [msg], [0, 1, 2])
    print("reply:", s.recv(100))
except OSError as e:
    print("error:", e)
PY
chmod 700 "$REPO" && chmod 600 "$REPO/control.sock"
grep -q "PGBFRES1" "$T/peer.out" && fail "the daemon answered another user: $(cat "$T/peer.out")"
grep -q "refused uid $(id -u nobody)" "$REPO/log/mount.log" || fail "the refusal is not logged"
ok "the daemon refuses a command from another uid even when the socket is reachable"
python3 - "$REPO/control.sock" >"$T/nul.out" 2>&1 <<'PY' || true
import socket, struct, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
args = [b"pgbackfs", b"clone", b"create", sys.argv[1][:-13].encode(), b"x\0/../../escape", b"--from", b"latest"]
payload = struct.pack("<I", len(args)) + b"".join(struct.pack("<I", len(a)) + a for a in args)
payload += struct.pack("<I", 1) + b"/"
msg = b"PGBFCTL1" + struct.pack("<I", len(payload)) + payload
socket.send_fds(s, [msg], [0, 1, 2])
print("reply:", s.recv(100))
PY
grep -q "NUL in an argument" "$T/nul.out" || { cat "$T/nul.out"; fail "a NUL in a forwarded argument was not refused"; }
grep -q 'PGBFRES1\\x02' "$T/nul.out" || { cat "$T/nul.out"; fail "a NUL argument did not exit 2"; }
ok "a NUL inside a forwarded argument is refused (exit 2)"
kill -0 "$DAEMON_PID" || fail "the daemon died"

# --- who can reach the mount -------------------------------------------------------------------
log "without --allow-other: only the mounting user"
grep " $MNT " /proc/mounts | grep -q default_permissions || fail "no default_permissions: $(grep " $MNT " /proc/mounts)"
grep " $MNT " /proc/mounts | grep -q allow_other && fail "allow_other without --allow-other"
ok "mounted with default_permissions and without allow_other"
stat "$MNT/backups" >/dev/null || fail "root cannot stat its own mount"
denied "Permission denied" "nobody stats the mount" as_nobody stat "$MNT"
denied "Permission denied" "postgres stats the mount" as_pg stat "$MNT"
denied "Permission denied" "nobody lists wal/" as_nobody ls "$MNT/wal"
"$PGBACKFS" umount "$MNT" >/dev/null || fail "umount"

log "without --allow-other, --owner postgres does not let postgres in either"
mount_repo --owner postgres
denied "Permission denied" "postgres stats a mount it owns but was not allowed into" as_pg stat "$MNT"
"$PGBACKFS" umount "$MNT" >/dev/null || fail "umount"

log "a cluster with a password-protected replication role, and backups with secrets"
pg_init "$PG"
SECRET_ARG=Sekr1t-arg-$RANDOM$RANDOM
SECRET_URI=Sekr1t-uri-$RANDOM$RANDOM
SECRET_ENV=Sekr1t-env-$RANDOM$RANDOM
SECRET_BAD=Sekr1t-bad-$RANDOM$RANDOM
cat >"$T/hba" <<EOF
host replication backupuser 127.0.0.1/32 scram-sha-256
host all backupuser 127.0.0.1/32 scram-sha-256
EOF
cat "$PG/pg_hba.conf" >>"$T/hba" && cp "$T/hba" "$PG/pg_hba.conf"
pg_start "$PG" "$PORT"
# The password travels as a SCRAM verifier, never as text in a statement PostgreSQL could log.
VERIFIER=$(python3 - "$SECRET_ARG" <<'PY'
import base64, hashlib, hmac, os, sys
pw, salt, it = sys.argv[1].encode(), os.urandom(16), 4096
salted = hashlib.pbkdf2_hmac("sha256", pw, salt, it)
ck = hmac.new(salted, b"Client Key", "sha256").digest()
sk = hmac.new(salted, b"Server Key", "sha256").digest()
b = lambda x: base64.b64encode(x).decode()
print(f"SCRAM-SHA-256${it}:{b(salt)}${b(hashlib.sha256(ck).digest())}:{b(sk)}")
PY
)
psql_q "$PORT" "create role backupuser login replication password '$VERIFIER'"
psql_q "$PORT" "create table t as select g, md5(g::text) from generate_series(1, 50000) g"

mount_repo --allow-other --owner postgres
grep " $MNT " /proc/mounts | grep -q "allow_other" || fail "no allow_other"

# scan_cmdlines SECRET...: no process's command line holds a secret.
scan_cmdlines() {
  local f s
  for f in /proc/[0-9]*/cmdline; do
    for s in "$@"; do
      if { tr '\0' ' ' <"$f"; } 2>/dev/null | grep -qF -- "$s"; then
        fail "$(tr '\0' ' ' <"$f") ($f) shows a password"
      fi
    done
  done
}
# A throttled backup stays running long enough to look at every command line; it is stopped then.
log "while a backup with password=... runs, no command line shows it"
REPO2=$T/repo2
"$PGBACKFS" init "$REPO2" >/dev/null
"$PGBACKFS" backup "$REPO2" --max-rate 64 \
  -d "host=127.0.0.1 port=$PORT user=backupuser dbname=postgres password=$SECRET_ARG" \
  >"$T/slow.out" 2>&1 &
SLOW=$!
on_exit "kill $SLOW"
for _ in $(seq 1 100); do
  as_pg psql -X -At -h 127.0.0.1 -p "$PORT" -U postgres -d postgres \
    -c "select count(*) from pg_stat_replication where usename = 'backupuser'" 2>/dev/null | grep -qx 1 && break
  sleep 0.1
done
kill -0 "$SLOW" 2>/dev/null || { cat "$T/slow.out"; fail "the throttled backup ended early"; }
tr '\0' ' ' </proc/$SLOW/cmdline | grep -q "password=" || fail "unexpected cmdline: $(tr '\0' ' ' </proc/$SLOW/cmdline)"
scan_cmdlines "$SECRET_ARG"
ok "the running backup's /proc/$SLOW/cmdline: $(tr '\0' ' ' </proc/$SLOW/cmdline | cut -c1-160)"
as_nobody cat /proc/$SLOW/environ >/dev/null 2>&1 && fail "another user reads the backup's environment"
kill -TERM "$SLOW"; wait "$SLOW" || true
[ "$("$PGBACKFS" list "$REPO2")" = "no snapshots" ] || fail "a stopped backup left a snapshot"
ok "a backup stopped half-way leaves no snapshot"

log "backups with the password in -d, in a URI and in PGPASSWORD (forwarded to the daemon)"
"$PGBACKFS" backup "$REPO" -d "host=127.0.0.1 port=$PORT user=backupuser dbname=postgres password=$SECRET_ARG" \
  --fast-checkpoint >"$T/b1.out" 2>&1 || { cat "$T/b1.out"; fail "backup with password="; }
"$PGBACKFS" backup "$REPO" -d "postgresql://backupuser:$SECRET_ARG@127.0.0.1:$PORT/postgres" \
  --fast-checkpoint >"$T/b2.out" 2>&1 || { cat "$T/b2.out"; fail "backup with a URI password"; }
PGPASSWORD=$SECRET_ARG "$PGBACKFS" backup "$REPO" -d "host=127.0.0.1 port=$PORT user=backupuser dbname=postgres" \
  --fast-checkpoint >"$T/b3.out" 2>&1 || { cat "$T/b3.out"; fail "backup with PGPASSWORD"; }
ok "three backups authenticated with the password (-d key=value, URI, PGPASSWORD)"

log "failures with passwords: the messages do not show them"
for conn in "host=127.0.0.1 port=$PORT user=backupuser dbname=postgres password=$SECRET_BAD" \
  "postgresql://backupuser:$SECRET_BAD@127.0.0.1:$PORT/postgres" \
  "postgresql://backupuser:$SECRET_BAD@127.0.0.1:$(free_port)/postgres?connect_timeout=5" \
  "host=127.0.0.1 port=$PORT password='$SECRET_BAD' user='unclosed" \
  "host=127.0.0.1 port=$PORT password=$SECRET_BAD no_such_keyword=1" \
  "postgresql://backupuser:$SECRET_BAD@[bad-host/postgres"; do
  rc=0
  "$PGBACKFS" backup "$REPO" -d "$conn" >"$T/badpw.out" 2>&1 || rc=$?
  [ "$rc" = 1 ] || { cat "$T/badpw.out"; fail "a backup with a bad password/connection string exited $rc"; }
  grep -qF -- "$SECRET_BAD" "$T/badpw.out" && fail "the error shows the password: $(cat "$T/badpw.out")"
  ok "refused without showing the password: $(head -c 150 "$T/badpw.out" | tr '\n' ' ')"
done
PGPASSWORD=$SECRET_BAD "$PGBACKFS" backup "$REPO" -d "host=127.0.0.1 port=$PORT user=backupuser dbname=postgres" \
  >"$T/badenv.out" 2>&1 && fail "a wrong PGPASSWORD was accepted"
grep -qF -- "$SECRET_BAD" "$T/badenv.out" && fail "the error shows PGPASSWORD"
ok "a wrong PGPASSWORD is refused without showing it"

log "the secrets are nowhere in the repository, its log, its outputs, or the backups"
"$PGBACKFS" list "$REPO" --json >"$T/list.json"
"$PGBACKFS" info "$REPO" --json >"$T/info.json"
"$PGBACKFS" list "$REPO" >"$T/list.txt"
"$PGBACKFS" info "$REPO" >"$T/info.txt"
"$PGBACKFS" verify "$REPO" >"$T/verify.txt" || { cat "$T/verify.txt"; fail "verify"; }
[ "$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["snapshots"]))' "$T/list.json")" = 3 ] ||
  fail "expected 3 snapshots: $(cat "$T/list.txt")"
for s in "$SECRET_ARG" "$SECRET_BAD"; do
  if grep -rlaF -- "$s" "$REPO" "$REPO2" "$T"/*.json "$T"/*.txt "$T"/*.out "$PG.log" 2>/dev/null; then
    fail "a password was written down"
  fi
done
ok "no password in REPO/ (raw files, log/mount.log), list/info/verify output, backup output, server log"
ID=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["snapshots"][0]["id"])' "$T/list.json")
if grep -rlaF -- "$SECRET_ARG" "$MNT/backups" 2>/dev/null; then fail "a backup holds the password"; fi
ok "no password in any file of the three backups (read through the mount)"
[ "$(grep -c "running forwarded command 'backup'" "$REPO/log/mount.log")" -ge 10 ] ||
  fail "the backups were not forwarded to the daemon"
tr '\0' ' ' </proc/$DAEMON_PID/cmdline | grep -q password && fail "the daemon's command line"
ok "the backups ran in the daemon ($(tr '\0' ' ' </proc/$DAEMON_PID/cmdline)); its log names only the command"

# --- who can read the mount with --allow-other --owner postgres --------------------------------
log "--allow-other --owner postgres: the owner reads, others get EACCES"
as_pg cat "$MNT/backups/$ID/PG_VERSION" >/dev/null || fail "the owner cannot read a backup"
as_pg ls "$MNT/wal" >/dev/null || fail "the owner cannot list wal/"
stat -c %U "$MNT/backups/$ID/PG_VERSION" | grep -qx postgres || fail "owner"
denied "Permission denied" "nobody lists the mount root" as_nobody ls "$MNT"
denied "Permission denied" "nobody stats backups/" as_nobody stat "$MNT/backups"
denied "Permission denied" "nobody reads a backup file" as_nobody cat "$MNT/backups/$ID/PG_VERSION"
denied "Permission denied" "nobody lists wal/" as_nobody ls "$MNT/wal"
denied "Permission denied" "nobody creates a file in wal/" as_nobody cp /etc/hostname "$MNT/wal/000000010000000000000001"
denied "Permission denied" "nobody lists clones/" as_nobody ls "$MNT/clones"
# Even a file made world-readable (a clone's) stays behind its 0700 directories.
"$PGBACKFS" clone create "$REPO" c1 --from "$ID" >/dev/null || fail "clone create"
as_pg chmod 644 "$MNT/clones/c1/PG_VERSION" || fail "chmod in a clone"
denied "Permission denied" "nobody reads a 0644 file in a clone" as_nobody cat "$MNT/clones/c1/PG_VERSION"
denied "Permission denied" "nobody opens the clone's directory" as_nobody ls "$MNT/clones/c1"

# --- no write reaches backups/ -----------------------------------------------------------------
log "no write reaches backups/ (as root, as the owner)"
B=$MNT/backups/$ID
REL=$(cd "$B" && find base -type f -size +8k -print -quit)
md5_before=$(md5sum "$B/PG_VERSION" "$B/$REL" | cut -c1-32)
for who in root postgres; do
  run=(); [ "$who" = postgres ] && run=(runuser -u postgres --)
  "${run[@]}" python3 - "$MNT/backups" "$B" "$REL" >"$T/ro.$who.out" 2>&1 <<'PY' || { cat "$T/ro.$who.out"; fail "writes into backups/ as $who"; }
import errno, os, sys
backups, snap, rel = sys.argv[1:]
f, d = os.path.join(snap, rel), os.path.join(snap, "base")
cases = [
    ("create in backups/", lambda: os.open(os.path.join(backups, "new"), os.O_CREAT | os.O_WRONLY, 0o600)),
    ("create in a backup", lambda: os.open(os.path.join(snap, "new"), os.O_CREAT | os.O_WRONLY, 0o600)),
    ("open a file for writing", lambda: os.open(f, os.O_WRONLY)),
    ("open a file read-write", lambda: os.open(f, os.O_RDWR)),
    ("open a file with O_TRUNC", lambda: os.open(f, os.O_RDONLY | os.O_TRUNC)),
    ("open a file for append", lambda: os.open(f, os.O_WRONLY | os.O_APPEND)),
    ("truncate", lambda: os.truncate(f, 0)),
    ("chmod a file", lambda: os.chmod(f, 0o666)),
    ("chmod a backup", lambda: os.chmod(snap, 0o777)),
    ("chown", lambda: os.chown(f, 0, 0)),
    ("utimens", lambda: os.utime(f, (0, 0))),
    ("utimens now", lambda: os.utime(f, None)),
    ("mkdir in backups/", lambda: os.mkdir(os.path.join(backups, "d"))),
    ("mkdir in a backup", lambda: os.mkdir(os.path.join(d, "d"))),
    ("rmdir of a backup directory", lambda: os.rmdir(d)),
    ("rmdir of a backup", lambda: os.rmdir(snap)),
    ("rename a file", lambda: os.rename(f, f + ".x")),
    ("rename a backup", lambda: os.rename(snap, snap + "x")),
    ("unlink a file", lambda: os.unlink(f)),
    ("link", lambda: os.link(f, os.path.join(d, "hard"))),
    ("symlink", lambda: os.symlink("/etc/passwd", os.path.join(d, "sym"))),
    ("mkfifo", lambda: os.mkfifo(os.path.join(d, "fifo"))),
    ("mknod", lambda: os.mknod(os.path.join(d, "node"), 0o600)),
    ("setxattr user.x", lambda: os.setxattr(f, "user.x", b"1")),
    ("setxattr trusted.x", lambda: os.setxattr(f, "trusted.x", b"1")),
    ("setxattr security.x", lambda: os.setxattr(f, "security.x", b"1")),
    ("removexattr", lambda: os.removexattr(f, "user.x")),
]
allowed = {errno.EROFS}
# Extended attributes are not implemented at all: the kernel answers EOPNOTSUPP (or ENODATA for
# a removal) without a write. Ownership changes by a non-root owner fail EPERM in the kernel.
extra = {"setxattr user.x": {errno.EOPNOTSUPP}, "setxattr trusted.x": {errno.EOPNOTSUPP, errno.EPERM},
         "setxattr security.x": {errno.EOPNOTSUPP, errno.EPERM}, "removexattr": {errno.EOPNOTSUPP, errno.ENODATA},
         "chown": {errno.EPERM}}
bad = 0
for name, op in cases:
    try:
        r = op()
        if isinstance(r, int):
            os.close(r)
        print(f"WRITE ALLOWED: {name}")
        bad += 1
    except OSError as e:
        ok = e.errno in allowed | extra.get(name, set())
        print(f"{'ok' if ok else 'WRONG ERRNO'}: {name}: {errno.errorcode[e.errno]}")
        bad += 0 if ok else 1
print(f"{len(cases)} operations tried, {bad} wrong")
sys.exit(1 if bad else 0)
PY
  ok "as $who: $(tail -1 "$T/ro.$who.out"): $(grep -c ': EROFS' "$T/ro.$who.out") EROFS, $(grep -c 'ENOTSUP\|ENODATA\|EPERM' "$T/ro.$who.out") ENOTSUP/ENODATA/EPERM"
done
[ "$(md5sum "$B/PG_VERSION" "$B/$REL" | cut -c1-32)" = "$md5_before" ] || fail "a backup file changed"
denied "Read-only file system" "cp into a backup" cp /etc/hostname "$B/PG_VERSION"
denied "Read-only file system" "dd into a backup" dd if=/dev/zero of="$B/$REL" bs=8192 count=1 conv=notrunc status=none
denied "Read-only file system" "restore into backups/" "$PGBACKFS" restore "$REPO" "$ID" "$MNT/backups/x"

# --- names that try to escape ------------------------------------------------------------------
log "names with '/', '..' or NUL stay inside"
for name in .. ../x ../../etc x/.. a/b /etc "$(printf 'a\nb/../c')"; do
  rc=0
  "$PGBACKFS" clone create "$REPO" "$name" --from "$ID" >"$T/name.out" 2>&1 || rc=$?
  [ "$rc" = 1 ] || { cat "$T/name.out"; fail "clone create '$name' exited $rc"; }
  grep -q "bad clone name" "$T/name.out" || fail "clone create '$name': $(cat "$T/name.out")"
done
ok "clone names .., ../x, ../../etc, x/.., a/b, /etc, 'a<newline>b/../c' are refused"
# argv cannot carry a NUL: the kernel ends the argument there, so "x\0/../y" arrives as "x".
[ "$("$PGBACKFS" clone list "$REPO" --json | python3 -c 'import json,sys; print(",".join(c["name"] for c in json.load(sys.stdin)["clones"]))')" = c1 ] ||
  fail "clone list: $("$PGBACKFS" clone list "$REPO")"
[ "$(ls "$MNT/clones")" = c1 ] && [ "$(ls "$MNT")" = "$(printf 'backups\nclones\nwal')" ] || fail "mount layout changed"
[ ! -e "$T/x" ] && [ ! -e "$T/etc" ] && [ ! -e "$REPO/x" ] || fail "a clone name made something outside"
ok "nothing was created outside clones/"
[ "$(stat -c %i "$B/base/..")" = "$(stat -c %i "$B")" ] || fail "backups/ID/base/.. is not backups/ID"
[ "$(stat -c %i "$MNT/backups/..")" = "$(stat -c %i "$MNT")" ] || fail "backups/.. is not the mount root"
[ "$(stat -c %d:%i "$MNT/..")" = "$(stat -c %d:%i "$T")" ] || fail "MNT/.. is not the mount's parent"
[ "$(cd "$MNT/clones/c1/base/../.." && pwd -P)" = "$MNT/clones" ] || fail "clones/c1/base/../.."
python3 - "$B" <<'PY' || fail ".. relative to a directory descriptor"
import os, sys
snap = sys.argv[1]
fd = os.open(os.path.join(snap, "base"), os.O_RDONLY | os.O_DIRECTORY)
same = lambda a, b: (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
assert same(os.stat("..", dir_fd=fd), os.stat(snap)), "base/.. is not the snapshot"
assert same(os.stat("../..", dir_fd=fd), os.stat(os.path.dirname(snap))), "base/../.. is not backups/"
assert same(os.stat("../../../wal/..", dir_fd=fd), os.stat(os.path.dirname(os.path.dirname(snap))))
PY
ok "'..' in backups/ and clones/ resolves to the parent directory, inside the mount"

log "a symlink in a clone that points outside stays a symlink"
echo "outside secret" >"$T/outside" && chmod 600 "$T/outside"
mkdir -p "$T/outside-dir" && chmod 700 "$T/outside-dir"
C=$MNT/clones/c1
as_pg ln -s "$T/outside" "$C/evil" || fail "symlink in a clone"
as_pg ln -s ../../../../../../../../"$T/outside-dir" "$C/evildir" || fail "relative symlink in a clone"
as_pg rm -rf "$C/pg_notify" && as_pg ln -s "$T/outside-dir" "$C/pg_notify" || fail "a directory replaced by a symlink"
[ "$(readlink "$C/evil")" = "$T/outside" ] || fail "readlink"
denied "Permission denied" "postgres follows the symlink to a root-only file" as_pg cat "$C/evil"
"$PGBACKFS" clone seal "$REPO" c1 --label with-symlinks >"$T/seal.out" 2>&1 || { cat "$T/seal.out"; fail "seal"; }
SEALED=$("$PGBACKFS" list "$REPO" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["snapshots"][-1]["id"])')
[ -L "$MNT/backups/$SEALED/evil" ] && [ "$(readlink "$MNT/backups/$SEALED/evil")" = "$T/outside" ] ||
  fail "the sealed snapshot does not hold the symlink as a symlink"
[ -L "$MNT/backups/$SEALED/pg_notify" ] || fail "pg_notify is not a symlink in the snapshot"
"$PGBACKFS" restore "$REPO" "$SEALED" "$T/restored" >/dev/null || fail "restore of the sealed clone"
[ -L "$T/restored/evil" ] && [ "$(readlink "$T/restored/evil")" = "$T/outside" ] || fail "restored symlink"
[ "$(cat "$T/outside")" = "outside secret" ] && [ -z "$(ls -A "$T/outside-dir")" ] ||
  fail "something was written through a symlink"
# --delta into a tree whose directories were replaced by symlinks to elsewhere writes inside DEST.
rm -rf "$T/restored/base" && ln -s "$T/outside-dir" "$T/restored/base"
"$PGBACKFS" restore "$REPO" "$SEALED" "$T/restored" --delta >/dev/null || fail "restore --delta"
[ -d "$T/restored/base" ] && [ ! -L "$T/restored/base" ] && [ -z "$(ls -A "$T/outside-dir")" ] ||
  fail "restore --delta wrote through a symlink"
"$PGBACKFS" verify "$REPO" >"$T/verify2.txt" || { cat "$T/verify2.txt"; fail "verify"; }
ok "sealed, restored and delta-restored: symlinks stay symlinks, nothing is written outside"

"$PGBACKFS" umount "$MNT" >/dev/null || fail "umount"
echo "security checks passed: $CHECKS"
log "PASS ($CHECKS checks)"
