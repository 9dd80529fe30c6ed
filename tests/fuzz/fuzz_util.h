// Helpers shared by the libFuzzer targets (tests/fuzz/README.md). A target checks the parser's
// contract as well as memory safety: FUZZ_CHECK aborts, which libFuzzer reports as a crash.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <string>

#define FUZZ_CHECK(cond)                                                                 \
  do {                                                                                   \
    if (!(cond)) {                                                                       \
      std::fprintf(stderr, "%s:%d: FUZZ_CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                      \
    }                                                                                    \
  } while (0)

#define FUZZ_CHECK_MSG(cond, msg)                                                           \
  do {                                                                                      \
    if (!(cond)) {                                                                          \
      std::fprintf(stderr, "%s:%d: FUZZ_CHECK failed: %s: %s\n", __FILE__, __LINE__, #cond, \
                   std::string(msg).c_str());                                               \
      std::abort();                                                                         \
    }                                                                                       \
  } while (0)

namespace pgbackfs::fuzz {

// Silences spdlog (the parsers log warnings on bad input; millions of lines slow a run down).
void QuietLogs();

}  // namespace pgbackfs::fuzz
