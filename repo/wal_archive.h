// The WAL archive: WAL segments, .history, .backup and .partial files, each stored once as an
// immutable chunk tree under its name (docs/FORMAT.md, "wal"). The archive is append-only: a name
// once stored keeps its bytes for good (invariant 2), and a file becomes visible only when its
// record is written, in a synced write (invariants 1 and 3).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "repo/chunk_tree.h"
#include "repo/repository.h"
#include "repo/wal_format.h"
#include "repo/wal_index.h"

namespace pgbackfs {

// WalFileKind is defined in repo/wal_format.h.

// Checks an archive file name: "000000010000000000000001", "…01.partial", "00000002.history",
// "…01.00000028.backup". InvalidArgument (naming the file) otherwise.
Status ParseWalFileName(const std::string& name, WalFileKind* kind);

// The leaf size of archived WAL files in repositories of format >= 3
// (kFirstFormatWithWalChunkSize). WAL is written once and read whole, in order, and hardly ever
// shares a chunk with anything but itself, so small chunks buy no deduplication; large ones cost
// 128 times fewer chunk writes and lookups per 16 MiB segment, and compress better on their own
// than 8 KiB ones do with a dictionary. 1 MiB is also what cp writes and the mount reads at a time.
inline constexpr uint32_t kWalChunkSize = 1 << 20;

// The Cf::kWal record of one archived file; the key is the file name. Layout: docs/FORMAT.md,
// "wal" (EncodeTo / DecodeFrom are the only code that reads or writes it).
struct WalFileInfo {
  std::string name;
  WalFileKind kind;
  FileData data;              // data.chunk_size is 0 (the repository's) in record version 1
  int64_t archived_time = 0;  // unix seconds

  void EncodeTo(std::string* dst) const;  // everything but `name`, which is the key
  static Status DecodeFrom(std::string_view name, std::string_view value, WalFileInfo* info);
};

// Cf::kMeta key of the WAL segment size fixed by the first segment or backup; the value is the
// size in bytes as decimal ASCII ("16777216").
inline constexpr std::string_view kWalSegmentSizeKey = "wal_segment_size";

class WalArchive;

// Receives one file's bytes. Writes must go forward (a gap is filled with zeros); the file is
// stored and made visible only by Commit(). A writer dropped without Commit() leaves nothing
// visible (its chunks are unreferenced). Not thread-safe.
//
// Write() checks the offset and size and queues the bytes; a thread of the writer's own stores
// them (hashes, compresses, writes chunks, and parses a segment for the WAL index) while the
// caller sends the next ones. An error storing them is returned by a later call, at the latest
// by Commit(), which waits for everything queued. Memory: a few MiB per writer
// (repo/wal_archive.cc, Pipeline).
class WalWriter {
 public:
  virtual ~WalWriter() = default;
  virtual Status Write(uint64_t offset, std::string_view data) = 0;
  virtual Status Truncate(uint64_t size) = 0;
  virtual uint64_t size() const = 0;
  // Validates (size, page header, system identifier) and stores durably. OK if the same name is
  // already stored with the same bytes; AlreadyExists if with other bytes (nothing changes).
  // May be called again after more writes (a second flush()); a later call stores nothing new
  // when nothing changed.
  virtual Status Commit() = 0;
};

// Thread-safe. Must outlive the writers it hands out.
class WalArchive {
 public:
  // `repo` must outlive the archive.
  explicit WalArchive(Repository* repo);
  // InvalidArgument for a name that is not a WAL file name.
  Result<std::unique_ptr<WalWriter>> NewWriter(const std::string& name);
  Result<WalFileInfo> Get(const std::string& name);  // NotFound at once if absent
  // Every archived file, in name order.
  Status List(const std::function<Status(const WalFileInfo&)>& fn);
  // The WAL segment size fixed by the first segment or backup (0 if none yet).
  Result<uint64_t> SegmentSize();

  // Fixes the WAL segment size if none is stored yet (synced write); FailedPrecondition if
  // another size is stored. For base backups, which learn the size from the server.
  Status CheckSegmentSize(uint64_t size);

  // Streams the bytes of an archived file to `sink` in order, in pieces of at most 1 MiB, each
  // chunk checked against its hash. An error names the file and the offset.
  Status ReadFile(const WalFileInfo& info, const std::function<Status(std::string_view)>& sink);

  // Indexes a WAL segment that came inside a base backup (its pg_wal copy, which may end
  // anywhere) into the WAL index, unless an archived copy of it is indexed already. Serialized
  // with archive commits, which index what they store in the same synced write.
  Status IndexBackupSegment(const std::string& name, const FileData& data);
  // Indexes the segments in a snapshot's pg_wal/ (IndexBackupSegment); with `only_missing`,
  // only those the index has no record of (a backup killed between its commit and this step).
  // Returns how many were indexed.
  Result<uint64_t> IndexSnapshotWal(const SnapshotInfo& snapshot, bool only_missing);
  // Indexes every archived segment and history file the index does not know yet (after a crash
  // between a history file's record and its index entry, or for a repository written before
  // the index existed). Returns how many files were indexed.
  Result<uint64_t> IndexMissing();

 private:
  friend class WalWriterImpl;

  // The check-and-write at the end of a writer's life: validates `data` (whose first bytes are
  // `head`) for `name`, and stores its record unless the name is already taken, with the WAL
  // index entries of a segment in the same synced write. `parse` (may be null: the segment is
  // then read back and parsed here) is the writer's parse of the same bytes, made by `index`.
  Status CommitFile(const std::string& name, const WalFileName& parsed, const FileData& data,
                    std::string_view head, WalIndex* index, WalSegmentParse* parse);
  Status ValidateSegment(const std::string& name, const WalFileName& parsed, const FileData& data,
                         std::string_view head, uint64_t stored_seg_size, uint64_t* seg_size);
  Result<uint64_t> ReadSegmentSize();  // one Get; callers that decide on it hold CommitMutex()
  // Serializes every check-and-write of a record (and of the segment size) in the process, so
  // that two writers of one name cannot both store different bytes, however many WalArchive
  // objects exist (the mount and each forwarded command make their own). One process owns a
  // repository, so a process-wide lock is enough.
  static std::mutex& CommitMutex();

  Repository* repo_;
};

}  // namespace pgbackfs
