// pgbackfs expire REPO --keep-last N [--keep-daily D] [--keep-within DURATION] [--snapshot ID]
//                      [--dry-run] [--json]
// pgbackfs gc REPO [--dry-run] [--json]
#include <ctime>

#include "repo/gc.h"
#include "repo/retention.h"
#include "tools/cli.h"
#include "tools/progress.h"

namespace pgbackfs {

namespace {

std::string Join(const std::vector<std::string>& parts) {
  std::string out;
  for (const auto& p : parts) out += (out.empty() ? "" : ", ") + p;
  return out;
}

}  // namespace

void AddRetentionCommands(CLI::App* app, CliContext* ctx) {
  struct ExpireArgs {
    std::string repo, within;
    RetentionPolicy policy;
    bool dry_run = false, json = false;
  };
  auto e = std::make_shared<ExpireArgs>();
  CLI::App* expire = app->add_subcommand(
      "expire", "remove old backups and the WAL before the oldest kept one (then run gc)");
  expire->add_option("REPO", e->repo, "repository directory")->required();
  expire->add_option("--keep-last", e->policy.keep_last, "keep the N newest backups (N >= 1)")
      ->check(CLI::Range(1, 1 << 30));
  expire
      ->add_option("--keep-daily", e->policy.keep_daily,
                   "also keep the newest backup of each of the D latest days (UTC) with one")
      ->check(CLI::Range(1, 1 << 30));
  expire->add_option("--keep-within", e->within,
                     "also keep every backup younger than this (30d, 12h, 2w, ...)");
  expire->add_option("--snapshot", e->policy.remove,
                     "remove this snapshot (a backup or a sealed clone); repeatable");
  expire->add_flag("--dry-run", e->dry_run, "say what would be removed, remove nothing");
  expire->add_flag("--json", e->json, "machine-readable output");
  expire->callback([e, ctx] {
    if (e->policy.keep_last == 0 && e->policy.remove.empty()) {
      fprintf(ctx->io->err,
              "pgbackfs: usage error: give --keep-last N (the newest backup is always kept), "
              "or --snapshot ID\n");
      ctx->exit_code = 2;
      return;
    }
    RetentionPolicy policy = e->policy;
    if (!e->within.empty()) {
      Result<int64_t> secs = ParseDuration(e->within);
      if (!secs.ok()) {
        fprintf(ctx->io->err, "pgbackfs: usage error: %s\n", secs.status().message().c_str());
        ctx->exit_code = 2;
        return;
      }
      policy.keep_within_sec = *secs;
    }
    Repository* repo = ctx->OpenRepo(e->repo);
    if (!repo) return;
    Result<ExpirePlan> plan = PlanExpire(repo, policy, time(nullptr));
    if (!plan.ok()) return ctx->Fail(plan.status());
    if (!e->dry_run) {
      Status s = ApplyExpire(repo, *plan);
      if (!s.ok()) return ctx->Fail(s);
    }
    if (e->json) {
      nlohmann::json j = {{"dry_run", e->dry_run},
                          {"snapshots", nlohmann::json::array()},
                          {"wal_removed", plan->wal_files.size()},
                          {"wal_kept", plan->wal_files_kept},
                          {"wal_first_kept", plan->wal_cutoff}};
      for (const SnapshotDecision& d : plan->snapshots) {
        j["snapshots"].push_back({{"id", d.snapshot.id},
                                  {"kind", d.snapshot.kind},
                                  {"label", d.snapshot.label},
                                  {"kept", d.keep},
                                  {"reasons", d.reasons}});
      }
      fprintf(ctx->io->out, "%s\n", j.dump(2).c_str());
      return;
    }
    const char* verb = e->dry_run ? "would remove" : "removed";
    for (const SnapshotDecision& d : plan->snapshots) {
      fprintf(ctx->io->out, "%-22s %-13s %s\n", d.snapshot.id.c_str(), d.keep ? "kept" : verb,
              d.keep ? Join(d.reasons).c_str() : "");
    }
    fprintf(ctx->io->out, "expire: %s %llu of %zu snapshots and %zu WAL files (%llu kept%s%s)%s\n",
            verb, static_cast<unsigned long long>(plan->removed_snapshots()),
            plan->snapshots.size(), plan->wal_files.size(),
            static_cast<unsigned long long>(plan->wal_files_kept),
            plan->wal_cutoff.empty() ? "" : ", from segment ", plan->wal_cutoff.c_str(),
            e->dry_run ? "" : "; run `pgbackfs gc` to free their space");
  });

  struct GcArgs {
    std::string repo;
    bool dry_run = false, json = false;
  };
  auto g = std::make_shared<GcArgs>();
  CLI::App* gc = app->add_subcommand(
      "gc", "delete chunks that no snapshot, WAL file or clone references any more");
  gc->add_option("REPO", g->repo, "repository directory")->required();
  gc->add_flag("--dry-run", g->dry_run, "count what would be deleted, delete nothing");
  gc->add_flag("--json", g->json, "machine-readable output");
  gc->callback([g, ctx] {
    Repository* repo = ctx->OpenRepo(g->repo);
    if (!repo) return;
    GcOptions options;
    options.dry_run = g->dry_run;
    GcReport report;
    std::string last_phase;
    Status s = CollectGarbage(repo, options, &report, [&](const std::string& phase, uint64_t n) {
      if (phase == "waiting for writers" && ctx->io->err_is_tty) {
        fprintf(ctx->io->err, "\rgc: waiting for %llu running writer(s) (backup, WAL push, seal)",
                static_cast<unsigned long long>(n));
      } else if (phase != last_phase && ctx->io->err_is_tty) {
        fprintf(ctx->io->err, "\rgc: %-60s", phase.c_str());
      }
      last_phase = phase;
    });
    if (ctx->io->err_is_tty) fprintf(ctx->io->err, "\r%70s\r", "");
    if (!s.ok()) return ctx->Fail(s);
    if (g->json) {
      nlohmann::json j = {{"dry_run", g->dry_run},
                          {"snapshots", report.snapshots},
                          {"wal_files", report.wal_files},
                          {"clones", report.clones},
                          {"referenced_chunks", report.referenced_chunks},
                          {"stored_chunks", report.stored_chunks},
                          {"deleted_chunks", report.deleted_chunks},
                          {"deleted_bytes", report.deleted_bytes},
                          {"kept_in_use_by_writers", report.kept_protected},
                          {"deleted_orphans", report.deleted_orphans},
                          {"chunk_store_bytes_before", report.size_before},
                          {"chunk_store_bytes_after", report.size_after}};
      fprintf(ctx->io->out, "%s\n", j.dump(2).c_str());
      return;
    }
    fprintf(ctx->io->out,
            "gc: %llu snapshots, %llu WAL files and %llu clones reference %llu chunks; %s %llu "
            "of %llu stored chunks (%s)",
            static_cast<unsigned long long>(report.snapshots),
            static_cast<unsigned long long>(report.wal_files),
            static_cast<unsigned long long>(report.clones),
            static_cast<unsigned long long>(report.referenced_chunks),
            g->dry_run ? "would delete" : "deleted",
            static_cast<unsigned long long>(report.deleted_chunks),
            static_cast<unsigned long long>(report.stored_chunks),
            FormatBytes(report.deleted_bytes).c_str());
    if (!g->dry_run) {
      fprintf(ctx->io->out, "; chunk store %s -> %s", FormatBytes(report.size_before).c_str(),
              FormatBytes(report.size_after).c_str());
    }
    if (report.kept_protected) {
      fprintf(ctx->io->out, "; %llu kept because a running writer reused them",
              static_cast<unsigned long long>(report.kept_protected));
    }
    if (report.deleted_orphans) {
      fprintf(ctx->io->out, "; %s %llu orphaned chunk entries",
              g->dry_run ? "would delete" : "deleted",
              static_cast<unsigned long long>(report.deleted_orphans));
    }
    fprintf(ctx->io->out, "\n");
  });
}

}  // namespace pgbackfs
