#include "repo/wal_parser.h"

#include <endian.h>

#include <algorithm>
#include <cinttypes>
#include <cstring>
#include <ctime>

#include "repo/crc32c.h"

namespace pgbackfs {
namespace {

// Page header flags (access/xlog_internal.h); stable since 9.x, XLP_FIRST_IS_OVERWRITE_CONTRECORD
// since 14 (and back-patched).
constexpr uint16_t kXlpFirstIsContrecord = 0x0001;
constexpr uint16_t kXlpLongHeader = 0x0002;
constexpr uint16_t kXlpFirstIsOverwriteContrecord = 0x0008;
constexpr uint16_t kXlpAllFlags = 0x000F;

// Page header field offsets (XLogPageHeaderData, XLogLongPageHeaderData).
constexpr size_t kXlpMagic = 0, kXlpInfo = 2, kXlpTli = 4, kXlpPageAddr = 8, kXlpRemLen = 16;
constexpr size_t kXlpSysid = 24, kXlpSegSize = 32, kXlpBlcksz = 36;

// Record header field offsets (XLogRecord).
constexpr size_t kXlTotLen = 0, kXlXid = 4, kXlPrev = 8, kXlInfo = 16, kXlRmid = 17, kXlCrc = 20;

// Record sizes are capped well under 1 GiB by PostgreSQL (MaxAllocSize for the reader's buffer).
constexpr uint32_t kMaxRecordLen = 1u << 30;

// Block references and data headers after the record header (access/xlogrecord.h).
constexpr uint8_t kXlrMaxBlockId = 32;
constexpr uint8_t kXlrBlockIdDataShort = 255;
constexpr uint8_t kXlrBlockIdDataLong = 254;
constexpr uint8_t kXlrBlockIdOrigin = 253;
constexpr uint8_t kXlrBlockIdToplevelXid = 252;
constexpr uint8_t kBkpBlockHasImage = 0x10;
constexpr uint8_t kBkpBlockHasData = 0x20;
constexpr uint8_t kBkpBlockSameRel = 0x80;
constexpr size_t kRelFileNodeSize = 12;

// Resource managers and their record types (access/rmgrlist.h, catalog/pg_control.h, xact.h).
constexpr uint8_t kRmXlog = 0;
constexpr uint8_t kRmXact = 1;
constexpr uint8_t kXlogCheckpointShutdown = 0x00;
constexpr uint8_t kXlogCheckpointOnline = 0x10;
constexpr uint8_t kXlogSwitch = 0x40;
constexpr uint8_t kXlogBackupEnd = 0x50;
constexpr uint8_t kXlogRestorePoint = 0x70;
constexpr uint8_t kXlogEndOfRecovery = 0x90;
constexpr uint8_t kXlogOverwriteContrecord = 0xD0;
constexpr uint8_t kXactOpMask = 0x70;
constexpr uint8_t kXactHasInfo = 0x80;
constexpr uint8_t kXactCommit = 0x00;
constexpr uint8_t kXactAbort = 0x20;
constexpr uint8_t kXactCommitPrepared = 0x30;
constexpr uint8_t kXactAbortPrepared = 0x40;
constexpr uint32_t kXinfoHasDbinfo = 1u << 0;
constexpr uint32_t kXinfoHasSubxacts = 1u << 1;
constexpr uint32_t kXinfoHasRelfilenodes = 1u << 2;
constexpr uint32_t kXinfoHasInvals = 1u << 3;
constexpr uint32_t kXinfoHasTwophase = 1u << 4;
constexpr uint32_t kXinfoHasDroppedStats = 1u << 8;
constexpr size_t kSharedInvalMsgSize = 16;

// PostgreSQL 15. CheckPoint: redo 0, ThisTimeLineID 8, PrevTimeLineID 12, fullPageWrites 16,
// nextXid 24 (FullTransactionId, 8-aligned), ... time 64 (pg_time_t), ... oldestActiveXid 80;
// sizeof 88. xl_end_of_recovery: end_time, ThisTimeLineID, PrevTimeLineID (16 bytes).
// xl_restore_point: rp_time, rp_name[MAXFNAMELEN = 64]. xl_xact_stats_item: kind, dboid, objoid.
constexpr WalLayout kLayouts[] = {
    {
        .magic = 0xD110,
        .pg_version = "15",
        .short_page_header = 24,
        .long_page_header = 40,
        .record_header = 24,
        .max_builtin_rmgr = 21,
        .min_custom_rmgr = 128,
        .checkpoint_size = 88,
        .ckpt_redo = 0,
        .ckpt_tli = 8,
        .ckpt_prev_tli = 12,
        .ckpt_next_xid = 24,
        .ckpt_time = 64,
        .ckpt_oldest_active_xid = 80,
        .end_of_recovery_size = 16,
        .restore_point_size = 72,
        .restore_point_name_len = 64,
        .xact_stats_item_size = 12,
        .bkpimage_has_hole = 0x01,
        .bkpimage_compressed_mask = 0x04 | 0x08 | 0x10,
    },
};

inline uint16_t Load16(const char* p) {
  return static_cast<uint16_t>(static_cast<uint8_t>(p[0]) | static_cast<uint8_t>(p[1]) << 8);
}
inline uint32_t Load32(const char* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return le32toh(v);
}
inline uint64_t Load64(const char* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return le64toh(v);
}
inline uint64_t AlignUp8(uint64_t v) { return (v + 7) & ~uint64_t{7}; }
inline bool IsPowerOfTwo(uint64_t v) { return v && !(v & (v - 1)); }

// The bytes of page headers in the WAL stream between LSNs `from` < `to`: each page that starts
// in (from, to) opens with one, the long one if the page also starts a segment.
uint64_t PageHeaderBytesBetween(uint64_t from, uint64_t to, uint32_t page_size, uint64_t seg_size,
                                const WalLayout& layout) {
  const uint64_t pages = (to - 1) / page_size - from / page_size;
  const uint64_t segments = (to - 1) / seg_size - from / seg_size;
  return pages * layout.short_page_header +
         segments * (layout.long_page_header - layout.short_page_header);
}

bool AllZero(const char* p, size_t n) {
  for (size_t i = 0; i < n; ++i)
    if (p[i]) return false;
  return true;
}

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

bool ParseHex32(std::string_view s, uint32_t* out) {
  if (s.size() != 8) return false;
  uint32_t v = 0;
  for (char c : s) {
    int d = HexDigit(c);
    if (d < 0 || (c >= 'a' && c <= 'f')) return false;  // PostgreSQL writes upper case
    v = v << 4 | static_cast<uint32_t>(d);
  }
  *out = v;
  return true;
}

// How much of a record is kept to decode it; 0 for records that are not decoded.
uint32_t KeepLength(uint8_t rmid, uint8_t info, uint32_t total_len) {
  uint32_t keep = 0;
  if (rmid == kRmXlog) {
    switch (info & 0xF0) {
      case kXlogCheckpointShutdown:
      case kXlogCheckpointOnline:
      case kXlogSwitch:
      case kXlogBackupEnd:
      case kXlogRestorePoint:
      case kXlogEndOfRecovery:
      case kXlogOverwriteContrecord:
        keep = kMaxKeptRecordBytes;
        break;
    }
  } else if (rmid == kRmXact) {
    switch (info & kXactOpMask) {
      case kXactCommit:
      case kXactAbort:
        keep = kMaxKeptRecordBytes;
        break;
      case kXactCommitPrepared:
      case kXactAbortPrepared:
        keep = kMaxKeptPreparedRecordBytes;
        break;
    }
  }
  return std::min(keep, total_len);
}

}  // namespace

// ---- LSNs, times, names ------------------------------------------------------------------------

Result<uint64_t> ParseLsn(std::string_view text) {
  size_t slash = text.find('/');
  auto bad = [&] { return Status::InvalidArgument("invalid LSN '" + std::string(text) + "'"); };
  if (slash == std::string_view::npos || slash == 0 || slash + 1 == text.size() || slash > 8 ||
      text.size() - slash - 1 > 8)
    return bad();
  uint64_t hi = 0, lo = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    if (i == slash) continue;
    int d = HexDigit(text[i]);
    if (d < 0) return bad();
    uint64_t& part = i < slash ? hi : lo;
    part = part << 4 | static_cast<uint64_t>(d);
  }
  return hi << 32 | lo;
}

std::string FormatTimestampTz(int64_t ts) {
  int64_t secs = TimestampTzToUnixSeconds(ts);
  int64_t micros = ts % 1000000;
  if (micros < 0) micros += 1000000;
  time_t t = static_cast<time_t>(secs);
  struct tm tm;
  char date[40];
  if (!gmtime_r(&t, &tm) || strftime(date, sizeof(date), "%Y-%m-%d %H:%M:%S", &tm) == 0) {
    return "(time " + std::to_string(ts) + " out of range)";  // damaged input only
  }
  char buf[64];
  snprintf(buf, sizeof(buf), "%s.%06" PRId64 " UTC", date, micros);
  return buf;
}

Result<int64_t> ParseTimestampTz(std::string_view text) {
  std::string s(text);
  auto bad = [&] {
    return Status::InvalidArgument("invalid time '" + s +
                                   "' (expected 'YYYY-MM-DD HH:MM:SS[.ffffff] UTC')");
  };
  struct tm tm = {};
  int consumed = 0;
  if (sscanf(s.c_str(), "%4d-%2d-%2d%*1[ T]%2d:%2d:%2d%n", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
             &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &consumed) != 6)
    return bad();
  std::string_view rest = std::string_view(s).substr(consumed);
  int64_t micros = 0;
  if (!rest.empty() && rest[0] == '.') {
    rest.remove_prefix(1);
    int digits = 0;
    while (!rest.empty() && rest[0] >= '0' && rest[0] <= '9') {
      if (digits < 6) micros = micros * 10 + (rest[0] - '0');
      ++digits;
      rest.remove_prefix(1);
    }
    if (digits == 0) return bad();
    for (; digits < 6; ++digits) micros *= 10;
  }
  if (!rest.empty() && rest[0] == ' ') rest.remove_prefix(1);
  if (!(rest.empty() || rest == "UTC" || rest == "Z" || rest == "+00" || rest == "+00:00" ||
        rest == "GMT"))
    return bad();
  if (tm.tm_mon < 1 || tm.tm_mon > 12 || tm.tm_mday < 1 || tm.tm_mday > 31 || tm.tm_hour > 23 ||
      tm.tm_min > 59 || tm.tm_sec > 60)
    return bad();
  tm.tm_year -= 1900;
  tm.tm_mon -= 1;
  time_t t = timegm(&tm);
  return UnixSecondsToTimestampTz(static_cast<int64_t>(t)) + micros;
}

std::string WalSegmentName::ToString() const {
  char buf[32];
  snprintf(buf, sizeof(buf), "%08X%08X%08X", tli, log, seg);
  return buf;
}

WalSegmentName WalSegmentName::FromSegNo(uint32_t tli, uint64_t segno, uint64_t seg_size) {
  uint64_t per_id = (1ull << 32) / seg_size;
  return {tli, static_cast<uint32_t>(segno / per_id), static_cast<uint32_t>(segno % per_id)};
}

Status ParseWalSegmentName(std::string_view name, WalSegmentName* out, bool* partial) {
  std::string_view base = name;
  bool is_partial = false;
  constexpr std::string_view kPartial = ".partial";
  if (base.size() == 24 + kPartial.size() && base.substr(24) == kPartial) {
    base = base.substr(0, 24);
    is_partial = true;
  }
  WalSegmentName n;
  if (base.size() != 24 || !ParseHex32(base.substr(0, 8), &n.tli) ||
      !ParseHex32(base.substr(8, 8), &n.log) || !ParseHex32(base.substr(16, 8), &n.seg) ||
      n.tli == 0)
    return Status::InvalidArgument("'" + std::string(name) + "' is not a WAL segment name");
  *out = n;
  if (partial) *partial = is_partial;
  return Status::OK();
}

const WalLayout* FindWalLayout(uint16_t magic) {
  for (const WalLayout& l : kLayouts)
    if (l.magic == magic) return &l;
  return nullptr;
}

// ---- Events ------------------------------------------------------------------------------------

const char* WalEventTypeName(WalEventType type) {
  switch (type) {
    case WalEventType::kCommit:
      return "COMMIT";
    case WalEventType::kAbort:
      return "ABORT";
    case WalEventType::kCommitPrepared:
      return "COMMIT_PREPARED";
    case WalEventType::kAbortPrepared:
      return "ABORT_PREPARED";
    case WalEventType::kRestorePoint:
      return "RESTORE_POINT";
    case WalEventType::kCheckpointShutdown:
      return "CHECKPOINT_SHUTDOWN";
    case WalEventType::kCheckpointOnline:
      return "CHECKPOINT_ONLINE";
    case WalEventType::kEndOfRecovery:
      return "END_OF_RECOVERY";
    case WalEventType::kBackupEnd:
      return "BACKUP_END";
    case WalEventType::kSwitch:
      return "SWITCH";
    case WalEventType::kOverwriteContrecord:
      return "OVERWRITE_CONTRECORD";
  }
  return "UNKNOWN";
}

void WalEvent::EncodeTo(std::string* dst) const {
  dst->push_back(static_cast<char>(type));
  PutFixed64(dst, end_lsn);
  switch (type) {
    case WalEventType::kCommit:
    case WalEventType::kAbort:
    case WalEventType::kCommitPrepared:
    case WalEventType::kAbortPrepared:
      PutFixed32(dst, xid);
      PutFixed64(dst, static_cast<uint64_t>(time));
      break;
    case WalEventType::kRestorePoint:
      PutFixed64(dst, static_cast<uint64_t>(time));
      PutLengthPrefixed(dst, name);
      break;
    case WalEventType::kCheckpointShutdown:
    case WalEventType::kCheckpointOnline:
      PutFixed64(dst, ref_lsn);
      PutFixed32(dst, this_tli);
      PutFixed32(dst, prev_tli);
      PutFixed64(dst, static_cast<uint64_t>(time));
      PutFixed64(dst, next_xid);
      break;
    case WalEventType::kEndOfRecovery:
      PutFixed64(dst, static_cast<uint64_t>(time));
      PutFixed32(dst, this_tli);
      PutFixed32(dst, prev_tli);
      break;
    case WalEventType::kBackupEnd:
      PutFixed64(dst, ref_lsn);
      break;
    case WalEventType::kSwitch:
      break;
    case WalEventType::kOverwriteContrecord:
      PutFixed64(dst, ref_lsn);
      PutFixed64(dst, static_cast<uint64_t>(time));
      break;
  }
}

Status WalEvent::DecodeFrom(Decoder* in, WalEvent* e) {
  uint8_t type;
  uint64_t time = 0;
  std::string_view name;
  bool ok = in->GetFixed8(&type) && in->GetFixed64(&e->end_lsn);
  if (ok) {
    e->type = static_cast<WalEventType>(type);
    switch (e->type) {
      case WalEventType::kCommit:
      case WalEventType::kAbort:
      case WalEventType::kCommitPrepared:
      case WalEventType::kAbortPrepared:
        ok = in->GetFixed32(&e->xid) && in->GetFixed64(&time);
        break;
      case WalEventType::kRestorePoint:
        ok = in->GetFixed64(&time) && in->GetLengthPrefixed(&name);
        break;
      case WalEventType::kCheckpointShutdown:
      case WalEventType::kCheckpointOnline:
        ok = in->GetFixed64(&e->ref_lsn) && in->GetFixed32(&e->this_tli) &&
             in->GetFixed32(&e->prev_tli) && in->GetFixed64(&time) && in->GetFixed64(&e->next_xid);
        break;
      case WalEventType::kEndOfRecovery:
        ok = in->GetFixed64(&time) && in->GetFixed32(&e->this_tli) && in->GetFixed32(&e->prev_tli);
        break;
      case WalEventType::kBackupEnd:
        ok = in->GetFixed64(&e->ref_lsn);
        break;
      case WalEventType::kSwitch:
        break;
      case WalEventType::kOverwriteContrecord:
        ok = in->GetFixed64(&e->ref_lsn) && in->GetFixed64(&time);
        break;
      default:
        return Status::Corruption("WAL index event of unknown type " + std::to_string(type));
    }
  }
  if (!ok) return Status::Corruption("truncated WAL index event");
  e->time = static_cast<int64_t>(time);
  e->name = std::string(name);
  return Status::OK();
}

std::string WalEvent::ToString() const {
  std::string s = WalEventTypeName(type);
  s += " lsn " + FormatLsn(lsn) + " end " + FormatLsn(end_lsn) + " tli " + std::to_string(tli);
  switch (type) {
    case WalEventType::kCommit:
    case WalEventType::kAbort:
    case WalEventType::kCommitPrepared:
    case WalEventType::kAbortPrepared:
      s += " xid " + std::to_string(xid) + " time " + FormatTimestampTz(time);
      break;
    case WalEventType::kRestorePoint:
      s += " name '" + name + "' time " + FormatTimestampTz(time);
      break;
    case WalEventType::kCheckpointShutdown:
    case WalEventType::kCheckpointOnline:
      s += " redo " + FormatLsn(ref_lsn) + " this_tli " + std::to_string(this_tli) + " prev_tli " +
           std::to_string(prev_tli) + " next_xid " + std::to_string(next_xid >> 32) + ":" +
           std::to_string(next_xid & 0xFFFFFFFFu) + " time " + FormatTimestampTz(time);
      break;
    case WalEventType::kEndOfRecovery:
      s += " this_tli " + std::to_string(this_tli) + " prev_tli " + std::to_string(prev_tli) +
           " time " + FormatTimestampTz(time);
      break;
    case WalEventType::kBackupEnd:
      s += " start " + FormatLsn(ref_lsn);
      break;
    case WalEventType::kSwitch:
      break;
    case WalEventType::kOverwriteContrecord:
      s += " overwritten " + FormatLsn(ref_lsn) + " time " + FormatTimestampTz(time);
      break;
  }
  return s;
}

const char* WalEndName(WalEnd end) {
  switch (end) {
    case WalEnd::kNone:
      return "none";
    case WalEnd::kSegmentEnd:
      return "segment-end";
    case WalEnd::kSwitch:
      return "switch";
    case WalEnd::kZeros:
      return "zeros";
    case WalEnd::kStalePage:
      return "stale-page";
    case WalEnd::kTorn:
      return "torn-record";
    case WalEnd::kTruncated:
      return "truncated";
  }
  return "unknown";
}

void WalContinuation::EncodeTo(std::string* dst) const {
  dst->push_back(1);  // format of this record
  PutFixed64(dst, record_lsn);
  PutFixed64(dst, resume_lsn);
  PutFixed64(dst, seg_size);
  PutFixed64(dst, prev_lsn);
  PutFixed32(dst, page_tli);
  PutFixed32(dst, total_len);
  PutFixed32(dst, have_len);
  PutFixed32(dst, crc);
  PutFixed32(dst, keep_len);
  PutLengthPrefixed(dst, kept);
}

Status WalContinuation::DecodeFrom(Decoder* in, WalContinuation* c) {
  uint8_t format;
  std::string_view kept;
  if (!in->GetFixed8(&format) || format != 1 || !in->GetFixed64(&c->record_lsn) ||
      !in->GetFixed64(&c->resume_lsn) || !in->GetFixed64(&c->seg_size) ||
      !in->GetFixed64(&c->prev_lsn) || !in->GetFixed32(&c->page_tli) ||
      !in->GetFixed32(&c->total_len) || !in->GetFixed32(&c->have_len) || !in->GetFixed32(&c->crc) ||
      !in->GetFixed32(&c->keep_len) || !in->GetLengthPrefixed(&kept))
    return Status::Corruption("bad WAL continuation record");
  c->kept = std::string(kept);
  if (c->have_len >= c->total_len || c->kept.size() > c->keep_len ||
      c->kept.size() != std::min(c->have_len, c->keep_len))
    return Status::Corruption("inconsistent WAL continuation record");
  return Status::OK();
}

// ---- The parser --------------------------------------------------------------------------------

WalParser::WalParser(std::string name, WalParserOptions options, EventFn on_event)
    : name_(std::move(name)), options_(std::move(options)), on_event_(std::move(on_event)) {
  Status s = ParseWalSegmentName(name_, &seg_name_, &partial_file_);
  if (!s.ok()) {
    failure_ = s;
    state_ = State::kFailed;
  }
}

Status WalParser::Fail(uint64_t lsn, const std::string& what) {
  return Fail("at " + FormatLsn(lsn) + ": " + what);
}

Status WalParser::Fail(const std::string& what) {
  failure_ = Status::Corruption("WAL segment '" + name_ + "': " + what);
  state_ = State::kFailed;
  return failure_;
}

Status WalParser::EndOrFail(WalEnd end, uint64_t lsn, const std::string& what) {
  if (!options_.tolerant) return Fail(lsn, what);
  summary_.end = end;
  summary_.end_detail = "at " + FormatLsn(lsn) + ": " + what;
  state_ = State::kDone;
  rec_.active = false;
  return Status::OK();
}

Status WalParser::Feed(std::string_view data) {
  if (state_ == State::kFailed) return failure_;
  summary_.bytes += data.size();
  while (!data.empty() && state_ != State::kDone) {
    if (state_ == State::kStart) {
      // The first page: its magic selects the layout, its long header says how big a page is.
      size_t want = 2;
      if (page_buf_.size() >= 2) {
        const WalLayout* l = FindWalLayout(Load16(page_buf_.data()));
        if (l) want = l->long_page_header;
      }
      if (page_buf_.size() < want) {
        size_t take = std::min(data.size(), want - page_buf_.size());
        page_buf_.append(data.substr(0, take));
        data.remove_prefix(take);
        continue;
      }
      RETURN_IF_ERROR(StartFirstPage(page_buf_.data()));
      continue;
    }
    const uint32_t ps = summary_.page_size;
    if (page_buf_.empty() && data.size() >= ps) {
      RETURN_IF_ERROR(ProcessPage(data.data()));
      data.remove_prefix(ps);
      continue;
    }
    size_t take = std::min<size_t>(data.size(), ps - page_buf_.size());
    page_buf_.append(data.substr(0, take));
    data.remove_prefix(take);
    if (page_buf_.size() == ps) {
      RETURN_IF_ERROR(ProcessPage(page_buf_.data()));
      page_buf_.clear();
    }
  }
  return Status::OK();
}

Status WalParser::StartFirstPage(const char* page) {
  uint16_t magic = Load16(page + kXlpMagic);
  layout_ = FindWalLayout(magic);
  if (!layout_) {
    if (magic == 0) {
      summary_.end = WalEnd::kZeros;
      if (!options_.tolerant) return Fail("the file starts with zeros, not a WAL page header");
      summary_.end_detail = "the file starts with zeros";
      state_ = State::kDone;
      return Status::OK();
    }
    char buf[8];
    snprintf(buf, sizeof(buf), "%04X", magic);
    return Fail(std::string("unknown WAL page magic 0x") + buf +
                " (not a WAL file, or from a PostgreSQL version this build does not read)");
  }
  summary_.magic = magic;
  uint16_t info = Load16(page + kXlpInfo);
  if (!(info & kXlpLongHeader)) return Fail("the first page has no long header");
  summary_.system_identifier = Load64(page + kXlpSysid);
  uint64_t seg_size = Load32(page + kXlpSegSize);
  uint32_t blcksz = Load32(page + kXlpBlcksz);
  if (!IsPowerOfTwo(seg_size) || seg_size < (1u << 20) || seg_size > (1u << 30))
    return Fail("invalid segment size " + std::to_string(seg_size) + " in the long page header");
  if (!IsPowerOfTwo(blcksz) || blcksz < 1024 || blcksz > 65536 ||
      blcksz < layout_->long_page_header)
    return Fail("invalid page size " + std::to_string(blcksz) + " in the long page header");
  if (seg_name_.seg >= (1ull << 32) / seg_size)
    return Fail("the name does not fit a segment size of " + std::to_string(seg_size));
  summary_.seg_size = seg_size;
  summary_.page_size = blcksz;
  summary_.start_lsn = seg_name_.SegNo(seg_size) * seg_size;
  summary_.end_lsn = summary_.start_lsn;
  page_tli_ = 0;
  state_ = State::kRecords;
  return Status::OK();
}

Status WalParser::CheckPageHeader(const char* page, uint64_t page_lsn, bool* end_of_wal) {
  *end_of_wal = false;
  const uint32_t ps = summary_.page_size;
  bool mid_record = rec_.active || state_ == State::kSkipping;
  uint16_t magic = Load16(page + kXlpMagic);
  if (magic == 0 && AllZero(page, ps)) {
    // Never written. Between records this is where the WAL ends; inside one, it was cut short.
    if (mid_record) {
      RETURN_IF_ERROR(
          EndOrFail(WalEnd::kTorn, page_lsn,
                    "the record at " + FormatLsn(rec_.lsn) + " continues into a zero page"));
    } else {
      summary_.end = WalEnd::kZeros;
      state_ = State::kDone;
    }
    *end_of_wal = true;
    return Status::OK();
  }
  if (magic != layout_->magic) {
    char buf[8];
    snprintf(buf, sizeof(buf), "%04X", magic);
    return Fail(page_lsn, std::string("invalid page magic 0x") + buf);
  }
  uint16_t info = Load16(page + kXlpInfo);
  if (info & ~kXlpAllFlags) return Fail(page_lsn, "invalid page info bits " + std::to_string(info));
  if (page_index_ > 0 && (info & kXlpLongHeader))
    return Fail(page_lsn, "unexpected long page header");
  uint64_t addr = Load64(page + kXlpPageAddr);
  if (addr != page_lsn) {
    // Left from an earlier use of a recycled file: nothing was written here in this cycle.
    RETURN_IF_ERROR(
        EndOrFail(WalEnd::kStalePage, page_lsn, "unexpected page address " + FormatLsn(addr)));
    *end_of_wal = true;
    return Status::OK();
  }
  uint32_t tli = Load32(page + kXlpTli);
  if (tli == 0 || tli > seg_name_.tli)
    return Fail(page_lsn, "page timeline " + std::to_string(tli) +
                              " is not in the file's timeline " + std::to_string(seg_name_.tli));
  if (tli < page_tli_) {
    RETURN_IF_ERROR(EndOrFail(WalEnd::kStalePage, page_lsn,
                              "out-of-sequence page timeline " + std::to_string(tli) + " after " +
                                  std::to_string(page_tli_)));
    *end_of_wal = true;
    return Status::OK();
  }
  page_tli_ = tli;
  return Status::OK();
}

Status WalParser::ProcessPage(const char* page) {
  const uint32_t ps = summary_.page_size;
  const uint64_t page_lsn = summary_.start_lsn + page_index_ * ps;
  if (state_ == State::kDone) {
    ++page_index_;
    return Status::OK();
  }
  bool end_of_wal;
  RETURN_IF_ERROR(CheckPageHeader(page, page_lsn, &end_of_wal));
  if (end_of_wal) {
    ++page_index_;
    return Status::OK();
  }
  const uint16_t info = Load16(page + kXlpInfo);
  const uint32_t rem_len = Load32(page + kXlpRemLen);
  uint32_t pos = (info & kXlpLongHeader) ? layout_->long_page_header : layout_->short_page_header;

  if (page_index_ == 0) {
    // Does the previous segment end inside a record that continues here?
    std::optional<WalContinuation> cont;
    if (options_.continuation) {
      auto c = options_.continuation(summary_.start_lsn);
      if (!c.ok()) return c.status();
      cont = std::move(c).value();
    }
    if (cont && (info & kXlpFirstIsContrecord)) {
      std::string why = CheckContinuation(*cont);
      if (!why.empty())
        return Fail(page_lsn, "the previous segment's unfinished record at " +
                                  FormatLsn(cont->record_lsn) + " does not lead here: " + why);
      rec_.active = true;
      rec_.lsn = cont->record_lsn;
      rec_.total_len = cont->total_len;
      rec_.have = cont->have_len;
      rec_.crc = cont->crc;
      rec_.keep_len = cont->keep_len;
      rec_.kept = std::move(cont->kept);
      rec_.decode = false;
      if (rec_.have >= layout_->record_header) {
        const char* h = rec_.kept.data();
        rec_.decode = KeepLength(static_cast<uint8_t>(h[kXlRmid]), static_cast<uint8_t>(h[kXlInfo]),
                                 rec_.total_len) != 0;
      }
      prev_lsn_ = cont->prev_lsn;
    } else if (cont && !(info & kXlpFirstIsOverwriteContrecord)) {
      return Fail(page_lsn, "the previous segment ends inside the record at " +
                                FormatLsn(cont->record_lsn) +
                                ", but this segment does not continue it");
    } else if (!cont && (info & kXlpFirstIsContrecord)) {
      state_ = State::kSkipping;
      skip_left_ = rem_len;
    }
  }

  if (rec_.active) {
    if (!(info & kXlpFirstIsContrecord)) {
      if (!(info & kXlpFirstIsOverwriteContrecord)) {
        RETURN_IF_ERROR(EndOrFail(WalEnd::kTorn, page_lsn,
                                  "the record at " + FormatLsn(rec_.lsn) +
                                      " is not continued (no XLP_FIRST_IS_CONTRECORD)"));
        ++page_index_;
        return Status::OK();
      }
      // After a crash the unfinished record was abandoned, and new WAL starts here.
      rec_.active = false;
      prev_lsn_ = 0;
    } else {
      if (rem_len != rec_.total_len - rec_.have)
        return Fail(page_lsn, "xlp_rem_len " + std::to_string(rem_len) + " does not match the " +
                                  std::to_string(rec_.total_len - rec_.have) +
                                  " bytes left of the record at " + FormatLsn(rec_.lsn));
      uint32_t n = std::min(rem_len, ps - pos);
      bool done;
      RETURN_IF_ERROR(ConsumeRecordBytes(page + pos, n, &done));
      pos += n;
      if (done) {
        RETURN_IF_ERROR(FinishRecord(page_lsn + pos));
        pos = static_cast<uint32_t>(AlignUp8(pos));
      }
    }
  } else if (state_ == State::kSkipping) {
    if (!(info & kXlpFirstIsContrecord) || rem_len != skip_left_)
      return Fail(page_lsn, "broken continuation of a record from the previous segment");
    uint32_t n = static_cast<uint32_t>(std::min<uint64_t>(skip_left_, ps - pos));
    skip_left_ -= n;
    summary_.unverified_head += n;
    pos += n;
    if (skip_left_ == 0) {
      state_ = State::kRecords;
      pos = static_cast<uint32_t>(AlignUp8(pos));
    }
  } else if (info & kXlpFirstIsContrecord) {
    return Fail(page_lsn, "unexpected XLP_FIRST_IS_CONTRECORD: no record is unfinished");
  }

  while (state_ == State::kRecords && pos < ps) {
    if (!rec_.active) {
      const uint64_t lsn = page_lsn + pos;
      const uint32_t total_len = Load32(page + pos + kXlTotLen);
      if (total_len == 0) {
        // Nothing was written here: the end of the WAL.
        summary_.end = WalEnd::kZeros;
        state_ = State::kDone;
        break;
      }
      if (total_len < layout_->record_header || total_len > kMaxRecordLen) {
        RETURN_IF_ERROR(
            EndOrFail(WalEnd::kTorn, lsn, "invalid record length " + std::to_string(total_len)));
        break;
      }
      rec_.active = true;
      rec_.lsn = lsn;
      rec_.total_len = total_len;
      rec_.have = 0;
      rec_.crc = kCrc32cInit;
      rec_.keep_len = layout_->record_header;
      rec_.decode = false;
      rec_.kept.clear();
    }
    uint32_t n = std::min(rec_.total_len - rec_.have, ps - pos);
    bool done;
    RETURN_IF_ERROR(ConsumeRecordBytes(page + pos, n, &done));
    if (state_ != State::kRecords) break;
    pos += n;
    if (!done) break;
    RETURN_IF_ERROR(FinishRecord(page_lsn + pos));
    pos = static_cast<uint32_t>(AlignUp8(pos));
  }
  ++page_index_;
  return Status::OK();
}

Status WalParser::ConsumeRecordBytes(const char* p, uint32_t n, bool* done) {
  *done = false;
  const uint32_t header = layout_->record_header;
  uint32_t i = 0;
  if (rec_.have < header) {
    i = std::min(n, header - rec_.have);
    rec_.kept.append(p, i);
    rec_.have += i;
    if (rec_.have == header) {
      RETURN_IF_ERROR(CheckRecordHeader());
      if (state_ != State::kRecords) return Status::OK();
    }
  }
  if (i < n) {
    uint32_t m = n - i;
    rec_.crc = Crc32cExtend(rec_.crc, p + i, m);
    if (rec_.kept.size() < rec_.keep_len)
      rec_.kept.append(p + i, std::min<size_t>(m, rec_.keep_len - rec_.kept.size()));
    rec_.have += m;
  }
  *done = rec_.have == rec_.total_len;
  return Status::OK();
}

Status WalParser::CheckRecordHeader() {
  const char* h = rec_.kept.data();
  const uint8_t rmid = static_cast<uint8_t>(h[kXlRmid]);
  const uint8_t info = static_cast<uint8_t>(h[kXlInfo]);
  if (rmid > layout_->max_builtin_rmgr &&
      (layout_->min_custom_rmgr == 0 || rmid < layout_->min_custom_rmgr))
    return EndOrFail(WalEnd::kTorn, rec_.lsn,
                     "invalid resource manager ID " + std::to_string(rmid));
  const uint64_t prev = Load64(h + kXlPrev);
  if (prev_lsn_ != 0 && prev != prev_lsn_)
    return EndOrFail(WalEnd::kTorn, rec_.lsn,
                     "record with incorrect prev-link " + FormatLsn(prev) +
                         " (the previous record is at " + FormatLsn(prev_lsn_) + ")");
  uint32_t keep = KeepLength(rmid, info, rec_.total_len);
  rec_.decode = keep != 0;
  rec_.keep_len = std::max(keep, layout_->record_header);
  return Status::OK();
}

// The continuation comes from the WAL index. Damaged, it could place the record anywhere, and
// the record's start and end would then be wrong in the index; so its geometry must be the one
// the previous segment's parser could have left.
std::string WalParser::CheckContinuation(const WalContinuation& c) const {
  const uint64_t start = summary_.start_lsn;
  const uint32_t ps = summary_.page_size;
  if (c.resume_lsn != start) return "it resumes at " + FormatLsn(c.resume_lsn);
  if (c.seg_size != summary_.seg_size) return "its segment size is " + std::to_string(c.seg_size);
  if (c.page_tli > page_tli_)
    return "its page timeline " + std::to_string(c.page_tli) + " is later than this page's";
  if (c.total_len < layout_->record_header || c.total_len > kMaxRecordLen ||
      c.have_len >= c.total_len)
    return "it has " + std::to_string(c.have_len) + " of " + std::to_string(c.total_len) + " bytes";
  if (c.kept.size() < std::min(c.have_len, layout_->record_header)) return "its header is not kept";
  // Records start 8-byte aligned, after their page's header, and this one before this segment.
  const uint32_t header =
      c.record_lsn % c.seg_size < ps ? layout_->long_page_header : layout_->short_page_header;
  if (c.record_lsn >= start || c.record_lsn % 8 != 0 || c.record_lsn % ps < header)
    return "no record can start there";
  // It filled the WAL from its start to this segment: have_len bytes of it, and the header of
  // every page it ran into.
  const uint64_t headers = PageHeaderBytesBetween(c.record_lsn, start, ps, c.seg_size, *layout_);
  if (start - c.record_lsn != c.have_len + headers)
    return std::to_string(c.have_len) + " bytes of it and " + std::to_string(headers) +
           " bytes of page headers do not fill the " + std::to_string(start - c.record_lsn) +
           " bytes before this segment";
  return "";
}

Status WalParser::FinishRecord(uint64_t end_lsn) {
  const char* h = rec_.kept.data();
  uint32_t crc = Crc32cFinish(Crc32cExtend(rec_.crc, h, kXlCrc));
  uint32_t stored = Load32(h + kXlCrc);
#ifdef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION
  stored = crc;  // fuzz builds only (tests/fuzz/fuzz_wal_segment.cc): reach what follows
#endif
  if (crc != stored) {
    char buf[64];
    snprintf(buf, sizeof(buf), "incorrect record CRC (stored %08X, computed %08X)", stored, crc);
    return EndOrFail(WalEnd::kTorn, rec_.lsn, buf);
  }
  ++summary_.records;
  if (summary_.first_lsn == 0) summary_.first_lsn = rec_.lsn;
  summary_.last_lsn = rec_.lsn;
  // Not lsn + total_len: a record that spans pages has their headers inside it.
  rec_.end_lsn = end_lsn;
  summary_.end_lsn = end_lsn;
  prev_lsn_ = rec_.lsn;
  rec_.active = false;
  const uint8_t rmid = static_cast<uint8_t>(h[kXlRmid]);
  const uint8_t info = static_cast<uint8_t>(h[kXlInfo]);
  if (rec_.decode) RETURN_IF_ERROR(DecodeEvent(rec_, rmid, info, Load32(h + kXlXid)));
  if (rmid == kRmXlog && (info & 0xF0) == kXlogSwitch) {
    summary_.end = WalEnd::kSwitch;
    state_ = State::kDone;
  }
  if (rec_.kept.capacity() > (1u << 20)) std::string().swap(rec_.kept);
  return Status::OK();
}

Status WalParser::DecodeEvent(const Record& r, uint8_t rmid, uint8_t info, uint32_t xl_xid) {
  const std::string_view rec(r.kept);
  const bool whole = rec.size() == r.total_len;
  auto too_big = [&] {
    failure_ = Status::NotSupported("WAL segment '" + name_ + "': at " + FormatLsn(r.lsn) +
                                    ": a record of " + std::to_string(r.total_len) +
                                    " bytes is too large to decode");
    state_ = State::kFailed;
    return failure_;
  };
  auto bad = [&](const std::string& what) {
    if (!whole) return too_big();
    return Fail(r.lsn, what);
  };

  // Walk the block headers to find the main data (it is the record's last main_len bytes).
  size_t pos = layout_->record_header;
  uint64_t remaining = r.total_len - pos;
  uint64_t datatotal = 0;
  uint32_t main_len = 0;
  auto need = [&](size_t n) { return pos + n <= rec.size() && remaining >= n; };
  auto take = [&](size_t n) {
    pos += n;
    remaining -= n;
  };
  while (remaining > datatotal) {
    if (!need(1)) return bad("truncated block header");
    uint8_t id = static_cast<uint8_t>(rec[pos]);
    take(1);
    if (id == kXlrBlockIdDataShort) {
      if (!need(1)) return bad("truncated data header");
      main_len = static_cast<uint8_t>(rec[pos]);
      take(1);
      datatotal += main_len;
      break;
    } else if (id == kXlrBlockIdDataLong) {
      if (!need(4)) return bad("truncated data header");
      main_len = Load32(rec.data() + pos);
      take(4);
      datatotal += main_len;
      break;
    } else if (id == kXlrBlockIdOrigin) {
      if (!need(2)) return bad("truncated origin");
      take(2);
    } else if (id == kXlrBlockIdToplevelXid) {
      if (!need(4)) return bad("truncated top-level xid");
      take(4);
    } else if (id <= kXlrMaxBlockId) {
      if (!need(3)) return bad("truncated block header");
      uint8_t fork_flags = static_cast<uint8_t>(rec[pos]);
      uint16_t data_len = Load16(rec.data() + pos + 1);
      take(3);
      if (((fork_flags & kBkpBlockHasData) != 0) != (data_len != 0))
        return bad("inconsistent block data length");
      datatotal += data_len;
      if (fork_flags & kBkpBlockHasImage) {
        if (!need(5)) return bad("truncated block image header");
        uint16_t bimg_len = Load16(rec.data() + pos);
        uint8_t bimg_info = static_cast<uint8_t>(rec[pos + 4]);
        take(5);
        if ((bimg_info & layout_->bkpimage_has_hole) &&
            (bimg_info & layout_->bkpimage_compressed_mask)) {
          if (!need(2)) return bad("truncated block compression header");
          take(2);
        }
        datatotal += bimg_len;
      }
      if (!(fork_flags & kBkpBlockSameRel)) {
        if (!need(kRelFileNodeSize)) return bad("truncated block relation");
        take(kRelFileNodeSize);
      }
      if (!need(4)) return bad("truncated block number");
      take(4);
    } else {
      return bad("invalid block id " + std::to_string(id));
    }
  }
  if (remaining != datatotal) return bad("record lengths do not add up");
  const size_t main_off = r.total_len - main_len;
  std::string_view main = main_off <= rec.size() ? rec.substr(main_off) : std::string_view();
  const bool main_whole = main_off + main_len <= rec.size();
  auto short_main = [&](size_t n) -> Status {
    if (!main_whole && main.size() < n) return too_big();
    return Fail(r.lsn, "main data of " + std::to_string(main_len) + " bytes, expected " +
                           std::to_string(n));
  };

  WalEvent e;
  e.tli = seg_name_.tli;
  e.lsn = r.lsn;
  e.end_lsn = r.end_lsn;
  if (rmid == kRmXlog) {
    switch (info & 0xF0) {
      case kXlogCheckpointShutdown:
      case kXlogCheckpointOnline: {
        if (main_len < layout_->checkpoint_size || main.size() < layout_->checkpoint_size)
          return short_main(layout_->checkpoint_size);
        e.type = (info & 0xF0) == kXlogCheckpointOnline ? WalEventType::kCheckpointOnline
                                                        : WalEventType::kCheckpointShutdown;
        e.ref_lsn = Load64(main.data() + layout_->ckpt_redo);
        e.this_tli = Load32(main.data() + layout_->ckpt_tli);
        e.prev_tli = Load32(main.data() + layout_->ckpt_prev_tli);
        e.next_xid = Load64(main.data() + layout_->ckpt_next_xid);
        e.time = UnixSecondsToTimestampTz(
            static_cast<int64_t>(Load64(main.data() + layout_->ckpt_time)));
        break;
      }
      case kXlogSwitch:
        e.type = WalEventType::kSwitch;
        break;
      case kXlogBackupEnd:
        if (main_len < 8 || main.size() < 8) return short_main(8);
        e.type = WalEventType::kBackupEnd;
        e.ref_lsn = Load64(main.data());
        break;
      case kXlogRestorePoint: {
        if (main_len < layout_->restore_point_size || main.size() < layout_->restore_point_size)
          return short_main(layout_->restore_point_size);
        e.type = WalEventType::kRestorePoint;
        e.time = static_cast<int64_t>(Load64(main.data()));
        std::string_view n = main.substr(8, layout_->restore_point_name_len);
        e.name = std::string(n.substr(0, n.find('\0')));
        break;
      }
      case kXlogEndOfRecovery:
        if (main_len < layout_->end_of_recovery_size || main.size() < layout_->end_of_recovery_size)
          return short_main(layout_->end_of_recovery_size);
        e.type = WalEventType::kEndOfRecovery;
        e.time = static_cast<int64_t>(Load64(main.data()));
        e.this_tli = Load32(main.data() + 8);
        e.prev_tli = Load32(main.data() + 12);
        break;
      case kXlogOverwriteContrecord:
        if (main_len < 16 || main.size() < 16) return short_main(16);
        e.type = WalEventType::kOverwriteContrecord;
        e.ref_lsn = Load64(main.data());
        e.time = static_cast<int64_t>(Load64(main.data() + 8));
        break;
      default:
        return Status::OK();
    }
  } else if (rmid == kRmXact) {
    const uint8_t op = info & kXactOpMask;
    if (main_len < 8 || main.size() < 8) return short_main(8);
    e.time = static_cast<int64_t>(Load64(main.data()));
    e.xid = xl_xid;
    switch (op) {
      case kXactCommit:
        e.type = WalEventType::kCommit;
        break;
      case kXactAbort:
        e.type = WalEventType::kAbort;
        break;
      case kXactCommitPrepared:
      case kXactAbortPrepared: {
        const bool commit = op == kXactCommitPrepared;
        e.type = commit ? WalEventType::kCommitPrepared : WalEventType::kAbortPrepared;
        // xl_xact_commit / xl_xact_abort, then the parts xinfo announces, in this order.
        Decoder d(main.substr(0, std::min<size_t>(main.size(), main_len)));
        uint64_t skip;
        uint32_t xinfo = 0;
        bool ok = d.GetFixed64(&skip);
        if (ok && (info & kXactHasInfo)) ok = d.GetFixed32(&xinfo);
        std::string_view unused;
        auto skip_list = [&](size_t item) {
          uint32_t n;
          if (!ok || !d.GetFixed32(&n) || static_cast<int32_t>(n) < 0) return false;
          return d.GetBytes(static_cast<size_t>(n) * item, &unused);
        };
        if (ok && (xinfo & kXinfoHasDbinfo)) ok = d.GetBytes(8, &unused);
        if (ok && (xinfo & kXinfoHasSubxacts)) ok = skip_list(4);
        if (ok && (xinfo & kXinfoHasRelfilenodes)) ok = skip_list(kRelFileNodeSize);
        if (ok && (xinfo & kXinfoHasDroppedStats) && layout_->xact_stats_item_size)
          ok = skip_list(layout_->xact_stats_item_size);
        if (ok && commit && (xinfo & kXinfoHasInvals)) ok = skip_list(kSharedInvalMsgSize);
        if (ok && !(xinfo & kXinfoHasTwophase))
          return Fail(r.lsn, std::string(WalEventTypeName(e.type)) + " without a prepared xid");
        if (!ok || !d.GetFixed32(&e.xid)) {
          if (!main_whole) return too_big();
          return Fail(r.lsn, "truncated " + std::string(WalEventTypeName(e.type)) + " record");
        }
        break;
      }
      default:
        return Status::OK();
    }
  } else {
    return Status::OK();
  }
  return on_event_ ? on_event_(e) : Status::OK();
}

Status WalParser::Finish() {
  if (state_ == State::kFailed) return failure_;
  if (state_ == State::kStart)
    return Fail("the file is " + std::to_string(summary_.bytes) +
                " bytes, too short for a WAL page header");
  if (summary_.seg_size == 0) {
    // The file started with zeros (tolerant mode): nothing to read.
    return Status::OK();
  }
  const uint64_t seg_end = summary_.start_lsn + summary_.seg_size;
  if (summary_.bytes != summary_.seg_size) {
    std::string what = "the file is " + std::to_string(summary_.bytes) +
                       " bytes, but the segment size is " + std::to_string(summary_.seg_size);
    if (!options_.tolerant || summary_.bytes > summary_.seg_size) return Fail(what);
    if (state_ != State::kDone) {
      summary_.end = WalEnd::kTruncated;
      summary_.end_detail = what;
      state_ = State::kDone;
      rec_.active = false;
    }
    return Status::OK();
  }
  if (state_ == State::kDone) return Status::OK();
  summary_.end = WalEnd::kSegmentEnd;
  summary_.end_lsn = seg_end;
  if (state_ == State::kSkipping) {
    summary_.continues = true;  // a record longer than the segment, begun before it
  } else if (rec_.active) {
    summary_.continues = true;
    WalContinuation c;
    c.record_lsn = rec_.lsn;
    c.resume_lsn = seg_end;
    c.seg_size = summary_.seg_size;
    c.prev_lsn = prev_lsn_;
    c.page_tli = page_tli_;
    c.total_len = rec_.total_len;
    c.have_len = rec_.have;
    c.crc = rec_.crc;
    c.keep_len = rec_.keep_len;
    c.kept = rec_.kept;
    out_continuation_ = std::move(c);
  }
  state_ = State::kDone;
  return Status::OK();
}

Status ParseWalFile(const std::string& name, std::string_view data, const WalParserOptions& options,
                    const WalParser::EventFn& on_event, WalParseSummary* summary,
                    std::optional<WalContinuation>* continuation) {
  WalParser parser(name, options, on_event);
  Status s = parser.Feed(data);
  if (s.ok()) s = parser.Finish();
  if (summary) *summary = parser.summary();
  if (continuation) *continuation = parser.continuation();
  return s;
}

}  // namespace pgbackfs
