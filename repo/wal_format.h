// What pgbackfs knows of PostgreSQL's WAL files: the names PostgreSQL gives them and the long page
// header at the start of every segment (PostgreSQL's src/include/access/xlog_internal.h).
//
// The header layout has not changed since PostgreSQL 9.3; what changes with every major version
// is the page magic (XLOG_PAGE_MAGIC). The parser looks the magic up in a table of known formats,
// so a new major version is one row in wal_format.cc once its magic has been checked.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "repo/status.h"

namespace pgbackfs {

enum class WalFileKind { kSegment, kPartial, kHistory, kBackupLabel };

// "segment", "partial segment", "timeline history file", "backup history file".
const char* WalFileKindName(WalFileKind kind);

// What a valid archive file name says. Segment, partial and backup names carry a timeline and a
// segment position (log, seg as in the name); history names carry only a timeline.
struct WalFileName {
  WalFileKind kind = WalFileKind::kSegment;
  uint32_t tli = 0;
  uint32_t log = 0;            // high 32 bits of the segment's start LSN
  uint32_t seg = 0;            // segment number within `log`
  uint32_t backup_offset = 0;  // .backup files: the backup's start offset within the segment
};

// Parses "000000010000000000000001", "000000010000000000000001.partial", "00000002.history",
// "000000010000000000000001.00000028.backup". Hex digits must be upper case, as PostgreSQL
// writes them. InvalidArgument naming the file otherwise.
Status ParseWalFileName(std::string_view name, WalFileName* parsed);

// wal_segment_size can be any power of two from 1 MiB to 1 GiB.
constexpr uint64_t kMinWalSegmentSize = uint64_t{1} << 20;
constexpr uint64_t kMaxWalSegmentSize = uint64_t{1} << 30;
bool IsValidWalSegmentSize(uint64_t size);

// The start LSN of segment (log, seg) for `segment_size`, or InvalidArgument if `seg` is out of
// range for that size (there are 2^32 / segment_size segments per log).
Result<uint64_t> WalSegmentStartLsn(const WalFileName& name, uint64_t segment_size);

// XLogPageHeaderData followed by XLogLongPageHeaderData's extra fields.
struct WalLongPageHeader {
  uint16_t magic = 0;
  int pg_major = 0;  // the PostgreSQL major version that writes `magic`
  uint16_t info = 0;
  uint32_t tli = 0;
  uint64_t pageaddr = 0;
  uint32_t rem_len = 0;
  uint64_t sysid = 0;
  uint32_t seg_size = 0;
  uint32_t xlog_blcksz = 0;
};

// Bytes needed at the start of a segment to parse its long page header (SizeOfXLogLongPHD).
constexpr size_t kWalLongPageHeaderSize = 40;

// Parses and checks the long page header at the start of `data` (the first bytes of a segment or
// .partial file named `file`): a known magic, the long-header flag, a valid segment size and
// block size. Says nothing about whether the header matches the file name; see
// CheckWalSegmentHeader. InvalidArgument naming `file` on failure.
Status ParseWalLongPageHeader(std::string_view data, const std::string& file,
                              WalLongPageHeader* header);

// Checks that a parsed header agrees with the file's name: its page address is the segment's start
// LSN, and its timeline is not later than the name's (the first segment of a new timeline starts
// with pages copied from the old one, so an earlier timeline is fine).
Status CheckWalSegmentHeader(const WalLongPageHeader& header, const WalFileName& name,
                             const std::string& file);

// "0/3000000", as PostgreSQL prints an LSN.
std::string FormatLsn(uint64_t lsn);

}  // namespace pgbackfs
