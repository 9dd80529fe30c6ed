// pgbackfs restore REPO SNAPSHOT DEST [--jobs N] [--delta]
#include "repo/restore.h"
#include "tools/cli.h"
#include "tools/progress.h"

namespace pgbackfs {

void AddRestoreCommand(CLI::App* app, CliContext* ctx) {
  struct Args {
    std::string repo, snapshot, dest;
    int jobs = 2;
    bool delta = false;
    bool progress = false;
    bool no_sync = false;
  };
  auto args = std::make_shared<Args>();
  CLI::App* cmd = app->add_subcommand("restore", "write a snapshot out as a data directory");
  cmd->add_option("REPO", args->repo, "repository directory")->required();
  cmd->add_option("SNAPSHOT", args->snapshot, "snapshot id, or 'latest'")->required();
  cmd->add_option("DEST", args->dest, "destination directory (must be empty unless --delta)")
      ->required();
  cmd->add_option("-j,--jobs", args->jobs, "parallel workers (default 2)")
      ->check(CLI::Range(1, 64));
  cmd->add_flag("--delta", args->delta,
                "update an existing directory, rewriting only the chunks that differ");
  cmd->add_flag("--progress", args->progress, "show progress");
  cmd->add_flag("--no-sync", args->no_sync, "do not fsync the restored files");
  cmd->callback([args, ctx] {
    Repository* repo = ctx->OpenRepo(args->repo);
    if (!repo) return;
    auto snap = repo->GetSnapshot(args->snapshot);
    if (!snap.ok()) return ctx->Fail(snap.status());
    Progress progress(ctx->io->err, args->progress || ctx->io->err_is_tty, "restore");
    RestoreOptions options;
    options.jobs = args->jobs;
    options.delta = args->delta;
    options.sync = !args->no_sync;
    options.progress = [&](uint64_t done, uint64_t total) { progress.Update(done, total); };
    RestoreStats stats;
    std::string dest = ctx->io->Abs(args->dest);
    Status s = RestoreSnapshot(repo, *snap, dest, options, &stats);
    progress.Done();
    if (!s.ok()) {
      ctx->Fail(s.WithContext("restore of snapshot '" + snap->id + "' failed"));
      fprintf(ctx->io->err, "pgbackfs: '%s' is incomplete: do not start a server on it\n",
              dest.c_str());
      return;
    }
    double secs = progress.elapsed_seconds();
    fprintf(ctx->io->out,
            "restored snapshot %s into '%s': %llu files, %s, %s written%s in %.1f s (%s)\n",
            snap->id.c_str(), dest.c_str(), static_cast<unsigned long long>(stats.files),
            FormatBytes(stats.logical_bytes).c_str(), FormatBytes(stats.bytes_written).c_str(),
            args->delta ? (", " + std::to_string(stats.files_removed) + " removed").c_str() : "",
            secs, FormatRate(stats.logical_bytes, secs).c_str());
  });
}

}  // namespace pgbackfs
