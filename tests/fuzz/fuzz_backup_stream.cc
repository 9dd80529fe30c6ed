// Fuzzes what `pgbackfs backup` does with the bytes a server sends after BASE_BACKUP: the COPY
// stream's messages (BaseBackupStreamDecoder, tools/pg_client.h), the data directory's tar
// stream inside it (TarReader) and the backup_manifest after it, stored into a snapshot as
// tools/cmd_backup.cc does (SnapshotBuilder on an in-memory store). The snapshot that results
// is read back: every file the stream delivered last under a path has exactly its bytes, and
// the builder's counts match the tree.
//
// Input: CopyData messages, each a u16 length followed by the message (type byte first).
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "repo/chunk_store.h"
#include "repo/coding.h"
#include "repo/kv.h"
#include "repo/snapshot.h"
#include "repo/tar_reader.h"
#include "tests/fuzz/fuzz_util.h"
#include "tools/pg_client.h"

namespace pgbackfs {
namespace {

constexpr size_t kChunkSize = 8192;

class Handler : public BaseBackupHandler, public TarSink {
 public:
  explicit Handler(SnapshotBuilder* builder) : builder_(builder), tar_(this) {}

  Status OnStart(const std::string&, uint32_t, const std::vector<TablespaceInfo>&) override {
    return Status::OK();
  }
  Status OnArchive(const std::string& name, const std::string& location) override {
    if (archives_++ > 0 || !location.empty()) return Status::NotSupported("second archive");
    return Status::OK();
  }
  Status OnArchiveData(std::string_view data) override { return tar_.Feed(data); }
  Status OnManifest() override {
    RETURN_IF_ERROR(EndArchive());
    manifest_.emplace(builder_->writer(), kChunkSize);
    return Status::OK();
  }
  Status OnManifestData(std::string_view data) override {
    manifest_bytes_.append(data);
    return manifest_->Append(data);
  }
  void OnServerProgress(uint64_t) override {}

  // After the stream ended well, as cmd_backup.cc does.
  Status Finish() {
    if (!archive_done_) RETURN_IF_ERROR(EndArchive());
    if (!manifest_) return Status::IOError("no manifest");
    ASSIGN_OR_RETURN(FileData data, manifest_->Finish());
    RETURN_IF_ERROR(builder_->AddFile("backup_manifest", 0600, 0, data));
    files_["backup_manifest"] = manifest_bytes_;
    return Status::OK();
  }
  const std::map<std::string, std::string>& files() const { return files_; }

  // TarSink
  Status OnDirectory(const std::string& path, uint32_t mode, int64_t mtime) override {
    RETURN_IF_ERROR(builder_->AddDirectory(path, mode, mtime));
    files_.erase(path);  // a directory added again keeps what is below it
    return Status::OK();
  }
  Status OnSymlink(const std::string& path, const std::string& target, int64_t mtime) override {
    RETURN_IF_ERROR(builder_->AddSymlink(path, target, mtime));
    Forget(path);
    return Status::OK();
  }
  Status OnFileStart(const std::string& path, uint32_t mode, int64_t mtime,
                     uint64_t size) override {
    path_ = path;
    mode_ = mode;
    mtime_ = mtime;
    content_.clear();
    file_.emplace(builder_->writer(), kChunkSize);
    return Status::OK();
  }
  Status OnFileData(std::string_view data) override {
    content_.append(data);
    return file_->Append(data);
  }
  Status OnFileEnd() override {
    ASSIGN_OR_RETURN(FileData data, file_->Finish());
    file_.reset();
    RETURN_IF_ERROR(builder_->AddFile(path_, mode_, mtime_, data));
    Forget(path_);
    files_[path_] = content_;
    return Status::OK();
  }

 private:
  Status EndArchive() {
    archive_done_ = true;
    if (archives_ == 0) return Status::IOError("no archive");
    return tar_.Finish();
  }
  // A path added again replaces what was there, and everything below it.
  void Forget(const std::string& path) {
    files_.erase(path);
    std::string prefix = path + "/";
    for (auto it = files_.lower_bound(prefix);
         it != files_.end() && it->first.compare(0, prefix.size(), prefix) == 0;) {
      it = files_.erase(it);
    }
  }

  SnapshotBuilder* builder_;
  TarReader tar_;
  int archives_ = 0;
  bool archive_done_ = false;
  std::optional<FileWriter> file_, manifest_;
  std::string path_, content_, manifest_bytes_;
  uint32_t mode_ = 0;
  int64_t mtime_ = 0;
  std::map<std::string, std::string> files_;
};

}  // namespace
}  // namespace pgbackfs

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace pgbackfs;
  static bool init = (fuzz::QuietLogs(), true);
  (void)init;
  std::unique_ptr<KvStore> kv = NewMemoryStore();
  ChunkStore store(kv.get(), 1, 1 << 20, /*train_dictionaries=*/false);
  SnapshotBuilder builder(&store, kChunkSize);
  Handler handler(&builder);
  BaseBackupStreamDecoder decoder(&handler);

  Decoder in(std::string_view(reinterpret_cast<const char*>(data), size));
  uint16_t len;
  std::string_view message;
  while (in.GetFixed16(&len) && in.GetBytes(len, &message)) {
    if (!decoder.OnMessage(message).ok()) return 0;
  }
  if (!handler.Finish().ok()) return 0;
  Result<Entry> root = builder.Finish();
  if (!root.ok()) return 0;

  // Read the snapshot back.
  SnapshotReader reader(&store, kChunkSize);
  uint64_t files = 0, bytes = 0;
  std::map<std::string, std::string> seen;
  Status s = reader.Walk(*root, "", [&](const std::string& path, const Entry& e) -> Status {
    if (e.type != EntryType::kFile) return Status::OK();
    ++files;
    bytes += e.data.size;
    std::string content;
    RETURN_IF_ERROR(reader.OpenFile(e)->Read(0, e.data.size, &content));
    FUZZ_CHECK(content.size() == e.data.size);
    seen[path] = std::move(content);
    return Status::OK();
  });
  FUZZ_CHECK_MSG(s.ok(), s.ToString());
  FUZZ_CHECK(files == builder.file_count());
  FUZZ_CHECK(bytes == builder.logical_size());
  FUZZ_CHECK(seen == handler.files());
  return 0;
}
