// pgbackfs clone create|list|drop|seal: writable copy-on-write clones of snapshots, prepared so
// that `pg_ctl -D MOUNT/clones/NAME start` recovers to a consistent state and runs.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>

#include "repo/clone.h"
#include "repo/wal_parser.h"
#include "tools/cli.h"
#include "tools/materialize.h"
#include "tools/pitr.h"

namespace pgbackfs {

namespace {

// A TCP port that nothing listens on right now.
Result<int> FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Status::FromErrno(errno, "socket");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  Status s;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    s = Status::FromErrno(errno, "find a free port");
  }
  close(fd);
  RETURN_IF_ERROR(s);
  return static_cast<int>(ntohs(addr.sin_port));
}

// The pid in the clone's postmaster.pid if that process is alive, else 0.
Result<int> RunningPostmaster(CloneFs* fs) {
  auto attr = fs->LookupPath("postmaster.pid");
  if (!attr.ok()) {
    if (attr.status().IsNotFound()) return 0;
    return attr.status();
  }
  std::string text;
  RETURN_IF_ERROR(fs->Read(attr->ino, 0, 64, &text));
  int pid = atoi(text.c_str());
  if (pid <= 0) return 0;
  if (kill(pid, 0) == 0 || errno == EPERM) return pid;
  return 0;
}

std::string QuoteConf(const std::string& value) {
  std::string out = "'";
  for (char c : value) {
    if (c == '\'')
      out += "''";
    else
      out += c;
  }
  return out + "'";
}

struct PrepareOptions {
  int port = 0;
  // Recovery settings for a clone of a base backup (one with a backup_label).
  std::vector<std::pair<std::string, std::string>> recovery;
};

constexpr std::string_view kConfMarker = "# Added by pgbackfs clone create.";

// `conf` (a postgresql.auto.conf) without what an earlier `clone create` appended (a clone of a
// sealed clone), followed by the clone's settings: postgres reads that file last, so they win.
// With `recovery`, also the recovery settings. `note` is a comment line, or "".
std::string CloneConf(std::string conf, const PrepareOptions& options, bool recovery,
                      const std::string& note) {
  size_t earlier = conf.find(kConfMarker);
  if (earlier != std::string::npos && (earlier == 0 || conf[earlier - 1] == '\n')) {
    conf.resize(earlier);
  }
  if (!conf.empty() && conf.back() != '\n') conf += "\n";
  conf += std::string(kConfMarker) + " The clone lives at MOUNT/clones/NAME, so the\n";
  conf += "# archive is ../../wal from the data directory (postgres runs restore_command there).\n";
  if (!note.empty()) conf += "# " + note + "\n";
  conf += "port = " + std::to_string(options.port) + "\n";
  conf += "restore_command = " + QuoteConf("cp ../../wal/%f \"%p\"") + "\n";
  conf += "recovery_init_sync_method = 'syncfs'\n";
  conf += "archive_mode = 'off'\n";
  if (recovery) {
    for (const auto& [k, v] : options.recovery) conf += k + " = " + QuoteConf(v) + "\n";
  }
  return conf;
}

// Makes the clone startable: no stale pid files, and the clone's settings in
// postgresql.auto.conf (CloneConf). A base backup (it has a backup_label) gets recovery.signal
// and the recovery settings: postgres restores the WAL it needs from the archive up to the first
// consistent point and promotes. Anything else (a sealed clone: a stopped or crashed cluster)
// starts as it is, with crash recovery from its own pg_wal if it needs any: asking it for a
// recovery target would fail ("recovery ended before configured recovery target was reached")
// when there is nothing to redo.
Status PrepareForStart(CloneFs* fs, const PrepareOptions& options) {
  RETURN_IF_ERROR(fs->RemovePath("postmaster.pid"));
  RETURN_IF_ERROR(fs->RemovePath("postmaster.opts"));
  auto label = fs->LookupPath("backup_label");
  if (!label.ok() && !label.status().IsNotFound()) return label.status();
  bool from_backup = label.ok();
  if (from_backup) RETURN_IF_ERROR(fs->WriteWholeFile("recovery.signal", ""));
  std::string conf;
  auto attr = fs->LookupPath("postgresql.auto.conf");
  if (attr.ok()) {
    RETURN_IF_ERROR(fs->Read(attr->ino, 0, attr->size, &conf));
  } else if (!attr.status().IsNotFound()) {
    return attr.status();
  }
  RETURN_IF_ERROR(
      fs->WriteWholeFile("postgresql.auto.conf", CloneConf(conf, options, from_backup, "")));
  return fs->Fsync();
}

}  // namespace

void AddCloneCommands(CLI::App* app, CliContext* ctx) {
  CLI::App* clone = app->add_subcommand("clone", "writable copy-on-write clones of snapshots");
  clone->require_subcommand(1);

  struct CreateArgs {
    std::string repo, name, from;
    int port = 0;
    PitrTarget target;
    std::string time, lsn, xid, target_name;
    bool materialize = false;
    MaterializeOptions mat;
  };
  auto c = std::make_shared<CreateArgs>();
  CLI::App* create = clone->add_subcommand(
      "create", "create a clone; start it with pg_ctl -D MOUNT/clones/NAME start");
  create->add_option("REPO", c->repo, "repository directory")->required();
  create->add_option("NAME", c->name, "clone name")->required();
  auto* from = create->add_option("--from", c->from, "snapshot id, or 'latest'");
  auto* t_time = create->add_option("--target-time", c->time,
                                    "recover to this time (zone-less: the snapshot's timezone)");
  auto* t_lsn = create->add_option("--target-lsn", c->lsn, "recover to this LSN");
  auto* t_xid = create->add_option("--target-xid", c->xid, "recover to this transaction's end");
  auto* t_name = create->add_option("--target-name", c->target_name, "recover to a restore point");
  auto* t_imm = create->add_flag("--target-immediate", c->target.immediate,
                                 "recover the newest backup to consistency only");
  from->excludes(t_time, t_lsn, t_xid, t_name, t_imm);
  t_time->excludes(t_lsn, t_xid, t_name, t_imm);
  t_lsn->excludes(t_xid, t_name, t_imm);
  t_xid->excludes(t_name, t_imm);
  t_name->excludes(t_imm);
  create->add_flag("--target-exclusive", c->target.exclusive, "stop just before the target");
  create->add_option("--target-timeline", c->target.timeline, "latest (default), current or N");
  create->add_option("--target-action", c->target.action, "promote (default), pause or shutdown")
      ->check(CLI::IsMember({"promote", "pause", "shutdown"}));
  create->add_option("--port", c->port, "port the clone's postgres listens on (default: free)")
      ->check(CLI::Range(1, 65535));
  auto* mat = create->add_flag("--materialize", c->materialize,
                               "replay the WAL now: the clone starts without replay, as of the "
                               "target (needs the snapshot's PostgreSQL binaries)");
  create->add_option("--pg-bin", c->mat.pg_bin, "with --materialize: bin directory of postgres")
      ->needs(mat);
  create
      ->add_option("--pg-user", c->mat.pg_user,
                   "with --materialize: user postgres runs as (default: the mount's owner; "
                   "without a mount postgres)")
      ->needs(mat);
  create
      ->add_flag("--progress", c->mat.progress,
                 "with --materialize: show the replay (default when stderr is a terminal)")
      ->needs(mat);
  create->callback([c, ctx] {
    if (c->from.empty() && c->time.empty() && c->lsn.empty() && c->xid.empty() &&
        c->target_name.empty() && !c->target.immediate) {
      fprintf(ctx->io->err,
              "pgbackfs: usage error: give --from SNAPSHOT or one of --target-time, --target-lsn, "
              "--target-xid, --target-name, --target-immediate\n");
      ctx->exit_code = 2;
      return;
    }
    if (c->materialize && c->target.action != "promote") {
      fprintf(ctx->io->err,
              "pgbackfs: usage error: --materialize leaves the clone promoted: --target-action "
              "must be promote\n");
      ctx->exit_code = 2;
      return;
    }
    Repository* repo = ctx->OpenRepo(c->repo);
    if (!repo) return;
    PitrTarget target = c->target;
    if (!c->time.empty()) target.time = c->time;
    if (!c->lsn.empty()) target.lsn = c->lsn;
    if (!c->xid.empty()) target.xid = c->xid;
    if (!c->target_name.empty()) target.name = c->target_name;
    Result<SnapshotInfo> snap = Status::NotFound("");
    std::vector<std::pair<std::string, std::string>> recovery = {
        {"recovery_target", "immediate"}, {"recovery_target_action", "promote"}};
    std::string description;
    ReplayGoal goal;
    if (!c->from.empty()) {
      snap = repo->GetSnapshot(c->from);
    } else {
      Result<PitrPlan> plan = PlanPitr(repo, target);
      if (!plan.ok()) return ctx->Fail(plan.status());
      snap = plan->snapshot;
      recovery = plan->settings;
      description = plan->description;
      goal.stop_lsn = plan->stop_lsn;
      goal.target_unix = plan->target_unix;
    }
    if (!snap.ok()) return ctx->Fail(snap.status());
    std::unique_ptr<Materializer> materializer;
    if (c->materialize) {
      // Everything the replay needs is checked before the clone exists.
      MaterializeOptions mopts = c->mat;
      mopts.progress = mopts.progress || ctx->io->err_is_tty;
      auto m = Materializer::Prepare(repo, ctx->repos, ctx->io, *snap, mopts);
      if (!m.ok()) return ctx->Fail(m.status());
      materializer = std::move(m).value();
      Result<uint64_t> start = ParseLsn(snap->start_lsn);
      goal.start_lsn = start.ok() ? *start : 0;
      if (goal.stop_lsn == 0) {
        Result<uint64_t> end = ParseLsn(snap->end_lsn);
        goal.stop_lsn = end.ok() ? *end : 0;
      }
      goal.description = description.empty() ? "the end of snapshot " + snap->id : description;
    }
    PrepareOptions options;
    options.port = c->port;
    if (options.port == 0) {
      auto port = FreePort();
      if (!port.ok()) return ctx->Fail(port.status());
      options.port = *port;
    }
    options.recovery = recovery;
    auto info = CloneFs::Create(repo, c->name, *snap);
    if (!info.ok()) return ctx->Fail(info.status());
    auto fs = CloneFs::Open(repo, c->name);
    Status s = fs.ok() ? PrepareForStart(fs->get(), options) : fs.status();
    if (!s.ok()) {
      if (fs.ok()) fs->reset();
      (void)CloneFs::Drop(repo, c->name);  // leave no half-prepared clone behind
      return ctx->Fail(s.WithContext("prepare clone '" + c->name + "'"));
    }
    fprintf(ctx->io->out, "created clone '%s' of snapshot %s (port %d)\n", c->name.c_str(),
            snap->id.c_str(), options.port);
    fflush(ctx->io->out);
    if (materializer) {
      std::string note = "Materialized at " + goal.description +
                         ": replayed, promoted and shut down by pgbackfs; no recovery settings.";
      auto report = materializer->Run(c->name, options.port, goal, [&](const std::string& conf) {
        return CloneConf(conf, options, /*recovery=*/false, note);
      });
      if (!report.ok()) {
        fs->reset();
        Status dropped = CloneFs::Drop(repo, c->name);
        return ctx->Fail(Status::IOError(
            "materialize clone '" + c->name + "': " + report.status().message() +
            (dropped.ok() ? "\nthe clone was dropped"
                          : "\nthe clone could not be dropped: " + dropped.message() +
                                "; drop it with pgbackfs clone drop")));
      }
      fprintf(ctx->io->out,
              "materialized: PostgreSQL %s replayed the WAL to %s in %.1f s, shut down in %.1f s "
              "(as user %s)\n",
              report->pg_version.c_str(), goal.description.c_str(),
              report->seconds - report->shutdown_seconds, report->shutdown_seconds,
              report->user.c_str());
      for (const std::string& m : report->messages) {
        fprintf(ctx->io->out, "  postgres: %s\n", m.c_str());
      }
      fprintf(ctx->io->out,
              "it is promoted and cleanly shut down, and starts without WAL replay: pg_ctl -D "
              "MOUNT/clones/%s start\n",
              c->name.c_str());
      return;
    }
    if (!description.empty()) {
      fprintf(ctx->io->out, "it recovers to %s when started\n", description.c_str());
    }
    fprintf(ctx->io->out, "start it with: pg_ctl -D MOUNT/clones/%s start\n", c->name.c_str());
  });

  struct ListArgs {
    std::string repo;
    bool json = false;
  };
  auto l = std::make_shared<ListArgs>();
  CLI::App* list = clone->add_subcommand("list", "list clones");
  list->add_option("REPO", l->repo, "repository directory")->required();
  list->add_flag("--json", l->json, "machine-readable output");
  list->callback([l, ctx] {
    Repository* repo = ctx->OpenRepo(l->repo);
    if (!repo) return;
    auto clones = CloneFs::List(repo);
    if (!clones.ok()) return ctx->Fail(clones.status());
    nlohmann::json j = {{"clones", nlohmann::json::array()}};
    if (!l->json && clones->empty()) fprintf(ctx->io->out, "no clones\n");
    if (!l->json && !clones->empty()) {
      fprintf(ctx->io->out, "%-24s %-20s %-24s %s\n", "NAME", "SNAPSHOT", "CREATED", "POSTMASTER");
    }
    for (const CloneInfo& info : *clones) {
      int pid = 0;
      if (auto fs = CloneFs::Open(repo, info.name); fs.ok()) {
        auto running = RunningPostmaster(fs->get());
        pid = running.ok() ? *running : 0;
      }
      if (l->json) {
        nlohmann::json one = info.ToJson();
        one.erase("id");
        one["postmaster_pid"] = pid;
        j["clones"].push_back(one);
      } else {
        fprintf(ctx->io->out, "%-24s %-20s %-24s %s\n", info.name.c_str(), info.snapshot.c_str(),
                FormatTime(info.created).c_str(),
                pid ? ("running, pid " + std::to_string(pid)).c_str() : "stopped");
      }
    }
    if (l->json) fprintf(ctx->io->out, "%s\n", j.dump(2).c_str());
  });

  struct DropArgs {
    std::string repo, name;
    bool force = false;
  };
  auto d = std::make_shared<DropArgs>();
  CLI::App* drop = clone->add_subcommand("drop", "delete a clone and its changes");
  drop->add_option("REPO", d->repo, "repository directory")->required();
  drop->add_option("NAME", d->name, "clone name")->required();
  drop->add_flag("--force", d->force, "drop even if its postmaster is running");
  drop->callback([d, ctx] {
    Repository* repo = ctx->OpenRepo(d->repo);
    if (!repo) return;
    auto fs = CloneFs::Open(repo, d->name);
    if (!fs.ok()) return ctx->Fail(fs.status());
    auto pid = RunningPostmaster(fs->get());
    if (!pid.ok()) return ctx->Fail(pid.status());
    if (*pid && !d->force) {
      return ctx->Fail(
          Status::FailedPrecondition("clone '" + d->name + "' has a running postmaster (pid " +
                                     std::to_string(*pid) + "); stop it first, or use --force"));
    }
    fs->reset();
    Status s = CloneFs::Drop(repo, d->name);
    if (!s.ok()) return ctx->Fail(s);
    fprintf(ctx->io->out, "dropped clone '%s'\n", d->name.c_str());
  });

  struct SealArgs {
    std::string repo, name, label;
  };
  auto sa = std::make_shared<SealArgs>();
  CLI::App* seal =
      clone->add_subcommand("seal", "turn a stopped clone into a new immutable snapshot");
  seal->add_option("REPO", sa->repo, "repository directory")->required();
  seal->add_option("NAME", sa->name, "clone name")->required();
  seal->add_option("--label", sa->label, "label of the new snapshot")->required();
  seal->callback([sa, ctx] {
    Repository* repo = ctx->OpenRepo(sa->repo);
    if (!repo) return;
    auto fs = CloneFs::Open(repo, sa->name);
    if (!fs.ok()) return ctx->Fail(fs.status());
    // Mounted: what the kernel still buffers of the clone's files must reach it first.
    Status synced = ctx->repos->SyncMount();
    if (!synced.ok()) return ctx->Fail(synced.WithContext("write back the mount's cache"));
    auto pid = RunningPostmaster(fs->get());
    if (!pid.ok()) return ctx->Fail(pid.status());
    if (*pid) {
      return ctx->Fail(Status::FailedPrecondition(
          "clone '" + sa->name + "' has a running postmaster (pid " + std::to_string(*pid) +
          "); stop it (pg_ctl stop) before sealing"));
    }
    auto snap = (*fs)->Seal(sa->label);
    if (!snap.ok()) return ctx->Fail(snap.status());
    fprintf(ctx->io->out, "sealed clone '%s' as snapshot %s (%s, %s added)\n", sa->name.c_str(),
            snap->id.c_str(), FormatBytes(snap->logical_size).c_str(),
            FormatBytes(snap->bytes_added).c_str());
  });
}

}  // namespace pgbackfs
