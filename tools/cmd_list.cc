// pgbackfs list REPO [--json]: the snapshots, oldest first.
#include "tools/cli.h"

namespace pgbackfs {

void AddListCommand(CLI::App* app, CliContext* ctx) {
  struct Args {
    std::string repo;
    bool json = false;
  };
  auto args = std::make_shared<Args>();
  CLI::App* cmd = app->add_subcommand("list", "list snapshots");
  cmd->add_option("REPO", args->repo, "repository directory")->required();
  cmd->add_flag("--json", args->json, "machine-readable output (docs/OPERATIONS.md)");
  cmd->callback([args, ctx] {
    Repository* repo = ctx->OpenRepo(args->repo);
    if (!repo) return;
    auto snaps = repo->ListSnapshots();
    if (!snaps.ok()) return ctx->Fail(snaps.status());
    if (args->json) {
      nlohmann::json j = {{"snapshots", nlohmann::json::array()}};
      for (const auto& s : *snaps) j["snapshots"].push_back(s.ToJson());
      fprintf(ctx->io->out, "%s\n", j.dump(2).c_str());
      return;
    }
    if (snaps->empty()) {
      fprintf(ctx->io->out, "no snapshots\n");
      return;
    }
    fprintf(ctx->io->out, "%-20s %-12s %-22s %-12s %-12s %3s %10s %10s  %s\n", "ID", "KIND",
            "STOPPED", "START LSN", "END LSN", "TLI", "SIZE", "ADDED", "LABEL");
    for (const auto& s : *snaps) {
      fprintf(ctx->io->out, "%-20s %-12s %-22s %-12s %-12s %3u %10s %10s  %s\n", s.id.c_str(),
              s.kind.c_str(), FormatTime(s.stop_time).c_str(), s.start_lsn.c_str(),
              s.end_lsn.c_str(), s.timeline, FormatBytes(s.logical_size).c_str(),
              FormatBytes(s.bytes_added).c_str(), s.label.c_str());
    }
  });
}

}  // namespace pgbackfs
