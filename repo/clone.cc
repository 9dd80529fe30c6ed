#include "repo/clone.h"

#include <sys/time.h>

#include <algorithm>
#include <cstring>
#include <ctime>
#include <map>

#include "repo/coding.h"
#include "repo/json_util.h"

namespace pgbackfs {

namespace {

constexpr std::string_view kCloneKeyPrefix = "clone/";
constexpr std::string_view kCloneIdKey = "clone_next_id";
constexpr uint8_t kInodeVersion = 1;
constexpr uint8_t kFlagMaterialized = 1;  // directory: entries live in the overlay
constexpr uint8_t kFlagOverrides = 2;     // file: some chunks are overridden

// Live instances, so that every user in the process shares one (and one inode counter).
std::mutex registry_mu;
std::map<std::pair<Repository*, std::string>, std::weak_ptr<CloneFs>> registry;

std::pair<int64_t, uint32_t> Now() {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return {ts.tv_sec, static_cast<uint32_t>(ts.tv_nsec)};
}

}  // namespace

// An inode as stored under key 'I'. docs/FORMAT.md, "clones".
struct CloneFs::Inode {
  CloneIno ino = 0;
  CloneIno parent = 0;  // directories: for rename loop checks
  EntryType type = EntryType::kFile;
  uint32_t mode = 0600;
  uint64_t size = 0;
  int64_t mtime_sec = 0;
  uint32_t mtime_nsec = 0;
  int64_t ctime_sec = 0;
  uint32_t ctime_nsec = 0;
  uint8_t flags = 0;
  FileData base;            // files: snapshot content; directories: snapshot listing
  uint64_t base_limit = 0;  // files: base bytes still valid (truncation lowers it)
  std::string link;

  bool materialized() const { return flags & kFlagMaterialized; }
  bool has_overrides() const { return flags & kFlagOverrides; }

  std::string Encode() const {
    std::string s;
    s.push_back(static_cast<char>(kInodeVersion));
    s.push_back(static_cast<char>(type));
    PutFixed64(&s, parent);
    PutFixed32(&s, mode);
    PutFixed64(&s, size);
    PutFixed64(&s, static_cast<uint64_t>(mtime_sec));
    PutFixed32(&s, mtime_nsec);
    PutFixed64(&s, static_cast<uint64_t>(ctime_sec));
    PutFixed32(&s, ctime_nsec);
    s.push_back(static_cast<char>(flags));
    PutFixed64(&s, base.size);
    s.push_back(static_cast<char>(base.root.height));
    s.append(base.root.id.AsKey());
    PutFixed64(&s, base_limit);
    PutLengthPrefixed(&s, link);
    return s;
  }

  static Status Decode(CloneIno ino, std::string_view data, Inode* out) {
    Decoder in(data);
    uint8_t version, type, height;
    uint64_t mtime, ctime;
    std::string_view id, link;
    if (!in.GetFixed8(&version) || version != kInodeVersion || !in.GetFixed8(&type) ||
        !in.GetFixed64(&out->parent) || !in.GetFixed32(&out->mode) || !in.GetFixed64(&out->size) ||
        !in.GetFixed64(&mtime) || !in.GetFixed32(&out->mtime_nsec) || !in.GetFixed64(&ctime) ||
        !in.GetFixed32(&out->ctime_nsec) || !in.GetFixed8(&out->flags) ||
        !in.GetFixed64(&out->base.size) || !in.GetFixed8(&height) || !in.GetBytes(16, &id) ||
        !in.GetFixed64(&out->base_limit) || !in.GetLengthPrefixed(&link) || type < 1 || type > 3) {
      return Status::Corruption("bad clone inode " + std::to_string(ino));
    }
    out->ino = ino;
    out->type = static_cast<EntryType>(type);
    out->mtime_sec = static_cast<int64_t>(mtime);
    out->ctime_sec = static_cast<int64_t>(ctime);
    out->base.root.height = height;
    out->base.root.id = ChunkId::FromKey(id);
    out->link.assign(link);
    return Status::OK();
  }

  CloneAttr Attr() const {
    CloneAttr a;
    a.ino = ino;
    a.type = type;
    a.mode = mode;
    a.size = type == EntryType::kSymlink ? link.size() : type == EntryType::kDirectory ? 0 : size;
    a.mtime_sec = mtime_sec;
    a.mtime_nsec = mtime_nsec;
    a.ctime_sec = ctime_sec;
    a.ctime_nsec = ctime_nsec;
    a.nlink = type == EntryType::kDirectory ? 2 : 1;
    return a;
  }

  static Inode FromEntry(CloneIno ino, CloneIno parent, const Entry& e) {
    Inode n;
    n.ino = ino;
    n.parent = parent;
    n.type = e.type;
    n.mode = e.mode;
    n.mtime_sec = n.ctime_sec = e.mtime_sec;
    n.mtime_nsec = n.ctime_nsec = e.mtime_nsec;
    n.link = e.link_target;
    n.base = e.data;
    if (e.type == EntryType::kFile) n.size = n.base_limit = e.data.size;
    return n;
  }
};

nlohmann::json CloneInfo::ToJson() const {
  return {
      {"name", name}, {"id", id}, {"snapshot", snapshot}, {"created", created}, {"extra", extra}};
}

Status CloneInfo::Decode(std::string_view data, CloneInfo* info) {
  try {
    auto j = nlohmann::json::parse(data);
    info->name = j.at("name").get<std::string>();
    info->id = JsonInt<uint64_t>(j, "id");
    info->snapshot = j.at("snapshot").get<std::string>();
    info->created = JsonIntOr<int64_t>(j, "created", 0);
    info->extra = j.value("extra", nlohmann::json::object());
  } catch (const std::exception& e) {
    return Status::Corruption(std::string("bad clone record: ") + e.what());
  }
  return Status::OK();
}

Status CloneFs::ValidateName(const std::string& name) {
  if (name.empty() || name == "." || name == ".." || name.size() > 200 ||
      name.find('/') != std::string::npos || name.find('\0') != std::string::npos) {
    return Status::InvalidArgument("bad clone name '" + name +
                                   "': use 1-200 characters, no '/', not '.' or '..'");
  }
  return Status::OK();
}

Result<CloneInfo> CloneFs::Create(Repository* repo, const std::string& name,
                                  const SnapshotInfo& snapshot) {
  RETURN_IF_ERROR(ValidateName(name));
  // One process owns the repository; this orders creators in it, and against `expire`, which
  // must not remove the snapshot between this check and the clone record.
  std::lock_guard<std::mutex> lock(repo->catalog_mutex());
  RETURN_IF_ERROR(repo->GetSnapshot(snapshot.id).status());
  std::string key = std::string(kCloneKeyPrefix) + name, value;
  Status s = repo->kv()->Get(Cf::kMeta, key, &value);
  if (s.ok()) return Status::AlreadyExists("clone '" + name + "' already exists");
  if (!s.IsNotFound()) return s;
  uint64_t id = 1;
  s = repo->kv()->Get(Cf::kMeta, kCloneIdKey, &value);
  if (s.ok()) {
    Decoder d(value);
    if (!d.GetFixed64(&id)) return Status::Corruption("bad clone id counter");
  } else if (!s.IsNotFound()) {
    return s;
  }
  CloneInfo info;
  info.name = name;
  info.id = id;
  info.snapshot = snapshot.id;
  info.created = time(nullptr);

  CloneFs fs(repo, info);
  Inode root = Inode::FromEntry(kCloneRootIno, kCloneRootIno, snapshot.root);
  root.mode = 0700;
  KvBatch batch;
  std::string next;
  PutFixed64(&next, id + 1);
  batch.Put(Cf::kMeta, kCloneIdKey, next);
  fs.PutInode(root, &batch);
  std::string counter;
  PutFixed64(&counter, kCloneRootIno + 1);
  std::string counter_key;
  PutBigEndian64(&counter_key, info.id);
  counter_key = "c" + counter_key + "N";
  batch.Put(Cf::kOverlay, counter_key, counter);
  batch.Put(Cf::kMeta, key, info.ToJson().dump());
  RETURN_IF_ERROR(repo->kv()->Write(batch, true));
  return info;
}

Result<std::vector<CloneInfo>> CloneFs::List(Repository* repo) {
  std::vector<CloneInfo> out;
  auto it = repo->kv()->NewIterator(Cf::kMeta);
  for (it->Seek(kCloneKeyPrefix); it->Valid(); it->Next()) {
    if (it->key().substr(0, kCloneKeyPrefix.size()) != kCloneKeyPrefix) break;
    CloneInfo info;
    RETURN_IF_ERROR(CloneInfo::Decode(it->value(), &info));
    out.push_back(std::move(info));
  }
  RETURN_IF_ERROR(it->status());
  return out;
}

Result<CloneInfo> CloneFs::Get(Repository* repo, const std::string& name) {
  RETURN_IF_ERROR(ValidateName(name));
  std::string value;
  Status s = repo->kv()->Get(Cf::kMeta, std::string(kCloneKeyPrefix) + name, &value);
  if (s.IsNotFound()) return Status::NotFound("unknown clone '" + name + "'");
  RETURN_IF_ERROR(s);
  CloneInfo info;
  RETURN_IF_ERROR(CloneInfo::Decode(value, &info));
  return info;
}

Status CloneFs::Drop(Repository* repo, const std::string& name) {
  ASSIGN_OR_RETURN(CloneInfo info, Get(repo, name));
  {
    std::lock_guard<std::mutex> lock(registry_mu);
    auto it = registry.find({repo, name});
    if (it != registry.end()) {
      if (auto live = it->second.lock()) live->dropped_ = true;
      registry.erase(it);
    }
  }
  // The record goes first (synced): from then on the clone does not exist, and the overlay keys
  // deleted below are unreachable even if this process dies half way.
  KvBatch batch;
  batch.Delete(Cf::kMeta, std::string(kCloneKeyPrefix) + name);
  RETURN_IF_ERROR(repo->kv()->Write(batch, true));
  std::string prefix = "c";
  PutBigEndian64(&prefix, info.id);
  auto it = repo->kv()->NewIterator(Cf::kOverlay);
  batch.Clear();
  for (it->Seek(prefix); it->Valid() && it->key().substr(0, prefix.size()) == prefix; it->Next()) {
    batch.Delete(Cf::kOverlay, it->key());
    if (batch.ops().size() >= 10000) {
      RETURN_IF_ERROR(repo->kv()->Write(batch, false));
      batch.Clear();
    }
  }
  RETURN_IF_ERROR(it->status());
  return repo->kv()->Write(batch, false);
}

CloneFs::CloneFs(Repository* repo, CloneInfo info)
    : repo_(repo), info_(std::move(info)), chunk_size_(repo->config().chunk_size) {}

Result<std::shared_ptr<CloneFs>> CloneFs::Open(Repository* repo, const std::string& name) {
  std::lock_guard<std::mutex> lock(registry_mu);
  auto& slot = registry[{repo, name}];
  if (auto live = slot.lock()) return live;
  ASSIGN_OR_RETURN(CloneInfo info, Get(repo, name));
  auto fs = std::shared_ptr<CloneFs>(new CloneFs(repo, info));
  std::string value;
  std::string key = "c";
  PutBigEndian64(&key, info.id);
  key += "N";
  RETURN_IF_ERROR(repo->kv()->Get(Cf::kOverlay, key, &value).WithContext("clone inode counter"));
  Decoder d(value);
  if (!d.GetFixed64(&fs->next_ino_)) return Status::Corruption("bad clone inode counter");
  RETURN_IF_ERROR(fs->PurgeOrphans().WithContext("clone '" + name + "': removing orphans"));
  slot = fs;
  return fs;
}

std::string CloneFs::InodeKey(CloneIno ino) const {
  std::string k = "c";
  PutBigEndian64(&k, info_.id);
  k.push_back('I');
  PutBigEndian64(&k, ino);
  return k;
}
std::string CloneFs::DentryPrefix(CloneIno dir) const {
  std::string k = "c";
  PutBigEndian64(&k, info_.id);
  k.push_back('D');
  PutBigEndian64(&k, dir);
  return k;
}
std::string CloneFs::DentryKey(CloneIno dir, const std::string& name) const {
  return DentryPrefix(dir) + name;
}
std::string CloneFs::ChunkPrefix(CloneIno ino) const {
  std::string k = "c";
  PutBigEndian64(&k, info_.id);
  k.push_back('C');
  PutBigEndian64(&k, ino);
  return k;
}
std::string CloneFs::ChunkKey(CloneIno ino, uint64_t index) const {
  std::string k = ChunkPrefix(ino);
  PutBigEndian64(&k, index);
  return k;
}

Result<CloneIno> CloneFs::NextIno(KvBatch* batch) {
  std::lock_guard<std::mutex> lock(ino_mu_);
  CloneIno ino = next_ino_++;
  std::string key = "c", value;
  PutBigEndian64(&key, info_.id);
  key += "N";
  PutFixed64(&value, next_ino_);
  batch->Put(Cf::kOverlay, key, value);
  return ino;
}

void CloneFs::PutInode(const Inode& inode, KvBatch* batch) {
  batch->Put(Cf::kOverlay, InodeKey(inode.ino), inode.Encode());
}

Result<CloneFs::Inode> CloneFs::LoadInode(CloneIno ino) {
  if (dropped_) return Status::NotFound("clone '" + info_.name + "' was dropped");
  std::string value;
  Status s = repo_->kv()->Get(Cf::kOverlay, InodeKey(ino), &value);
  if (s.IsNotFound()) return Status::NotFound("no inode " + std::to_string(ino));
  RETURN_IF_ERROR(s);
  Inode inode;
  RETURN_IF_ERROR(Inode::Decode(ino, value, &inode));
  return inode;
}

Status CloneFs::MaterializeDir(Inode* dir) {
  if (dir->materialized()) return Status::OK();
  std::vector<Entry> entries;
  Entry listing;
  listing.type = EntryType::kDirectory;
  listing.data = dir->base;
  if (dir->base.size > 0) RETURN_IF_ERROR(repo_->reader()->ReadDir(listing, &entries));
  KvBatch batch;
  for (const Entry& e : entries) {
    ASSIGN_OR_RETURN(CloneIno ino, NextIno(&batch));
    Inode child = Inode::FromEntry(ino, dir->ino, e);
    PutInode(child, &batch);
    std::string value;
    PutFixed64(&value, ino);
    value.push_back(static_cast<char>(e.type));
    batch.Put(Cf::kOverlay, DentryKey(dir->ino, e.name), value);
  }
  dir->flags |= kFlagMaterialized;
  PutInode(*dir, &batch);
  return repo_->kv()->Write(batch, false);
}

Result<CloneFs::Inode> CloneFs::LoadDir(CloneIno ino) {
  ASSIGN_OR_RETURN(Inode dir, LoadInode(ino));
  if (dir.type != EntryType::kDirectory) {
    return Status::NotADirectory("inode " + std::to_string(ino) + " is not a directory");
  }
  if (!dir.materialized()) {
    // Two threads may race to materialize the same directory: serialize on the tree lock.
    std::lock_guard<std::mutex> lock(InodeLock(ino));
    ASSIGN_OR_RETURN(dir, LoadInode(ino));
    RETURN_IF_ERROR(MaterializeDir(&dir));
  }
  return dir;
}

Result<std::optional<CloneIno>> CloneFs::FindEntry(CloneIno dir, const std::string& name) {
  std::string value;
  Status s = repo_->kv()->Get(Cf::kOverlay, DentryKey(dir, name), &value);
  if (s.IsNotFound()) return std::optional<CloneIno>();
  RETURN_IF_ERROR(s);
  Decoder d(value);
  uint64_t ino;
  if (!d.GetFixed64(&ino)) return Status::Corruption("bad directory entry '" + name + "'");
  return std::optional<CloneIno>(ino);
}

Result<CloneAttr> CloneFs::GetAttr(CloneIno ino) {
  ASSIGN_OR_RETURN(Inode inode, LoadInode(ino));
  CloneAttr attr = inode.Attr();
  std::lock_guard<std::mutex> lock(open_mu_);
  if (orphans_.count(ino)) attr.nlink = 0;
  return attr;
}

Result<CloneAttr> CloneFs::Lookup(CloneIno parent, const std::string& name) {
  ASSIGN_OR_RETURN(Inode dir, LoadDir(parent));
  ASSIGN_OR_RETURN(auto ino, FindEntry(dir.ino, name));
  if (!ino) return Status::NotFound("'" + name + "' not found");
  return GetAttr(*ino);
}

Status CloneFs::ReadDir(CloneIno dir_ino, const std::string& after,
                        const std::function<bool(const std::string&, CloneIno, EntryType)>& fn) {
  ASSIGN_OR_RETURN(Inode dir, LoadDir(dir_ino));
  std::string prefix = DentryPrefix(dir.ino);
  auto it = repo_->kv()->NewIterator(Cf::kOverlay);
  for (it->Seek(prefix + after); it->Valid(); it->Next()) {
    std::string_view key = it->key();
    if (key.substr(0, prefix.size()) != prefix) break;
    std::string name(key.substr(prefix.size()));
    if (!after.empty() && name == after) continue;
    Decoder d(it->value());
    uint64_t ino;
    uint8_t type;
    if (!d.GetFixed64(&ino) || !d.GetFixed8(&type)) {
      return Status::Corruption("bad directory entry '" + name + "'");
    }
    if (!fn(name, ino, static_cast<EntryType>(type))) break;
  }
  return it->status();
}

Result<CloneAttr> CloneFs::MakeNode(CloneIno parent, const std::string& name, EntryType type,
                                    uint32_t mode, const std::string& link) {
  if (name.empty() || name == "." || name == ".." || name.find('/') != std::string::npos ||
      name.size() > 255) {
    return Status::InvalidArgument("bad name '" + name + "'");
  }
  std::lock_guard<std::mutex> tree(tree_mu_);
  ASSIGN_OR_RETURN(Inode dir, LoadDir(parent));
  ASSIGN_OR_RETURN(auto existing, FindEntry(dir.ino, name));
  if (existing) return Status::AlreadyExists("'" + name + "' exists");
  KvBatch batch;
  ASSIGN_OR_RETURN(CloneIno ino, NextIno(&batch));
  auto [sec, nsec] = Now();
  Inode node;
  node.ino = ino;
  node.parent = dir.ino;
  node.type = type;
  node.mode = mode & 07777;
  node.mtime_sec = node.ctime_sec = sec;
  node.mtime_nsec = node.ctime_nsec = nsec;
  node.link = link;
  if (type == EntryType::kDirectory) node.flags |= kFlagMaterialized;
  PutInode(node, &batch);
  std::string value;
  PutFixed64(&value, ino);
  value.push_back(static_cast<char>(type));
  batch.Put(Cf::kOverlay, DentryKey(dir.ino, name), value);
  dir.mtime_sec = dir.ctime_sec = sec;
  dir.mtime_nsec = dir.ctime_nsec = nsec;
  PutInode(dir, &batch);
  RETURN_IF_ERROR(repo_->kv()->Write(batch, false));
  return node.Attr();
}

Result<CloneAttr> CloneFs::CreateFile(CloneIno parent, const std::string& name, uint32_t mode) {
  return MakeNode(parent, name, EntryType::kFile, mode, "");
}
Result<CloneAttr> CloneFs::Mkdir(CloneIno parent, const std::string& name, uint32_t mode) {
  return MakeNode(parent, name, EntryType::kDirectory, mode, "");
}
Result<CloneAttr> CloneFs::Symlink(CloneIno parent, const std::string& name,
                                   const std::string& target) {
  return MakeNode(parent, name, EntryType::kSymlink, 0777, target);
}

Result<std::string> CloneFs::Readlink(CloneIno ino) {
  ASSIGN_OR_RETURN(Inode inode, LoadInode(ino));
  if (inode.type != EntryType::kSymlink) return Status::InvalidArgument("not a symlink");
  return inode.link;
}

Status CloneFs::DeleteInodeData(const Inode& inode, KvBatch* batch) {
  batch->Delete(Cf::kOverlay, InodeKey(inode.ino));
  if (inode.has_overrides()) {
    std::string prefix = ChunkPrefix(inode.ino);
    auto it = repo_->kv()->NewIterator(Cf::kOverlay);
    for (it->Seek(prefix); it->Valid() && it->key().substr(0, prefix.size()) == prefix;
         it->Next()) {
      batch->Delete(Cf::kOverlay, it->key());
    }
    RETURN_IF_ERROR(it->status());
  }
  return Status::OK();
}

std::string CloneFs::OrphanPrefix() const {
  std::string k = "c";
  PutBigEndian64(&k, info_.id);
  k.push_back('O');
  return k;
}
std::string CloneFs::OrphanKey(CloneIno ino) const {
  std::string k = OrphanPrefix();
  PutBigEndian64(&k, ino);
  return k;
}

Status CloneFs::RemoveFile(const Inode& inode, KvBatch* batch) {
  {
    std::lock_guard<std::mutex> lock(open_mu_);
    auto it = open_counts_.find(inode.ino);
    if (it != open_counts_.end() && it->second > 0) {
      orphans_.insert(inode.ino);
      batch->Put(Cf::kOverlay, OrphanKey(inode.ino), "");
      return Status::OK();
    }
  }
  return DeleteInodeData(inode, batch);
}

void CloneFs::OpenFile(CloneIno ino) {
  std::lock_guard<std::mutex> lock(open_mu_);
  ++open_counts_[ino];
}

Status CloneFs::CloseFile(CloneIno ino) {
  {
    std::lock_guard<std::mutex> lock(open_mu_);
    auto it = open_counts_.find(ino);
    if (it == open_counts_.end()) return Status::OK();
    if (--it->second > 0) return Status::OK();
    open_counts_.erase(it);
    if (orphans_.erase(ino) == 0) return Status::OK();
  }
  // The last close of an orphan: nothing can reach it any more.
  std::lock_guard<std::mutex> lock(InodeLock(ino));
  if (dropped_) return Status::OK();
  ASSIGN_OR_RETURN(Inode inode, LoadInode(ino));
  KvBatch batch;
  RETURN_IF_ERROR(DeleteInodeData(inode, &batch));
  batch.Delete(Cf::kOverlay, OrphanKey(ino));
  return repo_->kv()->Write(batch, false);
}

Status CloneFs::PurgeOrphans() {
  std::string prefix = OrphanPrefix();
  std::vector<CloneIno> found;
  auto it = repo_->kv()->NewIterator(Cf::kOverlay);
  for (it->Seek(prefix); it->Valid() && it->key().substr(0, prefix.size()) == prefix; it->Next()) {
    found.push_back(GetBigEndian(it->key().substr(prefix.size()), 8));
  }
  RETURN_IF_ERROR(it->status());
  for (CloneIno ino : found) {
    KvBatch batch;
    Result<Inode> inode = LoadInode(ino);
    if (inode.ok()) {
      RETURN_IF_ERROR(DeleteInodeData(*inode, &batch));
    } else if (!inode.status().IsNotFound()) {
      return inode.status();
    }
    batch.Delete(Cf::kOverlay, OrphanKey(ino));
    RETURN_IF_ERROR(repo_->kv()->Write(batch, false));
  }
  return Status::OK();
}

Result<bool> CloneFs::DirIsEmpty(CloneIno dir_ino) {
  bool empty = true;
  RETURN_IF_ERROR(ReadDir(dir_ino, "", [&](const std::string&, CloneIno, EntryType) {
    empty = false;
    return false;
  }));
  return empty;
}

Status CloneFs::Unlink(CloneIno parent, const std::string& name) {
  std::lock_guard<std::mutex> tree(tree_mu_);
  ASSIGN_OR_RETURN(Inode dir, LoadDir(parent));
  ASSIGN_OR_RETURN(auto ino, FindEntry(dir.ino, name));
  if (!ino) return Status::NotFound("'" + name + "' not found");
  ASSIGN_OR_RETURN(Inode victim, LoadInode(*ino));
  if (victim.type == EntryType::kDirectory) return Status::IsADirectory("'" + name + "'");
  std::lock_guard<std::mutex> lock(InodeLock(victim.ino));
  KvBatch batch;
  batch.Delete(Cf::kOverlay, DentryKey(dir.ino, name));
  RETURN_IF_ERROR(RemoveFile(victim, &batch));
  auto [sec, nsec] = Now();
  dir.mtime_sec = dir.ctime_sec = sec;
  dir.mtime_nsec = dir.ctime_nsec = nsec;
  PutInode(dir, &batch);
  return repo_->kv()->Write(batch, false);
}

Status CloneFs::Rmdir(CloneIno parent, const std::string& name) {
  std::lock_guard<std::mutex> tree(tree_mu_);
  ASSIGN_OR_RETURN(Inode dir, LoadDir(parent));
  ASSIGN_OR_RETURN(auto ino, FindEntry(dir.ino, name));
  if (!ino) return Status::NotFound("'" + name + "' not found");
  ASSIGN_OR_RETURN(Inode victim, LoadInode(*ino));
  if (victim.type != EntryType::kDirectory) return Status::NotADirectory("'" + name + "'");
  ASSIGN_OR_RETURN(bool empty, DirIsEmpty(victim.ino));
  if (!empty) return Status::NotEmpty("directory '" + name + "' is not empty");
  KvBatch batch;
  batch.Delete(Cf::kOverlay, DentryKey(dir.ino, name));
  batch.Delete(Cf::kOverlay, InodeKey(victim.ino));
  auto [sec, nsec] = Now();
  dir.mtime_sec = dir.ctime_sec = sec;
  dir.mtime_nsec = dir.ctime_nsec = nsec;
  PutInode(dir, &batch);
  return repo_->kv()->Write(batch, false);
}

Status CloneFs::Rename(CloneIno parent, const std::string& name, CloneIno new_parent,
                       const std::string& new_name, bool noreplace) {
  if (new_name.empty() || new_name == "." || new_name == ".." ||
      new_name.find('/') != std::string::npos || new_name.size() > 255) {
    return Status::InvalidArgument("bad name '" + new_name + "'");
  }
  std::lock_guard<std::mutex> tree(tree_mu_);
  ASSIGN_OR_RETURN(Inode src_dir, LoadDir(parent));
  ASSIGN_OR_RETURN(Inode dst_dir, LoadDir(new_parent));
  ASSIGN_OR_RETURN(auto src_ino, FindEntry(src_dir.ino, name));
  if (!src_ino) return Status::NotFound("'" + name + "' not found");
  if (parent == new_parent && name == new_name) return Status::OK();
  ASSIGN_OR_RETURN(Inode src, LoadInode(*src_ino));
  if (src.type == EntryType::kDirectory) {
    // A directory cannot move below itself.
    for (CloneIno up = dst_dir.ino;;) {
      if (up == src.ino) return Status::InvalidArgument("cannot move a directory into itself");
      if (up == kCloneRootIno) break;
      ASSIGN_OR_RETURN(Inode above, LoadInode(up));
      up = above.parent;
    }
  }
  KvBatch batch;
  ASSIGN_OR_RETURN(auto dst_ino, FindEntry(dst_dir.ino, new_name));
  if (dst_ino) {
    if (noreplace) return Status::AlreadyExists("'" + new_name + "' exists");
    ASSIGN_OR_RETURN(Inode dst, LoadInode(*dst_ino));
    if (dst.type == EntryType::kDirectory) {
      if (src.type != EntryType::kDirectory) return Status::IsADirectory("'" + new_name + "'");
      ASSIGN_OR_RETURN(bool empty, DirIsEmpty(dst.ino));
      if (!empty) return Status::NotEmpty("directory '" + new_name + "' is not empty");
    } else if (src.type == EntryType::kDirectory) {
      return Status::NotADirectory("'" + new_name + "'");
    }
    if (dst.type == EntryType::kDirectory) {
      RETURN_IF_ERROR(DeleteInodeData(dst, &batch));
    } else {
      RETURN_IF_ERROR(RemoveFile(dst, &batch));
    }
  }
  batch.Delete(Cf::kOverlay, DentryKey(src_dir.ino, name));
  std::string value;
  PutFixed64(&value, src.ino);
  value.push_back(static_cast<char>(src.type));
  batch.Put(Cf::kOverlay, DentryKey(dst_dir.ino, new_name), value);
  auto [sec, nsec] = Now();
  src.parent = dst_dir.ino;
  src.ctime_sec = sec;
  src.ctime_nsec = nsec;
  PutInode(src, &batch);
  src_dir.mtime_sec = src_dir.ctime_sec = sec;
  src_dir.mtime_nsec = src_dir.ctime_nsec = nsec;
  PutInode(src_dir, &batch);
  if (dst_dir.ino != src_dir.ino) {
    dst_dir.mtime_sec = dst_dir.ctime_sec = sec;
    dst_dir.mtime_nsec = dst_dir.ctime_nsec = nsec;
    PutInode(dst_dir, &batch);
  }
  // One batch: the rename is atomic, also across a crash.
  return repo_->kv()->Write(batch, false);
}

std::string CloneFs::EncodeOverride(const ChunkId& id, std::string_view raw) const {
  std::string value(id.AsKey());
  if (!id.IsZero()) value += repo_->chunks()->EncodeFast(raw);
  return value;
}

Status CloneFs::DecodeOverride(std::string_view value, ChunkId* id, std::string* out) {
  if (value.size() < 16)
    return Status::Corruption("bad chunk override in clone '" + info_.name + "'");
  *id = ChunkId::FromKey(value.substr(0, 16));
  if (value.size() == 16) {
    // The all-zero chunk, or one kept in the chunks column family.
    Status s = repo_->chunks()->Get(*id, chunk_size_, out);
    if (s.IsNotFound()) return Status::Corruption(s.message());  // absence is damage here
    return s;
  }
  RETURN_IF_ERROR(repo_->chunks()->DecodeAndVerify(*id, value.substr(16), out));
  if (out->size() != chunk_size_) {
    return Status::Corruption("chunk override " + id->Hex() + " in clone '" + info_.name +
                              "' has " + std::to_string(out->size()) + " bytes");
  }
  return Status::OK();
}

Status CloneFs::ReadBaseChunk(const Inode& inode, TreeReader* base, uint64_t index,
                              std::string* out) {
  uint64_t start = index * chunk_size_;
  if (start < inode.base_limit) {
    ASSIGN_OR_RETURN(ChunkId id, base->Leaf(index));
    // Decoded straight into `out`, past the chunk cache: the kernel's page cache keeps the page
    // (keep_cache), so a second copy here would only cost an allocation and a copy per cold read
    // and push the tree's index blocks out of the cache.
    RETURN_IF_ERROR(repo_->chunks()->Get(id, base->LeafSize(index), out));
    out->resize(static_cast<size_t>(std::min<uint64_t>(out->size(), inode.base_limit - start)));
    out->resize(chunk_size_, '\0');
    return Status::OK();
  }
  out->assign(chunk_size_, '\0');
  return Status::OK();
}

Status CloneFs::ReadChunk(const Inode& inode, uint64_t index, std::string* out) {
  if (inode.has_overrides()) {
    std::string value;
    Status s = repo_->kv()->Get(Cf::kOverlay, ChunkKey(inode.ino, index), &value);
    if (s.ok()) {
      ChunkId id;
      return DecodeOverride(value, &id, out);
    }
    if (!s.IsNotFound()) return s;
  }
  TreeReader base(repo_->chunks(), inode.base, chunk_size_);
  return ReadBaseChunk(inode, &base, index, out);
}

Status CloneFs::Read(CloneIno ino, uint64_t offset, size_t len, std::string* out) {
  ASSIGN_OR_RETURN(Inode inode, LoadInode(ino));
  if (inode.type == EntryType::kDirectory) return Status::IsADirectory("cannot read a directory");
  if (offset >= inode.size) return Status::OK();
  uint64_t end = std::min<uint64_t>(inode.size, offset + len);
  const uint64_t index = offset / chunk_size_;
  if ((end - 1) / chunk_size_ != index) return ReadRange(inode, offset, end, out);
  // One chunk (a page postgres reads): through the chunk cache.
  std::string chunk;
  RETURN_IF_ERROR(ReadChunk(inode, index, &chunk));
  out->append(chunk, offset % chunk_size_, end - offset);
  return Status::OK();
}

// A read across chunks is mostly a sequential scan's readahead (the kernel sends up to 1 MiB). As
// TreeReader::ReadDirect does for snapshots, its base leaves are looked up in one walk, its
// overrides read with one iterator (they are adjacent keys), and its chunks, overrides and base
// alike, decoded in parallel straight into `out`, past the chunk cache: the kernel's page cache
// keeps what it returns, and one chunk at a time on the FUSE thread made a cold scan of a clone
// CPU-bound at a quarter of what the store can decode.
Status CloneFs::ReadRange(const Inode& inode, uint64_t offset, uint64_t end, std::string* out) {
  const uint64_t first = offset / chunk_size_;
  const uint64_t last = (end - 1) / chunk_size_;
  const size_t count = static_cast<size_t>(last - first + 1);
  std::vector<std::string> overrides(count);
  std::vector<char> overridden(count, 0);
  if (inode.has_overrides()) {
    const std::string prefix = ChunkPrefix(inode.ino);
    auto it = repo_->kv()->NewIterator(Cf::kOverlay);
    for (it->Seek(ChunkKey(inode.ino, first)); it->Valid(); it->Next()) {
      std::string_view key = it->key();
      if (key.substr(0, prefix.size()) != prefix) break;
      uint64_t index = GetBigEndian(key.substr(prefix.size()), 8);
      if (index > last) break;
      overrides[index - first].assign(it->value());
      overridden[index - first] = 1;
    }
    RETURN_IF_ERROR(it->status());
  }
  // Base leaves of the chunks that still hold base bytes (below base_limit).
  TreeReader base(repo_->chunks(), inode.base, chunk_size_);
  const uint64_t base_chunks = (inode.base_limit + chunk_size_ - 1) / chunk_size_;
  std::vector<ChunkId> ids;
  if (first < base_chunks) {
    const uint64_t want = std::min<uint64_t>(last + 1, base_chunks) - first;
    RETURN_IF_ERROR(base.Leaves(first, want, &ids));
    if (ids.size() != want) {
      return Status::Corruption("the base of a file in clone '" + info_.name + "' is short");
    }
  }
  const size_t at = out->size();
  out->resize(at + (end - offset));
  char* dst = out->data() + at;
  std::vector<Status> errors(count);
  // Base chunks in one ReadMany, whole ones straight into `out`; a chunk cut by the range, by a
  // truncation, or the base's short last leaf into `whole`, and its part copied below.
  std::vector<ChunkStore::ChunkRead> reads;
  std::vector<size_t> read_of;  // reads[j] is chunk read_of[j] of the range
  std::vector<std::string> whole(count);
  auto span = [&](size_t i) {  // [from, to) of chunk i in the file
    const uint64_t chunk_start = (first + i) * chunk_size_;
    return std::pair<uint64_t, uint64_t>(std::max(offset, chunk_start),
                                         std::min<uint64_t>(end, chunk_start + chunk_size_));
  };
  for (size_t i = 0; i < count && i < ids.size(); ++i) {
    if (overridden[i]) continue;
    const uint64_t chunk_start = (first + i) * chunk_size_;
    const size_t size = base.LeafSize(first + i);
    auto [from, to] = span(i);
    const bool cut = from != chunk_start || to != chunk_start + size ||
                     std::min<uint64_t>(chunk_start + size, inode.base_limit) != to;
    if (cut) whole[i].resize(size);
    reads.push_back({ids[i], size, cut ? whole[i].data() : dst + (from - offset)});
    read_of.push_back(i);
  }
  std::vector<Status> read_errors;
  repo_->chunks()->ReadMany(reads, &read_errors);
  for (size_t j = 0; j < reads.size(); ++j) errors[read_of[j]] = read_errors[j];
  // Cut base chunks' parts copied, and zeros past the base; overrides decoded in parallel (an
  // override that names a stored chunk reads it: they may wait on the disk).
  std::vector<size_t> overridden_at;
  for (size_t i = 0; i < count; ++i) {
    const uint64_t chunk_start = (first + i) * chunk_size_;
    auto [from, to] = span(i);
    char* into = dst + (from - offset);
    if (overridden[i]) {
      overridden_at.push_back(i);
    } else if (i >= ids.size()) {  // past the base: a hole or an extension
      std::memset(into, 0, to - from);
    } else if (!whole[i].empty() && errors[i].ok()) {
      const uint64_t valid_end =
          std::min<uint64_t>(chunk_start + whole[i].size(), inode.base_limit);
      const uint64_t copy_end = std::max(from, std::min(to, valid_end));
      std::memcpy(into, whole[i].data() + (from - chunk_start), copy_end - from);
      std::memset(into + (copy_end - from), 0, to - copy_end);
    }
  }
  repo_->chunks()->ParallelRead(overridden_at.size(), [&](size_t j) {
    const size_t i = overridden_at[j];
    const uint64_t chunk_start = (first + i) * chunk_size_;
    auto [from, to] = span(i);
    ChunkId id;
    thread_local std::string chunk;
    errors[i] = DecodeOverride(overrides[i], &id, &chunk);
    if (errors[i].ok())
      std::memcpy(dst + (from - offset), chunk.data() + (from - chunk_start), to - from);
  });
  for (size_t i = 0; i < count; ++i) {
    if (!errors[i].ok()) {
      out->resize(at);
      return errors[i].WithContext("chunk at offset " + std::to_string((first + i) * chunk_size_));
    }
  }
  return Status::OK();
}

Status CloneFs::Write(CloneIno ino, uint64_t offset, std::string_view data, bool sync) {
  std::lock_guard<std::mutex> lock(InodeLock(ino));
  ASSIGN_OR_RETURN(Inode inode, LoadInode(ino));
  if (inode.type != EntryType::kFile) return Status::IsADirectory("not a regular file");
  // Whole chunks are taken as they are; partly written ones are read, patched and written whole.
  std::vector<std::string_view> chunks;
  std::vector<uint64_t> indexes;
  std::vector<std::string> patched;
  patched.reserve(2);  // only the first and the last chunk of a write can be partial
  uint64_t pos = offset;
  std::string_view rest = data;
  while (!rest.empty()) {
    uint64_t index = pos / chunk_size_;
    size_t in_chunk = pos % chunk_size_;
    size_t n = std::min(rest.size(), chunk_size_ - in_chunk);
    if (n == chunk_size_) {
      chunks.push_back(rest.substr(0, n));
    } else {
      std::string chunk;
      RETURN_IF_ERROR(ReadChunk(inode, index, &chunk));
      chunk.replace(in_chunk, n, rest.data(), n);
      patched.push_back(std::move(chunk));
      chunks.push_back(patched.back());
    }
    indexes.push_back(index);
    rest.remove_prefix(n);
    pos += n;
  }
  // Written chunks live in the overlay under the file's own keys (not content-addressed): they
  // are read back in file order, and an overwrite replaces the old bytes instead of leaving a
  // garbage chunk behind. Seal() moves them into the chunk store.
  std::vector<std::string> values(chunks.size());
  auto encode = [&](size_t i) { values[i] = EncodeOverride(ComputeChunkId(chunks[i]), chunks[i]); };
  // A page or a few (most writes: postgres's WAL and buffer writes) cost less to encode here than
  // to hand to the pool's threads.
  if (chunks.size() < kParallelWriteChunks) {
    for (size_t i = 0; i < chunks.size(); ++i) encode(i);
  } else {
    repo_->chunks()->ParallelFor(chunks.size(), encode);
  }
  KvBatch batch;
  for (size_t i = 0; i < chunks.size(); ++i) {
    batch.Put(Cf::kOverlay, ChunkKey(inode.ino, indexes[i]), values[i]);
  }
  inode.flags |= kFlagOverrides;
  inode.size = std::max<uint64_t>(inode.size, offset + data.size());
  auto [sec, nsec] = Now();
  inode.mtime_sec = inode.ctime_sec = sec;
  inode.mtime_nsec = inode.ctime_nsec = nsec;
  PutInode(inode, &batch);
  return repo_->kv()->Write(batch, sync);
}

Status CloneFs::Truncate(Inode* inode, uint64_t size, KvBatch* batch) {
  if (size < inode->size) {
    uint64_t keep = (size + chunk_size_ - 1) / chunk_size_;  // chunks that keep some bytes
    if (inode->has_overrides()) {
      std::string prefix = ChunkPrefix(inode->ino);
      auto it = repo_->kv()->NewIterator(Cf::kOverlay);
      for (it->Seek(ChunkKey(inode->ino, keep));
           it->Valid() && it->key().substr(0, prefix.size()) == prefix; it->Next()) {
        batch->Delete(Cf::kOverlay, it->key());
      }
      RETURN_IF_ERROR(it->status());
    }
    // The kept part of the last chunk stays; its tail must read as zeros if the file grows again.
    if (size % chunk_size_ != 0) {
      uint64_t last = size / chunk_size_;
      std::string chunk;
      RETURN_IF_ERROR(ReadChunk(*inode, last, &chunk));
      std::fill(chunk.begin() + static_cast<long>(size % chunk_size_), chunk.end(), '\0');
      batch->Put(Cf::kOverlay, ChunkKey(inode->ino, last),
                 EncodeOverride(ComputeChunkId(chunk), chunk));
      inode->flags |= kFlagOverrides;
    }
    inode->base_limit = std::min(inode->base_limit, size);
  }
  inode->size = size;
  return Status::OK();
}

Result<CloneAttr> CloneFs::SetAttr(CloneIno ino, const CloneSetAttr& set) {
  std::lock_guard<std::mutex> lock(InodeLock(ino));
  ASSIGN_OR_RETURN(Inode inode, LoadInode(ino));
  KvBatch batch;
  auto [sec, nsec] = Now();
  if (set.size && !(set.grow_only && *set.size <= inode.size)) {
    if (inode.type != EntryType::kFile) return Status::IsADirectory("not a regular file");
    RETURN_IF_ERROR(Truncate(&inode, *set.size, &batch));
    inode.mtime_sec = sec;
    inode.mtime_nsec = nsec;
  }
  if (set.mode) inode.mode = *set.mode & 07777;
  if (set.mtime) {
    inode.mtime_sec = set.mtime->first;
    inode.mtime_nsec = set.mtime->second;
  }
  inode.ctime_sec = sec;
  inode.ctime_nsec = nsec;
  PutInode(inode, &batch);
  RETURN_IF_ERROR(repo_->kv()->Write(batch, false));
  return inode.Attr();
}

Status CloneFs::Fsync() { return repo_->kv()->Sync(); }

Result<FileData> CloneFs::SealFile(const Inode& file, ChunkWriter* writer) {
  if (!file.has_overrides() && file.base_limit == file.base.size && file.size == file.base.size) {
    return file.base;  // untouched: shares the snapshot's tree as it is
  }
  TreeBuilder tree(writer);
  TreeReader base(repo_->chunks(), file.base, chunk_size_);
  uint64_t leaves = (file.size + chunk_size_ - 1) / chunk_size_;
  std::string prefix = ChunkPrefix(file.ino);
  auto it = repo_->kv()->NewIterator(Cf::kOverlay);
  it->Seek(prefix);
  std::string chunk;
  for (uint64_t i = 0; i < leaves; ++i) {
    size_t len = static_cast<size_t>(std::min<uint64_t>(chunk_size_, file.size - i * chunk_size_));
    // Next override at or after leaf i (the iterator walks them in index order).
    std::optional<ChunkId> override_id;
    std::string_view override_value;
    while (it->Valid() && it->key().substr(0, prefix.size()) == prefix) {
      uint64_t index = GetBigEndian(it->key().substr(prefix.size()), 8);
      if (index < i) {
        it->Next();
        continue;
      }
      if (index == i) {
        override_value = it->value();
        if (override_value.size() < 16) return Status::Corruption("bad chunk override");
        override_id = ChunkId::FromKey(override_value.substr(0, 16));
      }
      break;
    }
    RETURN_IF_ERROR(it->status());
    uint64_t start = i * chunk_size_;
    ChunkId id;
    if (override_id && len == chunk_size_) {
      // An inline override becomes a stored chunk (unless one with its bytes exists already).
      id = *override_id;
      if (override_value.size() > 16) {
        RETURN_IF_ERROR(writer->AddEncoded(id, chunk_size_, override_value.substr(16)));
      }
    } else if (!override_id && start + len <= file.base_limit && i < base.leaf_count() &&
               base.LeafSize(i) == len) {
      ASSIGN_OR_RETURN(id, base.Leaf(i));
    } else if (!override_id && start >= file.base_limit) {
      id = ChunkId();  // past the base: zeros
    } else {
      RETURN_IF_ERROR(ReadChunk(file, i, &chunk));
      chunk.resize(len);
      ASSIGN_OR_RETURN(id, writer->Add(chunk));
    }
    RETURN_IF_ERROR(tree.Add(id));
  }
  FileData out;
  out.size = file.size;
  ASSIGN_OR_RETURN(out.root, tree.Finish());
  return out;
}

Status CloneFs::SealDir(const Inode& dir, const std::string& path, SnapshotBuilder* builder) {
  std::vector<std::pair<std::string, CloneIno>> children;
  RETURN_IF_ERROR(ReadDir(dir.ino, "", [&](const std::string& name, CloneIno ino, EntryType) {
    children.push_back({name, ino});
    return true;
  }));
  for (const auto& [name, ino] : children) {
    std::string child_path = path.empty() ? name : path + "/" + name;
    ASSIGN_OR_RETURN(Inode child, LoadInode(ino));
    switch (child.type) {
      case EntryType::kDirectory:
        if (!child.materialized()) {
          Entry e;
          e.type = EntryType::kDirectory;
          e.mode = child.mode;
          e.mtime_sec = child.mtime_sec;
          e.mtime_nsec = child.mtime_nsec;
          e.data = child.base;
          RETURN_IF_ERROR(builder->AddStoredDirectory(child_path, e));
        } else {
          RETURN_IF_ERROR(builder->AddDirectory(child_path, child.mode, child.mtime_sec));
          RETURN_IF_ERROR(SealDir(child, child_path, builder));
        }
        break;
      case EntryType::kSymlink:
        RETURN_IF_ERROR(builder->AddSymlink(child_path, child.link, child.mtime_sec));
        break;
      case EntryType::kFile: {
        std::lock_guard<std::mutex> lock(InodeLock(ino));
        ASSIGN_OR_RETURN(FileData data, SealFile(child, builder->writer()));
        RETURN_IF_ERROR(builder->AddFile(child_path, child.mode, child.mtime_sec, data));
        break;
      }
    }
  }
  return Status::OK();
}

Result<SnapshotInfo> CloneFs::Seal(const std::string& label) {
  std::lock_guard<std::mutex> tree(tree_mu_);
  ASSIGN_OR_RETURN(SnapshotInfo parent, repo_->GetSnapshot(info_.snapshot));
  auto builder = repo_->NewSnapshotBuilder();
  ASSIGN_OR_RETURN(Inode root, LoadDir(kCloneRootIno));
  RETURN_IF_ERROR(SealDir(root, "", builder.get()));
  ASSIGN_OR_RETURN(Entry root_entry, builder->Finish());
  root_entry.mode = 0700;
  SnapshotInfo info = parent;
  info.kind = "sealed-clone";
  info.label = label;
  info.parent = parent.id;
  info.start_time = info.stop_time = time(nullptr);
  ASSIGN_OR_RETURN(info.id, repo_->NewSnapshotId(info.start_time));
  info.root = root_entry;
  info.logical_size = builder->logical_size();
  info.file_count = builder->file_count();
  info.bytes_added = builder->writer()->stats().new_stored_bytes;
  info.extra["clone"] = info_.name;
  RETURN_IF_ERROR(repo_->CommitSnapshot(info));
  return info;
}

Result<CloneAttr> CloneFs::LookupPath(const std::string& path) {
  std::vector<std::string> parts;
  RETURN_IF_ERROR(SplitPath(path, &parts));
  ASSIGN_OR_RETURN(CloneAttr cur, GetAttr(kCloneRootIno));
  for (const auto& part : parts) {
    ASSIGN_OR_RETURN(cur, Lookup(cur.ino, part));
  }
  return cur;
}

Status CloneFs::WriteWholeFile(const std::string& path, std::string_view data, uint32_t mode) {
  std::string dir = path.find('/') == std::string::npos ? "" : path.substr(0, path.rfind('/'));
  std::string name = path.substr(path.rfind('/') == std::string::npos ? 0 : path.rfind('/') + 1);
  ASSIGN_OR_RETURN(CloneAttr parent, LookupPath(dir));
  Result<CloneAttr> existing = Lookup(parent.ino, name);
  CloneIno ino;
  if (existing.ok()) {
    ino = existing->ino;
    CloneSetAttr set;
    set.size = 0;
    set.mode = mode;
    RETURN_IF_ERROR(SetAttr(ino, set).status());
  } else if (existing.status().IsNotFound()) {
    ASSIGN_OR_RETURN(CloneAttr created, CreateFile(parent.ino, name, mode));
    ino = created.ino;
  } else {
    return existing.status();
  }
  return Write(ino, 0, data);
}

Status CloneFs::RemovePath(const std::string& path) {
  std::string dir = path.find('/') == std::string::npos ? "" : path.substr(0, path.rfind('/'));
  std::string name = path.substr(path.rfind('/') == std::string::npos ? 0 : path.rfind('/') + 1);
  ASSIGN_OR_RETURN(CloneAttr parent, LookupPath(dir));
  Status s = Unlink(parent.ino, name);
  return s.IsNotFound() ? Status::OK() : s;
}

}  // namespace pgbackfs
