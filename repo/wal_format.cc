#include "repo/wal_format.h"

#include <cinttypes>
#include <cstdio>

namespace pgbackfs {

namespace {

// One row per supported WAL page format. Every row shares the header layout below; add a row (and
// a test with a real segment of that version) to accept another major version.
struct WalPageFormat {
  uint16_t magic;
  int pg_major;
};
constexpr WalPageFormat kWalPageFormats[] = {
    {0xD110, 15},
};

constexpr uint16_t kXlpLongHeader = 0x0002;

// Offsets in XLogLongPageHeaderData (8-byte MAXALIGN, so 4 bytes of padding after rem_len).
constexpr size_t kOffMagic = 0;
constexpr size_t kOffInfo = 2;
constexpr size_t kOffTli = 4;
constexpr size_t kOffPageAddr = 8;
constexpr size_t kOffRemLen = 16;
constexpr size_t kOffSysid = 24;
constexpr size_t kOffSegSize = 32;
constexpr size_t kOffBlcksz = 36;

uint64_t LoadLE(std::string_view data, size_t offset, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) {
    v |= static_cast<uint64_t>(static_cast<uint8_t>(data[offset + i])) << (8 * i);
  }
  return v;
}

bool IsUpperHex(std::string_view s) {
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'A' && c <= 'F'))) return false;
  }
  return true;
}

uint32_t Hex32(std::string_view s) {  // s: 8 upper-case hex digits
  uint32_t v = 0;
  for (char c : s) v = (v << 4) | static_cast<uint32_t>(c <= '9' ? c - '0' : c - 'A' + 10);
  return v;
}

bool IsPowerOfTwo(uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }

std::string Hex16(uint16_t v) {
  char buf[8];
  snprintf(buf, sizeof(buf), "0x%04X", v);
  return buf;
}

}  // namespace

const char* WalFileKindName(WalFileKind kind) {
  switch (kind) {
    case WalFileKind::kSegment:
      return "segment";
    case WalFileKind::kPartial:
      return "partial segment";
    case WalFileKind::kHistory:
      return "timeline history file";
    case WalFileKind::kBackupLabel:
      return "backup history file";
  }
  return "file";
}

Status ParseWalFileName(std::string_view name, WalFileName* parsed) {
  constexpr std::string_view kPartial = ".partial";
  constexpr std::string_view kHistory = ".history";
  constexpr std::string_view kBackup = ".backup";
  WalFileName out;
  auto segment_part = [&](std::string_view s) {
    out.tli = Hex32(s.substr(0, 8));
    out.log = Hex32(s.substr(8, 8));
    out.seg = Hex32(s.substr(16, 8));
  };
  bool ok = false;
  if (name.size() == 24 && IsUpperHex(name)) {
    out.kind = WalFileKind::kSegment;
    segment_part(name);
    ok = true;
  } else if (name.size() == 24 + kPartial.size() && IsUpperHex(name.substr(0, 24)) &&
             name.substr(24) == kPartial) {
    out.kind = WalFileKind::kPartial;
    segment_part(name);
    ok = true;
  } else if (name.size() == 8 + kHistory.size() && IsUpperHex(name.substr(0, 8)) &&
             name.substr(8) == kHistory) {
    out.kind = WalFileKind::kHistory;
    out.tli = Hex32(name.substr(0, 8));
    ok = true;
  } else if (name.size() == 24 + 1 + 8 + kBackup.size() && IsUpperHex(name.substr(0, 24)) &&
             name[24] == '.' && IsUpperHex(name.substr(25, 8)) && name.substr(33) == kBackup) {
    out.kind = WalFileKind::kBackupLabel;
    segment_part(name);
    out.backup_offset = Hex32(name.substr(25, 8));
    ok = true;
  }
  // Timeline 0 does not exist: PostgreSQL starts at 1.
  if (!ok || out.tli == 0) {
    return Status::InvalidArgument(
        "'" + std::string(name) +
        "' is not a WAL file name (expected 24 upper-case hex digits for a segment, optionally "
        "followed by '.partial', 8 hex digits + '.history', or 24 + '.' + 8 hex digits + "
        "'.backup')");
  }
  *parsed = out;
  return Status::OK();
}

bool IsValidWalSegmentSize(uint64_t size) {
  return IsPowerOfTwo(size) && size >= kMinWalSegmentSize && size <= kMaxWalSegmentSize;
}

Result<uint64_t> WalSegmentStartLsn(const WalFileName& name, uint64_t segment_size) {
  uint64_t per_log = (uint64_t{1} << 32) / segment_size;
  if (name.seg >= per_log) {
    char buf[128];
    snprintf(buf, sizeof(buf),
             "segment number %08X is out of range for %" PRIu64 "-byte segments (at most %08" PRIX64
             ")",
             name.seg, segment_size, per_log - 1);
    return Status::InvalidArgument(buf);
  }
  return (static_cast<uint64_t>(name.log) << 32) + name.seg * segment_size;
}

Status ParseWalLongPageHeader(std::string_view data, const std::string& file,
                              WalLongPageHeader* header) {
  if (data.size() < kWalLongPageHeaderSize) {
    return Status::InvalidArgument("WAL file '" + file + "' has " + std::to_string(data.size()) +
                                   " bytes, too few for a WAL page header");
  }
  WalLongPageHeader h;
  h.magic = static_cast<uint16_t>(LoadLE(data, kOffMagic, 2));
  for (const WalPageFormat& f : kWalPageFormats) {
    if (f.magic == h.magic) h.pg_major = f.pg_major;
  }
  if (h.pg_major == 0) {
    std::string known;
    for (const WalPageFormat& f : kWalPageFormats) {
      if (!known.empty()) known += ", ";
      known += Hex16(f.magic) + " (PostgreSQL " + std::to_string(f.pg_major) + ")";
    }
    return Status::InvalidArgument("WAL file '" + file + "' starts with page magic " +
                                   Hex16(h.magic) + ", not a WAL page format pgbackfs knows (" +
                                   known + ")");
  }
  h.info = static_cast<uint16_t>(LoadLE(data, kOffInfo, 2));
  h.tli = static_cast<uint32_t>(LoadLE(data, kOffTli, 4));
  h.pageaddr = LoadLE(data, kOffPageAddr, 8);
  h.rem_len = static_cast<uint32_t>(LoadLE(data, kOffRemLen, 4));
  if (!(h.info & kXlpLongHeader)) {
    return Status::InvalidArgument("WAL file '" + file +
                                   "' does not start with a long page header (xlp_info " +
                                   Hex16(h.info) + ")");
  }
  h.sysid = LoadLE(data, kOffSysid, 8);
  h.seg_size = static_cast<uint32_t>(LoadLE(data, kOffSegSize, 4));
  h.xlog_blcksz = static_cast<uint32_t>(LoadLE(data, kOffBlcksz, 4));
  if (!IsValidWalSegmentSize(h.seg_size)) {
    return Status::InvalidArgument("WAL file '" + file + "' has an invalid segment size " +
                                   std::to_string(h.seg_size) + " in its page header");
  }
  // PostgreSQL's XLOG_BLCKSZ is a power of two from 1 KiB to 64 KiB.
  if (!IsPowerOfTwo(h.xlog_blcksz) || h.xlog_blcksz < 1024 || h.xlog_blcksz > 65536) {
    return Status::InvalidArgument("WAL file '" + file + "' has an invalid WAL block size " +
                                   std::to_string(h.xlog_blcksz) + " in its page header");
  }
  if (h.tli == 0) {
    return Status::InvalidArgument("WAL file '" + file + "' has timeline 0 in its page header");
  }
  *header = h;
  return Status::OK();
}

Status CheckWalSegmentHeader(const WalLongPageHeader& header, const WalFileName& name,
                             const std::string& file) {
  Result<uint64_t> start = WalSegmentStartLsn(name, header.seg_size);
  if (!start.ok()) return start.status().WithContext("WAL file '" + file + "'");
  if (header.pageaddr != *start) {
    return Status::InvalidArgument("WAL file '" + file + "' starts at LSN " +
                                   FormatLsn(header.pageaddr) + " but its name says " +
                                   FormatLsn(*start));
  }
  if (header.tli > name.tli) {
    return Status::InvalidArgument("WAL file '" + file + "' holds timeline " +
                                   std::to_string(header.tli) + " but its name says timeline " +
                                   std::to_string(name.tli));
  }
  return Status::OK();
}

std::string FormatLsn(uint64_t lsn) {
  char buf[32];
  snprintf(buf, sizeof(buf), "%" PRIX64 "/%" PRIX64, lsn >> 32, lsn & 0xffffffffu);
  return buf;
}

}  // namespace pgbackfs
