// A streaming parser for PostgreSQL WAL segments. It is fed one segment's bytes in order, in
// pieces of any size, and holds at most one page plus the part of one record it decodes, whatever
// the segment size. It checks every page header and every record's CRC-32C, follows records
// across page and segment boundaries, and reports the records the WAL index needs: transaction
// commits and aborts, restore points, checkpoints, end-of-recovery, backup end and switch records.
//
// Vocabulary (PostgreSQL's): an LSN is a byte position in the WAL stream of a timeline; a segment
// is a file holding seg_size bytes of it, named TTTTTTTTLLLLLLLLSSSSSSSS (timeline, then the
// segment number split in two); a page (XLOG_BLCKSZ, 8 KiB) starts with a short header, or a long
// one on a segment's first page; records start on 8-byte boundaries and may span pages and
// segments, the continuation announced by XLP_FIRST_IS_CONTRECORD and xlp_rem_len.
//
// The on-disk layouts come from PostgreSQL's headers (access/xlog_internal.h, xlogrecord.h,
// xact.h, catalog/pg_control.h); WalLayout keeps what differs between major versions, selected by
// the page magic.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include "repo/coding.h"
#include "repo/status.h"
#include "repo/wal_format.h"

namespace pgbackfs {

// ---- LSNs, times and file names ----------------------------------------------------------------

// Parses "X/X" (hex). InvalidArgument otherwise.
Result<uint64_t> ParseLsn(std::string_view text);

// PostgreSQL's TimestampTz: microseconds since 2000-01-01 00:00:00 UTC.
inline constexpr int64_t kPgEpochUnixSeconds = 946684800;
// Saturates at TimestampTz's range (about 292,000 years either way), which only damaged input
// leaves (a checkpoint record's time, a snapshot record's stop_time).
inline int64_t UnixSecondsToTimestampTz(int64_t unix_seconds) {
  int64_t ts;
  if (__builtin_sub_overflow(unix_seconds, kPgEpochUnixSeconds, &ts) ||
      __builtin_mul_overflow(ts, 1000000, &ts)) {
    return unix_seconds < 0 ? INT64_MIN : INT64_MAX;
  }
  return ts;
}
inline int64_t TimestampTzToUnixSeconds(int64_t ts) {
  int64_t s = ts / 1000000;
  if (ts % 1000000 < 0) --s;  // floor
  return s + kPgEpochUnixSeconds;
}
// "2026-11-22 02:19:46.038306 UTC" (pg_waldump's form when run with TZ=UTC).
std::string FormatTimestampTz(int64_t ts);
// Parses "YYYY-MM-DD HH:MM:SS[.ffffff][ UTC|+00|Z]" (UTC only) into a TimestampTz.
Result<int64_t> ParseTimestampTz(std::string_view text);

// A segment file name split into its parts. The segment number is log * (2^32 / seg_size) + seg.
struct WalSegmentName {
  uint32_t tli = 0;
  uint32_t log = 0;
  uint32_t seg = 0;

  uint64_t SegNo(uint64_t seg_size) const {
    return uint64_t{log} * ((1ull << 32) / seg_size) + seg;
  }
  std::string ToString() const;  // the 24 hex digits
  static WalSegmentName FromSegNo(uint32_t tli, uint64_t segno, uint64_t seg_size);
};
// Accepts "000000010000000000000009" and "000000010000000000000009.partial" (sets *partial).
// InvalidArgument (naming the file) otherwise.
Status ParseWalSegmentName(std::string_view name, WalSegmentName* out, bool* partial = nullptr);

// ---- Per-version layout ------------------------------------------------------------------------

// What differs between PostgreSQL major versions, for the structures the parser reads. Offsets are
// in bytes from the start of the structure. Add a version by adding a table entry in wal_parser.cc.
struct WalLayout {
  uint16_t magic;              // XLOG_PAGE_MAGIC
  const char* pg_version;      // "15"
  uint32_t short_page_header;  // SizeOfXLogShortPHD
  uint32_t long_page_header;   // SizeOfXLogLongPHD
  uint32_t record_header;      // SizeOfXLogRecord
  uint8_t max_builtin_rmgr;    // RM_MAX_BUILTIN_ID
  uint8_t min_custom_rmgr;     // RM_MIN_CUSTOM_ID (0: none)
  // CheckPoint (pg_control.h)
  uint32_t checkpoint_size, ckpt_redo, ckpt_tli, ckpt_prev_tli, ckpt_next_xid, ckpt_time,
      ckpt_oldest_active_xid;
  // xl_end_of_recovery, xl_restore_point, xl_overwrite_contrecord
  uint32_t end_of_recovery_size, restore_point_size, restore_point_name_len;
  // xact.h: sizeof(xl_xact_stats_item) (0 if the version has no XACT_XINFO_HAS_DROPPED_STATS)
  uint32_t xact_stats_item_size;
  uint8_t bkpimage_has_hole, bkpimage_compressed_mask;  // BKPIMAGE_* in xlogrecord.h
};
// The layout for a page magic, or null for a version this build does not know.
const WalLayout* FindWalLayout(uint16_t magic);

// ---- Events ------------------------------------------------------------------------------------

enum class WalEventType : uint8_t {
  kCommit = 1,
  kAbort = 2,
  kCommitPrepared = 3,
  kAbortPrepared = 4,
  kRestorePoint = 5,
  kCheckpointShutdown = 6,
  kCheckpointOnline = 7,
  kEndOfRecovery = 8,
  kBackupEnd = 9,
  kSwitch = 10,
  kOverwriteContrecord = 11,
};
const char* WalEventTypeName(WalEventType type);  // "COMMIT", "CHECKPOINT_ONLINE", ...

// One record the index keeps. Which fields mean something depends on `type`.
struct WalEvent {
  WalEventType type = WalEventType::kCommit;
  uint32_t tli = 0;  // the timeline of the file the record was read from
  uint64_t lsn = 0;  // where the record starts
  // Just past the record's last byte, counting the page headers inside a record that spans pages.
  // PostgreSQL's EndRecPtr (pg_walinspect's end_lsn) is this MAXALIGNed, and for a switch record
  // the end of its segment.
  uint64_t end_lsn = 0;
  // Transactions: the xid that ended (for *_PREPARED, the prepared transaction's xid).
  uint32_t xid = 0;
  // TimestampTz: commit/abort time, restore point time, end-of-recovery time, checkpoint time
  // (PostgreSQL logs that one in whole seconds), overwrite time.
  int64_t time = 0;
  std::string name;  // restore points
  // Checkpoints: the redo point; backup end: the backup's start point; overwrite contrecord: the
  // LSN of the abandoned record.
  uint64_t ref_lsn = 0;
  uint32_t this_tli = 0, prev_tli = 0;  // checkpoints and end-of-recovery
  uint64_t next_xid = 0;                // checkpoints: the full (epoch-qualified) next xid

  bool is_xact_end() const {
    return type >= WalEventType::kCommit && type <= WalEventType::kAbortPrepared;
  }
  bool is_commit() const {
    return type == WalEventType::kCommit || type == WalEventType::kCommitPrepared;
  }
  // Value encoding (docs/FORMAT.md, "WAL index"); tli and lsn live in the key.
  void EncodeTo(std::string* dst) const;
  static Status DecodeFrom(Decoder* in, WalEvent* event);
  std::string ToString() const;  // one line, for logs and `pgbackfs debug wal-parse`
};

// ---- The parser --------------------------------------------------------------------------------

// How the valid WAL in a file ended.
enum class WalEnd : uint8_t {
  kNone = 0,        // not yet known (or parse failed)
  kSegmentEnd = 1,  // WAL runs to the end of the segment (and maybe on into the next)
  kSwitch = 2,      // an XLOG_SWITCH record: the rest of the segment is padding
  kZeros = 3,       // zeros where the next record would start: nothing more was written
  kStalePage = 4,   // a page left from an earlier use of the file (tolerant mode only)
  kTorn = 5,        // a record cut short or damaged at the end (tolerant mode only)
  kTruncated = 6,   // the file is shorter than a segment (tolerant mode only)
};
const char* WalEndName(WalEnd end);

// What the parser learned about one file.
struct WalParseSummary {
  uint16_t magic = 0;
  uint64_t system_identifier = 0;
  uint64_t seg_size = 0;
  uint32_t page_size = 0;
  uint64_t start_lsn = 0;  // the segment's first byte
  uint64_t first_lsn = 0;  // the first record completed in this file (0 if none)
  uint64_t last_lsn = 0;   // the last record completed in this file
  uint64_t end_lsn = 0;    // end of the valid WAL read (a record continuing on: the file's end)
  WalEnd end = WalEnd::kNone;
  std::string end_detail;        // why WAL ended early (tolerant mode)
  uint64_t unverified_head = 0;  // bytes of a record begun in the previous file that were skipped
  bool continues = false;        // a record continues into the next segment
  uint64_t records = 0;
  uint64_t bytes = 0;  // bytes fed
};

// The state of a record left unfinished at the end of a segment: all the next segment's parser
// needs to finish it and check its CRC. Small: the record header, a running CRC, and the prefix
// kept for decoding (bounded, see kMaxKeptRecordBytes).
struct WalContinuation {
  uint64_t record_lsn = 0;  // where the unfinished record starts
  uint64_t resume_lsn = 0;  // where it continues: the next segment's first byte
  uint64_t seg_size = 0;
  uint64_t prev_lsn = 0;  // the record before it (for the xl_prev check of a split header)
  uint32_t page_tli = 0;  // the timeline of the last page read (page timelines never go down)
  uint32_t total_len = 0;
  uint32_t have_len = 0;  // bytes of the record read so far
  uint32_t crc = 0;       // running CRC-32C over bytes [record header, have_len)
  uint32_t keep_len = 0;  // how much of the record is kept for decoding
  std::string kept;       // bytes [0, min(have_len, keep_len))

  void EncodeTo(std::string* dst) const;
  static Status DecodeFrom(Decoder* in, WalContinuation* c);
};

struct WalParserOptions {
  // For files that may end anywhere: a .partial file, the segment being written when a backup
  // copied pg_wal. A torn or damaged last record, a stale page or a short file then ends the WAL
  // (as for PostgreSQL's recovery) instead of being an error.
  bool tolerant = false;
  // When the first page continues a record from the previous segment: returns that segment's
  // continuation (resume_lsn is this segment's first byte), or nullopt if unknown, in which case
  // the parser skips the record's tail unverified (WalParseSummary::unverified_head). One that
  // could not lead here (have_len and the page headers crossed do not fill the WAL from record_lsn
  // to resume_lsn, or xlp_rem_len disagrees) is Corruption.
  std::function<Result<std::optional<WalContinuation>>(uint64_t resume_lsn)> continuation;
};

// Records of interest are decoded from a kept prefix. Bigger records are still CRC-checked; an
// event whose fields lie beyond the prefix is an error naming the record.
inline constexpr uint32_t kMaxKeptRecordBytes = 64 << 10;
// COMMIT_PREPARED/ABORT_PREPARED keep their whole main data (the prepared xid comes after the
// subtransaction, relation and invalidation lists).
inline constexpr uint32_t kMaxKeptPreparedRecordBytes = 64 << 20;

// Not thread-safe. Usage: construct, Feed() the bytes in order, Finish().
class WalParser {
 public:
  using EventFn = std::function<Status(const WalEvent&)>;
  // `name` is the file's name ("000000010000000000000009" or "….partial"); it fixes the timeline
  // and the segment number. Events go to `on_event` as records are read; an error it returns
  // stops the parse.
  WalParser(std::string name, WalParserOptions options, EventFn on_event);

  // A corrupt page or record is Corruption naming the file and LSN; after any error the parser
  // refuses more input.
  Status Feed(std::string_view data);
  // At the end of the file: checks its size and settles how the WAL ended.
  Status Finish();

  const WalParseSummary& summary() const { return summary_; }
  // After Finish(): the record continuing into the next segment, if any.
  const std::optional<WalContinuation>& continuation() const { return out_continuation_; }
  const std::string& name() const { return name_; }

 private:
  enum class State {
    kStart,     // before the first page
    kRecords,   // between or inside records
    kSkipping,  // skipping the unverified tail of a record from the previous segment
    kDone,      // WAL ended (switch, zeros, tolerant end); the rest of the file is ignored
    kFailed,
  };
  struct Record {
    bool active = false;
    uint64_t lsn = 0;
    uint32_t total_len = 0;
    uint32_t have = 0;
    uint32_t crc = 0;
    uint32_t keep_len = 0;
    bool decode = false;   // a record the index wants (known once its header is complete)
    uint64_t end_lsn = 0;  // set by FinishRecord
    std::string kept;
  };

  Status ProcessPage(const char* page);
  Status CheckPageHeader(const char* page, uint64_t page_lsn, bool* end_of_wal);
  Status StartFirstPage(const char* page);
  // Consumes up to `n` bytes of the current record; sets *done when it completes.
  Status ConsumeRecordBytes(const char* p, uint32_t n, bool* done);
  Status CheckRecordHeader();
  // Why `c` cannot be the record this segment's first page continues ("" if it can).
  std::string CheckContinuation(const WalContinuation& c) const;
  // `end_lsn`: just past the record's last byte, in the page it ends in.
  Status FinishRecord(uint64_t end_lsn);
  Status DecodeEvent(const Record& r, uint8_t rmid, uint8_t info, uint32_t xl_xid);
  // Ends the WAL at `lsn` for a reason that is an error unless the parser is tolerant.
  Status EndOrFail(WalEnd end, uint64_t lsn, const std::string& what);
  Status Fail(uint64_t lsn, const std::string& what);
  Status Fail(const std::string& what);

  std::string name_;
  WalParserOptions options_;
  EventFn on_event_;
  WalSegmentName seg_name_;
  bool partial_file_ = false;
  const WalLayout* layout_ = nullptr;
  State state_ = State::kStart;
  WalParseSummary summary_;
  Status failure_;

  std::string page_buf_;  // a page being assembled from pieces
  uint64_t page_index_ = 0;
  uint32_t page_tli_ = 0;  // the timeline of the last page read
  uint64_t skip_left_ = 0;
  Record rec_;
  uint64_t prev_lsn_ = 0;  // the last record's LSN, for xl_prev checks (0: unknown)
  std::optional<WalContinuation> out_continuation_;
};

// Parses a whole file held in memory (tests, tools).
Status ParseWalFile(const std::string& name, std::string_view data, const WalParserOptions& options,
                    const WalParser::EventFn& on_event, WalParseSummary* summary,
                    std::optional<WalContinuation>* continuation = nullptr);

}  // namespace pgbackfs
