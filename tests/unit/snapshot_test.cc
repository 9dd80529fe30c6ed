#include "repo/snapshot.h"

#include "tests/unit/test_util.h"

namespace pgbackfs {
namespace {

class SnapshotTest : public RepoTest {};

TEST(EntryCoding, RoundTrips) {
  Entry e;
  e.name = "16384";
  e.type = EntryType::kFile;
  e.mode = 0640;
  e.mtime_sec = 1700000000;
  e.mtime_nsec = 5;
  e.data.size = 123456789;
  e.data.root.height = 2;
  e.data.root.id = ComputeChunkId("abc");
  Entry link;
  link.name = "pg_tblspc_link";
  link.type = EntryType::kSymlink;
  link.link_target = "/somewhere/else";
  std::string enc;
  ASSERT_TRUE(EncodeDirectory({e, link}, &enc).ok());
  std::vector<Entry> out;
  ASSERT_TRUE(DecodeDirectory(enc, &out).ok());
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[0].name, e.name);
  EXPECT_EQ(out[0].mode, e.mode);
  EXPECT_EQ(out[0].mtime_sec, e.mtime_sec);
  EXPECT_EQ(out[0].mtime_nsec, e.mtime_nsec);
  EXPECT_EQ(out[0].data.size, e.data.size);
  EXPECT_EQ(out[0].data.root, e.data.root);
  EXPECT_EQ(out[1].link_target, link.link_target);
  EXPECT_EQ(out[1].type, EntryType::kSymlink);
}

TEST(EntryCoding, RejectsDamagedListings) {
  Entry e;
  e.name = "file";
  std::string enc;
  ASSERT_TRUE(EncodeDirectory({e}, &enc).ok());
  std::vector<Entry> out;
  for (size_t cut = 0; cut < enc.size(); ++cut) {
    EXPECT_FALSE(DecodeDirectory(enc.substr(0, cut), &out).ok()) << cut;
  }
  std::string bad = enc;
  bad[0] = 'X';
  EXPECT_FALSE(DecodeDirectory(bad, &out).ok());
  // Names that would escape a directory.
  for (const char* name : {"..", ".", "a/b"}) {
    Entry evil;
    evil.name = name;
    std::string enc2;
    ASSERT_TRUE(EncodeDirectory({evil}, &enc2).ok());
    EXPECT_TRUE(DecodeDirectory(enc2, &out).IsCorruption()) << name;
  }
  EXPECT_FALSE(DecodeDirectory(enc + "x", &out).ok());
}

TEST(SnapshotInfoCoding, RoundTrips) {
  SnapshotInfo info;
  info.id = "20261122-013800";
  info.label = "nightly";
  info.start_lsn = "0/2000028";
  info.end_lsn = "0/2000100";
  info.timeline = 1;
  info.pg_version_num = 150018;
  info.system_identifier = "7300000000000000000";
  info.logical_size = 1 << 30;
  info.root.type = EntryType::kDirectory;
  info.root.data.size = 999;
  info.root.data.root.height = 1;
  info.root.data.root.id = ComputeChunkId("root");
  SnapshotInfo out;
  ASSERT_TRUE(SnapshotInfo::Decode(info.Encode(), &out).ok());
  EXPECT_EQ(out.id, info.id);
  EXPECT_EQ(out.label, info.label);
  EXPECT_EQ(out.end_lsn, info.end_lsn);
  EXPECT_EQ(out.system_identifier, info.system_identifier);
  EXPECT_EQ(out.logical_size, info.logical_size);
  EXPECT_EQ(out.root.data.root, info.root.data.root);
  EXPECT_EQ(out.root.data.size, info.root.data.size);
  EXPECT_FALSE(SnapshotInfo::Decode("{not json", &out).ok());
  EXPECT_FALSE(SnapshotInfo::Decode("{\"format\": 99}", &out).ok());
}

TEST_P(SnapshotTest, BuildsCommitsAndReadsATree) {
  auto builder = repo_->NewSnapshotBuilder();
  std::string big = RandomBytes(100000, 1);
  // Out of order, parents implied, a replaced file, as a BASE_BACKUP tar can do.
  ASSERT_TRUE(builder->AddSmallFile("pg_wal/000000010000000000000002", 0600, 5, big).ok());
  ASSERT_TRUE(builder->AddDirectory("base", 0700, 1).ok());
  ASSERT_TRUE(builder->AddSmallFile("base/1/1259", 0600, 2, "pg_class").ok());
  ASSERT_TRUE(builder->AddSmallFile("PG_VERSION", 0600, 3, "15\n").ok());
  ASSERT_TRUE(builder->AddSmallFile("PG_VERSION", 0600, 4, "15\n").ok());
  ASSERT_TRUE(builder->AddSymlink("pg_tblspc/16400", "/data/ts", 6).ok());
  ASSERT_TRUE(builder->AddSmallFile("empty", 0600, 7, "").ok());
  EXPECT_FALSE(builder->AddSmallFile("../escape", 0600, 7, "x").ok());
  EXPECT_FALSE(builder->AddSmallFile("PG_VERSION/sub", 0600, 7, "x").ok());
  EXPECT_EQ(builder->file_count(), 4u);
  EXPECT_EQ(builder->logical_size(), big.size() + 8 + 3);
  auto root = builder->Finish();
  ASSERT_TRUE(root.ok());

  SnapshotInfo info;
  info.id = *repo_->NewSnapshotId(1700000000);
  info.root = *root;
  ASSERT_TRUE(repo_->CommitSnapshot(info).ok());
  builder.reset();            // its ChunkWriter must not outlive the repository's ChunkStore
  if (!GetParam()) Reopen();  // the memory store does not persist

  auto got = repo_->GetSnapshot(info.id);
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  SnapshotReader* reader = repo_->reader();
  std::vector<Entry> top;
  ASSERT_TRUE(reader->ReadDir(got->root, &top).ok());
  std::vector<std::string> names;
  for (auto& e : top) names.push_back(e.name);
  EXPECT_EQ(names,
            (std::vector<std::string>{"PG_VERSION", "base", "empty", "pg_tblspc", "pg_wal"}));

  auto wal = reader->Lookup(got->root, "pg_wal/000000010000000000000002");
  ASSERT_TRUE(wal.ok());
  std::string content;
  ASSERT_TRUE(reader->OpenFile(*wal)->Read(0, wal->size(), &content).ok());
  EXPECT_EQ(content, big);
  auto link = reader->Lookup(got->root, "pg_tblspc/16400");
  ASSERT_TRUE(link.ok());
  EXPECT_EQ(link->link_target, "/data/ts");
  EXPECT_TRUE(reader->Lookup(got->root, "base/1/nope").status().IsNotFound());
  EXPECT_TRUE(reader->Lookup(got->root, "PG_VERSION/x").status().IsNotFound());

  std::vector<std::string> walked;
  ASSERT_TRUE(reader
                  ->Walk(got->root, "",
                         [&](const std::string& p, const Entry&) {
                           walked.push_back(p);
                           return Status::OK();
                         })
                  .ok());
  EXPECT_EQ(walked.size(), 9u);
  EXPECT_TRUE(repo_->GetSnapshot("nope").status().IsNotFound());
  EXPECT_EQ(repo_->GetSnapshot("latest")->id, info.id);
  // A second id in the same second gets a suffix.
  EXPECT_EQ(*repo_->NewSnapshotId(1700000000), info.id + "-2");
}

TEST_P(SnapshotTest, UnchangedTreesShareEverything) {
  auto build = [&](const std::string& changed) {
    auto builder = repo_->NewSnapshotBuilder();
    for (int i = 0; i < 300; ++i) {
      EXPECT_TRUE(
          builder
              ->AddSmallFile("base/5/" + std::to_string(10000 + i), 0600, 1, RandomBytes(9000, i))
              .ok());
    }
    EXPECT_TRUE(builder->AddSmallFile("base/5/10150", 0600, 1, changed).ok());
    auto root = builder->Finish();
    EXPECT_TRUE(root.ok());
    return builder->writer()->stats().new_stored_bytes;
  };
  uint64_t first = build("a");
  uint64_t second = build("b");
  EXPECT_GT(first, 300u * 9000);
  EXPECT_LT(second, 4 * 8192u);  // the changed file, one directory chunk, the parents
}

TEST(PathParsing, Splits) {
  std::vector<std::string> parts;
  ASSERT_TRUE(SplitPath("a//b/c/", &parts).ok());
  EXPECT_EQ(parts, (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_FALSE(SplitPath("a/../b", &parts).ok());
  EXPECT_FALSE(SplitPath("./a", &parts).ok());
}

INSTANTIATE_TEST_SUITE_P(Stores, SnapshotTest, ::testing::Bool(), StoreName);

}  // namespace
}  // namespace pgbackfs
