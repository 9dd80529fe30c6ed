#include "tools/materialize.h"

#include <sys/stat.h>

#include <filesystem>
#include <fstream>

#include "tests/unit/test_util.h"

namespace pgbackfs {
namespace {

// A directory with a stand-in `postgres` that answers --version with `version_line`.
class FindPgBinTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = MakeTempDir(); }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  void FakePostgres(const std::string& version_line) {
    std::string path = dir_ + "/postgres";
    std::ofstream(path) << "#!/bin/sh\necho '" << version_line << "'\n";
    ASSERT_EQ(chmod(path.c_str(), 0755), 0);
  }
  std::string dir_;
};

TEST_F(FindPgBinTest, GivenDirectoryWithTheRightMajor) {
  FakePostgres("postgres (PostgreSQL) 15.3 (Debian 15.3-0+deb12u1)");
  std::string version;
  auto found = FindPgBin("15", dir_, &version);
  ASSERT_TRUE(found.ok()) << found.status().ToString();
  EXPECT_EQ(*found, dir_);
  EXPECT_EQ(version, "15.3");
}

TEST_F(FindPgBinTest, OldStyleMajorAndDevelopmentVersions) {
  std::string version;
  FakePostgres("postgres (PostgreSQL) 9.6.24");
  EXPECT_TRUE(FindPgBin("9.6", dir_, &version).ok());
  EXPECT_FALSE(FindPgBin("9", dir_, &version).ok());
  FakePostgres("postgres (PostgreSQL) 17devel");
  EXPECT_TRUE(FindPgBin("17", dir_, &version).ok());
  EXPECT_EQ(version, "17devel");
}

TEST_F(FindPgBinTest, WrongMajorIsNamed) {
  FakePostgres("postgres (PostgreSQL) 16.1");
  std::string version;
  auto found = FindPgBin("15", dir_, &version);
  ASSERT_FALSE(found.ok());
  const std::string& msg = found.status().message();
  EXPECT_NE(msg.find("PostgreSQL 15 server binary 'postgres'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("'" + dir_ + "' (--pg-bin): PostgreSQL 16.1"), std::string::npos) << msg;
}

TEST_F(FindPgBinTest, MissingOrSilentBinary) {
  std::string version;
  auto missing = FindPgBin("15", "/nonexistent", &version);
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("'/nonexistent' (--pg-bin): no postgres"),
            std::string::npos)
      << missing.status().message();
  FakePostgres("something else entirely");
  auto silent = FindPgBin("15", dir_, &version);
  ASSERT_FALSE(silent.ok());
  EXPECT_NE(silent.status().message().find("did not answer"), std::string::npos)
      << silent.status().message();
}

TEST_F(FindPgBinTest, SearchNamesEveryPlaceAndThePackage) {
  // No PostgreSQL 99 anywhere: the message lists the Debian location and the package to install.
  std::string version;
  auto found = FindPgBin("99", "", &version);
  ASSERT_FALSE(found.ok());
  const std::string& msg = found.status().message();
  EXPECT_NE(msg.find("/usr/lib/postgresql/99/bin"), std::string::npos) << msg;
  EXPECT_NE(msg.find("postgresql-99"), std::string::npos) << msg;
  EXPECT_NE(msg.find("--pg-bin"), std::string::npos) << msg;
}

class SnapshotPgMajorTest : public RepoTest {
 protected:
  SnapshotInfo Make(const std::optional<std::string>& pg_version) {
    auto b = repo_->NewSnapshotBuilder();
    EXPECT_TRUE(b->AddDirectory("base", 0700, 100).ok());
    if (pg_version) {
      EXPECT_TRUE(b->AddSmallFile("PG_VERSION", 0600, 100, *pg_version).ok());
    }
    auto root = b->Finish();
    EXPECT_TRUE(root.ok());
    SnapshotInfo snap;
    snap.id = *repo_->NewSnapshotId(1700000000 + count_++);
    snap.root = *root;
    snap.system_identifier = "42";
    EXPECT_TRUE(repo_->CommitSnapshot(snap).ok());
    return snap;
  }
  int count_ = 0;
};

TEST_P(SnapshotPgMajorTest, ReadsPgVersion) {
  auto major = SnapshotPgMajor(repo_.get(), Make("15\n"));
  ASSERT_TRUE(major.ok()) << major.status().ToString();
  EXPECT_EQ(*major, "15");
  major = SnapshotPgMajor(repo_.get(), Make("9.6\n"));
  ASSERT_TRUE(major.ok());
  EXPECT_EQ(*major, "9.6");
}

TEST_P(SnapshotPgMajorTest, RefusesWhatIsNotADataDirectory) {
  auto none = SnapshotPgMajor(repo_.get(), Make(std::nullopt));
  ASSERT_FALSE(none.ok());
  EXPECT_NE(none.status().message().find("no PG_VERSION"), std::string::npos);
  EXPECT_FALSE(SnapshotPgMajor(repo_.get(), Make("fifteen\n")).ok());
  EXPECT_FALSE(SnapshotPgMajor(repo_.get(), Make("")).ok());
}

INSTANTIATE_TEST_SUITE_P(Stores, SnapshotPgMajorTest, ::testing::Bool(), StoreName);

}  // namespace
}  // namespace pgbackfs
