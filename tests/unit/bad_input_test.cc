// Bad input that the repository library refuses (issue 6 part 4; the end-to-end cases are in
// tests/integration/test_badinput.sh): config files that are not config files, and timeline
// history files PostgreSQL itself could not read.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <fstream>

#include "repo/file_util.h"
#include "repo/wal_archive.h"
#include "tests/unit/test_util.h"

namespace pgbackfs {
namespace {

class ConfigTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = MakeTempDir(); }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // A directory whose pgbackfs.json holds `text`.
  std::string WithConfig(const std::string& name, const std::string& text) {
    std::string path = dir_ + "/" + name;
    std::filesystem::create_directory(path);
    std::ofstream(path + "/pgbackfs.json") << text;
    return path;
  }
  // ReadConfig must answer quickly, with an error naming the directory.
  Status Refused(const std::string& path) {
    auto start = std::chrono::steady_clock::now();
    Result<RepoConfig> config = Repository::ReadConfig(path);
    EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5)) << path;
    EXPECT_FALSE(config.ok()) << path;
    if (config.ok()) return Status::OK();
    EXPECT_NE(config.status().message().find(path), std::string::npos) << config.status().message();
    EXPECT_FALSE(Repository::Open(path).ok()) << path;
    return config.status();
  }

  std::string dir_;
};

TEST_F(ConfigTest, NotARegularFile) {
  std::string fifo = dir_ + "/fifo";
  std::filesystem::create_directory(fifo);
  ASSERT_EQ(mkfifo((fifo + "/pgbackfs.json").c_str(), 0600), 0);  // a read would block
  EXPECT_EQ(Refused(fifo).code(), Status::Code::kFailedPrecondition);

  std::string zero = dir_ + "/zero";
  std::filesystem::create_directory(zero);
  std::filesystem::create_symlink("/dev/zero", zero + "/pgbackfs.json");  // a read never ends
  EXPECT_EQ(Refused(zero).code(), Status::Code::kFailedPrecondition);

  std::string sub = dir_ + "/sub";
  std::filesystem::create_directories(sub + "/pgbackfs.json");
  EXPECT_EQ(Refused(sub).code(), Status::Code::kFailedPrecondition);

  std::string big = WithConfig(
      "big", "{\"tool\": \"pgbackfs\", \"pad\": \"" + std::string(100 << 10, 'x') + "\"}");
  EXPECT_EQ(Refused(big).code(), Status::Code::kFailedPrecondition);
}

TEST_F(ConfigTest, ForeignGarbageAndMissingFields) {
  const char* settings = R"("chunk_size": 8192, "compression": "zstd:3")";
  const std::vector<std::string> texts = {
      "",
      "{",
      "[1, 2]",
      "42",
      "null",
      R"({"tool": 7})",
      std::string(R"({"tool": "pgbackrest", "format_version": 1, )") + settings + "}",
      R"({"tool": "pgbackfs"})",
      R"({"tool": "pgbackfs", "format_version": 2, "compression": "zstd:3"})",
      R"({"tool": "pgbackfs", "format_version": 2, "chunk_size": 8192})",
      std::string(R"({"tool": "pgbackfs", "format_version": "2", )") + settings + "}",
      std::string(R"({"tool": "pgbackfs", "format_version": 0, )") + settings + "}",
      std::string(R"({"tool": "pgbackfs", "format_version": -3, )") + settings + "}",
      std::string(R"({"tool": "pgbackfs", "format_version": 1.5e300, )") + settings + "}",
      R"({"tool": "pgbackfs", "format_version": 2, "chunk_size": -1, "compression": "zstd:3"})",
      R"({"tool": "pgbackfs", "format_version": 2, "chunk_size": 8192, "compression": "zstd:"})",
      R"({"tool": "pgbackfs", "format_version": 2, "chunk_size": 8192, "compression": "lz4"})",
      R"({"tool": "pgbackfs", "format_version": 2, "chunk_size": "8KiB", "compression": "none"})",
  };
  int n = 0;
  for (const std::string& text : texts) {
    std::string path = WithConfig("c" + std::to_string(n++), text);
    Status s = Refused(path);
    EXPECT_NE(s.code(), Status::Code::kOk) << text;
  }
  // The same repository with a sane config opens.
  std::string good = WithConfig(
      "good", std::string(R"({"tool": "pgbackfs", "format_version": 1, )") + settings + "}");
  EXPECT_TRUE(Repository::ReadConfig(good).ok());
}

TEST_F(ConfigTest, RepositoryIsPrivate) {
  mode_t old = umask(0);
  std::string path = dir_ + "/repo";
  ASSERT_TRUE(Repository::Init(path, RepoConfig()).ok());
  umask(old);
  struct stat st;
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  ASSERT_EQ(stat((path + "/db").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
}

class HistoryTest : public RepoTest {};

TEST_P(HistoryTest, UnreadableHistoryFilesAreRefused) {
  WalArchive archive(repo_.get());
  const std::vector<std::string> bad = {
      "garbage\n",
      std::string("1\t0/3000000\treason\n") + '\0' + "\x01\x02\n",
      "1\tnot-an-lsn\treason\n",
      "0\t0/3000000\ttimeline zero\n",
      "2\t0/3000000\tnot below the file's own timeline 2\n",
      "1\t0/3000000\ta\n1\t0/4000000\tnot increasing\n",
      RandomBytes(20000, 7),
  };
  for (const std::string& content : bad) {
    auto w = archive.NewWriter("00000002.history");
    ASSERT_TRUE(w.ok());
    ASSERT_TRUE((*w)->Write(0, content).ok());
    Status s = (*w)->Commit();
    EXPECT_EQ(s.code(), Status::Code::kInvalidArgument) << content << ": " << s.ToString();
    EXPECT_NE(s.message().find("00000002.history"), std::string::npos) << s.message();
    EXPECT_TRUE(archive.Get("00000002.history").status().IsNotFound());
  }
  // What PostgreSQL writes (comments and blank lines included) is archived.
  auto w = archive.NewWriter("00000003.history");
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE((*w)->Write(0,
                          "# a comment\n\n1\t0/3000000\tno recovery target specified\n"
                          "2\t0/5000000\tbefore 2000-01-01 00:00:00+00\n")
                  .ok());
  EXPECT_TRUE((*w)->Commit().ok());
  EXPECT_TRUE(archive.Get("00000003.history").ok());
}

INSTANTIATE_TEST_SUITE_P(Stores, HistoryTest, ::testing::Values(true, false), StoreName);

}  // namespace
}  // namespace pgbackfs
