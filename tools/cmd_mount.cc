// pgbackfs mount REPO MOUNTPOINT [--owner USER] [--allow-other] [--foreground]
// pgbackfs umount MOUNTPOINT
//
// The mount daemon owns the repository while it is mounted: it holds the lock, serves the FUSE
// mount (fs/), and runs the commands other pgbackfs processes forward to it over
// REPO/control.sock (tools/control.h). Without --foreground the command forks before anything
// opens the repository (RocksDB's threads do not survive a fork); the parent exits 0 only once
// the daemon has answered a first request through the mount, and 1 with the daemon's error
// otherwise.
#ifdef __SANITIZE_ADDRESS__
#include <sanitizer/lsan_interface.h>
#endif
#include <fcntl.h>
#include <grp.h>
#include <malloc.h>
#include <pwd.h>
#include <spawn.h>
#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

#include "fs/mount.h"
#include "repo/file_util.h"
#include "tools/cli.h"
#include "tools/control.h"

extern char** environ;

namespace pgbackfs {

namespace {

constexpr int kUmountWaitSec = 60;

bool SameFile(const std::string& a, const std::string& b) {
  struct stat sa, sb;
  return stat(a.c_str(), &sa) == 0 && stat(b.c_str(), &sb) == 0 && sa.st_dev == sb.st_dev &&
         sa.st_ino == sb.st_ino;
}

// Hands forwarded commands the daemon's own repository.
class DaemonRepoProvider : public RepoProvider {
 public:
  DaemonRepoProvider(Repository* repo, std::string mountpoint, bool allow_other)
      : repo_(repo), mountpoint_(std::move(mountpoint)), allow_other_(allow_other) {}
  Result<Repository*> Get(const std::string& repo_path) override {
    if (repo_path == repo_->path() || SameFile(repo_path, repo_->path())) return repo_;
    return Status::InvalidArgument("the mount daemon of '" + repo_->path() +
                                   "' cannot open another repository '" + repo_path + "'");
  }
  bool in_daemon() const override { return true; }
  // syncfs() makes the kernel write back the mount's dirty pages through FUSE requests, which the
  // loop's worker threads serve; this runs on the control socket's thread, never on one of them.
  Status SyncMount() override {
    int fd = open(mountpoint_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return Status::FromErrno(errno, "open '" + mountpoint_ + "'");
    int rc = syncfs(fd);
    int err = errno;
    close(fd);
    if (rc != 0) return Status::FromErrno(err, "syncfs '" + mountpoint_ + "'");
    return Status::OK();
  }
  std::string mount_point() const override { return mountpoint_; }
  bool mount_allows_other() const override { return allow_other_; }

 private:
  Repository* repo_;
  std::string mountpoint_;
  bool allow_other_;
};

// Lexically normalized absolute path: no ".", "..", empty parts or trailing slash.
std::string NormalizePath(const std::string& abs) {
  std::vector<std::string> parts;
  std::stringstream in(abs);
  std::string part;
  while (std::getline(in, part, '/')) {
    if (part.empty() || part == ".") continue;
    if (part == "..") {
      if (!parts.empty()) parts.pop_back();
      continue;
    }
    parts.push_back(part);
  }
  std::string out;
  for (const auto& p : parts) out += "/" + p;
  return out.empty() ? "/" : out;
}

// The canonical path of `path` (symlinks resolved) if it can be resolved, else its lexical form
// (a dead FUSE mount cannot be resolved).
std::string CanonicalPath(const std::string& abs) {
  char buf[PATH_MAX];
  if (realpath(abs.c_str(), buf)) return buf;
  return NormalizePath(abs);
}

Status ResolveOwner(const std::string& owner, uid_t* uid, gid_t* gid) {
  if (owner.empty()) {
    *uid = getuid();
    *gid = getgid();
    return Status::OK();
  }
  std::vector<char> buf(16384);
  passwd pw, *found = nullptr;
  if (getpwnam_r(owner.c_str(), &pw, buf.data(), buf.size(), &found) == 0 && found) {
    *uid = pw.pw_uid;
    *gid = pw.pw_gid;
    return Status::OK();
  }
  char* end = nullptr;
  errno = 0;
  unsigned long n = strtoul(owner.c_str(), &end, 10);
  if (errno == 0 && end && *end == '\0' && !owner.empty() && n < UINT_MAX) {
    *uid = static_cast<uid_t>(n);
    if (getpwuid_r(*uid, &pw, buf.data(), buf.size(), &found) == 0 && found) {
      *gid = pw.pw_gid;
    } else {
      *gid = static_cast<gid_t>(n);
    }
    return Status::OK();
  }
  return Status::InvalidArgument("unknown user '" + owner + "' for --owner");
}

void SetUpLogging(const std::string& repo_path, bool foreground) {
  std::shared_ptr<spdlog::logger> logger;
  if (foreground) {
    logger = std::make_shared<spdlog::logger>("mount",
                                              std::make_shared<spdlog::sinks::stderr_sink_mt>());
  } else {
    std::string dir = repo_path + "/log";
    mkdir(dir.c_str(), 0700);
    try {
      logger = std::make_shared<spdlog::logger>(
          "mount", std::make_shared<spdlog::sinks::basic_file_sink_mt>(dir + "/mount.log"));
    } catch (const spdlog::spdlog_ex&) {
      logger = std::make_shared<spdlog::logger>("mount",
                                                std::make_shared<spdlog::sinks::stderr_sink_mt>());
    }
  }
  logger->set_pattern("%Y-%m-%d %H:%M:%S.%e [%l] [pid %P] %v");
  logger->flush_on(spdlog::level::info);
  spdlog::set_default_logger(logger);
}

void WriteAll(int fd, const std::string& s) {
  size_t done = 0;
  while (done < s.size()) {
    ssize_t n = write(fd, s.data() + done, s.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    done += static_cast<size_t>(n);
  }
}

struct MountArgs {
  std::string repo;
  std::string mountpoint;
  std::string owner;
  bool allow_other = false;
  bool foreground = false;
  bool debug = false;
  size_t dir_cache_mib = 32;
  // The kernel page cache keeps the bytes of immutable files (keep_cache), so the daemon's cache
  // of decompressed chunks mostly holds index blocks.
  size_t chunk_cache_mib = 64;
};

// The daemon: opens the repository, serves the control socket and the mount until unmounted or
// signalled. `ready_fd` (-1 in the foreground) receives "OK\n" or "ERR <message>" once.
int RunMountDaemon(const MountArgs& args, const MountOptions& base, int ready_fd, CommandIo* io) {
  auto report = [&](const Status& s) {
    if (ready_fd >= 0) {
      WriteAll(ready_fd, s.ok() ? std::string("OK\n") : "ERR " + s.message());
      close(ready_fd);
      ready_fd = -1;
    } else if (!s.ok()) {
      fprintf(io->err, "pgbackfs: error: %s\n", s.message().c_str());
    }
  };
  BlockTerminationSignals();
  SetUpLogging(args.repo, args.foreground);

  // A few malloc arenas: with one per FUSE thread, freed chunk buffers pile up in each of them.
  mallopt(M_ARENA_MAX, 4);
  // And memory they free is kept for the next request, not given back to the kernel and faulted
  // in again: glibc's defaults unmap or trim a freed 1 MiB read buffer, an evicted cache block or
  // a flushed memtable, and a first touch of a page costs 11 us on a paravirtualised machine.
  // Reading a 1 GiB clone file with 1 MiB reads (dd) took 48K-85K page faults in the daemon and
  // ran at 453-482 MB/s with the defaults; with these 12K on a fresh mount, then 250-409, at
  // 720-808 MB/s (docs/BENCHMARKS.md, ninth session). What an arena keeps free at its top is
  // bounded by the trim threshold.
  mallopt(M_MMAP_THRESHOLD, 32 << 20);  // glibc's maximum; larger blocks are mapped
  mallopt(M_TRIM_THRESHOLD, 128 << 20);
  mallopt(M_TOP_PAD, 16 << 20);
  OpenOptions open_options;
  open_options.lock_owner = "pgbackfs mount on '" + args.mountpoint + "'";
  open_options.chunk_cache_bytes = args.chunk_cache_mib << 20;
  auto opened = Repository::Open(args.repo, open_options);
  if (!opened.ok()) {
    Status s = opened.status();
    if (s.code() == Status::Code::kBusy) {
      s = Status::Busy(s.message() + "; unmount it or stop that process first");
    }
    spdlog::error("cannot mount: {}", s.message());
    report(s);
    return 1;
  }
  std::unique_ptr<Repository> repo = std::move(opened).value();
  DaemonRepoProvider provider(repo.get(), args.mountpoint, base.allow_other);
  auto server =
      ControlServer::Start(ControlSocketPath(args.repo),
                           [&provider](const std::vector<std::string>& argv, CommandIo* cio) {
                             return RunCli(argv, cio, &provider);
                           });
  if (!server.ok()) {
    spdlog::error("cannot mount: {}", server.status().ToString());
    report(server.status());
    return 1;
  }
  auto mount = FuseMount::Mount(repo.get(), base);
  if (!mount.ok()) {
    (*server)->Stop();
    spdlog::error("cannot mount: {}", mount.status().ToString());
    report(mount.status());
    return 1;
  }
  Status served = (*mount)->Serve([&](const Status& ready) {
    if (!ready.ok()) {
      spdlog::error("the mount did not answer: {}", ready.ToString());
      report(ready);
      kill(getpid(), SIGTERM);  // ends the loop
      return;
    }
    spdlog::info("mounted '{}' on '{}' (owner {}:{}{})", args.repo, args.mountpoint, base.fs.uid,
                 base.fs.gid, base.allow_other ? ", allow_other" : "");
    report(Status::OK());
    if (!args.foreground) {
      int null_fd = open("/dev/null", O_RDWR);
      if (null_fd >= 0) {
        dup2(null_fd, STDIN_FILENO);
        dup2(null_fd, STDOUT_FILENO);
        dup2(null_fd, STDERR_FILENO);
        if (null_fd > STDERR_FILENO) close(null_fd);
      }
    }
  });
  (*server)->Stop();
  mount->reset();
  repo.reset();  // releases the lock
  if (!served.ok()) {
    spdlog::error("{}", served.ToString());
    report(served);
    return 1;
  }
  spdlog::info("stopped; repository '{}' released", args.repo);
  return 0;
}

// --- umount --------------------------------------------------------------------------------------

std::string UnescapeMountField(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 3 < s.size()) {
      int v = 0;
      bool ok = true;
      for (int k = 1; k <= 3; ++k) {
        char c = s[i + k];
        if (c < '0' || c > '7') ok = false;
        v = v * 8 + (c - '0');
      }
      if (ok) {
        out.push_back(static_cast<char>(v));
        i += 3;
        continue;
      }
    }
    out.push_back(s[i]);
  }
  return out;
}

// The repository mounted on `mountpoint` by pgbackfs (from /proc/self/mountinfo).
Result<std::string> MountedRepository(const std::string& mountpoint) {
  std::ifstream in("/proc/self/mountinfo");
  std::string line;
  std::string found;
  bool any = false;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string id, parent, dev, root, mnt, f;
    fields >> id >> parent >> dev >> root >> mnt;
    while (fields >> f && f != "-") {
    }
    std::string fstype, source;
    fields >> fstype >> source;
    if (UnescapeMountField(mnt) != mountpoint) continue;
    any = true;
    source = UnescapeMountField(source);
    if (fstype == "fuse.pgbackfs" && source.rfind("pgbackfs:", 0) == 0) {
      found = source.substr(9);  // the last mount on a path is the visible one
    } else {
      found.clear();
    }
  }
  if (!found.empty()) return found;
  if (any) return Status::InvalidArgument("'" + mountpoint + "' is not a pgbackfs mount");
  return Status::InvalidArgument("nothing is mounted on '" + mountpoint + "'");
}

// Runs fusermount3 -u; its own message goes to our stderr.
Status RunFusermount(const std::string& mountpoint) {
  const char* argv[] = {"fusermount3", "-u", "--", mountpoint.c_str(), nullptr};
  pid_t pid;
  int rc = posix_spawnp(&pid, "fusermount3", nullptr, nullptr, const_cast<char**>(argv), environ);
  if (rc != 0) return Status::FromErrno(rc, "run fusermount3");
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return Status::Busy("fusermount3 could not unmount '" + mountpoint +
                        "' (is a file on it open, or a shell inside it?)");
  }
  return Status::OK();
}

// True once nobody holds the repository lock (the daemon has exited and released it).
bool WaitForUnlock(const std::string& repo, int seconds) {
  std::string lock_path = repo + "/lock";
  for (int i = 0; i < seconds * 10; ++i) {
    int fd = open(lock_path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return true;
    bool free = flock(fd, LOCK_SH | LOCK_NB) == 0;
    close(fd);
    if (free) return true;
    usleep(100 * 1000);
  }
  return false;
}

}  // namespace

void AddMountCommands(CLI::App* app, CliContext* ctx) {
  auto args = std::make_shared<MountArgs>();
  CLI::App* mount = app->add_subcommand("mount", "mount a repository (backups/, wal/, clones/)");
  mount->add_option("REPO", args->repo, "repository directory")->required();
  mount->add_option("MOUNTPOINT", args->mountpoint, "an existing empty directory")->required();
  mount->add_option("--owner", args->owner, "user that owns every file (default: you)");
  mount->add_flag("--allow-other", args->allow_other, "let other users (postgres) use the mount");
  mount->add_flag("--foreground", args->foreground, "stay in the foreground, log to stderr");
  mount->add_flag("--debug", args->debug, "log every FUSE request")->group("");
  mount->add_option("--dir-cache-mib", args->dir_cache_mib, "decoded directory cache (MiB)")
      ->group("");
  mount->add_option("--chunk-cache-mib", args->chunk_cache_mib, "decompressed chunk cache (MiB)")
      ->group("");
  mount->callback([args, ctx] {
    if (ctx->repos->in_daemon()) {
      ctx->Fail(
          Status::InvalidArgument("the repository is already mounted: its mount daemon "
                                  "cannot mount it again"));
      return;
    }
    MountArgs a = *args;
    a.repo = CanonicalPath(ctx->io->Abs(a.repo));
    a.mountpoint = ctx->io->Abs(a.mountpoint);
    Status s = CheckMountpoint(a.mountpoint);
    if (!s.ok()) return ctx->Fail(s);
    a.mountpoint = CanonicalPath(a.mountpoint);
    Result<RepoConfig> config = Repository::ReadConfig(a.repo);
    if (!config.ok()) return ctx->Fail(config.status());
    MountOptions options;
    options.mountpoint = a.mountpoint;
    options.allow_other = a.allow_other;
    options.debug = a.debug;
    options.fs.dir_cache_bytes = a.dir_cache_mib << 20;
    s = ResolveOwner(a.owner, &options.fs.uid, &options.fs.gid);
    if (!s.ok()) return ctx->Fail(s);

    if (a.foreground) {
      ctx->exit_code = RunMountDaemon(a, options, -1, ctx->io);
      return;
    }
    int pipe_fds[2];
    if (pipe2(pipe_fds, O_CLOEXEC) != 0) return ctx->Fail(Status::FromErrno(errno, "pipe"));
    fflush(ctx->io->out);
    fflush(ctx->io->err);
    pid_t pid = fork();
    if (pid < 0) return ctx->Fail(Status::FromErrno(errno, "fork"));
    if (pid == 0) {
      close(pipe_fds[0]);
      setsid();
      if (chdir("/") != 0) {
        // Paths are absolute; staying in the caller's directory only pins it.
      }
      int code = RunMountDaemon(a, options, pipe_fds[1], ctx->io);
      spdlog::shutdown();
#ifdef __SANITIZE_ADDRESS__
      // _exit skips LeakSanitizer's exit-time check; sanitizer builds run it here.
      __lsan_do_leak_check();
#endif
      _exit(code);
    }
    close(pipe_fds[1]);
    std::string message;
    char buf[4096];
    for (;;) {
      ssize_t n = read(pipe_fds[0], buf, sizeof(buf));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      message.append(buf, static_cast<size_t>(n));
    }
    close(pipe_fds[0]);
    if (message == "OK\n") {
      fprintf(ctx->io->out, "mounted '%s' on '%s' (daemon pid %d, log %s/log/mount.log)\n",
              a.repo.c_str(), a.mountpoint.c_str(), static_cast<int>(pid), a.repo.c_str());
      return;
    }
    int status;
    waitpid(pid, &status, 0);
    if (message.rfind("ERR ", 0) == 0) {
      ctx->Fail(Status::IOError(message.substr(4)));
    } else {
      ctx->Fail(Status::IOError("the mount daemon exited before the mount was ready (see '" +
                                a.repo + "/log/mount.log')"));
    }
  });

  auto umount_point = std::make_shared<std::string>();
  CLI::App* umount = app->add_subcommand("umount", "unmount and wait for the daemon to stop");
  umount->add_option("MOUNTPOINT", *umount_point, "where the repository is mounted")->required();
  umount->callback([umount_point, ctx] {
    if (ctx->repos->in_daemon()) {
      ctx->Fail(Status::InvalidArgument("umount cannot run inside the mount daemon"));
      return;
    }
    std::string mp = CanonicalPath(ctx->io->Abs(*umount_point));
    Result<std::string> repo = MountedRepository(mp);
    if (!repo.ok()) return ctx->Fail(repo.status());
    Status s = RunFusermount(mp);
    if (!s.ok()) return ctx->Fail(s);
    if (!WaitForUnlock(*repo, kUmountWaitSec)) {
      fprintf(ctx->io->err,
              "pgbackfs: warning: unmounted '%s', but the daemon (%s) still holds '%s' after "
              "%d s (forwarded commands still running?)\n",
              mp.c_str(), Repository::LockHolder(*repo).c_str(), repo->c_str(), kUmountWaitSec);
      return;
    }
    fprintf(ctx->io->out, "unmounted '%s'\n", mp.c_str());
  });
}

}  // namespace pgbackfs
