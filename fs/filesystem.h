// What the mount shows, independent of FUSE: every operation takes and returns plain values and
// an errno (0 for success), so fs/fuse_ops.cc only decodes a request, calls one method and
// replies, and the unit tests drive this class without a kernel.
//
//   MOUNT/backups/<id>/...  every snapshot, read-only (changes: EROFS)
//   MOUNT/wal/<name>        the WAL archive: create + write + close archives a file (the commit
//                           happens in flush, so close() reports it); no unlink, rename or mkdir
//                           (EPERM: the archive is append-only)
//   MOUNT/clones/           empty and read-only until clones exist
//
// Thread-safe: FUSE calls it from several threads at once.
#pragma once

#include <sys/stat.h>
#include <sys/statvfs.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
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
  bool direct_io = false;   // writes into wal/ bypass the page cache
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
  // `set_size`: truncate a WAL file being written to `size` (through `fh` if not 0). Other
  // attribute changes are refused outside wal/ and ignored on WAL files.
  int SetAttr(uint64_t ino, bool set_size, uint64_t size, uint64_t fh, struct stat* st,
              double* timeout);
  int ReadLink(uint64_t ino, std::string* target);

  int OpenDir(uint64_t ino, uint64_t* fh);
  // Calls `add` for each item from `offset` on until it returns false (the reply is full). With
  // `plus`, items carry attributes and count a lookup, except "." and "..", and except an item
  // `add` refused.
  int ReadDir(uint64_t fh, uint64_t offset, bool plus,
              const std::function<bool(const DirItem&)>& add);
  void ReleaseDir(uint64_t fh);

  int Open(uint64_t ino, int flags, OpenOut* out);
  int Create(uint64_t parent, const std::string& name, int flags, EntryOut* entry, OpenOut* out);
  // Appends the bytes of [offset, offset + size) to `out` (fewer at the end of the file).
  int Read(uint64_t fh, uint64_t offset, size_t size, std::string* out);
  int Write(uint64_t fh, uint64_t offset, std::string_view data);
  // For a file written into wal/: commits it (invariant 1). A no-op for other files.
  int Flush(uint64_t fh);
  void Release(uint64_t fh);

  // mkdir, mknod, symlink, link, unlink, rmdir in `parent`: EROFS, or EPERM in wal/.
  int DenyChange(uint64_t parent);
  int DenyRename(uint64_t parent, uint64_t newparent);
  int StatFs(struct statvfs* st);

  InodeTable* inodes() { return &inodes_; }
  DirCache* dir_cache() { return &dir_cache_; }
  size_t open_handles() const;

 private:
  struct Handle;
  struct FileHandle;
  struct WriteHandle;
  struct DirHandle;

  void FillAttr(const Node& node, uint64_t size, struct stat* st) const;
  int NodeAttr(const Node& node, struct stat* st);
  void FillEntry(const Node& node, uint64_t size, EntryOut* out) const;
  double AttrTimeout(const Node& node) const;
  int LookupNode(const Node& parent, const std::string& name, Node* proto);
  int LoadDir(DirHandle* dir);
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
