// The WAL archive: WAL segments, .history, .backup and .partial files, each stored once as an
// immutable chunk tree under its name (docs/FORMAT.md, "wal"). The archive is append-only: a name
// once stored keeps its bytes for good (invariant 2), and a file becomes visible only when its
// record is written, in a synced write (invariants 1 and 3).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "repo/chunk_tree.h"
#include "repo/repository.h"

namespace pgbackfs {

enum class WalFileKind { kSegment, kPartial, kHistory, kBackupLabel };

// Checks an archive file name: "000000010000000000000001", "…01.partial", "00000002.history",
// "…01.00000028.backup". InvalidArgument (naming the file) otherwise.
Status ParseWalFileName(const std::string& name, WalFileKind* kind);

struct WalFileInfo {
  std::string name;
  WalFileKind kind;
  FileData data;
  int64_t archived_time = 0;  // unix seconds
};

class WalArchive;

// Receives one file's bytes. Writes must go forward (a gap is filled with zeros); the file is
// stored and made visible only by Commit(). A writer dropped without Commit() leaves nothing
// visible (its chunks are unreferenced). Not thread-safe.
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

// Thread-safe.
class WalArchive {
 public:
  explicit WalArchive(Repository* repo);
  Result<std::unique_ptr<WalWriter>> NewWriter(const std::string& name);
  Result<WalFileInfo> Get(const std::string& name);  // NotFound at once if absent
  // Every archived file, in name order.
  Status List(const std::function<Status(const WalFileInfo&)>& fn);
  // The WAL segment size fixed by the first segment or backup (0 if none yet).
  Result<uint64_t> SegmentSize();

 private:
  Repository* repo_;
};

}  // namespace pgbackfs
