#include "tools/pitr.h"

#include <cmath>
#include <cstdlib>
#include <ctime>
#include <mutex>

#include "repo/wal_index.h"
#include "repo/wal_parser.h"

namespace pgbackfs {

namespace {

// The value of `setting` in the snapshot's postgresql.conf / postgresql.auto.conf (the last
// assignment wins, as in postgres), or "" if none.
std::string SnapshotSetting(Repository* repo, const SnapshotInfo& snap, const std::string& name) {
  std::string value;
  for (const char* file : {"postgresql.conf", "postgresql.auto.conf"}) {
    Result<Entry> e = repo->reader()->Lookup(snap.root, file);
    if (!e.ok() || e->size() > (8 << 20)) continue;
    std::string text;
    if (!repo->reader()->OpenFile(*e)->Read(0, e->size(), &text).ok()) continue;
    size_t pos = 0;
    while (pos < text.size()) {
      size_t end = text.find('\n', pos);
      if (end == std::string::npos) end = text.size();
      std::string line = text.substr(pos, end - pos);
      pos = end + 1;
      size_t hash = line.find('#');
      if (hash != std::string::npos) line.resize(hash);
      size_t k = line.find_first_not_of(" \t");
      if (k == std::string::npos || line.compare(k, name.size(), name) != 0) continue;
      size_t eq = line.find_first_not_of(" \t=", k + name.size());
      if (eq == std::string::npos || line.find('=', k + name.size()) == std::string::npos) continue;
      std::string v = line.substr(eq);
      while (!v.empty() && (v.back() == ' ' || v.back() == '\t' || v.back() == '\r')) v.pop_back();
      if (v.size() >= 2 && v.front() == '\'' && v.back() == '\'') v = v.substr(1, v.size() - 2);
      value = v;
    }
  }
  return value;
}

// Unix seconds (with a fraction) as a TimestampTz, to the microsecond as postgres compares them.
int64_t ToTimestampTz(double unix_seconds) {
  return std::llround((unix_seconds - static_cast<double>(kPgEpochUnixSeconds)) * 1e6);
}

std::string DescribeWindows(const std::vector<RecoveryWindow>& windows) {
  if (windows.empty()) return "no recoverable window exists (no backup with its WAL)";
  std::string out = "recoverable windows:";
  for (const RecoveryWindow& w : windows) {
    out += "\n  timeline " + std::to_string(w.timeline) + ": " + FormatLsn(w.start_lsn) + " .. " +
           FormatLsn(w.end_lsn) + " (" +
           (w.start_time ? FormatTimestampTz(w.start_time) : std::string("?")) + " .. " +
           (w.end_time ? FormatTimestampTz(w.end_time) : std::string("?")) + ") from snapshot " +
           w.snapshot + (w.consistent ? "" : " [its own WAL is missing]") +
           (w.gap.empty() ? "" : "; then " + w.gap);
  }
  return out;
}

}  // namespace

Result<double> ParseTargetTime(const std::string& text, const std::string& default_zone) {
  int y, mo, d, h = 0, mi = 0, consumed = 0;
  double s = 0;
  if (sscanf(text.c_str(), "%d-%d-%d%n", &y, &mo, &d, &consumed) != 3) {
    return Status::InvalidArgument("bad target time '" + text +
                                   "' (use 'YYYY-MM-DD HH:MM:SS[+ZZ]')");
  }
  std::string rest = text.substr(consumed);
  int more = 0;
  if (!rest.empty() && (rest[0] == ' ' || rest[0] == 'T')) {
    if (sscanf(rest.c_str() + 1, "%d:%d:%lf%n", &h, &mi, &s, &more) < 2) {
      return Status::InvalidArgument("bad target time '" + text + "'");
    }
    rest = rest.substr(1 + more);
  }
  while (!rest.empty() && rest[0] == ' ') rest.erase(0, 1);
  if (mo < 1 || mo > 12 || d < 1 || d > 31 || h < 0 || h > 23 || mi < 0 || mi > 59 || s < 0 ||
      s >= 61) {
    return Status::InvalidArgument("bad target time '" + text + "'");
  }
  struct tm tm {};
  tm.tm_year = y - 1900;
  tm.tm_mon = mo - 1;
  tm.tm_mday = d;
  tm.tm_hour = h;
  tm.tm_min = mi;
  tm.tm_sec = static_cast<int>(s);
  double frac = s - static_cast<int>(s);
  if (rest.empty()) {
    // No zone: the clone's postgres reads it in its `timezone` setting, so do the same.
    static std::mutex tz_mu;  // TZ is process-global
    std::lock_guard<std::mutex> lock(tz_mu);
    const char* old = getenv("TZ");
    std::string saved = old ? old : "";
    setenv("TZ", default_zone.empty() ? "GMT" : default_zone.c_str(), 1);
    tzset();
    tm.tm_isdst = -1;
    time_t t = mktime(&tm);
    if (old)
      setenv("TZ", saved.c_str(), 1);
    else
      unsetenv("TZ");
    tzset();
    if (t == static_cast<time_t>(-1))
      return Status::InvalidArgument("bad target time '" + text + "'");
    return static_cast<double>(t) + frac;
  }
  long offset = 0;
  if (rest == "Z" || rest == "UTC" || rest == "GMT" || rest == "z") {
    offset = 0;
  } else if (rest[0] == '+' || rest[0] == '-') {
    int oh = 0, om = 0;
    int n = sscanf(rest.c_str() + 1, "%2d:%2d", &oh, &om);
    if (n < 1) n = sscanf(rest.c_str() + 1, "%2d%2d", &oh, &om);
    if (n < 1 || oh > 15 || om > 59) return Status::InvalidArgument("bad zone in '" + text + "'");
    offset = (oh * 3600L + om * 60L) * (rest[0] == '-' ? -1 : 1);
  } else {
    return Status::InvalidArgument("unsupported zone '" + rest + "' in '" + text +
                                   "': give a numeric offset (+02, -05:30), Z or UTC, or none");
  }
  return static_cast<double>(timegm(&tm) - offset) + frac;
}

Result<PitrPlan> PlanPitr(Repository* repo, const PitrTarget& target) {
  ASSIGN_OR_RETURN(std::vector<SnapshotInfo> all, repo->ListSnapshots());
  std::vector<SnapshotInfo> backups;
  for (const SnapshotInfo& s : all) {
    if (s.kind == "backup" && !s.end_lsn.empty()) backups.push_back(s);
  }
  if (backups.empty()) return Status::FailedPrecondition("the repository has no backups");
  WalIndex index(repo);
  ASSIGN_OR_RETURN(std::vector<RecoveryWindow> windows, index.RecoverableWindows(backups));

  PitrPlan plan;
  std::string what;
  uint64_t target_lsn = 0;      // set for lsn/xid/name targets
  double target_unix = -1;      // set for time targets
  std::optional<uint32_t> tli;  // the timeline the target was found on
  if (target.timeline != "latest" && target.timeline != "current") {
    char* end = nullptr;
    unsigned long n = strtoul(target.timeline.c_str(), &end, 10);
    if (!end || *end || n == 0) {
      return Status::InvalidArgument("bad --target-timeline '" + target.timeline + "'");
    }
    tli = static_cast<uint32_t>(n);
  }

  if (target.lsn) {
    ASSIGN_OR_RETURN(target_lsn, ParseLsn(*target.lsn));
    plan.settings.push_back({"recovery_target_lsn", *target.lsn});
    what = "LSN " + *target.lsn;
  } else if (target.xid) {
    char* end = nullptr;
    unsigned long long xid = strtoull(target.xid->c_str(), &end, 10);
    if (!end || *end || xid == 0 || xid > 0xffffffffull) {
      return Status::InvalidArgument("bad --target-xid '" + *target.xid + "'");
    }
    ASSIGN_OR_RETURN(std::vector<WalEvent> events, index.FindXid(static_cast<uint32_t>(xid)));
    if (events.empty()) {
      return Status::NotFound("transaction " + *target.xid +
                              " did not commit or abort in the archived WAL");
    }
    const WalEvent& e = events.back();
    target_lsn = e.lsn;
    tli = tli ? tli : std::optional<uint32_t>(e.tli);
    plan.settings.push_back({"recovery_target_xid", *target.xid});
    what = "transaction " + *target.xid + " (" + (e.is_commit() ? "committed" : "aborted") +
           " at " + FormatLsn(e.lsn) + ", " + FormatTimestampTz(e.time) + ")";
  } else if (target.name) {
    Result<WalEvent> rp = index.FindRestorePoint(*target.name);
    if (!rp.ok()) {
      if (rp.status().IsNotFound()) {
        return Status::NotFound("restore point '" + *target.name + "' is not in the archived WAL");
      }
      return rp.status();
    }
    target_lsn = rp->lsn;
    tli = tli ? tli : std::optional<uint32_t>(rp->tli);
    plan.settings.push_back({"recovery_target_name", *target.name});
    what = "restore point '" + *target.name + "' (" + FormatLsn(rp->lsn) + ", " +
           FormatTimestampTz(rp->time) + ")";
  } else if (target.time) {
    std::string zone = SnapshotSetting(repo, backups.back(), "timezone");
    ASSIGN_OR_RETURN(target_unix, ParseTargetTime(*target.time, zone));
    plan.settings.push_back({"recovery_target_time", *target.time});
    what = "time " + *target.time;
  } else {
    // --target-immediate: the newest backup, consistent and no further.
    plan.snapshot = backups.back();
    plan.settings.push_back({"recovery_target", "immediate"});
    plan.settings.push_back({"recovery_target_action", target.action});
    plan.description = "the end of snapshot " + plan.snapshot.id + " (immediate)";
    Result<uint64_t> end = ParseLsn(plan.snapshot.end_lsn);
    plan.stop_lsn = end.ok() ? *end : 0;
    return plan;
  }

  // The target must lie inside a window; the window's timeline decides the snapshot.
  const RecoveryWindow* chosen = nullptr;
  for (const RecoveryWindow& w : windows) {
    if (!w.consistent || (tli && w.timeline != *tli)) continue;
    bool inside;
    if (target_unix >= 0) {
      int64_t t = ToTimestampTz(target_unix);
      inside = (w.start_time == 0 || t >= w.start_time) && w.end_time != 0 && t <= w.end_time;
    } else {
      inside = target_lsn >= w.start_lsn && target_lsn <= w.end_lsn;
    }
    if (inside && (!chosen || w.timeline > chosen->timeline)) chosen = &w;
  }
  if (!chosen) {
    return Status::InvalidArgument("target " + what + " is outside every recoverable window; " +
                                   DescribeWindows(windows));
  }
  // The newest backup on that timeline whose consistent point is before the target.
  const SnapshotInfo* best = nullptr;
  for (const SnapshotInfo& s : backups) {
    Result<uint64_t> end = ParseLsn(s.end_lsn);
    if (!end.ok()) continue;
    bool before = target_unix >= 0 ? s.stop_time <= target_unix : *end <= target_lsn;
    if (before && *end >= chosen->start_lsn) best = &s;
  }
  if (!best) {
    return Status::InvalidArgument("no backup is consistent before " + what + "; " +
                                   DescribeWindows(windows));
  }
  plan.snapshot = *best;
  plan.settings.push_back({"recovery_target_inclusive", target.exclusive ? "off" : "on"});
  plan.settings.push_back(
      {"recovery_target_timeline", tli ? std::to_string(*tli) : target.timeline});
  plan.settings.push_back({"recovery_target_action", target.action});
  plan.description = (target.exclusive ? "just before " : "") + what + " on timeline " +
                     std::to_string(chosen->timeline) + " from snapshot " + best->id;
  plan.stop_lsn = target_lsn;
  plan.target_unix = target_unix;
  if (target_unix >= 0) {
    plan.stop_lsn = chosen->end_lsn;
    Result<uint64_t> from = ParseLsn(best->end_lsn);
    auto match =
        index.FindTime(chosen->timeline, ToTimestampTz(target_unix), from.ok() ? *from : 0);
    if (match.ok() && match->at_or_after) plan.stop_lsn = match->at_or_after->lsn;
  }
  return plan;
}

}  // namespace pgbackfs
