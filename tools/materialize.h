// Materialized PITR views (`pgbackfs clone create ... --materialize`): pgbackfs itself starts the
// clone's postgres, with binaries of the snapshot's major version, on a private unix socket and
// no TCP listener, lets it replay the archived WAL to the recovery target and promote, and shuts
// it down cleanly (SIGINT, what `pg_ctl stop -m fast` sends). Then it removes the recovery
// settings, so that the user's `pg_ctl -D MOUNT/clones/NAME start` finds a cleanly shut down
// cluster and replays nothing.
//
// Where it runs. Postgres needs the clone as a directory: MOUNT/clones/NAME when the repository
// is mounted (the command then runs in the mount daemon, on the control socket's command thread:
// the FUSE loop and other commands go on; progress goes to the caller's stderr, and the replay is
// stopped if the caller goes away); otherwise a private mount of the repository on a temporary
// directory, served by this process for the length of the replay.
//
// Who runs postgres (it refuses root): the user the mount shows as the owner of every file
// (`mount --owner`), which --pg-user may name but not change; for a private mount --pg-user,
// default `postgres` (or the caller when not root).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "repo/repository.h"
#include "tools/cli.h"

namespace pgbackfs {

struct MaterializeOptions {
  std::string pg_bin;     // --pg-bin DIR: "" to search
  std::string pg_user;    // --pg-user: "" for the default
  bool progress = false;  // --progress: a redrawn line on a terminal, plain lines otherwise
};

// What the replay is expected to do: for progress and messages only.
struct ReplayGoal {
  uint64_t start_lsn = 0;   // where the snapshot's WAL starts
  uint64_t stop_lsn = 0;    // where replay should stop (an estimate for times; 0: unknown)
  double target_unix = -1;  // a time target, in unix seconds
  std::string description;  // "time 2026-11-22 10:01:00+00 on timeline 1 from snapshot ..."
};

struct MaterializeReport {
  std::string pg_bin;                 // the directory of the postgres binary used
  std::string pg_version;             // "15.4"
  std::string user;                   // who ran it
  std::vector<std::string> messages;  // what postgres said about where it stopped, in order
  double seconds = 0;                 // from the server's start to its clean shutdown
  double shutdown_seconds = 0;        // of which the shutdown (its checkpoint)
};

// The PostgreSQL major version of a snapshot: its PG_VERSION file ("15", "9.6").
Result<std::string> SnapshotPgMajor(Repository* repo, const SnapshotInfo& snapshot);

// The directory of a `postgres` binary of major version `major`: in `given` (--pg-bin) only, or
// else the first of /usr/lib/postgresql/<major>/bin, `pg_config --bindir` and PATH that has one.
// The error names what is needed and where it looked. `*version` gets the full version.
Result<std::string> FindPgBin(const std::string& major, const std::string& given,
                              std::string* version);

class Materializer {
 public:
  // Checks what the replay needs before any clone is made: binaries of the snapshot's major
  // version, a user to run postgres as, and where the clone will be reachable. `repo`, `repos`
  // and `io` must outlive the materializer.
  static Result<std::unique_ptr<Materializer>> Prepare(Repository* repo, RepoProvider* repos,
                                                       CommandIo* io, const SnapshotInfo& snapshot,
                                                       const MaterializeOptions& options);
  ~Materializer();
  Materializer(const Materializer&) = delete;
  Materializer& operator=(const Materializer&) = delete;

  // Replays clone `name`, already prepared by `clone create` (recovery.signal and the recovery
  // settings with recovery_target_action = 'promote'), listening on `port` (its unix socket only,
  // in a private directory). Afterwards the clone's postgresql.auto.conf is replaced by
  // `rewrite_conf(its text)`, which must drop the recovery settings, and everything is durable.
  // On failure the server is stopped (never left running), the private mount is gone, and the
  // error carries the end of the server log; the caller drops the clone.
  Result<MaterializeReport> Run(const std::string& name, int port, const ReplayGoal& goal,
                                const std::function<std::string(const std::string&)>& rewrite_conf);

 private:
  struct RunAs {
    std::string name;
    uid_t uid = 0;
    gid_t gid = 0;
    std::vector<gid_t> groups;
    std::string home;
  };
  class PrivateMount;
  Materializer() = default;
  bool Cancelled() const;

  Repository* repo_ = nullptr;
  RepoProvider* repos_ = nullptr;
  CommandIo* io_ = nullptr;
  MaterializeOptions options_;
  std::string pg_bin_, pg_version_, major_;
  RunAs run_as_;
  std::string mount_point_;  // the daemon's mount; "" for a private mount
};

}  // namespace pgbackfs
