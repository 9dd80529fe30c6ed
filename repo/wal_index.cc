#include "repo/wal_index.h"

#include <algorithm>
#include <set>

#include "repo/coding.h"
#include "repo/repository.h"

namespace pgbackfs {
namespace {

constexpr std::string_view kSegPrefix = "walidx/seg/";
constexpr std::string_view kEventPrefix = "walidx/ev/";
constexpr std::string_view kXidPrefix = "walidx/xid/";
constexpr std::string_view kRestorePointPrefix = "walidx/rp/";
constexpr std::string_view kContPrefix = "walidx/cont/";
constexpr std::string_view kHistoryPrefix = "walidx/hist/";

// Pieces a stored file is read in: big enough that the parser reads whole pages in place.
constexpr uint64_t kReadPiece = 1 << 20;

bool StartsWith(std::string_view s, std::string_view prefix) {
  return s.size() >= prefix.size() && s.substr(0, prefix.size()) == prefix;
}

std::string ContKey(uint32_t tli, uint64_t resume_lsn) {
  std::string k(kContPrefix);
  PutBigEndian32(&k, tli);
  PutBigEndian64(&k, resume_lsn);
  return k;
}
std::string XidKey(uint32_t xid, uint32_t tli, uint64_t lsn) {
  std::string k(kXidPrefix);
  PutBigEndian32(&k, xid);
  PutBigEndian32(&k, tli);
  PutBigEndian64(&k, lsn);
  return k;
}
std::string RestorePointKey(const std::string& name, uint32_t tli, uint64_t lsn) {
  std::string k(kRestorePointPrefix);
  k += name;
  k.push_back('\0');
  PutBigEndian32(&k, tli);
  PutBigEndian64(&k, lsn);
  return k;
}
std::string HistoryKey(uint32_t tli) {
  std::string k(kHistoryPrefix);
  PutBigEndian32(&k, tli);
  return k;
}
bool DecodeSegmentKey(std::string_view key, WalSegmentName* name) {
  if (!StartsWith(key, kSegPrefix) || key.size() != kSegPrefix.size() + 12) return false;
  key.remove_prefix(kSegPrefix.size());
  name->tli = static_cast<uint32_t>(GetBigEndian(key, 4));
  name->log = static_cast<uint32_t>(GetBigEndian(key.substr(4), 4));
  name->seg = static_cast<uint32_t>(GetBigEndian(key.substr(8), 4));
  return true;
}

// The timeline whose file holds segment `segno` on `path`: the newest one that had begun by then
// (the first segment of a timeline repeats its parent's WAL up to the switch point).
uint32_t FileTli(const std::vector<TimelineSpan>& path, uint64_t segno, uint64_t seg_size) {
  for (size_t i = path.size(); i-- > 0;)
    if (path[i].begin_lsn / seg_size <= segno) return path[i].tli;
  return path.front().tli;
}

// Orders segment records of the same file: the better one is kept.
auto Rank(const WalSegmentRecord& r) {
  return std::make_tuple(r.ok, r.complete(), r.unverified_head == 0, r.end_lsn, !r.tolerant);
}

}  // namespace

std::string WalSegmentKey(const WalSegmentName& name) {
  std::string k(kSegPrefix);
  PutBigEndian32(&k, name.tli);
  PutBigEndian32(&k, name.log);
  PutBigEndian32(&k, name.seg);
  return k;
}

std::string WalEventKey(uint32_t tli, uint64_t lsn) {
  std::string k(kEventPrefix);
  PutBigEndian32(&k, tli);
  PutBigEndian64(&k, lsn);
  return k;
}

ByteSource BytesFrom(std::string_view data) {
  return [data](const ByteSink& sink) { return sink(data); };
}

ByteSource BytesFrom(TreeReader* reader, uint64_t size) {
  return [reader, size](const ByteSink& sink) {
    std::string buf;
    for (uint64_t off = 0; off < size; off += kReadPiece) {
      uint64_t len = std::min(kReadPiece, size - off);
      buf.clear();
      RETURN_IF_ERROR(reader->Read(off, len, &buf));
      if (buf.size() != len)
        return Status::Corruption("short read at offset " + std::to_string(off) +
                                  " of a stored file");
      RETURN_IF_ERROR(sink(buf));
    }
    return Status::OK();
  };
}

// ---- Records -----------------------------------------------------------------------------------

void WalSegmentRecord::EncodeTo(std::string* dst) const {
  dst->push_back(1);  // format of this record
  dst->push_back(static_cast<char>((ok ? 1 : 0) | (tolerant ? 2 : 0) | (continues ? 4 : 0)));
  dst->push_back(static_cast<char>(end));
  PutFixed64(dst, seg_size);
  PutFixed64(dst, system_identifier);
  PutFixed64(dst, start_lsn);
  PutFixed64(dst, first_lsn);
  PutFixed64(dst, last_lsn);
  PutFixed64(dst, end_lsn);
  PutFixed64(dst, unverified_head);
  PutFixed64(dst, records);
  PutFixed32(dst, commits);
  PutFixed32(dst, aborts);
  PutFixed64(dst, static_cast<uint64_t>(first_commit_time));
  PutFixed64(dst, static_cast<uint64_t>(last_commit_time));
  PutFixed64(dst, static_cast<uint64_t>(max_xact_time));
  PutFixed64(dst, last_xact_lsn);
  PutLengthPrefixed(dst, error);
}

Status WalSegmentRecord::DecodeFrom(Decoder* in, WalSegmentRecord* r) {
  uint8_t format, flags, end;
  uint64_t t1, t2, t3;
  std::string_view error;
  if (!in->GetFixed8(&format) || format != 1 || !in->GetFixed8(&flags) || !in->GetFixed8(&end) ||
      !in->GetFixed64(&r->seg_size) || !in->GetFixed64(&r->system_identifier) ||
      !in->GetFixed64(&r->start_lsn) || !in->GetFixed64(&r->first_lsn) ||
      !in->GetFixed64(&r->last_lsn) || !in->GetFixed64(&r->end_lsn) ||
      !in->GetFixed64(&r->unverified_head) || !in->GetFixed64(&r->records) ||
      !in->GetFixed32(&r->commits) || !in->GetFixed32(&r->aborts) || !in->GetFixed64(&t1) ||
      !in->GetFixed64(&t2) || !in->GetFixed64(&t3) || !in->GetFixed64(&r->last_xact_lsn) ||
      !in->GetLengthPrefixed(&error) || end > static_cast<uint8_t>(WalEnd::kTruncated))
    return Status::Corruption("bad WAL index segment record");
  r->ok = flags & 1;
  r->tolerant = flags & 2;
  r->continues = flags & 4;
  r->end = static_cast<WalEnd>(end);
  r->first_commit_time = static_cast<int64_t>(t1);
  r->last_commit_time = static_cast<int64_t>(t2);
  r->max_xact_time = static_cast<int64_t>(t3);
  r->error = std::string(error);
  return Status::OK();
}

Status TimelineHistory::Parse(uint32_t tli, std::string_view content, TimelineHistory* out) {
  TimelineHistory h;
  h.tli = tli;
  char file[32];
  snprintf(file, sizeof(file), "%08X.history", tli);
  int line_no = 0;
  while (!content.empty()) {
    size_t nl = content.find('\n');
    std::string_view line = content.substr(0, nl);
    content.remove_prefix(nl == std::string_view::npos ? content.size() : nl + 1);
    ++line_no;
    auto bad = [&](const std::string& what) {
      return Status::InvalidArgument("'" + std::string(file) + "' line " + std::to_string(line_no) +
                                     ": " + what);
    };
    auto is_space = [](char c) { return c == ' ' || c == '\t' || c == '\r'; };
    while (!line.empty() && is_space(line.front())) line.remove_prefix(1);
    while (!line.empty() && is_space(line.back())) line.remove_suffix(1);
    if (line.empty() || line[0] == '#') continue;
    auto next_field = [&]() {
      size_t end = 0;
      while (end < line.size() && !is_space(line[end])) ++end;
      std::string_view f = line.substr(0, end);
      line.remove_prefix(end);
      while (!line.empty() && is_space(line.front())) line.remove_prefix(1);
      return f;
    };
    std::string_view tli_text = next_field();
    std::string_view lsn_text = next_field();
    TimelineHistoryEntry e;
    char* endp = nullptr;
    std::string t(tli_text);
    unsigned long v = strtoul(t.c_str(), &endp, 10);
    if (t.empty() || *endp != '\0' || v == 0 || v > UINT32_MAX) return bad("invalid timeline ID");
    e.tli = static_cast<uint32_t>(v);
    auto lsn = ParseLsn(lsn_text);
    if (!lsn.ok()) return bad("invalid switch point");
    e.switch_lsn = *lsn;
    e.reason = std::string(line);
    if (!h.parents.empty() && e.tli <= h.parents.back().tli)
      return bad("timeline IDs must be in increasing sequence");
    if (e.tli >= tli) return bad("timeline IDs must be less than the file's timeline");
    h.parents.push_back(std::move(e));
  }
  *out = std::move(h);
  return Status::OK();
}

void TimelineHistory::EncodeTo(std::string* dst) const {
  PutFixed32(dst, static_cast<uint32_t>(parents.size()));
  for (const auto& p : parents) {
    PutFixed32(dst, p.tli);
    PutFixed64(dst, p.switch_lsn);
    PutLengthPrefixed(dst, p.reason);
  }
}

Status TimelineHistory::DecodeFrom(Decoder* in, TimelineHistory* h) {
  uint32_t n;
  if (!in->GetFixed32(&n) || n > in->remaining() / 13)
    return Status::Corruption("bad timeline history record");
  h->parents.clear();
  for (uint32_t i = 0; i < n; ++i) {
    TimelineHistoryEntry e;
    std::string_view reason;
    if (!in->GetFixed32(&e.tli) || !in->GetFixed64(&e.switch_lsn) ||
        !in->GetLengthPrefixed(&reason))
      return Status::Corruption("bad timeline history record");
    e.reason = std::string(reason);
    h->parents.push_back(std::move(e));
  }
  return Status::OK();
}

// ---- Indexing ----------------------------------------------------------------------------------

WalIndex::WalIndex(Repository* repo) : repo_(repo), kv_(repo->kv()) {}

Result<WalSegmentRecord> WalIndex::IndexSegment(const std::string& name, const ByteSource& source,
                                                const WalIndexOptions& options) {
  std::lock_guard<std::mutex> lock(write_mu_);
  KvBatch batch;
  ASSIGN_OR_RETURN(WalSegmentRecord rec, Prepare(name, source, &batch, options, true));
  // Derived data: not synced on its own (the archive's synced writes make it durable, and the
  // index can be rebuilt from the archive).
  RETURN_IF_ERROR(kv_->Write(batch, false));
  if (rec.continues && rec.seg_size && fetcher_) {
    // A segment indexed before this one could not check the record this one ends with: now it can.
    uint64_t segno = rec.name.SegNo(rec.seg_size);
    ASSIGN_OR_RETURN(auto next, GetSegmentAt(rec.name.tli, segno + 1, rec.seg_size));
    if (next && next->unverified_head > 0) {
      std::string next_name = next->FileName();
      auto src = fetcher_(next_name);
      if (src.ok()) {
        KvBatch b;
        WalIndexOptions o;
        o.tolerant = next->tolerant;
        auto r = Prepare(next_name, *src, &b, o, false);
        if (!r.ok()) return r.status();
        RETURN_IF_ERROR(kv_->Write(b, false));
      } else if (!src.status().IsNotFound()) {
        return src.status();
      }
    }
  }
  return rec;
}

Result<WalSegmentRecord> WalIndex::PrepareSegment(const std::string& name, const ByteSource& source,
                                                  KvBatch* batch, const WalIndexOptions& options) {
  return Prepare(name, source, batch, options, true);
}

// Everything parsing one segment gathers before it goes into a batch.
struct WalSegmentParse::State {
  std::string name;
  WalSegmentName sn;
  WalIndexOptions options;
  WalSegmentRecord rec;
  KvBatch entries;  // events, and the xid and restore point keys pointing at them
  std::unique_ptr<WalParser> parser;
  Status parse_status;  // the first error of Feed (the parser refuses more input after one)
  Status lookup_error;  // the continuation lookup failed (an error of the store, not of the WAL)
  // The lookup of the previous segment's unfinished record, made at the first page.
  bool asked = false;
  uint64_t asked_lsn = 0, asked_seg_size = 0;
  std::optional<std::string> answer;  // the continuation it got, encoded (nullopt: none)
};

WalSegmentParse::WalSegmentParse(std::unique_ptr<State> state) : state_(std::move(state)) {}
WalSegmentParse::~WalSegmentParse() = default;

void WalSegmentParse::Feed(std::string_view data) {
  if (!state_->parse_status.ok() || data.empty()) return;
  state_->parse_status = state_->parser->Feed(data);
}

Result<std::unique_ptr<WalSegmentParse>> WalIndex::StartParse(const std::string& name,
                                                              const WalIndexOptions& options,
                                                              bool fetch_neighbors) {
  auto st = std::make_unique<WalSegmentParse::State>();
  bool partial = false;
  RETURN_IF_ERROR(ParseWalSegmentName(name, &st->sn, &partial));
  if (partial)
    return Status::InvalidArgument(
        "'" + name + "': partial files are not indexed (recovery does not read them)");
  st->name = name;
  st->options = options;
  st->rec.name = st->sn;
  st->rec.tolerant = options.tolerant;

  WalSegmentParse::State* p = st.get();
  WalParserOptions po;
  po.tolerant = options.tolerant;
  po.continuation =
      [this, p, fetch_neighbors](uint64_t resume_lsn) -> Result<std::optional<WalContinuation>> {
    p->asked = true;
    p->asked_lsn = resume_lsn;
    p->asked_seg_size = p->parser->summary().seg_size;
    auto c = LookupContinuation(p->sn.tli, resume_lsn, fetch_neighbors, p->asked_seg_size);
    if (!c.ok()) {
      p->lookup_error = c.status();
    } else if (c->has_value()) {
      p->answer.emplace();
      (*c)->EncodeTo(&*p->answer);
    }
    return c;
  };
  st->parser = std::make_unique<WalParser>(name, std::move(po), [p](const WalEvent& e) {
    WalSegmentRecord& rec = p->rec;
    std::string value;
    e.EncodeTo(&value);
    p->entries.Put(Cf::kMeta, WalEventKey(e.tli, e.lsn), value);
    if (e.is_xact_end()) {
      p->entries.Put(Cf::kMeta, XidKey(e.xid, e.tli, e.lsn), {});
      if (e.is_commit()) {
        if (rec.commits++ == 0) rec.first_commit_time = e.time;
        rec.last_commit_time = e.time;
      } else {
        ++rec.aborts;
      }
      if (rec.commits + rec.aborts == 1 || e.time > rec.max_xact_time) rec.max_xact_time = e.time;
      rec.last_xact_lsn = e.lsn;
    } else if (e.type == WalEventType::kRestorePoint) {
      p->entries.Put(Cf::kMeta, RestorePointKey(e.name, e.tli, e.lsn), {});
    }
    return Status::OK();
  });
  return std::unique_ptr<WalSegmentParse>(new WalSegmentParse(std::move(st)));
}

Result<std::unique_ptr<WalSegmentParse>> WalIndex::StartSegment(const std::string& name,
                                                                const WalIndexOptions& options) {
  // Reads only: the previous segment is not indexed on the way (PrepareParsedSegment does that,
  // under its caller's lock, and parses again if it changes the answer).
  return StartParse(name, options, /*fetch_neighbors=*/false);
}

Result<WalSegmentRecord> WalIndex::Prepare(const std::string& name, const ByteSource& source,
                                           KvBatch* batch, const WalIndexOptions& options,
                                           bool fetch_neighbors) {
  ASSIGN_OR_RETURN(std::unique_ptr<WalSegmentParse> parse,
                   StartParse(name, options, fetch_neighbors));
  WalSegmentParse::State& p = *parse->state_;
  Status s = source([&](std::string_view piece) {
    parse->Feed(piece);
    return p.parse_status;
  });
  if (!p.lookup_error.ok()) return p.lookup_error;
  if (!s.ok() && p.parse_status.ok()) return s.WithContext("reading '" + name + "'");
  return FinishParse(parse.get(), batch);
}

Result<WalSegmentRecord> WalIndex::PrepareParsedSegment(WalSegmentParse* parse,
                                                        const ByteSource& source, KvBatch* batch) {
  WalSegmentParse::State& p = *parse->state_;
  if (p.asked) {
    // The parse depended on the index: the previous segment's unfinished record. It stands if
    // the answer is the same now (looked up as PrepareSegment would, indexing the previous
    // segment if it is archived but not indexed yet).
    ASSIGN_OR_RETURN(std::optional<WalContinuation> now,
                     LookupContinuation(p.sn.tli, p.asked_lsn, true, p.asked_seg_size));
    std::optional<std::string> encoded;
    if (now) {
      encoded.emplace();
      now->EncodeTo(&*encoded);
    }
    if (!p.lookup_error.ok() || encoded != p.answer) {
      return Prepare(p.name, source, batch, p.options, true);
    }
  }
  return FinishParse(parse, batch);
}

Result<WalSegmentRecord> WalIndex::FinishParse(WalSegmentParse* parse, KvBatch* batch) {
  WalSegmentParse::State& p = *parse->state_;
  if (!p.lookup_error.ok()) return p.lookup_error;
  if (p.parse_status.ok()) p.parse_status = p.parser->Finish();

  WalSegmentRecord rec = p.rec;
  const WalParser& parser = *p.parser;
  const WalParseSummary& m = parser.summary();
  rec.ok = p.parse_status.ok();
  rec.error = rec.ok ? m.end_detail : p.parse_status.message();
  rec.end = m.end;
  rec.continues = m.continues;
  rec.seg_size = m.seg_size;
  rec.system_identifier = m.system_identifier;
  rec.start_lsn = m.start_lsn;
  rec.first_lsn = m.first_lsn;
  rec.last_lsn = m.last_lsn;
  rec.end_lsn = m.end_lsn;
  rec.unverified_head = m.unverified_head;
  rec.records = m.records;

  // The entries found go in either way (what the bytes say never changes).
  if (batch->empty()) {
    *batch = std::move(p.entries);
  } else {
    for (const KvBatch::Op& op : p.entries.ops()) batch->Put(op.cf, op.key, op.value);
  }
  p.entries.Clear();
  if (parser.continuation()) {
    std::string value;
    parser.continuation()->EncodeTo(&value);
    batch->Put(Cf::kMeta, ContKey(p.sn.tli, parser.continuation()->resume_lsn), value);
  }

  // Keep the better of what is stored and what this parse found.
  std::string key = WalSegmentKey(p.sn), stored;
  Status g = kv_->Get(Cf::kMeta, key, &stored);
  if (g.ok()) {
    WalSegmentRecord old;
    Decoder d(stored);
    RETURN_IF_ERROR(WalSegmentRecord::DecodeFrom(&d, &old));
    old.name = p.sn;
    if (Rank(old) > Rank(rec)) return old;
  } else if (!g.IsNotFound()) {
    return g;
  }
  std::string value;
  rec.EncodeTo(&value);
  batch->Put(Cf::kMeta, key, value);
  return rec;
}

Result<std::optional<WalContinuation>> WalIndex::LookupContinuation(uint32_t tli,
                                                                    uint64_t resume_lsn,
                                                                    bool fetch_neighbors,
                                                                    uint64_t seg_size) {
  if (resume_lsn == 0 || seg_size == 0) return std::optional<WalContinuation>();
  ASSIGN_OR_RETURN(std::vector<TimelineSpan> path, TimelinePath(tli));
  const uint64_t prev_segno = resume_lsn / seg_size - 1;
  // The file that holds the previous segment on this timeline's history first, then the others.
  std::vector<uint32_t> candidates = {FileTli(path, prev_segno, seg_size)};
  for (size_t i = path.size(); i-- > 0;)
    if (path[i].tli != candidates[0]) candidates.push_back(path[i].tli);
  auto get = [&]() -> Result<std::optional<WalContinuation>> {
    for (uint32_t c : candidates) {
      std::string value;
      Status s = kv_->Get(Cf::kMeta, ContKey(c, resume_lsn), &value);
      if (s.IsNotFound()) continue;
      RETURN_IF_ERROR(s);
      WalContinuation cont;
      Decoder d(value);
      RETURN_IF_ERROR(WalContinuation::DecodeFrom(&d, &cont));
      return std::optional<WalContinuation>(std::move(cont));
    }
    return std::optional<WalContinuation>();
  };
  ASSIGN_OR_RETURN(auto found, get());
  if (found || !fetch_neighbors || !fetcher_) return found;
  // Not indexed yet: index the previous segment first, if it is archived.
  ASSIGN_OR_RETURN(auto prev, GetSegmentAt(candidates[0], prev_segno, seg_size));
  if (prev) return found;  // indexed, and it ends with no unfinished record
  std::string prev_name = WalSegmentName::FromSegNo(candidates[0], prev_segno, seg_size).ToString();
  auto src = fetcher_(prev_name);
  if (!src.ok()) {
    if (src.status().IsNotFound()) return found;
    return src.status();
  }
  KvBatch b;
  ASSIGN_OR_RETURN(WalSegmentRecord r, Prepare(prev_name, *src, &b, {}, false));
  (void)r;
  RETURN_IF_ERROR(kv_->Write(b, false));
  return get();
}

Status WalIndex::IndexHistory(const std::string& name, std::string_view content) {
  constexpr std::string_view kSuffix = ".history";
  uint32_t tli = 0;
  bool valid = name.size() == 8 + kSuffix.size() && name.substr(8) == kSuffix;
  for (size_t i = 0; valid && i < 8; ++i) {
    char c = name[i];
    int d = (c >= '0' && c <= '9') ? c - '0' : (c >= 'A' && c <= 'F') ? c - 'A' + 10 : -1;
    if (d < 0) valid = false;
    tli = tli << 4 | static_cast<uint32_t>(d);
  }
  if (!valid || tli < 2)
    return Status::InvalidArgument("'" + name + "' is not a timeline history file name");
  TimelineHistory h;
  RETURN_IF_ERROR(TimelineHistory::Parse(tli, content, &h));
  std::string value;
  h.EncodeTo(&value);
  KvBatch batch;
  batch.Put(Cf::kMeta, HistoryKey(tli), value);
  std::lock_guard<std::mutex> lock(write_mu_);
  return kv_->Write(batch, false);
}

// ---- Queries -----------------------------------------------------------------------------------

Result<std::optional<WalEvent>> WalIndex::GetEvent(uint32_t tli, uint64_t lsn) {
  std::string value;
  Status s = kv_->Get(Cf::kMeta, WalEventKey(tli, lsn), &value);
  if (s.IsNotFound()) return std::optional<WalEvent>();
  RETURN_IF_ERROR(s);
  WalEvent e;
  Decoder d(value);
  RETURN_IF_ERROR(WalEvent::DecodeFrom(&d, &e));
  e.tli = tli;
  e.lsn = lsn;
  return std::optional<WalEvent>(std::move(e));
}

Result<std::vector<WalEvent>> WalIndex::FindXid(uint32_t xid) {
  std::string prefix(kXidPrefix);
  PutBigEndian32(&prefix, xid);
  std::vector<WalEvent> out;
  auto it = kv_->NewIterator(Cf::kMeta);
  for (it->Seek(prefix); it->Valid() && StartsWith(it->key(), prefix); it->Next()) {
    std::string_view rest = it->key().substr(prefix.size());
    if (rest.size() != 12) return Status::Corruption("bad WAL index xid key");
    uint32_t tli = static_cast<uint32_t>(GetBigEndian(rest, 4));
    uint64_t lsn = GetBigEndian(rest.substr(4), 8);
    ASSIGN_OR_RETURN(auto e, GetEvent(tli, lsn));
    if (!e)
      return Status::Corruption("WAL index: xid " + std::to_string(xid) + " points to " +
                                FormatLsn(lsn) + " on timeline " + std::to_string(tli) +
                                ", where no event is");
    out.push_back(std::move(*e));
  }
  RETURN_IF_ERROR(it->status());
  return out;
}

Result<std::vector<WalEvent>> WalIndex::FindRestorePoints(const std::string& name) {
  std::string prefix(kRestorePointPrefix);
  prefix += name;
  prefix.push_back('\0');
  std::vector<WalEvent> out;
  auto it = kv_->NewIterator(Cf::kMeta);
  for (it->Seek(prefix); it->Valid() && StartsWith(it->key(), prefix); it->Next()) {
    std::string_view rest = it->key().substr(prefix.size());
    if (rest.size() != 12) continue;  // a longer name that merely starts with `name` and a NUL
    uint32_t tli = static_cast<uint32_t>(GetBigEndian(rest, 4));
    uint64_t lsn = GetBigEndian(rest.substr(4), 8);
    ASSIGN_OR_RETURN(auto e, GetEvent(tli, lsn));
    if (!e)
      return Status::Corruption("WAL index: restore point '" + name + "' points to " +
                                FormatLsn(lsn) + ", where no event is");
    out.push_back(std::move(*e));
  }
  RETURN_IF_ERROR(it->status());
  return out;
}

Result<WalEvent> WalIndex::FindRestorePoint(const std::string& name) {
  ASSIGN_OR_RETURN(std::vector<WalEvent> all, FindRestorePoints(name));
  if (all.empty())
    return Status::NotFound("no restore point named '" + name + "' in the WAL index");
  return *std::max_element(all.begin(), all.end(), [](const WalEvent& a, const WalEvent& b) {
    return std::tie(a.time, a.tli, a.lsn) < std::tie(b.time, b.tli, b.lsn);
  });
}

Result<std::optional<WalSegmentRecord>> WalIndex::GetSegmentAt(uint32_t tli, uint64_t segno,
                                                               uint64_t seg_size) {
  WalSegmentName name = WalSegmentName::FromSegNo(tli, segno, seg_size);
  std::string value;
  Status s = kv_->Get(Cf::kMeta, WalSegmentKey(name), &value);
  if (s.IsNotFound()) return std::optional<WalSegmentRecord>();
  RETURN_IF_ERROR(s);
  WalSegmentRecord r;
  Decoder d(value);
  RETURN_IF_ERROR(WalSegmentRecord::DecodeFrom(&d, &r));
  r.name = name;
  return std::optional<WalSegmentRecord>(std::move(r));
}

Result<WalSegmentRecord> WalIndex::GetSegment(const std::string& name) {
  WalSegmentName sn;
  RETURN_IF_ERROR(ParseWalSegmentName(name, &sn));
  std::string value;
  Status s = kv_->Get(Cf::kMeta, WalSegmentKey(sn), &value);
  if (s.IsNotFound()) return Status::NotFound("WAL segment '" + name + "' is not indexed");
  RETURN_IF_ERROR(s);
  WalSegmentRecord r;
  Decoder d(value);
  RETURN_IF_ERROR(WalSegmentRecord::DecodeFrom(&d, &r));
  r.name = sn;
  return r;
}

Status WalIndex::ForEachSegment(const std::function<Status(const WalSegmentRecord&)>& fn) {
  auto it = kv_->NewIterator(Cf::kMeta);
  for (it->Seek(kSegPrefix); it->Valid() && StartsWith(it->key(), kSegPrefix); it->Next()) {
    WalSegmentRecord r;
    if (!DecodeSegmentKey(it->key(), &r.name))
      return Status::Corruption("bad WAL index segment key");
    Decoder d(it->value());
    RETURN_IF_ERROR(WalSegmentRecord::DecodeFrom(&d, &r));
    RETURN_IF_ERROR(fn(r));
  }
  return it->status();
}

Status WalIndex::ForEachEvent(uint32_t tli, uint64_t from_lsn, uint64_t to_lsn,
                              const std::function<Status(const WalEvent&)>& fn) {
  std::string prefix(kEventPrefix);
  PutBigEndian32(&prefix, tli);
  auto it = kv_->NewIterator(Cf::kMeta);
  for (it->Seek(WalEventKey(tli, from_lsn)); it->Valid() && StartsWith(it->key(), prefix);
       it->Next()) {
    std::string_view rest = it->key().substr(prefix.size());
    if (rest.size() != 8) return Status::Corruption("bad WAL index event key");
    uint64_t lsn = GetBigEndian(rest, 8);
    if (lsn >= to_lsn) break;
    WalEvent e;
    Decoder d(it->value());
    RETURN_IF_ERROR(WalEvent::DecodeFrom(&d, &e));
    e.tli = tli;
    e.lsn = lsn;
    RETURN_IF_ERROR(fn(e));
  }
  return it->status();
}

Result<TimelineHistory> WalIndex::History(uint32_t tli) {
  TimelineHistory h;
  h.tli = tli;
  std::string value;
  Status s = kv_->Get(Cf::kMeta, HistoryKey(tli), &value);
  if (s.IsNotFound()) return h;
  RETURN_IF_ERROR(s);
  Decoder d(value);
  RETURN_IF_ERROR(TimelineHistory::DecodeFrom(&d, &h));
  return h;
}

Result<std::vector<TimelineSpan>> WalIndex::TimelinePath(uint32_t tli) {
  ASSIGN_OR_RETURN(TimelineHistory h, History(tli));
  std::vector<TimelineSpan> path;
  uint64_t begin = 0;
  for (const auto& p : h.parents) {
    path.push_back({p.tli, begin, p.switch_lsn});
    begin = p.switch_lsn;
  }
  path.push_back({tli, begin, UINT64_MAX});
  return path;
}

Result<uint64_t> WalIndex::SegmentSize() {
  auto it = kv_->NewIterator(Cf::kMeta);
  for (it->Seek(kSegPrefix); it->Valid() && StartsWith(it->key(), kSegPrefix); it->Next()) {
    WalSegmentRecord r;
    Decoder d(it->value());
    RETURN_IF_ERROR(WalSegmentRecord::DecodeFrom(&d, &r));
    if (r.seg_size) return r.seg_size;
  }
  RETURN_IF_ERROR(it->status());
  return uint64_t{0};
}

Result<std::vector<TimelineSummary>> WalIndex::Timelines() {
  ASSIGN_OR_RETURN(uint64_t seg_size, SegmentSize());
  std::vector<TimelineSummary> out;
  uint64_t prev_segno = 0;
  std::optional<WalSegmentRecord> prev;
  RETURN_IF_ERROR(ForEachSegment([&](const WalSegmentRecord& r) {
    uint64_t segno = seg_size ? r.name.SegNo(seg_size) : 0;
    if (out.empty() || out.back().tli != r.name.tli) {
      out.emplace_back();
      out.back().tli = r.name.tli;
      out.back().first_segment = r.FileName();
      out.back().start_lsn = seg_size ? segno * seg_size : 0;
      prev.reset();
    }
    TimelineSummary& t = out.back();
    if (prev) {
      if (seg_size && segno > prev_segno + 1) {
        t.missing_count += segno - prev_segno - 1;
        for (uint64_t s = prev_segno + 1;
             s < segno && t.missing.size() < TimelineSummary::kMaxListed; ++s)
          t.missing.push_back(WalSegmentName::FromSegNo(t.tli, s, seg_size).ToString());
      }
      if (prev->ok && !prev->complete() && t.ends_early.size() < TimelineSummary::kMaxListed)
        t.ends_early.push_back(prev->FileName());
    }
    ++t.segments;
    t.last_segment = r.FileName();
    t.end_lsn = r.end_lsn;
    if (!r.ok && t.failed.size() < TimelineSummary::kMaxListed) t.failed.push_back(r.FileName());
    if (r.commits) {
      if (t.commits == 0) t.first_commit_time = r.first_commit_time;
      t.last_commit_time = r.last_commit_time;
    }
    t.commits += r.commits;
    t.aborts += r.aborts;
    prev = r;
    prev_segno = segno;
    return Status::OK();
  }));
  return out;
}

Result<WalIndex::TimeMatch> WalIndex::FindTime(uint32_t tli, int64_t time, uint64_t from_lsn) {
  TimeMatch match;
  ASSIGN_OR_RETURN(uint64_t seg_size, SegmentSize());
  if (seg_size == 0) return match;
  ASSIGN_OR_RETURN(std::vector<TimelineSpan> path, TimelinePath(tli));
  std::optional<std::pair<uint32_t, uint64_t>> before_ref;  // the last xact event seen, by key
  ASSIGN_OR_RETURN(auto first, FirstSegmentFrom(path, from_lsn / seg_size, seg_size));
  if (!first) return match;
  for (uint64_t segno = *first;; ++segno) {
    uint32_t ftli = FileTli(path, segno, seg_size);
    ASSIGN_OR_RETURN(auto rec, GetSegmentAt(ftli, segno, seg_size));
    if (!rec) break;
    const bool has_xacts = rec->commits + rec->aborts > 0;
    if ((has_xacts && rec->max_xact_time >= time) || !rec->ok) {
      // The answer is in this segment (or nothing is beyond it): read its events in order.
      uint64_t from = rec->first_lsn ? std::min(rec->first_lsn, rec->start_lsn) : rec->start_lsn;
      bool found = false;
      Status s =
          ForEachEvent(ftli, std::max(from, from_lsn), rec->segment_end(), [&](const WalEvent& e) {
            if (!e.is_xact_end()) return Status::OK();
            if (e.time >= time) {
              match.at_or_after = e;
              found = true;
              return Status::NotFound("");  // stop
            }
            before_ref = {e.tli, e.lsn};
            return Status::OK();
          });
      if (!found) RETURN_IF_ERROR(s);
      if (found) break;
    } else if (has_xacts && rec->last_xact_lsn >= from_lsn) {
      before_ref = {ftli, rec->last_xact_lsn};
    }
    if (!rec->complete()) break;
  }
  if (before_ref) {
    ASSIGN_OR_RETURN(match.before, GetEvent(before_ref->first, before_ref->second));
  }
  return match;
}

Result<std::optional<uint64_t>> WalIndex::FirstSegmentFrom(const std::vector<TimelineSpan>& path,
                                                           uint64_t segno, uint64_t seg_size) {
  std::optional<uint64_t> first;
  auto it = kv_->NewIterator(Cf::kMeta);
  for (const TimelineSpan& span : path) {
    std::string prefix(kSegPrefix);
    PutBigEndian32(&prefix, span.tli);
    it->Seek(WalSegmentKey(WalSegmentName::FromSegNo(span.tli, segno, seg_size)));
    RETURN_IF_ERROR(it->status());
    WalSegmentName name;
    if (it->Valid() && StartsWith(it->key(), prefix) && DecodeSegmentKey(it->key(), &name)) {
      uint64_t found = name.SegNo(seg_size);
      if (!first || found < *first) first = found;
    }
  }
  return first;
}

Status WalIndex::ComputeWindow(const std::vector<TimelineSpan>& path, const SnapshotInfo& snap,
                               uint64_t seg_size, RecoveryWindow* w) {
  ASSIGN_OR_RETURN(uint64_t start_lsn, ParseLsn(snap.start_lsn));
  ASSIGN_OR_RETURN(uint64_t end_lsn, ParseLsn(snap.end_lsn));
  w->timeline = path.back().tli;
  w->snapshot = snap.id;
  w->start_lsn = end_lsn;

  // The earliest target: recovery must not stop inside the snapshot's own WAL.
  int64_t start_time = INT64_MIN;
  for (uint64_t segno = start_lsn / seg_size; segno * seg_size < end_lsn; ++segno) {
    uint32_t ftli = FileTli(path, segno, seg_size);
    RETURN_IF_ERROR(ForEachEvent(ftli, std::max(start_lsn, segno * seg_size),
                                 std::min(end_lsn, (segno + 1) * seg_size), [&](const WalEvent& e) {
                                   if (e.is_xact_end()) start_time = std::max(start_time, e.time);
                                   return Status::OK();
                                 }));
  }
  w->start_time = start_time != INT64_MIN ? start_time
                  : snap.stop_time        ? UnixSecondsToTimestampTz(snap.stop_time)
                                          : 0;

  uint64_t reached = start_lsn;
  for (uint64_t segno = start_lsn / seg_size;; ++segno) {
    uint32_t ftli = FileTli(path, segno, seg_size);
    std::string name = WalSegmentName::FromSegNo(ftli, segno, seg_size).ToString();
    ASSIGN_OR_RETURN(auto rec, GetSegmentAt(ftli, segno, seg_size));
    if (!rec) {
      ASSIGN_OR_RETURN(auto more, FirstSegmentFrom(path, segno + 1, seg_size));
      if (more) w->gap = "segment " + name + " is missing";
      break;
    }
    if (rec->commits) w->end_time = rec->last_commit_time;
    if (!rec->ok) {
      reached = std::max(reached, rec->end_lsn);
      w->gap = "segment " + name + " is unparseable: " + rec->error;
      break;
    }
    if (!rec->complete()) {
      reached = std::max(reached, rec->end_lsn);
      ASSIGN_OR_RETURN(auto more, FirstSegmentFrom(path, segno + 1, seg_size));
      if (more)
        w->gap = "the WAL in segment " + name + " ends early at " + FormatLsn(rec->end_lsn) +
                 (rec->error.empty() ? "" : " (" + rec->error + ")");
      break;
    }
    reached = rec->end == WalEnd::kSwitch ? rec->end_lsn : rec->segment_end();
  }
  w->end_lsn = reached;
  w->consistent = reached >= end_lsn;
  return Status::OK();
}

Result<std::vector<RecoveryWindow>> WalIndex::RecoverableWindows(
    const std::vector<SnapshotInfo>& snapshots) {
  std::vector<RecoveryWindow> out;
  ASSIGN_OR_RETURN(uint64_t seg_size, SegmentSize());
  if (seg_size == 0) return out;
  std::set<uint32_t> tlis;
  RETURN_IF_ERROR(ForEachSegment([&](const WalSegmentRecord& r) {
    tlis.insert(r.name.tli);
    return Status::OK();
  }));
  for (uint32_t tli : tlis) {
    ASSIGN_OR_RETURN(std::vector<TimelineSpan> path, TimelinePath(tli));
    std::vector<RecoveryWindow> windows;
    for (const SnapshotInfo& snap : snapshots) {
      auto start = ParseLsn(snap.start_lsn);
      auto end = ParseLsn(snap.end_lsn);
      if (!start.ok() || !end.ok()) continue;  // not a backup with WAL positions
      uint32_t snap_tli = snap.timeline ? snap.timeline : 1;
      bool on_path = false;
      for (const TimelineSpan& span : path)
        on_path |= span.tli == snap_tli && span.begin_lsn <= *start && *end <= span.end_lsn;
      if (!on_path) continue;
      RecoveryWindow w;
      RETURN_IF_ERROR(ComputeWindow(path, snap, seg_size, &w));
      windows.push_back(std::move(w));
    }
    std::sort(windows.begin(), windows.end(), [](const RecoveryWindow& a, const RecoveryWindow& b) {
      return std::tie(b.consistent, a.start_lsn) < std::tie(a.consistent, b.start_lsn);
    });
    std::vector<RecoveryWindow> merged;
    for (RecoveryWindow& w : windows) {
      if (w.consistent && !merged.empty() && merged.back().consistent &&
          w.start_lsn <= merged.back().end_lsn) {
        RecoveryWindow& m = merged.back();
        if (w.end_lsn > m.end_lsn) {
          m.end_lsn = w.end_lsn;
          m.end_time = w.end_time;
          m.gap = w.gap;
        }
        continue;
      }
      merged.push_back(std::move(w));
    }
    for (RecoveryWindow& w : merged) out.push_back(std::move(w));
  }
  return out;
}

}  // namespace pgbackfs
