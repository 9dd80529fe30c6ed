// Clones: writable copy-on-write file trees over a snapshot. A clone is a small POSIX file system
// kept in the `overlay` column family: inodes, directory entries and per-chunk overrides. File
// data that was never written is read from the snapshot's chunk trees; written chunks are stored
// content-addressed like everything else and named by an override key. Nothing here ever writes
// to a snapshot (invariant 4). Layouts: docs/FORMAT.md, "clones".
//
// Durability: operations are applied to the store unsynced (they survive a crash of the process,
// not of the machine); Fsync() makes everything before it durable, as fsync(2) promises.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "repo/repository.h"

namespace pgbackfs {

using CloneIno = uint64_t;
constexpr CloneIno kCloneRootIno = 1;

struct CloneInfo {
  std::string name;
  uint64_t id = 0;       // key prefix in the overlay column family
  std::string snapshot;  // the snapshot it was created from
  int64_t created = 0;
  nlohmann::json extra = nlohmann::json::object();  // set-up details (port, recovery target…)

  nlohmann::json ToJson() const;
  static Status Decode(std::string_view data, CloneInfo* info);
};

struct CloneAttr {
  CloneIno ino = 0;
  EntryType type = EntryType::kFile;
  uint32_t mode = 0600;
  uint64_t size = 0;
  int64_t mtime_sec = 0;
  uint32_t mtime_nsec = 0;
  int64_t ctime_sec = 0;
  uint32_t ctime_nsec = 0;
  uint32_t nlink = 1;
};

struct CloneSetAttr {
  std::optional<uint32_t> mode;
  std::optional<uint64_t> size;
  std::optional<std::pair<int64_t, uint32_t>> mtime;  // seconds, nanoseconds
  bool grow_only = false;  // `size` only extends the file (fallocate); a smaller one is ignored
};

// One open clone. Thread-safe.
class CloneFs {
 public:
  // Creates clone `name` of `snapshot`. AlreadyExists if the name is taken; InvalidArgument for a
  // bad name (empty, '/', '.', '..', NUL, over 200 bytes).
  static Result<CloneInfo> Create(Repository* repo, const std::string& name,
                                  const SnapshotInfo& snapshot);
  static Result<std::vector<CloneInfo>> List(Repository* repo);
  static Result<CloneInfo> Get(Repository* repo, const std::string& name);
  // Deletes the clone's record and every overlay key (its chunks become garbage for gc).
  static Status Drop(Repository* repo, const std::string& name);
  static Status ValidateName(const std::string& name);

  // Returns the process's one instance for this clone (opening it if nobody holds it), so the
  // mount and commands run in the daemon share inode numbering. Drop() disables live instances:
  // their operations then fail with NotFound.
  static Result<std::shared_ptr<CloneFs>> Open(Repository* repo, const std::string& name);

  const CloneInfo& info() const { return info_; }
  Result<CloneAttr> GetAttr(CloneIno ino);
  Result<CloneAttr> Lookup(CloneIno parent, const std::string& name);
  // Calls fn(name, ino, type) for each entry, in name order, starting after `after` ("" = start).
  // fn returns false to stop.
  Status ReadDir(CloneIno dir, const std::string& after,
                 const std::function<bool(const std::string&, CloneIno, EntryType)>& fn);
  // Creates a regular file. AlreadyExists if `name` exists (callers implement O_EXCL with it).
  Result<CloneAttr> CreateFile(CloneIno parent, const std::string& name, uint32_t mode);
  Result<CloneAttr> Mkdir(CloneIno parent, const std::string& name, uint32_t mode);
  Result<CloneAttr> Symlink(CloneIno parent, const std::string& name, const std::string& target);
  Result<std::string> Readlink(CloneIno ino);
  // Removes a file or symlink. A file that is open (OpenFile) keeps its content and stays
  // readable and writable through its inode until the last CloseFile, as POSIX has it: an
  // orphan, recorded so that one left by a crash is deleted when the clone is next opened.
  Status Unlink(CloneIno parent, const std::string& name);
  Status Rmdir(CloneIno parent, const std::string& name);
  // Atomic rename; replaces an existing target (file over file, empty dir over dir) unless
  // `noreplace`. A replaced file that is open becomes an orphan, as with Unlink.
  Status Rename(CloneIno parent, const std::string& name, CloneIno new_parent,
                const std::string& new_name, bool noreplace);
  Result<CloneAttr> SetAttr(CloneIno ino, const CloneSetAttr& set);
  Status Read(CloneIno ino, uint64_t offset, size_t len, std::string* out);
  // With `sync`, the write is durable when this returns (O_DSYNC), together with every earlier
  // change.
  Status Write(CloneIno ino, uint64_t offset, std::string_view data, bool sync = false);
  // Makes every earlier change durable.
  Status Fsync();
  // Counts the opens of a file (the mount calls them on open and release), so that removing an
  // open file keeps its content until the last close.
  void OpenFile(CloneIno ino);
  Status CloseFile(CloneIno ino);

  // Turns the clone's current tree into a new snapshot, sharing every unchanged chunk.
  Result<SnapshotInfo> Seal(const std::string& label);

  // Convenience for set-up: path-based helpers relative to the root.
  Result<CloneAttr> LookupPath(const std::string& path);
  Status WriteWholeFile(const std::string& path, std::string_view data, uint32_t mode = 0600);
  Status RemovePath(const std::string& path);  // file or symlink; NotFound is ok

 private:
  struct Inode;
  CloneFs(Repository* repo, CloneInfo info);
  std::string InodeKey(CloneIno ino) const;
  std::string DentryKey(CloneIno dir, const std::string& name) const;
  std::string DentryPrefix(CloneIno dir) const;
  std::string ChunkKey(CloneIno ino, uint64_t index) const;
  std::string ChunkPrefix(CloneIno ino) const;

  Result<Inode> LoadInode(CloneIno ino);
  void PutInode(const Inode& inode, KvBatch* batch);
  // Copies a base directory's listing into the overlay on first use.
  Status MaterializeDir(Inode* dir);
  Result<Inode> LoadDir(CloneIno ino);  // loads and materializes; NotADirectory → InvalidArgument
  Result<std::optional<CloneIno>> FindEntry(CloneIno dir, const std::string& name);
  Result<CloneAttr> MakeNode(CloneIno parent, const std::string& name, EntryType type,
                             uint32_t mode, const std::string& link);
  Status DeleteInodeData(const Inode& inode, KvBatch* batch);
  // Deletes a file's inode and content, or makes it an orphan if it is open.
  Status RemoveFile(const Inode& inode, KvBatch* batch);
  std::string OrphanKey(CloneIno ino) const;
  std::string OrphanPrefix() const;
  Status PurgeOrphans();  // orphans a crash left behind: nobody has them open any more
  // Override values: docs/FORMAT.md, "clones".
  std::string EncodeOverride(const ChunkId& id, std::string_view raw) const;
  Status DecodeOverride(std::string_view value, ChunkId* id, std::string* out);  // checks the hash
  Status ReadBaseChunk(const Inode& inode, TreeReader* base, uint64_t index, std::string* out);
  Status ReadChunk(const Inode& inode, uint64_t index, std::string* out);  // full chunk_size
  // A read across more than one chunk: [offset, end) appended to `out`.
  Status ReadRange(const Inode& inode, uint64_t offset, uint64_t end, std::string* out);
  Status Truncate(Inode* inode, uint64_t size, KvBatch* batch);
  Result<bool> DirIsEmpty(CloneIno dir);
  Status SealDir(const Inode& dir, const std::string& path, SnapshotBuilder* builder);
  Result<FileData> SealFile(const Inode& file, ChunkWriter* writer);
  Result<CloneIno> NextIno(KvBatch* batch);
  std::mutex& InodeLock(CloneIno ino) { return inode_locks_[ino % kLockStripes]; }

  static constexpr int kLockStripes = 64;
  static constexpr size_t kParallelWriteChunks = 8;  // a write of fewer chunks encodes inline
  Repository* repo_;
  CloneInfo info_;
  size_t chunk_size_;
  std::mutex tree_mu_;  // serializes namespace changes (create, unlink, rename, mkdir…)
  std::mutex ino_mu_;
  CloneIno next_ino_ = 0;
  std::mutex inode_locks_[kLockStripes];
  std::mutex open_mu_;                             // a leaf lock: taken last
  std::unordered_map<CloneIno, int> open_counts_;  // guarded by open_mu_
  std::unordered_set<CloneIno> orphans_;           // guarded by open_mu_
  std::atomic<bool> dropped_{false};
};

}  // namespace pgbackfs
