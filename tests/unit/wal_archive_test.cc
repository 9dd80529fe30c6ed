// The WAL archive (repo/wal_archive.h) and its page header parser (repo/wal_format.h), on both
// the in-memory and the RocksDB store, plus the archive-push / archive-get commands.
#include "repo/wal_archive.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "repo/coding.h"
#include "repo/file_util.h"
#include "tests/unit/test_util.h"
#include "tools/cli.h"

namespace pgbackfs {
namespace {

constexpr uint64_t kSeg = 1 << 20;  // the smallest legal wal_segment_size keeps tests fast
constexpr uint64_t kSysid = 7301234567890123456ull;

void PutLE(std::string* s, size_t off, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) (*s)[off + i] = static_cast<char>(v >> (8 * i));
}

struct SegOptions {
  uint64_t seg_size = kSeg;  // the header's xlp_seg_size
  uint64_t file_size = 0;    // 0: seg_size
  uint64_t sysid = kSysid;
  uint16_t magic = 0xD110;
  uint16_t info = 0x0002;  // XLP_LONG_HEADER
  uint32_t tli = 0;        // 0: the name's
  int64_t pageaddr = -1;   // -1: the name's
  uint32_t seed = 1;       // varies the content
};

// A synthetic segment: a valid long page header for `name`, then pseudo-random pages (with some
// all-zero stretches so zero chunks are exercised).
std::string MakeSegment(const std::string& name, SegOptions o = {}) {
  WalFileName parsed;
  EXPECT_TRUE(ParseWalFileName(std::string_view(name), &parsed).ok()) << name;
  uint64_t size = o.file_size ? o.file_size : o.seg_size;
  std::string s(size, '\0');
  std::mt19937_64 rng(o.seed);
  for (size_t off = 64; off + 8 <= size / 2; off += 8) PutLE(&s, off, rng(), 8);
  if (size >= 40) {
    PutLE(&s, 0, o.magic, 2);
    PutLE(&s, 2, o.info, 2);
    PutLE(&s, 4, o.tli ? o.tli : parsed.tli, 4);
    uint64_t addr = (static_cast<uint64_t>(parsed.log) << 32) + parsed.seg * o.seg_size;
    PutLE(&s, 8, o.pageaddr >= 0 ? static_cast<uint64_t>(o.pageaddr) : addr, 8);
    PutLE(&s, 16, 0, 4);
    PutLE(&s, 24, o.sysid, 8);
    PutLE(&s, 32, o.seg_size, 4);
    PutLE(&s, 36, 8192, 4);
  }
  return s;
}

class WalArchiveTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    dir_ = MakeTempDir();
    path_ = dir_ + "/repo";
    ASSERT_TRUE(Repository::Init(path_, RepoConfig()).ok());
    Reopen();
  }
  void TearDown() override {
    archive_.reset();
    repo_.reset();
    std::filesystem::remove_all(dir_);
  }
  void Reopen() {
    archive_.reset();
    repo_.reset();
    OpenOptions options;
    options.in_memory = GetParam();
    options.chunk_cache_bytes = 4 << 20;
    auto repo = Repository::Open(path_, options);
    ASSERT_TRUE(repo.ok()) << repo.status().ToString();
    repo_ = std::move(repo).value();
    archive_ = std::make_unique<WalArchive>(repo_.get());
  }

  // Writes `data` in uneven pieces and commits.
  Status Push(const std::string& name, std::string_view data, size_t piece = 100000) {
    auto w = archive_->NewWriter(name);
    if (!w.ok()) return w.status();
    for (size_t off = 0; off < data.size(); off += piece) {
      RETURN_IF_ERROR((*w)->Write(off, data.substr(off, piece)));
    }
    return (*w)->Commit();
  }

  std::string Fetch(const std::string& name) {
    auto info = archive_->Get(name);
    EXPECT_TRUE(info.ok()) << info.status().ToString();
    if (!info.ok()) return "";
    std::string out;
    Status s = archive_->ReadFile(*info, [&](std::string_view p) {
      out.append(p);
      return Status::OK();
    });
    EXPECT_TRUE(s.ok()) << s.ToString();
    return out;
  }

  size_t Count() {
    size_t n = 0;
    EXPECT_TRUE(archive_
                    ->List([&](const WalFileInfo&) {
                      ++n;
                      return Status::OK();
                    })
                    .ok());
    return n;
  }

  std::string dir_, path_;
  std::unique_ptr<Repository> repo_;
  std::unique_ptr<WalArchive> archive_;
};

INSTANTIATE_TEST_SUITE_P(Stores, WalArchiveTest, ::testing::Values(true, false),
                         [](const auto& info) { return info.param ? "Memory" : "RocksDb"; });

TEST(WalFileNameTest, Table) {
  struct Case {
    const char* name;
    bool ok;
    WalFileKind kind;
  };
  const Case cases[] = {
      {"000000010000000000000001", true, WalFileKind::kSegment},
      {"0000000A00000003000000FF", true, WalFileKind::kSegment},
      {"000000010000000000000001.partial", true, WalFileKind::kPartial},
      {"00000002.history", true, WalFileKind::kHistory},
      {"000000010000000000000001.00000028.backup", true, WalFileKind::kBackupLabel},
      {"", false, {}},
      {"00000001000000000000001", false, {}},    // 23 digits
      {"0000000100000000000000011", false, {}},  // 25 digits
      {"00000001000000000000000g", false, {}},
      {"0000000100000000000000ab", false, {}},  // lower case: PostgreSQL never writes it
      {"000000000000000000000001", false, {}},  // timeline 0
      {"000000010000000000000001.part", false, {}},
      {"000000010000000000000001.partial.tmp", false, {}},
      {"0000002.history", false, {}},
      {"00000002.History", false, {}},
      {"00000000.history", false, {}},
      {"000000010000000000000001.0000028.backup", false, {}},
      {"000000010000000000000001.00000028", false, {}},
      {"000000010000000000000001-00000028.backup", false, {}},
      {"../000000010000000000000001", false, {}},
      {"RECOVERYXLOG", false, {}},
      {"archive_status", false, {}},
  };
  for (const Case& c : cases) {
    WalFileKind kind;
    Status s = ParseWalFileName(std::string(c.name), &kind);
    EXPECT_EQ(s.ok(), c.ok) << c.name << ": " << s.ToString();
    if (c.ok && s.ok()) {
      EXPECT_EQ(kind, c.kind) << c.name;
    }
    if (!c.ok) {
      EXPECT_EQ(s.code(), Status::Code::kInvalidArgument);
      EXPECT_NE(s.message().find(std::string("'") + c.name + "'"), std::string::npos)
          << s.message();
    }
  }
  WalFileName p;
  ASSERT_TRUE(
      ParseWalFileName(std::string_view("0000000A00000003000000FF.0000ABCD.backup"), &p).ok());
  EXPECT_EQ(p.tli, 10u);
  EXPECT_EQ(p.log, 3u);
  EXPECT_EQ(p.seg, 0xFFu);
  EXPECT_EQ(p.backup_offset, 0xABCDu);
}

TEST(WalFormatTest, LongPageHeader) {
  std::string seg = MakeSegment("000000030000000100000005", {.seed = 3});
  WalLongPageHeader h;
  ASSERT_TRUE(ParseWalLongPageHeader(seg, "x", &h).ok());
  EXPECT_EQ(h.magic, 0xD110);
  EXPECT_EQ(h.pg_major, 15);
  EXPECT_EQ(h.tli, 3u);
  EXPECT_EQ(h.pageaddr, (uint64_t{1} << 32) + 5 * kSeg);
  EXPECT_EQ(h.sysid, kSysid);
  EXPECT_EQ(h.seg_size, kSeg);
  EXPECT_EQ(h.xlog_blcksz, 8192u);
  EXPECT_EQ(FormatLsn(h.pageaddr), "1/500000");

  Status s = ParseWalLongPageHeader(seg.substr(0, 39), "short", &h);
  EXPECT_EQ(s.code(), Status::Code::kInvalidArgument);
  s = ParseWalLongPageHeader(MakeSegment("000000010000000000000001", {.magic = 0xD113}), "m", &h);
  EXPECT_EQ(s.code(), Status::Code::kInvalidArgument);
  EXPECT_NE(s.message().find("0xD113"), std::string::npos) << s.message();
  s = ParseWalLongPageHeader(MakeSegment("000000010000000000000001", {.info = 0}), "i", &h);
  EXPECT_EQ(s.code(), Status::Code::kInvalidArgument);
  s = ParseWalLongPageHeader(
      MakeSegment("000000010000000000000001", {.seg_size = 3 << 20, .file_size = kSeg}), "s", &h);
  EXPECT_EQ(s.code(), Status::Code::kInvalidArgument);

  // Segment numbers past 2^32 / segment size do not exist.
  WalFileName name;
  ASSERT_TRUE(ParseWalFileName(std::string_view("000000010000000000000100"), &name).ok());
  EXPECT_FALSE(WalSegmentStartLsn(name, 16 << 20).ok());
  EXPECT_TRUE(WalSegmentStartLsn(name, 1 << 20).ok());
}

TEST(WalFileInfoTest, EncodeDecode) {
  WalFileInfo info;
  info.kind = WalFileKind::kPartial;
  info.data.size = 123456789;
  info.data.root.height = 2;
  for (int i = 0; i < 16; ++i) info.data.root.id.bytes[i] = static_cast<uint8_t>(i * 7 + 1);
  info.archived_time = 1700000000;
  std::string enc;
  info.EncodeTo(&enc);
  ASSERT_EQ(enc.size(), 35u);
  EXPECT_EQ(enc[0], 1);  // format version
  EXPECT_EQ(enc[1], 2);  // partial
  WalFileInfo back;
  ASSERT_TRUE(WalFileInfo::DecodeFrom("n", enc, &back).ok());
  EXPECT_EQ(back.name, "n");
  EXPECT_EQ(back.kind, info.kind);
  EXPECT_EQ(back.data.size, info.data.size);
  EXPECT_TRUE(back.data.root == info.data.root);
  EXPECT_EQ(back.archived_time, info.archived_time);

  EXPECT_TRUE(WalFileInfo::DecodeFrom("n", enc.substr(0, 34), &back).IsCorruption());
  EXPECT_TRUE(WalFileInfo::DecodeFrom("n", enc + "x", &back).IsCorruption());
  EXPECT_TRUE(WalFileInfo::DecodeFrom("n", "", &back).IsCorruption());
  std::string bad = enc;
  bad[0] = 2;
  EXPECT_TRUE(WalFileInfo::DecodeFrom("n", bad, &back).IsCorruption());
  bad = enc;
  bad[1] = 9;
  EXPECT_TRUE(WalFileInfo::DecodeFrom("n", bad, &back).IsCorruption());
}

TEST(WalFileInfoTest, Version2CarriesTheChunkSize) {
  WalFileInfo info;
  info.kind = WalFileKind::kSegment;
  info.data.size = 16 << 20;
  info.data.root.height = 0;
  info.data.root.id.bytes[3] = 9;
  info.data.chunk_size = kWalChunkSize;
  info.archived_time = 1700000000;
  std::string enc;
  info.EncodeTo(&enc);
  ASSERT_EQ(enc.size(), 39u);
  EXPECT_EQ(enc[0], 2);  // record version 2
  WalFileInfo back;
  ASSERT_TRUE(WalFileInfo::DecodeFrom("n", enc, &back).ok());
  EXPECT_EQ(back.data.chunk_size, kWalChunkSize);
  EXPECT_EQ(back.data.size, info.data.size);
  EXPECT_TRUE(back.data.root == info.data.root);
  EXPECT_TRUE(WalFileInfo::DecodeFrom("n", enc.substr(0, 35), &back).IsCorruption());
  for (uint32_t bad : {0u, 4096u, 3u << 20, 128u << 20}) {
    std::string b = enc;
    b.resize(35);
    PutFixed32(&b, bad);
    EXPECT_TRUE(WalFileInfo::DecodeFrom("n", b, &back).IsCorruption()) << bad;
  }
  info.data.chunk_size = 0;  // the repository's: a version-1 record
  enc.clear();
  info.EncodeTo(&enc);
  EXPECT_EQ(enc.size(), 35u);
  ASSERT_TRUE(WalFileInfo::DecodeFrom("n", enc, &back).ok());
  EXPECT_EQ(back.data.chunk_size, 0u);
}

// Format 3 stores WAL in 1 MiB chunks (record version 2); a format-2 repository goes on storing
// it in the repository's chunk size with version-1 records, which older pgbackfs reads.
TEST_P(WalArchiveTest, ChunkSizeFollowsTheFormat) {
  const std::string name = "000000010000000000000002";
  const std::string seg = MakeSegment(name, {.seed = 5});
  ASSERT_TRUE(Push(name, seg).ok());
  auto info = archive_->Get(name);
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->data.chunk_size, kWalChunkSize);
  EXPECT_TRUE(Fetch(name) == seg);

  // The same repository said to be format 2.
  std::string text;
  ASSERT_TRUE(ReadSmallFile(path_ + "/pgbackfs.json", &text).ok());
  auto j = nlohmann::json::parse(text);
  j["format_version"] = 2;
  ASSERT_TRUE(WriteFileAtomic(path_ + "/pgbackfs.json", j.dump()).ok());
  Reopen();
  const std::string name3 = "000000010000000000000003";
  const std::string seg3 = MakeSegment(name3, {.seed = 6});
  ASSERT_TRUE(Push(name3, seg3, 4096).ok());
  auto info3 = archive_->Get(name3);
  ASSERT_TRUE(info3.ok());
  EXPECT_EQ(info3->data.chunk_size, 0u);
  std::string raw;
  ASSERT_TRUE(repo_->kv()->Get(Cf::kWal, name3, &raw).ok());
  EXPECT_EQ(raw[0], 1);
  TreeReader reader(repo_->chunks(), info3->data, repo_->config().chunk_size);
  EXPECT_EQ(reader.leaf_count(), seg3.size() / repo_->config().chunk_size);
  EXPECT_TRUE(Fetch(name3) == seg3);
  if (!GetParam())
    EXPECT_TRUE(Fetch(name) == seg);  // both kinds are read (an in-memory store
                                      // does not survive Reopen)
}

TEST_P(WalArchiveTest, RoundTrip) {
  const std::string name = "000000010000000000000003";
  std::string seg = MakeSegment(name);
  ASSERT_TRUE(Push(name, seg).ok());
  auto info = archive_->Get(name);
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->kind, WalFileKind::kSegment);
  EXPECT_EQ(info->data.size, kSeg);
  EXPECT_GT(info->archived_time, 0);
  EXPECT_EQ(Fetch(name), seg);
  EXPECT_EQ(*archive_->SegmentSize(), kSeg);
  EXPECT_EQ(*repo_->SystemIdentifier(), std::to_string(kSysid));

  std::string history = "1\t0/3000000\tno recovery target specified\n";
  ASSERT_TRUE(Push("00000002.history", history).ok());
  std::string label = "START WAL LOCATION: 0/3000028 (file 000000010000000000000003)\n";
  ASSERT_TRUE(Push("000000010000000000000003.00000028.backup", label).ok());
  std::string partial = MakeSegment("000000010000000000000004", {.file_size = kSeg / 2});
  ASSERT_TRUE(Push("000000010000000000000004.partial", partial).ok());

  // Visible after a reopen (for RocksDB: read back from disk).
  if (!GetParam()) Reopen();
  std::vector<std::string> names;
  ASSERT_TRUE(archive_
                  ->List([&](const WalFileInfo& i) {
                    names.push_back(i.name);
                    return Status::OK();
                  })
                  .ok());
  EXPECT_EQ(names, (std::vector<std::string>{
                       "000000010000000000000003", "000000010000000000000003.00000028.backup",
                       "000000010000000000000004.partial", "00000002.history"}));
  if (!GetParam()) {
    EXPECT_EQ(Fetch(name), seg);
    EXPECT_EQ(Fetch("00000002.history"), history);
    EXPECT_EQ(Fetch("000000010000000000000004.partial"), partial);
  }
}

TEST_P(WalArchiveTest, GetAbsentIsNotFound) {
  EXPECT_TRUE(archive_->Get("00000002.history").status().IsNotFound());
  EXPECT_TRUE(archive_->Get("not-a-wal-name").status().IsNotFound());
  EXPECT_EQ(*archive_->SegmentSize(), 0u);
  auto w = archive_->NewWriter("bogus");
  EXPECT_EQ(w.status().code(), Status::Code::kInvalidArgument);
}

TEST_P(WalArchiveTest, IdenticalDuplicateIsOk) {
  const std::string name = "000000010000000000000001";
  std::string seg = MakeSegment(name);
  ASSERT_TRUE(Push(name, seg).ok());
  auto before = archive_->Get(name);
  ASSERT_TRUE(before.ok());
  sleep(1);  // a rewrite would change archived_time
  Status s = Push(name, seg, 8192);
  ASSERT_TRUE(s.ok()) << s.ToString();
  auto after = archive_->Get(name);
  EXPECT_EQ(after->archived_time, before->archived_time);
  EXPECT_EQ(Count(), 1u);
}

TEST_P(WalArchiveTest, DifferentDuplicateIsRefused) {
  const std::string name = "000000010000000000000001";
  std::string seg = MakeSegment(name, {.seed = 1});
  ASSERT_TRUE(Push(name, seg).ok());
  auto before = archive_->Get(name);
  Status s = Push(name, MakeSegment(name, {.seed = 2}));
  EXPECT_TRUE(s.IsAlreadyExists()) << s.ToString();
  EXPECT_NE(s.message().find(name), std::string::npos);
  auto after = archive_->Get(name);
  EXPECT_TRUE(after->data.root == before->data.root);
  EXPECT_EQ(Fetch(name), seg);

  ASSERT_TRUE(Push("00000002.history", "1\t0/3000000\treason\n").ok());
  s = Push("00000002.history", "1\t0/4000000\treason\n");
  EXPECT_TRUE(s.IsAlreadyExists()) << s.ToString();
  EXPECT_EQ(Fetch("00000002.history"), "1\t0/3000000\treason\n");
}

TEST_P(WalArchiveTest, WrongSizeIsRefused) {
  // Before any segment: the size must match the segment's own header.
  std::string s1 = MakeSegment("000000010000000000000001", {.file_size = kSeg + 8192});
  Status s = Push("000000010000000000000001", s1);
  EXPECT_EQ(s.code(), Status::Code::kInvalidArgument) << s.ToString();
  EXPECT_EQ(*archive_->SegmentSize(), 0u);

  ASSERT_TRUE(Push("000000010000000000000001", MakeSegment("000000010000000000000001")).ok());
  // A truncated copy.
  std::string s2 = MakeSegment("000000010000000000000002").substr(0, kSeg / 2);
  s = Push("000000010000000000000002", s2);
  EXPECT_EQ(s.code(), Status::Code::kInvalidArgument) << s.ToString();
  EXPECT_NE(s.message().find("segment size"), std::string::npos) << s.message();
  // A consistent segment of another size.
  std::string s3 = MakeSegment("000000010000000000000002", {.seg_size = 2 * kSeg});
  s = Push("000000010000000000000002", s3);
  EXPECT_EQ(s.code(), Status::Code::kInvalidArgument) << s.ToString();
  // A .partial larger than a segment.
  s = Push("000000010000000000000002.partial",
           MakeSegment("000000010000000000000002", {.file_size = kSeg + 1}));
  EXPECT_EQ(s.code(), Status::Code::kInvalidArgument) << s.ToString();
  // Empty files.
  s = Push("00000003.history", "");
  EXPECT_EQ(s.code(), Status::Code::kInvalidArgument) << s.ToString();
  EXPECT_TRUE(archive_->Get("000000010000000000000002").status().IsNotFound());
  EXPECT_EQ(Count(), 1u);
  EXPECT_EQ(*archive_->SegmentSize(), kSeg);
  EXPECT_EQ(archive_->CheckSegmentSize(2 * kSeg).code(), Status::Code::kFailedPrecondition);
  EXPECT_TRUE(archive_->CheckSegmentSize(kSeg).ok());
}

TEST_P(WalArchiveTest, SegmentSizeFixedByBackup) {
  ASSERT_TRUE(archive_->CheckSegmentSize(2 * kSeg).ok());
  Status s = Push("000000010000000000000001", MakeSegment("000000010000000000000001"));
  EXPECT_EQ(s.code(), Status::Code::kInvalidArgument) << s.ToString();
  EXPECT_EQ(archive_->CheckSegmentSize(3 << 20).code(), Status::Code::kInvalidArgument);
}

TEST_P(WalArchiveTest, OtherClusterIsRefused) {
  ASSERT_TRUE(Push("000000010000000000000001", MakeSegment("000000010000000000000001")).ok());
  const std::string name = "000000010000000000000002";
  Status s = Push(name, MakeSegment(name, {.sysid = 42}));
  EXPECT_EQ(s.code(), Status::Code::kFailedPrecondition) << s.ToString();
  EXPECT_NE(s.message().find(std::to_string(kSysid)), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("42"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find(name), std::string::npos) << s.message();
  EXPECT_TRUE(archive_->Get(name).status().IsNotFound());
  // Also over an existing name: the cluster is the error, the stored file stays.
  s = Push("000000010000000000000001", MakeSegment("000000010000000000000001", {.sysid = 42}));
  EXPECT_EQ(s.code(), Status::Code::kFailedPrecondition) << s.ToString();
}

TEST_P(WalArchiveTest, HeaderMustMatchName) {
  const std::string name = "000000020000000000000005";
  // A copy of segment 4 under the name of segment 5.
  Status s = Push(name, MakeSegment(name, {.pageaddr = 4 * kSeg}));
  EXPECT_EQ(s.code(), Status::Code::kInvalidArgument) << s.ToString();
  EXPECT_NE(s.message().find("0/400000"), std::string::npos) << s.message();
  // A later timeline in the header than in the name.
  s = Push(name, MakeSegment(name, {.tli = 3}));
  EXPECT_EQ(s.code(), Status::Code::kInvalidArgument) << s.ToString();
  // Unknown magic (another major version, or not WAL at all).
  s = Push(name, MakeSegment(name, {.magic = 0x1234}));
  EXPECT_EQ(s.code(), Status::Code::kInvalidArgument) << s.ToString();
  std::string zeros(kSeg, '\0');
  s = Push(name, zeros);
  EXPECT_EQ(s.code(), Status::Code::kInvalidArgument) << s.ToString();
  EXPECT_EQ(Count(), 0u);
  EXPECT_EQ(*repo_->SystemIdentifier(), "");
  // The first segment of a new timeline starts with pages of the old one: fine.
  s = Push(name, MakeSegment(name, {.tli = 1}));
  EXPECT_TRUE(s.ok()) << s.ToString();
}

TEST_P(WalArchiveTest, UncommittedWriterLeavesNothing) {
  const std::string name = "000000010000000000000001";
  {
    auto w = archive_->NewWriter(name);
    ASSERT_TRUE(w.ok());
    std::string seg = MakeSegment(name);
    ASSERT_TRUE((*w)->Write(0, seg).ok());
    EXPECT_EQ((*w)->size(), kSeg);
  }
  EXPECT_TRUE(archive_->Get(name).status().IsNotFound());
  EXPECT_EQ(Count(), 0u);
  EXPECT_EQ(*archive_->SegmentSize(), 0u);
  EXPECT_EQ(*repo_->SystemIdentifier(), "");
}

TEST_P(WalArchiveTest, DoubleCommit) {
  const std::string name = "000000010000000000000001";
  std::string seg = MakeSegment(name);
  auto w = archive_->NewWriter(name);
  ASSERT_TRUE(w.ok());
  // First flush with half the file: refused, nothing stored.
  ASSERT_TRUE((*w)->Write(0, std::string_view(seg).substr(0, kSeg / 2)).ok());
  Status first = (*w)->Commit();
  EXPECT_EQ(first.code(), Status::Code::kInvalidArgument);
  Status again = (*w)->Commit();
  EXPECT_EQ(again.code(), first.code());
  EXPECT_EQ(again.message(), first.message());
  EXPECT_EQ(Count(), 0u);
  // More writes after a commit reopen the file; the next commit stores it.
  ASSERT_TRUE((*w)->Write(kSeg / 2, std::string_view(seg).substr(kSeg / 2)).ok());
  ASSERT_TRUE((*w)->Commit().ok());
  auto info = archive_->Get(name);
  ASSERT_TRUE(info.ok());
  EXPECT_TRUE((*w)->Commit().ok());
  EXPECT_EQ(archive_->Get(name)->archived_time, info->archived_time);
  EXPECT_EQ(Fetch(name), seg);
  // Writing past the end of a committed file: the next commit compares, and refuses.
  ASSERT_TRUE((*w)->Write(kSeg, "x").ok());
  EXPECT_FALSE((*w)->Commit().ok());
  EXPECT_EQ(Fetch(name), seg);
}

TEST_P(WalArchiveTest, ForwardGapsAndTruncate) {
  const std::string name = "000000010000000000000007";
  std::string seg = MakeSegment(name);
  // The synthetic segment's second half is zeros: write the header page, skip, write the rest of
  // the data, and extend with truncate, as a sparse copy would.
  auto w = archive_->NewWriter(name);
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE((*w)->Write(0, std::string_view(seg).substr(0, 8192)).ok());
  ASSERT_TRUE((*w)->Write(65536, std::string_view(seg).substr(65536, kSeg / 2 - 65536)).ok());
  // The gap [8192, 65536) was not zeros in `seg`; fill `seg` to match what was written.
  std::string expect = seg;
  std::fill(expect.begin() + 8192, expect.begin() + 65536, '\0');
  // Writes must go forward.
  EXPECT_EQ((*w)->Write(4096, "x").code(), Status::Code::kInvalidArgument);
  ASSERT_TRUE((*w)->Truncate(kSeg).ok());
  EXPECT_EQ((*w)->size(), kSeg);
  ASSERT_TRUE((*w)->Commit().ok());
  EXPECT_EQ(Fetch(name), expect);

  // Shrinking truncate: write too much, cut back.
  const std::string name2 = "000000010000000000000008";
  std::string seg2 = MakeSegment(name2, {.seed = 9});
  auto w2 = archive_->NewWriter(name2);
  ASSERT_TRUE((*w2)->Write(0, seg2).ok());
  ASSERT_TRUE((*w2)->Write(kSeg, "trailing junk").ok());
  ASSERT_TRUE((*w2)->Truncate(kSeg).ok());
  ASSERT_TRUE((*w2)->Commit().ok());
  EXPECT_EQ(Fetch(name2), seg2);

  // Truncate to zero starts over (O_TRUNC on an open file).
  const std::string name3 = "000000010000000000000009";
  std::string seg3 = MakeSegment(name3, {.seed = 10});
  auto w3 = archive_->NewWriter(name3);
  ASSERT_TRUE((*w3)->Write(0, MakeSegment(name3, {.seed = 11})).ok());
  ASSERT_TRUE((*w3)->Truncate(0).ok());
  ASSERT_TRUE((*w3)->Write(0, seg3).ok());
  ASSERT_TRUE((*w3)->Commit().ok());
  EXPECT_EQ(Fetch(name3), seg3);

  // Nothing can grow past 1 GiB.
  auto w4 = archive_->NewWriter("00000005.history");
  EXPECT_EQ((*w4)->Write(uint64_t{1} << 30, "x").code(), Status::Code::kInvalidArgument);
  EXPECT_EQ((*w4)->Truncate((uint64_t{1} << 30) + 1).code(), Status::Code::kInvalidArgument);
}

TEST_P(WalArchiveTest, ConcurrentCommitsOfOneName) {
  for (int round = 0; round < 5; ++round) {
    char name[32];
    snprintf(name, sizeof(name), "0000000100000000000000%02X", round + 1);
    const int kWriters = 4;
    std::vector<std::string> segs;
    for (int i = 0; i < kWriters; ++i) {
      segs.push_back(MakeSegment(name, {.seed = static_cast<uint32_t>(100 * round + i)}));
    }
    std::vector<Status> results(kWriters);
    std::vector<std::unique_ptr<WalWriter>> writers;
    for (int i = 0; i < kWriters; ++i) {
      auto w = archive_->NewWriter(name);
      ASSERT_TRUE(w.ok());
      ASSERT_TRUE((*w)->Write(0, segs[i]).ok());
      writers.push_back(std::move(w).value());
    }
    std::atomic<int> ready{0};
    std::vector<std::thread> threads;
    for (int i = 0; i < kWriters; ++i) {
      threads.emplace_back([&, i] {
        ready++;
        while (ready < kWriters) std::this_thread::yield();
        results[i] = writers[i]->Commit();
      });
    }
    for (auto& t : threads) t.join();
    int winners = 0, winner = -1;
    for (int i = 0; i < kWriters; ++i) {
      if (results[i].ok()) {
        ++winners;
        winner = i;
      } else {
        EXPECT_TRUE(results[i].IsAlreadyExists()) << results[i].ToString();
      }
    }
    ASSERT_EQ(winners, 1);
    EXPECT_EQ(Fetch(name), segs[winner]);
  }
  // The same bytes from many writers at once: all succeed.
  const std::string name = "000000010000000000000010";
  std::string seg = MakeSegment(name, {.seed = 77});
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&] {
      if (Push(name, seg).ok()) ok++;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok, 4);
  EXPECT_EQ(Fetch(name), seg);
}

TEST_P(WalArchiveTest, CorruptChunkIsAnError) {
  const std::string name = "000000010000000000000001";
  // A WAL chunk is 1 MiB: a 4 MiB partial file has a few.
  const std::string partial = name + ".partial";
  std::string big = MakeSegment(name, {.seg_size = 16 << 20, .file_size = 4 << 20});
  ASSERT_TRUE(Push(partial, big).ok());
  auto info = archive_->Get(partial);
  ASSERT_TRUE(info.ok());
  TreeReader reader(repo_->chunks(), info->data, repo_->config().chunk_size);
  EXPECT_EQ(reader.chunk_size(), kWalChunkSize);
  ASSERT_EQ(reader.leaf_count(), 4u);
  auto leaf = reader.Leaf(1);  // the first half is random bytes, the rest zeros
  ASSERT_TRUE(leaf.ok());
  ASSERT_FALSE(leaf->IsZero());
  // Its stored bytes damaged (a chunk's id is checked against the bytes it decodes to).
  std::string stored;
  ASSERT_TRUE(repo_->chunks()->GetStored(*leaf, &stored).ok());
  for (size_t i = 1; i < stored.size(); i += 101) stored[i] = static_cast<char>(stored[i] ^ 0x21);
  ASSERT_TRUE(repo_->chunks()->ReplaceStored(*leaf, stored).ok());
  std::string out;
  Status s = archive_->ReadFile(*info, [&](std::string_view p) {
    out.append(p);
    return Status::OK();
  });
  EXPECT_TRUE(s.IsCorruption()) << s.ToString();
  EXPECT_NE(s.message().find(partial), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("offset 1048576"), std::string::npos) << s.message();
  // At most what comes before the bad chunk, never a byte of it or after it.
  EXPECT_LE(out.size(), 1u << 20);
  EXPECT_TRUE(out == big.substr(0, out.size()));
}

// archive-push / archive-get through RunCli, against a RocksDB repository.
class TestRepos : public RepoProvider {
 public:
  Result<Repository*> Get(const std::string& path) override {
    if (!repo_) {
      auto r = Repository::Open(path);
      if (!r.ok()) return r.status();
      repo_ = std::move(r).value();
    }
    return repo_.get();
  }
  std::unique_ptr<Repository> repo_;
};

struct CliRun {
  int code;
  std::string out, err;
};

CliRun RunCommand(const std::vector<std::string>& args) {
  CliRun r;
  char* out_buf = nullptr;
  char* err_buf = nullptr;
  size_t out_len = 0, err_len = 0;
  CommandIo io;
  io.out = open_memstream(&out_buf, &out_len);
  io.err = open_memstream(&err_buf, &err_len);
  TestRepos repos;  // one process per command, as on the command line
  std::vector<std::string> full = {"pgbackfs"};
  full.insert(full.end(), args.begin(), args.end());
  r.code = RunCli(full, &io, &repos);
  fclose(io.out);
  fclose(io.err);
  r.out.assign(out_buf, out_len);
  r.err.assign(err_buf, err_len);
  free(out_buf);
  free(err_buf);
  return r;
}

TEST(ArchiveCommandsTest, PushAndGet) {
  std::string dir = MakeTempDir();
  std::string repo = dir + "/repo";
  ASSERT_TRUE(Repository::Init(repo, RepoConfig()).ok());
  std::filesystem::create_directory(dir + "/pg_wal");
  std::filesystem::create_directory(dir + "/other");
  const std::string name = "000000010000000000000001";
  std::string seg = MakeSegment(name);
  WriteWholeFile(dir + "/pg_wal/" + name, seg);

  CliRun r = RunCommand({"archive-push", repo, dir + "/pg_wal/" + name});
  EXPECT_EQ(r.code, 0) << r.err;
  r = RunCommand({"archive-push", repo, dir + "/pg_wal/" + name});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("already archived"), std::string::npos) << r.out;

  r = RunCommand({"archive-get", repo, name, dir + "/other/RECOVERYXLOG"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(ReadWholeFile(dir + "/other/RECOVERYXLOG"), seg);
  // No temporary file is left behind.
  int files = 0;
  for (auto& e : std::filesystem::directory_iterator(dir + "/other")) {
    (void)e;
    ++files;
  }
  EXPECT_EQ(files, 1);

  r = RunCommand({"archive-get", repo, "00000002.history", dir + "/other/RECOVERYHISTORY"});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("not found in the archive"), std::string::npos) << r.err;
  EXPECT_FALSE(std::filesystem::exists(dir + "/other/RECOVERYHISTORY"));

  // A different duplicate, a bad name, a wrong size, another cluster: exit 1, stored file kept.
  WriteWholeFile(dir + "/other/" + name, MakeSegment(name, {.seed = 5}));
  r = RunCommand({"archive-push", repo, dir + "/other/" + name});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("already archived with different content"), std::string::npos) << r.err;
  WriteWholeFile(dir + "/other/xlog.bin", seg);
  r = RunCommand({"archive-push", repo, dir + "/other/xlog.bin"});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("not a WAL file name"), std::string::npos) << r.err;
  WriteWholeFile(dir + "/other/000000010000000000000002", seg.substr(0, 1000));
  r = RunCommand({"archive-push", repo, dir + "/other/000000010000000000000002"});
  EXPECT_EQ(r.code, 1) << r.err;
  WriteWholeFile(dir + "/other/000000010000000000000002",
                 MakeSegment("000000010000000000000002", {.sysid = 99}));
  r = RunCommand({"archive-push", repo, dir + "/other/000000010000000000000002"});
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("cluster"), std::string::npos) << r.err;
  r = RunCommand({"archive-push", repo, dir + "/other/missing"});
  EXPECT_EQ(r.code, 1) << r.err;
  r = RunCommand({"archive-get", repo, name, dir + "/other/again"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(ReadWholeFile(dir + "/other/again"), seg);
  r = RunCommand({"archive-get", repo, name});
  EXPECT_EQ(r.code, 2);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace pgbackfs
