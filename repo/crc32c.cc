#include "repo/crc32c.h"

#include <array>
#include <cstring>

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

namespace pgbackfs {
namespace {

constexpr uint32_t kPoly = 0x82F63B78u;  // reflected Castagnoli polynomial

// kTables[k][b]: the CRC of byte b followed by k zero bytes (slicing-by-8).
using Tables = std::array<std::array<uint32_t, 256>, 8>;

constexpr Tables MakeTables() {
  Tables t{};
  for (uint32_t b = 0; b < 256; ++b) {
    uint32_t c = b;
    for (int i = 0; i < 8; ++i) c = (c & 1) ? (c >> 1) ^ kPoly : c >> 1;
    t[0][b] = c;
  }
  for (uint32_t b = 0; b < 256; ++b) {
    for (int k = 1; k < 8; ++k) t[k][b] = (t[k - 1][b] >> 8) ^ t[0][t[k - 1][b] & 0xFF];
  }
  return t;
}

constexpr Tables kTables = MakeTables();

#if defined(__x86_64__)
// Long inputs go as three interleaved streams of one block each: crc32 has a latency of three
// cycles and a throughput of one, so one stream uses a third of the unit. The streams are joined
// by linearity: for the raw register update E, E(v, A B) = S(E(v, A)) ^ E(0, B), where S is E over
// a block of zero bytes, a linear map applied with four byte tables. Two block sizes: WAL records
// are often a few hundred bytes.
struct ShiftTables {
  std::array<std::array<uint32_t, 256>, 4> t;
  uint32_t Apply(uint32_t v) const {
    return t[0][v & 0xFF] ^ t[1][(v >> 8) & 0xFF] ^ t[2][(v >> 16) & 0xFF] ^ t[3][v >> 24];
  }
};

template <size_t kBlock>
const ShiftTables& StreamShift() {
  static const ShiftTables tables = [] {
    static const uint8_t zeros[kBlock] = {};
    uint32_t bit[32];
    for (int i = 0; i < 32; ++i) bit[i] = Crc32cExtendPortable(1u << i, zeros, kBlock);
    ShiftTables s;
    for (int k = 0; k < 4; ++k) {
      for (uint32_t b = 0; b < 256; ++b) {
        uint32_t v = 0;
        for (int i = 0; i < 8; ++i)
          if (b & (1u << i)) v ^= bit[8 * k + i];
        s.t[k][b] = v;
      }
    }
    return s;
  }();
  return tables;
}

// Consumes whole rounds of three blocks from *p (8-byte aligned).
template <size_t kBlock>
__attribute__((target("sse4.2"))) void ExtendStreams(uint64_t* c, const uint8_t** p, size_t* n) {
  if (*n < 3 * kBlock) return;
  const ShiftTables& shift = StreamShift<kBlock>();
  const uint8_t* q = *p;
  uint64_t crc = *c;
  do {
    uint64_t c1 = crc, c2 = 0, c3 = 0;
    for (size_t i = 0; i < kBlock; i += 8) {
      uint64_t w1, w2, w3;
      std::memcpy(&w1, q + i, 8);
      std::memcpy(&w2, q + kBlock + i, 8);
      std::memcpy(&w3, q + 2 * kBlock + i, 8);
      c1 = _mm_crc32_u64(c1, w1);
      c2 = _mm_crc32_u64(c2, w2);
      c3 = _mm_crc32_u64(c3, w3);
    }
    uint32_t joined = shift.Apply(static_cast<uint32_t>(c1)) ^ static_cast<uint32_t>(c2);
    crc = shift.Apply(joined) ^ static_cast<uint32_t>(c3);
    q += 3 * kBlock;
    *n -= 3 * kBlock;
  } while (*n >= 3 * kBlock);
  *p = q;
  *c = crc;
}

__attribute__((target("sse4.2"))) uint32_t ExtendSse42(uint32_t crc, const uint8_t* p, size_t n) {
  uint64_t c = crc;
  while (n > 0 && (reinterpret_cast<uintptr_t>(p) & 7) != 0) {
    c = _mm_crc32_u8(static_cast<uint32_t>(c), *p++);
    --n;
  }
  ExtendStreams<1024>(&c, &p, &n);
  ExtendStreams<128>(&c, &p, &n);
  while (n >= 8) {
    uint64_t word;
    std::memcpy(&word, p, 8);
    c = _mm_crc32_u64(c, word);
    p += 8;
    n -= 8;
  }
  while (n > 0) {
    c = _mm_crc32_u8(static_cast<uint32_t>(c), *p++);
    --n;
  }
  return static_cast<uint32_t>(c);
}

bool HaveSse42() {
  static const bool have = __builtin_cpu_supports("sse4.2");
  return have;
}
#endif

}  // namespace

uint32_t Crc32cExtendPortable(uint32_t crc, const void* data, size_t n) {
  const uint8_t* p = static_cast<const uint8_t*>(data);
  while (n >= 8) {
    // Little-endian: the first four bytes fold into the running value.
    uint32_t lo = crc ^ (static_cast<uint32_t>(p[0]) | static_cast<uint32_t>(p[1]) << 8 |
                         static_cast<uint32_t>(p[2]) << 16 | static_cast<uint32_t>(p[3]) << 24);
    crc = kTables[7][lo & 0xFF] ^ kTables[6][(lo >> 8) & 0xFF] ^ kTables[5][(lo >> 16) & 0xFF] ^
          kTables[4][lo >> 24] ^ kTables[3][p[4]] ^ kTables[2][p[5]] ^ kTables[1][p[6]] ^
          kTables[0][p[7]];
    p += 8;
    n -= 8;
  }
  while (n > 0) {
    crc = (crc >> 8) ^ kTables[0][(crc ^ *p++) & 0xFF];
    --n;
  }
  return crc;
}

uint32_t Crc32cExtend(uint32_t crc, const void* data, size_t n) {
#if defined(__x86_64__)
  if (HaveSse42()) return ExtendSse42(crc, static_cast<const uint8_t*>(data), n);
#endif
  return Crc32cExtendPortable(crc, data, n);
}

}  // namespace pgbackfs
