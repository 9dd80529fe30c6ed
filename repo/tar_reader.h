// A streaming reader for the ustar archives that BASE_BACKUP sends. Bytes go in as they arrive
// from the server, in pieces of any size; entries come out through a TarSink, file data in pieces
// too, so memory does not depend on file sizes. GNU long names ('L') and pax 'path'/'linkpath'/
// 'size' records are understood; hard links and device files are refused.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "repo/status.h"

namespace pgbackfs {

class TarSink {
 public:
  virtual ~TarSink() = default;
  virtual Status OnDirectory(const std::string& path, uint32_t mode, int64_t mtime) = 0;
  virtual Status OnSymlink(const std::string& path, const std::string& target, int64_t mtime) = 0;
  virtual Status OnFileStart(const std::string& path, uint32_t mode, int64_t mtime,
                             uint64_t size) = 0;
  virtual Status OnFileData(std::string_view data) = 0;
  virtual Status OnFileEnd() = 0;
};

class TarReader {
 public:
  explicit TarReader(TarSink* sink) : sink_(sink) {}
  // Feeds the next bytes of the archive. Errors are sticky.
  Status Feed(std::string_view data);
  // The archive ended: Corruption if it ended inside an entry.
  Status Finish();
  uint64_t bytes() const { return bytes_; }

 private:
  enum class State { kHeader, kData, kPadding, kMeta, kEnd };
  Status ParseHeader();
  Status StartEntry();

  TarSink* sink_;
  State state_ = State::kHeader;
  std::string header_;     // partial 512-byte header
  std::string meta_;       // body of a GNU 'L' or pax 'x' entry
  std::string long_name_;  // from 'L' or pax path=
  std::string long_link_;  // from 'K' or pax linkpath=
  int64_t pax_size_ = -1;  // from pax size=
  char meta_type_ = 0;
  uint64_t remaining_ = 0;  // data bytes left in the current entry
  uint64_t padding_ = 0;    // padding bytes left after it
  int zero_blocks_ = 0;
  uint64_t bytes_ = 0;
  Status error_;
  // Fields of the header being processed.
  std::string path_, link_;
  char type_ = 0;
  uint32_t mode_ = 0;
  int64_t mtime_ = 0;
  uint64_t size_ = 0;
};

// Normalizes an archive member name: strips "./" and trailing "/", rejects absolute names and
// ".." parts. InvalidArgument on a bad name.
Status NormalizeTarPath(const std::string& in, std::string* out);

}  // namespace pgbackfs
