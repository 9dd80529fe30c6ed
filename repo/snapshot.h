// Snapshots: immutable file trees. A directory is the sorted list of its entries, encoded with
// fixed-width fields and stored like a file (a chunk tree), so a snapshot in which few files
// changed shares almost all its directory chunks with the one before. A snapshot record in the
// meta column family names the root directory; it is written last, in a synced write, so a
// snapshot whose writer died never appears (invariant 3). docs/FORMAT.md, "snapshots".
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "repo/chunk_tree.h"
#include "repo/coding.h"

namespace pgbackfs {

enum class EntryType : uint8_t { kFile = 1, kDirectory = 2, kSymlink = 3 };

struct Entry {
  std::string name;
  EntryType type = EntryType::kFile;
  uint32_t mode = 0600;  // permission bits only
  int64_t mtime_sec = 0;
  uint32_t mtime_nsec = 0;
  FileData data;            // files: the content; directories: the encoded listing
  std::string link_target;  // symlinks

  bool is_dir() const { return type == EntryType::kDirectory; }
  uint64_t size() const { return type == EntryType::kSymlink ? link_target.size() : data.size; }

  void EncodeTo(std::string* dst) const;
  // Decodes one entry from `in`; Corruption on bad input.
  static Status DecodeFrom(Decoder* in, Entry* entry);
};

// A directory listing: entries sorted by name.
Status EncodeDirectory(const std::vector<Entry>& entries, std::string* dst);
Status DecodeDirectory(std::string_view data, std::vector<Entry>* entries);

// What a snapshot record says. Stored as JSON in the meta column family.
struct SnapshotInfo {
  std::string id;
  std::string kind = "backup";  // "backup" or "sealed-clone"
  std::string label;
  std::string start_lsn, end_lsn;
  uint32_t timeline = 0;
  int64_t start_time = 0, stop_time = 0;  // unix seconds
  std::string pg_version;                 // server_version, e.g. "15.18"
  uint32_t pg_version_num = 0;
  std::string system_identifier;
  uint64_t logical_size = 0;  // sum of regular file sizes
  uint64_t file_count = 0;
  uint64_t bytes_added = 0;  // stored bytes this snapshot added to the repository
  std::string parent;        // the snapshot a sealed clone came from
  Entry root;                // the root directory entry (name "")
  nlohmann::json extra = nlohmann::json::object();

  nlohmann::json ToJson() const;  // the documented `--json` form, without `root`
  std::string Encode() const;
  static Status Decode(std::string_view data, SnapshotInfo* info);
};

// Builds a snapshot from entries added in any order. Memory grows with the number of entries
// (not their sizes): file contents are streamed into chunks as they arrive.
class SnapshotBuilder {
 public:
  SnapshotBuilder(ChunkStore* store, size_t chunk_size);
  ChunkWriter* writer() { return &writer_; }
  size_t chunk_size() const { return chunk_size_; }

  // `path` is relative ("base/1/1259"), with no "." or ".." parts. Parent directories that were
  // not added are created with mode 0700. Adding a path twice replaces the earlier entry.
  Status AddDirectory(const std::string& path, uint32_t mode, int64_t mtime);
  Status AddSymlink(const std::string& path, const std::string& target, int64_t mtime);
  Status AddFile(const std::string& path, uint32_t mode, int64_t mtime, const FileData& data);
  // A directory whose listing is already stored (from another snapshot), taken as it is.
  Status AddStoredDirectory(const std::string& path, const Entry& dir);
  // Convenience for small files held in memory.
  Status AddSmallFile(const std::string& path, uint32_t mode, int64_t mtime, std::string_view data);

  // Stores every directory and returns the root entry; chunks are flushed (not synced).
  Result<Entry> Finish();
  uint64_t logical_size() const { return logical_size_; }
  uint64_t file_count() const { return file_count_; }

 private:
  struct Node {
    Entry entry;
    bool stored = false;  // entry.data already names a stored listing
    std::map<std::string, std::unique_ptr<Node>> children;
  };
  Result<Node*> Parent(const std::string& path, std::string* leaf);
  Status StoreDir(Node* node);

  ChunkWriter writer_;
  size_t chunk_size_;
  Node root_;
  uint64_t logical_size_ = 0;
  uint64_t file_count_ = 0;
};

// Reads a snapshot's tree. Thread-safe.
class SnapshotReader {
 public:
  SnapshotReader(ChunkStore* store, size_t chunk_size) : store_(store), chunk_size_(chunk_size) {}
  Status ReadDir(const Entry& dir, std::vector<Entry>* entries);
  // Looks up a relative path ("" is the root). NotFound if absent.
  Result<Entry> Lookup(const Entry& root, const std::string& path);
  // Visits every entry below `dir` depth-first, parents before children; `path` is relative.
  Status Walk(const Entry& dir, const std::string& prefix,
              const std::function<Status(const std::string& path, const Entry&)>& fn);
  std::unique_ptr<TreeReader> OpenFile(const Entry& file) {
    return std::make_unique<TreeReader>(store_, file.data, chunk_size_);
  }

 private:
  ChunkStore* store_;
  size_t chunk_size_;
};

// Splits "a/b/c" into parts; InvalidArgument on empty, ".", ".." or NUL-containing parts.
Status SplitPath(const std::string& path, std::vector<std::string>* parts);

}  // namespace pgbackfs
