// `pgbackfs backup` without a PostgreSQL server: the parts that do not need one (the in-process
// guard against two backups of one repository, connection string handling and redaction).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <filesystem>
#include <thread>

#include "test_util.h"
#include "tools/cli.h"
#include "tools/pg_client.h"

namespace pgbackfs {
namespace {

// Hands every command the same open repository, as the mount daemon does.
class SharedRepo : public RepoProvider {
 public:
  explicit SharedRepo(Repository* repo) : repo_(repo) {}
  Result<Repository*> Get(const std::string&) override { return repo_; }
  bool in_daemon() const override { return true; }

 private:
  Repository* repo_;
};

struct CliOutput {
  int code = -1;
  std::string out, err;
};

CliOutput RunCommand(RepoProvider* repos, const std::vector<std::string>& args) {
  char *out_buf = nullptr, *err_buf = nullptr;
  size_t out_len = 0, err_len = 0;
  CommandIo io;
  io.out = open_memstream(&out_buf, &out_len);
  io.err = open_memstream(&err_buf, &err_len);
  CliOutput result;
  result.code = RunCli(args, &io, repos);
  fclose(io.out);
  fclose(io.err);
  result.out.assign(out_buf, out_len);
  result.err.assign(err_buf, err_len);
  free(out_buf);
  free(err_buf);
  return result;
}

// A TCP listener on 127.0.0.1 that accepts and then says nothing: a client stays in its
// connection start-up until the socket is closed.
class SilentServer {
 public:
  SilentServer() {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    EXPECT_EQ(listen(fd_, 4), 0);
    socklen_t len = sizeof(addr);
    getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
  }
  ~SilentServer() {
    if (client_ >= 0) close(client_);
    if (fd_ >= 0) close(fd_);
  }
  int port() const { return port_; }
  void AcceptOne() { client_ = accept(fd_, nullptr, nullptr); }
  void CloseAll() {
    close(client_);
    close(fd_);
    client_ = fd_ = -1;
  }

 private:
  int fd_ = -1, client_ = -1, port_ = 0;
};

class BackupCommandTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = MakeTempDir();
    ASSERT_TRUE(Repository::Init(dir_ + "/repo", RepoConfig()).ok());
    OpenOptions options;
    options.in_memory = true;
    auto repo = Repository::Open(dir_ + "/repo", options);
    ASSERT_TRUE(repo.ok()) << repo.status().ToString();
    repo_ = std::move(repo).value();
  }
  void TearDown() override {
    repo_.reset();
    std::filesystem::remove_all(dir_);
  }
  std::string dir_;
  std::unique_ptr<Repository> repo_;
};

TEST_F(BackupCommandTest, SecondBackupInTheSameProcessIsRefused) {
  SilentServer server;
  SharedRepo repos(repo_.get());
  std::string conninfo = "host=127.0.0.1 port=" + std::to_string(server.port()) + " user=x";
  CliOutput first;
  std::thread t([&] {
    first = RunCommand(&repos, {"pgbackfs", "backup", "/repo", "-d", conninfo});
  });
  server.AcceptOne();  // the first backup now waits inside its connection start-up

  CliOutput second = RunCommand(&repos, {"pgbackfs", "backup", "/repo", "-d", conninfo});
  EXPECT_EQ(second.code, 1);
  EXPECT_NE(second.err.find("another backup is running in this repository"), std::string::npos)
      << second.err;

  server.CloseAll();
  t.join();
  EXPECT_EQ(first.code, 1);
  EXPECT_NE(first.err.find("could not connect"), std::string::npos) << first.err;

  // The guard is released: a third attempt gets as far as connecting (and fails there).
  CliOutput third = RunCommand(&repos, {"pgbackfs", "backup", "/repo", "-d", conninfo});
  EXPECT_EQ(third.code, 1);
  EXPECT_NE(third.err.find("could not connect"), std::string::npos) << third.err;
  auto snaps = repo_->ListSnapshots();
  ASSERT_TRUE(snaps.ok());
  EXPECT_TRUE(snaps->empty());
}

TEST_F(BackupCommandTest, BadConnectionStringIsAnErrorWithoutThePassword) {
  SharedRepo repos(repo_.get());
  CliOutput r = RunCommand(
      &repos, {"pgbackfs", "backup", "/repo", "-d", "host=x nosuchoption=1 password=Secr3t"});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("invalid connection string"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("Secr3t"), std::string::npos) << r.err;
}

TEST_F(BackupCommandTest, MissingConnectionStringIsAUsageError) {
  SharedRepo repos(repo_.get());
  EXPECT_EQ(RunCommand(&repos, {"pgbackfs", "backup", "/repo"}).code, 2);
}

TEST(PgClientTest, QuoteReplicationLiteral) {
  EXPECT_EQ(*QuoteReplicationLiteral("plain"), "'plain'");
  EXPECT_EQ(*QuoteReplicationLiteral("it's"), "'it''s'");
  EXPECT_EQ(*QuoteReplicationLiteral("back\\slash"), "'back\\slash'");
  EXPECT_FALSE(QuoteReplicationLiteral(std::string("a\0b", 3)).ok());
}

TEST(PgClientTest, RedactPasswords) {
  EXPECT_EQ(RedactPasswords("bad: hunter2", "host=h password=hunter2"), "bad: ********");
  EXPECT_EQ(RedactPasswords("x 'two words' y", "password='two words' host=h"), "x '********' y");
  EXPECT_EQ(RedactPasswords("uri s3cr3t", "postgresql://u:s3cr3t@h:5432/db"), "uri ********");
  EXPECT_EQ(RedactPasswords("q=pw1", "postgresql://h/db?password=pw1"), "q=********");
  // A string libpq cannot parse still gets its password masked.
  EXPECT_EQ(RedactPasswords("near pw2", "host=h password=pw2 broken"), "near ********");
  EXPECT_EQ(RedactPasswords("nothing secret", "host=h"), "nothing secret");
}

}  // namespace
}  // namespace pgbackfs
