// Fuzzes WalParser (repo/wal_parser.h), the parser of every WAL segment and .partial file that is
// archived, backed up or indexed: page headers, records across pages, record decoding, and the
// continuation of a record from the previous segment (which comes from the WAL index).
//
// The fuzzing build skips the record CRC comparison (FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION,
// set by CMake with PGBACKFS_FUZZ): random bytes never carry a right CRC, and everything after
// the check would go unfuzzed.
//
// Input: byte 0 is flags: bit 0 tolerant, bit 1 name the file after its page header (else
// 000000010000000000000001), bit 2 ".partial", bit 3 a continuation follows (u16 length, then a
// WalContinuation as the index stores it), bits 4-7 the piece size the file is fed in
// (0: at once, else 2^(n-1) bytes). The rest is the file.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "repo/coding.h"
#include "repo/wal_format.h"
#include "repo/wal_parser.h"
#include "tests/fuzz/fuzz_util.h"

namespace pgbackfs {
namespace {

struct Outcome {
  Status status;
  WalParseSummary summary;
  std::string events;
  std::optional<WalContinuation> continuation;
};

Outcome Run(const std::string& name, const WalParserOptions& options, std::string_view file,
            size_t piece) {
  Outcome o;
  WalParser parser(name, options, [&](const WalEvent& e) {
    o.events += e.ToString() + "\n";
    std::string enc;
    e.EncodeTo(&enc);
    Decoder d(enc);
    WalEvent back;
    FUZZ_CHECK(WalEvent::DecodeFrom(&d, &back).ok());
    return Status::OK();
  });
  Status s;
  std::string_view rest = file;
  while (s.ok() && !rest.empty()) {
    size_t n = std::min(piece, rest.size());
    s = parser.Feed(rest.substr(0, n));
    rest.remove_prefix(n);
  }
  if (s.ok()) s = parser.Finish();
  o.status = s;
  o.summary = parser.summary();
  o.continuation = parser.continuation();
  if (!s.ok()) FUZZ_CHECK(!parser.Feed(std::string(8192, '\0')).ok());
  return o;
}

}  // namespace
}  // namespace pgbackfs

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace pgbackfs;
  static bool init = (fuzz::QuietLogs(), true);
  (void)init;
  if (size < 1) return 0;
  const uint8_t flags = data[0];
  std::string_view in(reinterpret_cast<const char*>(data) + 1, size - 1);

  std::optional<WalContinuation> given;
  bool have_given = false;
  if (flags & 8) {
    Decoder d(in);
    uint16_t len;
    std::string_view enc;
    if (!d.GetFixed16(&len) || !d.GetBytes(len, &enc)) return 0;
    in.remove_prefix(2 + len);
    Decoder cd(enc);
    WalContinuation c;
    if (WalContinuation::DecodeFrom(&cd, &c).ok()) given = c;
    have_given = true;
  }

  std::string name = "000000010000000000000001";
  if (flags & 2) {
    WalLongPageHeader h;
    if (ParseWalLongPageHeader(in, "fuzz", &h).ok() && h.tli != 0) {
      name = WalSegmentName::FromSegNo(h.tli, h.pageaddr / h.seg_size, h.seg_size).ToString();
    }
  }
  if (flags & 4) name += ".partial";

  WalParserOptions options;
  options.tolerant = flags & 1;
  if (have_given) {
    options.continuation = [given](uint64_t) -> Result<std::optional<WalContinuation>> {
      return given;
    };
  }
  size_t piece = (flags >> 4) ? size_t{1} << ((flags >> 4) - 1) : SIZE_MAX;

  Outcome whole = Run(name, options, in, SIZE_MAX);
  const WalParseSummary& s = whole.summary;
  FUZZ_CHECK(s.bytes == in.size());
  if (whole.status.ok() && s.seg_size) {
    FUZZ_CHECK(IsValidWalSegmentSize(s.seg_size));
    FUZZ_CHECK_MSG(s.end_lsn - s.start_lsn <= s.seg_size,  // the last segment ends at 2^64
                   FormatLsn(s.start_lsn) + " + " + std::to_string(s.seg_size) + " < " +
                       FormatLsn(s.end_lsn) + " (" + WalEndName(s.end) + ", " +
                       std::to_string(s.records) + " records, last " + FormatLsn(s.last_lsn) +
                       ", bytes " + std::to_string(s.bytes) + ")");
    if (s.records) {
      FUZZ_CHECK(s.first_lsn <= s.last_lsn);
      FUZZ_CHECK(s.last_lsn < s.end_lsn);
    }
    if (whole.continuation) {
      // What the next segment's parser is handed must decode as it was encoded.
      std::string enc;
      whole.continuation->EncodeTo(&enc);
      Decoder d(enc);
      WalContinuation back;
      FUZZ_CHECK(WalContinuation::DecodeFrom(&d, &back).ok());
      FUZZ_CHECK(back.kept == whole.continuation->kept);
    }
  }
  if (piece != SIZE_MAX) {
    Outcome cut = Run(name, options, in, piece);
    FUZZ_CHECK_MSG(cut.status.ok() == whole.status.ok(),
                   whole.status.ToString() + " / " + cut.status.ToString());
    FUZZ_CHECK(cut.events == whole.events);
    FUZZ_CHECK(cut.summary.end == whole.summary.end);
    FUZZ_CHECK(cut.summary.end_lsn == whole.summary.end_lsn);
    FUZZ_CHECK(cut.summary.records == whole.summary.records);
  }
  return 0;
}
