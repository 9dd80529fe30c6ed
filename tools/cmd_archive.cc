// pgbackfs archive-push REPO PATH        archive_command = 'pgbackfs archive-push REPO %p'
// pgbackfs archive-get REPO NAME DEST    restore_command = 'pgbackfs archive-get REPO %f %p'
//
// The WAL archive without a mount, with the semantics of cp into and out of MOUNT/wal/: a pushed
// file is durable when the command exits 0, an identical duplicate is accepted, and a different
// one is refused with the archived file kept (invariants 1 and 2).
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <thread>

#include "repo/file_util.h"
#include "repo/wal_archive.h"
#include "tools/cli.h"

namespace pgbackfs {

namespace {

constexpr size_t kReadPiece = 1 << 20;

std::string BaseName(const std::string& path) {
  size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

std::string DirName(const std::string& path) {
  size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

// Opens the repository, waiting up to `timeout_sec` while another pgbackfs process holds it
// (a concurrent archive-push, or a backup). Giving up at once would make PostgreSQL retry a push
// later, but would make a restore_command look like the end of the archive.
Repository* OpenRepoWaiting(CliContext* ctx, const std::string& path, int timeout_sec) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_sec);
  for (;;) {
    Result<Repository*> repo = ctx->repos->Get(ctx->io->Abs(path));
    if (repo.ok()) return *repo;
    if (repo.status().code() != Status::Code::kBusy ||
        std::chrono::steady_clock::now() >= deadline) {
      ctx->Fail(repo.status());
      return nullptr;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

Status PushFile(WalArchive* archive, const std::string& path, const std::string& name) {
  // O_NONBLOCK: a FIFO under a WAL file's name must not hang the archive_command.
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return Status::FromErrno(errno, "open WAL file '" + path + "'");
  Status s = [&]() -> Status {
    struct stat st;
    if (fstat(fd, &st) != 0) return Status::FromErrno(errno, "stat WAL file '" + path + "'");
    if (!S_ISREG(st.st_mode)) {
      return Status::InvalidArgument("'" + path + "' is not a regular file");
    }
    ASSIGN_OR_RETURN(std::unique_ptr<WalWriter> writer, archive->NewWriter(name));
    std::string buf(kReadPiece, '\0');
    uint64_t offset = 0;
    for (;;) {
      ssize_t n = pread(fd, buf.data(), buf.size(), static_cast<off_t>(offset));
      if (n < 0) {
        if (errno == EINTR) continue;
        return Status::FromErrno(errno, "read WAL file '" + path + "'");
      }
      if (n == 0) break;
      RETURN_IF_ERROR(writer->Write(offset, std::string_view(buf.data(), n)));
      offset += static_cast<uint64_t>(n);
    }
    return writer->Commit();
  }();
  close(fd);
  return s;
}

// Writes the archived file to `dest` atomically: a temporary file next to it, fsync, rename,
// fsync of the directory. A crash leaves either no `dest` or the whole file.
Status FetchFile(WalArchive* archive, const WalFileInfo& info, const std::string& dest) {
  std::string dir = DirName(dest);
  std::string tmp = dir + "/." + BaseName(dest) + ".pgbackfs-XXXXXX";
  int fd = mkostemp(tmp.data(), O_CLOEXEC);
  if (fd < 0) return Status::FromErrno(errno, "create temporary file in '" + dir + "'");
  uint64_t offset = 0;
  Status s = archive->ReadFile(info, [&](std::string_view piece) -> Status {
    RETURN_IF_ERROR(PWriteAll(fd, piece.data(), piece.size(), static_cast<off_t>(offset), tmp));
    offset += piece.size();
    return Status::OK();
  });
  if (s.ok() && offset != info.data.size) {
    s = Status::Corruption("WAL file '" + info.name + "' read " + std::to_string(offset) +
                           " bytes, expected " + std::to_string(info.data.size));
  }
  // Run as root (the mount daemon serving a forwarded command), the file goes to whoever owns
  // the destination directory: postgres must be able to read what its restore_command fetched.
  struct stat st;
  if (s.ok() && geteuid() == 0 && stat(dir.c_str(), &st) == 0 &&
      fchown(fd, st.st_uid, st.st_gid) != 0) {
    s = Status::FromErrno(errno, "chown '" + tmp + "'");
  }
  if (s.ok() && fsync(fd) != 0) s = Status::FromErrno(errno, "fsync '" + tmp + "'");
  if (close(fd) != 0 && s.ok()) s = Status::FromErrno(errno, "close '" + tmp + "'");
  if (s.ok() && rename(tmp.c_str(), dest.c_str()) != 0) {
    s = Status::FromErrno(errno, "rename '" + tmp + "' to '" + dest + "'");
  }
  if (!s.ok()) {
    unlink(tmp.c_str());
    return s;
  }
  return FsyncDir(dir);
}

}  // namespace

void AddArchiveCommands(CLI::App* app, CliContext* ctx) {
  struct Args {
    std::string repo;
    std::string path;
    std::string name;
    std::string dest;
    int lock_timeout = 60;
  };
  auto push_args = std::make_shared<Args>();
  CLI::App* push =
      app->add_subcommand("archive-push",
                          "store one WAL file in the archive (archive_command = 'pgbackfs "
                          "archive-push REPO %p')");
  push->add_option("REPO", push_args->repo, "repository directory")->required();
  push->add_option("PATH", push_args->path, "WAL file to archive; it is stored under its base name")
      ->required();
  push->add_option("--lock-timeout", push_args->lock_timeout,
                   "seconds to wait while another process holds the repository (default 60)");
  push->callback([args = push_args, ctx] {
    std::string path = ctx->io->Abs(args->path);
    std::string name = BaseName(path);
    WalFileName parsed;
    Status s = ParseWalFileName(std::string_view(name), &parsed);
    if (!s.ok()) return ctx->Fail(s);
    Repository* repo = OpenRepoWaiting(ctx, args->repo, args->lock_timeout);
    if (!repo) return;
    WalArchive archive(repo);
    bool existed = archive.Get(name).ok();
    s = PushFile(&archive, path, name);
    if (!s.ok()) return ctx->Fail(s);
    if (existed) {
      fprintf(ctx->io->out, "'%s' was already archived with the same content\n", name.c_str());
    }
  });

  auto get_args = std::make_shared<Args>();
  CLI::App* get =
      app->add_subcommand("archive-get",
                          "fetch one WAL file from the archive (restore_command = 'pgbackfs "
                          "archive-get REPO %f %p'); exit 1 if it is not archived");
  get->add_option("REPO", get_args->repo, "repository directory")->required();
  get->add_option("NAME", get_args->name, "archived file name (%f)")->required();
  get->add_option("DEST", get_args->dest, "where to write it (%p); replaced atomically")
      ->required();
  get->add_option("--lock-timeout", get_args->lock_timeout,
                  "seconds to wait while another process holds the repository (default 60)");
  get->callback([args = get_args, ctx] {
    WalFileName parsed;
    Status s = ParseWalFileName(std::string_view(args->name), &parsed);
    if (!s.ok()) return ctx->Fail(s);
    Repository* repo = OpenRepoWaiting(ctx, args->repo, args->lock_timeout);
    if (!repo) return;
    WalArchive archive(repo);
    Result<WalFileInfo> info = archive.Get(args->name);
    if (!info.ok()) {
      if (info.status().IsNotFound()) {
        // restore_command probes for files that do not exist all the time: one plain line.
        fprintf(ctx->io->err, "pgbackfs: '%s' not found in the archive\n", args->name.c_str());
        ctx->exit_code = 1;
        return;
      }
      return ctx->Fail(info.status());
    }
    s = FetchFile(&archive, *info, ctx->io->Abs(args->dest));
    if (!s.ok()) return ctx->Fail(s);
  });
}

}  // namespace pgbackfs
