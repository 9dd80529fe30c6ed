#include "fs/filesystem.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>

#include <cerrno>
#include <ctime>

#include "fs/errno_map.h"
#include "fs/filesystem_internal.h"

namespace pgbackfs {

mode_t TypeBits(EntryType type) {
  switch (type) {
    case EntryType::kDirectory:
      return S_IFDIR;
    case EntryType::kSymlink:
      return S_IFLNK;
    case EntryType::kFile:
      break;
  }
  return S_IFREG;
}

std::string Describe(const Node& node) {
  if (node.clone) {
    return "clone '" + node.clone->info().name + "' '" + (node.path.empty() ? "/" : node.path) +
           "' (clone inode " + std::to_string(node.clone_ino) + ")";
  }
  if (node.area() == Area::kWal) return "wal/" + node.path;
  if (node.snapshot_id.empty()) return node.path;
  return "snapshot " + node.snapshot_id + " '" + (node.path.empty() ? "/" : node.path) + "'";
}

Filesystem::Filesystem(Repository* repo, const FsOptions& options)
    : repo_(repo),
      wal_(repo),
      options_(options),
      inodes_(static_cast<int64_t>(time(nullptr))),
      dir_cache_(options.dir_cache_bytes) {}

Filesystem::~Filesystem() = default;

// --- attributes --------------------------------------------------------------------------------

void Filesystem::FillAttr(const Node& node, uint64_t size, struct stat* st) const {
  *st = {};
  st->st_ino = node.ino;
  st->st_uid = options_.uid;
  st->st_gid = options_.gid;
  const Entry& e = node.entry;
  switch (e.type) {
    case EntryType::kDirectory:
      st->st_mode = S_IFDIR | 0700;
      st->st_nlink = 2;
      break;
    case EntryType::kSymlink:
      st->st_mode = S_IFLNK | 0777;
      st->st_nlink = 1;
      break;
    case EntryType::kFile:
      st->st_mode = S_IFREG | 0600;
      st->st_nlink = 1;
      break;
  }
  st->st_size = static_cast<off_t>(size);
  st->st_blocks = static_cast<blkcnt_t>((size + 511) / 512);
  st->st_blksize = node.area() == Area::kWal ? kWalBlockSize : kBlockSize;
  st->st_mtim.tv_sec = e.mtime_sec;
  st->st_mtim.tv_nsec = e.mtime_nsec;
  st->st_atim = st->st_mtim;
  st->st_ctim = st->st_mtim;
}

double Filesystem::AttrTimeout(const Node& node) const {
  switch (node.kind) {
    case NodeKind::kCloneRoot:
    case NodeKind::kCloneEntry:
      return options_.clone_timeout;
    case NodeKind::kSnapshotEntry:
      return options_.immutable_timeout;
    case NodeKind::kWalNew:
      return 0;
    default:
      return options_.dynamic_timeout;
  }
}

void Filesystem::FillEntry(const Node& node, uint64_t size, EntryOut* out) const {
  out->ino = node.ino;
  FillAttr(node, size, &out->attr);
  out->attr_timeout = AttrTimeout(node);
  out->entry_timeout = out->attr_timeout;
}

int Filesystem::NodeAttr(const Node& node, struct stat* st) {
  uint64_t size = node.entry.size();
  // An archived file (kWalFile) never changes: a rewrite of it in progress, which its commit
  // accepts only if identical, must not show its size, or the kernel would cut its cached
  // copy and readers would see a short file.
  if (node.kind == NodeKind::kWalNew) {
    uint64_t writing;
    if (WriterSize(node.ino, &writing)) {
      size = writing;
    } else {
      // Nobody writes it any more: it exists only if it was archived.
      Result<WalFileInfo> info = wal_.Get(node.path);
      if (!info.ok()) return info.status().IsNotFound() ? ENOENT : StatusToErrno(info.status());
      size = info->data.size;
    }
  }
  FillAttr(node, size, st);
  return 0;
}

int Filesystem::GetAttr(uint64_t ino, struct stat* st, double* timeout) {
  std::shared_ptr<const Node> node = inodes_.Get(ino);
  if (!node) return ENOENT;
  if (node->clone) return CloneGetAttr(*node, st, timeout);
  *timeout = AttrTimeout(*node);
  return NodeAttr(*node, st);
}

int Filesystem::SetAttr(uint64_t ino, const AttrChange& change, struct stat* st, double* timeout) {
  std::shared_ptr<const Node> node = inodes_.Get(ino);
  if (!node) return ENOENT;
  if (node->clone) return SetCloneAttr(*node, change, st, timeout);
  if (node->area() != Area::kWal) return EROFS;
  if (node->is_dir()) return EPERM;
  if (change.size) {
    uint64_t size = *change.size;
    std::shared_ptr<WriteHandle> w = std::dynamic_pointer_cast<WriteHandle>(GetHandle(change.fh));
    if (!w) w = AnyWriter(ino);
    if (!w) return EPERM;  // an archived file never changes
    std::lock_guard<std::mutex> lock(w->mu);
    Status s = w->writer->Truncate(size);
    if (!s.ok()) {
      spdlog::warn("truncate {} to {}: {}", Describe(*node), size, s.ToString());
      return StatusToErrno(s);
    }
    w->dirty = true;
  }
  *timeout = AttrTimeout(*node);
  return NodeAttr(*node, st);
}

int Filesystem::ReadLink(uint64_t ino, std::string* target) {
  std::shared_ptr<const Node> node = inodes_.Get(ino);
  if (!node) return ENOENT;
  if (node->entry.type != EntryType::kSymlink) return EINVAL;
  if (node->clone) {
    Result<std::string> link = node->clone->Readlink(node->clone_ino);
    if (!link.ok()) return CloneError(*node, "readlink", link.status());
    *target = std::move(link).value();
    return 0;
  }
  *target = node->entry.link_target;
  return 0;
}

// --- names -------------------------------------------------------------------------------------

Result<DirCache::Listing> Filesystem::Listing(const Node& dir) {
  return dir_cache_.Get(dir.entry, [this, &dir](std::vector<Entry>* entries) {
    return repo_->reader()->ReadDir(dir.entry, entries);
  });
}

int Filesystem::LookupNode(const Node& parent, const std::string& name, Node* proto) {
  if (name.size() > kNameMax) return ENAMETOOLONG;
  proto->parent = parent.ino;
  switch (parent.kind) {
    case NodeKind::kRoot: {
      std::shared_ptr<const Node> fixed = inodes_.Find(InodeTable::kRootIno, name);
      if (!fixed) return ENOENT;
      *proto = *fixed;
      return 0;
    }
    case NodeKind::kBackupsDir: {
      if (name == "latest") return ENOENT;  // GetSnapshot's alias is not a directory entry
      Result<SnapshotInfo> info = repo_->GetSnapshot(name);
      if (!info.ok()) {
        const Status& s = info.status();
        if (s.IsNotFound() || s.code() == Status::Code::kInvalidArgument) return ENOENT;
        spdlog::error("lookup of snapshot '{}': {}", name, s.ToString());
        return StatusToErrno(s);
      }
      proto->kind = NodeKind::kSnapshotRoot;
      proto->snapshot_id = info->id;
      proto->entry = info->root;
      proto->entry.name = info->id;
      proto->entry.mtime_sec = info->stop_time;
      proto->entry.mtime_nsec = 0;
      return 0;
    }
    case NodeKind::kWalDir: {
      WalFileKind kind;
      if (!ParseWalFileName(name, &kind).ok()) return ENOENT;
      Result<WalFileInfo> info = wal_.Get(name);
      if (!info.ok()) {
        if (info.status().IsNotFound()) return ENOENT;
        spdlog::error("lookup of wal/{}: {}", name, info.status().ToString());
        return StatusToErrno(info.status());
      }
      proto->kind = NodeKind::kWalFile;
      proto->path = name;
      proto->entry.name = name;
      proto->entry.type = EntryType::kFile;
      proto->entry.mode = 0600;
      proto->entry.data = info->data;
      proto->entry.mtime_sec = info->archived_time;
      return 0;
    }
    case NodeKind::kClonesDir:
    case NodeKind::kCloneRoot:
    case NodeKind::kCloneEntry:
      return ENOENT;  // Lookup() handles them
    case NodeKind::kSnapshotRoot:
    case NodeKind::kSnapshotEntry: {
      if (!parent.is_dir()) return ENOTDIR;
      Result<DirCache::Listing> listing = Listing(parent);
      if (!listing.ok()) {
        spdlog::error("reading directory {}: {}", Describe(parent), listing.status().ToString());
        return EIO;
      }
      const Entry* e = DirCache::Find(**listing, name);
      if (!e) return ENOENT;
      proto->kind = NodeKind::kSnapshotEntry;
      proto->snapshot_id = parent.snapshot_id;
      proto->path = parent.path.empty() ? name : parent.path + "/" + name;
      proto->entry = *e;
      return 0;
    }
    case NodeKind::kWalFile:
    case NodeKind::kWalNew:
      return ENOTDIR;
  }
  return ENOENT;
}

int Filesystem::Lookup(uint64_t parent_ino, const std::string& name, EntryOut* out) {
  std::shared_ptr<const Node> parent = inodes_.Get(parent_ino);
  if (!parent) return ENOENT;
  if (name.size() > kNameMax) return ENAMETOOLONG;
  if (parent->kind == NodeKind::kClonesDir) return LookupCloneRoot(name, out);
  if (parent->clone) return LookupInClone(*parent, name, out);
  Node proto;
  int err = LookupNode(*parent, name, &proto);
  if (err) return err;
  std::shared_ptr<const Node> node = inodes_.Lookup(std::move(proto));
  FillEntry(*node, node->entry.size(), out);
  return 0;
}

void Filesystem::Forget(uint64_t ino, uint64_t nlookup) { inodes_.Forget(ino, nlookup); }

// --- directories -------------------------------------------------------------------------------

int Filesystem::OpenDir(uint64_t ino, uint64_t* fh) {
  std::shared_ptr<const Node> node = inodes_.Get(ino);
  if (!node) return ENOENT;
  if (!node->is_dir()) return ENOTDIR;
  auto dir = std::make_shared<DirHandle>();
  dir->node = node;
  *fh = AddHandle(dir);
  return 0;
}

int Filesystem::LoadDir(DirHandle* dir) {
  const Node& node = *dir->node;
  std::vector<Node>& items = dir->items;
  items.clear();
  dir->listing.reset();
  auto proto = [&node]() {
    Node n;
    n.parent = node.ino;
    n.snapshot_id = node.snapshot_id;
    return n;
  };
  switch (node.kind) {
    case NodeKind::kRoot:
      for (const char* name : {"backups", "wal", "clones"}) {
        items.push_back(*inodes_.Find(InodeTable::kRootIno, name));
      }
      return 0;
    case NodeKind::kBackupsDir: {
      Result<std::vector<SnapshotInfo>> snaps = repo_->ListSnapshots();
      if (!snaps.ok()) {
        spdlog::error("listing snapshots: {}", snaps.status().ToString());
        return StatusToErrno(snaps.status());
      }
      for (const SnapshotInfo& info : *snaps) {
        Node n = proto();
        n.kind = NodeKind::kSnapshotRoot;
        n.snapshot_id = info.id;
        n.entry = info.root;
        n.entry.name = info.id;
        n.entry.mtime_sec = info.stop_time;
        n.entry.mtime_nsec = 0;
        items.push_back(std::move(n));
      }
      return 0;
    }
    case NodeKind::kWalDir: {
      Status s = wal_.List([&](const WalFileInfo& info) {
        Node n = proto();
        n.kind = NodeKind::kWalFile;
        n.path = info.name;
        n.entry.name = info.name;
        n.entry.type = EntryType::kFile;
        n.entry.mode = 0600;
        n.entry.data = info.data;
        n.entry.mtime_sec = info.archived_time;
        items.push_back(std::move(n));
        return Status::OK();
      });
      if (!s.ok()) {
        spdlog::error("listing wal/: {}", s.ToString());
        return StatusToErrno(s);
      }
      return 0;
    }
    case NodeKind::kClonesDir: {
      Result<std::vector<CloneInfo>> clones = CloneFs::List(repo_);
      if (!clones.ok()) {
        spdlog::error("listing clones: {}", clones.status().ToString());
        return StatusToErrno(clones.status());
      }
      for (const CloneInfo& info : *clones) {
        Result<std::shared_ptr<CloneFs>> clone = CloneFs::Open(repo_, info.name);
        if (!clone.ok()) continue;  // dropped since
        Node n = proto();
        n.kind = NodeKind::kCloneRoot;
        n.entry.name = info.name;
        n.entry.type = EntryType::kDirectory;
        n.clone = std::move(clone).value();
        n.clone_ino = kCloneRootIno;
        items.push_back(std::move(n));
      }
      return 0;
    }
    case NodeKind::kCloneRoot:
    case NodeKind::kCloneEntry:
      return ENOTDIR;  // ReadDir() handles them
    case NodeKind::kSnapshotRoot:
    case NodeKind::kSnapshotEntry: {
      Result<DirCache::Listing> listing = Listing(node);
      if (!listing.ok()) {
        spdlog::error("reading directory {}: {}", Describe(node), listing.status().ToString());
        return EIO;
      }
      dir->listing = std::move(listing).value();
      return 0;
    }
    case NodeKind::kWalFile:
    case NodeKind::kWalNew:
      return ENOTDIR;
  }
  return ENOTDIR;
}

int Filesystem::ReadDir(uint64_t fh, uint64_t offset, bool plus,
                        const std::function<bool(const DirItem&)>& add) {
  auto dir = std::dynamic_pointer_cast<DirHandle>(GetHandle(fh));
  if (!dir) return EBADF;
  std::lock_guard<std::mutex> lock(dir->mu);
  if (dir->node->clone) return CloneReadDir(dir.get(), offset, plus, add);
  if (offset == 0 || !dir->loaded) {
    // Offset 0 (opendir or rewinddir) lists afresh: new snapshots and WAL files show at once.
    int err = LoadDir(dir.get());
    if (err) return err;
    dir->loaded = true;
  }
  const Node& node = *dir->node;
  // Offsets: 1 after ".", 2 after "..", 3 + i after the i-th item.
  for (uint64_t pos = offset; pos < 2 + dir->count(); ++pos) {
    DirItem item;
    item.next_offset = pos + 1;
    if (pos < 2) {
      item.name = pos == 0 ? "." : "..";
      item.type = S_IFDIR;
      item.ino = pos == 0 ? node.ino : (node.ino == InodeTable::kRootIno ? node.ino : node.parent);
      item.entry.attr.st_ino = item.ino;
      item.entry.attr.st_mode = S_IFDIR;
      if (!add(item)) return 0;
      continue;
    }
    Node proto;
    if (dir->listing) {
      const Entry& e = (*dir->listing)[pos - 2];
      proto.kind = NodeKind::kSnapshotEntry;
      proto.parent = node.ino;
      proto.snapshot_id = node.snapshot_id;
      proto.path = node.path.empty() ? e.name : node.path + "/" + e.name;
      proto.entry = e;
    } else {
      proto = dir->items[pos - 2];
    }
    item.name = proto.entry.name;
    item.type = TypeBits(proto.entry.type);
    if (proto.clone) {  // clones/<name>
      if (plus) {
        Result<CloneAttr> attr = proto.clone->GetAttr(kCloneRootIno);
        if (!attr.ok()) continue;  // dropped since
        std::shared_ptr<const Node> child = inodes_.Lookup(std::move(proto));
        FillCloneEntry(*child, *attr, &item.entry);
        item.ino = child->ino;
        if (!add(item)) {
          inodes_.Forget(child->ino, 1);
          return 0;
        }
      } else {
        std::shared_ptr<const Node> known =
            inodes_.FindClone(proto.clone->info().id, kCloneRootIno);
        item.ino = known ? known->ino : (uint64_t{1} << 63) | pos;
        if (!add(item)) return 0;
      }
      continue;
    }
    if (plus) {
      std::shared_ptr<const Node> child = inodes_.Lookup(std::move(proto));
      FillEntry(*child, child->entry.size(), &item.entry);
      item.ino = child->ino;
      if (!add(item)) {
        inodes_.Forget(child->ino, 1);  // not handed to the kernel after all
        return 0;
      }
    } else {
      std::shared_ptr<const Node> known = inodes_.Find(node.ino, item.name);
      // Not looked up yet: any number will do, readdir's d_ino is informational.
      item.ino = known ? known->ino : (uint64_t{1} << 63) | pos;
      if (!add(item)) return 0;
    }
  }
  return 0;
}

void Filesystem::ReleaseDir(uint64_t fh) {
  std::lock_guard<std::mutex> lock(handles_mu_);
  handles_.erase(fh);
}

// --- files -------------------------------------------------------------------------------------

int Filesystem::Open(uint64_t ino, int flags, OpenOut* out) {
  std::shared_ptr<const Node> node = inodes_.Get(ino);
  if (!node) return ENOENT;
  if (node->is_dir()) return EISDIR;
  if (node->clone) return CloneOpen(node, flags, out);
  bool writing = (flags & O_ACCMODE) != O_RDONLY || (flags & O_TRUNC);
  if (node->area() != Area::kWal) {
    if (writing) return EROFS;
  } else if (writing) {
    if (flags & O_APPEND) return EPERM;  // the archive is append-only, its files are not
    // Writing over an archived name: the bytes go to a new writer, and its commit succeeds only
    // if they are identical (invariant 2). The stored file never changes.
    Result<std::unique_ptr<WalWriter>> writer = wal_.NewWriter(node->path);
    if (!writer.ok()) return StatusToErrno(writer.status());
    auto w = std::make_shared<WriteHandle>();
    w->node = node;
    w->writer = std::move(writer).value();
    out->fh = AddHandle(w);
    out->direct_io = true;
    return 0;
  }
  auto f = std::make_shared<FileHandle>();
  f->node = node;
  f->data = node->entry.data;
  if (node->kind == NodeKind::kWalNew) {
    Result<WalFileInfo> info = wal_.Get(node->path);
    if (!info.ok()) return info.status().IsNotFound() ? EACCES : StatusToErrno(info.status());
    f->data = info->data;
  }
  out->fh = AddHandle(f);
  out->keep_cache = true;
  out->noflush = true;
  return 0;
}

int Filesystem::Create(uint64_t parent_ino, const std::string& name, int flags, EntryOut* entry,
                       OpenOut* out, mode_t mode) {
  std::shared_ptr<const Node> parent = inodes_.Get(parent_ino);
  if (!parent) return ENOENT;
  if (name.size() > kNameMax) return ENAMETOOLONG;
  if (parent->clone) return CloneCreate(*parent, name, mode, flags, entry, out);
  if (parent->kind != NodeKind::kWalDir) {
    if (parent->area() == Area::kWal) return ENOTDIR;
    return parent->area() == Area::kClones ? EPERM : EROFS;
  }
  WalFileKind kind;
  Status s = ParseWalFileName(name, &kind);
  if (!s.ok()) {
    spdlog::warn("refused to create wal/{}: {}", name, s.ToString());
    return EINVAL;
  }
  if (flags & O_EXCL) {
    Result<WalFileInfo> existing = wal_.Get(name);
    if (existing.ok()) return EEXIST;
    if (!existing.status().IsNotFound()) return StatusToErrno(existing.status());
  }
  Result<std::unique_ptr<WalWriter>> writer = wal_.NewWriter(name);
  if (!writer.ok()) return StatusToErrno(writer.status());
  Node proto;
  proto.kind = NodeKind::kWalNew;
  proto.parent = parent->ino;
  proto.path = name;
  proto.entry.name = name;
  proto.entry.type = EntryType::kFile;
  proto.entry.mode = 0600;
  proto.entry.mtime_sec = time(nullptr);
  std::shared_ptr<const Node> node = inodes_.AddAnonymous(std::move(proto));
  auto w = std::make_shared<WriteHandle>();
  w->node = node;
  w->writer = std::move(writer).value();
  out->fh = AddHandle(w);
  out->direct_io = true;
  FillEntry(*node, 0, entry);
  return 0;
}

int Filesystem::Read(uint64_t fh, uint64_t offset, size_t size, std::string* out) {
  std::shared_ptr<Handle> h = GetHandle(fh);
  if (auto c = std::dynamic_pointer_cast<CloneFileHandle>(h))
    return CloneRead(*c, offset, size, out);
  auto f = std::dynamic_pointer_cast<FileHandle>(h);
  if (!f) return EBADF;
  TreeReader reader(repo_->chunks(), f->data, repo_->config().chunk_size);
  Status s = reader.Read(offset, size, out);
  if (!s.ok()) {
    // Invariant 5: never wrong bytes. Name what failed so the operator can find it.
    spdlog::error("read error in {} at offset {} (+{}): {}", Describe(*f->node), offset, size,
                  s.ToString());
    return EIO;
  }
  return 0;
}

int Filesystem::Write(uint64_t fh, uint64_t offset, std::string_view data) {
  std::shared_ptr<Handle> h = GetHandle(fh);
  if (auto c = std::dynamic_pointer_cast<CloneFileHandle>(h)) return CloneWrite(*c, offset, data);
  auto w = std::dynamic_pointer_cast<WriteHandle>(h);
  if (!w) return EBADF;
  std::lock_guard<std::mutex> lock(w->mu);
  Status s = w->writer->Write(offset, data);
  if (!s.ok()) {
    spdlog::warn("write to {} at offset {}: {}", Describe(*w->node), offset, s.ToString());
    return StatusToErrno(s);
  }
  w->dirty = true;
  return 0;
}

int Filesystem::Flush(uint64_t fh) {
  auto w = std::dynamic_pointer_cast<WriteHandle>(GetHandle(fh));
  if (!w) return 0;
  std::lock_guard<std::mutex> lock(w->mu);
  if (w->committed && !w->dirty) return 0;
  Status s = w->writer->Commit();
  if (!s.ok()) {
    w->committed = false;
    spdlog::warn("not archived: {} ({} bytes): {}", Describe(*w->node), w->writer->size(),
                 s.ToString());
    return StatusToErrno(s);
  }
  w->committed = true;
  w->dirty = false;
  spdlog::info("archived {} ({} bytes)", Describe(*w->node), w->writer->size());
  return 0;
}

void Filesystem::Release(uint64_t fh) {
  std::shared_ptr<Handle> h;
  {
    std::lock_guard<std::mutex> lock(handles_mu_);
    auto it = handles_.find(fh);
    if (it == handles_.end()) return;
    h = std::move(it->second);
    handles_.erase(it);
  }
  if (auto c = std::dynamic_pointer_cast<CloneFileHandle>(h)) {
    // The last close of a removed file deletes its content.
    Status s = c->node->clone->CloseFile(c->node->clone_ino);
    if (!s.ok()) spdlog::warn("release of {}: {}", Describe(*c->node), s.ToString());
    return;
  }
  {
    std::lock_guard<std::mutex> lock(handles_mu_);
    auto w = std::dynamic_pointer_cast<WriteHandle>(h);
    if (!w) return;
    auto range = writers_.equal_range(w->node->ino);
    for (auto i = range.first; i != range.second; ++i) {
      if (i->second == w) {
        writers_.erase(i);
        break;
      }
    }
  }
  auto w = std::dynamic_pointer_cast<WriteHandle>(h);
  std::lock_guard<std::mutex> lock(w->mu);
  if (!w->committed || w->dirty) {
    // Nothing of it is visible: its chunks are unreferenced (invariant 3).
    spdlog::info("dropped {} without archiving it ({} bytes written)", Describe(*w->node),
                 w->writer->size());
  }
}

// --- everything else ---------------------------------------------------------------------------

int Filesystem::DenyChange(uint64_t parent_ino) {
  std::shared_ptr<const Node> parent = inodes_.Get(parent_ino);
  if (!parent) return ENOENT;
  return DenyChange(*parent);
}

int Filesystem::DenyChange(const Node& parent) const {
  switch (parent.area()) {
    case Area::kWal:
    case Area::kClones:
      return EPERM;
    case Area::kTop:
    case Area::kBackups:
      break;
  }
  return EROFS;
}

int Filesystem::StatFs(struct statvfs* st) {
  if (statvfs(repo_->path().c_str(), st) != 0) return errno;
  st->f_namemax = kNameMax;
  return 0;
}

size_t Filesystem::open_handles() const {
  std::lock_guard<std::mutex> lock(handles_mu_);
  return handles_.size();
}

uint64_t Filesystem::AddHandle(std::shared_ptr<Handle> handle) {
  std::lock_guard<std::mutex> lock(handles_mu_);
  uint64_t fh = next_fh_++;
  if (auto w = std::dynamic_pointer_cast<WriteHandle>(handle)) writers_.emplace(w->node->ino, w);
  handles_.emplace(fh, std::move(handle));
  return fh;
}

std::shared_ptr<Filesystem::Handle> Filesystem::GetHandle(uint64_t fh) const {
  std::lock_guard<std::mutex> lock(handles_mu_);
  auto it = handles_.find(fh);
  return it == handles_.end() ? nullptr : it->second;
}

std::shared_ptr<Filesystem::WriteHandle> Filesystem::AnyWriter(uint64_t ino) {
  std::lock_guard<std::mutex> lock(handles_mu_);
  auto it = writers_.find(ino);
  return it == writers_.end() ? nullptr : it->second;
}

bool Filesystem::WriterSize(uint64_t ino, uint64_t* size) {
  std::shared_ptr<WriteHandle> w = AnyWriter(ino);
  if (!w) return false;
  std::lock_guard<std::mutex> lock(w->mu);
  *size = w->writer->size();
  return true;
}

}  // namespace pgbackfs
