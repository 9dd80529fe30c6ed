// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as PostgreSQL computes it for WAL
// records (pg_crc32c). SSE 4.2 instructions when the CPU has them, slicing-by-8 otherwise.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace pgbackfs {

// The running (not yet finalized) value: start from kCrc32cInit, feed any number of pieces with
// Crc32cExtend, finish with Crc32cFinish. The same as PostgreSQL's INIT_CRC32C / COMP_CRC32C /
// FIN_CRC32C, so a value can be carried from one piece of a record to the next.
inline constexpr uint32_t kCrc32cInit = 0xFFFFFFFFu;
uint32_t Crc32cExtend(uint32_t crc, const void* data, size_t n);
inline uint32_t Crc32cFinish(uint32_t crc) { return crc ^ 0xFFFFFFFFu; }

// The finished CRC-32C of `data` (crc32c("123456789") == 0xE3069283).
inline uint32_t Crc32c(std::string_view data) {
  return Crc32cFinish(Crc32cExtend(kCrc32cInit, data.data(), data.size()));
}

// For tests: the portable implementation, whatever the CPU.
uint32_t Crc32cExtendPortable(uint32_t crc, const void* data, size_t n);

}  // namespace pgbackfs
