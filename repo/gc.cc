#include "repo/gc.h"

#include <algorithm>
#include <unordered_set>
#include <vector>

#include "repo/chunk_tree.h"
#include "repo/clone.h"
#include "repo/snapshot.h"
#include "repo/wal_archive.h"

namespace pgbackfs {

namespace {

// The mark phase. Leaves go into a vector (sorted and deduplicated once, for the sweep's binary
// searches: 16 bytes a reference); index blocks and listings also go into a set, which prunes
// the walk of trees shared with an earlier snapshot.
class Marker {
 public:
  explicit Marker(Repository* repo) : repo_(repo), chunk_size_(repo->config().chunk_size) {}

  Status MarkSnapshot(const SnapshotInfo& snap) {
    return MarkDir(snap.root, "").WithContext("snapshot " + snap.id);
  }

  Status MarkTree(const FileData& data) {
    if (data.root.id.IsZero()) return Status::OK();
    const uint64_t chunk_size = data.chunk_size ? data.chunk_size : chunk_size_;  // WAL: its own
    uint64_t leaves = (data.size + chunk_size - 1) / chunk_size;
    if (data.root.height == 0) {
      marked_.push_back(data.root.id);
      return Status::OK();
    }
    return MarkNode(data.root.height, data.root.id, 0, leaves);
  }

  void MarkId(const ChunkId& id) {
    if (!id.IsZero()) marked_.push_back(id);
  }

  // Sorted, distinct: the set the sweep keeps.
  std::vector<ChunkId> Finish() {
    auto less = [](const ChunkId& a, const ChunkId& b) { return a.bytes < b.bytes; };
    std::sort(marked_.begin(), marked_.end(), less);
    marked_.erase(std::unique(marked_.begin(), marked_.end()), marked_.end());
    blocks_.clear();
    return std::move(marked_);
  }

  uint64_t marked() const { return marked_.size(); }

 private:
  Status MarkDir(const Entry& dir, const std::string& path) {
    // A listing seen before (same root) has had its whole subtree marked.
    if (!dir.data.root.id.IsZero() && blocks_.count(dir.data.root.id)) return Status::OK();
    RETURN_IF_ERROR(MarkTree(dir.data).WithContext("listing of /" + path));
    if (!dir.data.root.id.IsZero()) blocks_.insert(dir.data.root.id);
    std::vector<Entry> entries;
    RETURN_IF_ERROR(repo_->reader()->ReadDir(dir, &entries).WithContext("/" + path));
    for (const Entry& e : entries) {
      std::string child = path.empty() ? e.name : path + "/" + e.name;
      if (e.is_dir()) {
        RETURN_IF_ERROR(MarkDir(e, child));
      } else if (e.type == EntryType::kFile) {
        RETURN_IF_ERROR(MarkTree(e.data).WithContext("/" + child));
      }
    }
    return Status::OK();
  }

  static uint64_t Span(int height) {  // leaves under one node of `height`
    uint64_t span = 1;
    for (int i = 0; i < height; ++i) span *= kTreeFanout;
    return span;
  }

  Status MarkNode(int height, const ChunkId& id, uint64_t first_leaf, uint64_t leaves) {
    if (id.IsZero()) return Status::OK();  // an all-zero block: zeros below
    if (!blocks_.insert(id).second) return Status::OK();
    marked_.push_back(id);
    const uint64_t child_span = Span(height - 1);
    if (first_leaf >= leaves) return Status::Corruption("index block past the end of its file");
    uint64_t below = std::min(Span(height), leaves - first_leaf);
    uint64_t children = (below + child_span - 1) / child_span;
    std::string block;
    RETURN_IF_ERROR(repo_->chunks()->Get(id, children * 16, &block));
    if (block.size() != children * 16) {
      return Status::Corruption("index block " + id.Hex() + " has " + std::to_string(block.size()) +
                                " bytes, expected " + std::to_string(children * 16));
    }
    for (uint64_t c = 0; c < children; ++c) {
      ChunkId child = ChunkId::FromKey(std::string_view(block).substr(c * 16, 16));
      if (height == 1) {
        MarkId(child);
      } else {
        RETURN_IF_ERROR(MarkNode(height - 1, child, first_leaf + c * child_span, leaves));
      }
    }
    return Status::OK();
  }

  Repository* repo_;
  size_t chunk_size_;
  std::vector<ChunkId> marked_;
  std::unordered_set<ChunkId, ChunkIdHash> blocks_;
};

bool Contains(const std::vector<ChunkId>& sorted, const ChunkId& id) {
  return std::binary_search(sorted.begin(), sorted.end(), id,
                            [](const ChunkId& a, const ChunkId& b) { return a.bytes < b.bytes; });
}

// Clone overlay keys (docs/FORMAT.md, "Clones"): "c" id:8 'C' ino:8 index:8 -> chunk override.
// An override of 16 bytes names a chunk kept in the chunk column family.
Status MarkCloneOverrides(Repository* repo, Marker* marker) {
  auto it = repo->kv()->NewIterator(Cf::kOverlay);
  for (it->Seek("c"); it->Valid(); it->Next()) {
    std::string_view key = it->key();
    if (key.empty() || key[0] != 'c') break;
    if (key.size() == 1 + 8 + 1 + 8 + 8 && key[9] == 'C' && it->value().size() == 16) {
      marker->MarkId(ChunkId::FromKey(it->value()));
    }
  }
  return it->status();
}

}  // namespace

Status CollectGarbage(Repository* repo, const GcOptions& options, GcReport* report,
                      const std::function<void(const std::string&, uint64_t)>& progress) {
  auto note = [&](const std::string& phase, uint64_t done) {
    if (progress) progress(phase, done);
  };
  ChunkStore* store = repo->chunks();
  RETURN_IF_ERROR(store->BeginCollection([&](size_t n) { note("waiting for writers", n); }));
  struct End {
    ChunkStore* store;
    ~End() { store->EndCollection(); }
  } end{store};

  // Mark. Writers that started before BeginCollection have committed or given up by now, so
  // everything they made visible is in the records read below; later writers protect their ids.
  Marker marker(repo);
  ASSIGN_OR_RETURN(std::vector<SnapshotInfo> snaps, repo->ListSnapshots());
  std::unordered_set<std::string> snapshot_ids;
  for (const SnapshotInfo& snap : snaps) {
    RETURN_IF_ERROR(marker.MarkSnapshot(snap).WithContext("gc stopped, nothing deleted"));
    snapshot_ids.insert(snap.id);
    report->snapshots++;
    note("mark", report->snapshots);
  }
  WalArchive wal(repo);
  RETURN_IF_ERROR(wal.List([&](const WalFileInfo& info) {
                       report->wal_files++;
                       return marker.MarkTree(info.data).WithContext("WAL file " + info.name);
                     })
                      .WithContext("gc stopped, nothing deleted"));
  ASSIGN_OR_RETURN(std::vector<CloneInfo> clones, CloneFs::List(repo));
  for (const CloneInfo& clone : clones) {
    if (!snapshot_ids.count(clone.snapshot)) {
      return Status::FailedPrecondition("clone '" + clone.name + "' is based on snapshot '" +
                                        clone.snapshot +
                                        "', which is missing; gc stopped, nothing deleted");
    }
    report->clones++;
  }
  RETURN_IF_ERROR(MarkCloneOverrides(repo, &marker));
  std::vector<ChunkId> referenced = marker.Finish();
  report->referenced_chunks = referenced.size();

  // Sweep.
  report->size_before = store->ApproximateBytes();
  std::vector<ChunkId> garbage;
  auto flush = [&]() -> Status {
    if (garbage.empty()) return Status::OK();
    if (!options.dry_run) {
      ASSIGN_OR_RETURN(uint64_t deleted, store->DeleteUnprotected(garbage, &report->deleted_bytes));
      report->deleted_chunks += deleted;
      report->kept_protected += garbage.size() - deleted;
    } else {
      report->deleted_chunks += garbage.size();
    }
    garbage.clear();
    note("sweep", report->stored_chunks);
    return Status::OK();
  };
  auto it = repo->kv()->NewIterator(Cf::kChunks);
  for (it->Seek(""); it->Valid(); it->Next()) {
    if (it->key().size() != 16) return Status::Corruption("chunk key of bad length in the store");
    report->stored_chunks++;
    ChunkId id = ChunkId::FromKey(it->key());
    if (Contains(referenced, id)) continue;
    if (options.dry_run) report->deleted_bytes += ChunkStore::EntryBytes(it->value());
    garbage.push_back(id);
    if (garbage.size() >= 4096) RETURN_IF_ERROR(flush());
  }
  RETURN_IF_ERROR(it->status());
  RETURN_IF_ERROR(flush());
  ASSIGN_OR_RETURN(report->deleted_orphans,
                   store->DeleteOrphans(options.dry_run, &report->deleted_bytes));
  if (!options.dry_run && report->deleted_chunks + report->deleted_orphans > 0) {
    RETURN_IF_ERROR(repo->kv()->Sync());
    if (options.compact) {
      note("compact", 0);
      RETURN_IF_ERROR(repo->kv()->Compact(Cf::kChunks));
      RETURN_IF_ERROR(repo->kv()->Compact(Cf::kChunkData));
    }
  }
  report->size_after = store->ApproximateBytes();
  return Status::OK();
}

}  // namespace pgbackfs
