#include "fs/mount.h"

#include <dirent.h>
#include <pthread.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <cerrno>
#include <cstdarg>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#include "fs/fuse_ops.h"

namespace pgbackfs {

namespace {

constexpr unsigned kMaxThreads = 16;
// Workers never exit for being idle. libfuse ends a worker once more than this many wait, and
// starts one (a thread, a /dev/fuse clone fd, a 1 MiB buffer) as soon as none waits: with 4, a
// cold sequential scan of a scale-100 clone started and ended 400-900 threads, and 20 s of
// pgbench -c 2 220-360. With every worker kept, 15 (docs/BENCHMARKS.md, seventh session).
constexpr unsigned kIdleThreads = kMaxThreads;
constexpr int kReadaheadKib = 4096;
constexpr int kMaxDirtyRatio = 50;  // % of the kernel's dirty limit the mount may hold (TuneBdi)

std::mutex fuse_log_mu;
std::string last_fuse_error;  // guarded by fuse_log_mu

// libfuse reports mount and session errors through its log; keep them for our messages.
void LogFromFuse(fuse_log_level level, const char* fmt, va_list ap) {
  char buf[1024];
  vsnprintf(buf, sizeof(buf), fmt, ap);
  std::string msg(buf);
  while (!msg.empty() && msg.back() == '\n') msg.pop_back();
  if (level <= FUSE_LOG_ERR) {
    std::lock_guard<std::mutex> lock(fuse_log_mu);
    last_fuse_error = msg;
    spdlog::error("libfuse: {}", msg);
  } else if (level <= FUSE_LOG_NOTICE) {
    spdlog::info("libfuse: {}", msg);
  } else {
    spdlog::debug("libfuse: {}", msg);
  }
}

std::string TakeFuseError() {
  std::lock_guard<std::mutex> lock(fuse_log_mu);
  std::string msg = last_fuse_error.empty() ? "see the log" : last_fuse_error;
  last_fuse_error.clear();
  return msg;
}

// Mount option values are separated by commas; a literal one is escaped.
std::string EscapeOption(const std::string& value) {
  std::string out;
  for (char c : value) {
    if (c == ',' || c == '\\') out.push_back('\\');
    out.push_back(c);
  }
  return out;
}

sigset_t TerminationSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGHUP);
  return set;
}

// Writes one of the mount's backing-device settings (/sys/class/bdi/MAJ:MIN/NAME). Best effort:
// without root or on an older kernel the mount works with the kernel's defaults, only slower.
void SetBdi(dev_t dev, const char* name, int value) {
  std::string path = "/sys/class/bdi/" + std::to_string(major(dev)) + ":" +
                     std::to_string(minor(dev)) + "/" + name;
  FILE* f = fopen(path.c_str(), "w");
  int err = 0;
  if (!f) {
    err = errno;
  } else {
    if (fprintf(f, "%d", value) < 0) err = errno;
    if (fclose(f) != 0 && err == 0) err = errno;
  }
  if (err) {
    spdlog::info("could not set {} of the mount to {} ('{}'): {}", name, value, path,
                 strerror(err));
    return;
  }
  spdlog::debug("mount's {} set to {}", name, value);
}

// Two of the kernel's defaults for a FUSE mount cost clones dearly.
// - Readahead is 128 KiB; sequential reads through the mount go much faster with 1 MiB requests
//   (FIELD-NOTES: restic #3426), and faster again with 4 MiB of readahead: the kernel then keeps
//   a few 1 MiB requests in flight, which the daemon serves in parallel (a cold 1 GiB read went
//   from ~285 to ~400 MB/s).
// - Dirty pages: a FUSE mount may hold only 1% of the kernel's dirty limit (max_ratio 1, about
//   48 MB here), a guard against FUSE servers that are slow or untrusted. Postgres writing to a
//   clone then has the kernel write pages back to the daemon all the time, one 8 KiB request per
//   page it evicts, and is throttled once 48 MB are dirty; on a local disk the same pages wait in
//   the page cache (30 s, or the checkpoint's fsync), and a page dirtied again meanwhile is
//   written once. The mount gets half of the dirty limit. It stays held to that on its own
//   (strict_limit), so its dirty pages alone never reach the point (three quarters of the limit)
//   where the kernel throttles every writer, the daemon's own writes to the repository among
//   them: those pages can only be cleaned by the daemon. What postgres fsyncs is durable as
//   before; only unsynced pages wait longer, as they do on ext4.
void TuneBdi(dev_t dev) {
  SetBdi(dev, "read_ahead_kb", kReadaheadKib);
  SetBdi(dev, "max_ratio", kMaxDirtyRatio);
}

}  // namespace

Status CheckMountpoint(const std::string& path) {
  auto dead = [&path] {
    return Status::InvalidArgument("mountpoint '" + path +
                                   "' is a dead mount (transport endpoint is not connected); "
                                   "run 'pgbackfs umount " +
                                   path + "' first");
  };
  struct stat st;
  if (stat(path.c_str(), &st) != 0) {
    int err = errno;
    if (err == ENOENT) return Status::InvalidArgument("mountpoint '" + path + "' does not exist");
    if (err == ENOTCONN) return dead();
    return Status::FromErrno(err, "mountpoint '" + path + "'");
  }
  if (!S_ISDIR(st.st_mode)) {
    return Status::InvalidArgument("mountpoint '" + path + "' is not a directory");
  }
  // The kernel may still answer stat() of a dead mount from its cache; listing it cannot.
  DIR* dir = opendir(path.c_str());
  if (!dir) {
    int err = errno;
    if (err == ENOTCONN) return dead();
    return Status::FromErrno(err, "open mountpoint '" + path + "'");
  }
  bool empty = true;
  errno = 0;
  while (dirent* e = readdir(dir)) {
    if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) {
      empty = false;
      break;
    }
  }
  int err = errno;
  closedir(dir);
  if (err == ENOTCONN) return dead();
  if (!empty) return Status::InvalidArgument("mountpoint '" + path + "' is not empty");
  return Status::OK();
}

void BlockTerminationSignals() {
  sigset_t set = TerminationSignals();
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  signal(SIGPIPE, SIG_IGN);
}

Result<std::unique_ptr<FuseMount>> FuseMount::Mount(Repository* repo, const MountOptions& options) {
  RETURN_IF_ERROR(CheckMountpoint(options.mountpoint));
  fuse_set_log_func(LogFromFuse);
  std::unique_ptr<FuseMount> m(new FuseMount());
  m->options_ = options;
  m->fs_ = std::make_unique<Filesystem>(repo, options.fs);

  // default_permissions: the kernel checks modes and owners (0700/0600, --owner), so with
  // allow_other only the owner (and root) can read a backup.
  std::string opts =
      "default_permissions,subtype=pgbackfs,fsname=" + EscapeOption("pgbackfs:" + repo->path());
  if (options.allow_other) opts += ",allow_other";
  std::vector<std::string> argv_strings = {"pgbackfs", "-o", opts};
  if (options.debug) argv_strings.push_back("-d");
  std::vector<char*> argv;
  for (auto& a : argv_strings) argv.push_back(a.data());
  fuse_args args = FUSE_ARGS_INIT(static_cast<int>(argv.size()), argv.data());
  const fuse_lowlevel_ops& ops = FilesystemOps();
  m->session_ = fuse_session_new(&args, &ops, sizeof(ops), m->fs_.get());
  fuse_opt_free_args(&args);
  if (!m->session_) return Status::IOError("cannot start a FUSE session: " + TakeFuseError());
  if (fuse_session_mount(m->session_, options.mountpoint.c_str()) != 0) {
    return Status::IOError("cannot mount on '" + options.mountpoint + "': " + TakeFuseError());
  }
  m->mounted_ = true;
  return m;
}

FuseMount::~FuseMount() {
  Unmount();
  if (session_) fuse_session_destroy(session_);
}

void FuseMount::Unmount() {
  if (!mounted_) return;
  fuse_session_unmount(session_);
  mounted_ = false;
}

Status FuseMount::Serve(const std::function<void(const Status&)>& on_ready) {
  const bool signals = options_.handle_signals;
  if (signals && fuse_set_signal_handlers(session_) != 0) {
    return Status::IOError("cannot install signal handlers: " + TakeFuseError());
  }
  std::thread ready([this, &on_ready] {
    // A stat of the mount root needs the kernel's INIT and one GETATTR answered by the loop.
    struct stat st;
    Status s;
    if (stat(options_.mountpoint.c_str(), &st) != 0) {
      s = Status::FromErrno(errno, "stat '" + options_.mountpoint + "'");
    } else if (st.st_ino != InodeTable::kRootIno) {
      s = Status::IOError("'" + options_.mountpoint + "' is not served by this mount");
    } else {
      TuneBdi(st.st_dev);
    }
    on_ready(s);
  });

  // Only this thread, and the workers the loop starts from it, take the termination signals.
  sigset_t set = TerminationSignals();
  if (signals) pthread_sigmask(SIG_UNBLOCK, &set, nullptr);
  fuse_loop_config* config = fuse_loop_cfg_create();
  fuse_loop_cfg_set_clone_fd(config, 1);
  fuse_loop_cfg_set_max_threads(config, kMaxThreads);
  fuse_loop_cfg_set_idle_threads(config, kIdleThreads);
  int rc = fuse_session_loop_mt(session_, config);
  fuse_loop_cfg_destroy(config);
  if (signals) {
    pthread_sigmask(SIG_BLOCK, &set, nullptr);
    fuse_remove_signal_handlers(session_);
    signal(SIGPIPE, SIG_IGN);  // restored to the default above; forwarded commands may still write
  }

  Unmount();  // also unblocks the ready thread if the loop ended before answering it
  ready.join();
  if (rc < 0) return Status::IOError(std::string("FUSE loop failed: ") + strerror(-rc));
  if (rc > 0) {
    spdlog::info("stopping on signal {}", rc);
  } else {
    spdlog::info("unmounted");
  }
  return Status::OK();
}

}  // namespace pgbackfs
