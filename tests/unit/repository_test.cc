#include "repo/repository.h"

#include <fstream>

#include "repo/file_util.h"
#include "tests/unit/test_util.h"

namespace pgbackfs {
namespace {

TEST(RepositoryTest, InitOpenAndLock) {
  std::string dir = MakeTempDir();
  std::string path = dir + "/repo";
  RepoConfig config;
  config.chunk_size = 16384;
  config.compression = "zstd:5";
  ASSERT_TRUE(Repository::Init(path, config).ok());
  EXPECT_TRUE(Repository::Init(path, config).IsAlreadyExists());
  {
    auto repo = Repository::Open(path);
    ASSERT_TRUE(repo.ok()) << repo.status().ToString();
    EXPECT_EQ((*repo)->config().chunk_size, 16384u);
    EXPECT_EQ((*repo)->config().zstd_level(), 5);
    auto second = Repository::Open(path);
    EXPECT_EQ(second.status().code(), Status::Code::kBusy);
    EXPECT_NE(second.status().message().find("locked by pid"), std::string::npos)
        << second.status().message();

    ASSERT_TRUE((*repo)->CheckSystemIdentifier("123").ok());
    ASSERT_TRUE((*repo)->CheckSystemIdentifier("123").ok());
    EXPECT_EQ((*repo)->CheckSystemIdentifier("456").code(), Status::Code::kFailedPrecondition);
  }
  EXPECT_TRUE(Repository::Open(path).ok());
  std::filesystem::remove_all(dir);
}

TEST(RepositoryTest, RefusesWhatIsNotARepository) {
  std::string dir = MakeTempDir();
  EXPECT_TRUE(Repository::Open(dir + "/missing").status().IsNotFound());
  auto s = Repository::Open(dir).status();
  EXPECT_EQ(s.code(), Status::Code::kFailedPrecondition);
  EXPECT_NE(s.message().find("not a pgbackfs repository"), std::string::npos);
  // A non-empty foreign directory is not turned into a repository.
  std::ofstream(dir + "/data.txt") << "x";
  EXPECT_FALSE(Repository::Init(dir, RepoConfig()).ok());
  std::filesystem::remove_all(dir);
}

TEST(RepositoryTest, RefusesNewerFormat) {
  std::string dir = MakeTempDir();
  std::string path = dir + "/repo";
  ASSERT_TRUE(Repository::Init(path, RepoConfig()).ok());
  std::string text;
  ASSERT_TRUE(ReadSmallFile(path + "/pgbackfs.json", &text).ok());
  auto j = nlohmann::json::parse(text);
  j["format_version"] = kFormatVersion + 1;
  ASSERT_TRUE(WriteFileAtomic(path + "/pgbackfs.json", j.dump()).ok());
  auto s = Repository::Open(path).status();
  EXPECT_EQ(s.code(), Status::Code::kFailedPrecondition);
  EXPECT_NE(s.message().find("newer"), std::string::npos) << s.message();
  std::filesystem::remove_all(dir);
}

TEST(RepositoryTest, ParsesSettings) {
  EXPECT_EQ(*ParseChunkSize("8KiB"), 8192u);
  EXPECT_EQ(*ParseChunkSize("1MiB"), 1u << 20);
  EXPECT_EQ(*ParseChunkSize("65536"), 65536u);
  EXPECT_FALSE(ParseChunkSize("4KiB").ok());
  EXPECT_FALSE(ParseChunkSize("2MiB").ok());
  EXPECT_FALSE(ParseChunkSize("12KiB").ok());
  EXPECT_FALSE(ParseChunkSize("lots").ok());
  EXPECT_EQ(*ParseCompression("zstd"), "zstd:3");
  EXPECT_EQ(*ParseCompression("zstd:19"), "zstd:19");
  EXPECT_EQ(*ParseCompression("none"), "none");
  EXPECT_FALSE(ParseCompression("zstd:0").ok());
  EXPECT_FALSE(ParseCompression("zstd:3x").ok());
  EXPECT_FALSE(ParseCompression("lz4").ok());
}

}  // namespace
}  // namespace pgbackfs
