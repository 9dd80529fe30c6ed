// Checks a repository: every chunk a snapshot references is present and matches its hash, and
// every directory listing and index block decodes. Problems are reported, not fixed.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "repo/repository.h"

namespace pgbackfs {

struct VerifyProblem {
  std::string snapshot;  // snapshot id, or "" for repository-wide problems
  std::string path;      // file or directory inside the snapshot ("" for the root)
  uint64_t offset = 0;   // byte offset of the damaged chunk in that file
  std::string message;
};

struct VerifyReport {
  uint64_t snapshots = 0;
  uint64_t files = 0;
  uint64_t stored_chunks_checked = 0;  // full scan of the chunk column families
  uint64_t orphan_chunks = 0;  // located chunk entries no chunk names (harmless; gc deletes them)
  uint64_t references_checked = 0;  // leaf references followed in snapshot trees
  uint64_t bytes_checked = 0;       // logical bytes covered
  uint64_t wal_files = 0;           // archived WAL files checked (whole-repository runs)
  uint64_t wal_files_indexed =
      0;  // WAL files the WAL index lacked (archived, or in a backup's pg_wal/), indexed now
  std::vector<VerifyProblem> problems;
  bool ok() const { return problems.empty(); }
};

// Checks every snapshot and every archived WAL file (`snapshot_id` empty), or one snapshot.
// Damage in an archived WAL file is reported under snapshot "wal" with the file's name as path.
// With all snapshots, each stored chunk is read and hashed once (one scan of the chunk store) and
// the trees are then checked for presence; with one snapshot, each chunk it references is read and
// hashed. Returns a non-ok Status only when verification itself could not run; damage goes into
// `report`.
Status VerifyRepository(
    Repository* repo, const std::string& snapshot_id, VerifyReport* report,
    const std::function<void(const std::string& phase, uint64_t done)>& progress = nullptr);

}  // namespace pgbackfs
