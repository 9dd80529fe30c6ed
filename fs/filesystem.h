// What the mount shows, independent of FUSE: every operation takes and returns plain values and
// an errno (0 for success), so fs/fuse_ops.cc only decodes a request, calls one method and
// replies, and the unit tests drive this class without a kernel.
//
//   MOUNT/backups/<id>/...  every snapshot, read-only (changes: EROFS)
//   MOUNT/wal/<name>        the WAL archive: create + write + close archives a file (the commit
//                           happens in flush, so close() reports it); no unlink, rename or mkdir
//                           (EPERM: the archive is append-only)
//   MOUNT/clones/           one directory per clone (CloneFs::List, re-read on every lookup and
//                           listing); clones are made and dropped with `pgbackfs clone`, so
//                           mkdir, rmdir and rename here are refused (EPERM)
//   MOUNT/clones/<name>/... the clone's writable copy-on-write tree (repo/clone.h): every change
//                           goes to the clone's overlay, never to its snapshot
//
// Thread-safe: FUSE calls it from several threads at once.
#pragma once

#include <sys/stat.h>
#include <sys/statvfs.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>

#include "fs/dir_cache.h"
#include "fs/inode_table.h"
#include "repo/repository.h"
#include "repo/wal_archive.h"

namespace pgbackfs {

struct FsOptions {
  uid_t uid = 0;  // owner of every file
  gid_t gid = 0;
  size_t dir_cache_bytes = 32 << 20;
  // Entries and attributes below backups/<id>/ never change while the snapshot exists.
  double immutable_timeout = 3600;
  // backups/<id>, wal/<name> and the fixed directories: a snapshot can be expired. Names that do
  // not exist are never cached (ENOENT replies carry no timeout), so new files show at once.
  double dynamic_timeout = 1;
  // Entries and attributes below clones/<name>/. Every change to a clone's tree reaches it through
  // this mount, whose kernel caches follow it (writes, truncates, creates, unlinks and renames
  // update them), so a short timeout only bounds how long a dropped clone's names stay visible.
  // clones/<name> itself gets no entry caching: a clone can be dropped and made again any time.
  double clone_timeout = 1;
  // Keep a clone file's page cache between opens. Correct because every write to a clone file
  // goes through this mount's page cache, and the daemon writes clone files directly only while
  // setting up a new clone, before the kernel has seen any of its inodes.
  bool clone_keep_cache = true;
  // FUSE writeback cache: clone writes are buffered in the kernel and written back in batches
  // (on fsync, close, or the kernel's writeback). What postgres fsyncs is durable when fsync
  // returns, as on any file system; what it did not fsync may be lost if the daemon dies, as in
  // a machine crash. Whoever reads clone files in the daemon (seal) first calls syncfs() on the
  // mount. WAL files being archived are direct_io and never buffered.
  bool writeback_cache = true;
};

// What setattr asks for; unset fields stay as they are.
struct AttrChange {
  std::optional<uint64_t> size;
  std::optional<mode_t> mode;
  std::optional<struct timespec> mtime;
  std::optional<uid_t> uid;
  std::optional<gid_t> gid;
  uint64_t fh = 0;  // the open file it came through, 0 if none
};

// What lookup, create and readdirplus hand to the kernel. Each one counts a kernel lookup.
struct EntryOut {
  uint64_t ino = 0;
  struct stat attr {};
  double entry_timeout = 0;
  double attr_timeout = 0;
};

struct OpenOut {
  uint64_t fh = 0;
  bool keep_cache = false;  // immutable content: keep the page cache between opens
  bool direct_io = false;   // wal/ files opened for writing, O_DSYNC clone files: no page cache
  bool noflush = false;     // read-only handles need no flush on close
};

struct DirItem {
  std::string name;
  mode_t type = 0;           // S_IFDIR, S_IFREG or S_IFLNK
  uint64_t ino = 0;          // readdir only: informational
  uint64_t next_offset = 0;  // the offset that resumes after this item
  EntryOut entry;            // readdirplus only
};

class Filesystem {
 public:
  // `repo` must outlive the filesystem.
  Filesystem(Repository* repo, const FsOptions& options);
  ~Filesystem();
  Filesystem(const Filesystem&) = delete;
  Filesystem& operator=(const Filesystem&) = delete;

  int Lookup(uint64_t parent, const std::string& name, EntryOut* out);
  void Forget(uint64_t ino, uint64_t nlookup);
  int GetAttr(uint64_t ino, struct stat* st, double* timeout);
  // Clones: size (truncate or extend with zeros), mode and mtime change; atime is ignored; a
  // chown to anything but the --owner uid/gid is EPERM (every file shows that owner). wal/: the
  // size of a WAL file being written (through `change.fh` if not 0), other changes ignored.
  // Elsewhere EROFS.
  int SetAttr(uint64_t ino, const AttrChange& change, struct stat* st, double* timeout);
  int ReadLink(uint64_t ino, std::string* target);

  int OpenDir(uint64_t ino, uint64_t* fh);
  // Calls `add` for each item from `offset` on until it returns false (the reply is full). With
  // `plus`, items carry attributes and count a lookup, except "." and "..", and except an item
  // `add` refused.
  int ReadDir(uint64_t fh, uint64_t offset, bool plus,
              const std::function<bool(const DirItem&)>& add);
  void ReleaseDir(uint64_t fh);

  int Open(uint64_t ino, int flags, OpenOut* out);
  // In a clone: O_EXCL is EEXIST if the name exists; without it an existing file is opened (and
  // truncated with O_TRUNC). In wal/: starts archiving a file (see the top of this file).
  int Create(uint64_t parent, const std::string& name, int flags, EntryOut* entry, OpenOut* out,
             mode_t mode = 0600);
  // Appends the bytes of [offset, offset + size) to `out` (fewer at the end of the file).
  int Read(uint64_t fh, uint64_t offset, size_t size, std::string* out);
  int Write(uint64_t fh, uint64_t offset, std::string_view data);
  // For a file written into wal/: commits it (invariant 1). A no-op for other files.
  int Flush(uint64_t fh);
  void Release(uint64_t fh);

  // Namespace changes: done inside a clone; elsewhere EROFS (backups/ and the top), or EPERM
  // (wal/ is append-only, clones/ holds what `pgbackfs clone` makes).
  int Mknod(uint64_t parent, const std::string& name, mode_t mode, EntryOut* out);
  int Mkdir(uint64_t parent, const std::string& name, mode_t mode, EntryOut* out);
  int Symlink(uint64_t parent, const std::string& name, const std::string& target, EntryOut* out);
  int Unlink(uint64_t parent, const std::string& name);
  int Rmdir(uint64_t parent, const std::string& name);
  // `flags`: RENAME_NOREPLACE is honoured; RENAME_EXCHANGE and RENAME_WHITEOUT are EINVAL.
  // Between two clones, or a clone and wal/: EXDEV.
  int Rename(uint64_t parent, const std::string& name, uint64_t newparent,
             const std::string& newname, unsigned flags);
  // What is refused everywhere (hard links; clones have none): EROFS, or EPERM in wal/ and clones.
  int DenyChange(uint64_t parent);
  // fsync and fsyncdir: in a clone, every earlier change is durable when it returns 0. Elsewhere
  // nothing is buffered (snapshots never change; a WAL file is stored by the flush of close()).
  int Fsync(uint64_t ino);
  // Mode 0 extends a clone file with zeros to offset + length if that is past its end; other
  // modes are EOPNOTSUPP.
  int Fallocate(uint64_t ino, int mode, uint64_t offset, uint64_t length);
  int StatFs(struct statvfs* st);

  const FsOptions& options() const { return options_; }
  InodeTable* inodes() { return &inodes_; }
  DirCache* dir_cache() { return &dir_cache_; }
  size_t open_handles() const;

 private:
  struct Handle;
  struct FileHandle;
  struct WriteHandle;
  struct DirHandle;
  struct CloneFileHandle;

  void FillAttr(const Node& node, uint64_t size, struct stat* st) const;
  int NodeAttr(const Node& node, struct stat* st);
  void FillEntry(const Node& node, uint64_t size, EntryOut* out) const;
  double AttrTimeout(const Node& node) const;
  int LookupNode(const Node& parent, const std::string& name, Node* proto);
  int LoadDir(DirHandle* dir);
  int DenyChange(const Node& parent) const;

  // Clone nodes (fs/filesystem_clone.cc).
  void FillCloneAttr(const CloneAttr& a, uint64_t ino, struct stat* st) const;
  void FillCloneEntry(const Node& node, const CloneAttr& a, EntryOut* out) const;
  double CloneTimeout(const Node& node) const;
  int CloneError(const Node& node, const char* op, const Status& s) const;
  int LookupCloneRoot(const std::string& name, EntryOut* out);
  int LookupInClone(const Node& parent, const std::string& name, EntryOut* out);
  // Counts a lookup of `attr` (a child of `parent`) and fills `out`.
  void AddCloneEntry(const Node& parent, const std::string& name, const CloneAttr& attr,
                     EntryOut* out);
  int CloneGetAttr(const Node& node, struct stat* st, double* timeout);
  int SetCloneAttr(const Node& node, const AttrChange& change, struct stat* st, double* timeout);
  int CloneOpen(std::shared_ptr<const Node> node, int flags, OpenOut* out);
  int CloneRead(const CloneFileHandle& h, uint64_t offset, size_t size, std::string* out);
  int CloneWrite(const CloneFileHandle& h, uint64_t offset, std::string_view data);
  static void SyncWrites(int flags, CloneFileHandle* h, OpenOut* out);
  int CloneCreate(const Node& parent, const std::string& name, mode_t mode, int flags,
                  EntryOut* entry, OpenOut* out);
  int CloneReadDir(DirHandle* dir, uint64_t offset, bool plus,
                   const std::function<bool(const DirItem&)>& add);
  Result<DirCache::Listing> Listing(const Node& dir);

  uint64_t AddHandle(std::shared_ptr<Handle> handle);
  std::shared_ptr<Handle> GetHandle(uint64_t fh) const;
  // The size of a WAL file being written through some handle of `ino`; false if none.
  bool WriterSize(uint64_t ino, uint64_t* size);
  std::shared_ptr<WriteHandle> AnyWriter(uint64_t ino);

  Repository* repo_;
  WalArchive wal_;
  FsOptions options_;
  InodeTable inodes_;
  DirCache dir_cache_;

  mutable std::mutex handles_mu_;
  uint64_t next_fh_ = 1;                                           // guarded by handles_mu_
  std::unordered_map<uint64_t, std::shared_ptr<Handle>> handles_;  // guarded by handles_mu_
  std::unordered_multimap<uint64_t, std::shared_ptr<WriteHandle>> writers_;  // ino ->; ditto
};

}  // namespace pgbackfs
