// A one-line progress display for terminals: bytes, rate and ETA, redrawn at most 4 times a second.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <mutex>
#include <string>

namespace pgbackfs {

class Progress {
 public:
  // Draws on `out` only when `enabled` (normally: stderr is a terminal, or --progress).
  Progress(FILE* out, bool enabled, std::string what);
  // Thread-safe. `total` may be 0 when unknown.
  void Update(uint64_t done, uint64_t total);
  // Clears the line.
  void Done();
  double elapsed_seconds() const;

 private:
  FILE* out_;
  bool enabled_;
  std::string what_;
  std::chrono::steady_clock::time_point start_, last_draw_;
  std::mutex mu_;
  bool drawn_ = false;
};

// "123.4 MB/s" for `bytes` over `seconds`.
std::string FormatRate(uint64_t bytes, double seconds);

}  // namespace pgbackfs
