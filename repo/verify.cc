#include "repo/verify.h"

#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "repo/wal_archive.h"
#include "repo/wal_index.h"

namespace pgbackfs {

namespace {

constexpr size_t kMaxProblems = 1000;
constexpr size_t kLeafBatch = 256;

class Verifier {
 public:
  Verifier(Repository* repo, VerifyReport* report, bool full_reads)
      : repo_(repo), report_(report), full_reads_(full_reads) {}

  void Problem(const std::string& snap, const std::string& path, uint64_t offset,
               const std::string& message) {
    std::lock_guard<std::mutex> lock(mu_);
    if (report_->problems.size() < kMaxProblems) {
      report_->problems.push_back({snap, path, offset, message});
    }
  }

  // Pass 1 (all snapshots): reads and hashes every stored chunk once.
  Status ScanChunks(const std::function<void(const std::string&, uint64_t)>& progress) {
    ChunkStore* store = repo_->chunks();
    struct Stored {
      ChunkId id;
      std::string bytes;
    };
    std::vector<Stored> batch;
    auto check_batch = [&] {
      std::vector<std::string> errors(batch.size());
      store->ParallelFor(batch.size(), [&](size_t i) {
        std::string out;
        Status s = store->DecodeAndVerify(batch[i].id, batch[i].bytes, &out);
        if (!s.ok()) errors[i] = s.message();
      });
      for (size_t i = 0; i < batch.size(); ++i) {
        if (!errors[i].empty()) bad_.emplace(batch[i].id, errors[i]);
      }
      report_->stored_chunks_checked += batch.size();
      batch.clear();
      if (progress) progress("chunks", report_->stored_chunks_checked);
    };
    Status s = store->ForEachStored(
        [&](const ChunkId& id, std::string_view stored, const Status& problem) {
          if (!problem.ok()) {
            bad_.emplace(id, problem.message());
            report_->stored_chunks_checked++;
            return;
          }
          batch.push_back({id, std::string(stored)});
          if (batch.size() == 1024) check_batch();
        },
        &report_->orphan_chunks);
    check_batch();
    if (!s.ok()) {
      // A damaged store file: report it and let the tree walk name what it affects.
      Problem("", "", 0, "chunk store scan stopped: " + s.message());
    }
    return Status::OK();
  }

  // Checks one file tree: index blocks decode, leaves are present and sound.
  void CheckFile(const std::string& snap, const std::string& path, const FileData& data) {
    TreeReader reader(repo_->chunks(), data, repo_->config().chunk_size);
    const size_t chunk = reader.chunk_size();
    std::vector<std::pair<uint64_t, ChunkId>> leaves;
    auto check_leaves = [&] {
      std::vector<Status> results(leaves.size());
      repo_->chunks()->ParallelFor(leaves.size(), [&](size_t i) {
        results[i] = CheckLeaf(leaves[i].second, reader.LeafSize(leaves[i].first));
      });
      for (size_t i = 0; i < leaves.size(); ++i) {
        if (!results[i].ok()) {
          Problem(snap, path, leaves[i].first * chunk, results[i].message());
        }
      }
      {
        std::lock_guard<std::mutex> lock(mu_);
        report_->references_checked += leaves.size();
      }
      leaves.clear();
    };
    Status s = reader.ForEachLeaf([&](uint64_t index, const ChunkId& id) {
      leaves.push_back({index, id});
      if (leaves.size() == kLeafBatch) check_leaves();
      return Status::OK();
    });
    check_leaves();
    if (!s.ok()) Problem(snap, path, 0, "chunk list unreadable: " + s.message());
    report_->bytes_checked += data.size;
  }

  Status CheckLeaf(const ChunkId& id, size_t size) {
    if (id.IsZero()) return Status::OK();
    if (auto bad = bad_.find(id); bad != bad_.end()) return Status::Corruption(bad->second);
    if (full_reads_) {
      std::string out;
      return repo_->chunks()->Get(id, size, &out);
    }
    ASSIGN_OR_RETURN(bool present, repo_->chunks()->Contains(id));
    if (!present) return Status::NotFound("chunk " + id.Hex() + " is missing");
    return Status::OK();
  }

  void CheckSnapshot(const SnapshotInfo& snap) {
    report_->snapshots++;
    CheckFile(snap.id, "", snap.root.data);  // the root listing itself
    Status s = repo_->reader()->Walk(snap.root, "",
                                     [&](const std::string& path, const Entry& e) -> Status {
                                       if (e.type == EntryType::kSymlink) return Status::OK();
                                       if (e.type == EntryType::kFile) report_->files++;
                                       CheckFile(snap.id, path, e.data);
                                       return Status::OK();
                                     });
    if (!s.ok()) Problem(snap.id, "", 0, "directory tree unreadable: " + s.message());
  }

 private:
  Repository* repo_;
  VerifyReport* report_;
  bool full_reads_;
  std::mutex mu_;
  std::unordered_map<ChunkId, std::string, ChunkIdHash> bad_;  // id -> what is wrong
};

}  // namespace

Status VerifyRepository(Repository* repo, const std::string& snapshot_id, VerifyReport* report,
                        const std::function<void(const std::string&, uint64_t)>& progress) {
  std::vector<SnapshotInfo> snaps;
  if (snapshot_id.empty()) {
    ASSIGN_OR_RETURN(snaps, repo->ListSnapshots());
  } else {
    ASSIGN_OR_RETURN(SnapshotInfo one, repo->GetSnapshot(snapshot_id));
    snaps.push_back(std::move(one));
  }
  Verifier verifier(repo, report, /*full_reads=*/!snapshot_id.empty());
  if (snapshot_id.empty()) RETURN_IF_ERROR(verifier.ScanChunks(progress));
  for (const SnapshotInfo& snap : snaps) {
    verifier.CheckSnapshot(snap);
    if (progress) progress("snapshots", report->snapshots);
  }
  if (snapshot_id.empty()) {
    WalArchive wal(repo);
    RETURN_IF_ERROR(wal.List([&](const WalFileInfo& file) {
      report->wal_files++;
      verifier.CheckFile("wal", file.name, file.data);
      return Status::OK();
    }));
    // The WAL index is derived data: files it lacks (a crash between a history file's record and
    // its index entry) are indexed now. Then WAL that cannot be parsed is damage.
    ASSIGN_OR_RETURN(report->wal_files_indexed, wal.IndexMissing());
    WalIndex index(repo);
    ASSIGN_OR_RETURN(auto timelines, index.Timelines());
    for (const TimelineSummary& t : timelines) {
      for (const std::string& name : t.failed) {
        Result<WalSegmentRecord> rec = index.GetSegment(name);
        std::string why = rec.ok() ? rec->error : rec.status().message();
        if (rec.ok() && rec->tolerant) continue;  // a backup's pg_wal copy may end anywhere
        report->problems.push_back({"wal", name, 0, "WAL cannot be parsed: " + why});
      }
    }
  }
  // Every snapshot needs the WAL from its start to its consistent point (it came with the backup).
  // (Sealed clones diverged from the archive's history: they are not recovery starting points.)
  std::vector<SnapshotInfo> backups;
  for (const SnapshotInfo& s : snaps) {
    if (s.kind == "backup" && !s.end_lsn.empty()) backups.push_back(s);
  }
  // A backup killed between its commit and the indexing of its pg_wal/ copy left segments the
  // index lacks: they are indexed now, as the backup would have.
  for (const SnapshotInfo& s : backups) {
    ASSIGN_OR_RETURN(uint64_t n, WalArchive(repo).IndexSnapshotWal(s, /*only_missing=*/true));
    report->wal_files_indexed += n;
  }
  WalIndex index(repo);
  ASSIGN_OR_RETURN(auto windows, index.RecoverableWindows(backups));
  for (const RecoveryWindow& w : windows) {
    if (!w.consistent) {
      report->problems.push_back(
          {w.snapshot, "pg_wal", 0,
           "the WAL needed to make this snapshot consistent is missing or damaged"});
    }
  }
  return Status::OK();
}

}  // namespace pgbackfs
