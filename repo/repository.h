// A repository: one directory holding a RocksDB database, a lock and a format version.
//   REPO/pgbackfs.json   format version and settings chosen at init (written once, atomically)
//   REPO/db/             the RocksDB database (docs/FORMAT.md)
//   REPO/lock            flock()ed by the one process that owns the repository
// One process owns a repository at a time; see tools/ for how commands reach a mounted one.
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "repo/chunk_store.h"
#include "repo/kv.h"
#include "repo/snapshot.h"
#include "repo/status.h"

namespace pgbackfs {

// 2: chunks may be compressed with a zstd dictionary (docs/FORMAT.md, "chunks"). A format-1
// repository is still read and written, without dictionaries, so older pgbackfs can read it.
// 3: archived WAL files have chunks of their own size, kWalChunkSize (WAL record version 2,
// docs/FORMAT.md, "WAL archive"). Older repositories go on getting version-1 records.
// 4: new chunks are located: stored in `chunk_data` in the order they were written, `chunks`
// naming where (docs/FORMAT.md, "chunks"). Older repositories go on storing chunks inline.
constexpr int kFormatVersion = 4;
constexpr int kFirstFormatWithZstdDictionaries = 2;
constexpr int kFirstFormatWithWalChunkSize = 3;
constexpr int kFirstFormatWithLocatedChunks = 4;

struct RepoConfig {
  int format_version = kFormatVersion;
  size_t chunk_size = 8192;
  std::string compression = "zstd:3";  // "zstd:N" (1..19) or "none"
  std::string repository_id;           // random, fixed at init
  int64_t created = 0;

  int zstd_level() const;  // 0 for "none"
};

// Parses "8KiB", "64k", "1MiB", "8192". InvalidArgument unless a power of two in [8 KiB, 1 MiB].
Result<size_t> ParseChunkSize(const std::string& text);
// Checks "zstd", "zstd:N" or "none" and returns it in canonical form ("zstd:3").
Result<std::string> ParseCompression(const std::string& text);

struct OpenOptions {
  size_t chunk_cache_bytes = 256 << 20;
  size_t block_cache_bytes = 64 << 20;
  // For tests: an in-memory store instead of RocksDB (the directory still holds the config).
  bool in_memory = false;
  std::string lock_owner = "pgbackfs";  // written into REPO/lock for other processes' messages
};

class Repository {
 public:
  // Creates a repository in `path`, which must not exist or be an empty directory.
  static Status Init(const std::string& path, const RepoConfig& config);
  // Opens and locks. Busy (naming the holder) if another process owns it; FailedPrecondition for
  // a directory that is not a repository or has a newer format.
  static Result<std::unique_ptr<Repository>> Open(const std::string& path,
                                                  const OpenOptions& options = {});
  // Reads REPO/pgbackfs.json without opening or locking anything.
  static Result<RepoConfig> ReadConfig(const std::string& path);
  // The pid and owner written into REPO/lock by the process holding it ("" if none).
  static std::string LockHolder(const std::string& path);

  ~Repository();
  Repository(const Repository&) = delete;
  Repository& operator=(const Repository&) = delete;

  const std::string& path() const { return path_; }
  const RepoConfig& config() const { return config_; }
  KvStore* kv() { return kv_.get(); }
  ChunkStore* chunks() { return chunks_.get(); }
  SnapshotReader* reader() { return &reader_; }

  // Snapshots, oldest first.
  Result<std::vector<SnapshotInfo>> ListSnapshots();
  // By exact id, or "latest". NotFound names the id.
  Result<SnapshotInfo> GetSnapshot(const std::string& id);
  // A new unique id derived from `unix_time` ("20261122-013800", with a suffix if taken).
  Result<std::string> NewSnapshotId(int64_t unix_time);
  // Makes a snapshot visible: a synced write of its record. Everything it references must have
  // been written (unsynced writes are fine: the synced record write makes them durable too).
  Status CommitSnapshot(const SnapshotInfo& info);
  std::unique_ptr<SnapshotBuilder> NewSnapshotBuilder() {
    return std::make_unique<SnapshotBuilder>(chunks_.get(), config_.chunk_size);
  }

  // Invariant 10: the first backup or WAL file fixes the cluster. Returns FailedPrecondition if
  // `sysid` differs from the stored one; stores it (synced) if none is stored yet.
  Status CheckSystemIdentifier(const std::string& sysid);
  // Held while the set of snapshots and what depends on them changes: `expire` removing
  // snapshots, `clone create` basing a clone on one.
  std::mutex& catalog_mutex() { return catalog_mu_; }
  Result<std::string> SystemIdentifier();  // "" if none yet

 private:
  Repository() : reader_(nullptr, 0) {}
  std::string path_;
  RepoConfig config_;
  int lock_fd_ = -1;
  std::unique_ptr<KvStore> kv_;
  std::unique_ptr<ChunkStore> chunks_;
  SnapshotReader reader_;
  std::mutex mu_;  // serializes id allocation and the system identifier check
  std::mutex catalog_mu_;
};

// Meta column family keys (docs/FORMAT.md).
inline constexpr std::string_view kSnapshotKeyPrefix = "snapshot/";
inline constexpr std::string_view kSystemIdKey = "system_identifier";

}  // namespace pgbackfs
