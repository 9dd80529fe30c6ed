// The RocksDB store's write-ahead logs are written ahead with zeros once they are synced
// (repo/rocks_log_fs.h): a synced write then overwrites blocks the file has. These tests check
// what that must not change: every acknowledged synced write survives a kill -9 of the process,
// with the zeros still in the log, and a closed log holds only what was appended.
#include <fcntl.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "repo/kv.h"
#include "tests/unit/test_util.h"

extern char** environ;

namespace pgbackfs {
namespace {

constexpr size_t kValueSize = 8192;
constexpr uint64_t kStep = 8 << 20;  // NewZeroAheadLogFs's default
constexpr int kValuesBeforeKill = 9000;

std::string Key(int i) { return "key-" + std::to_string(i); }
// Values of printable bytes: never zero, so a log's data is told apart from its zeros.
std::string Value(int i) {
  std::string v = RandomBytes(kValueSize, static_cast<uint32_t>(i));
  for (auto& c : v) c = static_cast<char>('a' + static_cast<unsigned char>(c) % 26);
  return v;
}

std::vector<std::string> Logs(const std::string& dir) {
  std::vector<std::string> logs;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    if (e.path().extension() == ".log") logs.push_back(e.path());
  }
  return logs;
}

uint64_t FileSize(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 ? static_cast<uint64_t>(st.st_size) : 0;
}

// True if the last `n` bytes of the file are all zero.
bool ZeroTail(const std::string& path, size_t n) {
  std::ifstream in(path, std::ios::binary);
  in.seekg(-static_cast<std::streamoff>(n), std::ios::end);
  std::string tail(n, '\x01');
  in.read(tail.data(), static_cast<std::streamsize>(n));
  return in && tail.find_first_not_of('\0') == std::string::npos;
}

std::unique_ptr<KvStore> OpenStore(const std::string& dir) {
  KvOptions options;
  options.create_if_missing = true;
  auto kv = OpenRocksDbStore(dir, options);
  EXPECT_TRUE(kv.ok()) << kv.status().ToString();
  return kv.ok() ? std::move(kv).value() : nullptr;
}

Status Put(KvStore* kv, int i, bool sync) {
  KvBatch batch;
  batch.Put(Cf::kOverlay, Key(i), Value(i));
  return kv->Write(batch, sync);
}

// The child half of SyncedWritesSurviveAKillWithZerosInTheLog: runs only in the process that
// test starts (this binary, with the directory and a pipe in the environment). Writes synced
// values one by one and reports each acknowledged one on the pipe, until it is killed.
TEST(KvLogChild, WriteUntilKilled) {
  const char* dir = getenv("PGBACKFS_KV_CHILD_DIR");
  const char* fd = getenv("PGBACKFS_KV_CHILD_FD");
  if (!dir || !fd) {
    GTEST_SKIP() << "run by KvLogTest.SyncedWritesSurviveAKillWithZerosInTheLog";
  }
  auto kv = OpenStore(dir);
  ASSERT_NE(kv, nullptr);
  const int out = atoi(fd);
  for (int i = 0; i < 10 * kValuesBeforeKill; ++i) {  // killed long before
    // Every other write is an unsynced write made durable by Sync(), as a clone's fsync does.
    const bool sync = i % 2 == 0;
    ASSERT_TRUE(Put(kv.get(), i, sync).ok());
    if (!sync) {
      ASSERT_TRUE(kv->Sync().ok());
    }
    ASSERT_EQ(write(out, &i, sizeof(i)), static_cast<ssize_t>(sizeof(i)));
  }
}

class KvLogTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = MakeTempDir(); }
  void TearDown() override {
    if (!HasFailure()) std::filesystem::remove_all(dir_);
  }
  std::string dir_;
};

TEST_F(KvLogTest, SyncedWritesSurviveAKillWithZerosInTheLog) {
  int pipe_fds[2];
  ASSERT_EQ(pipe(pipe_fds), 0);
  const std::string env_dir = "PGBACKFS_KV_CHILD_DIR=" + dir_;
  const std::string env_fd = "PGBACKFS_KV_CHILD_FD=" + std::to_string(pipe_fds[1]);
  std::vector<char*> envp;
  for (char** e = environ; *e; ++e) envp.push_back(*e);
  envp.push_back(const_cast<char*>(env_dir.c_str()));
  envp.push_back(const_cast<char*>(env_fd.c_str()));
  envp.push_back(nullptr);
  std::string exe = std::filesystem::read_symlink("/proc/self/exe");
  std::string filter = "--gtest_filter=KvLogChild.WriteUntilKilled";
  char* argv[] = {exe.data(), filter.data(), nullptr};
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addclose(&actions, pipe_fds[0]);
  posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
  pid_t child;
  ASSERT_EQ(posix_spawn(&child, exe.c_str(), &actions, nullptr, argv, envp.data()), 0);
  posix_spawn_file_actions_destroy(&actions);
  close(pipe_fds[1]);

  // Past several steps of zeros and past a switch to a new log (the column family's 64 MiB
  // memtable fills at about 7800 values of 8 KiB), then kill -9 between two writes.
  int acknowledged = -1;
  int got;
  while (acknowledged < kValuesBeforeKill && read(pipe_fds[0], &got, sizeof(got)) == sizeof(got)) {
    acknowledged = got;
  }
  kill(child, SIGKILL);
  int wstatus;
  waitpid(child, &wstatus, 0);
  while (read(pipe_fds[0], &got, sizeof(got)) == sizeof(got)) acknowledged = got;
  close(pipe_fds[0]);
  ASSERT_TRUE(WIFSIGNALED(wstatus)) << "the writer ended before it was killed";
  ASSERT_GE(acknowledged, kValuesBeforeKill);

  // The log the writer was killed with has zeros past its end; the one before it, which the
  // other column families' memtables still need, is recovered too.
  bool zeros = false;
  for (const auto& log : Logs(dir_)) {
    if (FileSize(log) > kStep && ZeroTail(log, 1 << 20)) zeros = true;
  }
  EXPECT_TRUE(zeros) << "no log was written ahead";
  EXPECT_GE(Logs(dir_).size(), 2u) << "the writer was killed before a switch to a new log";

  // Recovery reads past the zeros and keeps every acknowledged write.
  auto kv = OpenStore(dir_);
  ASSERT_NE(kv, nullptr);
  for (int i = 0; i <= acknowledged; ++i) {
    std::string value;
    Status s = kv->Get(Cf::kOverlay, Key(i), &value);
    ASSERT_TRUE(s.ok()) << Key(i) << " of " << acknowledged << ": " << s.ToString();
    ASSERT_EQ(value, Value(i)) << Key(i);
  }
  // And the store goes on writing and recovering.
  ASSERT_TRUE(Put(kv.get(), acknowledged + 1, true).ok());
  kv.reset();
  kv = OpenStore(dir_);
  ASSERT_NE(kv, nullptr);
  std::string value;
  ASSERT_TRUE(kv->Get(Cf::kOverlay, Key(acknowledged + 1), &value).ok());
  EXPECT_EQ(value, Value(acknowledged + 1));
}

TEST_F(KvLogTest, OnlyALogSyncedOftenIsWrittenAheadAndAClosedOneIsCutToItsData) {
  auto kv = OpenStore(dir_);
  ASSERT_NE(kv, nullptr);
  // Bulk writes (a backup's, a pushed WAL segment's): 2 MiB, then one sync. The log stays as long
  // as its data.
  for (int i = 0; i < 256; ++i) ASSERT_TRUE(Put(kv.get(), i, false).ok());
  ASSERT_TRUE(kv->Sync().ok());
  std::vector<std::string> logs = Logs(dir_);
  ASSERT_EQ(logs.size(), 1u);
  const std::string log = logs[0];
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_LT(FileSize(log), 3u << 20);
  EXPECT_FALSE(ZeroTail(log, 4096));

  // Synced write by write (a clone's fsyncs): the zeros follow, in the background.
  for (int i = 256; i < 264; ++i) ASSERT_TRUE(Put(kv.get(), i, true).ok());
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (FileSize(log) < kStep && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_GE(FileSize(log), kStep);
  EXPECT_TRUE(ZeroTail(log, 1 << 20));
  for (int i = 264; i < 384; ++i) ASSERT_TRUE(Put(kv.get(), i, true).ok());

  // Closed, the log holds its records only (the store keeps it: it does not flush at close).
  kv.reset();
  ASSERT_TRUE(std::filesystem::exists(log));
  EXPECT_LT(FileSize(log), 5u << 20);
  EXPECT_FALSE(ZeroTail(log, 1));
  kv = OpenStore(dir_);
  ASSERT_NE(kv, nullptr);
  for (int i = 0; i < 384; ++i) {
    std::string value;
    ASSERT_TRUE(kv->Get(Cf::kOverlay, Key(i), &value).ok()) << Key(i);
    ASSERT_EQ(value, Value(i)) << Key(i);
  }
}

}  // namespace
}  // namespace pgbackfs
