// Garbage collection: deletes the chunks nothing references any more, after `expire` removed
// snapshots and WAL files or a clone was dropped.
//
// Mark and sweep. The roots are every snapshot record, every archived WAL file record, and the
// chunk overrides of every clone that name a stored chunk (a clone's unchanged data is its
// snapshot's, which `expire` never removes while the clone exists). Trees are walked with
// pruning: an index block or directory listing seen before is not walked again, so snapshots that
// share most of their data cost what they changed. The sweep scans the chunk column family and
// deletes what was not marked, skipping every chunk a writer (backup, WAL push, seal) referenced
// while the collection ran (ChunkStore::BeginCollection), so it can run beside them. A damaged
// tree stops the collection before anything is deleted: what it references is unknown.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "repo/repository.h"

namespace pgbackfs {

struct GcReport {
  uint64_t snapshots = 0;          // snapshot records walked
  uint64_t wal_files = 0;          // archived WAL files walked
  uint64_t clones = 0;             // clones whose overrides were scanned
  uint64_t referenced_chunks = 0;  // distinct chunk ids marked (zero chunk excluded)
  uint64_t stored_chunks = 0;      // chunks in the store before the sweep
  uint64_t deleted_chunks = 0;     // unreferenced chunks deleted
  uint64_t deleted_bytes = 0;      // their encoded size, keys included
  uint64_t kept_protected = 0;     // unreferenced but reused by a writer meanwhile: kept
  uint64_t deleted_orphans = 0;    // located chunk entries no chunk named (in deleted_bytes)
  uint64_t size_before = 0;        // approximate bytes of the chunk column families
  uint64_t size_after = 0;         // ... after the sweep and compaction
};

struct GcOptions {
  bool dry_run = false;  // mark and count, delete nothing
  bool compact = true;   // compact the chunk column families after deleting (frees disk now)
};

// `progress(phase, done)`: phase is "waiting for writers", "mark", "sweep" or "compact".
Status CollectGarbage(Repository* repo, const GcOptions& options, GcReport* report,
                      const std::function<void(const std::string&, uint64_t)>& progress = nullptr);

}  // namespace pgbackfs
