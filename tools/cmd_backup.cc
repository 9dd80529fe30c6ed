#include "tools/cli.h"

namespace pgbackfs {

void AddBackupCommand(CLI::App* app, CliContext* ctx) {}

}  // namespace pgbackfs
