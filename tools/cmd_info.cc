// pgbackfs info REPO [--json]: sizes, dedup ratio, snapshots.
#include <filesystem>
#include <map>

#include "repo/wal_archive.h"
#include "repo/wal_index.h"
#include "repo/wal_parser.h"
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
// What the WAL archive holds on one timeline.
struct WalTimeline {
  uint32_t tli = 0;
  uint64_t segments = 0, bytes = 0;
  std::string first, last;
  uint64_t last_segno = 0;
  std::vector<std::string> gaps;  // "first missing .. last missing"
  uint64_t other_files = 0;       // .partial, .backup
};

Status SummarizeWal(Repository* repo, std::map<uint32_t, WalTimeline>* timelines,
                    uint64_t* history_files, uint64_t* segment_size) {
  WalArchive wal(repo);
  ASSIGN_OR_RETURN(*segment_size, wal.SegmentSize());
  const uint64_t per_log = *segment_size ? (uint64_t{1} << 32) / *segment_size : 0;
  return wal.List([&](const WalFileInfo& f) {
    WalFileName name;
    RETURN_IF_ERROR(ParseWalFileName(f.name, &name));
    if (f.kind == WalFileKind::kHistory) {
      (*history_files)++;
      return Status::OK();
    }
    WalTimeline& t = (*timelines)[name.tli];
    t.tli = name.tli;
    t.bytes += f.data.size;
    if (f.kind != WalFileKind::kSegment) {
      t.other_files++;
      return Status::OK();
    }
    uint64_t segno = uint64_t{name.log} * per_log + name.seg;
    if (t.segments > 0 && segno > t.last_segno + 1) {
      t.gaps.push_back("after " + t.last);
    }
    if (t.segments == 0) t.first = f.name;
    t.last = f.name;
    t.last_segno = segno;
    t.segments++;
    return Status::OK();
  });
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
    uint64_t chunks = repo->chunks()->ApproximateBytes();
    double ratio = disk ? static_cast<double>(logical) / static_cast<double>(disk) : 0;
    const RepoConfig& c = repo->config();
    std::map<uint32_t, WalTimeline> timelines;
    uint64_t history_files = 0, segment_size = 0;
    Status ws = SummarizeWal(repo, &timelines, &history_files, &segment_size);
    if (!ws.ok()) return ctx->Fail(ws);
    std::vector<SnapshotInfo> backups;
    for (const auto& s : *snaps) {
      if (s.kind == "backup" && !s.end_lsn.empty()) backups.push_back(s);
    }
    WalIndex index(repo);
    auto windows = index.RecoverableWindows(backups);
    if (!windows.ok()) return ctx->Fail(windows.status());
    auto indexed = index.Timelines();
    if (!indexed.ok()) return ctx->Fail(indexed.status());
    auto ts = [](int64_t t) { return t ? FormatTimestampTz(t) : std::string(); };
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
                          {"snapshots", nlohmann::json::array()},
                          {"wal",
                           {{"segment_size", segment_size},
                            {"history_files", history_files},
                            {"timelines", nlohmann::json::array()}}}};
      for (const auto& s : *snaps) j["snapshots"].push_back(s.ToJson());
      j["recoverable_windows"] = nlohmann::json::array();
      for (const RecoveryWindow& w : *windows) {
        j["recoverable_windows"].push_back({{"timeline", w.timeline},
                                            {"snapshot", w.snapshot},
                                            {"consistent", w.consistent},
                                            {"start_lsn", FormatLsn(w.start_lsn)},
                                            {"start_time", ts(w.start_time)},
                                            {"end_lsn", FormatLsn(w.end_lsn)},
                                            {"end_time", ts(w.end_time)},
                                            {"gap", w.gap}});
      }
      j["wal"]["unparseable"] = nlohmann::json::array();
      for (const TimelineSummary& t : *indexed) {
        for (const auto& f : t.failed) j["wal"]["unparseable"].push_back(f);
      }
      for (const auto& [tli, t] : timelines) {
        j["wal"]["timelines"].push_back({{"timeline", tli},
                                         {"segments", t.segments},
                                         {"bytes", t.bytes},
                                         {"first", t.first},
                                         {"last", t.last},
                                         {"gaps", t.gaps},
                                         {"other_files", t.other_files}});
      }
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
    fprintf(o, "WAL archive:       %zu timelines, %llu history files, segment size %s\n",
            timelines.size(), static_cast<unsigned long long>(history_files),
            segment_size ? FormatBytes(segment_size).c_str() : "(not fixed yet)");
    for (const auto& [tli, t] : timelines) {
      fprintf(o, "  timeline %u: %llu segments %s .. %s (%s)%s\n", tli,
              static_cast<unsigned long long>(t.segments), t.first.c_str(), t.last.c_str(),
              FormatBytes(t.bytes).c_str(),
              t.gaps.empty() ? "" : (", " + std::to_string(t.gaps.size()) + " gaps").c_str());
      for (const auto& g : t.gaps) fprintf(o, "    gap %s\n", g.c_str());
    }
    for (const TimelineSummary& t : *indexed) {
      for (const auto& f : t.failed) fprintf(o, "    unparseable WAL: %s\n", f.c_str());
    }
    fprintf(o, "recoverable windows (any time or LSN inside can be a clone's target):\n");
    if (windows->empty()) fprintf(o, "  none yet\n");
    for (const RecoveryWindow& w : *windows) {
      fprintf(o, "  timeline %u: %s .. %s  (%s .. %s) from snapshot %s%s%s\n", w.timeline,
              FormatLsn(w.start_lsn).c_str(), FormatLsn(w.end_lsn).c_str(),
              ts(w.start_time).c_str(), ts(w.end_time).c_str(), w.snapshot.c_str(),
              w.consistent ? "" : " [the snapshot's own WAL is missing]",
              w.gap.empty() ? "" : ("; then " + w.gap).c_str());
    }
    if (!snaps->empty()) fprintf(o, "snapshot list:\n");
    for (const auto& s : *snaps) {
      fprintf(o, "  %s  %-12s tli %u  %s..%s  %s, added %s  %s\n", s.id.c_str(), s.kind.c_str(),
              s.timeline, s.start_lsn.c_str(), s.end_lsn.c_str(),
              FormatBytes(s.logical_size).c_str(), FormatBytes(s.bytes_added).c_str(),
              s.label.c_str());
    }
  });
}

}  // namespace pgbackfs
