// Hidden test hooks: `pgbackfs debug ...`. Not part of the command line contract.
#include "tools/cli.h"

namespace pgbackfs {

void AddDebugCommands(CLI::App* app, CliContext* ctx) {
  struct Args {
    std::string repo, snapshot, path;
    uint64_t offset = 0;
  };
  auto args = std::make_shared<Args>();
  CLI::App* debug = app->add_subcommand("debug", "test hooks")->group("");
  debug->require_subcommand(1);
  CLI::App* corrupt = debug->add_subcommand(
      "corrupt-chunk", "flip one byte of the stored chunk holding PATH at OFFSET (tests only)");
  corrupt->add_option("REPO", args->repo)->required();
  corrupt->add_option("SNAPSHOT", args->snapshot)->required();
  corrupt->add_option("PATH", args->path)->required();
  corrupt->add_option("--offset", args->offset);
  corrupt->callback([args, ctx] {
    Repository* repo = ctx->OpenRepo(args->repo);
    if (!repo) return;
    auto snap = repo->GetSnapshot(args->snapshot);
    if (!snap.ok()) return ctx->Fail(snap.status());
    auto entry = repo->reader()->Lookup(snap->root, args->path);
    if (!entry.ok()) return ctx->Fail(entry.status());
    auto reader = repo->reader()->OpenFile(*entry);
    auto id = reader->Leaf(args->offset / repo->config().chunk_size);
    if (!id.ok()) return ctx->Fail(id.status());
    if (id->IsZero()) return ctx->Fail(Status::InvalidArgument("that chunk is all zeros"));
    std::string stored;
    Status s = repo->chunks()->GetStored(*id, &stored);
    if (!s.ok()) return ctx->Fail(s);
    stored[stored.size() / 2] ^= 0x20;
    s = repo->chunks()->ReplaceStored(*id, stored);
    if (!s.ok()) return ctx->Fail(s);
    fprintf(ctx->io->out, "corrupted chunk %s\n", id->Hex().c_str());
  });

  auto flush_repo = std::make_shared<std::string>();
  CLI::App* flush = debug->add_subcommand("flush", "write memtables out to SST files (tests)");
  flush->add_option("REPO", *flush_repo)->required();
  flush->callback([flush_repo, ctx] {
    Repository* repo = ctx->OpenRepo(*flush_repo);
    if (!repo) return;
    Status s = repo->kv()->Flush();
    if (!s.ok()) return ctx->Fail(s);
  });
}

}  // namespace pgbackfs
