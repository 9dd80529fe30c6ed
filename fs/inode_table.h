// The mount's inode table: inode number -> what the kernel may ask about, with the kernel's lookup
// counts. A node exists from the first reply that hands its number to the kernel (lookup, create,
// readdirplus) until the kernel forgets it, so memory follows the kernel's dentry cache, not the
// size of a snapshot. Inode numbers are never reused within a mount (64-bit counter), so no
// generation numbers are needed.
//
// Nodes are immutable once made and shared (std::shared_ptr<const Node>): a handler holds one
// without holding the table's lock. What a name means can change (a WAL file that gets archived,
// a snapshot expired and made again): the name then maps to a new node, and the old one lives on
// until forgotten.
//
// Clone nodes are different: their content lives in the clone (repo/clone.h) and changes, so the
// node carries only the clone and the clone's inode number, and it is keyed by those, not by
// (parent, name). One clone inode is one kernel inode however it is reached (after a rename, by
// readdirplus or lookup), so the kernel never holds two page caches for one file.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "repo/clone.h"
#include "repo/snapshot.h"

namespace pgbackfs {

enum class NodeKind : uint8_t {
  kRoot,           // MOUNT/
  kBackupsDir,     // MOUNT/backups/
  kWalDir,         // MOUNT/wal/
  kClonesDir,      // MOUNT/clones/
  kSnapshotRoot,   // MOUNT/backups/<id>/: entry is the snapshot's root directory
  kSnapshotEntry,  // anything below backups/<id>/: entry is its snapshot Entry
  kWalFile,        // MOUNT/wal/<name>, archived: entry.data is its content
  kWalNew,         // MOUNT/wal/<name> made by create(): not found by name, not yet archived
  kCloneRoot,      // MOUNT/clones/<name>/: the clone's root directory
  kCloneEntry,     // anything below clones/<name>/
};

// Where a node lives, which decides what a change is answered with (EROFS or EPERM).
enum class Area : uint8_t { kTop, kBackups, kWal, kClones };

struct Node {
  uint64_t ino = 0;
  NodeKind kind = NodeKind::kRoot;
  uint64_t parent = 0;
  std::string snapshot_id;  // snapshot nodes
  std::string path;         // relative to the snapshot root, or the WAL file name; for logs
  Entry entry;              // name, type, mode, mtime, content; clone nodes: name and type only
  // Clone nodes: the clone (kept alive while the kernel knows the node) and its inode number.
  // Attributes and content are read from the clone on every request.
  std::shared_ptr<CloneFs> clone;
  CloneIno clone_ino = 0;

  Area area() const;
  bool is_dir() const;
  // True if `o` describes the same content (kind, snapshot, entry type, data, mode, times, link).
  bool SameContent(const Node& o) const;
};

class InodeTable {
 public:
  static constexpr uint64_t kRootIno = 1;  // FUSE_ROOT_ID
  static constexpr uint64_t kBackupsIno = 2;
  static constexpr uint64_t kWalIno = 3;
  static constexpr uint64_t kClonesIno = 4;
  static constexpr uint64_t kFirstDynamicIno = 16;

  // `mount_time` is the mtime of the fixed directories.
  explicit InodeTable(int64_t mount_time);
  InodeTable(const InodeTable&) = delete;
  InodeTable& operator=(const InodeTable&) = delete;

  // The node for `proto.parent`/`proto.entry.name`: the existing one if it has the same content,
  // else a new one (proto with a fresh ino) that the name maps to from now on. A clone node
  // (proto.clone set) is found by (clone, clone_ino) instead. Counts one kernel lookup on the
  // returned node.
  std::shared_ptr<const Node> Lookup(Node proto);
  // A node not reachable by name (a file being written); counts one kernel lookup.
  std::shared_ptr<const Node> AddAnonymous(Node proto);
  // Null if `ino` is unknown (never handed out, or forgotten).
  std::shared_ptr<const Node> Get(uint64_t ino) const;
  // The node `parent`/`name` maps to without counting a lookup; null if none.
  std::shared_ptr<const Node> Find(uint64_t parent, const std::string& name) const;
  // The node of inode `clone_ino` of the clone with id `clone_id`, if the kernel knows it; no
  // lookup is counted.
  std::shared_ptr<const Node> FindClone(uint64_t clone_id, CloneIno clone_ino) const;
  // The kernel dropped `nlookup` references. The fixed directories are never removed.
  void Forget(uint64_t ino, uint64_t nlookup);

  size_t size() const;                       // nodes, the fixed ones included
  uint64_t LookupCount(uint64_t ino) const;  // for tests

 private:
  struct Slot {
    std::shared_ptr<const Node> node;
    uint64_t lookups = 0;
    bool named = false;  // the name map may point at it
  };
  static std::string NameKey(uint64_t parent, const std::string& name);
  void AddFixed(uint64_t ino, NodeKind kind, const std::string& name, int64_t mtime);

  mutable std::mutex mu_;
  uint64_t next_ino_ = kFirstDynamicIno;                           // guarded by mu_
  std::unordered_map<uint64_t, Slot> nodes_;                       // guarded by mu_
  std::unordered_map<std::string, uint64_t> names_;                // guarded by mu_
  std::map<std::pair<uint64_t, CloneIno>, uint64_t> clone_nodes_;  // guarded by mu_
};

}  // namespace pgbackfs
