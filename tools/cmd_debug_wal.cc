// Hidden test hooks for the WAL parser and index (not part of the command line contract):
//   pgbackfs debug wal-parse FILE... [--tolerant] [--stats]
//   pgbackfs debug wal-index REPO FILE... [--tolerant]
//   pgbackfs debug wal-find REPO (--xid X | --restore-point NAME | --time T [--timeline N]
//                                 | --segments | --windows)
// wal-parse prints one line per event (WalEvent::ToString) and one per file; the integration
// test compares them with pg_waldump's output.
#include <chrono>
#include <cinttypes>
#include <cstdio>

#include "repo/wal_index.h"
#include "repo/wal_parser.h"
#include "tools/cli.h"

namespace pgbackfs {
namespace {

std::string BaseName(const std::string& path) {
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

// Streams a local file in 1 MiB pieces.
ByteSource FileSource(const std::string& path) {
  return [path](const ByteSink& sink) {
    FILE* f = fopen(path.c_str(), "rb");
    if (!f) return Status::FromErrno(errno, "open '" + path + "'");
    std::string buf(1 << 20, '\0');
    Status s;
    while (s.ok()) {
      size_t n = fread(buf.data(), 1, buf.size(), f);
      if (n == 0) {
        if (ferror(f)) s = Status::IOError("read '" + path + "' failed");
        break;
      }
      s = sink(std::string_view(buf.data(), n));
    }
    fclose(f);
    return s;
  };
}

std::string SummaryLine(const std::string& name, const WalParseSummary& m) {
  char buf[512];
  snprintf(buf, sizeof(buf),
           "file %s: ok records %" PRIu64
           " first %s end %s end-reason %s continues %d "
           "unverified-head %" PRIu64,
           name.c_str(), m.records, FormatLsn(m.first_lsn).c_str(), FormatLsn(m.end_lsn).c_str(),
           WalEndName(m.end), m.continues ? 1 : 0, m.unverified_head);
  std::string s = buf;
  if (!m.end_detail.empty()) s += " (" + m.end_detail + ")";
  return s;
}

std::string SegmentLine(const WalSegmentRecord& r) {
  char buf[512];
  snprintf(buf, sizeof(buf),
           "segment %s: %s end-reason %s lsn %s..%s records %" PRIu64 " commits %u aborts %u",
           r.FileName().c_str(), r.ok ? "ok" : "FAILED", WalEndName(r.end),
           FormatLsn(r.start_lsn).c_str(), FormatLsn(r.end_lsn).c_str(), r.records, r.commits,
           r.aborts);
  std::string s = buf;
  if (r.commits)
    s += " commit-times " + FormatTimestampTz(r.first_commit_time) + " .. " +
         FormatTimestampTz(r.last_commit_time);
  if (r.unverified_head) s += " unverified-head " + std::to_string(r.unverified_head);
  if (!r.error.empty()) s += " (" + r.error + ")";
  return s;
}

void ParseFiles(CliContext* ctx, const std::vector<std::string>& files, bool tolerant, bool stats) {
  std::optional<WalContinuation> carry;
  uint64_t total_bytes = 0;
  double total_ms = 0;
  for (const std::string& path : files) {
    std::string name = BaseName(path);
    WalParserOptions options;
    options.tolerant = tolerant || name.size() > 24;  // .partial files may end anywhere
    options.continuation = [&carry](uint64_t lsn) -> Result<std::optional<WalContinuation>> {
      if (carry && carry->resume_lsn == lsn) return carry;
      return std::optional<WalContinuation>();
    };
    WalParser parser(name, options, [ctx](const WalEvent& e) {
      fprintf(ctx->io->out, "%s\n", e.ToString().c_str());
      return Status::OK();
    });
    Status parse_status;
    Status s = FileSource(path)([&](std::string_view piece) {
      auto start = std::chrono::steady_clock::now();
      parse_status = parser.Feed(piece);
      total_ms +=
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
              .count();
      return parse_status;
    });
    if (s.ok()) s = parser.Finish();
    total_bytes += parser.summary().bytes;
    carry.reset();
    if (!s.ok()) {
      fprintf(ctx->io->out, "file %s: error: %s\n", name.c_str(), s.message().c_str());
      ctx->Fail(s);
      continue;
    }
    fprintf(ctx->io->out, "%s\n", SummaryLine(name, parser.summary()).c_str());
    carry = parser.continuation();
  }
  if (stats && total_ms > 0)
    fprintf(ctx->io->err, "parsed %" PRIu64 " bytes in %.1f ms (%.0f MB/s)\n", total_bytes,
            total_ms, static_cast<double>(total_bytes) / 1e6 / (total_ms / 1000));
}

}  // namespace

void AddDebugWalCommands(CLI::App* debug, CliContext* ctx) {
  struct Args {
    std::string repo;
    std::vector<std::string> files;
    bool tolerant = false, stats = false, segments = false, windows = false;
    int64_t xid = -1;
    std::string restore_point, time;
    uint32_t timeline = 1;
  };
  auto args = std::make_shared<Args>();

  CLI::App* parse = debug->add_subcommand("wal-parse", "parse WAL segment files and print events");
  parse->add_option("FILE", args->files)->required();
  parse->add_flag("--tolerant", args->tolerant, "files may end anywhere (pg_wal copies)");
  parse->add_flag("--stats", args->stats, "print the parse speed to stderr");
  parse->callback([args, ctx] { ParseFiles(ctx, args->files, args->tolerant, args->stats); });

  CLI::App* index = debug->add_subcommand("wal-index", "index WAL segment and .history files");
  index->add_option("REPO", args->repo)->required();
  index->add_option("FILE", args->files)->required();
  index->add_flag("--tolerant", args->tolerant, "files may end anywhere (pg_wal copies)");
  index->callback([args, ctx] {
    Repository* repo = ctx->OpenRepo(args->repo);
    if (!repo) return;
    WalIndex wal_index(repo);
    for (const std::string& path : args->files) {
      std::string name = BaseName(path);
      if (name.size() == 16 && name.substr(8) == ".history") {
        std::string content;
        Status s = FileSource(path)([&](std::string_view piece) {
          content.append(piece);
          return Status::OK();
        });
        if (s.ok()) s = wal_index.IndexHistory(name, content);
        if (!s.ok()) return ctx->Fail(s);
        fprintf(ctx->io->out, "history %s: ok\n", name.c_str());
        continue;
      }
      WalIndexOptions options;
      options.tolerant = args->tolerant;
      auto r = wal_index.IndexSegment(name, FileSource(path), options);
      if (!r.ok()) return ctx->Fail(r.status());
      fprintf(ctx->io->out, "%s\n", SegmentLine(*r).c_str());
      if (!r->ok) ctx->exit_code = 1;
    }
  });

  CLI::App* find = debug->add_subcommand("wal-find", "query the WAL index");
  find->add_option("REPO", args->repo)->required();
  auto* group = find->add_option_group("query");
  group->add_option("--xid", args->xid, "commit or abort records of a transaction");
  group->add_option("--restore-point", args->restore_point, "restore points by name");
  group->add_option("--time", args->time, "the commits around a time (UTC)");
  group->add_flag("--segments", args->segments, "indexed segments and timelines");
  group->add_flag("--windows", args->windows, "recoverable windows of the snapshots");
  group->require_option(1);
  find->add_option("--timeline", args->timeline, "timeline for --time (default 1)");
  find->callback([args, ctx] {
    Repository* repo = ctx->OpenRepo(args->repo);
    if (!repo) return;
    WalIndex wal_index(repo);
    FILE* o = ctx->io->out;
    if (args->xid >= 0) {
      auto events = wal_index.FindXid(static_cast<uint32_t>(args->xid));
      if (!events.ok()) return ctx->Fail(events.status());
      for (const auto& e : *events) fprintf(o, "%s\n", e.ToString().c_str());
      if (events->empty()) return ctx->Fail(Status::NotFound("xid not found"));
    } else if (!args->restore_point.empty()) {
      auto all = wal_index.FindRestorePoints(args->restore_point);
      if (!all.ok()) return ctx->Fail(all.status());
      for (const auto& e : *all) fprintf(o, "%s\n", e.ToString().c_str());
      auto latest = wal_index.FindRestorePoint(args->restore_point);
      if (!latest.ok()) return ctx->Fail(latest.status());
      fprintf(o, "latest: %s\n", latest->ToString().c_str());
    } else if (!args->time.empty()) {
      auto t = ParseTimestampTz(args->time);
      if (!t.ok()) return ctx->Fail(t.status());
      auto m = wal_index.FindTime(args->timeline, *t);
      if (!m.ok()) return ctx->Fail(m.status());
      fprintf(o, "before: %s\n", m->before ? m->before->ToString().c_str() : "-");
      fprintf(o, "at_or_after: %s\n", m->at_or_after ? m->at_or_after->ToString().c_str() : "-");
    } else if (args->segments) {
      Status s = wal_index.ForEachSegment([o](const WalSegmentRecord& r) {
        fprintf(o, "%s\n", SegmentLine(r).c_str());
        return Status::OK();
      });
      if (!s.ok()) return ctx->Fail(s);
      auto tls = wal_index.Timelines();
      if (!tls.ok()) return ctx->Fail(tls.status());
      for (const auto& t : *tls) {
        fprintf(o,
                "timeline %u: segments %" PRIu64 " (%s .. %s) commits %" PRIu64 " missing %" PRIu64
                " failed %zu\n",
                t.tli, t.segments, t.first_segment.c_str(), t.last_segment.c_str(), t.commits,
                t.missing_count, t.failed.size());
        for (const auto& m : t.missing) fprintf(o, "  missing %s\n", m.c_str());
      }
    } else if (args->windows) {
      auto snaps = repo->ListSnapshots();
      if (!snaps.ok()) return ctx->Fail(snaps.status());
      auto ws = wal_index.RecoverableWindows(*snaps);
      if (!ws.ok()) return ctx->Fail(ws.status());
      for (const auto& w : *ws)
        fprintf(o, "timeline %u from %s: %s %s (%s) .. %s (%s)%s%s\n", w.timeline,
                w.snapshot.c_str(), w.consistent ? "consistent" : "NOT CONSISTENT",
                FormatLsn(w.start_lsn).c_str(), FormatTimestampTz(w.start_time).c_str(),
                FormatLsn(w.end_lsn).c_str(),
                w.end_time ? FormatTimestampTz(w.end_time).c_str() : "-",
                w.gap.empty() ? "" : " gap: ", w.gap.c_str());
    }
  });
}

}  // namespace pgbackfs
