// Little-endian fixed-width and varint encoding helpers for the on-disk records, and big-endian
// ones for keys that must sort by number (docs/FORMAT.md).
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace pgbackfs {

inline void PutFixed16(std::string* dst, uint16_t v) {
  char b[2] = {static_cast<char>(v), static_cast<char>(v >> 8)};
  dst->append(b, 2);
}
inline void PutFixed32(std::string* dst, uint32_t v) {
  char b[4];
  for (int i = 0; i < 4; ++i) b[i] = static_cast<char>(v >> (8 * i));
  dst->append(b, 4);
}
inline void PutFixed64(std::string* dst, uint64_t v) {
  char b[8];
  for (int i = 0; i < 8; ++i) b[i] = static_cast<char>(v >> (8 * i));
  dst->append(b, 8);
}
inline void PutVarint64(std::string* dst, uint64_t v) {
  while (v >= 0x80) {
    dst->push_back(static_cast<char>(v | 0x80));
    v >>= 7;
  }
  dst->push_back(static_cast<char>(v));
}
// Big-endian: `n` bytes, most significant first.
inline void PutBigEndian(std::string* dst, uint64_t v, int n) {
  for (int i = n - 1; i >= 0; --i) dst->push_back(static_cast<char>(v >> (8 * i)));
}
inline void PutBigEndian32(std::string* dst, uint32_t v) { PutBigEndian(dst, v, 4); }
inline void PutBigEndian64(std::string* dst, uint64_t v) { PutBigEndian(dst, v, 8); }
// The first `n` bytes of `s` (which must hold them), big-endian.
inline uint64_t GetBigEndian(std::string_view s, size_t n) {
  uint64_t v = 0;
  for (size_t i = 0; i < n; ++i) v = v << 8 | static_cast<uint8_t>(s[i]);
  return v;
}
inline void PutLengthPrefixed(std::string* dst, std::string_view s) {
  PutVarint64(dst, s.size());
  dst->append(s);
}

// A cursor over an encoded record. Every getter returns false, and leaves the cursor unusable,
// on truncated input; decoders turn that into Status::Corruption.
class Decoder {
 public:
  explicit Decoder(std::string_view in) : in_(in) {}
  bool GetFixed8(uint8_t* v) {
    if (in_.size() < 1) return Fail();
    *v = static_cast<uint8_t>(in_[0]);
    in_.remove_prefix(1);
    return true;
  }
  bool GetFixed16(uint16_t* v) {
    uint64_t x;
    if (!GetLE(2, &x)) return false;
    *v = static_cast<uint16_t>(x);
    return true;
  }
  bool GetFixed32(uint32_t* v) {
    uint64_t x;
    if (!GetLE(4, &x)) return false;
    *v = static_cast<uint32_t>(x);
    return true;
  }
  bool GetFixed64(uint64_t* v) { return GetLE(8, v); }
  bool GetVarint64(uint64_t* v) {
    uint64_t result = 0;
    for (int shift = 0; shift <= 63; shift += 7) {
      if (in_.empty()) return Fail();
      uint8_t byte = static_cast<uint8_t>(in_[0]);
      in_.remove_prefix(1);
      result |= static_cast<uint64_t>(byte & 0x7f) << shift;
      if (!(byte & 0x80)) {
        *v = result;
        return true;
      }
    }
    return Fail();
  }
  bool GetBytes(size_t n, std::string_view* out) {
    if (in_.size() < n) return Fail();
    *out = in_.substr(0, n);
    in_.remove_prefix(n);
    return true;
  }
  bool GetLengthPrefixed(std::string_view* out) {
    uint64_t n;
    return GetVarint64(&n) && GetBytes(n, out);
  }
  bool empty() const { return in_.empty(); }
  size_t remaining() const { return in_.size(); }

 private:
  bool GetLE(int n, uint64_t* v) {
    if (in_.size() < static_cast<size_t>(n)) return Fail();
    uint64_t x = 0;
    for (int i = 0; i < n; ++i) x |= static_cast<uint64_t>(static_cast<uint8_t>(in_[i])) << (8 * i);
    in_.remove_prefix(n);
    *v = x;
    return true;
  }
  bool Fail() {
    in_ = {};
    return false;
  }
  std::string_view in_;
};

std::string HexEncode(std::string_view bytes);
// False if `hex` is not an even-length string of hex digits.
bool HexDecode(std::string_view hex, std::string* out);

}  // namespace pgbackfs
