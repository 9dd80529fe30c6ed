// pgbackfs: the command line entry point.
#include <unistd.h>

#include <climits>
#include <cstring>
#include <memory>

#include "repo/file_util.h"
#include "tools/cli.h"
#include "tools/control.h"
#include "tools/pg_client.h"

namespace {

// Opens each repository once per process, with the lock held until exit.
class LocalRepoProvider : public pgbackfs::RepoProvider {
 public:
  pgbackfs::Result<pgbackfs::Repository*> Get(const std::string& path) override {
    if (repo_) {
      if (repo_->path() == path) return repo_.get();
      return pgbackfs::Status::InvalidArgument("one repository per command");
    }
    pgbackfs::OpenOptions options;
    options.lock_owner = "pgbackfs command";
    auto repo = pgbackfs::Repository::Open(path, options);
    if (!repo.ok()) {
      // Locked by a mount daemon that answers on its control socket: the command runs there.
      // A socket file left by a killed daemon refuses the connection, and then the lock is free
      // anyway, so only a live daemon can be reached here.
      if (repo.status().code() == pgbackfs::Status::Code::kBusy) {
        std::string socket = pgbackfs::ControlSocketPath(path);
        if (pgbackfs::ControlSocketAccepts(socket)) throw pgbackfs::ForwardToDaemon{socket, {}};
      }
      return repo.status();
    }
    repo_ = std::move(repo).value();
    return repo_.get();
  }

 private:
  std::unique_ptr<pgbackfs::Repository> repo_;
};

// Every local user can read a process's arguments (/proc/PID/cmdline, ps), so once they are
// copied, the passwords of connection strings in them (backup -d '... password=X') are
// overwritten in place. This cannot close the window between exec and here: PGPASSWORD or a
// password file (~/.pgpass, PGPASSFILE) keeps a password off the command line altogether.
void HidePasswordsInArgv(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    size_t len = strlen(argv[i]);
    std::string redacted = pgbackfs::RedactPasswords(argv[i], argv[i]);
    if (redacted == std::string_view(argv[i], len)) continue;
    redacted.resize(len, ' ');  // the same length: the argument area cannot grow
    memcpy(argv[i], redacted.data(), len);
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv, argv + argc);
  HidePasswordsInArgv(argc, argv);
  pgbackfs::CommandIo io;
  char cwd[PATH_MAX];
  if (getcwd(cwd, sizeof(cwd))) io.cwd = cwd;
  io.err_is_tty = isatty(STDERR_FILENO);
  LocalRepoProvider repos;
  try {
    return pgbackfs::RunCli(args, &io, &repos);
  } catch (const pgbackfs::ForwardToDaemon& forward) {
    fflush(stdout);
    fflush(stderr);
    args.insert(args.end(), forward.extra_args.begin(), forward.extra_args.end());
    return pgbackfs::ForwardCommand(forward.socket_path, args, io.cwd);
  }
}
