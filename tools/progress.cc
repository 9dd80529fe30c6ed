#include "tools/progress.h"

#include "tools/cli.h"

namespace pgbackfs {

Progress::Progress(FILE* out, bool enabled, std::string what)
    : out_(out),
      enabled_(enabled),
      what_(std::move(what)),
      start_(std::chrono::steady_clock::now()) {}

double Progress::elapsed_seconds() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

std::string FormatRate(uint64_t bytes, double seconds) {
  char buf[32];
  snprintf(buf, sizeof(buf), "%.1f MB/s", seconds > 0 ? bytes / 1e6 / seconds : 0.0);
  return buf;
}

void Progress::Update(uint64_t done, uint64_t total) {
  if (!enabled_) return;
  std::lock_guard<std::mutex> lock(mu_);
  auto now = std::chrono::steady_clock::now();
  if (drawn_ && now - last_draw_ < std::chrono::milliseconds(250)) return;
  last_draw_ = now;
  drawn_ = true;
  double secs = elapsed_seconds();
  std::string line = what_ + ": " + FormatBytes(done);
  if (total > 0) {
    char pct[64];
    snprintf(pct, sizeof(pct), " of %s (%.0f%%)", FormatBytes(total).c_str(),
             100.0 * static_cast<double>(done) / static_cast<double>(total));
    line += pct;
  }
  line += ", " + FormatRate(done, secs);
  if (total > done && done > 0 && secs > 1) {
    double eta = secs * static_cast<double>(total - done) / static_cast<double>(done);
    char buf[32];
    snprintf(buf, sizeof(buf), ", ETA %dm%02ds", static_cast<int>(eta) / 60,
             static_cast<int>(eta) % 60);
    line += buf;
  }
  fprintf(out_, "\r%-78s", line.c_str());
  fflush(out_);
}

void Progress::Done() {
  if (!enabled_ || !drawn_) return;
  std::lock_guard<std::mutex> lock(mu_);
  fprintf(out_, "\r%-78s\r", "");
  fflush(out_);
}

}  // namespace pgbackfs
