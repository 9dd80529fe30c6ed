#include "repo/tar_reader.h"

#include <algorithm>
#include <cstring>
#include <vector>

namespace pgbackfs {

namespace {
constexpr size_t kBlock = 512;

// Parses an octal (or GNU base-256) numeric field.
bool ParseNumber(const char* p, size_t n, uint64_t* out) {
  if (n > 0 && (static_cast<unsigned char>(p[0]) & 0x80)) {
    uint64_t v = static_cast<unsigned char>(p[0]) & 0x7f;
    for (size_t i = 1; i < n; ++i) {
      if (v >> 55) return false;
      v = (v << 8) | static_cast<unsigned char>(p[i]);
    }
    *out = v;
    return true;
  }
  uint64_t v = 0;
  size_t i = 0;
  while (i < n && p[i] == ' ') ++i;
  bool any = false;
  for (; i < n && p[i] >= '0' && p[i] <= '7'; ++i) {
    if (v >> 60) return false;
    v = v * 8 + (p[i] - '0');
    any = true;
  }
  for (; i < n; ++i) {
    if (p[i] != ' ' && p[i] != '\0') return false;
  }
  *out = any ? v : 0;
  return true;
}

bool ParseNumberDecimal(std::string_view s, uint64_t* out) {
  uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9' || v > (uint64_t{1} << 62) / 10) return false;
    v = v * 10 + (c - '0');
  }
  *out = v;
  return true;
}

std::string Field(const char* p, size_t n) { return std::string(p, strnlen(p, n)); }

}  // namespace

Status NormalizeTarPath(const std::string& in, std::string* out) {
  std::string s = in;
  while (s.rfind("./", 0) == 0) s.erase(0, 2);
  while (!s.empty() && s.back() == '/') s.pop_back();
  if (s.empty() || s == ".") {
    out->clear();
    return Status::OK();
  }
  if (s[0] == '/') return Status::InvalidArgument("absolute path in archive: '" + in + "'");
  size_t start = 0;
  while (start <= s.size()) {
    size_t end = s.find('/', start);
    if (end == std::string::npos) end = s.size();
    std::string_view part(s.data() + start, end - start);
    if (part.empty() || part == "." || part == "..") {
      return Status::InvalidArgument("bad path in archive: '" + in + "'");
    }
    start = end + 1;
  }
  *out = s;
  return Status::OK();
}

Status TarReader::ParseHeader() {
  const char* h = header_.data();
  bool all_zero = std::all_of(header_.begin(), header_.end(), [](char c) { return c == 0; });
  if (all_zero) {
    if (++zero_blocks_ >= 2) state_ = State::kEnd;
    return Status::OK();
  }
  if (zero_blocks_) return Status::Corruption("tar: data after an end-of-archive block");
  uint64_t chksum;
  if (!ParseNumber(h + 148, 8, &chksum))
    return Status::Corruption("tar: bad header checksum field");
  uint64_t sum = 0;
  for (size_t i = 0; i < kBlock; ++i) {
    sum += (i >= 148 && i < 156) ? ' ' : static_cast<unsigned char>(h[i]);
  }
  if (sum != chksum) return Status::Corruption("tar: header checksum mismatch");
  uint64_t mode, size, mtime;
  if (!ParseNumber(h + 100, 8, &mode) || !ParseNumber(h + 124, 12, &size) ||
      !ParseNumber(h + 136, 12, &mtime)) {
    return Status::Corruption("tar: bad numeric field");
  }
  type_ = h[156];
  mode_ = static_cast<uint32_t>(mode & 07777);
  mtime_ = static_cast<int64_t>(mtime);
  size_ = size;
  std::string name = Field(h, 100);
  if (std::memcmp(h + 257, "ustar", 5) == 0) {
    std::string prefix = Field(h + 345, 155);
    if (!prefix.empty()) name = prefix + "/" + name;
  }
  link_ = Field(h + 157, 100);

  // Extended headers keep what earlier ones set ('K' after 'L'): it is for the next real entry.
  if (type_ == 'L' || type_ == 'K' || type_ == 'x') {
    if (size_ > (1 << 20)) return Status::Corruption("tar: oversized extended header");
    meta_type_ = type_;
    meta_.clear();
    remaining_ = size_;
    padding_ = (kBlock - size_ % kBlock) % kBlock;
    state_ = remaining_ ? State::kMeta : State::kPadding;
    if (!remaining_ && !padding_) state_ = State::kHeader;
    return Status::OK();
  }
  if (type_ == 'g') {  // pax global header: nothing we use
    remaining_ = size_;
    padding_ = (kBlock - size_ % kBlock) % kBlock;
    meta_type_ = 'g';
    state_ = remaining_ ? State::kMeta : State::kHeader;
    return Status::OK();
  }
  if (!long_name_.empty()) name = std::move(long_name_);
  if (!long_link_.empty()) link_ = std::move(long_link_);
  if (pax_size_ >= 0) size_ = static_cast<uint64_t>(pax_size_);
  long_name_.clear();
  long_link_.clear();
  pax_size_ = -1;
  path_ = std::move(name);
  return StartEntry();
}

Status TarReader::StartEntry() {
  std::string path;
  RETURN_IF_ERROR(NormalizeTarPath(path_, &path));
  remaining_ = 0;
  switch (type_) {
    case '0':
    case '\0':
    case '7':
      if (path.empty()) return Status::Corruption("tar: file with an empty name");
      RETURN_IF_ERROR(sink_->OnFileStart(path, mode_, mtime_, size_));
      remaining_ = size_;
      padding_ = (kBlock - size_ % kBlock) % kBlock;
      if (remaining_ == 0) {
        RETURN_IF_ERROR(sink_->OnFileEnd());
        state_ = State::kHeader;
      } else {
        state_ = State::kData;
      }
      return Status::OK();
    case '5':
      if (!path.empty()) RETURN_IF_ERROR(sink_->OnDirectory(path, mode_, mtime_));
      state_ = State::kHeader;
      return Status::OK();
    case '2':
      RETURN_IF_ERROR(sink_->OnSymlink(path, link_, mtime_));
      state_ = State::kHeader;
      return Status::OK();
    case '1':
      return Status::NotSupported("tar: hard link '" + path + "' is not supported");
    default:
      return Status::NotSupported("tar: entry '" + path + "' has unsupported type '" +
                                  std::string(1, type_) + "'");
  }
}

Status TarReader::Feed(std::string_view data) {
  if (!error_.ok()) return error_;
  bytes_ += data.size();
  auto fail = [&](Status s) {
    error_ = s;
    return s;
  };
  while (!data.empty()) {
    switch (state_) {
      case State::kEnd:
        // Anything after the end marker must be zero padding.
        if (!std::all_of(data.begin(), data.end(), [](char c) { return c == 0; })) {
          return fail(Status::Corruption("tar: data after the end of the archive"));
        }
        return Status::OK();
      case State::kHeader: {
        size_t n = std::min(data.size(), kBlock - header_.size());
        header_.append(data.substr(0, n));
        data.remove_prefix(n);
        if (header_.size() == kBlock) {
          Status s = ParseHeader();
          header_.clear();
          if (!s.ok()) return fail(s);
        }
        break;
      }
      case State::kData: {
        size_t n = static_cast<size_t>(std::min<uint64_t>(data.size(), remaining_));
        Status s = sink_->OnFileData(data.substr(0, n));
        if (!s.ok()) return fail(s);
        data.remove_prefix(n);
        remaining_ -= n;
        if (remaining_ == 0) {
          s = sink_->OnFileEnd();
          if (!s.ok()) return fail(s);
          state_ = padding_ ? State::kPadding : State::kHeader;
        }
        break;
      }
      case State::kMeta: {
        size_t n = static_cast<size_t>(std::min<uint64_t>(data.size(), remaining_));
        if (meta_type_ != 'g') meta_.append(data.substr(0, n));
        data.remove_prefix(n);
        remaining_ -= n;
        if (remaining_ == 0) {
          if (meta_type_ == 'L') {
            long_name_ = Field(meta_.data(), meta_.size());
          } else if (meta_type_ == 'K') {
            long_link_ = Field(meta_.data(), meta_.size());
          } else if (meta_type_ == 'x') {
            // Records: "<len> <key>=<value>\n".
            std::string_view rest = meta_;
            while (!rest.empty()) {
              size_t sp = rest.find(' ');
              if (sp == std::string_view::npos) break;
              size_t len = 0;
              try {
                len = std::stoul(std::string(rest.substr(0, sp)));
              } catch (...) {
                return fail(Status::Corruption("tar: bad pax record"));
              }
              if (len <= sp + 1 || len > rest.size()) {
                return fail(Status::Corruption("tar: bad pax record length"));
              }
              std::string_view rec = rest.substr(sp + 1, len - sp - 2);
              size_t eq = rec.find('=');
              if (eq != std::string_view::npos) {
                std::string_view key = rec.substr(0, eq), value = rec.substr(eq + 1);
                if (key == "path") long_name_ = std::string(value);
                if (key == "linkpath") long_link_ = std::string(value);
                if (key == "size") {
                  uint64_t v = 0;
                  if (value.empty() || !ParseNumberDecimal(value, &v)) {
                    return fail(Status::Corruption("tar: bad pax size record"));
                  }
                  pax_size_ = static_cast<int64_t>(v);
                }
              }
              rest.remove_prefix(len);
            }
          }
          state_ = padding_ ? State::kPadding : State::kHeader;
        }
        break;
      }
      case State::kPadding: {
        size_t n = static_cast<size_t>(std::min<uint64_t>(data.size(), padding_));
        data.remove_prefix(n);
        padding_ -= n;
        if (padding_ == 0) state_ = State::kHeader;
        break;
      }
    }
  }
  return Status::OK();
}

Status TarReader::Finish() {
  if (!error_.ok()) return error_;
  if (state_ == State::kEnd) return Status::OK();
  if (state_ == State::kHeader && header_.empty()) return Status::OK();
  return Status::Corruption("tar: archive ends inside an entry");
}

}  // namespace pgbackfs
