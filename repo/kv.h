// The key-value store under the repository. Two implementations: RocksDB (kv_rocksdb.cc) and an
// in-memory map for fast tests (kv_memory.cc). The same test suite runs against both.
// Key and value layouts of every column family are in docs/FORMAT.md.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "repo/status.h"

namespace pgbackfs {

// Column families. The numbering is part of nothing on disk; RocksDB sees the names.
enum class Cf : uint8_t {
  kMeta = 0,   // repository metadata, snapshot records, clone records
  kChunks,     // content-addressed chunks: XXH3-128 id -> encoded chunk, or its location
  kWal,        // WAL archive: file name -> archived file record
  kOverlay,    // clone overlays (copy-on-write data)
  kChunkData,  // located chunks (format >= 4): location -> id + encoded chunk, in write order
  kCount,
};
const char* CfName(Cf cf);

// An atomic group of writes.
class KvBatch {
 public:
  struct Op {
    Cf cf;
    bool is_delete;
    std::string key;
    std::string value;
  };
  void Put(Cf cf, std::string_view key, std::string_view value) {
    bytes_ += key.size() + value.size();
    ops_.push_back({cf, false, std::string(key), std::string(value)});
  }
  void Delete(Cf cf, std::string_view key) {
    bytes_ += key.size();
    ops_.push_back({cf, true, std::string(key), {}});
  }
  const std::vector<Op>& ops() const { return ops_; }
  size_t ApproximateBytes() const { return bytes_; }
  bool empty() const { return ops_.empty(); }
  void Clear() {
    ops_.clear();
    bytes_ = 0;
  }

 private:
  std::vector<Op> ops_;
  size_t bytes_ = 0;
};

// Iterates one column family in key order. Not thread-safe; one owner. It must not outlive its
// store. key() and value() stay valid until the next Seek or Next, also across a reopen.
//
// An iterator is bound to the database instance it was made on. When the RocksDB store reopens
// its database (after a write error it could not resume from, see OpenRocksDbStore), every open
// iterator keeps its current entry; its next Seek or Next ends it: Valid() turns false and
// status() is Busy, naming the reopen. Iterate again to see the reopened database; nothing was
// lost. A reopen never waits for iterators, so a thread may write while it holds one.
class KvIterator {
 public:
  virtual ~KvIterator() = default;
  virtual void Seek(std::string_view key) = 0;
  // To the last key, if there is one.
  virtual void SeekToLast() = 0;
  virtual bool Valid() const = 0;
  virtual void Next() = 0;
  virtual std::string_view key() const = 0;
  virtual std::string_view value() const = 0;
  virtual Status status() const = 0;
};

// Thread-safe.
class KvStore {
 public:
  virtual ~KvStore() = default;
  // NotFound if absent.
  virtual Status Get(Cf cf, std::string_view key, std::string* value) = 0;
  // Applies all of `batch` or nothing. With `sync`, it is durable (fdatasync) on return, and so
  // is everything written before it.
  virtual Status Write(const KvBatch& batch, bool sync) = 0;
  virtual std::unique_ptr<KvIterator> NewIterator(Cf cf) = 0;
  // Makes every earlier write durable.
  virtual Status Sync() = 0;
  // Writes in-memory tables out to the store's files (RocksDB: flushes memtables to SSTs).
  virtual Status Flush() = 0;
  // Rewrites the column family's files without deleted keys (RocksDB: a full manual compaction),
  // so that deletes free disk space now. Reads and writes go on meanwhile.
  virtual Status Compact(Cf cf) = 0;
  // Approximate bytes on disk, for `info`.
  virtual uint64_t ApproximateSize(Cf cf) = 0;
};

// Test hook: while `disk_full` is set, every file write of the store fails as on a full disk
// (ENOSPC), before anything reaches the file. Unit tests use it instead of a real full disk.
// While `io_error` is set, they fail with EIO instead, as on a failing disk (room is left).
// `table_append_delay_ms` slows every append to a table file (flushes and compactions) by that
// much; an append that starts while the disk is full still fails after the delay, and counts in
// `table_writes_refused` as it starts. The disk fills (`disk_full` is set, and the flag cleared)
// as the store starts its next resume of RocksDB (`fill_disk_at_resume`) or reopen of the
// database (`fill_disk_at_reopen`), after it found room for that: as when something else takes
// the space meanwhile. `reopens_tried` counts the store's attempts to reopen its database.
struct KvFaultInjection {
  std::atomic<bool> disk_full{false};
  std::atomic<bool> io_error{false};
  std::atomic<int> table_append_delay_ms{0};
  mutable std::atomic<int> table_writes_refused{0};
  std::atomic<bool> fill_disk_at_resume{false};
  std::atomic<bool> fill_disk_at_reopen{false};
  mutable std::atomic<int> reopens_tried{0};
};

struct KvOptions {
  bool create_if_missing = false;
  size_t block_cache_bytes = 64 << 20;
  KvFaultInjection* faults = nullptr;  // tests only; must outlive the store
  // How long RocksDB's resume after a write error may take before the store gives up on it and
  // reopens the database instead. Tests shorten it.
  std::chrono::milliseconds resume_timeout{std::chrono::seconds(120)};
  // After a failed reopen, the next write tries again only this much later; the wait doubles
  // after each failure, up to a minute. Tests shorten it.
  std::chrono::milliseconds reopen_backoff{std::chrono::seconds(1)};
};

// Opens (or creates) a RocksDB store in `dir`.
//
// Write errors: after a failed write (a full disk, an I/O error while writing its log or a
// table file), RocksDB refuses every further write until the error is cleared. The store clears
// it by itself: before the next Write, Sync or Flush it asks RocksDB to resume (flush what it
// holds in memory to new files), which succeeds once the cause is gone, e.g. space was freed.
// Until then those calls fail with NoSpace (full disk) or IOError, naming the first error and
// what to do; nothing is acknowledged that was not stored. Reads keep working throughout.
//
// An error RocksDB cannot resume from (it classes it fatal, or its resume did not finish within
// `resume_timeout`) makes the store reopen the database in place, as a restart would: same
// directory, options and file system. RocksDB replays its log at open, so nothing acknowledged
// is lost. The reopen happens in the write, sync, flush or compaction that finds the error, once
// there is room; reads wait for it (seconds) and open iterators end (see KvIterator). A reopen
// that fails is retried by a later write after `reopen_backoff` (doubling); until then writes
// fail naming its error (NoSpace on a full disk), and reads go to a read-only instance.
Result<std::unique_ptr<KvStore>> OpenRocksDbStore(const std::string& dir, const KvOptions& options);
std::unique_ptr<KvStore> NewMemoryStore();

}  // namespace pgbackfs
