#include "repo/retention.h"

#include <algorithm>
#include <cctype>
#include <ctime>
#include <map>
#include <optional>
#include <set>

#include "repo/clone.h"
#include "repo/wal_archive.h"
#include "repo/wal_format.h"
#include "repo/wal_index.h"
#include "repo/wal_parser.h"

namespace pgbackfs {

namespace {

uint64_t GetBE(std::string_view s, size_t n) {
  uint64_t v = 0;
  for (size_t i = 0; i < n; ++i) v = (v << 8) | static_cast<uint8_t>(s[i]);
  return v;
}

std::string UtcDay(int64_t t) {
  time_t tt = static_cast<time_t>(t);
  struct tm tm;
  gmtime_r(&tt, &tm);
  char buf[16];
  strftime(buf, sizeof(buf), "%Y-%m-%d", &tm);
  return buf;
}

// Whether the WAL index key (meta column family, docs/FORMAT.md "WAL index") describes WAL
// wholly before `cutoff_lsn` (segment number `cutoff_segno`), and so goes with removed segments.
bool IndexKeyBefore(std::string_view key, uint64_t cutoff_segno, uint64_t cutoff_lsn,
                    uint64_t seg_size) {
  auto strip = [&](std::string_view prefix) {
    if (key.substr(0, prefix.size()) != prefix) return false;
    key.remove_prefix(prefix.size());
    return true;
  };
  if (strip("walidx/seg/")) {
    if (key.size() != 12) return false;
    WalSegmentName name;
    name.log = static_cast<uint32_t>(GetBE(key.substr(4), 4));
    name.seg = static_cast<uint32_t>(GetBE(key.substr(8), 4));
    return name.SegNo(seg_size) < cutoff_segno;
  }
  if (strip("walidx/ev/") || strip("walidx/cont/")) {
    return key.size() == 12 && GetBE(key.substr(4), 8) < cutoff_lsn;
  }
  if (strip("walidx/xid/")) return key.size() == 16 && GetBE(key.substr(8), 8) < cutoff_lsn;
  if (strip("walidx/rp/"))
    return key.size() >= 13 && GetBE(key.substr(key.size() - 8), 8) < cutoff_lsn;
  return false;  // timeline history, and anything newer than this code: kept
}

}  // namespace

uint64_t ExpirePlan::removed_snapshots() const {
  uint64_t n = 0;
  for (const SnapshotDecision& d : snapshots) n += d.keep ? 0 : 1;
  return n;
}

Result<int64_t> ParseDuration(const std::string& text) {
  size_t i = 0;
  while (i < text.size() && isdigit(static_cast<unsigned char>(text[i]))) ++i;
  if (i == 0 || i + 1 != text.size() || i > 12) {
    return Status::InvalidArgument("bad duration '" + text +
                                   "': expected a number and a unit, as in 30d, 12h, 90m, 2w");
  }
  int64_t n = std::stoll(text.substr(0, i));
  switch (text[i]) {
    case 's':
      return n;
    case 'm':
      return n * 60;
    case 'h':
      return n * 3600;
    case 'd':
      return n * 86400;
    case 'w':
      return n * 7 * 86400;
    default:
      return Status::InvalidArgument("bad duration '" + text + "': the unit is one of s m h d w");
  }
}

Result<ExpirePlan> PlanExpire(Repository* repo, const RetentionPolicy& policy, int64_t now) {
  if (policy.keep_last < 0 || policy.keep_daily < 0 || policy.keep_within_sec < 0) {
    return Status::InvalidArgument("retention counts and durations cannot be negative");
  }
  if (policy.keep_last < 1 && policy.remove.empty()) {
    return Status::InvalidArgument(
        "give --keep-last N (N >= 1: the newest backup is always kept), or --snapshot ID");
  }
  ExpirePlan plan;
  ASSIGN_OR_RETURN(std::vector<SnapshotInfo> snaps, repo->ListSnapshots());
  std::sort(snaps.begin(), snaps.end(), [](const SnapshotInfo& a, const SnapshotInfo& b) {
    return std::tie(a.stop_time, a.id) < std::tie(b.stop_time, b.id);
  });
  ASSIGN_OR_RETURN(std::vector<CloneInfo> clones, CloneFs::List(repo));
  std::map<std::string, std::vector<std::string>> clones_of;
  for (const CloneInfo& c : clones) clones_of[c.snapshot].push_back(c.name);
  std::set<std::string> explicit_remove(policy.remove.begin(), policy.remove.end());
  for (const std::string& id : explicit_remove) {
    auto it =
        std::find_if(snaps.begin(), snaps.end(), [&](const SnapshotInfo& s) { return s.id == id; });
    if (it == snaps.end()) return Status::NotFound("unknown snapshot '" + id + "'");
    if (clones_of.count(id)) {
      return Status::FailedPrecondition(
          "snapshot '" + id + "' has clones (" + clones_of[id].front() +
          (clones_of[id].size() > 1 ? ", …" : "") + "); drop them first");
    }
  }

  for (const SnapshotInfo& s : snaps) plan.snapshots.push_back({s, false, {}});
  // Rules, newest first.
  int last = 0;
  std::set<std::string> days;
  for (size_t k = plan.snapshots.size(); k-- > 0;) {
    SnapshotDecision& d = plan.snapshots[k];
    const SnapshotInfo& s = d.snapshot;
    if (explicit_remove.count(s.id)) continue;
    if (auto c = clones_of.find(s.id); c != clones_of.end()) {
      d.reasons.push_back("clone " + c->second.front() +
                          (c->second.size() > 1 ? " and others" : ""));
    }
    if (s.kind != "backup") {
      d.reasons.push_back(s.kind + " (remove it explicitly with --snapshot)");
      continue;
    }
    if (policy.remove.empty() || policy.keep_last > 0) {
      if (last < policy.keep_last) d.reasons.push_back("last " + std::to_string(policy.keep_last));
      last++;
      if (policy.keep_daily > 0) {
        std::string day = UtcDay(s.stop_time);
        if (!days.count(day) && static_cast<int>(days.size()) < policy.keep_daily) {
          days.insert(day);
          d.reasons.push_back("daily " + day);
        }
      }
      if (policy.keep_within_sec > 0 && s.stop_time >= now - policy.keep_within_sec) {
        d.reasons.push_back("within " + std::to_string(policy.keep_within_sec) + " s");
      }
    } else {
      d.reasons.push_back("not named");  // only explicit removals asked for
    }
  }
  for (SnapshotDecision& d : plan.snapshots) d.keep = !d.reasons.empty();

  // WAL: everything before the segment in which the oldest kept backup starts.
  WalArchive wal(repo);
  ASSIGN_OR_RETURN(uint64_t seg_size, wal.SegmentSize());
  std::optional<uint64_t> cutoff;
  for (const SnapshotDecision& d : plan.snapshots) {
    if (!d.keep || d.snapshot.kind != "backup") continue;
    ASSIGN_OR_RETURN(uint64_t lsn, ParseLsn(d.snapshot.start_lsn));
    if (seg_size == 0) break;
    uint64_t segno = lsn / seg_size;
    if (!cutoff || segno < *cutoff) cutoff = segno;
  }
  if (!cutoff) return plan;  // no backup left, or no WAL: keep all WAL
  plan.wal_cutoff = WalSegmentName::FromSegNo(1, *cutoff, seg_size).ToString().substr(8);
  plan.wal_cutoff_segno = *cutoff;
  RETURN_IF_ERROR(wal.List([&](const WalFileInfo& info) {
    WalFileName parsed;
    Status s = ParseWalFileName(info.name, &parsed);
    if (!s.ok() || parsed.kind == WalFileKind::kHistory) {
      plan.wal_files_kept++;
      return Status::OK();
    }
    WalSegmentName name{parsed.tli, parsed.log, parsed.seg};
    if (name.SegNo(seg_size) < *cutoff) {
      plan.wal_files.push_back(info.name);
    } else {
      plan.wal_files_kept++;
    }
    return Status::OK();
  }));
  return plan;
}

Status ApplyExpire(Repository* repo, const ExpirePlan& plan) {
  std::lock_guard<std::mutex> lock(repo->catalog_mutex());
  ASSIGN_OR_RETURN(std::vector<CloneInfo> clones, CloneFs::List(repo));
  KvBatch batch;
  for (const SnapshotDecision& d : plan.snapshots) {
    if (d.keep) continue;
    for (const CloneInfo& c : clones) {
      if (c.snapshot == d.snapshot.id) {
        return Status::FailedPrecondition("clone '" + c.name + "' was just based on snapshot '" +
                                          d.snapshot.id + "'; nothing expired, run expire again");
      }
    }
  }
  for (const SnapshotDecision& d : plan.snapshots) {
    if (!d.keep) batch.Delete(Cf::kMeta, std::string(kSnapshotKeyPrefix) + d.snapshot.id);
  }
  if (!batch.empty()) RETURN_IF_ERROR(repo->kv()->Write(batch, /*sync=*/true));
  if (plan.wal_files.empty()) return Status::OK();

  // The WAL records, then the index entries of what they held. A crash in between leaves index
  // entries of removed WAL, which describe WAL before every kept backup and so are never used;
  // the next expire removes them.
  WalArchive wal(repo);
  ASSIGN_OR_RETURN(uint64_t seg_size, wal.SegmentSize());
  batch.Clear();
  for (const std::string& name : plan.wal_files) {
    batch.Delete(Cf::kWal, name);
    if (batch.ops().size() >= 10000) {
      RETURN_IF_ERROR(repo->kv()->Write(batch, false));
      batch.Clear();
    }
  }
  const uint64_t cutoff_segno = plan.wal_cutoff_segno;
  const uint64_t cutoff_lsn = cutoff_segno * seg_size;
  auto it = repo->kv()->NewIterator(Cf::kMeta);
  for (it->Seek(kWalIndexKeyPrefix); it->Valid(); it->Next()) {
    std::string_view key = it->key();
    if (key.substr(0, kWalIndexKeyPrefix.size()) != kWalIndexKeyPrefix) break;
    if (!IndexKeyBefore(key, cutoff_segno, cutoff_lsn, seg_size)) continue;
    batch.Delete(Cf::kMeta, key);
    if (batch.ops().size() >= 10000) {
      RETURN_IF_ERROR(repo->kv()->Write(batch, false));
      batch.Clear();
    }
  }
  RETURN_IF_ERROR(it->status());
  RETURN_IF_ERROR(repo->kv()->Write(batch, /*sync=*/true));
  return Status::OK();
}

}  // namespace pgbackfs
