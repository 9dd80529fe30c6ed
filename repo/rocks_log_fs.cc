#include "repo/rocks_log_fs.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <string>
#include <thread>

namespace pgbackfs {
namespace {

using rocksdb::IOOptions;
using rocksdb::IOStatus;
using Dbg = rocksdb::IODebugContext;

bool IsLog(const std::string& name) {
  return name.size() > 4 && name.compare(name.size() - 4, 4, ".log") == 0;
}

// What a log's writer and the filler share. The writer (RocksDB appends to a log from one thread
// at a time) appends anywhere below `ready` without a lock; the filler only ever writes at or
// above `ready`, holding `filling`, and an append that reaches past `ready` waits for it.
struct LogTail {
  explicit LogTail(int fd) : fd(fd) {}
  ~LogTail() {
    if (fd >= 0) close(fd);
  }
  const int fd;  // the filler's own descriptor, for pwrite and fdatasync
  // [0, ready) exists in the file and the file's size covers it durably, so an append below it
  // does not grow the file.
  std::atomic<uint64_t> ready{0};
  std::atomic<uint64_t> appended{0};  // what RocksDB appended
  std::mutex mu;
  std::condition_variable cv;
  bool filling = false;  // guarded by mu
  bool queued = false;   // guarded by mu
  bool stopped = false;  // guarded by mu: closed, or a zero write failed (no more fills)
};

class Filler {
 public:
  explicit Filler(uint64_t step) : step_(step) {}
  ~Filler() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }

  // Queues a fill of the next step unless one is queued or running, or the tail has enough.
  void MaybeQueue(const std::shared_ptr<LogTail>& tail) {
    if (tail->ready.load() >= tail->appended.load() + step_ / 2) return;
    {
      std::lock_guard<std::mutex> lock(tail->mu);
      if (tail->queued || tail->filling || tail->stopped) return;
      tail->queued = true;
    }
    std::lock_guard<std::mutex> lock(mu_);
    if (stop_) return;
    queue_.push_back(tail);
    if (!thread_.joinable()) thread_ = std::thread([this] { Run(); });
    cv_.notify_one();
  }

 private:
  void Run() {
    std::unique_lock<std::mutex> lock(mu_);
    while (true) {
      cv_.wait(lock, [this] { return stop_ || !queue_.empty(); });
      if (stop_) return;
      std::shared_ptr<LogTail> tail = std::move(queue_.front());
      queue_.pop_front();
      lock.unlock();
      Fill(tail.get());
      tail.reset();
      lock.lock();
    }
  }

  void Fill(LogTail* tail) {
    uint64_t from;
    {
      std::lock_guard<std::mutex> lock(tail->mu);
      tail->queued = false;
      if (tail->stopped) return;
      from = std::max(tail->ready.load(), tail->appended.load());
      tail->filling = true;
    }
    const uint64_t to = from + step_;
    static const std::string kZeros(1 << 20, '\0');
    bool ok = true;
    for (uint64_t at = from; ok && at < to;) {
      const size_t n = std::min<uint64_t>(kZeros.size(), to - at);
      ssize_t w = pwrite(tail->fd, kZeros.data(), n, static_cast<off_t>(at));
      if (w < 0 && errno == EINTR) continue;
      ok = w > 0;
      at += ok ? static_cast<uint64_t>(w) : 0;
    }
    // The new size must be durable before appends count on it. A failure (a full disk) only
    // ends the filling: the log grows by its appends as any file does, and zeros written past
    // its end are skipped at recovery and cut at close.
    ok = ok && fdatasync(tail->fd) == 0;
    {
      std::lock_guard<std::mutex> lock(tail->mu);
      tail->filling = false;
      if (ok) {
        tail->ready.store(std::max(tail->ready.load(), to));
      } else {
        tail->stopped = true;
      }
    }
    tail->cv.notify_all();
  }

  const uint64_t step_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<LogTail>> queue_;  // guarded by mu_
  bool stop_ = false;                           // guarded by mu_
  std::thread thread_;                          // started by the first fill
};

class ZeroAheadLog : public rocksdb::FSWritableFileOwnerWrapper {
 public:
  ZeroAheadLog(std::unique_ptr<rocksdb::FSWritableFile> file, std::shared_ptr<LogTail> tail,
               std::shared_ptr<Filler> filler)
      : FSWritableFileOwnerWrapper(std::move(file)),
        tail_(std::move(tail)),
        filler_(std::move(filler)) {}
  ~ZeroAheadLog() override { Stop(); }

  IOStatus Append(const rocksdb::Slice& data, const IOOptions& o, Dbg* d) override {
    return Appended(data.size(), [&] { return target()->Append(data, o, d); });
  }
  IOStatus Append(const rocksdb::Slice& data, const IOOptions& o,
                  const rocksdb::DataVerificationInfo& v, Dbg* d) override {
    return Appended(data.size(), [&] { return target()->Append(data, o, v, d); });
  }
  // Logs are not written at positions (that is for direct I/O) nor cut while open; should
  // RocksDB do either, the file is left alone from then on.
  IOStatus PositionedAppend(const rocksdb::Slice& data, uint64_t off, const IOOptions& o,
                            Dbg* d) override {
    Untrack();
    return target()->PositionedAppend(data, off, o, d);
  }
  IOStatus PositionedAppend(const rocksdb::Slice& data, uint64_t off, const IOOptions& o,
                            const rocksdb::DataVerificationInfo& v, Dbg* d) override {
    Untrack();
    return target()->PositionedAppend(data, off, o, v, d);
  }
  IOStatus Truncate(uint64_t size, const IOOptions& o, Dbg* d) override {
    Untrack();
    return target()->Truncate(size, o, d);
  }
  IOStatus Sync(const IOOptions& o, Dbg* d) override {
    IOStatus s = target()->Sync(o, d);
    if (s.ok()) Synced();
    return s;
  }
  IOStatus Fsync(const IOOptions& o, Dbg* d) override {
    IOStatus s = target()->Fsync(o, d);
    if (s.ok()) Synced();
    return s;
  }
  IOStatus Close(const IOOptions& o, Dbg* d) override {
    Stop();
    IOStatus s = target()->Close(o, d);
    // RocksDB cuts a log it preallocated at close; this cuts the zeros in any case.
    const uint64_t appended = tail_->appended.load();
    if (s.ok() && !untracked_ && tail_->ready.load() > appended) {
      [[maybe_unused]] int rc = ftruncate(tail_->fd, static_cast<off_t>(appended));
    }
    return s;
  }

 private:
  template <typename F>
  IOStatus Appended(size_t n, const F& append) {
    const uint64_t end = tail_->appended.load() + n;
    if (end <= tail_->ready.load()) {  // within the zeros: the filler writes above `ready` only
      IOStatus s = append();
      if (s.ok()) tail_->appended.store(end);
      return s;
    }
    std::unique_lock<std::mutex> lock(tail_->mu);
    tail_->cv.wait(lock, [&] { return !tail_->filling; });
    IOStatus s = append();  // grows the file; no fill starts meanwhile
    if (s.ok()) {
      tail_->appended.store(end);
      tail_->ready.store(std::max(tail_->ready.load(), end));
    }
    return s;
  }

  // Zeros pay off for a log synced often with little written between syncs (a clone's fsyncs).
  // One that takes more between syncs (a pushed WAL segment: 16 MiB, then one sync) gains little,
  // since its data dominates each fdatasync, and zeros would add half as much again to what it
  // writes: it grows as any file does.
  void Synced() {
    const uint64_t appended = tail_->appended.load();
    const uint64_t before = synced_at_.exchange(appended);
    if (appended - std::min(before, appended) <= kSmallSync) filler_->MaybeQueue(tail_);
  }

  // No more fills; waits for a running one.
  void Stop() {
    std::unique_lock<std::mutex> lock(tail_->mu);
    tail_->stopped = true;
    tail_->cv.wait(lock, [&] { return !tail_->filling; });
  }
  void Untrack() {
    Stop();
    untracked_ = true;
  }

  const std::shared_ptr<LogTail> tail_;
  const std::shared_ptr<Filler> filler_;
  bool untracked_ = false;              // `appended` no longer says where the log ends
  std::atomic<uint64_t> synced_at_{0};  // `appended` at the last sync
  static constexpr uint64_t kSmallSync = 1 << 20;
};

class ZeroAheadLogFs : public rocksdb::FileSystemWrapper {
 public:
  ZeroAheadLogFs(const std::shared_ptr<rocksdb::FileSystem>& base, uint64_t step)
      : FileSystemWrapper(base), filler_(std::make_shared<Filler>(step)) {}
  const char* Name() const override { return "pgbackfs-zero-ahead-log"; }

  // Only a new log (RocksDB creates it empty, and appends through a descriptor without
  // O_APPEND, at its own offset, so writes below the file's end overwrite the zeros in place).
  rocksdb::IOStatus NewWritableFile(const std::string& f, const rocksdb::FileOptions& o,
                                    std::unique_ptr<rocksdb::FSWritableFile>* r,
                                    rocksdb::IODebugContext* d) override {
    IOStatus s = target()->NewWritableFile(f, o, r, d);
    if (!s.ok() || !IsLog(f) || o.use_direct_writes || o.use_mmap_writes) return s;
    const int fd = open(f.c_str(), O_WRONLY | O_CLOEXEC);
    if (fd < 0) return s;  // an ordinary log, then
    *r = std::make_unique<ZeroAheadLog>(std::move(*r), std::make_shared<LogTail>(fd), filler_);
    return s;
  }

 private:
  const std::shared_ptr<Filler> filler_;
};

}  // namespace

std::shared_ptr<rocksdb::FileSystem> NewZeroAheadLogFs(std::shared_ptr<rocksdb::FileSystem> base,
                                                       uint64_t step) {
  return std::make_shared<ZeroAheadLogFs>(base, step);
}

}  // namespace pgbackfs
