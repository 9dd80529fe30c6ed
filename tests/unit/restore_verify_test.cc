#include <sys/stat.h>

#include <fstream>
#include <sstream>

#include "repo/file_util.h"
#include "repo/restore.h"
#include "repo/verify.h"
#include "tests/unit/test_util.h"

namespace pgbackfs {
namespace {

class RestoreVerifyTest : public RepoTest {
 protected:
  SnapshotInfo MakeSnapshot() {
    auto b = repo_->NewSnapshotBuilder();
    files_["PG_VERSION"] = "15\n";
    files_["base/1/1259"] = RandomBytes(8192 * 3 + 17, 1);
    files_["base/1/big"] = RandomBytes(8192 * 1200, 2);
    std::string sparse(8192 * 10, '\0');
    sparse[8192 * 5] = 'x';
    files_["base/1/sparse"] = sparse;
    files_["empty"] = "";
    for (auto& [p, d] : files_) EXPECT_TRUE(b->AddSmallFile(p, 0600, 1700000000, d).ok());
    EXPECT_TRUE(b->AddDirectory("pg_notify", 0700, 1700000000).ok());
    EXPECT_TRUE(b->AddSymlink("link", "base/1", 1700000000).ok());
    auto root = b->Finish();
    EXPECT_TRUE(root.ok());
    SnapshotInfo info;
    info.id = *repo_->NewSnapshotId(1700000000);
    info.root = *root;
    EXPECT_TRUE(repo_->CommitSnapshot(info).ok());
    return info;
  }
  void ExpectRestored(const std::string& dest) {
    for (auto& [p, d] : files_) {
      std::string got;
      ASSERT_TRUE(ReadSmallFile(dest + "/" + p, &got).ok()) << p;
      EXPECT_EQ(got, d) << p;
      struct stat st;
      ASSERT_EQ(stat((dest + "/" + p).c_str(), &st), 0);
      EXPECT_EQ(st.st_mode & 0777, 0600u);
      EXPECT_EQ(st.st_mtime, 1700000000);
    }
    struct stat st;
    EXPECT_EQ(stat((dest + "/pg_notify").c_str(), &st), 0);
    EXPECT_TRUE(S_ISDIR(st.st_mode));
    char buf[64] = {};
    EXPECT_GT(readlink((dest + "/link").c_str(), buf, sizeof(buf)), 0);
    EXPECT_STREQ(buf, "base/1");
  }
  std::map<std::string, std::string> files_;
};

TEST_P(RestoreVerifyTest, RestoresByteIdentical) {
  SnapshotInfo snap = MakeSnapshot();
  for (int jobs : {1, 3}) {
    std::string dest = dir_ + "/out" + std::to_string(jobs);
    RestoreOptions options;
    options.jobs = jobs;
    RestoreStats stats;
    ASSERT_TRUE(RestoreSnapshot(repo_.get(), snap, dest, options, &stats).ok());
    EXPECT_EQ(stats.files, files_.size());
    ExpectRestored(dest);
  }
}

TEST_P(RestoreVerifyTest, RefusesNonEmptyDestWithoutDelta) {
  SnapshotInfo snap = MakeSnapshot();
  std::string dest = dir_ + "/busy";
  mkdir(dest.c_str(), 0700);
  std::ofstream(dest + "/precious") << "keep me";
  RestoreStats stats;
  Status s = RestoreSnapshot(repo_.get(), snap, dest, RestoreOptions(), &stats);
  EXPECT_EQ(s.code(), Status::Code::kInvalidArgument);
  EXPECT_NE(s.message().find("not empty"), std::string::npos);
  std::string kept;
  ASSERT_TRUE(ReadSmallFile(dest + "/precious", &kept).ok());
  EXPECT_EQ(kept, "keep me");
}

TEST_P(RestoreVerifyTest, DeltaRewritesOnlyWhatDiffers) {
  SnapshotInfo snap = MakeSnapshot();
  std::string dest = dir_ + "/delta";
  RestoreStats stats;
  ASSERT_TRUE(RestoreSnapshot(repo_.get(), snap, dest, RestoreOptions(), &stats).ok());
  // Damage the copy: change one page, extend a file, add a stray file, replace a dir by a file.
  {
    std::fstream f(dest + "/base/1/big", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(8192 * 7 + 3);
    f.put('!');
    std::ofstream(dest + "/base/1/1259", std::ios::app) << "extra";
    std::ofstream(dest + "/stray") << "x";
    std::filesystem::remove_all(dest + "/pg_notify");
    std::ofstream(dest + "/pg_notify") << "not a dir";
  }
  RestoreOptions options;
  options.delta = true;
  RestoreStats delta;
  ASSERT_TRUE(RestoreSnapshot(repo_.get(), snap, dest, options, &delta).ok());
  ExpectRestored(dest);
  EXPECT_FALSE(PathExists(dest + "/stray"));
  EXPECT_EQ(delta.files_removed, 1u);
  EXPECT_LT(delta.bytes_written, 8192u * 8);  // the changed page and the shortened file's tail
}

TEST_P(RestoreVerifyTest, VerifyFindsDamageAndRestoreRefusesIt) {
  SnapshotInfo snap = MakeSnapshot();
  VerifyReport clean;
  ASSERT_TRUE(VerifyRepository(repo_.get(), "", &clean).ok());
  EXPECT_TRUE(clean.ok());
  EXPECT_EQ(clean.snapshots, 1u);
  EXPECT_EQ(clean.files, files_.size());
  EXPECT_GT(clean.stored_chunks_checked, 1200u);

  // Flip a byte in the stored chunk at offset 8192*600 of base/1/big.
  auto entry = repo_->reader()->Lookup(snap.root, "base/1/big");
  ASSERT_TRUE(entry.ok());
  auto id = repo_->reader()->OpenFile(*entry)->Leaf(600);
  ASSERT_TRUE(id.ok());
  std::string stored;
  ASSERT_TRUE(repo_->chunks()->GetStored(*id, &stored).ok());
  stored[stored.size() / 2] ^= 1;
  ASSERT_TRUE(repo_->chunks()->ReplaceStored(*id, stored).ok());

  for (std::string which : {std::string(), snap.id}) {
    VerifyReport report;
    ASSERT_TRUE(VerifyRepository(repo_.get(), which, &report).ok());
    ASSERT_EQ(report.problems.size(), 1u) << "snapshot '" << which << "'";
    EXPECT_EQ(report.problems[0].snapshot, snap.id);
    EXPECT_EQ(report.problems[0].path, "base/1/big");
    EXPECT_EQ(report.problems[0].offset, 8192u * 600);
  }

  RestoreStats stats;
  Status s = RestoreSnapshot(repo_.get(), snap, dir_ + "/bad", RestoreOptions(), &stats);
  EXPECT_TRUE(s.IsCorruption()) << s.ToString();
  EXPECT_NE(s.message().find("base/1/big"), std::string::npos) << s.message();

  // A missing chunk is named too.
  KvBatch batch;
  batch.Delete(Cf::kChunks, id->AsKey());
  ASSERT_TRUE(repo_->kv()->Write(batch, false).ok());
  VerifyReport missing;
  ASSERT_TRUE(VerifyRepository(repo_.get(), "", &missing).ok());
  ASSERT_EQ(missing.problems.size(), 1u);
  EXPECT_NE(missing.problems[0].message.find("missing"), std::string::npos);
}

INSTANTIATE_TEST_SUITE_P(Stores, RestoreVerifyTest, ::testing::Bool(), StoreName);

}  // namespace
}  // namespace pgbackfs
