#include "tools/cli.h"

namespace pgbackfs {

void AddArchiveCommands(CLI::App* app, CliContext* ctx) {}

}  // namespace pgbackfs
