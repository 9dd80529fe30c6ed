// Point-in-time recovery planning for `clone create --target-...`: resolves a target against the
// WAL index, refuses one outside every recoverable window (naming the windows), picks the newest
// backup it can be reached from, and gives the recovery settings for the clone.
#pragma once

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "repo/repository.h"

namespace pgbackfs {

struct PitrTarget {
  std::optional<std::string> time, lsn, xid, name;
  bool immediate = false;
  bool exclusive = false;
  std::string timeline = "latest";  // "latest", "current" or a number
  std::string action = "promote";   // promote, pause, shutdown
};

struct PitrPlan {
  SnapshotInfo snapshot;
  std::vector<std::pair<std::string, std::string>> settings;  // for postgresql.auto.conf
  std::string description;                                    // for the user
  // Where replay is expected to stop: exact for LSN, xid and name targets, the first commit at
  // or after the target for time targets (the window's end if none), the snapshot's end for
  // immediate. For progress displays only.
  uint64_t stop_lsn = 0;
  double target_unix = -1;  // time targets: the target in unix seconds
};

Result<PitrPlan> PlanPitr(Repository* repo, const PitrTarget& target);

// Parses a recovery_target_time the way PostgreSQL does for the clone: "YYYY-MM-DD HH:MM:SS[.f]"
// followed by an optional zone ("Z", "UTC", "+02", "-05:30"); without one, the time is in
// `default_zone` (the snapshot's `timezone` setting, as postgres will read it). Unix seconds.
Result<double> ParseTargetTime(const std::string& text, const std::string& default_zone);

}  // namespace pgbackfs
