// Fuzzes TarReader, the parser of the BASE_BACKUP tar stream (repo/tar_reader.h), and checks its
// contract: names are normalized (relative, no "." or ".." parts), a file gets exactly the bytes
// its header announced, callbacks come in order, and the result does not depend on how the
// stream is cut into pieces.
//
// Input: byte 0 picks the piece size the stream is fed in (1..256, or all at once); the rest is
// the archive.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "repo/tar_reader.h"
#include "tests/fuzz/fuzz_util.h"

namespace pgbackfs {
namespace {

void CheckPath(const std::string& path, bool may_be_empty) {
  std::string normalized;
  FUZZ_CHECK_MSG(NormalizeTarPath(path, &normalized).ok(), path);
  FUZZ_CHECK_MSG(normalized == path, path);
  FUZZ_CHECK(may_be_empty || !path.empty());
}

// Records every callback as a line, and checks the order and the sizes.
class CheckingSink : public TarSink {
 public:
  Status OnDirectory(const std::string& path, uint32_t mode, int64_t mtime) override {
    FUZZ_CHECK(!in_file_);
    CheckPath(path, false);
    FUZZ_CHECK(mode <= 07777);
    log_ += "d " + path + "\n";
    return Status::OK();
  }
  Status OnSymlink(const std::string& path, const std::string& target, int64_t mtime) override {
    FUZZ_CHECK(!in_file_);
    CheckPath(path, true);
    log_ += "l " + path + " " + target + "\n";
    return Status::OK();
  }
  Status OnFileStart(const std::string& path, uint32_t mode, int64_t mtime,
                     uint64_t size) override {
    FUZZ_CHECK(!in_file_);
    CheckPath(path, false);
    FUZZ_CHECK(mode <= 07777);
    in_file_ = true;
    left_ = size;
    log_ += "f " + path + " " + std::to_string(size) + "\n";
    return Status::OK();
  }
  Status OnFileData(std::string_view data) override {
    FUZZ_CHECK(in_file_);
    FUZZ_CHECK(data.size() <= left_);
    left_ -= data.size();
    log_.append(data);
    return Status::OK();
  }
  Status OnFileEnd() override {
    FUZZ_CHECK(in_file_);
    FUZZ_CHECK(left_ == 0);
    in_file_ = false;
    log_ += "\ne\n";
    return Status::OK();
  }
  bool in_file() const { return in_file_; }
  const std::string& log() const { return log_; }

 private:
  bool in_file_ = false;
  uint64_t left_ = 0;
  std::string log_;
};

struct Outcome {
  bool ok;
  std::string log;
};

Outcome Run(std::string_view archive, size_t piece) {
  CheckingSink sink;
  TarReader reader(&sink);
  Status s;
  while (s.ok() && !archive.empty()) {
    size_t n = std::min(piece, archive.size());
    s = reader.Feed(archive.substr(0, n));
    archive.remove_prefix(n);
  }
  // Errors from Feed are sticky.
  if (!s.ok()) FUZZ_CHECK(!reader.Feed("x").ok());
  if (s.ok()) s = reader.Finish();
  // A stream that ends well ends outside any file.
  if (s.ok()) FUZZ_CHECK(!sink.in_file());
  return {s.ok(), sink.log()};
}

}  // namespace
}  // namespace pgbackfs

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace pgbackfs;
  if (size < 1) return 0;
  size_t piece = data[0] == 0 ? SIZE_MAX : data[0];
  std::string_view archive(reinterpret_cast<const char*>(data) + 1, size - 1);
  Outcome whole = Run(archive, SIZE_MAX);
  if (piece != SIZE_MAX) {
    Outcome cut = Run(archive, piece);
    FUZZ_CHECK(cut.ok == whole.ok);
    if (whole.ok) FUZZ_CHECK(cut.log == whole.log);
  }
  return 0;
}
