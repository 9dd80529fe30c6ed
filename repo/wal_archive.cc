#include "repo/wal_archive.h"

#include <algorithm>
#include <atomic>
#include <cinttypes>
#include <condition_variable>
#include <ctime>
#include <deque>
#include <optional>
#include <thread>

#include "repo/coding.h"
#include "repo/wal_index.h"

namespace pgbackfs {

namespace {

// docs/FORMAT.md, "wal": the first byte of every Cf::kWal value. Version 2 (format >= 3) adds
// the file's chunk size; version 1 files have the repository's.
constexpr uint8_t kWalRecordVersion1 = 1;
constexpr uint8_t kWalRecordVersion2 = 2;
constexpr size_t kWalRecordSize1 = 1 + 1 + 8 + 1 + 16 + 8;
constexpr size_t kWalRecordSize2 = kWalRecordSize1 + 4;

// The kind byte of a record. Numbers are on disk: never reuse one.
uint8_t KindCode(WalFileKind kind) {
  switch (kind) {
    case WalFileKind::kSegment:
      return 1;
    case WalFileKind::kPartial:
      return 2;
    case WalFileKind::kHistory:
      return 3;
    case WalFileKind::kBackupLabel:
      return 4;
  }
  return 0;
}

bool KindFromCode(uint8_t code, WalFileKind* kind) {
  switch (code) {
    case 1:
      *kind = WalFileKind::kSegment;
      return true;
    case 2:
      *kind = WalFileKind::kPartial;
      return true;
    case 3:
      *kind = WalFileKind::kHistory;
      return true;
    case 4:
      *kind = WalFileKind::kBackupLabel;
      return true;
  }
  return false;
}

// Pieces in which writers replay, fill gaps, and readers hand data out.
constexpr size_t kIoPiece = 1 << 20;

// Encoded chunks a writer gathers before it writes them (unsynced). WAL compresses 10-20x, so
// this is a few MiB of a segment: most of a segment's chunks are written while the next bytes
// arrive, and little is left for the commit, which the writer's close() waits for.
constexpr size_t kChunkBatchBytes = 512 << 10;

std::string_view Zeros() {
  static const std::string* zeros = new std::string(64 << 10, '\0');
  return *zeros;
}

bool IsSegmentLike(WalFileKind kind) {
  return kind == WalFileKind::kSegment || kind == WalFileKind::kPartial;
}

std::string Quoted(const std::string& name) { return "'" + name + "'"; }

}  // namespace

Status ParseWalFileName(const std::string& name, WalFileKind* kind) {
  WalFileName parsed;
  RETURN_IF_ERROR(ParseWalFileName(std::string_view(name), &parsed));
  *kind = parsed.kind;
  return Status::OK();
}

void WalFileInfo::EncodeTo(std::string* dst) const {
  const bool v2 = data.chunk_size != 0;
  dst->push_back(static_cast<char>(v2 ? kWalRecordVersion2 : kWalRecordVersion1));
  dst->push_back(static_cast<char>(KindCode(kind)));
  PutFixed64(dst, data.size);
  dst->push_back(static_cast<char>(data.root.height));
  dst->append(data.root.id.AsKey());
  PutFixed64(dst, static_cast<uint64_t>(archived_time));
  if (v2) PutFixed32(dst, data.chunk_size);
}

Status WalFileInfo::DecodeFrom(std::string_view name, std::string_view value, WalFileInfo* info) {
  auto corrupt = [&](const std::string& why) {
    return Status::Corruption("bad archive record for WAL file '" + std::string(name) +
                              "': " + why);
  };
  Decoder in(value);
  uint8_t version = 0, kind = 0, height = 0;
  if (!in.GetFixed8(&version)) return corrupt("empty");
  if (version != kWalRecordVersion1 && version != kWalRecordVersion2) {
    return corrupt("unknown record version " + std::to_string(version));
  }
  const size_t expected = version == kWalRecordVersion1 ? kWalRecordSize1 : kWalRecordSize2;
  if (value.size() != expected) {
    return corrupt(std::to_string(value.size()) + " bytes, expected " + std::to_string(expected));
  }
  WalFileInfo out;
  out.name = std::string(name);
  uint64_t size = 0, time = 0;
  std::string_view id;
  if (!in.GetFixed8(&kind) || !in.GetFixed64(&size) || !in.GetFixed8(&height) ||
      !in.GetBytes(16, &id) || !in.GetFixed64(&time)) {
    return corrupt("truncated");
  }
  if (!KindFromCode(kind, &out.kind)) return corrupt("unknown kind " + std::to_string(kind));
  out.data.size = size;
  out.data.root.height = height;
  out.data.root.id = ChunkId::FromKey(id);
  out.archived_time = static_cast<int64_t>(time);
  if (version == kWalRecordVersion2) {
    uint32_t chunk_size = 0;
    if (!in.GetFixed32(&chunk_size)) return corrupt("truncated");
    // What FileWriter can write: a power of two, at least the smallest repository chunk size.
    if (chunk_size < (8u << 10) || chunk_size > (64u << 20) || (chunk_size & (chunk_size - 1))) {
      return corrupt("bad chunk size " + std::to_string(chunk_size));
    }
    out.data.chunk_size = chunk_size;
  }
  *info = std::move(out);
  return Status::OK();
}

namespace {
// The WAL index, able to read other archived files to finish records that cross segments.
std::unique_ptr<WalIndex> MakeIndex(Repository* repo, WalArchive* archive) {
  auto index = std::make_unique<WalIndex>(repo);
  index->SetSegmentFetcher([archive](const std::string& name) -> Result<ByteSource> {
    ASSIGN_OR_RETURN(WalFileInfo info, archive->Get(name));
    return ByteSource(
        [archive, info](const ByteSink& sink) { return archive->ReadFile(info, sink); });
  });
  return index;
}
}  // namespace

// Hands one file's bytes to a sink on a thread of its own, in order, so that a write returns once
// its bytes are queued, and storing them (hashing, compressing, writing chunks, parsing) overlaps
// with receiving the next ones: `cp` waits for each write's reply before it reads on. Bytes are
// gathered into pieces of kPieceBytes (two WAL chunks, compressed in parallel, and handed to the
// FileWriter without another copy); the last piece goes when Drain() asks for it.
// Memory: a writer holds at most kMaxQueuedPerWriter bytes, and all writers of the process
// together kMaxQueuedTotal, beyond two pieces each (a writer with no full piece queued may always
// go on: it waits only for its own thread, never for others), plus kMaxSpare buffers for reuse.
class Pipeline {
 public:
  using Sink = std::function<Status(std::string_view)>;
  explicit Pipeline(Sink sink) : sink_(std::move(sink)) {}
  ~Pipeline() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
      // The piece being stored stays until the thread is done with it.
      while (queue_.size() > (busy_ ? 1u : 0u)) {
        Unaccount(queue_.back().size());
        queue_.pop_back();
      }
      Unaccount(filling_.size());
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }
  Pipeline(const Pipeline&) = delete;
  Pipeline& operator=(const Pipeline&) = delete;

  // Queues a copy of `data`. Returns the sink's first error so far, if any (nothing more is
  // stored after one).
  Status Push(std::string_view data) {
    std::unique_lock<std::mutex> lock(mu_);
    while (!data.empty()) {
      const size_t n = std::min(data.size(), kPieceBytes - filling_.size());
      cv_.wait(lock, [&] {
        return !error_.ok() || queue_.empty() ||
               (queued_bytes_ + n <= kMaxQueuedPerWriter &&
                total_queued_.load() + n <= kMaxQueuedTotal);
      });
      if (!error_.ok()) return error_;
      if (filling_.capacity() < kPieceBytes) {
        // A buffer from an earlier piece: no allocation (and no fresh pages) per piece.
        if (!spare_.empty()) {
          filling_ = std::move(spare_.back());
          spare_.pop_back();
          filling_.clear();
        }
        filling_.reserve(kPieceBytes);
      }
      filling_.append(data.substr(0, n));
      data.remove_prefix(n);
      queued_bytes_ += n;
      total_queued_ += n;
      if (filling_.size() == kPieceBytes) Send();
    }
    return error_;
  }

  // Waits until everything queued is stored; returns the sink's first error, if any.
  Status Drain() {
    std::unique_lock<std::mutex> lock(mu_);
    if (!filling_.empty()) Send();
    cv_.wait(lock, [&] { return queue_.empty(); });
    return error_;
  }

 private:
  static constexpr size_t kPieceBytes = 2 << 20;
  static constexpr size_t kMaxQueuedPerWriter = 3 * kPieceBytes;
  static constexpr size_t kMaxQueuedTotal = 6 * kPieceBytes;
  static constexpr size_t kMaxSpare = 2;

  void Send() {  // mu_ held
    queue_.push_back(std::move(filling_));
    filling_ = std::string();
    if (!thread_.joinable()) thread_ = std::thread([this] { Run(); });
    cv_.notify_all();
  }

  void Unaccount(size_t n) {
    queued_bytes_ -= n;
    total_queued_ -= n;
  }

  void Run() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
      if (stop_) return;
      // The piece stays queued (Drain waits for it) until it is stored.
      if (error_.ok()) {
        busy_ = true;
        std::string_view piece = queue_.front();
        lock.unlock();
        Status s = sink_(piece);
        lock.lock();
        busy_ = false;
        if (!s.ok() && error_.ok()) error_ = s;
      }
      Unaccount(queue_.front().size());
      if (spare_.size() < kMaxSpare) spare_.push_back(std::move(queue_.front()));
      queue_.pop_front();
      cv_.notify_all();
    }
  }

  static inline std::atomic<size_t> total_queued_{0};
  Sink sink_;
  std::mutex mu_;
  std::condition_variable cv_;
  // All GUARDED_BY(mu_):
  std::string filling_;             // the piece being gathered
  std::deque<std::string> queue_;   // full pieces; the front is being stored
  std::vector<std::string> spare_;  // buffers to reuse
  size_t queued_bytes_ = 0;         // in filling_ and queue_
  Status error_;
  bool stop_ = false;
  bool busy_ = false;  // the thread is storing the front piece
  std::thread thread_;
};

// Streams one file into a FileWriter. Everything it writes is unreferenced until CommitFile
// writes the record, so a writer dropped at any point leaves nothing visible.
//
// Writes are checked (order, size) at once and stored in the background (Pipeline): an error
// storing them comes back from a later call, at the latest from Commit(). Every other call
// first waits for the pipeline to drain, so only one thread touches the FileWriter at a time.
class WalWriterImpl : public WalWriter {
 public:
  WalWriterImpl(WalArchive* archive, Repository* repo, std::string name, const WalFileName& parsed)
      : archive_(archive),
        store_(repo->chunks()),
        own_chunk_size_(repo->config().format_version >= kFirstFormatWithWalChunkSize),
        chunk_size_(own_chunk_size_ ? kWalChunkSize : repo->config().chunk_size),
        name_(std::move(name)),
        parsed_(parsed),
        pipeline_(std::make_unique<Pipeline>([this](std::string_view d) { return Store(d); })) {
    if (parsed_.kind == WalFileKind::kSegment) index_ = MakeIndex(repo, archive);
    Reset();
  }

  ~WalWriterImpl() override {
    pipeline_.reset();  // stops its thread before what it writes to goes
  }

  Status Write(uint64_t offset, std::string_view data) override {
    RETURN_IF_ERROR(broken_);
    if (data.empty()) return Status::OK();
    if (offset < size_) {
      return Status::InvalidArgument(
          "WAL file " + Quoted(name_) + ": write at offset " + std::to_string(offset) +
          ", before the end of what was written (" + std::to_string(size_) +
          " bytes); archive files must be written sequentially");
    }
    RETURN_IF_ERROR(CheckMaxSize(offset + data.size()));
    return Guard([&]() -> Status {
      RETURN_IF_ERROR(PrepareAppend());
      for (uint64_t gap = offset - size_; gap > 0;) {
        std::string_view z = Zeros().substr(0, std::min<uint64_t>(gap, Zeros().size()));
        RETURN_IF_ERROR(pipeline_->Push(z));
        gap -= z.size();
      }
      RETURN_IF_ERROR(pipeline_->Push(data));
      size_ = offset + data.size();
      return Status::OK();
    });
  }

  Status Truncate(uint64_t size) override {
    RETURN_IF_ERROR(broken_);
    if (size == size_) return Status::OK();
    RETURN_IF_ERROR(CheckMaxSize(size));
    return Guard([&]() -> Status {
      RETURN_IF_ERROR(pipeline_->Drain());
      if (size == 0) {
        Reset();
        dirty_ = true;
        return Status::OK();
      }
      if (size > size_) {
        RETURN_IF_ERROR(PrepareAppend());
        return AppendZeros(size - size_);
      }
      // Shrinking: finish what was written and replay its first `size` bytes.
      RETURN_IF_ERROR(FinishFile());
      dirty_ = true;
      return Reopen(size);
    });
  }

  uint64_t size() const override { return size_; }

  Status Commit() override {
    RETURN_IF_ERROR(broken_);
    if (committed_ && !dirty_) return last_commit_;
    Status s = Guard([&]() -> Status {
      RETURN_IF_ERROR(pipeline_->Drain());
      return FinishFile();
    });
    if (!s.ok()) return s;
    last_commit_ =
        archive_->CommitFile(name_, parsed_, *finished_, head_, index_.get(), parse_.get());
    parse_.reset();  // finished: a later write starts over (Reopen)
    committed_ = true;
    dirty_ = false;
    return last_commit_;
  }

 private:
  // Runs `fn`; a failure leaves the FileWriter in an unknown state, so it sticks.
  template <typename Fn>
  Status Guard(Fn fn) {
    Status s = fn();
    if (!s.ok()) broken_ = s;
    return s;
  }

  Status CheckMaxSize(uint64_t end) const {
    if (end > kMaxWalSegmentSize) {
      return Status::InvalidArgument("WAL file " + Quoted(name_) + " would grow to " +
                                     std::to_string(end) +
                                     " bytes, more than the largest WAL segment (1 GiB)");
    }
    return Status::OK();
  }

  // The pipeline is drained (or has never run).
  void Reset() {
    file_writer_.reset();
    chunk_writer_ = std::make_unique<ChunkWriter>(store_, kChunkBatchBytes);
    file_writer_ = std::make_unique<FileWriter>(chunk_writer_.get(), chunk_size_);
    finished_.reset();
    head_.clear();
    size_ = 0;
    parse_.reset();
    if (index_) {
      // The segment is parsed for the WAL index as it streams in, so its commit need not read
      // it back. Without a parse (never expected: the name was checked), CommitFile reads it.
      Result<std::unique_ptr<WalSegmentParse>> parse = index_->StartSegment(name_);
      if (parse.ok()) parse_ = std::move(parse).value();
    }
  }

  // A write after Commit() (or a shrinking Truncate) reopens the finished file. The pipeline is
  // drained whenever finished_ is set.
  Status PrepareAppend() {
    dirty_ = true;
    if (finished_) return Reopen(size_);
    return Status::OK();
  }

  // Stores the next bytes of the file: on the pipeline's thread, or on the caller's when the
  // pipeline is drained.
  Status Store(std::string_view data) {
    if (head_.size() < kWalLongPageHeaderSize) {
      head_.append(data.substr(0, kWalLongPageHeaderSize - head_.size()));
    }
    RETURN_IF_ERROR(file_writer_->Append(data));
    if (parse_) parse_->Feed(data);
    return Status::OK();
  }

  // With the pipeline drained.
  Status AppendZeros(uint64_t n) {
    while (n > 0) {
      std::string_view z = Zeros().substr(0, std::min<uint64_t>(n, Zeros().size()));
      RETURN_IF_ERROR(Store(z));
      size_ += z.size();
      n -= z.size();
    }
    return Status::OK();
  }

  // With the pipeline drained.
  Status FinishFile() {
    if (finished_) return Status::OK();
    ASSIGN_OR_RETURN(FileData data, file_writer_->Finish());
    if (own_chunk_size_) data.chunk_size = static_cast<uint32_t>(chunk_size_);
    // Unsynced: the synced record write in CommitFile makes these chunks durable too.
    RETURN_IF_ERROR(chunk_writer_->Flush(/*sync=*/false));
    finished_ = data;
    return Status::OK();
  }

  // Starts a new file holding the first `keep` bytes of the finished one, read back in pieces so
  // memory stays bounded. With the pipeline drained.
  Status Reopen(uint64_t keep) {
    FileData old = *finished_;
    Reset();
    TreeReader reader(store_, old, chunk_size_);
    std::string buf;
    for (uint64_t off = 0; off < keep; off += kIoPiece) {
      buf.clear();
      size_t n = static_cast<size_t>(std::min<uint64_t>(kIoPiece, keep - off));
      Status s = reader.Read(off, n, &buf);
      if (!s.ok()) return s.WithContext("reread WAL file " + Quoted(name_));
      RETURN_IF_ERROR(Store(buf));
      size_ += buf.size();
    }
    return Status::OK();
  }

  WalArchive* archive_;
  ChunkStore* store_;
  const bool own_chunk_size_;  // kWalChunkSize, recorded in the file's record (version 2)
  const size_t chunk_size_;
  const std::string name_;
  const WalFileName parsed_;

  // Used by the pipeline's thread while it runs, by the caller's when it is drained:
  std::unique_ptr<ChunkWriter> chunk_writer_;
  std::unique_ptr<FileWriter> file_writer_;  // uses *chunk_writer_
  std::optional<FileData> finished_;         // set once file_writer_ is finished
  std::string head_;                         // the first bytes, for the page header
  std::unique_ptr<WalIndex> index_;          // segments only
  std::unique_ptr<WalSegmentParse> parse_;   // made by *index_, fed what the file gets

  // The caller's only:
  uint64_t size_ = 0;  // bytes accepted (queued or stored)
  Status broken_;      // the first failure of the stream, returned by every later call
  bool committed_ = false;
  bool dirty_ = false;  // written since the last Commit()
  Status last_commit_;
  std::unique_ptr<Pipeline> pipeline_;  // calls Store()
};

WalArchive::WalArchive(Repository* repo) : repo_(repo) {}

Result<std::unique_ptr<WalWriter>> WalArchive::NewWriter(const std::string& name) {
  WalFileName parsed;
  RETURN_IF_ERROR(ParseWalFileName(std::string_view(name), &parsed));
  return std::unique_ptr<WalWriter>(std::make_unique<WalWriterImpl>(this, repo_, name, parsed));
}

Result<WalFileInfo> WalArchive::Get(const std::string& name) {
  std::string value;
  Status s = repo_->kv()->Get(Cf::kWal, name, &value);
  if (s.IsNotFound()) return Status::NotFound(Quoted(name) + " not found in the archive");
  RETURN_IF_ERROR(s);
  WalFileInfo info;
  RETURN_IF_ERROR(WalFileInfo::DecodeFrom(name, value, &info));
  return info;
}

Status WalArchive::List(const std::function<Status(const WalFileInfo&)>& fn) {
  auto it = repo_->kv()->NewIterator(Cf::kWal);
  for (it->Seek(""); it->Valid(); it->Next()) {
    WalFileInfo info;
    RETURN_IF_ERROR(WalFileInfo::DecodeFrom(it->key(), it->value(), &info));
    RETURN_IF_ERROR(fn(info));
  }
  return it->status();
}

Result<uint64_t> WalArchive::SegmentSize() { return ReadSegmentSize(); }

Result<uint64_t> WalArchive::ReadSegmentSize() {
  std::string value;
  Status s = repo_->kv()->Get(Cf::kMeta, kWalSegmentSizeKey, &value);
  if (s.IsNotFound()) return uint64_t{0};
  RETURN_IF_ERROR(s);
  uint64_t size = 0;
  bool ok = !value.empty() && value.size() <= 10;
  for (char c : value) {
    if (c < '0' || c > '9') ok = false;
    size = size * 10 + static_cast<uint64_t>(c - '0');
  }
  if (!ok || !IsValidWalSegmentSize(size)) {
    return Status::Corruption("bad WAL segment size '" + value + "' in the repository metadata");
  }
  return size;
}

std::mutex& WalArchive::CommitMutex() {
  static std::mutex mu;
  return mu;
}

Status WalArchive::IndexBackupSegment(const std::string& name, const FileData& data) {
  std::lock_guard<std::mutex> lock(CommitMutex());
  auto index = MakeIndex(repo_, this);
  Result<WalSegmentRecord> have = index->GetSegment(name);
  if (have.ok() && !have->tolerant) return Status::OK();  // the archived copy says more
  if (!have.ok() && !have.status().IsNotFound()) return have.status();
  WalFileInfo info;
  info.name = name;
  info.kind = WalFileKind::kSegment;
  info.data = data;
  WalIndexOptions options;
  options.tolerant = true;
  return index
      ->IndexSegment(
          name, [this, &info](const ByteSink& sink) { return ReadFile(info, sink); }, options)
      .status();
}

Result<uint64_t> WalArchive::IndexSnapshotWal(const SnapshotInfo& snapshot, bool only_missing) {
  Result<Entry> dir = repo_->reader()->Lookup(snapshot.root, "pg_wal");
  if (!dir.ok()) return dir.status().IsNotFound() ? Result<uint64_t>(0) : dir.status();
  std::vector<Entry> entries;
  RETURN_IF_ERROR(repo_->reader()->ReadDir(*dir, &entries));
  uint64_t indexed = 0;
  WalIndex index(repo_);
  for (const Entry& e : entries) {
    WalFileName name;
    if (e.type != EntryType::kFile || !ParseWalFileName(e.name, &name).ok() ||
        name.kind != WalFileKind::kSegment) {
      continue;
    }
    if (only_missing) {
      Result<WalSegmentRecord> have = index.GetSegment(e.name);
      if (have.ok()) continue;
      if (!have.status().IsNotFound()) return have.status();
    }
    RETURN_IF_ERROR(IndexBackupSegment(e.name, e.data)
                        .WithContext("snapshot " + snapshot.id + ", pg_wal/" + e.name));
    ++indexed;
  }
  return indexed;
}

Result<uint64_t> WalArchive::IndexMissing() {
  std::vector<WalFileInfo> todo;
  {
    WalIndex index(repo_);
    RETURN_IF_ERROR(List([&](const WalFileInfo& f) {
      if (f.kind == WalFileKind::kSegment) {
        Result<WalSegmentRecord> have = index.GetSegment(f.name);
        if (have.ok() && !have->tolerant) return Status::OK();
        if (!have.ok() && !have.status().IsNotFound()) return have.status();
        todo.push_back(f);
      } else if (f.kind == WalFileKind::kHistory) {
        WalFileName parsed;
        RETURN_IF_ERROR(ParseWalFileName(f.name, &parsed));
        ASSIGN_OR_RETURN(TimelineHistory h, index.History(parsed.tli));
        if (h.parents.empty()) todo.push_back(f);
      }
      return Status::OK();
    }));
  }
  std::lock_guard<std::mutex> lock(CommitMutex());
  auto index = MakeIndex(repo_, this);
  for (const WalFileInfo& f : todo) {
    if (f.kind == WalFileKind::kSegment) {
      RETURN_IF_ERROR(
          index
              ->IndexSegment(f.name, [this, &f](const ByteSink& sink) { return ReadFile(f, sink); })
              .status());
    } else {
      std::string content;
      RETURN_IF_ERROR(ReadFile(f, [&](std::string_view piece) {
        content.append(piece);
        return Status::OK();
      }));
      RETURN_IF_ERROR(index->IndexHistory(f.name, content));
    }
  }
  return static_cast<uint64_t>(todo.size());
}

Status WalArchive::CheckSegmentSize(uint64_t size) {
  if (!IsValidWalSegmentSize(size)) {
    return Status::InvalidArgument("invalid WAL segment size " + std::to_string(size) +
                                   " (a power of two from 1 MiB to 1 GiB)");
  }
  std::lock_guard<std::mutex> lock(CommitMutex());
  ASSIGN_OR_RETURN(uint64_t stored, ReadSegmentSize());
  if (stored == size) return Status::OK();
  if (stored != 0) {
    return Status::FailedPrecondition("this repository's WAL segment size is " +
                                      std::to_string(stored) + " bytes, not " +
                                      std::to_string(size));
  }
  KvBatch batch;
  batch.Put(Cf::kMeta, kWalSegmentSizeKey, std::to_string(size));
  return repo_->kv()->Write(batch, /*sync=*/true);
}

Status WalArchive::ValidateSegment(const std::string& name, const WalFileName& parsed,
                                   const FileData& data, std::string_view head,
                                   uint64_t stored_seg_size, uint64_t* seg_size) {
  const bool full = parsed.kind == WalFileKind::kSegment;
  if (full && stored_seg_size != 0 && data.size != stored_seg_size) {
    return Status::InvalidArgument(
        "WAL segment " + Quoted(name) + " has " + std::to_string(data.size) +
        " bytes, but this repository's WAL segment size is " + std::to_string(stored_seg_size));
  }
  WalLongPageHeader header;
  RETURN_IF_ERROR(ParseWalLongPageHeader(head, name, &header));
  if (stored_seg_size != 0 && header.seg_size != stored_seg_size) {
    return Status::InvalidArgument("WAL file " + Quoted(name) + " says segment size " +
                                   std::to_string(header.seg_size) +
                                   " in its page header, but this repository's WAL segment "
                                   "size is " +
                                   std::to_string(stored_seg_size));
  }
  if (full && data.size != header.seg_size) {
    return Status::InvalidArgument(
        "WAL segment " + Quoted(name) + " has " + std::to_string(data.size) +
        " bytes, but its page header says segment size " + std::to_string(header.seg_size));
  }
  if (!full && data.size > header.seg_size) {
    return Status::InvalidArgument(
        "partial WAL segment " + Quoted(name) + " has " + std::to_string(data.size) +
        " bytes, more than its segment size " + std::to_string(header.seg_size));
  }
  RETURN_IF_ERROR(CheckWalSegmentHeader(header, parsed, name));
  Status s = repo_->CheckSystemIdentifier(std::to_string(header.sysid));
  if (!s.ok()) return s.WithContext("refusing WAL file " + Quoted(name));
  *seg_size = header.seg_size;
  return Status::OK();
}

namespace {
// A .history file PostgreSQL could not read itself ("syntax error in history file") is bad
// input: once archived it could never be removed, and every verify would fail on it.
Status CheckHistoryFile(WalArchive* archive, const std::string& name, const WalFileName& parsed,
                        const FileData& data) {
  constexpr uint64_t kMaxHistoryBytes = 16 << 20;  // about 100 bytes per timeline switch
  if (data.size > kMaxHistoryBytes) {
    return Status::InvalidArgument("timeline history file '" + name + "' has " +
                                   std::to_string(data.size) + " bytes, more than " +
                                   std::to_string(kMaxHistoryBytes));
  }
  WalFileInfo info;
  info.name = name;
  info.kind = parsed.kind;
  info.data = data;
  std::string content;
  RETURN_IF_ERROR(archive->ReadFile(info, [&](std::string_view piece) {
    content.append(piece);
    return Status::OK();
  }));
  TimelineHistory history;
  return TimelineHistory::Parse(parsed.tli, content, &history)
      .WithContext("refusing timeline history file '" + name + "'");
}
}  // namespace

Status WalArchive::CommitFile(const std::string& name, const WalFileName& parsed,
                              const FileData& data, std::string_view head, WalIndex* index,
                              WalSegmentParse* parse) {
  if (data.size == 0) {
    return Status::InvalidArgument("WAL file " + Quoted(name) + " is empty");
  }
  if (parsed.kind == WalFileKind::kHistory) {
    RETURN_IF_ERROR(CheckHistoryFile(this, name, parsed, data));
  }
  std::lock_guard<std::mutex> lock(CommitMutex());
  ASSIGN_OR_RETURN(uint64_t stored_seg_size, ReadSegmentSize());
  uint64_t seg_size = 0;
  if (IsSegmentLike(parsed.kind)) {
    RETURN_IF_ERROR(ValidateSegment(name, parsed, data, head, stored_seg_size, &seg_size));
  }

  std::string value;
  Status s = repo_->kv()->Get(Cf::kWal, name, &value);
  if (s.ok()) {
    WalFileInfo existing;
    RETURN_IF_ERROR(WalFileInfo::DecodeFrom(name, value, &existing));
    if (existing.data.size == data.size && existing.data.root == data.root) {
      return Status::OK();  // the same bytes: idempotent (invariant 2)
    }
    return Status::AlreadyExists(
        "WAL file " + Quoted(name) + " is already archived with different content (" +
        std::to_string(existing.data.size) + " bytes stored, " + std::to_string(data.size) +
        " bytes offered); the archived file is kept");
  }
  if (!s.IsNotFound()) return s;

  WalFileInfo info;
  info.name = name;
  info.kind = parsed.kind;
  info.data = data;
  info.archived_time = time(nullptr);
  std::string encoded;
  info.EncodeTo(&encoded);
  KvBatch batch;
  std::unique_ptr<WalIndex> own_index;
  if (!index) {
    own_index = MakeIndex(repo_, this);
    index = own_index.get();
  }
  if (parsed.kind == WalFileKind::kSegment) {
    // What the segment holds goes into the same write as its record. A segment the parser
    // cannot read is still archived; the index records why (verify and info report it).
    ByteSource source = [this, &info](const ByteSink& sink) { return ReadFile(info, sink); };
    Result<WalSegmentRecord> rec = parse ? index->PrepareParsedSegment(parse, source, &batch)
                                         : index->PrepareSegment(name, source, &batch);
    RETURN_IF_ERROR(rec.status().WithContext("index WAL file " + Quoted(name)));
  }
  batch.Put(Cf::kWal, name, encoded);
  if (seg_size != 0 && stored_seg_size == 0) {
    batch.Put(Cf::kMeta, kWalSegmentSizeKey, std::to_string(seg_size));
  }
  // Synced: once this returns the file (and every chunk written before it) is durable.
  RETURN_IF_ERROR(repo_->kv()->Write(batch, /*sync=*/true));
  if (parsed.kind == WalFileKind::kHistory) {
    std::string content;
    RETURN_IF_ERROR(ReadFile(info, [&](std::string_view piece) {
      content.append(piece);
      return Status::OK();
    }));
    // A history file that does not parse stays archived (postgres wrote it); it is only not
    // indexed, and IndexMissing / verify will say so.
    Status hs = index->IndexHistory(name, content);
    if (!hs.ok() && hs.code() != Status::Code::kInvalidArgument) return hs;
  }
  return Status::OK();
}

Status WalArchive::ReadFile(const WalFileInfo& info,
                            const std::function<Status(std::string_view)>& sink) {
  // A few chunks at a time, fetched and checked in parallel (TreeReader::Read).
  constexpr uint64_t kReadPiece = 4 << 20;
  TreeReader reader(repo_->chunks(), info.data, repo_->config().chunk_size);
  std::string buf;
  for (uint64_t off = 0; off < info.data.size; off += kReadPiece) {
    buf.clear();
    Status s = reader.Read(off, kReadPiece, &buf);
    if (!s.ok()) return s.WithContext("read WAL file " + Quoted(info.name));
    for (size_t at = 0; at < buf.size(); at += kIoPiece) {
      RETURN_IF_ERROR(sink(std::string_view(buf).substr(at, kIoPiece)));
    }
  }
  return Status::OK();
}

}  // namespace pgbackfs
