// RocksDB implementation of KvStore. The only file that includes RocksDB headers.
#include <fcntl.h>
#include <rocksdb/convenience.h>
#include <rocksdb/db.h>
#include <rocksdb/env.h>
#include <rocksdb/file_system.h>
#include <rocksdb/filter_policy.h>
#include <rocksdb/listener.h>
#include <rocksdb/table.h>
#include <rocksdb/utilities/options_util.h>
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
#include <shared_mutex>
#include <thread>

#include "repo/kv.h"

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

// KvFaultInjection: a file system whose writes fail with ENOSPC while `disk_full` is set, where
// a real one does: when data reaches the file (Append; POSIX Flush() only hands over RocksDB's
// buffer, which Append already did), when blocks are allocated, and at sync.
class FullDiskFile : public rocksdb::FSWritableFileOwnerWrapper {
 public:
  FullDiskFile(std::unique_ptr<rocksdb::FSWritableFile> file, const KvFaultInjection* faults,
               bool table)
      : FSWritableFileOwnerWrapper(std::move(file)), faults_(faults), table_(table) {}

  using IOOptions = rocksdb::IOOptions;
  using IOStatus = rocksdb::IOStatus;
  using Dbg = rocksdb::IODebugContext;
  IOStatus Append(const rocksdb::Slice& data, const IOOptions& o, Dbg* d) override {
    return Full() ? NoSpace() : target()->Append(data, o, d);
  }
  IOStatus Append(const rocksdb::Slice& data, const IOOptions& o,
                  const rocksdb::DataVerificationInfo& v, Dbg* d) override {
    return Full() ? NoSpace() : target()->Append(data, o, v, d);
  }
  IOStatus PositionedAppend(const rocksdb::Slice& data, uint64_t off, const IOOptions& o,
                            Dbg* d) override {
    return Full() ? NoSpace() : target()->PositionedAppend(data, off, o, d);
  }
  IOStatus PositionedAppend(const rocksdb::Slice& data, uint64_t off, const IOOptions& o,
                            const rocksdb::DataVerificationInfo& v, Dbg* d) override {
    return Full() ? NoSpace() : target()->PositionedAppend(data, off, o, v, d);
  }
  IOStatus Sync(const IOOptions& o, Dbg* d) override {
    return Full() ? NoSpace() : target()->Sync(o, d);
  }
  IOStatus Fsync(const IOOptions& o, Dbg* d) override {
    return Full() ? NoSpace() : target()->Fsync(o, d);
  }
  IOStatus RangeSync(uint64_t off, uint64_t n, const IOOptions& o, Dbg* d) override {
    return Full() ? NoSpace() : target()->RangeSync(off, n, o, d);
  }
  IOStatus Allocate(uint64_t off, uint64_t n, const IOOptions& o, Dbg* d) override {
    return Full() ? NoSpace() : target()->Allocate(off, n, o, d);
  }

 private:
  // Whether this write fails; a table append that starts on a full disk fails after the delay.
  bool Full() const {
    const bool full = faults_->disk_full.load();
    if (full && table_) faults_->table_writes_refused.fetch_add(1);
    const int delay = table_ ? faults_->table_append_delay_ms.load() : 0;
    if (delay > 0) std::this_thread::sleep_for(std::chrono::milliseconds(delay));
    return full;
  }
  static IOStatus NoSpace() { return IOStatus::NoSpace("injected: No space left on device"); }
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

// Notes that RocksDB stopped writing (a background error: a failed log write, flush or
// compaction), so that the store resumes it before the next write; turns RocksDB's own
// recovery off (that one resumes as soon as the error is set, while the disk is still full, and
// a resume whose flush fails turns the error fatal: only a reopen clears it then; the store
// resumes only once there is room for what it has to flush, RocksStore::ResumeIfStopped); and
// notes when the meta column family's memtable was sealed, so that the next write puts the
// store's marker into the new one (RocksStore::KeepActiveMemtableNonEmpty).
class StoreListener : public rocksdb::EventListener {
 public:
  StoreListener(std::atomic<bool>* stopped, std::atomic<bool>* log_failed,
                std::atomic<bool>* marker_needed)
      : stopped_(stopped), log_failed_(log_failed), marker_needed_(marker_needed) {}
  void OnBackgroundError(rocksdb::BackgroundErrorReason reason, rocksdb::Status* error) override {
    if (error->ok()) return;
    if (reason == rocksdb::BackgroundErrorReason::kWriteCallback ||
        reason == rocksdb::BackgroundErrorReason::kMemTable) {
      log_failed_->store(true);  // a write to the log, or the switch to a new one, failed
    }
    stopped_->store(true);
  }
  void OnErrorRecoveryBegin(rocksdb::BackgroundErrorReason, rocksdb::Status,
                            bool* auto_recovery) override {
    *auto_recovery = false;
  }
  void OnMemTableSealed(const rocksdb::MemTableInfo& info) override {
    if (info.cf_name == CfName(Cf::kMeta)) marker_needed_->store(true);
  }

 private:
  std::atomic<bool>* stopped_;
  std::atomic<bool>* log_failed_;
  std::atomic<bool>* marker_needed_;
};

class RocksIterator : public KvIterator {
 public:
  explicit RocksIterator(rocksdb::Iterator* it) : it_(it) {}
  void Seek(std::string_view key) override { it_->Seek(rocksdb::Slice(key.data(), key.size())); }
  bool Valid() const override { return it_->Valid(); }
  void Next() override { it_->Next(); }
  std::string_view key() const override {
    rocksdb::Slice k = it_->key();
    return {k.data(), k.size()};
  }
  std::string_view value() const override {
    rocksdb::Slice v = it_->value();
    return {v.data(), v.size()};
  }
  Status status() const override { return Convert(it_->status(), "iterate"); }

 private:
  std::unique_ptr<rocksdb::Iterator> it_;
};

class RocksStore : public KvStore {
 public:
  ~RocksStore() override {
    for (auto* h : handles_) {
      if (h) db_->DestroyColumnFamilyHandle(h);
    }
    if (db_) {
      db_->Close();
      delete db_;
    }
  }

  static Result<std::unique_ptr<KvStore>> Open(const std::string& dir, const KvOptions& options) {
    auto store = std::unique_ptr<RocksStore>(new RocksStore());
    store->dir_ = dir;
    store->faults_ = options.faults;
    rocksdb::DBOptions db_options;
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
    db_options.listeners.push_back(std::make_shared<StoreListener>(
        &store->stopped_, &store->log_failed_, &store->marker_needed_));
    // The marker (KeepActiveMemtableNonEmpty) is not logged; a flush at close would only turn
    // it into table files. Everything else is in the log.
    db_options.avoid_flush_during_shutdown = true;
    if (options.create_if_missing) mkdir(dir.c_str(), 0700);  // for the log; exists is fine
    db_options.info_log = InfoLog::Open(dir);
    if (options.faults) {
      store->env_ = rocksdb::NewCompositeEnv(
          std::make_shared<FullDiskFs>(rocksdb::FileSystem::Default(), options.faults));
      db_options.env = store->env_.get();
    }

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

    std::vector<rocksdb::ColumnFamilyDescriptor> cfs;
    for (int i = 0; i < static_cast<int>(Cf::kCount); ++i) {
      Cf cf = static_cast<Cf>(i);
      rocksdb::ColumnFamilyOptions cfo;
      if (cf == Cf::kChunks || cf == Cf::kWal || cf == Cf::kOverlay) {
        // Values are already zstd-compressed chunks: compressing SST blocks again wastes CPU.
        cfo.compression = rocksdb::kNoCompression;
        cfo.write_buffer_size = 64 << 20;
        cfo.target_file_size_base = 64 << 20;
        cfo.max_bytes_for_level_base = 512 << 20;
        cfo.table_factory.reset(rocksdb::NewBlockBasedTableFactory(table_options(32 << 10)));
        // Most lookups during a backup ask for chunks that are not stored yet: a memtable bloom
        // filter answers those without walking the skip list.
        cfo.memtable_whole_key_filtering = true;
        cfo.memtable_prefix_bloom_size_ratio = 0.05;
      } else {
        cfo.compression = rocksdb::kZSTD;
        cfo.table_factory.reset(rocksdb::NewBlockBasedTableFactory(table_options(4 << 10)));
      }
      cfs.emplace_back(CfName(cf), cfo);
    }
    rocksdb::Status s = rocksdb::DB::Open(db_options, dir, cfs, &store->handles_, &store->db_);
    if (!s.ok()) {
      if (s.IsIOError() && s.ToString().find("lock") != std::string::npos) {
        return Status::Busy("repository database '" + dir + "' is in use by another process");
      }
      return Convert(s, ("open rocksdb '" + dir + "'").c_str());
    }
    return std::unique_ptr<KvStore>(std::move(store));
  }

  Status Get(Cf cf, std::string_view key, std::string* value) override {
    rocksdb::PinnableSlice pinned;
    rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), handle(cf),
                                 rocksdb::Slice(key.data(), key.size()), &pinned);
    if (s.IsNotFound()) return Status::NotFound("key not found");
    if (!s.ok()) return Convert(s, "get");
    value->assign(pinned.data(), pinned.size());
    return Status::OK();
  }

  Status Write(const KvBatch& batch, bool sync) override {
    RETURN_IF_ERROR(ResumeIfStopped());
    std::shared_lock<std::shared_mutex> io(io_mu_);
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
    rocksdb::ReadOptions ro;
    ro.fill_cache = cf != Cf::kChunks;
    return std::make_unique<RocksIterator>(db_->NewIterator(ro, handle(cf)));
  }

  // An empty synced write, not DB::SyncWAL(): a write goes through RocksDB's write queue, which
  // refuses it once a write error stopped the store, whereas SyncWAL() on a log whose last write
  // failed trips an assertion in Debian's RocksDB (the process aborts) when it races with the
  // failing write. Syncing the log makes every earlier write durable either way.
  Status Sync() override {
    RETURN_IF_ERROR(ResumeIfStopped());
    std::shared_lock<std::shared_mutex> io(io_mu_);
    KeepActiveMemtableNonEmpty();
    rocksdb::WriteBatch empty;
    rocksdb::WriteOptions wo;
    wo.sync = true;
    return Checked(db_->Write(wo, &empty), "sync");
  }

  Status Flush() override {
    RETURN_IF_ERROR(ResumeIfStopped());
    std::shared_lock<std::shared_mutex> io(io_mu_);
    rocksdb::FlushOptions fo;
    fo.wait = true;
    RETURN_IF_ERROR(Checked(db_->Flush(fo, handles_), "flush"));
    return WaitForFlushedMemtables();
  }

  Status Compact(Cf cf) override {
    RETURN_IF_ERROR(ResumeIfStopped());
    std::shared_lock<std::shared_mutex> io(io_mu_);
    rocksdb::CompactRangeOptions co;
    co.bottommost_level_compaction = rocksdb::BottommostLevelCompaction::kForce;
    return Checked(db_->CompactRange(co, handle(cf), nullptr, nullptr), "compact");
  }

  uint64_t ApproximateSize(Cf cf) override {
    uint64_t live = 0;
    db_->GetIntProperty(handle(cf), "rocksdb.live-sst-files-size", &live);
    uint64_t mem = 0;
    db_->GetIntProperty(handle(cf), "rocksdb.cur-size-all-mem-tables", &mem);
    return live + mem;
  }

 private:
  RocksStore() = default;
  rocksdb::ColumnFamilyHandle* handle(Cf cf) { return handles_[static_cast<int>(cf)]; }

  // A failed write may have stopped RocksDB: the next write resumes it first.
  Status Checked(const rocksdb::Status& s, const char* what) {
    if (s.ok()) return Status::OK();
    if (!s.IsInvalidArgument() && !s.IsNotSupported()) stopped_.store(true);
    Status st = Convert(s, what);
    if (st.code() != Status::Code::kNoSpace) return st;
    return Status::NoSpace("the repository's file system is full (" + st.message() +
                           "); this write was not stored: free space and retry");
  }

  // RocksDB refuses writes after a write error until DB::Resume() succeeds: it flushes the
  // memtables to new files and switches to a new log. It is tried only when the file system has
  // room for the memtables plus kResumeHeadroom (a resume that fails for lack of space would make
  // the error fatal). Serialized; Busy while a flush is still running: wait for it.
  static constexpr uint64_t kResumeHeadroom = 32 << 20;
  // How long a resume waits for background jobs that were running when writing stopped, and how
  // long Resume() itself may take before the store gives up on it (see ResumeWithDeadline).
  static constexpr auto kDrainTimeout = std::chrono::seconds(60);
  static constexpr auto kResumeTimeout = std::chrono::seconds(120);

  Status ResumeIfStopped() {
    if (!stopped_.load()) return Status::OK();
    std::unique_lock<std::shared_mutex> lock(io_mu_);  // no write runs meanwhile
    if (!stopped_.load()) return Status::OK();
    if (!wedged_.empty()) return CannotResume(wedged_);
    const uint64_t need = MemtableBytes() + kResumeHeadroom;
    const uint64_t free = FreeBytes();
    if (free < need) {
      return Status::NoSpace("the repository's file system is full (" + MiB(free) + " free, " +
                             MiB(need) +
                             " needed to resume); nothing is stored until space is freed, then "
                             "writing resumes on its own");
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
      return CannotResume(
          "a write to its log failed while no column family held unflushed writes, so resuming "
          "would keep that log");
    }
    rocksdb::Status s;
    for (int attempt = 0; attempt < 100; ++attempt) {
      s = ResumeWithDeadline();
      if (!s.IsBusy()) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    if (!wedged_.empty()) return CannotResume(wedged_);
    if (s.ok()) {
      stopped_.store(false);
      log_failed_.store(false);
      marker_needed_.store(true);  // Resume() flushed every memtable
      return Status::OK();
    }
    Status st = Convert(s, "resume writing after an earlier write error");
    if (st.code() == Status::Code::kNoSpace) {
      return Status::NoSpace("the repository's file system is full (" + st.message() +
                             "); free space and retry");
    }
    return CannotResume(st.message());
  }

  static Status CannotResume(const std::string& why) {
    return Status::IOError(
        "the repository's database stopped writing after an error and cannot resume (" + why +
        "); reopen the repository (remount) once fixed");
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

  // DB::Resume(), given up on after kResumeTimeout: RocksDB 7.8 can wait forever for a flush
  // that a failed earlier resume abandoned. Cancelling the background work ends that wait; the
  // database then stays open for reads, and the store refuses writes until it is reopened
  // (wedged_), instead of blocking every writer for good.
  rocksdb::Status ResumeWithDeadline() {
    auto done = std::make_shared<std::promise<rocksdb::Status>>();
    std::future<rocksdb::Status> result = done->get_future();
    rocksdb::DB* db = db_;
    std::thread resume([db, done] { done->set_value(db->Resume()); });
    if (result.wait_for(kResumeTimeout) != std::future_status::ready) {
      rocksdb::CancelAllBackgroundWork(db_, /*wait=*/false);
      wedged_ = "Resume() did not finish within " + std::to_string(kResumeTimeout.count()) +
                " s: a flush it waits for never ran; background work was cancelled";
    }
    resume.join();
    return result.get();
  }

  // After a failed write to its log, RocksDB must switch to a new log before the next append
  // (another append to the failed one trips an assertion in Debian's RocksDB: the process
  // aborts). Resume() switches logs only when a column family's active memtable holds
  // something; while writing is stopped nothing can be put there. So the store keeps one there
  // at all times: an unlogged put and delete of a marker key in the meta column family (no
  // trace in any table: the delete hides the put), written again after every seal of that
  // memtable, before the next write. A write that seals the memtable and then fails its own log
  // append leaves it empty: that rare case cannot resume without a reopen (ActiveMemtablesEmpty).
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

  std::string dir_;
  const KvFaultInjection* faults_ = nullptr;
  rocksdb::DB* db_ = nullptr;
  std::vector<rocksdb::ColumnFamilyHandle*> handles_;
  std::unique_ptr<rocksdb::Env> env_;  // KvFaultInjection only; outlives db_
  std::atomic<bool> stopped_{false};
  std::atomic<bool> marker_needed_{true};  // KeepActiveMemtableNonEmpty
  std::atomic<bool> log_failed_{false};    // since the last resume, a log write failed
  // Set once a resume had to be abandoned: writes are refused until the store is reopened.
  std::string wedged_;  // guarded by io_mu_ (exclusive)
  // Shared by every write, sync, flush and compaction; exclusive while resuming.
  std::shared_mutex io_mu_;
};

}  // namespace

Result<std::unique_ptr<KvStore>> OpenRocksDbStore(const std::string& dir,
                                                  const KvOptions& options) {
  return RocksStore::Open(dir, options);
}

}  // namespace pgbackfs
