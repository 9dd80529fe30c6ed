// pgbackfs: the command line entry point.
#include <unistd.h>

#include <climits>
#include <memory>

#include "repo/file_util.h"
#include "tools/cli.h"

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
    if (!repo.ok()) return repo.status();
    repo_ = std::move(repo).value();
    return repo_.get();
  }

 private:
  std::unique_ptr<pgbackfs::Repository> repo_;
};

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv, argv + argc);
  pgbackfs::CommandIo io;
  char cwd[PATH_MAX];
  if (getcwd(cwd, sizeof(cwd))) io.cwd = cwd;
  io.err_is_tty = isatty(STDERR_FILENO);
  LocalRepoProvider repos;
  return pgbackfs::RunCli(args, &io, &repos);
}
