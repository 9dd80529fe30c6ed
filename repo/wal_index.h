// The WAL index: what the WAL parser found in archived WAL, kept in the meta column family, so
// that planning a point-in-time recovery, `info` and `verify` never read the WAL again. It answers:
// which record committed (or aborted) xid X, where restore point N is, which commit comes first
// at or after time T, which segments of each timeline are indexed (and which are missing or
// unparseable), the timeline history, and which times each snapshot can be recovered to.
//
// Keys (docs/FORMAT.md, "WAL index"); integers in keys are big-endian, so keys sort by number:
//   walidx/seg/  tli:4 log:4 seg:4       -> WalSegmentRecord   one per indexed segment file
//   walidx/ev/   tli:4 lsn:8             -> WalEvent           commits, aborts, restore points,
//                                                              checkpoints, end-of-recovery, ...
//   walidx/xid/  xid:4 tli:4 lsn:8       -> (empty)            commits and aborts by xid
//   walidx/rp/   name 0x00 tli:4 lsn:8   -> (empty)            restore points by name
//   walidx/cont/ tli:4 resume_lsn:8      -> WalContinuation    a record that continues into the
//                                                              segment starting at resume_lsn
//   walidx/hist/ tli:4                   -> TimelineHistory    a parsed TTTTTTTT.history file
// An event's timeline is the timeline of the file it was read from: the first segment of a new
// timeline repeats its parent's WAL up to the switch point, so those records appear under both.
//
// The index only grows: what a segment's bytes say never changes (the archive is immutable), so
// indexing a segment again writes the same entries. A segment record is replaced only by a
// better one (parsed over failed, complete over ended early). Everything can be rebuilt from the
// archive.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "repo/chunk_tree.h"
#include "repo/kv.h"
#include "repo/snapshot.h"
#include "repo/status.h"
#include "repo/wal_parser.h"

namespace pgbackfs {

class Repository;

inline constexpr std::string_view kWalIndexKeyPrefix = "walidx/";

// Streams a file's bytes, in order and in pieces of any size, into `sink`.
using ByteSink = std::function<Status(std::string_view)>;
using ByteSource = std::function<Status(const ByteSink& sink)>;
// A source over bytes that outlive it.
ByteSource BytesFrom(std::string_view data);
// A source over a stored file, read a few chunks at a time. `reader` must outlive the source.
ByteSource BytesFrom(TreeReader* reader, uint64_t size);
// The bytes of another archived file, by name (NotFound if it is not archived).
using SegmentFetcher = std::function<Result<ByteSource>(const std::string& name)>;

// What the index knows about one segment file.
struct WalSegmentRecord {
  WalSegmentName name;    // from the key
  bool ok = false;        // parsed to its end without error
  bool tolerant = false;  // indexed as a file that may end anywhere (a backup's pg_wal)
  std::string error;      // why it could not be parsed; for tolerant files, why the WAL ended
  WalEnd end = WalEnd::kNone;
  bool continues = false;  // its last record continues into the next segment
  uint64_t seg_size = 0;   // 0 if the first page could not be read
  uint64_t system_identifier = 0;
  uint64_t start_lsn = 0;        // the segment's first byte
  uint64_t first_lsn = 0;        // the first record completed in it (may start in the previous)
  uint64_t last_lsn = 0;         // the last record completed in it
  uint64_t end_lsn = 0;          // the end of its valid WAL
  uint64_t unverified_head = 0;  // bytes of a record from the previous segment not yet checked
  uint64_t records = 0;
  uint32_t commits = 0, aborts = 0;  // COMMIT(_PREPARED) and ABORT(_PREPARED) records
  int64_t first_commit_time = 0, last_commit_time = 0;  // TimestampTz, if commits > 0
  int64_t max_xact_time = 0;   // the latest commit or abort time, if commits + aborts > 0
  uint64_t last_xact_lsn = 0;  // the last commit or abort record (0: none)

  // WAL runs on into the next segment: it ends at the segment's end or with a switch record.
  bool complete() const { return ok && (end == WalEnd::kSegmentEnd || end == WalEnd::kSwitch); }
  uint64_t segment_end() const { return start_lsn + seg_size; }
  std::string FileName() const { return name.ToString(); }

  void EncodeTo(std::string* dst) const;
  static Status DecodeFrom(Decoder* in, WalSegmentRecord* record);  // `name` is left alone
};

// A parsed TTTTTTTT.history file: the ancestors of timeline `tli`, oldest first, each with the
// LSN where the next timeline branched off it.
struct TimelineHistoryEntry {
  uint32_t tli = 0;
  uint64_t switch_lsn = 0;
  std::string reason;
};
struct TimelineHistory {
  uint32_t tli = 0;
  std::vector<TimelineHistoryEntry> parents;

  // Parses the file's text: lines "parentTLI <tab> X/X <tab> reason", '#' comments, blank lines.
  // InvalidArgument naming the file and line on anything else.
  static Status Parse(uint32_t tli, std::string_view content, TimelineHistory* out);
  void EncodeTo(std::string* dst) const;
  static Status DecodeFrom(Decoder* in, TimelineHistory* history);  // `tli` is left alone
};

// A stretch of a timeline's WAL history: WAL of timeline `tli` for LSNs in [begin_lsn, end_lsn).
struct TimelineSpan {
  uint32_t tli = 0;
  uint64_t begin_lsn = 0;
  uint64_t end_lsn = UINT64_MAX;
};

// The segments indexed for one timeline, and what is wrong among them.
struct TimelineSummary {
  uint32_t tli = 0;
  uint64_t segments = 0;
  std::string first_segment, last_segment;
  uint64_t start_lsn = 0;  // the first segment's first byte
  uint64_t end_lsn = 0;    // the end of the last segment's valid WAL
  uint64_t commits = 0, aborts = 0;
  int64_t first_commit_time = 0, last_commit_time = 0;  // if commits > 0
  uint64_t missing_count = 0;           // segment numbers between the first and last not indexed
  std::vector<std::string> missing;     // the first few of them (names)
  std::vector<std::string> failed;      // unparseable segments
  std::vector<std::string> ends_early;  // segments whose WAL stops before their end (no switch)
  static constexpr size_t kMaxListed = 20;
};

// From a snapshot's consistent point to the end of the WAL archived continuously after it, on
// one timeline. Every target time in [start_time, end_time] can be recovered to.
struct RecoveryWindow {
  uint32_t timeline = 0;
  std::string snapshot;     // the earliest snapshot the window starts from
  bool consistent = false;  // false: WAL needed to make the snapshot consistent is missing
  uint64_t start_lsn = 0;   // the snapshot's end_lsn
  int64_t start_time = 0;   // TimestampTz: the latest commit/abort the snapshot's own WAL holds
  uint64_t end_lsn = 0;     // the end of continuously archived WAL
  int64_t end_time = 0;     // TimestampTz of the last commit at or before end_lsn (0: none)
  std::string gap;          // why WAL stops at end_lsn when more is archived after ("" if not)
};

struct WalIndexOptions {
  // See WalParserOptions::tolerant: for files that may end anywhere (a backup's pg_wal copy).
  bool tolerant = false;
};

// A segment parsed as its bytes arrive, for a writer that stores them at the same time (the
// archive), so that its index entries are ready when it commits and the segment is never read
// back. Made by WalIndex::StartSegment, finished by WalIndex::PrepareParsedSegment. Memory: the
// parser's (a page and a bounded record prefix) plus the entries found so far.
// Not thread-safe; the index that made it must outlive it.
class WalSegmentParse {
 public:
  ~WalSegmentParse();
  WalSegmentParse(const WalSegmentParse&) = delete;
  WalSegmentParse& operator=(const WalSegmentParse&) = delete;

  // Parses the next bytes of the file, in order. A parse error is not returned: it is recorded,
  // and the segment record says why, as with PrepareSegment. Errors reading the index (the
  // previous segment's unfinished record) are returned by PrepareParsedSegment.
  void Feed(std::string_view data);

 private:
  friend class WalIndex;
  struct State;
  explicit WalSegmentParse(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

// Thread-safe. IndexSegment and IndexHistory are serialized, so that a segment indexed at the
// same time as its neighbour still finds the record the neighbour leaves unfinished. Callers of
// PrepareSegment serialize it with their own write of the batch.
class WalIndex {
 public:
  // `repo` must outlive the index.
  explicit WalIndex(Repository* repo);
  WalIndex(const WalIndex&) = delete;
  WalIndex& operator=(const WalIndex&) = delete;

  // Lets the index read other archived segments: to finish a record that crosses into a segment
  // indexed before its predecessor, or to get a predecessor's unfinished record.
  void SetSegmentFetcher(SegmentFetcher fetcher) { fetcher_ = std::move(fetcher); }

  // Parses a segment ("000000010000000000000009") and stores what it holds in one write. A parse
  // failure is not an error here: it is recorded (and returned) as a segment record with ok false
  // and the reason. Errors are a bad name, a failing source, or a failing store.
  Result<WalSegmentRecord> IndexSegment(const std::string& name, const ByteSource& source,
                                        const WalIndexOptions& options = {});
  // The same, but the entries go into `batch` for the caller to write, e.g. together with the
  // archive's own record of the file in one synced write.
  Result<WalSegmentRecord> PrepareSegment(const std::string& name, const ByteSource& source,
                                          KvBatch* batch, const WalIndexOptions& options = {});
  // The same in two steps, for a segment whose bytes are being stored: StartSegment before the
  // first byte (InvalidArgument for a bad or .partial name), WalSegmentParse::Feed as they come,
  // then PrepareParsedSegment, which gives the same record and entries as PrepareSegment over
  // the same bytes. While feeding, the parse reads the index (never writes it, so it needs no
  // lock). Only when the index has changed under it in a way that matters (the previous
  // segment's unfinished record, which the parse looked up at its first page, is different by
  // the time it is prepared) is the file read again from `source`.
  Result<std::unique_ptr<WalSegmentParse>> StartSegment(const std::string& name,
                                                        const WalIndexOptions& options = {});
  Result<WalSegmentRecord> PrepareParsedSegment(WalSegmentParse* parse, const ByteSource& source,
                                                KvBatch* batch);
  // Parses and stores "TTTTTTTT.history".
  Status IndexHistory(const std::string& name, std::string_view content);

  // ---- Queries ----
  // Every commit or abort record of top-level transaction `xid`, by timeline then LSN.
  Result<std::vector<WalEvent>> FindXid(uint32_t xid);
  // The restore points named `name`, by timeline then LSN; and the latest one (by time, then
  // timeline, then LSN). NotFound if none.
  Result<std::vector<WalEvent>> FindRestorePoints(const std::string& name);
  Result<WalEvent> FindRestorePoint(const std::string& name);

  // On timeline `tli` (following its history), in WAL order from `from_lsn`: the first commit or
  // abort record whose time is >= `time`, and the last one before it. This is what recovery with
  // recovery_target_time = `time` (inclusive) stops at and after, even when commit times are not
  // monotonic. The search stops at the first segment missing or unparseable.
  struct TimeMatch {
    std::optional<WalEvent> before, at_or_after;
  };
  Result<TimeMatch> FindTime(uint32_t tli, int64_t time, uint64_t from_lsn = 0);

  // The segment record of `name`. NotFound if not indexed.
  Result<WalSegmentRecord> GetSegment(const std::string& name);
  // Every segment record, by timeline then segment number.
  Status ForEachSegment(const std::function<Status(const WalSegmentRecord&)>& fn);
  // Events of file timeline `tli` with LSN in [from_lsn, to_lsn), in LSN order.
  Status ForEachEvent(uint32_t tli, uint64_t from_lsn, uint64_t to_lsn,
                      const std::function<Status(const WalEvent&)>& fn);
  // The history of `tli` (empty parents if none was indexed).
  Result<TimelineHistory> History(uint32_t tli);
  // Which timeline's WAL makes up each stretch of timeline `tli`'s history, oldest first.
  Result<std::vector<TimelineSpan>> TimelinePath(uint32_t tli);
  // One summary per timeline that has segments.
  Result<std::vector<TimelineSummary>> Timelines();
  // The segment size of the indexed WAL (0 if nothing is indexed).
  Result<uint64_t> SegmentSize();
  // Per timeline, the windows of recoverable time given `snapshots` (windows from several
  // snapshots that overlap are merged). Snapshots whose WAL is not on a timeline are skipped for
  // it; a snapshot whose own WAL is missing gives a window with consistent = false.
  Result<std::vector<RecoveryWindow>> RecoverableWindows(
      const std::vector<SnapshotInfo>& snapshots);

 private:
  Result<WalSegmentRecord> Prepare(const std::string& name, const ByteSource& source,
                                   KvBatch* batch, const WalIndexOptions& options,
                                   bool fetch_neighbors);
  Result<std::unique_ptr<WalSegmentParse>> StartParse(const std::string& name,
                                                      const WalIndexOptions& options,
                                                      bool fetch_neighbors);
  // What the parse found, into `batch`, unless the stored record is better.
  Result<WalSegmentRecord> FinishParse(WalSegmentParse* parse, KvBatch* batch);
  Result<std::optional<WalContinuation>> LookupContinuation(uint32_t tli, uint64_t resume_lsn,
                                                            bool fetch_neighbors,
                                                            uint64_t seg_size);
  Result<std::optional<WalSegmentRecord>> GetSegmentAt(uint32_t tli, uint64_t segno,
                                                       uint64_t seg_size);
  Result<std::optional<WalEvent>> GetEvent(uint32_t tli, uint64_t lsn);
  Status ComputeWindow(const std::vector<TimelineSpan>& path, const SnapshotInfo& snap,
                       uint64_t seg_size, RecoveryWindow* window);
  // The first segment number >= `segno` indexed on any timeline of `path`.
  Result<std::optional<uint64_t>> FirstSegmentFrom(const std::vector<TimelineSpan>& path,
                                                   uint64_t segno, uint64_t seg_size);

  Repository* repo_;
  KvStore* kv_;
  SegmentFetcher fetcher_;
  std::mutex write_mu_;  // serializes IndexSegment and IndexHistory
};

// Key builders (docs/FORMAT.md, "WAL index"), for tools and tests.
std::string WalSegmentKey(const WalSegmentName& name);
std::string WalEventKey(uint32_t tli, uint64_t lsn);

}  // namespace pgbackfs
