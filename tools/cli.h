// The command line: one CLI11 app, one file per subcommand (cmd_<name>.cc).
//
// Every command runs through RunCli with a CommandIo and a RepoProvider, so the same code serves
// two callers: the pgbackfs process itself, which opens the repository, and the mount daemon,
// which owns the repository and runs commands forwarded to it over its control socket.
#pragma once

#include <CLI/CLI.hpp>
#include <atomic>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "repo/repository.h"

namespace pgbackfs {

// Where a command writes, and what relative paths are relative to.
struct CommandIo {
  FILE* out = stdout;
  FILE* err = stderr;
  std::string cwd;          // the caller's working directory
  bool err_is_tty = false;  // progress goes to `err` when it is a terminal
  // Set when whoever asked for the command went away (a command forwarded to the mount daemon
  // whose client died or closed its output): long commands should stop at the next safe point.
  // Null when nobody can cancel.
  const std::atomic<bool>* cancelled = nullptr;
  bool Cancelled() const { return cancelled && cancelled->load(); }

  std::string Abs(const std::string& path) const;  // `path` resolved against cwd
};

// Raised (as an exception, before any side effect) when a command must run in the daemon that
// owns the repository. Only RunCli's caller in main.cc catches it.
struct ForwardToDaemon {
  std::string socket_path;
  // Appended to the forwarded command line: what the daemon needs from this process that is not
  // in its arguments (backup: the libpq environment, PGPASSWORD and the like).
  std::vector<std::string> extra_args;
};

// Hands commands an open repository. The CLI opens (and locks) it; the daemon hands out its own.
class RepoProvider {
 public:
  virtual ~RepoProvider() = default;
  // `repo_path` is absolute. May throw ForwardToDaemon.
  virtual Result<Repository*> Get(const std::string& repo_path) = 0;
  // True in the mount daemon: commands that must not run there (mount) check it.
  virtual bool in_daemon() const { return false; }
  // In the mount daemon: writes back what the kernel buffers for the mount (its writeback cache
  // of clone files), so that a clone read directly (seal) is complete. Elsewhere nothing.
  virtual Status SyncMount() { return Status::OK(); }
  // In the mount daemon: where the repository is mounted (absolute). Elsewhere "".
  virtual std::string mount_point() const { return ""; }
  // In the mount daemon: whether users other than the daemon's may use the mount (allow_other).
  virtual bool mount_allows_other() const { return false; }
};

// What command callbacks share.
struct CliContext {
  CommandIo* io;
  RepoProvider* repos;
  int exit_code = 0;

  // Prints "pgbackfs: error: <message>" and sets exit code 1.
  void Fail(const Status& status);
  // Opens the repository at `path` (relative paths resolved); prints the error and returns null.
  Repository* OpenRepo(const std::string& path);
};

// Parses `args` (args[0] is the program name) and runs the command. Returns the exit code:
// 0 ok, 1 failure, 2 bad usage.
int RunCli(const std::vector<std::string>& args, CommandIo* io, RepoProvider* repos);

// Each cmd_<name>.cc defines one of these.
void AddInitCommand(CLI::App* app, CliContext* ctx);
void AddBackupCommand(CLI::App* app, CliContext* ctx);
void AddListCommand(CLI::App* app, CliContext* ctx);
void AddInfoCommand(CLI::App* app, CliContext* ctx);
void AddRestoreCommand(CLI::App* app, CliContext* ctx);
void AddVerifyCommand(CLI::App* app, CliContext* ctx);
void AddMountCommands(CLI::App* app, CliContext* ctx);       // mount, umount
void AddArchiveCommands(CLI::App* app, CliContext* ctx);     // archive-push, archive-get
void AddCloneCommands(CLI::App* app, CliContext* ctx);       // clone create, list, drop, seal
void AddRetentionCommands(CLI::App* app, CliContext* ctx);   // expire, gc
void AddDebugCommands(CLI::App* app, CliContext* ctx);       // hidden test hooks
void AddDebugWalCommands(CLI::App* debug, CliContext* ctx);  // debug wal-parse, wal-index, wal-find

// Formatting helpers shared by commands.
std::string FormatBytes(uint64_t bytes);    // "1.5 GiB"
std::string FormatTime(int64_t unix_time);  // "2026-11-22 01:38:00 UTC"

}  // namespace pgbackfs
