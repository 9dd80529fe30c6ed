#include "repo/tar_reader.h"

#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace pgbackfs {
namespace {

constexpr size_t kBlock = 512;

// Builds ustar archives by hand, so that every odd case can be written down.
struct HeaderSpec {
  std::string name;
  char type = '0';
  uint64_t size = 0;
  uint32_t mode = 0600;
  int64_t mtime = 1700000000;
  std::string link;
  std::string prefix;
  bool base256_size = false;
};

void PutOctal(std::string* h, size_t off, size_t len, uint64_t v) {
  char buf[32];
  snprintf(buf, sizeof(buf), "%0*llo", static_cast<int>(len - 1),
           static_cast<unsigned long long>(v));
  std::memcpy(&(*h)[off], buf, len - 1);
  (*h)[off + len - 1] = '\0';
}

std::string Header(const HeaderSpec& s) {
  std::string h(kBlock, '\0');
  std::memcpy(&h[0], s.name.data(), std::min<size_t>(s.name.size(), 100));
  PutOctal(&h, 100, 8, s.mode);
  PutOctal(&h, 108, 8, 26);  // uid
  PutOctal(&h, 116, 8, 26);  // gid
  if (s.base256_size) {
    h[124] = static_cast<char>(0x80);
    uint64_t v = s.size;
    for (int i = 11; i >= 1; --i) {
      h[124 + i] = static_cast<char>(v & 0xff);
      v >>= 8;
    }
  } else {
    PutOctal(&h, 124, 12, s.size);
  }
  PutOctal(&h, 136, 12, static_cast<uint64_t>(s.mtime));
  h[156] = s.type;
  std::memcpy(&h[157], s.link.data(), std::min<size_t>(s.link.size(), 100));
  std::memcpy(&h[257], "ustar", 6);
  std::memcpy(&h[263], "00", 2);
  std::memcpy(&h[345], s.prefix.data(), std::min<size_t>(s.prefix.size(), 155));
  std::memset(&h[148], ' ', 8);
  unsigned sum = 0;
  for (unsigned char c : h) sum += c;
  char buf[8];
  snprintf(buf, sizeof(buf), "%06o", sum);
  std::memcpy(&h[148], buf, 6);
  h[154] = '\0';
  h[155] = ' ';
  return h;
}

std::string Padded(const std::string& data) {
  std::string out = data;
  out.append((kBlock - data.size() % kBlock) % kBlock, '\0');
  return out;
}

std::string File(const std::string& name, const std::string& data, uint32_t mode = 0600) {
  HeaderSpec s;
  s.name = name;
  s.size = data.size();
  s.mode = mode;
  return Header(s) + Padded(data);
}

std::string Dir(const std::string& name, uint32_t mode = 0700) {
  HeaderSpec s;
  s.name = name;
  s.type = '5';
  s.mode = mode;
  return Header(s);
}

std::string Symlink(const std::string& name, const std::string& target) {
  HeaderSpec s;
  s.name = name;
  s.type = '2';
  s.mode = 0777;
  s.link = target;
  return Header(s);
}

std::string PaxRecord(const std::string& key, const std::string& value) {
  // "<len> key=value\n", where len counts itself.
  std::string body = " " + key + "=" + value + "\n";
  size_t len = body.size() + 1;
  while (std::to_string(len).size() + body.size() != len) ++len;
  return std::to_string(len) + body;
}

std::string Meta(char type, const std::string& body) {
  HeaderSpec s;
  s.name = type == 'x' ? "PaxHeaders/x" : "././@LongLink";
  s.type = type;
  s.size = body.size();
  return Header(s) + Padded(body);
}

std::string EndOfArchive() { return std::string(2 * kBlock, '\0'); }

// Records what the reader reports, one line per event; file data is appended to the file's line.
class RecordingSink : public TarSink {
 public:
  Status OnDirectory(const std::string& path, uint32_t mode, int64_t mtime) override {
    events.push_back("dir " + path + " " + Mode(mode));
    return Status::OK();
  }
  Status OnSymlink(const std::string& path, const std::string& target, int64_t mtime) override {
    events.push_back("symlink " + path + " -> " + target);
    return Status::OK();
  }
  Status OnFileStart(const std::string& path, uint32_t mode, int64_t mtime,
                     uint64_t size) override {
    if (in_file) return Status::Corruption("nested file");
    in_file = true;
    last_mtime = mtime;
    events.push_back("file " + path + " " + Mode(mode) + " " + std::to_string(size) + ":");
    return Status::OK();
  }
  Status OnFileData(std::string_view data) override {
    if (!in_file) return Status::Corruption("data outside a file");
    if (data.empty()) return Status::Corruption("empty data piece");
    events.back().append(data);
    return fail_on_data;
  }
  Status OnFileEnd() override {
    if (!in_file) return Status::Corruption("end outside a file");
    in_file = false;
    events.back().append("|end");
    return Status::OK();
  }
  static std::string Mode(uint32_t mode) {
    char buf[8];
    snprintf(buf, sizeof(buf), "%04o", mode);
    return buf;
  }

  std::vector<std::string> events;
  bool in_file = false;
  int64_t last_mtime = 0;
  Status fail_on_data;
};

// Feeds `archive` in pieces of sizes drawn by `next_size`, then finishes.
Status FeedInPieces(TarReader* reader, const std::string& archive,
                    const std::function<size_t()>& next_size) {
  std::string_view rest = archive;
  while (!rest.empty()) {
    size_t n = std::min(rest.size(), std::max<size_t>(1, next_size()));
    RETURN_IF_ERROR(reader->Feed(rest.substr(0, n)));
    rest.remove_prefix(n);
  }
  return reader->Finish();
}

std::string Bytes(size_t n, char seed) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>(seed + i * 7 + i / 251);
  return s;
}

// An archive with one of each ordinary kind of entry.
std::string MixedArchive() {
  return Dir("./") + Dir("./base/", 0700) + File("./base/PG_VERSION", "15\n") +
         File("./base/empty", "") + File("./base/one", "x") +
         File("./base/block", Bytes(512, 'a'), 0640) + File("./base/two_blocks", Bytes(1024, 'b')) +
         File("./base/odd", Bytes(8193, 'c')) + Symlink("./pg_wal_link", "/var/lib/wal") +
         Dir("./pg_wal/") + EndOfArchive() + std::string(8 * kBlock, '\0');  // record padding
}

std::vector<std::string> MixedEvents() {
  return {"dir base 0700",
          "file base/PG_VERSION 0600 3:15\n|end",
          "file base/empty 0600 0:|end",
          "file base/one 0600 1:x|end",
          "file base/block 0640 512:" + Bytes(512, 'a') + "|end",
          "file base/two_blocks 0600 1024:" + Bytes(1024, 'b') + "|end",
          "file base/odd 0600 8193:" + Bytes(8193, 'c') + "|end",
          "symlink pg_wal_link -> /var/lib/wal",
          "dir pg_wal 0700"};
}

TEST(TarReaderTest, FilesDirectoriesSymlinks) {
  RecordingSink sink;
  TarReader reader(&sink);
  std::string archive = MixedArchive();
  ASSERT_TRUE(reader.Feed(archive).ok());
  ASSERT_TRUE(reader.Finish().ok());
  EXPECT_EQ(sink.events, MixedEvents());
  EXPECT_EQ(sink.last_mtime, 1700000000);
  EXPECT_EQ(reader.bytes(), archive.size());
}

TEST(TarReaderTest, OneBytePieces) {
  RecordingSink sink;
  TarReader reader(&sink);
  ASSERT_TRUE(FeedInPieces(&reader, MixedArchive(), [] { return size_t{1}; }).ok());
  EXPECT_EQ(sink.events, MixedEvents());
}

TEST(TarReaderTest, RandomPieces) {
  for (uint32_t seed = 1; seed <= 20; ++seed) {
    std::mt19937 rng(seed);
    std::uniform_int_distribution<size_t> dist(1, 1500);
    RecordingSink sink;
    TarReader reader(&sink);
    ASSERT_TRUE(FeedInPieces(&reader, MixedArchive(), [&] { return dist(rng); }).ok()) << seed;
    EXPECT_EQ(sink.events, MixedEvents()) << seed;
  }
}

TEST(TarReaderTest, NoEndOfArchiveBlocks) {
  // BASE_BACKUP sends base.tar without the two zero blocks; the archive ends between entries.
  RecordingSink sink;
  TarReader reader(&sink);
  ASSERT_TRUE(reader.Feed(File("a", "hello") + File("b", "")).ok());
  EXPECT_TRUE(reader.Finish().ok());
  EXPECT_EQ(sink.events.size(), 2u);
}

TEST(TarReaderTest, EmptyArchive) {
  RecordingSink sink;
  TarReader reader(&sink);
  EXPECT_TRUE(reader.Finish().ok());
  EXPECT_TRUE(sink.events.empty());
}

TEST(TarReaderTest, Base256Size) {
  HeaderSpec s;
  s.name = "big";
  s.size = 600;
  s.base256_size = true;
  std::string data = Bytes(600, 'z');
  RecordingSink sink;
  TarReader reader(&sink);
  ASSERT_TRUE(reader.Feed(Header(s) + Padded(data) + File("after", "ok") + EndOfArchive()).ok());
  ASSERT_TRUE(reader.Finish().ok());
  ASSERT_EQ(sink.events.size(), 2u);
  EXPECT_EQ(sink.events[0], "file big 0600 600:" + data + "|end");
  EXPECT_EQ(sink.events[1], "file after 0600 2:ok|end");
}

TEST(TarReaderTest, UstarPrefix) {
  HeaderSpec s;
  s.name = "file";
  s.prefix = "base/16384";
  s.size = 1;
  RecordingSink sink;
  TarReader reader(&sink);
  ASSERT_TRUE(reader.Feed(Header(s) + Padded("q")).ok());
  ASSERT_TRUE(reader.Finish().ok());
  EXPECT_EQ(sink.events, std::vector<std::string>{"file base/16384/file 0600 1:q|end"});
}

TEST(TarReaderTest, GnuLongNameAndLink) {
  std::string long_name = "base/" + std::string(150, 'n') + "/file";
  std::string long_target = "/" + std::string(120, 't');
  HeaderSpec f;
  f.name = long_name.substr(0, 100);  // truncated in the header itself
  f.size = 3;
  HeaderSpec l;
  l.name = "link";
  l.type = '2';
  l.link = long_target.substr(0, 100);
  std::string archive = Meta('L', long_name + std::string(1, '\0')) + Header(f) + Padded("abc") +
                        Meta('L', "a_long_link_name") + Meta('K', long_target) + Header(l) +
                        File("short", "s") + EndOfArchive();
  for (size_t piece : {size_t{1}, size_t{7}, size_t{100000}}) {
    RecordingSink sink;
    TarReader reader(&sink);
    ASSERT_TRUE(FeedInPieces(&reader, archive, [&] { return piece; }).ok());
    ASSERT_EQ(sink.events.size(), 3u);
    EXPECT_EQ(sink.events[0], "file " + long_name + " 0600 3:abc|end");
    EXPECT_EQ(sink.events[1], "symlink a_long_link_name -> " + long_target);
    // The long name applies to one entry only.
    EXPECT_EQ(sink.events[2], "file short 0600 1:s|end");
  }
}

TEST(TarReaderTest, PaxRecords) {
  std::string long_path = "pg_wal/" + std::string(200, 'p');
  std::string data = Bytes(700, 'd');
  HeaderSpec f;
  f.name = "truncated";
  f.size = 0;  // pax size= overrides the header
  HeaderSpec l;
  l.name = "lnk";
  l.type = '2';
  std::string archive =
      Meta('x', PaxRecord("path", long_path) + PaxRecord("size", "700") +
                    PaxRecord("mtime", "1700000000.5")) +
      Header(f) + Padded(data) + Meta('x', PaxRecord("linkpath", "/target/of/link")) + Header(l) +
      Meta('g', PaxRecord("comment", "global, ignored")) + File("plain", "p") + EndOfArchive();
  for (size_t piece : {size_t{1}, size_t{333}, size_t{100000}}) {
    RecordingSink sink;
    TarReader reader(&sink);
    ASSERT_TRUE(FeedInPieces(&reader, archive, [&] { return piece; }).ok());
    ASSERT_EQ(sink.events.size(), 3u);
    EXPECT_EQ(sink.events[0], "file " + long_path + " 0600 700:" + data + "|end");
    EXPECT_EQ(sink.events[1], "symlink lnk -> /target/of/link");
    EXPECT_EQ(sink.events[2], "file plain 0600 1:p|end");
  }
}

TEST(TarReaderTest, TruncatedInsideData) {
  std::string archive = File("a", Bytes(2000, 'x'));
  RecordingSink sink;
  TarReader reader(&sink);
  ASSERT_TRUE(reader.Feed(archive.substr(0, kBlock + 1000)).ok());
  Status s = reader.Finish();
  EXPECT_TRUE(s.IsCorruption()) << s.ToString();
}

TEST(TarReaderTest, TruncatedInsideHeader) {
  RecordingSink sink;
  TarReader reader(&sink);
  ASSERT_TRUE(reader.Feed(File("a", "x") + Dir("d").substr(0, 100)).ok());
  EXPECT_TRUE(reader.Finish().IsCorruption());
}

TEST(TarReaderTest, TruncatedInsidePadding) {
  RecordingSink sink;
  TarReader reader(&sink);
  std::string archive = File("a", "x");
  ASSERT_TRUE(reader.Feed(archive.substr(0, archive.size() - 10)).ok());
  EXPECT_FALSE(reader.Finish().ok());
}

TEST(TarReaderTest, BadHeaderChecksum) {
  std::string bad = File("a", "x");
  bad[0] = 'b';  // the checksum was computed for "a"
  RecordingSink sink;
  TarReader reader(&sink);
  Status s = reader.Feed(File("ok", "1") + bad);
  EXPECT_TRUE(s.IsCorruption()) << s.ToString();
  EXPECT_EQ(sink.events.size(), 1u);
  // Errors are sticky.
  EXPECT_FALSE(reader.Feed(File("more", "2")).ok());
  EXPECT_FALSE(reader.Finish().ok());
}

TEST(TarReaderTest, DotDotRejected) {
  for (const char* name : {"../etc/passwd", "base/../../x", "a/..", "/etc/passwd"}) {
    RecordingSink sink;
    TarReader reader(&sink);
    Status s = reader.Feed(File(name, "x"));
    EXPECT_FALSE(s.ok()) << name;
    EXPECT_EQ(s.code(), Status::Code::kInvalidArgument) << name;
    EXPECT_TRUE(sink.events.empty()) << name;
  }
  // The same through a pax path record.
  RecordingSink sink;
  TarReader reader(&sink);
  EXPECT_FALSE(reader.Feed(Meta('x', PaxRecord("path", "x/../../y")) + File("fine", "x")).ok());
  EXPECT_TRUE(sink.events.empty());
}

TEST(TarReaderTest, HardLinkRefused) {
  HeaderSpec s;
  s.name = "base/hard";
  s.type = '1';
  s.link = "base/other";
  RecordingSink sink;
  TarReader reader(&sink);
  Status s2 = reader.Feed(File("base/other", "x") + Header(s));
  EXPECT_EQ(s2.code(), Status::Code::kNotSupported) << s2.ToString();
  EXPECT_NE(s2.message().find("hard link"), std::string::npos);
}

TEST(TarReaderTest, DeviceRefused) {
  HeaderSpec s;
  s.name = "dev/null";
  s.type = '3';
  RecordingSink sink;
  TarReader reader(&sink);
  EXPECT_EQ(reader.Feed(Header(s)).code(), Status::Code::kNotSupported);
}

TEST(TarReaderTest, DataAfterEndRefused) {
  RecordingSink sink;
  TarReader reader(&sink);
  EXPECT_FALSE(reader.Feed(File("a", "x") + EndOfArchive() + File("b", "y")).ok());
}

TEST(TarReaderTest, SinkErrorStopsReading) {
  RecordingSink sink;
  sink.fail_on_data = Status::NoSpace("disk full");
  TarReader reader(&sink);
  Status s = reader.Feed(File("a", "x") + File("b", "y"));
  EXPECT_EQ(s.code(), Status::Code::kNoSpace);
  EXPECT_EQ(sink.events.size(), 1u);
  EXPECT_EQ(reader.Finish().code(), Status::Code::kNoSpace);
}

TEST(TarReaderTest, NormalizeTarPath) {
  std::string out;
  ASSERT_TRUE(NormalizeTarPath("./base/1/", &out).ok());
  EXPECT_EQ(out, "base/1");
  ASSERT_TRUE(NormalizeTarPath("./", &out).ok());
  EXPECT_EQ(out, "");
  ASSERT_TRUE(NormalizeTarPath("global/pg_control", &out).ok());
  EXPECT_EQ(out, "global/pg_control");
  EXPECT_FALSE(NormalizeTarPath("a//b", &out).ok());
  EXPECT_FALSE(NormalizeTarPath("a/./b", &out).ok());
  EXPECT_FALSE(NormalizeTarPath("/abs", &out).ok());
  EXPECT_FALSE(NormalizeTarPath("..", &out).ok());
}

TEST(TarReaderTest, BadPaxSizeIsCorruption) {
  RecordingSink sink;
  TarReader reader(&sink);
  Status s = reader.Feed(Meta('x', PaxRecord("size", "12abc")) + File("f", "x"));
  EXPECT_TRUE(s.IsCorruption()) << s.ToString();
  EXPECT_TRUE(sink.events.empty());
}

}  // namespace
}  // namespace pgbackfs
