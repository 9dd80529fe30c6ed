// A stand-in for repo/wal_archive.cc, which is being written in branch `wal`. It implements the
// API of repo/wal_archive.h just well enough for the mount driver (fs/) and its tests to be built
// and run before the real one lands; CMakeLists.txt compiles it only while repo/wal_archive.cc
// does not exist, so merging main retires it without a conflict. Its key layout is throwaway:
// nothing here is part of docs/FORMAT.md.
#include <cinttypes>
#include <ctime>
#include <mutex>

#include "repo/coding.h"
#include "repo/wal_archive.h"

namespace pgbackfs {

namespace {

constexpr uint16_t kWalPageMagic = 0xD110;  // PostgreSQL 15
constexpr uint16_t kXlpLongHeader = 0x0002;
constexpr size_t kXlogBlockSize = 8192;
constexpr char kSegmentSizeKey[] = "stand_in_wal_segment_size";

std::mutex commit_mu;  // one check-then-put at a time

bool IsHex(std::string_view s) {
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'A' && c <= 'F'))) return false;
  }
  return true;
}

uint64_t LoadLE(const std::string& s, size_t off, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; ++i) v |= uint64_t{static_cast<uint8_t>(s[off + i])} << (8 * i);
  return v;
}

std::string EncodeRecord(const WalFileInfo& info) {
  std::string out;
  out.push_back(static_cast<char>(info.kind));
  PutFixed64(&out, info.data.size);
  out.push_back(static_cast<char>(info.data.root.height));
  out.append(info.data.root.id.AsKey());
  PutFixed64(&out, static_cast<uint64_t>(info.archived_time));
  return out;
}

Status DecodeRecord(const std::string& name, std::string_view value, WalFileInfo* info) {
  Decoder in(value);
  uint8_t kind, height;
  uint64_t t;
  std::string_view id;
  if (!in.GetFixed8(&kind) || !in.GetFixed64(&info->data.size) || !in.GetFixed8(&height) ||
      !in.GetBytes(16, &id) || !in.GetFixed64(&t) || kind > 3) {
    return Status::Corruption("bad WAL record for '" + name + "'");
  }
  info->name = name;
  info->kind = static_cast<WalFileKind>(kind);
  info->data.root.height = height;
  info->data.root.id = ChunkId::FromKey(id);
  info->archived_time = static_cast<int64_t>(t);
  return Status::OK();
}

class StandInWriter : public WalWriter {
 public:
  StandInWriter(Repository* repo, std::string name, WalFileKind kind)
      : repo_(repo),
        name_(std::move(name)),
        kind_(kind),
        chunks_(repo->chunks()),
        file_(std::make_unique<FileWriter>(&chunks_, repo->config().chunk_size)) {}

  Status Write(uint64_t offset, std::string_view data) override {
    if (offset < file_->size()) {
      return Status::InvalidArgument("write to '" + name_ + "' goes backwards");
    }
    if (offset > file_->size()) RETURN_IF_ERROR(Append(std::string(offset - file_->size(), '\0')));
    return Append(data);
  }

  Status Truncate(uint64_t size) override {
    if (size == 0) {
      file_ = std::make_unique<FileWriter>(&chunks_, repo_->config().chunk_size);
      head_.clear();
      return Status::OK();
    }
    if (size < file_->size()) return Status::InvalidArgument("cannot shrink '" + name_ + "'");
    return Append(std::string(size - file_->size(), '\0'));
  }

  uint64_t size() const override { return file_->size(); }

  Status Commit() override {
    RETURN_IF_ERROR(Validate());
    FileWriter copy = *file_;  // the writer stays usable for later writes and commits
    ASSIGN_OR_RETURN(FileData data, copy.Finish());
    RETURN_IF_ERROR(chunks_.Flush(/*sync=*/false));
    std::lock_guard<std::mutex> lock(commit_mu);
    std::string value;
    Status s = repo_->kv()->Get(Cf::kWal, name_, &value);
    if (s.ok()) {
      WalFileInfo old;
      RETURN_IF_ERROR(DecodeRecord(name_, value, &old));
      if (old.data.size == data.size && old.data.root == data.root) return Status::OK();
      return Status::AlreadyExists("WAL file '" + name_ +
                                   "' is already archived with different content");
    }
    if (!s.IsNotFound()) return s;
    WalFileInfo info{name_, kind_, data, static_cast<int64_t>(time(nullptr))};
    KvBatch batch;
    batch.Put(Cf::kWal, name_, EncodeRecord(info));
    return repo_->kv()->Write(batch, /*sync=*/true);
  }

 private:
  Status Append(std::string_view data) {
    if (head_.size() < kXlogBlockSize) {
      head_.append(data.substr(0, kXlogBlockSize - head_.size()));
    }
    return file_->Append(data);
  }

  Status Validate() {
    uint64_t size = file_->size();
    if (kind_ != WalFileKind::kSegment && kind_ != WalFileKind::kPartial) {
      if (size == 0) return Status::InvalidArgument("'" + name_ + "' is empty");
      return Status::OK();
    }
    if (head_.size() < 40 || LoadLE(head_, 0, 2) != kWalPageMagic ||
        !(LoadLE(head_, 2, 2) & kXlpLongHeader)) {
      return Status::InvalidArgument("'" + name_ + "' does not start with a WAL page header");
    }
    uint64_t sysid = LoadLE(head_, 24, 8);
    uint64_t seg_size = LoadLE(head_, 32, 4);
    if (seg_size < (1u << 20) || seg_size > (1u << 30) || (seg_size & (seg_size - 1))) {
      return Status::InvalidArgument("'" + name_ + "' has a bad segment size in its header");
    }
    if (size != seg_size) {
      return Status::InvalidArgument("'" + name_ + "' has " + std::to_string(size) +
                                     " bytes, not the segment size " + std::to_string(seg_size));
    }
    RETURN_IF_ERROR(repo_->CheckSystemIdentifier(std::to_string(sysid)));
    KvBatch batch;
    std::string v;
    PutFixed64(&v, seg_size);
    batch.Put(Cf::kMeta, kSegmentSizeKey, v);
    return repo_->kv()->Write(batch, false);
  }

  Repository* repo_;
  std::string name_;
  WalFileKind kind_;
  ChunkWriter chunks_;
  std::unique_ptr<FileWriter> file_;
  std::string head_;  // the first page, for validation
};

}  // namespace

Status ParseWalFileName(const std::string& name, WalFileKind* kind) {
  auto bad = [&] { return Status::InvalidArgument("'" + name + "' is not a WAL file name"); };
  if (name.size() == 24 && IsHex(name)) {
    *kind = WalFileKind::kSegment;
  } else if (name.size() == 32 && IsHex(name.substr(0, 24)) && name.substr(24) == ".partial") {
    *kind = WalFileKind::kPartial;
  } else if (name.size() == 16 && IsHex(name.substr(0, 8)) && name.substr(8) == ".history") {
    *kind = WalFileKind::kHistory;
  } else if (name.size() == 40 && IsHex(name.substr(0, 24)) && name[24] == '.' &&
             IsHex(name.substr(25, 8)) && name.substr(33) == ".backup") {
    *kind = WalFileKind::kBackupLabel;
  } else {
    return bad();
  }
  return Status::OK();
}

WalArchive::WalArchive(Repository* repo) : repo_(repo) {}

Result<std::unique_ptr<WalWriter>> WalArchive::NewWriter(const std::string& name) {
  WalFileKind kind;
  RETURN_IF_ERROR(ParseWalFileName(name, &kind));
  return std::unique_ptr<WalWriter>(new StandInWriter(repo_, name, kind));
}

Result<WalFileInfo> WalArchive::Get(const std::string& name) {
  std::string value;
  Status s = repo_->kv()->Get(Cf::kWal, name, &value);
  if (s.IsNotFound()) return Status::NotFound("WAL file '" + name + "' is not archived");
  RETURN_IF_ERROR(s);
  WalFileInfo info;
  RETURN_IF_ERROR(DecodeRecord(name, value, &info));
  return info;
}

Status WalArchive::List(const std::function<Status(const WalFileInfo&)>& fn) {
  auto it = repo_->kv()->NewIterator(Cf::kWal);
  for (it->Seek(""); it->Valid(); it->Next()) {
    WalFileInfo info;
    RETURN_IF_ERROR(DecodeRecord(std::string(it->key()), it->value(), &info));
    RETURN_IF_ERROR(fn(info));
  }
  return it->status();
}

Result<uint64_t> WalArchive::SegmentSize() {
  std::string value;
  Status s = repo_->kv()->Get(Cf::kMeta, kSegmentSizeKey, &value);
  if (s.IsNotFound()) return uint64_t{0};
  RETURN_IF_ERROR(s);
  return LoadLE(value, 0, 8);
}

}  // namespace pgbackfs
