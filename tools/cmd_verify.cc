// pgbackfs verify REPO [SNAPSHOT]
#include "repo/verify.h"
#include "tools/cli.h"
#include "tools/progress.h"

namespace pgbackfs {

void AddVerifyCommand(CLI::App* app, CliContext* ctx) {
  struct Args {
    std::string repo, snapshot;
    bool json = false;
  };
  auto args = std::make_shared<Args>();
  CLI::App* cmd = app->add_subcommand(
      "verify", "check that every stored chunk is present and matches its hash");
  cmd->add_option("REPO", args->repo, "repository directory")->required();
  cmd->add_option("SNAPSHOT", args->snapshot, "only this snapshot (default: all)");
  cmd->add_flag("--json", args->json, "machine-readable output");
  cmd->callback([args, ctx] {
    Repository* repo = ctx->OpenRepo(args->repo);
    if (!repo) return;
    VerifyReport report;
    Progress progress(ctx->io->err, ctx->io->err_is_tty, "verify");
    Status s = VerifyRepository(repo, args->snapshot, &report, [&](const std::string&, uint64_t) {
      progress.Update(report.bytes_checked, 0);
    });
    progress.Done();
    if (!s.ok()) return ctx->Fail(s);
    if (args->json) {
      nlohmann::json j = {{"ok", report.ok()},
                          {"snapshots", report.snapshots},
                          {"files", report.files},
                          {"stored_chunks_checked", report.stored_chunks_checked},
                          {"orphan_chunks", report.orphan_chunks},
                          {"references_checked", report.references_checked},
                          {"bytes_checked", report.bytes_checked},
                          {"wal_files", report.wal_files},
                          {"problems", nlohmann::json::array()}};
      for (const auto& p : report.problems) {
        j["problems"].push_back({{"snapshot", p.snapshot},
                                 {"path", p.path},
                                 {"offset", p.offset},
                                 {"message", p.message}});
      }
      fprintf(ctx->io->out, "%s\n", j.dump(2).c_str());
    } else {
      for (const auto& p : report.problems) {
        fprintf(ctx->io->out, "DAMAGED snapshot '%s' file '%s' offset %llu: %s\n",
                p.snapshot.c_str(), p.path.empty() ? "/" : p.path.c_str(),
                static_cast<unsigned long long>(p.offset), p.message.c_str());
      }
      fprintf(ctx->io->out,
              "verify: %llu snapshots, %llu files, %llu WAL files, %s checked, %llu stored chunks "
              "hashed, %llu references followed: %s\n",
              static_cast<unsigned long long>(report.snapshots),
              static_cast<unsigned long long>(report.files),
              static_cast<unsigned long long>(report.wal_files),
              FormatBytes(report.bytes_checked).c_str(),
              static_cast<unsigned long long>(report.stored_chunks_checked),
              static_cast<unsigned long long>(report.references_checked),
              report.ok() ? "ok" : (std::to_string(report.problems.size()) + " problems").c_str());
    }
    if (report.orphan_chunks && !args->json) {
      fprintf(ctx->io->out,
              "note: %llu stored chunk entries belong to no chunk (a chunk two writers stored at "
              "once); harmless, and gc deletes them\n",
              static_cast<unsigned long long>(report.orphan_chunks));
    }
    if (!report.ok()) ctx->exit_code = 1;
  });
}

}  // namespace pgbackfs
