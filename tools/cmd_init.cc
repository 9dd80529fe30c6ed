// pgbackfs init REPO [--chunk-size 8KiB] [--compression zstd:3]
#include "tools/cli.h"

namespace pgbackfs {

void AddInitCommand(CLI::App* app, CliContext* ctx) {
  struct Args {
    std::string repo;
    std::string chunk_size = "8KiB";
    std::string compression = "zstd:3";
  };
  auto args = std::make_shared<Args>();
  CLI::App* cmd = app->add_subcommand("init", "create an empty repository");
  cmd->add_option("REPO", args->repo, "repository directory (created if missing)")->required();
  cmd->add_option("--chunk-size", args->chunk_size,
                  "chunk size, a power of two from 8KiB to 1MiB (default 8KiB)");
  cmd->add_option("--compression", args->compression, "zstd:N (1-19) or none (default zstd:3)");
  cmd->callback([args, ctx] {
    if (ctx->repos->in_daemon()) {
      ctx->Fail(Status::InvalidArgument("init cannot run through a mounted repository"));
      return;
    }
    RepoConfig config;
    Result<size_t> chunk = ParseChunkSize(args->chunk_size);
    Result<std::string> comp = ParseCompression(args->compression);
    if (!chunk.ok() || !comp.ok()) {
      fprintf(ctx->io->err, "pgbackfs: usage error: %s\n",
              (!chunk.ok() ? chunk.status() : comp.status()).message().c_str());
      ctx->exit_code = 2;
      return;
    }
    config.chunk_size = *chunk;
    config.compression = *comp;
    std::string path = ctx->io->Abs(args->repo);
    Status s = Repository::Init(path, config);
    if (!s.ok()) return ctx->Fail(s);
    fprintf(ctx->io->out, "initialized repository '%s' (chunk size %zu, compression %s)\n",
            path.c_str(), config.chunk_size, config.compression.c_str());
  });
}

}  // namespace pgbackfs
