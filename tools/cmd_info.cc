// pgbackfs info REPO [--json]: sizes, dedup ratio, snapshots.
#include <filesystem>

#include "tools/cli.h"

namespace pgbackfs {

namespace {
uint64_t DiskUsage(const std::string& dir) {
  uint64_t total = 0;
  std::error_code ec;
  for (auto it = std::filesystem::recursive_directory_iterator(dir, ec);
       !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
    if (it->is_regular_file(ec)) total += it->file_size(ec);
  }
  return total;
}
}  // namespace

void AddInfoCommand(CLI::App* app, CliContext* ctx) {
  struct Args {
    std::string repo;
    bool json = false;
  };
  auto args = std::make_shared<Args>();
  CLI::App* cmd = app->add_subcommand("info", "show repository sizes, dedup ratio and contents");
  cmd->add_option("REPO", args->repo, "repository directory")->required();
  cmd->add_flag("--json", args->json, "machine-readable output (docs/OPERATIONS.md)");
  cmd->callback([args, ctx] {
    Repository* repo = ctx->OpenRepo(args->repo);
    if (!repo) return;
    auto snaps = repo->ListSnapshots();
    if (!snaps.ok()) return ctx->Fail(snaps.status());
    auto sysid = repo->SystemIdentifier();
    if (!sysid.ok()) return ctx->Fail(sysid.status());
    uint64_t logical = 0;
    for (const auto& s : *snaps) logical += s.logical_size;
    uint64_t disk = DiskUsage(repo->path() + "/db");
    uint64_t chunks = repo->kv()->ApproximateSize(Cf::kChunks);
    double ratio = disk ? static_cast<double>(logical) / static_cast<double>(disk) : 0;
    const RepoConfig& c = repo->config();
    if (args->json) {
      nlohmann::json j = {{"repository", repo->path()},
                          {"format_version", c.format_version},
                          {"chunk_size", c.chunk_size},
                          {"compression", c.compression},
                          {"repository_id", c.repository_id},
                          {"system_identifier", *sysid},
                          {"snapshot_count", snaps->size()},
                          {"logical_bytes", logical},
                          {"stored_bytes", disk},
                          {"chunk_store_bytes", chunks},
                          {"dedup_ratio", ratio},
                          {"snapshots", nlohmann::json::array()}};
      for (const auto& s : *snaps) j["snapshots"].push_back(s.ToJson());
      fprintf(ctx->io->out, "%s\n", j.dump(2).c_str());
      return;
    }
    FILE* o = ctx->io->out;
    fprintf(o, "repository:        %s\n", repo->path().c_str());
    fprintf(o, "format version:    %d (chunk size %zu, compression %s)\n", c.format_version,
            c.chunk_size, c.compression.c_str());
    fprintf(o, "cluster:           %s\n", sysid->empty() ? "(none yet)" : sysid->c_str());
    fprintf(o, "snapshots:         %zu\n", snaps->size());
    fprintf(o, "logical size:      %s (sum over snapshots)\n", FormatBytes(logical).c_str());
    fprintf(o, "stored size:       %s on disk\n", FormatBytes(disk).c_str());
    fprintf(o, "dedup+compression: %.2fx\n", ratio);
    for (const auto& s : *snaps) {
      fprintf(o, "  %s  %-12s tli %u  %s..%s  %s, added %s  %s\n", s.id.c_str(), s.kind.c_str(),
              s.timeline, s.start_lsn.c_str(), s.end_lsn.c_str(),
              FormatBytes(s.logical_size).c_str(), FormatBytes(s.bytes_added).c_str(),
              s.label.c_str());
    }
  });
}

}  // namespace pgbackfs
