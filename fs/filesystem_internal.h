// Shared by fs/filesystem.cc and fs/filesystem_clone.cc: handle types and small helpers. Not part
// of the fs/ interface.
#pragma once

#include <sys/stat.h>

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "fs/filesystem.h"
#include "repo/wal_archive.h"

namespace pgbackfs {

inline constexpr size_t kNameMax = 255;
inline constexpr blksize_t kBlockSize = 128 << 10;
inline constexpr blksize_t kWalBlockSize = 1 << 20;  // cp sizes its buffer after the destination's

mode_t TypeBits(EntryType type);
// What a log line calls a node: "snapshot ID 'path'", "wal/NAME", "clone 'NAME' 'path' (…)".
std::string Describe(const Node& node);

struct Filesystem::Handle {
  virtual ~Handle() = default;
};

// An open file with immutable content: a snapshot file or an archived WAL file.
struct Filesystem::FileHandle : Handle {
  std::shared_ptr<const Node> node;
  FileData data;
};

// A file being written into wal/.
struct Filesystem::WriteHandle : Handle {
  std::shared_ptr<const Node> node;
  std::mutex mu;
  std::unique_ptr<WalWriter> writer;  // guarded by mu
  bool committed = false;             // guarded by mu: the last flush stored it
  bool dirty = false;                 // guarded by mu: writes since the last commit
};

// An open file in a clone: reads and writes go to the clone as they come.
struct Filesystem::CloneFileHandle : Handle {
  std::shared_ptr<const Node> node;
  bool sync = false;  // opened O_DSYNC or O_SYNC: each write is durable before it is answered
};

// An open directory. Snapshot directories and the fixed ones: what it listed when read from
// offset 0 (a snapshot directory keeps the shared decoded listing, no copy per open directory;
// the others keep node protos). Clone directories: a window of the listing, paged with the
// clone's after-name cursor, so memory stays bounded whatever the directory's size, and entries
// added or removed meanwhile do not shift the ones still to come.
struct Filesystem::DirHandle : Handle {
  struct CloneItem {
    std::string name;
    CloneIno ino = 0;
    EntryType type = EntryType::kFile;
  };

  std::shared_ptr<const Node> node;
  std::mutex mu;
  DirCache::Listing listing;  // guarded by mu: snapshot directories
  std::vector<Node> items;    // guarded by mu: the other directories
  bool loaded = false;        // guarded by mu

  // Clone directories, all guarded by mu: items [window_start, window_start + window.size()).
  std::vector<CloneItem> window;
  uint64_t window_start = 0;
  bool window_is_last = false;  // nothing follows the window
  bool window_loaded = false;

  size_t count() const { return listing ? listing->size() : items.size(); }
};

}  // namespace pgbackfs
