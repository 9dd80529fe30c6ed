#include "tools/cli.h"

#include <cinttypes>
#include <ctime>

namespace pgbackfs {

std::string CommandIo::Abs(const std::string& path) const {
  if (path.empty() || path[0] == '/' || cwd.empty()) return path;
  return cwd + "/" + path;
}

void CliContext::Fail(const Status& status) {
  fprintf(io->err, "pgbackfs: error: %s\n", status.message().c_str());
  exit_code = 1;
}

Repository* CliContext::OpenRepo(const std::string& path) {
  Result<Repository*> repo = repos->Get(io->Abs(path));
  if (!repo.ok()) {
    Fail(repo.status());
    return nullptr;
  }
  return *repo;
}

std::string FormatBytes(uint64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  if (u == 0) {
    snprintf(buf, sizeof(buf), "%" PRIu64 " B", bytes);
  } else {
    snprintf(buf, sizeof(buf), "%.1f %s", v, units[u]);
  }
  return buf;
}

std::string FormatTime(int64_t unix_time) {
  if (unix_time == 0) return "-";
  time_t t = static_cast<time_t>(unix_time);
  struct tm tm;
  gmtime_r(&t, &tm);
  char buf[40];
  strftime(buf, sizeof(buf), "%Y-%m-%d %H:%M:%S UTC", &tm);
  return buf;
}

int RunCli(const std::vector<std::string>& args, CommandIo* io, RepoProvider* repos) {
  CliContext ctx{io, repos};
  CLI::App app{"pgbackfs: a mountable, deduplicating backup repository for PostgreSQL"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "pgbackfs 0.1.0");
  AddInitCommand(&app, &ctx);
  AddBackupCommand(&app, &ctx);
  AddListCommand(&app, &ctx);
  AddInfoCommand(&app, &ctx);
  AddRestoreCommand(&app, &ctx);
  AddVerifyCommand(&app, &ctx);
  AddMountCommands(&app, &ctx);
  AddArchiveCommands(&app, &ctx);
  AddCloneCommands(&app, &ctx);
  AddRetentionCommands(&app, &ctx);
  AddDebugCommands(&app, &ctx);
  AddDebugWalCommands(app.get_subcommand("debug"), &ctx);

  std::vector<std::string> reversed(args.rbegin(), args.rend() - 1);
  try {
    app.parse(reversed);
  } catch (const CLI::CallForHelp& e) {
    fprintf(io->out, "%s", app.help().c_str());
    return 0;
  } catch (const CLI::CallForAllHelp& e) {
    fprintf(io->out, "%s", app.help("", CLI::AppFormatMode::All).c_str());
    return 0;
  } catch (const CLI::CallForVersion& e) {
    fprintf(io->out, "%s\n", e.what());
    return 0;
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) {
      fprintf(io->out, "%s\n", e.what());
      return 0;
    }
    fprintf(io->err, "pgbackfs: usage error: %s\nRun with --help for usage.\n", e.what());
    return 2;
  }
  return ctx.exit_code;
}

}  // namespace pgbackfs
