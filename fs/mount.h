// Mounting a repository: the libfuse low-level session, its multi-threaded loop, and shutdown.
// Who owns what: the caller owns the Repository and keeps it open until the FuseMount is gone;
// the FuseMount owns the Filesystem and the session.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "fs/filesystem.h"
#include "repo/repository.h"
#include "repo/status.h"

struct fuse_session;

namespace pgbackfs {

struct MountOptions {
  std::string mountpoint;  // absolute
  bool allow_other = false;
  bool debug = false;  // libfuse's request trace, to the log
  // Serve() ends on SIGINT/SIGTERM/SIGHUP (the mount daemon). False for a mount served on a
  // helper thread of a command, which handles those signals itself and ends the mount with
  // fusermount3 -u.
  bool handle_signals = true;
  FsOptions fs;
};

// InvalidArgument unless `path` is an existing, empty directory that is not a dead FUSE mount.
Status CheckMountpoint(const std::string& path);

// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread and in every thread it creates from
// now on, and ignores SIGPIPE. Call it before anything starts threads (opening a Repository
// does): only the FUSE loop should take those signals, so that they end it.
void BlockTerminationSignals();

class FuseMount {
 public:
  // Mounts `repo` on options.mountpoint. Nothing is served until Serve().
  static Result<std::unique_ptr<FuseMount>> Mount(Repository* repo, const MountOptions& options);
  ~FuseMount();  // unmounts if still mounted
  FuseMount(const FuseMount&) = delete;
  FuseMount& operator=(const FuseMount&) = delete;

  // Serves requests on several threads until the filesystem is unmounted (fusermount3 -u) or
  // SIGINT/SIGTERM/SIGHUP arrives (with options.handle_signals), then unmounts. `on_ready` runs
  // once, on another thread, when the kernel has been answered a first request (OK), or if that
  // failed.
  Status Serve(const std::function<void(const Status&)>& on_ready);

  Filesystem* fs() { return fs_.get(); }
  const std::string& mountpoint() const { return options_.mountpoint; }

 private:
  FuseMount() = default;
  void Unmount();

  MountOptions options_;
  std::unique_ptr<Filesystem> fs_;
  fuse_session* session_ = nullptr;
  bool mounted_ = false;
};

}  // namespace pgbackfs
