#include "tests/fuzz/fuzz_util.h"

#include <spdlog/spdlog.h>

namespace pgbackfs::fuzz {

void QuietLogs() { spdlog::set_level(spdlog::level::off); }

}  // namespace pgbackfs::fuzz
