// Writes a snapshot out as a local directory, byte-identical to what was backed up.
#pragma once

#include <atomic>
#include <functional>
#include <string>

#include "repo/repository.h"

namespace pgbackfs {

struct RestoreOptions {
  int jobs = 2;        // files (and 64 MiB pieces of large files) restored in parallel
  bool delta = false;  // update an existing directory: rewrite only chunks that differ
  bool sync = true;    // fsync files and directories before returning
  // Called now and then from worker threads with the logical bytes done so far.
  std::function<void(uint64_t done, uint64_t total)> progress;
};

struct RestoreStats {
  uint64_t files = 0;
  uint64_t logical_bytes = 0;
  uint64_t bytes_written = 0;  // bytes actually written (delta mode writes fewer)
  uint64_t files_removed = 0;  // delta: local files not in the snapshot
};

// Restores `snapshot` into `dest`. Without `delta`, `dest` must not exist or be empty. Every chunk
// is checked against its hash before it is written; on any error the restore stops and the status
// names the file and offset (the directory is then incomplete and must not be started).
Status RestoreSnapshot(Repository* repo, const SnapshotInfo& snapshot, const std::string& dest,
                       const RestoreOptions& options, RestoreStats* stats);

}  // namespace pgbackfs
