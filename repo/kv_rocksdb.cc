// RocksDB implementation of KvStore. The only file that includes RocksDB headers.
#include <fcntl.h>
#include <rocksdb/convenience.h>
#include <rocksdb/db.h>
#include <rocksdb/env.h>
#include <rocksdb/file_system.h>
#include <rocksdb/filter_policy.h>
#include <rocksdb/listener.h>
#include <rocksdb/sst_file_reader.h>
#include <rocksdb/table.h>
#include <rocksdb/utilities/options_util.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdarg>
#include <cstdio>
#include <ctime>
#include <future>
#include <memory>
#include <mutex>
#include <set>
#include <shared_mutex>
#include <string>
#include <thread>
#include <vector>

#include "repo/kv.h"
#include "repo/rocks_log_fs.h"

namespace pgbackfs {

const char* CfName(Cf cf) {
  switch (cf) {
    case Cf::kMeta:
      return "default";
    case Cf::kChunks:
      return "chunks";
    case Cf::kWal:
      return "wal";
    case Cf::kOverlay:
      return "overlay";
    case Cf::kChunkData:
      return "chunk_data";
    case Cf::kCount:
      break;
  }
  return "?";
}

namespace {

Status Convert(const rocksdb::Status& s, const char* what) {
  if (s.ok()) return Status::OK();
  std::string msg = std::string(what) + ": " + s.ToString();
  if (s.IsNotFound()) return Status::NotFound(msg);
  if (s.IsCorruption()) return Status::Corruption(msg);
  if (s.IsNoSpace() || s.subcode() == rocksdb::Status::kNoSpace) return Status::NoSpace(msg);
  if (s.IsBusy() || s.IsTimedOut() || s.IsTryAgain()) return Status::Busy(msg);
  if (s.IsInvalidArgument()) return Status::InvalidArgument(msg);
  if (s.IsNotSupported()) return Status::NotSupported(msg);
  return Status::IOError(msg);
}

// When a table file's footer, properties or index is damaged, RocksDB fails to open the
// database with a message that may name the manifest instead of the table. Opening each table
// file on its own (which reads those blocks and checks their checksums) says which is damaged.
std::string DamagedTables(const std::string& dir) {
  std::vector<std::string> children;
  rocksdb::Env* env = rocksdb::Env::Default();
  if (!env->GetChildren(dir, &children).ok()) return "its table files cannot be listed";
  std::sort(children.begin(), children.end());
  rocksdb::Options options;
  std::vector<std::string> damaged;
  for (const std::string& name : children) {
    if (name.size() < 4 || name.compare(name.size() - 4, 4, ".sst") != 0) continue;
    rocksdb::SstFileReader reader(options);
    rocksdb::Status s = reader.Open(dir + "/" + name);
    if (!s.ok()) damaged.push_back(name + " (" + s.ToString() + ")");
  }
  if (damaged.empty()) return "every table file opens on its own (the damage is elsewhere)";
  std::string out = "damaged table files:";
  for (const std::string& d : damaged) out += " " + d;
  return out;
}

// KvFaultInjection: a file system whose writes fail with ENOSPC while `disk_full` is set (EIO
// while `io_error` is), where a real one does: when data reaches the file (Append; POSIX Flush()
// only hands over RocksDB's buffer, which Append already did), when blocks are allocated, and at
// sync.
class FullDiskFile : public rocksdb::FSWritableFileOwnerWrapper {
 public:
  FullDiskFile(std::unique_ptr<rocksdb::FSWritableFile> file, const KvFaultInjection* faults,
               bool table)
      : FSWritableFileOwnerWrapper(std::move(file)), faults_(faults), table_(table) {}

  using IOOptions = rocksdb::IOOptions;
  using IOStatus = rocksdb::IOStatus;
  using Dbg = rocksdb::IODebugContext;
  IOStatus Append(const rocksdb::Slice& data, const IOOptions& o, Dbg* d) override {
    IOStatus s = Refused();
    return s.ok() ? target()->Append(data, o, d) : s;
  }
  IOStatus Append(const rocksdb::Slice& data, const IOOptions& o,
                  const rocksdb::DataVerificationInfo& v, Dbg* d) override {
    IOStatus s = Refused();
    return s.ok() ? target()->Append(data, o, v, d) : s;
  }
  IOStatus PositionedAppend(const rocksdb::Slice& data, uint64_t off, const IOOptions& o,
                            Dbg* d) override {
    IOStatus s = Refused();
    return s.ok() ? target()->PositionedAppend(data, off, o, d) : s;
  }
  IOStatus PositionedAppend(const rocksdb::Slice& data, uint64_t off, const IOOptions& o,
                            const rocksdb::DataVerificationInfo& v, Dbg* d) override {
    IOStatus s = Refused();
    return s.ok() ? target()->PositionedAppend(data, off, o, v, d) : s;
  }
  IOStatus Sync(const IOOptions& o, Dbg* d) override {
    IOStatus s = Refused();
    return s.ok() ? target()->Sync(o, d) : s;
  }
  IOStatus Fsync(const IOOptions& o, Dbg* d) override {
    IOStatus s = Refused();
    return s.ok() ? target()->Fsync(o, d) : s;
  }
  IOStatus RangeSync(uint64_t off, uint64_t n, const IOOptions& o, Dbg* d) override {
    IOStatus s = Refused();
    return s.ok() ? target()->RangeSync(off, n, o, d) : s;
  }
  IOStatus Allocate(uint64_t off, uint64_t n, const IOOptions& o, Dbg* d) override {
    IOStatus s = Refused();
    return s.ok() ? target()->Allocate(off, n, o, d) : s;
  }

 private:
  // The error this write fails with (OK: none); a table append that starts on a full disk fails
  // after the delay.
  IOStatus Refused() const {
    const bool full = faults_->disk_full.load();
    const bool io_error = faults_->io_error.load();
    if (full && table_) faults_->table_writes_refused.fetch_add(1);
    const int delay = table_ ? faults_->table_append_delay_ms.load() : 0;
    if (delay > 0) std::this_thread::sleep_for(std::chrono::milliseconds(delay));
    if (full) return IOStatus::NoSpace("injected: No space left on device");
    if (io_error) return IOStatus::IOError("injected: Input/output error");
    return IOStatus::OK();
  }
  const KvFaultInjection* faults_;
  const bool table_;
};

class FullDiskFs : public rocksdb::FileSystemWrapper {
 public:
  FullDiskFs(const std::shared_ptr<rocksdb::FileSystem>& base, const KvFaultInjection* faults)
      : FileSystemWrapper(base), faults_(faults) {}
  const char* Name() const override { return "pgbackfs-full-disk"; }

  rocksdb::IOStatus NewWritableFile(const std::string& f, const rocksdb::FileOptions& o,
                                    std::unique_ptr<rocksdb::FSWritableFile>* r,
                                    rocksdb::IODebugContext* d) override {
    return Wrap(target()->NewWritableFile(f, o, r, d), f, r);
  }
  rocksdb::IOStatus ReopenWritableFile(const std::string& f, const rocksdb::FileOptions& o,
                                       std::unique_ptr<rocksdb::FSWritableFile>* r,
                                       rocksdb::IODebugContext* d) override {
    return Wrap(target()->ReopenWritableFile(f, o, r, d), f, r);
  }
  rocksdb::IOStatus ReuseWritableFile(const std::string& f, const std::string& old,
                                      const rocksdb::FileOptions& o,
                                      std::unique_ptr<rocksdb::FSWritableFile>* r,
                                      rocksdb::IODebugContext* d) override {
    return Wrap(target()->ReuseWritableFile(f, old, o, r, d), f, r);
  }

 private:
  rocksdb::IOStatus Wrap(rocksdb::IOStatus s, const std::string& name,
                         std::unique_ptr<rocksdb::FSWritableFile>* r) {
    if (!s.ok()) return s;
    const bool table = name.size() > 4 && name.compare(name.size() - 4, 4, ".sst") == 0;
    *r = std::make_unique<FullDiskFile>(std::move(*r), faults_, table);
    return s;
  }
  const KvFaultInjection* faults_;
};

// RocksDB's info log, DIR/LOG. Not RocksDB's own file logger: Debian's RocksDB is built with
// assertions, and that logger aborts the process at the first line after one of its writes failed
// (a full disk). This one drops the lines it cannot write.
class InfoLog : public rocksdb::Logger {
 public:
  static std::shared_ptr<rocksdb::Logger> Open(const std::string& dir) {
    const std::string path = dir + "/LOG";
    struct stat st;
    if (stat(path.c_str(), &st) == 0 && st.st_size > kRotateBytes) {
      rename(path.c_str(), (path + ".old").c_str());
    }
    return std::make_shared<InfoLog>(
        open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600));
  }
  explicit InfoLog(int fd) : fd_(fd) {}
  ~InfoLog() override {
    if (fd_ >= 0) close(fd_);
  }

  using rocksdb::Logger::Logv;
  void Logv(const char* format, va_list ap) override {
    if (fd_ < 0) return;
    char buf[4096];
    struct timeval now;
    gettimeofday(&now, nullptr);
    struct tm t;
    localtime_r(&now.tv_sec, &t);
    int n = snprintf(buf, sizeof(buf), "%04d/%02d/%02d-%02d:%02d:%02d.%06ld ", t.tm_year + 1900,
                     t.tm_mon + 1, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec,
                     static_cast<long>(now.tv_usec));
    int m = vsnprintf(buf + n, sizeof(buf) - n - 1, format, ap);
    n = m < 0 ? n : std::min<int>(n + m, sizeof(buf) - 2);
    if (buf[n - 1] != '\n') buf[n++] = '\n';
    [[maybe_unused]] ssize_t written = write(fd_, buf, n);  // a line lost on a full disk is fine
  }

 private:
  static constexpr off_t kRotateBytes = 16 << 20;
  const int fd_;
};

class RocksStore;

// Tells the store that RocksDB stopped writing (a background error: a failed log write, flush or
// compaction), so that it resumes before the next write, and when the meta column family's
// memtable was sealed, so that the next write puts the store's marker into the new one
// (RocksStore::KeepActiveMemtableNonEmpty). Turns RocksDB's own recovery off: that one resumes
// as soon as the error is set, while the disk is still full, so its flush only fails again; the
// store resumes only once there is room for what it has to flush (RocksStore::ResumeIfStopped).
// One listener serves every instance the store opens.
class StoreListener : public rocksdb::EventListener {
 public:
  explicit StoreListener(RocksStore* store) : store_(store) {}
  void OnBackgroundError(rocksdb::BackgroundErrorReason reason, rocksdb::Status* error) override;
  void OnErrorRecoveryBegin(rocksdb::BackgroundErrorReason, rocksdb::Status,
                            bool* auto_recovery) override {
    *auto_recovery = false;
  }
  void OnMemTableSealed(const rocksdb::MemTableInfo& info) override;

 private:
  RocksStore* const store_;  // owns the listener
};

// A RocksDB iterator that a reopen can take away (RocksStore::Reopen). It copies the current key
// out of RocksDB as it moves, and the value when first asked, so that what key() and value()
// returned stays valid after Detach dropped the RocksDB iterator; the instance closes only once
// no RocksDB iterator is left on it. Every use of the RocksDB iterator holds the store's instance
// lock (db_mu_) shared; Detach holds it exclusive.
class RocksIterator : public KvIterator {
 public:
  // `it` is null when the store has no instance open; `closed` says why.
  RocksIterator(RocksStore* store, std::unique_ptr<rocksdb::Iterator> it, Status closed)
      : store_(store), it_(std::move(it)), detached_(std::move(closed)) {}
  ~RocksIterator() override;
  void Seek(std::string_view key) override;
  void SeekToLast() override;
  bool Valid() const override { return valid_; }
  void Next() override;
  std::string_view key() const override { return key_; }
  std::string_view value() const override;
  Status status() const override;
  // Instance lock held exclusive: keeps the current entry, drops the RocksDB iterator; the next
  // Seek or Next ends the iteration with `why`.
  void Detach(const Status& why);

 private:
  void Moved();  // instance lock held shared

  RocksStore* const store_;
  std::unique_ptr<rocksdb::Iterator> it_;  // null once detached; guarded by db_mu_
  Status detached_;                        // guarded by db_mu_
  mutable std::string value_;              // guarded by db_mu_ until value_copied_
  mutable bool value_copied_ = false;      // guarded by db_mu_
  bool valid_ = false;                     // set by the owner (Moved), like key_
  std::string key_;
};

class RocksStore : public KvStore {
 public:
  ~RocksStore() override { CloseDb(); }

  static Result<std::unique_ptr<KvStore>> Open(const std::string& dir, const KvOptions& options) {
    auto store = std::unique_ptr<RocksStore>(new RocksStore());
    store->dir_ = dir;
    store->faults_ = options.faults;
    store->resume_timeout_ = options.resume_timeout;
    store->first_reopen_backoff_ = store->reopen_backoff_ = options.reopen_backoff;
    rocksdb::DBOptions& db_options = store->db_options_;
    db_options.create_if_missing = options.create_if_missing;
    db_options.create_missing_column_families = true;
    db_options.paranoid_checks = true;
    db_options.max_background_jobs = 2;
    db_options.bytes_per_sync = 1 << 20;
    db_options.max_total_wal_size = 256 << 20;
    db_options.keep_log_file_num = 4;
    db_options.max_manifest_file_size = 64 << 20;
    // Short-lived commands (archive-push per segment) must not open every SST file at start-up.
    db_options.max_open_files = 512;
    db_options.skip_stats_update_on_db_open = true;
    db_options.skip_checking_sst_file_sizes_on_db_open = true;
    db_options.listeners.push_back(std::make_shared<StoreListener>(store.get()));
    // The marker (KeepActiveMemtableNonEmpty) is not logged; a flush at close would only turn
    // it into table files. Everything else is in the log.
    db_options.avoid_flush_during_shutdown = true;
    if (options.create_if_missing) mkdir(dir.c_str(), 0700);  // for the log; exists is fine
    db_options.info_log = InfoLog::Open(dir);
    std::shared_ptr<rocksdb::FileSystem> fs = rocksdb::FileSystem::Default();
    if (options.faults) fs = std::make_shared<FullDiskFs>(fs, options.faults);
    store->env_ = rocksdb::NewCompositeEnv(NewZeroAheadLogFs(fs));
    db_options.env = store->env_.get();

    auto cache = rocksdb::NewLRUCache(options.block_cache_bytes);
    auto table_options = [&](size_t block_size) {
      rocksdb::BlockBasedTableOptions t;
      t.block_cache = cache;
      t.block_size = block_size;
      t.filter_policy.reset(rocksdb::NewBloomFilterPolicy(10, false));
      t.cache_index_and_filter_blocks = true;
      t.pin_l0_filter_and_index_blocks_in_cache = true;
      t.format_version = 5;
      return t;
    };
    // Chunk and override lookups are point reads of keys in no useful order (hashes; pages of
    // files read at random): each reads one block from disk when cold, so a block holds about
    // one value (8 KiB chunks, compressed), not four: random 8 KiB reads on this project's disks
    // run at 40-50k/s against 23-27k/s for 32 KiB ones. With blocks this small the index is
    // about 3 MB per GiB of values; partitioned (top level pinned, partitions in the block
    // cache with priority) it does not have to fit in memory as a whole.
    auto point_lookup_options = [&]() {
      rocksdb::BlockBasedTableOptions t = table_options(8 << 10);
      t.index_type = rocksdb::BlockBasedTableOptions::kTwoLevelIndexSearch;
      t.partition_filters = true;
      t.metadata_block_size = 4096;
      t.pin_top_level_index_and_filter = true;
      t.cache_index_and_filter_blocks_with_high_priority = true;
      return t;
    };

    for (int i = 0; i < static_cast<int>(Cf::kCount); ++i) {
      Cf cf = static_cast<Cf>(i);
      rocksdb::ColumnFamilyOptions cfo;
      if (cf == Cf::kChunks || cf == Cf::kWal || cf == Cf::kOverlay || cf == Cf::kChunkData) {
        // Values are already zstd-compressed chunks: compressing SST blocks again wastes CPU.
        cfo.compression = rocksdb::kNoCompression;
        cfo.write_buffer_size = 64 << 20;
        cfo.target_file_size_base = 64 << 20;
        cfo.max_bytes_for_level_base = 512 << 20;
        rocksdb::BlockBasedTableOptions t =
            cf == Cf::kWal ? table_options(32 << 10) : point_lookup_options();
        if (cf == Cf::kChunkData) {
          // Located chunks, keyed by a number that grows as they are written: a file's chunks
          // are neighbours, and a cold sequential read of it reads adjacent blocks. Every lookup
          // is of a key that exists (its location comes from `chunks`): no Bloom filters.
          t.filter_policy.reset();
          t.partition_filters = false;
        } else {
          // Most lookups during a backup ask for chunks that are not stored yet: a memtable
          // bloom filter answers those without walking the skip list.
          cfo.memtable_whole_key_filtering = true;
          cfo.memtable_prefix_bloom_size_ratio = 0.05;
        }
        cfo.table_factory.reset(rocksdb::NewBlockBasedTableFactory(t));
      } else {
        cfo.compression = rocksdb::kZSTD;
        cfo.table_factory.reset(rocksdb::NewBlockBasedTableFactory(table_options(4 << 10)));
      }
      store->cfs_.emplace_back(CfName(cf), cfo);
    }
    rocksdb::Status s = store->OpenDb(/*read_only=*/false);
    if (!s.ok()) {
      if (s.IsIOError() && s.ToString().find("lock") != std::string::npos) {
        return Status::Busy("repository database '" + dir + "' is in use by another process");
      }
      Status st = Convert(s, ("open rocksdb '" + dir + "'").c_str());
      if (s.IsCorruption() && st.message().find(".sst") == std::string::npos) {
        st = Status::Corruption(st.message() + "; " + DamagedTables(dir));
      }
      return st;
    }
    return std::unique_ptr<KvStore>(std::move(store));
  }

  Status Get(Cf cf, std::string_view key, std::string* value) override {
    std::shared_lock<std::shared_mutex> db(db_mu_);
    if (!db_) return closed_;
    rocksdb::PinnableSlice pinned;
    rocksdb::ReadOptions ro;
    // A located chunk's data block is read past the block cache, as iterators over chunks read
    // theirs (NewIterator). Point reads of chunk data are a clone's or a backup's single pages
    // read at random, which the kernel's page cache keeps decoded above the mount; kept here as
    // well, they only churned the cache (an 8 KiB block allocated and another evicted per cold
    // read) and pushed out what every read needs: the `chunks` blocks with the locations and
    // the index partitions. Cold pgbench -c 2 on a scale-100 clone: +4% to +23% TPS in 5 of 5
    // alternating pairs (docs/BENCHMARKS.md, ninth session).
    ro.fill_cache = cf != Cf::kChunkData;
    rocksdb::Status s = db_->Get(ro, handle(cf), rocksdb::Slice(key.data(), key.size()), &pinned);
    if (s.IsNotFound()) return Status::NotFound("key not found");
    if (!s.ok()) return Convert(s, "get");
    value->assign(pinned.data(), pinned.size());
    return Status::OK();
  }

  Status Write(const KvBatch& batch, bool sync) override {
    std::shared_lock<std::shared_mutex> io;
    RETURN_IF_ERROR(LockForWrite(&io));
    rocksdb::WriteBatch wb;
    for (const auto& op : batch.ops()) {
      rocksdb::Status s =
          op.is_delete ? wb.Delete(handle(op.cf), op.key) : wb.Put(handle(op.cf), op.key, op.value);
      if (!s.ok()) return Convert(s, "batch");
    }
    KeepActiveMemtableNonEmpty();
    rocksdb::WriteOptions wo;
    wo.sync = sync;
    return Checked(db_->Write(wo, &wb), "write");
  }

  std::unique_ptr<KvIterator> NewIterator(Cf cf) override {
    std::shared_lock<std::shared_mutex> db(db_mu_);
    std::unique_ptr<rocksdb::Iterator> it;
    if (db_) {
      rocksdb::ReadOptions ro;
      ro.fill_cache = cf != Cf::kChunks && cf != Cf::kChunkData;
      it.reset(db_->NewIterator(ro, handle(cf)));
    }
    auto iterator = std::make_unique<RocksIterator>(this, std::move(it), closed_);
    std::lock_guard<std::mutex> lock(iterators_mu_);
    iterators_.insert(iterator.get());
    return iterator;
  }

  // An empty synced write, not DB::SyncWAL(): a write goes through RocksDB's write queue, which
  // refuses it once a write error stopped the store, whereas SyncWAL() on a log whose last write
  // failed trips an assertion in Debian's RocksDB (the process aborts) when it races with the
  // failing write. Syncing the log makes every earlier write durable either way.
  Status Sync() override {
    std::shared_lock<std::shared_mutex> io;
    RETURN_IF_ERROR(LockForWrite(&io));
    KeepActiveMemtableNonEmpty();
    rocksdb::WriteBatch empty;
    rocksdb::WriteOptions wo;
    wo.sync = true;
    return Checked(db_->Write(wo, &empty), "sync");
  }

  Status Flush() override {
    std::shared_lock<std::shared_mutex> io;
    RETURN_IF_ERROR(LockForWrite(&io));
    rocksdb::FlushOptions fo;
    fo.wait = true;
    RETURN_IF_ERROR(Checked(db_->Flush(fo, handles_), "flush"));
    return WaitForFlushedMemtables();
  }

  Status Compact(Cf cf) override {
    std::shared_lock<std::shared_mutex> io;
    RETURN_IF_ERROR(LockForWrite(&io));
    rocksdb::CompactRangeOptions co;
    co.bottommost_level_compaction = rocksdb::BottommostLevelCompaction::kForce;
    return Checked(db_->CompactRange(co, handle(cf), nullptr, nullptr), "compact");
  }

  uint64_t ApproximateSize(Cf cf) override {
    std::shared_lock<std::shared_mutex> db(db_mu_);
    if (!db_) return 0;
    uint64_t live = 0;
    db_->GetIntProperty(handle(cf), "rocksdb.live-sst-files-size", &live);
    uint64_t mem = 0;
    db_->GetIntProperty(handle(cf), "rocksdb.cur-size-all-mem-tables", &mem);
    return live + mem;
  }

 private:
  friend class RocksIterator;
  friend class StoreListener;

  RocksStore() = default;
  rocksdb::ColumnFamilyHandle* handle(Cf cf) { return handles_[static_cast<int>(cf)]; }

  // Opens the instance: the same directory, options (file system, listener, block cache) and
  // column families every time. Both locks held exclusive, or none (in Open).
  rocksdb::Status OpenDb(bool read_only) {
    handles_.clear();
    rocksdb::Status s = read_only
                            ? rocksdb::DB::OpenForReadOnly(db_options_, dir_, cfs_, &handles_, &db_)
                            : rocksdb::DB::Open(db_options_, dir_, cfs_, &handles_, &db_);
    if (!s.ok()) {
      db_ = nullptr;
      handles_.clear();
    }
    writable_ = s.ok() && !read_only;
    return s;
  }

  // Both locks held exclusive (or in the destructor); no RocksDB iterator is left on the instance.
  void CloseDb() {
    for (auto* h : handles_) {
      if (h) db_->DestroyColumnFamilyHandle(h);
    }
    handles_.clear();
    if (db_) {
      db_->Close();  // its error (the one that stopped writing) is known already
      delete db_;
      db_ = nullptr;
    }
    writable_ = false;
  }

  // Resumes (or reopens) a stopped database first; returns with `io` holding io_mu_ shared over
  // a writable instance.
  Status LockForWrite(std::shared_lock<std::shared_mutex>* io) {
    RETURN_IF_ERROR(ResumeIfStopped());
    *io = std::shared_lock<std::shared_mutex>(io_mu_);
    if (writable_) return Status::OK();
    return reopen_error_;  // another writer's reopen failed meanwhile
  }

  // A failed write may have stopped RocksDB: the next write resumes it first.
  Status Checked(const rocksdb::Status& s, const char* what) {
    if (s.ok()) return Status::OK();
    if (!s.IsInvalidArgument() && !s.IsNotSupported()) stopped_.store(true);
    Status st = Convert(s, what);
    if (st.code() != Status::Code::kNoSpace) return st;
    return Status::NoSpace("the repository's file system is full (" + st.message() +
                           "); this write was not stored: free space and retry");
  }

  // RocksDB refuses writes after a write error until DB::Resume() succeeds (TryResume), or until
  // the database is reopened (Reopen) when that cannot work. Either is tried only when the file
  // system has room for the memtables plus kResumeHeadroom (a resume flushes them; a reopen
  // writes them out again as it replays the log). Serialized, and no write runs meanwhile.
  static constexpr uint64_t kResumeHeadroom = 32 << 20;
  // How long a resume waits for background jobs that were running when writing stopped.
  static constexpr auto kDrainTimeout = std::chrono::seconds(60);
  // The longest wait between two failed reopens.
  static constexpr auto kMaxReopenBackoff = std::chrono::minutes(1);

  Status ResumeIfStopped() {
    if (!stopped_.load()) return Status::OK();
    std::unique_lock<std::shared_mutex> lock(io_mu_);
    if (!stopped_.load()) return Status::OK();
    const uint64_t need = (db_ ? MemtableBytes() : 0) + kResumeHeadroom;
    const uint64_t free = FreeBytes();
    if (free < need) {
      return Status::NoSpace("the repository's file system is full (" + MiB(free) + " free, " +
                             MiB(need) +
                             " needed to resume); nothing is stored until space is freed, then "
                             "writing resumes on its own");
    }
    if (reopen_why_.empty()) {
      Status s = TryResume();
      // A resume that ran out of space is tried again by a later write once there is room (or
      // a reopen, if RocksDB now names the error fatal).
      if (s.ok() || reopen_why_.empty() || s.code() == Status::Code::kNoSpace) return s;
    }
    return Reopen();
  }

  // DB::Resume(). Notes in reopen_why_ when the error cannot be resumed from.
  Status TryResume() {
    if (unrecoverable_.load()) {
      std::lock_guard<std::mutex> lock(fatal_mu_);
      reopen_why_ = "RocksDB classes its error as unrecoverable: " + fatal_error_;
      return Status::IOError(reopen_why_);
    }
    // A flush or compaction that is still running when Resume() starts may fail while Resume()
    // waits for it (it began while the disk was full). Its error then lands as the resume's own
    // error, the resume's flush is abandoned with its memtable still queued, and every later
    // Resume() waits for that flush forever (RocksDB 7.8). So resume only once nothing runs:
    // while writing is stopped, no new background job starts.
    if (!WaitForIdleBackgroundJobs()) {
      return Status::NoSpace(
          "the repository's database is still finishing background work after a full disk; "
          "this write was not stored: retry");
    }
    if (log_failed_.load() && ActiveMemtablesEmpty()) {
      reopen_why_ =
          "a write to its log failed while no column family held unflushed writes, so resuming "
          "would keep that log";
      return Status::IOError(reopen_why_);
    }
    if (faults_ && faults_->fill_disk_at_resume.exchange(false)) faults_->disk_full.store(true);
    rocksdb::Status s;
    for (int attempt = 0; attempt < 100; ++attempt) {
      s = ResumeWithDeadline();
      if (!s.IsBusy()) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    if (!reopen_why_.empty()) return Status::IOError(reopen_why_);
    if (s.ok()) {
      stopped_.store(false);
      log_failed_.store(false);
      marker_needed_.store(true);  // Resume() flushed every memtable
      return Status::OK();
    }
    Status st = Convert(s, "resume writing after an earlier write error");
    if (s.severity() >= rocksdb::Status::Severity::kFatalError || unrecoverable_.load() ||
        st.code() != Status::Code::kNoSpace) {
      reopen_why_ = st.message();
    }
    if (st.code() != Status::Code::kNoSpace) return st;
    return Status::NoSpace("the repository's file system is full (" + st.message() +
                           "); free space and retry");
  }

  // DB::Resume(), given up on after resume_timeout_: RocksDB 7.8 can wait forever for a flush
  // that a failed earlier resume abandoned. Cancelling the background work ends that wait; the
  // store then reopens the database (reopen_why_) instead of blocking every writer for good.
  rocksdb::Status ResumeWithDeadline() {
    auto done = std::make_shared<std::promise<rocksdb::Status>>();
    std::future<rocksdb::Status> result = done->get_future();
    rocksdb::DB* db = db_;
    std::thread resume([db, done] { done->set_value(db->Resume()); });
    if (result.wait_for(resume_timeout_) != std::future_status::ready) {
      rocksdb::CancelAllBackgroundWork(db_, /*wait=*/false);
      reopen_why_ = "Resume() did not finish within " + Duration(resume_timeout_) +
                    ": a flush it waits for did not end; background work was cancelled";
    }
    resume.join();
    return result.get();
  }

  // Closes the database and opens it again in place, as a restart would: the same directory,
  // options, column families and file system; RocksDB replays its log at open, so nothing
  // acknowledged is lost, and a batch is in the log whole or not at all. io_mu_ is held
  // exclusive (no write runs); db_mu_ is taken exclusive for the swap (no read runs, and no
  // RocksDB iterator: open ones are detached first, so the instance closes under none of them).
  // If the read-write open fails, a read-only instance serves reads until a later write, at
  // least reopen_backoff_ later, tries again.
  Status Reopen() {
    if (std::chrono::steady_clock::now() < next_reopen_) return reopen_error_;
    if (faults_) {
      faults_->reopens_tried.fetch_add(1);
      if (faults_->fill_disk_at_reopen.exchange(false)) faults_->disk_full.store(true);
    }
    spdlog::warn(
        "reopening the repository's database '{}': it stopped writing after an error and cannot "
        "resume ({})",
        dir_, reopen_why_);
    rocksdb::Status s, read_only;
    {
      std::unique_lock<std::shared_mutex> db(db_mu_);
      {
        const Status ended = Status::Busy(
            "the repository's database was reopened during this iteration, after a write error; "
            "nothing was lost: iterate again");
        std::lock_guard<std::mutex> lock(iterators_mu_);
        for (RocksIterator* it : iterators_) it->Detach(ended);
      }
      CloseDb();
      stopped_.store(false);  // the new instance's errors set these again
      log_failed_.store(false);
      unrecoverable_.store(false);
      marker_needed_.store(true);
      s = OpenDb(/*read_only=*/false);
      if (!s.ok()) read_only = OpenDb(/*read_only=*/true);
      closed_ = read_only.ok() ? Status::OK()
                               : Status::IOError(
                                     "the repository's database is closed: reopening it after a "
                                     "write error failed (" +
                                     s.ToString() + "); a later write tries again");
    }
    if (s.ok()) {
      spdlog::warn("reopened the repository's database '{}': writing resumes", dir_);
      reopen_why_.clear();
      reopen_error_ = Status::OK();
      reopen_backoff_ = first_reopen_backoff_;
      next_reopen_ = {};
      return Status::OK();
    }
    stopped_.store(true);
    const auto wait = reopen_backoff_;
    next_reopen_ = std::chrono::steady_clock::now() + wait;
    reopen_backoff_ = std::min<std::chrono::milliseconds>(
        reopen_backoff_ * 2, std::max<std::chrono::milliseconds>(kMaxReopenBackoff, wait));
    const std::string failed = "reopening the database failed: " + s.ToString();
    const std::string later = "a write from " + Duration(wait) + " on tries again";
    const std::string reads =
        read_only.ok() ? "reads go on" : "reads fail until then (" + read_only.ToString() + ")";
    spdlog::error("repository database '{}': {}; {}; {}", dir_, failed, later, reads);
    if (Convert(s, "reopen").code() == Status::Code::kNoSpace) {
      reopen_error_ = Status::NoSpace("the repository's file system is full (" + failed +
                                      "); this write was not stored: free space; " + later);
    } else {
      reopen_error_ = Status::IOError(
          "the repository's database stopped writing after an error and cannot resume (" +
          reopen_why_ + "); " + failed + "; " + later + "; " + reads);
    }
    return reopen_error_;
  }

  void NoteBackgroundError(rocksdb::BackgroundErrorReason reason, const rocksdb::Status& error) {
    if (reason == rocksdb::BackgroundErrorReason::kWriteCallback ||
        reason == rocksdb::BackgroundErrorReason::kMemTable) {
      log_failed_.store(true);  // a write to the log, or the switch to a new one, failed
    }
    if (error.severity() >= rocksdb::Status::Severity::kFatalError) {
      std::lock_guard<std::mutex> lock(fatal_mu_);
      fatal_error_ = error.ToString();
      unrecoverable_.store(true);
    }
    stopped_.store(true);
  }

  // RocksDB 7.8's Flush(wait) can return before the flush job ran. A flush job that runs only
  // after a later write error stopped the store gives up without taking its request off the
  // queue, and the next flush of that column family (a resume's) then waits forever. So a flush
  // of the store ends only once no memtable waits for a flush.
  Status WaitForFlushedMemtables() {
    bool stopped = false;
    const bool flushed = WaitUntil([&] {
      stopped = stopped_.load();
      return stopped || SumCfProperty("rocksdb.num-immutable-mem-table") == 0;
    });
    if (stopped) {
      return Status::IOError("flush: the database stopped writing before the flush ended");
    }
    if (flushed) return Status::OK();
    return Status::Busy("flush: memtables still wait for a flush after " +
                        std::to_string(kDrainTimeout.count()) + " s");
  }

  // True once no flush or compaction runs (false after kDrainTimeout).
  bool WaitForIdleBackgroundJobs() {
    return WaitUntil([this] {
      uint64_t flushes = 0, compactions = 0;
      db_->GetIntProperty("rocksdb.num-running-flushes", &flushes);
      db_->GetIntProperty("rocksdb.num-running-compactions", &compactions);
      return flushes == 0 && compactions == 0;
    });
  }

  // Polls `done` every millisecond until it holds (true) or kDrainTimeout passed (false).
  template <typename Done>
  static bool WaitUntil(Done done) {
    const auto deadline = std::chrono::steady_clock::now() + kDrainTimeout;
    while (!done()) {
      if (std::chrono::steady_clock::now() > deadline) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return true;
  }

  // After a failed write to its log, RocksDB must switch to a new log before the next append
  // (another append to the failed one trips an assertion in Debian's RocksDB: the process
  // aborts). Resume() switches logs only when a column family's active memtable holds
  // something; while writing is stopped nothing can be put there. So the store keeps one there
  // at all times: an unlogged put and delete of a marker key in the meta column family (no
  // trace in any table: the delete hides the put), written again after every seal of that
  // memtable, before the next write. A write that seals the memtable and then fails its own log
  // append leaves it empty: that rare case is not resumed but reopened (ActiveMemtablesEmpty).
  void KeepActiveMemtableNonEmpty() {
    if (!marker_needed_.exchange(false)) return;
    static constexpr char kKey[] = "\xffkv-marker";
    rocksdb::WriteBatch wb;
    rocksdb::Status s = wb.Put(handle(Cf::kMeta), kKey, "");
    if (s.ok()) s = wb.Delete(handle(Cf::kMeta), kKey);
    rocksdb::WriteOptions wo;
    wo.disableWAL = true;
    if (s.ok()) s = db_->Write(wo, &wb);
    if (!s.ok()) marker_needed_.store(true);  // the write that follows fails the same way
  }

  // num-entries counts deletes too.
  bool ActiveMemtablesEmpty() { return SumCfProperty("rocksdb.num-entries-active-mem-table") == 0; }

  // Bytes the store's files may still take (statvfs of its directory; none while
  // KvFaultInjection says the disk is full).
  uint64_t FreeBytes() const {
    if (faults_ && faults_->disk_full.load()) return 0;
    struct statvfs st;
    if (statvfs(dir_.c_str(), &st) != 0) return UINT64_MAX;  // unknown: let Resume() tell
    return static_cast<uint64_t>(st.f_bavail) * st.f_frsize;
  }

  uint64_t MemtableBytes() { return SumCfProperty("rocksdb.cur-size-all-mem-tables"); }

  // An integer property of every column family, added up.
  uint64_t SumCfProperty(const char* name) {
    uint64_t total = 0;
    for (auto* h : handles_) {
      uint64_t n = 0;
      if (db_->GetIntProperty(h, name, &n)) total += n;
    }
    return total;
  }

  static std::string MiB(uint64_t bytes) { return std::to_string(bytes >> 20) + " MiB"; }
  static std::string Duration(std::chrono::milliseconds d) {
    if (d.count() % 1000 == 0) return std::to_string(d.count() / 1000) + " s";
    return std::to_string(d.count()) + " ms";
  }

  // Set once in Open.
  std::string dir_;
  KvFaultInjection* faults_ = nullptr;
  std::unique_ptr<rocksdb::Env> env_;  // its file systems outlive every instance
  rocksdb::DBOptions db_options_;
  std::vector<rocksdb::ColumnFamilyDescriptor> cfs_;
  std::chrono::milliseconds resume_timeout_{0};
  std::chrono::milliseconds first_reopen_backoff_{0};

  // Lock order: io_mu_, then db_mu_, then iterators_mu_.
  //
  // Shared by every write, sync, flush and compaction; exclusive while resuming or reopening.
  std::shared_mutex io_mu_;
  // The instance: shared by every read (Get, iterators, sizes); exclusive only while a reopen
  // swaps the instance, under io_mu_ exclusive. So holding either lock, shared or exclusive,
  // keeps db_ and handles_ as they are.
  std::shared_mutex db_mu_;
  rocksdb::DB* db_ = nullptr;                          // null after a failed reopen
  std::vector<rocksdb::ColumnFamilyHandle*> handles_;  // db_'s
  bool writable_ = false;  // db_ opened read-write (not the read-only fallback)
  Status closed_;          // why db_ is null
  // Every RocksIterator alive, so that a reopen can detach them.
  std::mutex iterators_mu_;
  std::set<RocksIterator*> iterators_;  // guarded by iterators_mu_ and db_mu_ (any mode)

  std::atomic<bool> stopped_{false};
  std::atomic<bool> marker_needed_{true};   // KeepActiveMemtableNonEmpty
  std::atomic<bool> log_failed_{false};     // since the last resume, a log write failed
  std::atomic<bool> unrecoverable_{false};  // since the last reopen, RocksDB named an error fatal
  std::mutex fatal_mu_;
  std::string fatal_error_;  // guarded by fatal_mu_

  // Guarded by io_mu_ (exclusive to change; shared to read).
  std::string reopen_why_;  // set once the error cannot be resumed from: the store reopens
  Status reopen_error_;     // the last reopen's failure; OK after a successful one
  std::chrono::milliseconds reopen_backoff_{0};
  std::chrono::steady_clock::time_point next_reopen_;
};

void StoreListener::OnBackgroundError(rocksdb::BackgroundErrorReason reason,
                                      rocksdb::Status* error) {
  if (!error->ok()) store_->NoteBackgroundError(reason, *error);
}

void StoreListener::OnMemTableSealed(const rocksdb::MemTableInfo& info) {
  if (info.cf_name == CfName(Cf::kMeta)) store_->marker_needed_.store(true);
}

RocksIterator::~RocksIterator() {
  std::shared_lock<std::shared_mutex> db(store_->db_mu_);
  it_.reset();
  std::lock_guard<std::mutex> lock(store_->iterators_mu_);
  store_->iterators_.erase(this);
}

void RocksIterator::Seek(std::string_view key) {
  std::shared_lock<std::shared_mutex> db(store_->db_mu_);
  if (it_) it_->Seek(rocksdb::Slice(key.data(), key.size()));
  Moved();
}

void RocksIterator::SeekToLast() {
  std::shared_lock<std::shared_mutex> db(store_->db_mu_);
  if (it_) it_->SeekToLast();
  Moved();
}

void RocksIterator::Next() {
  std::shared_lock<std::shared_mutex> db(store_->db_mu_);
  if (it_) it_->Next();
  Moved();
}

void RocksIterator::Moved() {
  valid_ = it_ && it_->Valid();
  if (valid_) {
    rocksdb::Slice k = it_->key();
    key_.assign(k.data(), k.size());
  } else {
    key_.clear();
  }
  value_.clear();
  value_copied_ = false;
}

std::string_view RocksIterator::value() const {
  std::shared_lock<std::shared_mutex> db(store_->db_mu_);
  if (!value_copied_ && it_ && valid_) {
    rocksdb::Slice v = it_->value();
    value_.assign(v.data(), v.size());
    value_copied_ = true;
  }
  return value_;
}

Status RocksIterator::status() const {
  std::shared_lock<std::shared_mutex> db(store_->db_mu_);
  if (!it_) return valid_ ? Status::OK() : detached_;  // ended only at the next Seek or Next
  return Convert(it_->status(), "iterate");
}

void RocksIterator::Detach(const Status& why) {
  if (!it_) return;
  if (!value_copied_ && valid_) {
    rocksdb::Slice v = it_->value();
    value_.assign(v.data(), v.size());
    value_copied_ = true;
  }
  it_.reset();
  detached_ = why;
}

}  // namespace

Result<std::unique_ptr<KvStore>> OpenRocksDbStore(const std::string& dir,
                                                  const KvOptions& options) {
  return RocksStore::Open(dir, options);
}

}  // namespace pgbackfs
