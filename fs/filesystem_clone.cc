// MOUNT/clones/: one directory per clone, each a writable tree served by the clone's CloneFs
// (repo/clone.h). Nodes carry the clone and its inode number; every attribute and every byte is
// read from the clone when asked, so nothing here goes stale.
#include <fcntl.h>
#include <linux/fs.h>
#include <spdlog/spdlog.h>

#include <cerrno>

#include "fs/errno_map.h"
#include "fs/filesystem.h"
#include "fs/filesystem_internal.h"

namespace pgbackfs {

namespace {

constexpr size_t kDirWindow = 256;  // clone directory entries read per step of the cursor

std::string ChildPath(const Node& parent, const std::string& name) {
  return parent.path.empty() ? name : parent.path + "/" + name;
}

}  // namespace

// --- attributes --------------------------------------------------------------------------------

void Filesystem::FillCloneAttr(const CloneAttr& a, uint64_t ino, struct stat* st) const {
  *st = {};
  st->st_ino = ino;
  st->st_uid = options_.uid;
  st->st_gid = options_.gid;
  st->st_mode = TypeBits(a.type) | (a.mode & 07777);
  st->st_nlink = a.nlink;
  st->st_size = static_cast<off_t>(a.size);
  st->st_blocks = static_cast<blkcnt_t>((a.size + 511) / 512);
  st->st_blksize = kBlockSize;
  st->st_mtim.tv_sec = a.mtime_sec;
  st->st_mtim.tv_nsec = a.mtime_nsec;
  st->st_atim = st->st_mtim;
  st->st_ctim.tv_sec = a.ctime_sec;
  st->st_ctim.tv_nsec = a.ctime_nsec;
}

double Filesystem::CloneTimeout(const Node&) const { return options_.clone_timeout; }

void Filesystem::FillCloneEntry(const Node& node, const CloneAttr& a, EntryOut* out) const {
  out->ino = node.ino;
  FillCloneAttr(a, node.ino, &out->attr);
  out->attr_timeout = CloneTimeout(node);
  // clones/<name> can be dropped and made again by a forwarded command at any moment: the kernel
  // asks again on every path walk through it.
  out->entry_timeout = node.kind == NodeKind::kCloneRoot ? 0 : CloneTimeout(node);
}

int Filesystem::CloneError(const Node& node, const char* op, const Status& s) const {
  int err = StatusToErrno(s);
  if (err == EIO) {
    spdlog::error("{} in {}: {}", op, Describe(node), s.ToString());
  } else if (err == ENOSPC) {
    spdlog::warn("{} in {}: {}", op, Describe(node), s.ToString());
  }
  return err;
}

int Filesystem::CloneGetAttr(const Node& node, struct stat* st, double* timeout) {
  Result<CloneAttr> attr = node.clone->GetAttr(node.clone_ino);
  if (!attr.ok()) return CloneError(node, "getattr", attr.status());
  FillCloneAttr(*attr, node.ino, st);
  *timeout = CloneTimeout(node);
  return 0;
}

int Filesystem::SetCloneAttr(const Node& node, const AttrChange& change, struct stat* st,
                             double* timeout) {
  // Every file shows the --owner uid and gid; a chown to them changes nothing, any other is
  // refused as it would be for an unprivileged owner.
  if ((change.uid && *change.uid != options_.uid) || (change.gid && *change.gid != options_.gid)) {
    return EPERM;
  }
  CloneSetAttr set;
  set.size = change.size;
  if (change.mode) set.mode = *change.mode & 07777;
  if (change.mtime) {
    set.mtime = std::make_pair(static_cast<int64_t>(change.mtime->tv_sec),
                               static_cast<uint32_t>(change.mtime->tv_nsec));
  }
  Result<CloneAttr> attr = (set.size || set.mode || set.mtime)
                               ? node.clone->SetAttr(node.clone_ino, set)
                               : node.clone->GetAttr(node.clone_ino);
  if (!attr.ok() && attr.status().IsNotFound() && !set.size && !set.mode) {
    // With the writeback cache the kernel flushes the times of a file it wrote after the file was
    // removed and closed (its inode is still cached). Nobody can see them: no error to report.
    CloneAttr gone;
    gone.ino = node.clone_ino;
    gone.type = node.entry.type;
    gone.mode = 0;
    gone.nlink = 0;
    attr = gone;
  }
  if (!attr.ok()) return CloneError(node, "setattr", attr.status());
  FillCloneAttr(*attr, node.ino, st);
  *timeout = CloneTimeout(node);
  return 0;
}

// --- names -------------------------------------------------------------------------------------

void Filesystem::AddCloneEntry(const Node& parent, const std::string& name, const CloneAttr& attr,
                               EntryOut* out) {
  Node proto;
  proto.kind = NodeKind::kCloneEntry;
  proto.parent = parent.ino;
  proto.path = ChildPath(parent, name);
  proto.entry.name = name;
  proto.entry.type = attr.type;
  proto.clone = parent.clone;
  proto.clone_ino = attr.ino;
  std::shared_ptr<const Node> node = inodes_.Lookup(std::move(proto));
  FillCloneEntry(*node, attr, out);
}

int Filesystem::LookupCloneRoot(const std::string& name, EntryOut* out) {
  if (!CloneFs::ValidateName(name).ok()) return ENOENT;
  // Read afresh every time: `pgbackfs clone create|drop`, forwarded to this daemon, changes the
  // list, and the kernel caches no negative entry (an error reply creates none).
  Result<std::shared_ptr<CloneFs>> clone = CloneFs::Open(repo_, name);
  if (!clone.ok()) {
    if (clone.status().IsNotFound()) return ENOENT;
    spdlog::error("lookup of clone '{}': {}", name, clone.status().ToString());
    return StatusToErrno(clone.status());
  }
  Result<CloneAttr> attr = (*clone)->GetAttr(kCloneRootIno);
  if (!attr.ok()) {
    if (attr.status().IsNotFound()) return ENOENT;  // dropped meanwhile
    spdlog::error("lookup of clone '{}': {}", name, attr.status().ToString());
    return StatusToErrno(attr.status());
  }
  Node proto;
  proto.kind = NodeKind::kCloneRoot;
  proto.parent = InodeTable::kClonesIno;
  proto.entry.name = name;
  proto.entry.type = EntryType::kDirectory;
  proto.clone = std::move(clone).value();
  proto.clone_ino = kCloneRootIno;
  std::shared_ptr<const Node> node = inodes_.Lookup(std::move(proto));
  FillCloneEntry(*node, *attr, out);
  return 0;
}

int Filesystem::LookupInClone(const Node& parent, const std::string& name, EntryOut* out) {
  if (!parent.is_dir()) return ENOTDIR;
  Result<CloneAttr> attr = parent.clone->Lookup(parent.clone_ino, name);
  if (!attr.ok()) return CloneError(parent, "lookup", attr.status());
  AddCloneEntry(parent, name, *attr, out);
  return 0;
}

int Filesystem::Mknod(uint64_t parent_ino, const std::string& name, mode_t mode, EntryOut* out) {
  std::shared_ptr<const Node> parent = inodes_.Get(parent_ino);
  if (!parent) return ENOENT;
  if (!parent->clone) return DenyChange(*parent);
  if (!S_ISREG(mode)) return EPERM;  // a clone holds files, directories and symlinks only
  if (name.size() > kNameMax) return ENAMETOOLONG;
  Result<CloneAttr> attr = parent->clone->CreateFile(parent->clone_ino, name, mode & 07777);
  if (!attr.ok()) return CloneError(*parent, "mknod", attr.status());
  AddCloneEntry(*parent, name, *attr, out);
  return 0;
}

int Filesystem::Mkdir(uint64_t parent_ino, const std::string& name, mode_t mode, EntryOut* out) {
  std::shared_ptr<const Node> parent = inodes_.Get(parent_ino);
  if (!parent) return ENOENT;
  if (!parent->clone) return DenyChange(*parent);
  if (name.size() > kNameMax) return ENAMETOOLONG;
  Result<CloneAttr> attr = parent->clone->Mkdir(parent->clone_ino, name, mode & 07777);
  if (!attr.ok()) return CloneError(*parent, "mkdir", attr.status());
  AddCloneEntry(*parent, name, *attr, out);
  return 0;
}

int Filesystem::Symlink(uint64_t parent_ino, const std::string& name, const std::string& target,
                        EntryOut* out) {
  std::shared_ptr<const Node> parent = inodes_.Get(parent_ino);
  if (!parent) return ENOENT;
  if (!parent->clone) return DenyChange(*parent);
  if (name.size() > kNameMax) return ENAMETOOLONG;
  Result<CloneAttr> attr = parent->clone->Symlink(parent->clone_ino, name, target);
  if (!attr.ok()) return CloneError(*parent, "symlink", attr.status());
  AddCloneEntry(*parent, name, *attr, out);
  return 0;
}

int Filesystem::Unlink(uint64_t parent_ino, const std::string& name) {
  std::shared_ptr<const Node> parent = inodes_.Get(parent_ino);
  if (!parent) return ENOENT;
  if (!parent->clone) return DenyChange(*parent);
  Status s = parent->clone->Unlink(parent->clone_ino, name);
  return s.ok() ? 0 : CloneError(*parent, "unlink", s);
}

int Filesystem::Rmdir(uint64_t parent_ino, const std::string& name) {
  std::shared_ptr<const Node> parent = inodes_.Get(parent_ino);
  if (!parent) return ENOENT;
  if (!parent->clone) return DenyChange(*parent);
  Status s = parent->clone->Rmdir(parent->clone_ino, name);
  return s.ok() ? 0 : CloneError(*parent, "rmdir", s);
}

int Filesystem::Rename(uint64_t parent_ino, const std::string& name, uint64_t newparent_ino,
                       const std::string& newname, unsigned flags) {
  std::shared_ptr<const Node> parent = inodes_.Get(parent_ino);
  std::shared_ptr<const Node> newparent = inodes_.Get(newparent_ino);
  if (!parent || !newparent) return ENOENT;
  if (parent->area() == Area::kBackups || newparent->area() == Area::kBackups ||
      parent->area() == Area::kTop || newparent->area() == Area::kTop) {
    return EROFS;
  }
  if (!parent->clone || !newparent->clone) {
    // wal/ is append-only and clones/ holds what `pgbackfs clone` makes.
    if (parent->area() == newparent->area() || parent->kind == NodeKind::kClonesDir ||
        newparent->kind == NodeKind::kClonesDir) {
      return EPERM;
    }
    return EXDEV;  // between a clone and wal/
  }
  if (parent->clone != newparent->clone) return EXDEV;
  if (flags & ~static_cast<unsigned>(RENAME_NOREPLACE)) return EINVAL;  // EXCHANGE, WHITEOUT
  if (newname.size() > kNameMax) return ENAMETOOLONG;
  Status s = parent->clone->Rename(parent->clone_ino, name, newparent->clone_ino, newname,
                                   flags & RENAME_NOREPLACE);
  return s.ok() ? 0 : CloneError(*parent, "rename", s);
}

// --- directories -------------------------------------------------------------------------------

int Filesystem::CloneReadDir(DirHandle* dir, uint64_t offset, bool plus,
                             const std::function<bool(const DirItem&)>& add) {
  const Node& node = *dir->node;
  // Reads the window that follows `after` ("" = the first one).
  auto load = [&](const std::string& after, uint64_t start) -> int {
    dir->window.clear();
    dir->window_start = start;
    Status s = node.clone->ReadDir(node.clone_ino, after,
                                   [&](const std::string& name, CloneIno ino, EntryType type) {
                                     dir->window.push_back({name, ino, type});
                                     return dir->window.size() < kDirWindow + 1;
                                   });
    if (!s.ok()) return CloneError(node, "readdir", s);
    // One more than a window was asked for, to know whether anything follows.
    dir->window_is_last = dir->window.size() <= kDirWindow;
    if (!dir->window_is_last) dir->window.pop_back();
    dir->window_loaded = true;
    return 0;
  };
  // Offsets: 1 after ".", 2 after "..", 3 + i after the i-th entry.
  for (uint64_t pos = offset;; ++pos) {
    DirItem item;
    item.next_offset = pos + 1;
    if (pos < 2) {
      item.name = pos == 0 ? "." : "..";
      item.type = S_IFDIR;
      item.ino = pos == 0 ? node.ino : node.parent;
      item.entry.attr.st_ino = item.ino;
      item.entry.attr.st_mode = S_IFDIR;
      if (!add(item)) return 0;
      continue;
    }
    uint64_t index = pos - 2;
    // From the start (opendir or rewinddir: a fresh listing), or sought back: read from the top.
    if (!dir->window_loaded || offset == 0 || index < dir->window_start) {
      if (int err = load("", 0)) return err;
      offset = 1;  // reload only once per call
    }
    while (index >= dir->window_start + dir->window.size()) {
      if (dir->window_is_last) return 0;  // the end
      std::string after = dir->window.back().name;
      if (int err = load(after, dir->window_start + dir->window.size())) return err;
    }
    const DirHandle::CloneItem& e = dir->window[index - dir->window_start];
    item.name = e.name;
    item.type = TypeBits(e.type);
    if (plus) {
      Result<CloneAttr> attr = node.clone->GetAttr(e.ino);
      if (!attr.ok()) {
        if (attr.status().IsNotFound()) continue;  // removed since it was listed
        return CloneError(node, "readdir", attr.status());
      }
      EntryOut entry;
      AddCloneEntry(node, e.name, *attr, &entry);
      item.entry = entry;
      item.ino = entry.ino;
      if (!add(item)) {
        inodes_.Forget(entry.ino, 1);  // not handed to the kernel after all
        return 0;
      }
    } else {
      std::shared_ptr<const Node> known = inodes_.FindClone(node.clone->info().id, e.ino);
      // Not looked up yet: any number will do, readdir's d_ino is informational.
      item.ino = known ? known->ino : (uint64_t{1} << 63) | e.ino;
      if (!add(item)) return 0;
    }
  }
}

// --- files -------------------------------------------------------------------------------------

// A file opened O_DSYNC or O_SYNC (postgres's WAL with wal_sync_method = open_datasync) bypasses
// the page cache: each write comes here at once and is made durable before it is answered, so a
// commit costs one request. Through the page cache it would cost a write request at writeback
// plus an fsync request (and often a setattr for the times), which is what the kernel does for
// O_DSYNC on a writeback-cached FUSE file. The kernel does not sync direct writes itself: it
// passes the flag and leaves durability to the server.
void Filesystem::SyncWrites(int flags, CloneFileHandle* h, OpenOut* out) {
  if ((flags & O_ACCMODE) == O_RDONLY || !(flags & O_DSYNC)) return;
  h->sync = true;
  out->direct_io = true;
}

int Filesystem::CloneOpen(std::shared_ptr<const Node> node, int flags, OpenOut* out) {
  Result<CloneAttr> attr = Status::OK();
  if (flags & O_TRUNC) {  // FUSE_CAP_ATOMIC_O_TRUNC: no separate setattr comes
    CloneSetAttr set;
    set.size = 0;
    attr = node->clone->SetAttr(node->clone_ino, set);
  } else {
    attr = node->clone->GetAttr(node->clone_ino);  // gone if unlinked or its clone dropped
  }
  if (!attr.ok()) return CloneError(*node, "open", attr.status());
  node->clone->OpenFile(node->clone_ino);  // Release() closes it
  auto h = std::make_shared<CloneFileHandle>();
  h->node = std::move(node);
  SyncWrites(flags, h.get(), out);
  out->fh = AddHandle(h);
  out->keep_cache = options_.clone_keep_cache;
  out->noflush = true;  // nothing to do on close: writes reach the clone as they come
  return 0;
}

int Filesystem::CloneCreate(const Node& parent, const std::string& name, mode_t mode, int flags,
                            EntryOut* entry, OpenOut* out) {
  Result<CloneAttr> attr = parent.clone->CreateFile(parent.clone_ino, name, mode & 07777);
  if (!attr.ok() && attr.status().IsAlreadyExists()) {
    // The kernel sends create only for a name it did not find; someone made it meanwhile.
    if (flags & O_EXCL) return EEXIST;
    attr = parent.clone->Lookup(parent.clone_ino, name);
    if (attr.ok() && attr->type == EntryType::kDirectory) return EISDIR;
    if (attr.ok() && (flags & O_TRUNC)) {
      CloneSetAttr set;
      set.size = 0;
      attr = parent.clone->SetAttr(attr->ino, set);
    }
  }
  if (!attr.ok()) return CloneError(parent, "create", attr.status());
  AddCloneEntry(parent, name, *attr, entry);
  parent.clone->OpenFile(attr->ino);  // Release() closes it
  auto h = std::make_shared<CloneFileHandle>();
  h->node = inodes_.Get(entry->ino);
  SyncWrites(flags, h.get(), out);
  out->fh = AddHandle(h);
  out->keep_cache = options_.clone_keep_cache;
  out->noflush = true;
  return 0;
}

int Filesystem::CloneRead(const CloneFileHandle& h, uint64_t offset, size_t size,
                          std::string* out) {
  Status s = h.node->clone->Read(h.node->clone_ino, offset, size, out);
  if (!s.ok()) {
    int err = StatusToErrno(s);
    if (err == EIO) {
      // Invariant 5: never wrong bytes. Name what failed so the operator can find it.
      spdlog::error("read error in {} at offset {} (+{}): {}", Describe(*h.node), offset, size,
                    s.ToString());
    }
    return err;
  }
  return 0;
}

int Filesystem::CloneWrite(const CloneFileHandle& h, uint64_t offset, std::string_view data) {
  Status s = h.node->clone->Write(h.node->clone_ino, offset, data, h.sync);
  if (!s.ok()) {
    int err = StatusToErrno(s);
    if (err == EIO || err == ENOSPC) {
      spdlog::error("write error in {} at offset {} (+{}): {}", Describe(*h.node), offset,
                    data.size(), s.ToString());
    }
    return err;
  }
  return 0;
}

int Filesystem::Fsync(uint64_t ino) {
  std::shared_ptr<const Node> node = inodes_.Get(ino);
  if (!node || !node->clone) return 0;
  // The clone's changes share the repository's log: one sync makes all of them durable.
  Status s = node->clone->Fsync();
  return s.ok() ? 0 : CloneError(*node, "fsync", s);
}

int Filesystem::Fallocate(uint64_t ino, int mode, uint64_t offset, uint64_t length) {
  std::shared_ptr<const Node> node = inodes_.Get(ino);
  if (!node) return ENOENT;
  if (!node->clone) return node->area() == Area::kWal ? EOPNOTSUPP : EROFS;
  if (mode != 0) return EOPNOTSUPP;  // KEEP_SIZE, PUNCH_HOLE: a clone has no holes to keep
  if (node->is_dir()) return EISDIR;
  // Extends with zeros (reading past the old end of a clone file gives zeros without storing
  // any), in one step with the size check so that a concurrent write past it is never cut off.
  CloneSetAttr set;
  set.size = offset + length;
  set.grow_only = true;
  Result<CloneAttr> attr = node->clone->SetAttr(node->clone_ino, set);
  return attr.ok() ? 0 : CloneError(*node, "fallocate", attr.status());
}

}  // namespace pgbackfs
