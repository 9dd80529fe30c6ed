#include "tools/cli.h"

namespace pgbackfs {

void AddRestoreCommand(CLI::App* app, CliContext* ctx) {}
void AddVerifyCommand(CLI::App* app, CliContext* ctx) {}
void AddInfoCommand(CLI::App* app, CliContext* ctx) {}
void AddDebugCommands(CLI::App* app, CliContext* ctx) {}

}  // namespace pgbackfs
