#include "tools/cli.h"

namespace pgbackfs {

void AddMountCommands(CLI::App* app, CliContext* ctx) {}

}  // namespace pgbackfs
