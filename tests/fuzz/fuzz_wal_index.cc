// Fuzzes the smaller WAL parsers and the WAL index's stored records: timeline .history files
// (TimelineHistory::Parse, the text PostgreSQL archives), archive file names, LSNs and times as
// users type them, the long page header, and the records the index and the archive store
// (WalSegmentRecord, WalEvent, WalContinuation, TimelineHistory, WalFileInfo), each of which must
// re-encode to what it decoded from.
//
// Input: byte 0 picks the parser, the rest is its input.
#include <cstdint>
#include <string>
#include <string_view>

#include "repo/coding.h"
#include "repo/wal_archive.h"
#include "repo/wal_format.h"
#include "repo/wal_index.h"
#include "repo/wal_parser.h"
#include "tests/fuzz/fuzz_util.h"

namespace pgbackfs {
namespace {

void FuzzHistory(std::string_view in) {
  Decoder d(in);
  uint32_t tli;
  if (!d.GetFixed32(&tli)) return;
  TimelineHistory h;
  if (!TimelineHistory::Parse(tli, in.substr(4), &h).ok()) return;
  for (size_t i = 0; i < h.parents.size(); ++i) {
    FUZZ_CHECK(h.parents[i].tli > 0 && h.parents[i].tli < tli);
    if (i > 0) FUZZ_CHECK(h.parents[i - 1].tli < h.parents[i].tli);
  }
  std::string enc;
  h.EncodeTo(&enc);
  Decoder ed(enc);
  TimelineHistory back;
  FUZZ_CHECK(TimelineHistory::DecodeFrom(&ed, &back).ok());
  FUZZ_CHECK(ed.empty());
  FUZZ_CHECK(back.parents.size() == h.parents.size());
  for (size_t i = 0; i < h.parents.size(); ++i) {
    FUZZ_CHECK(back.parents[i].tli == h.parents[i].tli);
    FUZZ_CHECK(back.parents[i].switch_lsn == h.parents[i].switch_lsn);
    FUZZ_CHECK(back.parents[i].reason == h.parents[i].reason);
  }
}

void FuzzNames(std::string_view in) {
  WalFileName parsed;
  bool ok = ParseWalFileName(in, &parsed).ok();
  WalFileKind kind;
  FUZZ_CHECK(ParseWalFileName(std::string(in), &kind).ok() == ok);
  if (ok) {
    FUZZ_CHECK(kind == parsed.kind);
    (void)WalSegmentStartLsn(parsed, 16 << 20);
  }
  WalSegmentName seg;
  bool partial = false;
  if (ParseWalSegmentName(in, &seg, &partial).ok()) {
    std::string again = seg.ToString() + (partial ? ".partial" : "");
    FUZZ_CHECK(again == in);
    if (seg.seg < (1u << 8)) {  // valid for 16 MiB segments
      FUZZ_CHECK(WalSegmentName::FromSegNo(seg.tli, seg.SegNo(16 << 20), 16 << 20).ToString() ==
                 seg.ToString());
    }
  }
}

void FuzzLsnAndTime(std::string_view in) {
  Result<uint64_t> lsn = ParseLsn(in);
  if (lsn.ok()) {
    Result<uint64_t> again = ParseLsn(FormatLsn(*lsn));
    FUZZ_CHECK(again.ok() && *again == *lsn);
  }
  Result<int64_t> ts = ParseTimestampTz(in);
  if (ts.ok()) {
    std::string text = FormatTimestampTz(*ts);
    Result<int64_t> again = ParseTimestampTz(text);
    FUZZ_CHECK_MSG(again.ok(), text);
    (void)again;
  }
  // Any TimestampTz a WAL record carries must format.
  if (in.size() >= 8) {
    Decoder d(in);
    uint64_t raw;
    FUZZ_CHECK(d.GetFixed64(&raw));
    std::string text = FormatTimestampTz(static_cast<int64_t>(raw));
    FUZZ_CHECK(!text.empty());
  }
}

void FuzzPageHeader(std::string_view in) {
  WalLongPageHeader h;
  if (!ParseWalLongPageHeader(in, "fuzz", &h).ok()) return;
  FUZZ_CHECK(IsValidWalSegmentSize(h.seg_size));
  WalFileName name;
  name.tli = h.tli;
  name.log = static_cast<uint32_t>(h.pageaddr >> 32);
  name.seg = static_cast<uint32_t>((h.pageaddr & 0xffffffffu) / h.seg_size);
  (void)CheckWalSegmentHeader(h, name, "fuzz");
}

template <typename T>
void RoundTrip(std::string_view in) {
  Decoder d(in);
  T value;
  if (!T::DecodeFrom(&d, &value).ok()) return;
  size_t used = in.size() - d.remaining();
  std::string enc;
  value.EncodeTo(&enc);
  Decoder again(enc);
  T back;
  FUZZ_CHECK(T::DecodeFrom(&again, &back).ok());
  FUZZ_CHECK(again.empty());
  std::string enc2;
  back.EncodeTo(&enc2);
  FUZZ_CHECK(enc2 == enc);
  (void)used;
}

void FuzzWalFileInfo(std::string_view in) {
  WalFileInfo info;
  if (!WalFileInfo::DecodeFrom("000000010000000000000001", in, &info).ok()) return;
  std::string enc;
  info.EncodeTo(&enc);
  FUZZ_CHECK(enc == in);
}

}  // namespace
}  // namespace pgbackfs

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace pgbackfs;
  static bool init = (fuzz::QuietLogs(), true);
  (void)init;
  if (size < 1) return 0;
  std::string_view in(reinterpret_cast<const char*>(data) + 1, size - 1);
  switch (data[0] % 9) {
    case 0:
      FuzzHistory(in);
      break;
    case 1:
      FuzzNames(in);
      break;
    case 2:
      FuzzLsnAndTime(in);
      break;
    case 3:
      FuzzPageHeader(in);
      break;
    case 4:
      RoundTrip<WalSegmentRecord>(in);
      break;
    case 5:
      RoundTrip<WalEvent>(in);
      break;
    case 6:
      RoundTrip<WalContinuation>(in);
      break;
    case 7:
      RoundTrip<TimelineHistory>(in);
      break;
    case 8:
      FuzzWalFileInfo(in);
      break;
  }
  return 0;
}
