// Retention: which snapshots and archived WAL files `expire` removes. Removing only deletes
// records; `gc` (repo/gc.h) then frees the chunks nothing references any more.
//
// The policy applies to base backups. A backup is kept if any rule keeps it:
//   - keep_last N: the N newest backups (N >= 1: the newest backup is never expired);
//   - keep_daily D: the newest backup of each of the D most recent UTC days that have backups;
//   - keep_within S: every backup that finished in the last S seconds;
//   - a clone is based on it (dropping the clone first lets it go).
// Sealed clones (kind "sealed-clone") are points the user chose to keep: no rule expires them;
// `remove` names one (or a backup) to remove explicitly, which is refused while a clone is based
// on it. WAL: archived segments, .partial and .backup files that lie wholly before the segment
// in which the oldest kept backup starts are removed (on every timeline), with their WAL index
// entries; .history files are always kept. With no backup left, no WAL is removed.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "repo/repository.h"

namespace pgbackfs {

struct RetentionPolicy {
  int keep_last = 0;                // required >= 1 unless only `remove` is given
  int keep_daily = 0;               // 0: rule off
  int64_t keep_within_sec = 0;      // 0: rule off
  std::vector<std::string> remove;  // snapshot ids to remove explicitly
};

struct SnapshotDecision {
  SnapshotInfo snapshot;
  bool keep = true;
  std::vector<std::string> reasons;  // why it is kept ("last 3", "daily 2026-11-20", ...)
};

struct ExpirePlan {
  std::vector<SnapshotDecision> snapshots;  // oldest first
  std::vector<std::string> wal_files;       // archived WAL files to remove
  uint64_t wal_files_kept = 0;
  std::string wal_cutoff;         // log and segment (16 hex digits) of the first segment kept,
                                  // "" when no WAL is removed
  uint64_t wal_cutoff_segno = 0;  // the same as a segment number
  uint64_t removed_snapshots() const;
};

// Parses "30d", "12h", "90m", "3600s", "2w" (one number and a unit) into seconds.
Result<int64_t> ParseDuration(const std::string& text);

// Decides, reading nothing but the repository's records. `now` in unix seconds.
Result<ExpirePlan> PlanExpire(Repository* repo, const RetentionPolicy& policy, int64_t now);

// Carries out a plan made by PlanExpire: first the snapshot records (one synced write), then the
// WAL records and their index entries (synced). Checks again, under the catalog lock, that no
// clone was based on a snapshot it removes meanwhile.
Status ApplyExpire(Repository* repo, const ExpirePlan& plan);

}  // namespace pgbackfs
