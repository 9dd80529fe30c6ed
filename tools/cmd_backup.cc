// pgbackfs backup REPO -d CONNSTR [--label L] [--fast-checkpoint] [--progress]
//
// Streams a PG15 BASE_BACKUP into a new snapshot: base.tar goes through a TarReader straight into
// chunk trees (no temporary files, nothing buffered per file beyond FileWriter's batch), the
// manifest becomes `backup_manifest` at the snapshot root, and the WAL the server appends under
// pg_wal/ stays in the snapshot so that a restored copy starts on its own. The snapshot record is
// written last, in one synced write: a backup that dies at any point before leaves nothing listed
// (invariant 3), only unreferenced chunks.
#include <libpq-fe.h>
#include <sys/stat.h>

#include <chrono>
#include <cinttypes>
#include <cstdlib>
#include <ctime>
#include <mutex>
#include <optional>
#include <set>

#include "repo/chunk_tree.h"
#include "repo/tar_reader.h"
#include "repo/wal_archive.h"
#include "tools/cli.h"
#include "tools/pg_client.h"
#include "tools/progress.h"

namespace pgbackfs {

namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// Repositories with a backup running in this process. The mount daemon runs forwarded commands
// in threads, and the repository lock (a flock) only keeps other processes out.
std::mutex g_running_mu;
std::set<std::string>& RunningBackups() {
  static auto* running = new std::set<std::string>;
  return *running;
}

class RunningBackupGuard {
 public:
  explicit RunningBackupGuard(std::string repo) : repo_(std::move(repo)) {
    std::lock_guard<std::mutex> lock(g_running_mu);
    acquired_ = RunningBackups().insert(repo_).second;
  }
  ~RunningBackupGuard() {
    if (!acquired_) return;
    std::lock_guard<std::mutex> lock(g_running_mu);
    RunningBackups().erase(repo_);
  }
  bool acquired() const { return acquired_; }

 private:
  std::string repo_;
  bool acquired_ = false;
};

// Drives a SnapshotBuilder from the BASE_BACKUP stream.
class BackupReceiver : public BaseBackupHandler, private TarSink {
 public:
  // Progress goes to `progress_out` when `show_progress`.
  BackupReceiver(SnapshotBuilder* builder, FILE* progress_out, bool show_progress,
                 int64_t manifest_mtime)
      : builder_(builder),
        progress_out_(progress_out),
        show_progress_(show_progress),
        manifest_mtime_(manifest_mtime),
        tar_(this) {}

  const std::string& start_lsn() const { return start_lsn_; }
  uint32_t start_timeline() const { return start_tli_; }
  uint64_t received() const { return received_; }
  void EndProgress() {
    if (progress_) {
      progress_->Done();
    } else if (show_progress_) {  // the checkpoint message
      fprintf(progress_out_, "\r%-78s\r", "");
      fflush(progress_out_);
    }
  }

  // Called once the server's COPY stream ended well: stores the manifest file.
  Status Finish() {
    if (!archive_done_) RETURN_IF_ERROR(EndArchive());
    if (!manifest_) return Status::IOError("the server sent no backup manifest");
    ASSIGN_OR_RETURN(FileData data, manifest_->Finish());
    manifest_.reset();
    // As pg_basebackup writes it: mode 0600 at the top of the data directory.
    return builder_->AddFile("backup_manifest", 0600, manifest_mtime_, data);
  }

  // BaseBackupHandler
  Status OnStart(const std::string& start_lsn, uint32_t timeline,
                 const std::vector<TablespaceInfo>& tablespaces) override {
    start_lsn_ = start_lsn;
    start_tli_ = timeline;
    for (const TablespaceInfo& t : tablespaces) {
      if (!t.is_main()) {
        return Status::NotSupported(
            "tablespaces are not supported yet: the cluster has tablespace " + t.oid + " at '" +
            t.location +
            "'; only clusters whose data all live in the data directory "
            "can be backed up");
      }
      if (t.size_kb > 0) total_ += static_cast<uint64_t>(t.size_kb) * 1024;
    }
    // Created now so that its rate leaves out the checkpoint wait.
    progress_.emplace(progress_out_, show_progress_, "backup");
    progress_->Update(0, total_);
    return Status::OK();
  }
  Status OnArchive(const std::string& name, const std::string& location) override {
    if (archives_++ > 0 || !location.empty()) {
      return Status::NotSupported("the server sent a second archive '" + name +
                                  "': tablespaces are not supported yet");
    }
    return Status::OK();
  }
  Status OnArchiveData(std::string_view data) override {
    received_ += data.size();
    progress_->Update(received_, std::max(total_, received_));
    return tar_.Feed(data);
  }
  Status OnManifest() override {
    RETURN_IF_ERROR(EndArchive());
    manifest_.emplace(builder_->writer(), builder_->chunk_size());
    return Status::OK();
  }
  Status OnManifestData(std::string_view data) override {
    received_ += data.size();
    progress_->Update(received_, std::max(total_, received_));
    return manifest_->Append(data);
  }

 private:
  Status EndArchive() {
    archive_done_ = true;
    if (archives_ == 0) return Status::IOError("the server sent no data directory archive");
    return tar_.Finish().WithContext("base.tar");
  }

  // TarSink
  Status OnDirectory(const std::string& path, uint32_t mode, int64_t mtime) override {
    return builder_->AddDirectory(path, mode, mtime);
  }
  Status OnSymlink(const std::string& path, const std::string& target, int64_t mtime) override {
    return builder_->AddSymlink(path, target, mtime);
  }
  Status OnFileStart(const std::string& path, uint32_t mode, int64_t mtime,
                     uint64_t size) override {
    file_path_ = path;
    file_mode_ = mode;
    file_mtime_ = mtime;
    file_size_ = size;
    file_.emplace(builder_->writer(), builder_->chunk_size());
    return Status::OK();
  }
  Status OnFileData(std::string_view data) override { return file_->Append(data); }
  Status OnFileEnd() override {
    ASSIGN_OR_RETURN(FileData data, file_->Finish());
    file_.reset();
    if (data.size != file_size_) {
      return Status::Corruption("'" + file_path_ + "': got " + std::to_string(data.size) +
                                " bytes, the archive header said " + std::to_string(file_size_));
    }
    return builder_->AddFile(file_path_, file_mode_, file_mtime_, data);
  }

  SnapshotBuilder* builder_;
  FILE* progress_out_;
  bool show_progress_;
  std::optional<Progress> progress_;
  uint64_t total_ = 0;  // the server's estimate
  int64_t manifest_mtime_;
  TarReader tar_;
  std::string start_lsn_;
  uint32_t start_tli_ = 0;
  int archives_ = 0;
  bool archive_done_ = false;
  uint64_t received_ = 0;
  // The file being received.
  std::optional<FileWriter> file_;
  std::string file_path_;
  uint32_t file_mode_ = 0;
  int64_t file_mtime_ = 0;
  uint64_t file_size_ = 0;
  std::optional<FileWriter> manifest_;
};

struct BackupArgs {
  std::string repo;
  std::string conninfo;
  std::string label;
  bool fast_checkpoint = false;
  bool progress = false;
  uint32_t max_rate_kb = 0;
  // KEYWORD=VALUE connection defaults of the process that forwarded the command (its libpq
  // environment), below what the connection string says.
  std::vector<std::string> client_defaults;
};

constexpr char kClientDefaultOption[] = "--client-conn-default";

// The connection settings this process's environment gives libpq (PGPASSWORD, PGHOST, PGUSER,
// PGPASSFILE, ...; and the password file it would read by default), as KEYWORD=VALUE. A command
// forwarded to the mount daemon runs in the daemon's environment, which does not have them.
std::vector<std::string> LibpqEnvironmentDefaults() {
  std::vector<std::string> out;
  PQconninfoOption* defaults = PQconndefaults();
  if (!defaults) return out;
  bool passfile = false;
  for (PQconninfoOption* o = defaults; o->keyword; ++o) {
    const char* value = o->envvar ? getenv(o->envvar) : nullptr;
    if (!value || !*value) continue;
    out.push_back(std::string(o->keyword) + "=" + value);
    passfile = passfile || std::string_view(o->keyword) == "passfile";
  }
  PQconninfoFree(defaults);
  const char* home = getenv("HOME");
  struct stat st;
  if (!passfile && home && *home && stat((std::string(home) + "/.pgpass").c_str(), &st) == 0) {
    out.push_back(std::string("passfile=") + home + "/.pgpass");
  }
  return out;
}

// `conninfo` as a key=value string with the forwarding client's defaults added for what it does
// not set itself. Unchanged if it does not parse (connecting then says why).
std::string WithClientDefaults(const std::string& conninfo,
                               const std::vector<std::string>& defaults) {
  if (defaults.empty()) return conninfo;
  char* err = nullptr;
  PQconninfoOption* parsed = PQconninfoParse(conninfo.c_str(), &err);
  if (err) PQfreemem(err);
  if (!parsed) return conninfo;
  auto quote = [](std::string_view v) {
    std::string q = "'";
    for (char c : v) {
      if (c == '\\' || c == '\'') q.push_back('\\');
      q.push_back(c);
    }
    return q + "'";
  };
  std::string out;
  std::set<std::string> given;
  for (PQconninfoOption* o = parsed; o->keyword; ++o) {
    if (!o->val || !*o->val) continue;
    given.insert(o->keyword);
    out += std::string(out.empty() ? "" : " ") + o->keyword + "=" + quote(o->val);
  }
  PQconninfoFree(parsed);
  for (const std::string& d : defaults) {
    size_t eq = d.find('=');
    if (eq == std::string::npos || eq == 0 || given.count(d.substr(0, eq))) continue;
    out += std::string(out.empty() ? "" : " ") + d.substr(0, eq) + "=" + quote(d.substr(eq + 1));
  }
  return out;
}

// "16MB" (as SHOW prints a size) in bytes.
Result<uint64_t> ParseServerSize(const std::string& text) {
  char* end = nullptr;
  unsigned long long n = std::strtoull(text.c_str(), &end, 10);
  std::string unit = end ? end : "";
  uint64_t mult = unit == "kB"                  ? 1ull << 10
                  : unit == "MB"                ? 1ull << 20
                  : unit == "GB"                ? 1ull << 30
                  : unit.empty() || unit == "B" ? 1
                                                : 0;
  if (n == 0 || mult == 0) return Status::InvalidArgument("unexpected size '" + text + "'");
  return n * mult;
}

Status RunBackup(const BackupArgs& args, CliContext* ctx, Repository* repo) {
  FILE* out = ctx->io->out;
  FILE* err = ctx->io->err;
  RunningBackupGuard running(repo->path());
  if (!running.acquired()) {
    return Status::Busy("another backup is running in this repository ('" + repo->path() + "')");
  }
  const int64_t start_time = time(nullptr);
  const auto started = Clock::now();
  const bool show_progress = args.progress || ctx->io->err_is_tty;

  ASSIGN_OR_RETURN(auto pg, PgReplicationConnection::Connect(
                                WithClientDefaults(args.conninfo, args.client_defaults)));
  pg->SetNoticeHandler([err](std::string_view text) {
    fprintf(err, "pgbackfs: server: %.*s\n", static_cast<int>(text.size()), text.data());
  });
  ASSIGN_OR_RETURN(SystemIdentity ident, pg->IdentifySystem());
  // Invariant 10, before anything is stored.
  RETURN_IF_ERROR(repo->CheckSystemIdentifier(ident.system_identifier)
                      .WithContext("refusing to back up " + pg->Describe()));
  // The cluster's WAL segment size is fixed too: the archive refuses segments of another size.
  ASSIGN_OR_RETURN(std::string seg_text, pg->Show("wal_segment_size"));
  ASSIGN_OR_RETURN(uint64_t seg_size, ParseServerSize(seg_text));
  RETURN_IF_ERROR(WalArchive(repo).CheckSegmentSize(seg_size).WithContext("refusing to back up " +
                                                                          pg->Describe()));

  SnapshotInfo info;
  ASSIGN_OR_RETURN(info.id, repo->NewSnapshotId(start_time));
  info.label = args.label.empty() ? "pgbackfs backup " + info.id : args.label;

  std::unique_ptr<SnapshotBuilder> builder = repo->NewSnapshotBuilder();
  BackupReceiver receiver(builder.get(), err, show_progress, start_time);
  BaseBackupOptions options;
  options.label = info.label;
  options.fast_checkpoint = args.fast_checkpoint;
  options.max_rate_kb = args.max_rate_kb;
  if (show_progress) {
    fprintf(err, "\r%-78s",
            args.fast_checkpoint ? "backup: waiting for a fast checkpoint"
                                 : "backup: waiting for a spread checkpoint (--fast-checkpoint "
                                   "to hurry it)");
    fflush(err);
  }
  Result<BaseBackupResult> end = pg->BaseBackup(options, &receiver);
  receiver.EndProgress();
  if (!end.ok()) return end.status();
  RETURN_IF_ERROR(receiver.Finish());
  ASSIGN_OR_RETURN(info.root, builder->Finish());

  info.kind = "backup";
  info.start_lsn = receiver.start_lsn();
  info.end_lsn = end->end_lsn;
  info.timeline = receiver.start_timeline();
  info.start_time = start_time;
  info.stop_time = time(nullptr);
  info.pg_version = pg->server_version();
  info.pg_version_num = static_cast<uint32_t>(pg->server_version_num());
  info.system_identifier = ident.system_identifier;
  info.logical_size = builder->logical_size();
  info.file_count = builder->file_count();
  const WriteStats& stats = builder->writer()->stats();
  info.bytes_added = stats.new_stored_bytes;
  // A sealed clone may have taken the id meanwhile (the daemon runs commands in threads).
  if (repo->GetSnapshot(info.id).ok()) {
    ASSIGN_OR_RETURN(info.id, repo->NewSnapshotId(start_time));
  }
  RETURN_IF_ERROR(repo->CommitSnapshot(info));
  // The WAL that came with the backup goes into the WAL index, so that the backup's consistent
  // point and its commits are known even before (or without) an archive. Not fatal: the backup
  // is committed, and `verify` indexes what is missing (WalArchive::IndexSnapshotWal).
  Status indexed = WalArchive(repo).IndexSnapshotWal(info, /*only_missing=*/false).status();
  if (!indexed.ok()) {
    fprintf(err, "pgbackfs: warning: could not index the backup's WAL: %s\n",
            indexed.message().c_str());
  }

  double secs = SecondsSince(started);
  uint64_t reused = stats.chunks - stats.zero_chunks - stats.new_chunks;
  fprintf(out, "backup %s committed (%s to %s, timeline %u)\n", info.id.c_str(),
          info.start_lsn.c_str(), info.end_lsn.c_str(), info.timeline);
  fprintf(out, "  logical size  %s in %" PRIu64 " files\n", FormatBytes(info.logical_size).c_str(),
          info.file_count);
  fprintf(out, "  new stored    %s (%" PRIu64 " new chunks)\n",
          FormatBytes(info.bytes_added).c_str(), stats.new_chunks);
  fprintf(out,
          "  dedup         %" PRIu64 " of %" PRIu64 " chunks already stored, %" PRIu64
          " all-zero; logical/new %.1fx\n",
          reused, stats.chunks, stats.zero_chunks,
          info.bytes_added ? static_cast<double>(info.logical_size) / info.bytes_added : 0.0);
  fprintf(out, "  elapsed       %.1f s, %s\n", secs, FormatRate(receiver.received(), secs).c_str());
  return Status::OK();
}

}  // namespace

void AddBackupCommand(CLI::App* app, CliContext* ctx) {
  auto args = std::make_shared<BackupArgs>();
  CLI::App* cmd = app->add_subcommand("backup", "take a base backup of a PostgreSQL 15+ server");
  cmd->add_option("REPO", args->repo, "repository directory")->required();
  cmd->add_option("-d,--dbname", args->conninfo,
                  "connection string (key=value or postgresql:// URI) of the server; "
                  "the role needs the REPLICATION attribute")
      ->required();
  cmd->add_option("--label", args->label, "backup label (default: 'pgbackfs backup <id>')");
  cmd->add_flag("--fast-checkpoint", args->fast_checkpoint,
                "ask for an immediate checkpoint instead of a spread one");
  cmd->add_flag("--progress", args->progress, "show progress (default when stderr is a terminal)");
  // Throttling, as pg_basebackup --max-rate; hidden: tests use it to keep a backup running.
  cmd->add_option("--max-rate", args->max_rate_kb, "transfer rate limit in kB/s (32-1048576)")
      ->check(CLI::Range(32u, 1048576u))
      ->group("");
  cmd->add_option(kClientDefaultOption, args->client_defaults)->group("");
  cmd->callback([args, ctx] {
    Result<Repository*> repo = [&]() -> Result<Repository*> {
      try {
        return ctx->repos->Get(ctx->io->Abs(args->repo));
      } catch (ForwardToDaemon& forward) {
        for (const std::string& d : LibpqEnvironmentDefaults()) {
          forward.extra_args.push_back(std::string(kClientDefaultOption) + "=" + d);
        }
        throw;
      }
    }();
    if (!repo.ok()) {
      Status s = repo.status();
      if (s.code() == Status::Code::kBusy) {
        s = Status::Busy(s.message() +
                         ": another pgbackfs process (a backup?) is using it; wait for it to end "
                         "and run the backup again");
      }
      return ctx->Fail(s);
    }
    Status s = RunBackup(*args, ctx, *repo);
    if (!s.ok()) ctx->Fail(s);
  });
}

}  // namespace pgbackfs
