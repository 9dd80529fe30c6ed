#include "tools/materialize.h"

#include <fcntl.h>
#include <grp.h>
#include <libpq-fe.h>
#include <pwd.h>
#include <signal.h>
#include <spawn.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <future>
#include <optional>
#include <set>
#include <sstream>
#include <thread>

#include "fs/mount.h"
#include "repo/clone.h"
#include "repo/file_util.h"
#include "repo/wal_format.h"
#include "repo/wal_parser.h"

extern char** environ;

namespace pgbackfs {

namespace {

using Clock = std::chrono::steady_clock;

constexpr int kStopTimeoutSec = 600;  // a fast shutdown writes a checkpoint first
constexpr int kKillTimeoutSec = 30;   // after an immediate shutdown request, SIGKILL
constexpr int kLogTailLines = 20;
constexpr auto kPollInterval = std::chrono::milliseconds(100);
constexpr auto kStatsInterval = std::chrono::milliseconds(500);
constexpr auto kLineModeInterval = std::chrono::seconds(5);
constexpr uint64_t kPrefetchDepth = 4;  // segments read ahead of the one being replayed
constexpr int kPrefetchThreads = 2;

// The postmaster prints this once it runs read-write: after a promotion, the startup process
// has ended recovery and exited. Forced to English with lc_messages = 'C'.
constexpr std::string_view kReadyLine = "database system is ready to accept connections";
// Where recovery stopped, kept for the user.
constexpr std::string_view kNoteStarts[] = {"recovery stopping", "redo done at",
                                            "last completed transaction was at log time",
                                            "selected new timeline ID"};

// pg_control (src/include/catalog/pg_control.h): uint64 system_identifier, uint32
// pg_control_version, uint32 catalog_version_no, then the DBState enum at offset 16, the same in
// every supported version. DB_SHUTDOWNED = 1.
constexpr size_t kPgControlStateOffset = 16;
constexpr uint32_t kDbShutdowned = 1;

// --- interrupts (only in the pgbackfs process itself) --------------------------------------

std::atomic<bool> g_interrupted{false};
static_assert(std::atomic<bool>::is_always_lock_free);

void OnInterrupt(int) { g_interrupted.store(true); }

// While alive: SIGINT, SIGTERM and SIGHUP cancel the replay (the server is stopped, the private
// mount unmounted, the clone dropped) instead of killing the process under them.
class InterruptGuard {
 public:
  InterruptGuard() {
    g_interrupted.store(false);
    struct sigaction sa {};
    sa.sa_handler = OnInterrupt;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    for (size_t i = 0; i < kCount; ++i) sigaction(kSignals[i], &sa, &old_[i]);
  }
  ~InterruptGuard() {
    for (size_t i = 0; i < kCount; ++i) sigaction(kSignals[i], &old_[i], nullptr);
  }
  InterruptGuard(const InterruptGuard&) = delete;
  InterruptGuard& operator=(const InterruptGuard&) = delete;

 private:
  static constexpr size_t kCount = 3;
  static constexpr int kSignals[kCount] = {SIGINT, SIGTERM, SIGHUP};
  struct sigaction old_[kCount];
};

// --- processes -----------------------------------------------------------------------------

void SleepFor(Clock::duration d) { std::this_thread::sleep_for(d); }

// Runs `argv` (argv[0] a path, or a name looked up in PATH) with stdin and stderr on /dev/null
// and returns its stdout (at most 64 KiB). `*exit_code` gets its exit code, -1 if it was killed.
Result<std::string> RunCapture(const std::vector<std::string>& argv, int* exit_code) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return Status::FromErrno(errno, "pipe");
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, fds[1], 1);
  posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0);
  // The mount daemon blocks the termination signals and ignores SIGPIPE; a child starts clean.
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none, defaults;
  sigemptyset(&none);
  sigemptyset(&defaults);
  for (int sig : {SIGPIPE, SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGCHLD}) sigaddset(&defaults, sig);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &defaults);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid;
  int rc = posix_spawnp(&pid, argv[0].c_str(), &actions, &attr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  close(fds[1]);
  if (rc != 0) {
    close(fds[0]);
    return Status::FromErrno(rc, "run '" + argv[0] + "'");
  }
  std::string out;
  char buf[4096];
  for (;;) {
    ssize_t n = read(fds[0], buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    if (out.size() < (64 << 10)) out.append(buf, static_cast<size_t>(n));
  }
  close(fds[0]);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  *exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return out;
}

// "postgres (PostgreSQL) 15.4 (Debian 15.4-1)" -> "15.4"; "" if it is not that.
std::string ParsePostgresVersion(const std::string& out) {
  static constexpr std::string_view kTag = "(PostgreSQL) ";
  size_t at = out.find(kTag);
  if (at == std::string::npos) return "";
  size_t begin = at + kTag.size();
  size_t end = out.find_first_of(" \n", begin);
  return out.substr(begin, end == std::string::npos ? std::string::npos : end - begin);
}

// The major version of a full version: "15.4" -> "15", "16devel" -> "16", "9.6.24" -> "9.6".
std::string MajorOf(const std::string& version) {
  size_t digits = version.find_first_not_of("0123456789");
  std::string first = version.substr(0, digits);
  if (first == "9" && digits != std::string::npos && version[digits] == '.') {
    size_t end = version.find_first_not_of("0123456789", digits + 1);
    return version.substr(0, end);
  }
  return first;
}

// --- users ---------------------------------------------------------------------------------

struct UserEntry {
  std::string name, home;
  uid_t uid = 0;
  gid_t gid = 0;
};

// A user by name or number. NotFound if there is none.
Result<UserEntry> LookupUser(const std::string& who) {
  std::vector<char> buf(16384);
  passwd pw, *found = nullptr;
  if (getpwnam_r(who.c_str(), &pw, buf.data(), buf.size(), &found) != 0 || !found) {
    char* end = nullptr;
    errno = 0;
    unsigned long n = strtoul(who.c_str(), &end, 10);
    if (who.empty() || errno != 0 || !end || *end != '\0' || n >= UINT_MAX ||
        getpwuid_r(static_cast<uid_t>(n), &pw, buf.data(), buf.size(), &found) != 0 || !found) {
      return Status::NotFound("no user '" + who + "'");
    }
  }
  return UserEntry{pw.pw_name, pw.pw_dir ? pw.pw_dir : "/", pw.pw_uid, pw.pw_gid};
}

// --- the server log ------------------------------------------------------------------------

// Follows the server's log file as it grows.
class LogWatcher {
 public:
  explicit LogWatcher(std::string path) : path_(std::move(path)) {}
  // Called with the name of each WAL file postgres restores from the archive.
  void OnRestored(std::function<void(const std::string&)> fn) { on_restored_ = std::move(fn); }

  void Poll() {
    int fd = open(path_.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;
    char buf[65536];
    for (;;) {
      ssize_t n = pread(fd, buf, sizeof(buf), static_cast<off_t>(offset_));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      offset_ += static_cast<uint64_t>(n);
      partial_.append(buf, static_cast<size_t>(n));
      size_t start = 0, nl;
      while ((nl = partial_.find('\n', start)) != std::string::npos) {
        Line(std::string_view(partial_).substr(start, nl - start));
        start = nl + 1;
      }
      partial_.erase(0, start);
    }
    close(fd);
  }

  bool ready() const { return ready_; }
  const std::vector<std::string>& notes() const { return notes_; }
  const std::deque<std::string>& tail() const { return tail_; }

 private:
  void Line(std::string_view line) {
    tail_.emplace_back(line);
    if (tail_.size() > kLogTailLines) tail_.pop_front();
    if (line.find(kReadyLine) != std::string_view::npos) ready_ = true;
    size_t log = line.find("LOG:  ");
    if (log == std::string_view::npos) return;
    std::string_view msg = line.substr(log + 6);
    static constexpr std::string_view kRestored = "restored log file \"";
    if (on_restored_ && msg.substr(0, kRestored.size()) == kRestored) {
      std::string_view name = msg.substr(kRestored.size());
      on_restored_(std::string(name.substr(0, name.find('"'))));
    }
    // "redo done at X system usage: CPU: ...": the usage is noise here.
    msg = msg.substr(0, msg.find(" system usage: "));
    for (std::string_view start : kNoteStarts) {
      if (msg.substr(0, start.size()) == start) notes_.emplace_back(msg);
    }
  }

  std::string path_;
  std::function<void(const std::string&)> on_restored_;
  uint64_t offset_ = 0;
  std::string partial_;
  bool ready_ = false;
  std::vector<std::string> notes_;
  std::deque<std::string> tail_;
};

// --- WAL read-ahead ------------------------------------------------------------------------

// Reads the archived segments that follow the one postgres just restored, so that its
// restore_command (cp from MOUNT/wal) finds them in the page cache: the mount keeps the cache of
// archived files between opens (keep_cache), and postgres runs restore_command for one segment
// at a time, so without this each segment's fetch and its replay take turns. A name that is not
// archived (the end of the WAL, another timeline) is skipped.
class WalPrefetcher {
 public:
  explicit WalPrefetcher(std::string wal_dir) : wal_dir_(std::move(wal_dir)) {
    for (int i = 0; i < kPrefetchThreads; ++i) threads_.emplace_back([this] { Loop(); });
  }
  ~WalPrefetcher() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (std::thread& t : threads_) t.join();
  }
  WalPrefetcher(const WalPrefetcher&) = delete;
  WalPrefetcher& operator=(const WalPrefetcher&) = delete;

  void Restored(const std::string& name) {
    WalSegmentName segment;
    bool partial = false;
    if (!ParseWalSegmentName(name, &segment, &partial).ok() || partial) return;
    if (seg_size_ == 0) {
      struct stat st;
      if (stat((wal_dir_ + "/" + name).c_str(), &st) != 0 || st.st_size < (1 << 20) ||
          (st.st_size & (st.st_size - 1)) != 0) {
        return;
      }
      seg_size_ = static_cast<uint64_t>(st.st_size);
    }
    uint64_t segno = segment.SegNo(seg_size_);
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (uint64_t i = 1; i <= kPrefetchDepth; ++i) {
        std::string next = WalSegmentName::FromSegNo(segment.tli, segno + i, seg_size_).ToString();
        if (queued_.insert(next).second) queue_.push_back(next);
      }
    }
    cv_.notify_all();
  }

 private:
  void Loop() {
    std::vector<char> buf(1 << 20);
    for (;;) {
      std::string name;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [this] { return stop_ || !queue_.empty(); });
        if (stop_) return;
        name = std::move(queue_.front());
        queue_.pop_front();
      }
      int fd = open((wal_dir_ + "/" + name).c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0) continue;
      ssize_t n;
      do {
        n = read(fd, buf.data(), buf.size());
      } while ((n > 0 || (n < 0 && errno == EINTR)) && !Stopping());
      close(fd);
    }
  }
  bool Stopping() {
    std::lock_guard<std::mutex> lock(mu_);
    return stop_;
  }

  const std::string wal_dir_;
  uint64_t seg_size_ = 0;  // only Restored() uses it
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::string> queue_;  // guarded by mu_
  std::set<std::string> queued_;   // guarded by mu_
  bool stop_ = false;              // guarded by mu_
  std::vector<std::thread> threads_;
};

// --- replay statistics through libpq (hot standby connections) -----------------------------

struct ReplayStats {
  bool in_recovery = true;
  uint64_t lsn = 0;           // pg_last_wal_replay_lsn()
  double replayed_unix = -1;  // pg_last_xact_replay_timestamp(), -1 if none yet
};

class StatsPoller {
 public:
  explicit StatsPoller(std::string conninfo) : conninfo_(std::move(conninfo)) {}
  ~StatsPoller() { Close(); }
  StatsPoller(const StatsPoller&) = delete;
  StatsPoller& operator=(const StatsPoller&) = delete;

  // Fresh statistics, or nullopt if the server does not answer (yet: it accepts hot standby
  // connections once the snapshot is consistent).
  std::optional<ReplayStats> Poll() {
    if (!conn_) {
      if (Clock::now() < next_connect_) return std::nullopt;
      next_connect_ = Clock::now() + std::chrono::seconds(1);
      conn_ = PQconnectdb(conninfo_.c_str());
      if (PQstatus(conn_) != CONNECTION_OK) {
        Close();
        return std::nullopt;
      }
      PQsetNoticeProcessor(
          conn_, [](void*, const char*) {}, nullptr);
    }
    PGresult* res = PQexec(conn_,
                           "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text, "
                           "extract(epoch FROM pg_last_xact_replay_timestamp())::float8");
    std::optional<ReplayStats> stats;
    if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1) {
      ReplayStats s;
      s.in_recovery = std::string(PQgetvalue(res, 0, 0)) == "t";
      if (!PQgetisnull(res, 0, 1)) {
        Result<uint64_t> lsn = ParseLsn(PQgetvalue(res, 0, 1));
        if (lsn.ok()) s.lsn = *lsn;
      }
      if (!PQgetisnull(res, 0, 2)) s.replayed_unix = atof(PQgetvalue(res, 0, 2));
      stats = s;
    }
    PQclear(res);
    if (!stats) Close();
    return stats;
  }

  void Close() {
    if (conn_) PQfinish(conn_);
    conn_ = nullptr;
  }

 private:
  std::string conninfo_;
  PGconn* conn_ = nullptr;
  Clock::time_point next_connect_{};
};

// --- progress ------------------------------------------------------------------------------

// The replay's progress in LSN and time against the target: a line redrawn on a terminal, or a
// plain line every few seconds otherwise.
class ReplayProgress {
 public:
  ReplayProgress(FILE* out, bool enabled, bool tty, const ReplayGoal& goal)
      : out_(out), enabled_(enabled), tty_(tty), goal_(goal) {}

  void Show(const std::optional<ReplayStats>& stats, double elapsed) {
    if (!enabled_) return;
    if (stats) last_ = stats;
    auto now = Clock::now();
    auto interval = tty_ ? std::chrono::milliseconds(250) : kLineModeInterval;
    if (shown_ && now - last_shown_ < interval) return;
    shown_ = true;
    last_shown_ = now;
    std::string line = Describe(elapsed);
    if (tty_) {
      fprintf(out_, "\r%-100s", line.c_str());
    } else {
      fprintf(out_, "%s\n", line.c_str());
    }
    fflush(out_);
  }

  void Done() {
    if (!enabled_ || !tty_ || !shown_) return;
    fprintf(out_, "\r%-100s\r", "");
    fflush(out_);
  }

 private:
  std::string Describe(double elapsed) const {
    char secs[32];
    snprintf(secs, sizeof(secs), "%.0f s", elapsed);
    if (!last_ || last_->lsn == 0) {
      return "replay: restoring WAL to the snapshot's consistent point (from " +
             FormatLsn(goal_.start_lsn) + "), " + secs;
    }
    std::string line = "replay: at " + FormatLsn(last_->lsn);
    if (last_->replayed_unix >= 0) {
      line += ", " + FormatTime(static_cast<int64_t>(last_->replayed_unix));
    }
    std::string target;
    if (goal_.stop_lsn) target += "~" + FormatLsn(goal_.stop_lsn);
    if (goal_.target_unix >= 0) {
      target += (target.empty() ? "" : ", ") + FormatTime(static_cast<int64_t>(goal_.target_unix));
    }
    if (!target.empty()) line += "; target " + target;
    if (goal_.stop_lsn > goal_.start_lsn && last_->lsn >= goal_.start_lsn) {
      double pct = 100.0 * static_cast<double>(last_->lsn - goal_.start_lsn) /
                   static_cast<double>(goal_.stop_lsn - goal_.start_lsn);
      char buf[16];
      snprintf(buf, sizeof(buf), " (%.0f%%)", pct > 100 ? 100.0 : pct);
      line += buf;
    }
    if (!last_->in_recovery) line += "; promoted";
    return line + ", " + secs;
  }

  FILE* out_;
  bool enabled_, tty_;
  ReplayGoal goal_;
  std::optional<ReplayStats> last_;
  bool shown_ = false;
  Clock::time_point last_shown_{};
};

// --- the replay server ---------------------------------------------------------------------

// A postmaster started by us: our child, so we know its pid for sure and reap it. Never killed
// by name: signals go to this pid only, and only while it has not been reaped.
class ReplayServer {
 public:
  struct Spec {
    std::string postgres;  // the binary
    std::vector<std::string> args;
    std::vector<std::string> env;
    std::optional<std::vector<gid_t>> groups;  // set: switch to uid/gid with these groups
    uid_t uid = 0;
    gid_t gid = 0;
    std::string log_path;
  };

  ~ReplayServer() { Kill(); }

  Status Start(const Spec& spec) {
    int log_fd = open(spec.log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (log_fd < 0) return Status::FromErrno(errno, "create '" + spec.log_path + "'");
    int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (null_fd < 0) {
      close(log_fd);
      return Status::FromErrno(errno, "open /dev/null");
    }
    // Everything the child needs is made before fork: after it, only async-signal-safe calls.
    std::vector<std::string> argv_s = {spec.postgres};
    argv_s.insert(argv_s.end(), spec.args.begin(), spec.args.end());
    std::vector<char*> argv, envp;
    for (auto& a : argv_s) argv.push_back(a.data());
    argv.push_back(nullptr);
    std::vector<std::string> env_s = spec.env;
    for (auto& e : env_s) envp.push_back(e.data());
    envp.push_back(nullptr);
    const bool switch_user = spec.groups.has_value();
    std::vector<gid_t> groups = spec.groups.value_or(std::vector<gid_t>{});
    static constexpr char kExecFailed[] = "pgbackfs: could not execute the postgres binary\n";
    static constexpr char kSetuidFailed[] = "pgbackfs: could not switch to the postgres user\n";
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
      int err = errno;
      close(log_fd);
      close(null_fd);
      return Status::FromErrno(err, "fork");
    }
    if (pid == 0) {
      setsid();  // no terminal: a Ctrl-C reaches pgbackfs, which stops the server itself
      dup2(null_fd, 0);
      dup2(log_fd, 1);
      dup2(log_fd, 2);
      syscall(SYS_close_range, 3u, ~0u, 0u);  // a FUSE device or RocksDB file must not leak
      sigset_t none;
      sigemptyset(&none);
      sigprocmask(SIG_SETMASK, &none, nullptr);
      struct sigaction dfl {};
      dfl.sa_handler = SIG_DFL;
      for (int sig = 1; sig < NSIG; ++sig) sigaction(sig, &dfl, nullptr);
      // Raw system calls: this process has one thread, whatever glibc thinks of the parent.
      if (switch_user && (syscall(SYS_setgroups, groups.size(), groups.data()) != 0 ||
                          syscall(SYS_setresgid, spec.gid, spec.gid, spec.gid) != 0 ||
                          syscall(SYS_setresuid, spec.uid, spec.uid, spec.uid) != 0)) {
        if (write(2, kSetuidFailed, sizeof(kSetuidFailed) - 1) < 0) _exit(126);
        _exit(126);
      }
      // If pgbackfs dies, the server shuts down at once (set after the uid change, which clears
      // it). The check catches a parent that died before the prctl.
      prctl(PR_SET_PDEATHSIG, SIGQUIT);
      if (getppid() != parent) _exit(1);
      execve(argv[0], argv.data(), envp.data());
      if (write(2, kExecFailed, sizeof(kExecFailed) - 1) < 0) _exit(127);
      _exit(127);
    }
    close(log_fd);
    close(null_fd);
    pid_ = pid;
    return Status::OK();
  }

  // True once the postmaster has exited (and was reaped); `*status` is its wait status.
  bool Exited(int* status) {
    if (pid_ <= 0) {
      *status = status_;
      return true;
    }
    int st = 0;
    pid_t r = waitpid(pid_, &st, WNOHANG);
    if (r == pid_) {
      pid_ = -1;
      status_ = st;
      *status = st;
      return true;
    }
    return false;
  }

  // Fast shutdown (what `pg_ctl stop -m fast` sends): a shutdown checkpoint, then exit.
  // Waits for the exit; OK only if the postmaster exited with 0.
  Status StopFast(const std::function<bool()>& cancelled) {
    if (pid_ <= 0) return Status::IOError("the server is not running");
    kill(pid_, SIGINT);
    auto deadline = Clock::now() + std::chrono::seconds(kStopTimeoutSec);
    int status = 0;
    while (!Exited(&status)) {
      if (cancelled() || Clock::now() > deadline) {
        Kill();
        return Status::IOError(cancelled() ? "cancelled" : "the server did not shut down in time");
      }
      SleepFor(kPollInterval);
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      return Status::IOError("the server's shutdown failed (" + DescribeExit(status) + ")");
    }
    return Status::OK();
  }

  // Immediate shutdown (SIGQUIT), then SIGKILL if it takes too long; reaps the postmaster.
  void Kill() {
    if (pid_ <= 0) return;
    kill(pid_, SIGQUIT);
    auto deadline = Clock::now() + std::chrono::seconds(kKillTimeoutSec);
    int status;
    while (!Exited(&status)) {
      if (Clock::now() > deadline) {
        kill(pid_, SIGKILL);
        while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
        }
        pid_ = -1;
        status_ = status;
        return;
      }
      SleepFor(kPollInterval);
    }
  }

  static std::string DescribeExit(int status) {
    if (WIFEXITED(status)) return "exit code " + std::to_string(WEXITSTATUS(status));
    if (WIFSIGNALED(status)) return std::string("killed by ") + strsignal(WTERMSIG(status));
    return "wait status " + std::to_string(status);
  }

 private:
  pid_t pid_ = -1;
  int status_ = 0;
};

// The state in a cluster's global/pg_control (read through the mount).
Result<uint32_t> ClusterState(const std::string& datadir) {
  std::string control;
  RETURN_IF_ERROR(ReadSmallFile(datadir + "/global/pg_control", &control));
  if (control.size() < kPgControlStateOffset + 4) {
    return Status::Corruption("'" + datadir + "/global/pg_control' is too short");
  }
  uint32_t state;
  memcpy(&state, control.data() + kPgControlStateOffset, sizeof(state));
  return state;
}

Status UnlinkIfExists(const std::string& path) {
  if (unlink(path.c_str()) != 0 && errno != ENOENT) {
    return Status::FromErrno(errno, "remove '" + path + "'");
  }
  return Status::OK();
}

// Through the mount (the kernel caches what postgres wrote): the user's server starts as a
// primary, with no recovery settings, no signal file, and no postmaster.opts naming our private
// socket directory (pg_ctl restart would reuse it).
Status FinishReplayedCluster(const std::string& dir,
                             const std::function<std::string(const std::string&)>& rewrite_conf) {
  std::string conf;
  RETURN_IF_ERROR(ReadSmallFile(dir + "/postgresql.auto.conf", &conf));
  RETURN_IF_ERROR(WriteFileAtomic(dir + "/postgresql.auto.conf", rewrite_conf(conf), 0600));
  RETURN_IF_ERROR(UnlinkIfExists(dir + "/recovery.signal"));
  RETURN_IF_ERROR(UnlinkIfExists(dir + "/postmaster.opts"));
  return FsyncDir(dir);
}

std::string Indent(const std::deque<std::string>& lines) {
  std::string out;
  for (const std::string& l : lines) out += "\n  " + l;
  return out;
}

}  // namespace

// --- snapshot version and binaries ---------------------------------------------------------

Result<std::string> SnapshotPgMajor(Repository* repo, const SnapshotInfo& snapshot) {
  Result<Entry> e = repo->reader()->Lookup(snapshot.root, "PG_VERSION");
  if (!e.ok()) {
    if (e.status().IsNotFound()) {
      return Status::FailedPrecondition(
          "snapshot " + snapshot.id + " has no PG_VERSION: it is not a PostgreSQL data directory");
    }
    return e.status();
  }
  std::string text;
  if (e->size() > 64)
    return Status::Corruption("snapshot " + snapshot.id + ": PG_VERSION is too large");
  RETURN_IF_ERROR(repo->reader()->OpenFile(*e)->Read(0, e->size(), &text));
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r' || text.back() == ' ')) {
    text.pop_back();
  }
  if (text.empty() || text.find_first_not_of("0123456789.") != std::string::npos) {
    return Status::Corruption("snapshot " + snapshot.id + ": PG_VERSION holds '" + text + "'");
  }
  return text;
}

Result<std::string> FindPgBin(const std::string& major, const std::string& given,
                              std::string* version) {
  // Each candidate directory and why it was looked at.
  std::vector<std::pair<std::string, std::string>> candidates;
  if (!given.empty()) {
    candidates.push_back({given, "--pg-bin"});
  } else {
    candidates.push_back({"/usr/lib/postgresql/" + major + "/bin", ""});
    int code = 0;
    Result<std::string> out = RunCapture({"pg_config", "--bindir"}, &code);
    if (out.ok() && code == 0) {
      std::string dir = *out;
      while (!dir.empty() && (dir.back() == '\n' || dir.back() == ' ')) dir.pop_back();
      if (!dir.empty()) candidates.push_back({dir, "pg_config --bindir"});
    }
    const char* path = getenv("PATH");
    std::stringstream in(path ? path : "");
    std::string dir;
    while (std::getline(in, dir, ':')) {
      if (!dir.empty()) candidates.push_back({dir, "PATH"});
    }
  }
  std::vector<std::string> looked, seen;
  for (const auto& [dir, why] : candidates) {
    if (std::find(seen.begin(), seen.end(), dir) != seen.end()) continue;
    seen.push_back(dir);
    std::string bin = dir + "/postgres";
    std::string where = "'" + dir + "'" + (why.empty() ? "" : " (" + why + ")");
    if (access(bin.c_str(), X_OK) != 0) {
      // PATH entries without postgres are noise in the message, the others are not.
      if (why != "PATH") looked.push_back(where + ": no postgres");
      continue;
    }
    int code = 0;
    Result<std::string> out = RunCapture({bin, "--version"}, &code);
    std::string v = out.ok() && code == 0 ? ParsePostgresVersion(*out) : "";
    if (v.empty()) {
      looked.push_back(where + ": '" + bin + " --version' did not answer");
      continue;
    }
    if (MajorOf(v) != major) {
      looked.push_back(where + ": PostgreSQL " + v);
      continue;
    }
    *version = v;
    return dir;
  }
  std::string list;
  for (const std::string& l : looked) list += (list.empty() ? "" : "; ") + l;
  if (looked.empty()) list = "nowhere on PATH either";
  std::string need = "--materialize needs the PostgreSQL " + major +
                     " server binary 'postgres' (the snapshot's PG_VERSION is " + major + ")";
  if (!given.empty()) {
    return Status::NotFound(need + ", and --pg-bin '" + given + "' has none: " + list +
                            "; give --pg-bin the bin directory of a PostgreSQL " + major +
                            " installation");
  }
  return Status::NotFound(need + ", and none was found (looked in " + list +
                          "); install it (Debian: postgresql-" + major + ") or give --pg-bin DIR");
}

// --- the private mount ---------------------------------------------------------------------

// The repository mounted by this process on a temporary directory, for the length of a replay.
class Materializer::PrivateMount {
 public:
  static Result<std::unique_ptr<PrivateMount>> Start(Repository* repo, const std::string& dir,
                                                     uid_t uid, gid_t gid) {
    if (mkdir(dir.c_str(), 0755) != 0) return Status::FromErrno(errno, "mkdir '" + dir + "'");
    std::unique_ptr<PrivateMount> m(new PrivateMount());
    m->dir_ = dir;
    MountOptions options;
    options.mountpoint = dir;
    options.allow_other = uid != geteuid();  // postgres runs as another user
    options.handle_signals = false;          // Run() handles them: it stops the server first
    options.fs.uid = uid;
    options.fs.gid = gid;
    auto mount = FuseMount::Mount(repo, options);
    if (!mount.ok()) {
      rmdir(dir.c_str());
      return mount.status().WithContext("mount the repository privately on '" + dir + "'");
    }
    m->mount_ = std::move(mount).value();
    auto ready = std::make_shared<std::promise<Status>>();
    std::future<Status> ready_future = ready->get_future();
    FuseMount* fm = m->mount_.get();
    m->thread_ = std::thread([fm, ready, served = &m->served_] {
      *served = fm->Serve([ready](const Status& s) { ready->set_value(s); });
    });
    Status s = ready_future.get();
    if (!s.ok()) {
      (void)m->Stop();
      return s.WithContext("mount the repository privately on '" + dir + "'");
    }
    return m;
  }

  ~PrivateMount() { (void)Stop(); }

  // Writes back what the kernel buffers for the mount, unmounts it and removes the directory.
  Status Stop() {
    if (!mount_) return Status::OK();
    Status s;
    int fd = open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
      if (syncfs(fd) != 0) s = Status::FromErrno(errno, "syncfs '" + dir_ + "'");
      close(fd);
    }
    // A server child that outlived its postmaster for a moment can still hold a file: retry,
    // and detach lazily as the last resort (the loop keeps serving until nobody uses it).
    bool unmounted = false;
    for (int attempt = 0; attempt < 40 && !unmounted; ++attempt) {
      int code = -1;
      Result<std::string> out = RunCapture({"fusermount3", "-u", "--", dir_}, &code);
      unmounted = out.ok() && code == 0;
      if (!unmounted) SleepFor(std::chrono::milliseconds(250));
    }
    if (!unmounted) {
      int code = -1;
      (void)RunCapture({"fusermount3", "-u", "-z", "--", dir_}, &code);
      if (s.ok()) s = Status::Busy("the private mount on '" + dir_ + "' was busy; detached it");
    }
    thread_.join();
    mount_.reset();
    if (s.ok() && !served_.ok()) s = served_;
    rmdir(dir_.c_str());
    return s;
  }

 private:
  PrivateMount() = default;
  std::string dir_;
  std::unique_ptr<FuseMount> mount_;
  std::thread thread_;
  Status served_;
};

// --- Materializer --------------------------------------------------------------------------

Materializer::~Materializer() = default;

bool Materializer::Cancelled() const { return io_->Cancelled() || g_interrupted.load(); }

Result<std::unique_ptr<Materializer>> Materializer::Prepare(Repository* repo, RepoProvider* repos,
                                                            CommandIo* io,
                                                            const SnapshotInfo& snapshot,
                                                            const MaterializeOptions& options) {
  std::unique_ptr<Materializer> m(new Materializer());
  m->repo_ = repo;
  m->repos_ = repos;
  m->io_ = io;
  m->options_ = options;
  ASSIGN_OR_RETURN(m->major_, SnapshotPgMajor(repo, snapshot));
  ASSIGN_OR_RETURN(m->pg_bin_, FindPgBin(m->major_, io->Abs(options.pg_bin), &m->pg_version_));
  m->mount_point_ = repos->mount_point();

  // Who runs postgres: it wants its data directory owned by itself, and refuses root.
  UserEntry user;
  if (!m->mount_point_.empty()) {
    std::string clones = m->mount_point_ + "/clones";
    struct stat st;
    if (stat(clones.c_str(), &st) != 0) return Status::FromErrno(errno, "stat '" + clones + "'");
    Result<UserEntry> owner = LookupUser(std::to_string(st.st_uid));
    if (owner.ok()) {
      user = *owner;
    } else {
      user = UserEntry{std::to_string(st.st_uid), "/", st.st_uid, st.st_gid};
    }
    if (!options.pg_user.empty()) {
      Result<UserEntry> given = LookupUser(options.pg_user);
      if (!given.ok()) return Status::InvalidArgument("--pg-user: " + given.status().message());
      if (given->uid != st.st_uid) {
        return Status::InvalidArgument(
            "--pg-user '" + options.pg_user + "' is not the owner the mount on '" +
            m->mount_point_ + "' shows for its files ('" + user.name +
            "'), and postgres runs only as the owner of its data directory: leave out --pg-user, "
            "or mount with --owner " +
            options.pg_user);
      }
    }
    if (user.uid != geteuid() && !repos->mount_allows_other()) {
      return Status::FailedPrecondition("the mount on '" + m->mount_point_ +
                                        "' was made without --allow-other, so postgres (user '" +
                                        user.name + "') cannot use it: remount with --allow-other");
    }
    if (user.uid == 0) {
      return Status::FailedPrecondition(
          "the mount on '" + m->mount_point_ +
          "' shows its files as owned by root, and postgres refuses to run as root: mount the "
          "repository with --owner postgres --allow-other to materialize clones");
    }
  } else {
    std::string who = options.pg_user;
    if (who.empty() && geteuid() != 0) who = std::to_string(geteuid());
    if (who.empty()) who = "postgres";
    Result<UserEntry> found = LookupUser(who);
    if (!found.ok()) {
      return Status::InvalidArgument("no user '" + who +
                                     "' to run the replay's postgres as (postgres refuses root): "
                                     "give --pg-user USER");
    }
    user = *found;
    if (user.uid == 0) {
      return Status::InvalidArgument(
          "postgres refuses to run as root: give --pg-user with the user that runs PostgreSQL");
    }
  }
  if (geteuid() != 0 && user.uid != geteuid()) {
    return Status::PermissionDenied("only root can run the replay's postgres as another user ('" +
                                    user.name + "')");
  }
  m->run_as_.name = user.name;
  m->run_as_.uid = user.uid;
  m->run_as_.gid = user.gid;
  m->run_as_.home = user.home;
  int n = 64;
  std::vector<gid_t> groups(static_cast<size_t>(n));
  if (getgrouplist(user.name.c_str(), user.gid, groups.data(), &n) < 0) {
    groups.resize(static_cast<size_t>(n));
    if (getgrouplist(user.name.c_str(), user.gid, groups.data(), &n) < 0) n = 0;
  }
  groups.resize(static_cast<size_t>(n));
  if (groups.empty()) groups.push_back(user.gid);
  m->run_as_.groups = groups;
  return m;
}

Result<MaterializeReport> Materializer::Run(
    const std::string& name, int port, const ReplayGoal& goal,
    const std::function<std::string(const std::string&)>& rewrite_conf) {
  std::optional<InterruptGuard> interrupts;
  if (!repos_->in_daemon()) interrupts.emplace();
  auto cancelled = [this] { return Cancelled(); };

  // A private work directory: the socket directory (the server's only listener), an hba file
  // that trusts local connections (for the progress queries), the server log and, without a
  // mount, the private mount point.
  const char* tmp = getenv("TMPDIR");
  std::string pattern = std::string(tmp && *tmp ? tmp : "/tmp") + "/pgbackfs-materialize.XXXXXX";
  std::vector<char> buf(pattern.begin(), pattern.end());
  buf.push_back('\0');
  if (!mkdtemp(buf.data())) return Status::FromErrno(errno, "mkdtemp '" + pattern + "'");
  const std::string work = buf.data();
  const std::string sock = work + "/socket", hba = work + "/pg_hba.conf";
  const std::string log = work + "/server.log";
  std::unique_ptr<PrivateMount> private_mount;
  ReplayServer server;
  std::optional<WalPrefetcher> prefetcher;  // reads through the mount: gone before it is
  auto cleanup = [&] {
    server.Kill();
    prefetcher.reset();
    Status s = private_mount ? private_mount->Stop() : Status::OK();
    // Never a recursive remove: a mount that would not go away may still be under `work`.
    unlink(hba.c_str());
    unlink(log.c_str());
    unlink((sock + "/.s.PGSQL." + std::to_string(port)).c_str());
    unlink((sock + "/.s.PGSQL." + std::to_string(port) + ".lock").c_str());
    rmdir(sock.c_str());
    rmdir(work.c_str());
    return s;
  };
  auto fail = [&](const Status& s, bool with_log) -> Status {
    LogWatcher tail(log);
    if (with_log) tail.Poll();
    Status cleaned = cleanup();
    std::string msg = s.message();
    if (with_log && !tail.tail().empty())
      msg += "; the server log ends with:" + Indent(tail.tail());
    if (!cleaned.ok()) msg += " (and: " + cleaned.message() + ")";
    return Status::IOError(msg);
  };

  Status s;
  if (chmod(work.c_str(), 0711) != 0 || mkdir(sock.c_str(), 0700) != 0 ||
      chown(sock.c_str(), run_as_.uid, run_as_.gid) != 0) {
    return fail(Status::FromErrno(errno, "set up '" + work + "'"), false);
  }
  s = WriteFileAtomic(hba,
                      "# pgbackfs --materialize: the replay server's socket is private\n"
                      "local all all trust\n",
                      0644);
  if (!s.ok()) return fail(s, false);

  std::string mount_point = mount_point_;
  if (mount_point.empty()) {
    // Our own process serves the mount: its log lines go to stderr, warnings only.
    auto logger = std::make_shared<spdlog::logger>(
        "materialize", std::make_shared<spdlog::sinks::stderr_sink_mt>());
    logger->set_pattern("pgbackfs: %l: %v");
    logger->set_level(spdlog::level::warn);
    spdlog::set_default_logger(logger);
    auto m = PrivateMount::Start(repo_, work + "/mnt", run_as_.uid, run_as_.gid);
    if (!m.ok()) return fail(m.status(), false);
    private_mount = std::move(m).value();
    mount_point = work + "/mnt";
  }
  const std::string dir = mount_point + "/clones/" + name;

  MaterializeReport report;
  report.pg_bin = pg_bin_;
  report.pg_version = pg_version_;
  report.user = run_as_.name;
  ReplayServer::Spec spec;
  spec.postgres = pg_bin_ + "/postgres";
  // Command-line settings win over the clone's configuration files: a private listener, an
  // English log on stderr with a known prefix, no archiving, no SSL files to find, promotion.
  spec.args = {"-D", dir,
               "-c", "port=" + std::to_string(port),
               "-c", "listen_addresses=",
               "-c", "unix_socket_directories=" + sock,
               "-c", "hba_file=" + hba,
               "-c", "ssl=off",
               "-c", "lc_messages=C",
               "-c", "logging_collector=off",
               "-c", "log_destination=stderr",
               "-c", "log_line_prefix=%m [%p] ",
               "-c", "log_min_messages=warning",
               "-c", "archive_mode=off",
               "-c", "hot_standby=on",
               "-c", "recovery_target_action=promote",
               "-c", "cluster_name=pgbackfs-materialize-" + name};
  spec.env = {"PATH=" + pg_bin_ + ":/usr/local/bin:/usr/bin:/bin", "HOME=" + run_as_.home,
              "USER=" + run_as_.name, "LOGNAME=" + run_as_.name, "LC_ALL=C"};
  if (run_as_.uid != geteuid()) spec.groups = run_as_.groups;
  spec.uid = run_as_.uid;
  spec.gid = run_as_.gid;
  spec.log_path = log;

  const bool show = options_.progress;
  if (show) {
    fprintf(io_->err, "materializing clone '%s': PostgreSQL %s (%s) replays WAL as user %s to %s\n",
            name.c_str(), pg_version_.c_str(), pg_bin_.c_str(), run_as_.name.c_str(),
            goal.description.empty() ? "a consistent state" : goal.description.c_str());
  }
  auto t0 = Clock::now();
  auto elapsed = [&t0] { return std::chrono::duration<double>(Clock::now() - t0).count(); };
  s = server.Start(spec);
  if (!s.ok()) return fail(s, true);

  LogWatcher watcher(log);
  prefetcher.emplace(mount_point + "/wal");
  watcher.OnRestored([&prefetcher](const std::string& name) { prefetcher->Restored(name); });
  ReplayProgress progress(io_->err, show, io_->err_is_tty, goal);
  StatsPoller stats("host=" + sock + " port=" + std::to_string(port) + " dbname=template1 user=" +
                    run_as_.name + " connect_timeout=2 sslmode=disable application_name=pgbackfs");
  auto next_stats = Clock::now();
  for (;;) {
    int status;
    if (server.Exited(&status)) {
      progress.Done();
      return fail(Status::IOError("postgres stopped before it reached the target and promoted (" +
                                  ReplayServer::DescribeExit(status) + ")"),
                  true);
    }
    if (cancelled()) {
      progress.Done();
      return fail(Status::IOError("cancelled"), true);
    }
    watcher.Poll();
    if (watcher.ready()) break;
    if (show && Clock::now() >= next_stats) {
      next_stats = Clock::now() + kStatsInterval;
      progress.Show(stats.Poll(), elapsed());
    }
    SleepFor(kPollInterval);
  }
  stats.Close();
  prefetcher.reset();
  progress.Done();
  if (show) fprintf(io_->err, "materializing clone '%s': promoted; shutting down\n", name.c_str());

  double promoted_at = elapsed();
  s = server.StopFast(cancelled);
  if (!s.ok()) return fail(s, true);
  report.seconds = elapsed();
  report.shutdown_seconds = report.seconds - promoted_at;
  watcher.Poll();
  report.messages = watcher.notes();

  Result<uint32_t> state = ClusterState(dir);
  if (!state.ok()) return fail(state.status(), true);
  if (*state != kDbShutdowned) {
    return fail(
        Status::IOError("the replayed cluster was not shut down cleanly (pg_control state " +
                        std::to_string(*state) + ")"),
        true);
  }
  s = FinishReplayedCluster(dir, rewrite_conf);
  // Durable: the kernel's buffers of the mount reach the clone, and the clone the disk.
  if (s.ok() && !private_mount) s = repos_->SyncMount();
  if (!s.ok()) return fail(s.WithContext("finish the replayed clone"), false);
  s = cleanup();
  if (!s.ok()) return s.WithContext("unmount the private mount");
  auto fs = CloneFs::Open(repo_, name);
  if (!fs.ok()) return fs.status();
  RETURN_IF_ERROR((*fs)->Fsync());
  return report;
}

}  // namespace pgbackfs
