#include "fs/inode_table.h"

namespace pgbackfs {

Area Node::area() const {
  switch (kind) {
    case NodeKind::kRoot:
      return Area::kTop;
    case NodeKind::kBackupsDir:
    case NodeKind::kSnapshotRoot:
    case NodeKind::kSnapshotEntry:
      return Area::kBackups;
    case NodeKind::kWalDir:
    case NodeKind::kWalFile:
    case NodeKind::kWalNew:
      return Area::kWal;
    case NodeKind::kClonesDir:
    case NodeKind::kCloneRoot:
    case NodeKind::kCloneEntry:
      return Area::kClones;
  }
  return Area::kTop;
}

bool Node::is_dir() const { return entry.is_dir(); }

bool Node::SameContent(const Node& o) const {
  const Entry& a = entry;
  const Entry& b = o.entry;
  return kind == o.kind && snapshot_id == o.snapshot_id && a.type == b.type &&
         a.data.size == b.data.size && a.data.root == b.data.root && a.mode == b.mode &&
         a.mtime_sec == b.mtime_sec && a.mtime_nsec == b.mtime_nsec &&
         a.link_target == b.link_target;
}

InodeTable::InodeTable(int64_t mount_time) {
  AddFixed(kRootIno, NodeKind::kRoot, "", mount_time);
  AddFixed(kBackupsIno, NodeKind::kBackupsDir, "backups", mount_time);
  AddFixed(kWalIno, NodeKind::kWalDir, "wal", mount_time);
  AddFixed(kClonesIno, NodeKind::kClonesDir, "clones", mount_time);
}

void InodeTable::AddFixed(uint64_t ino, NodeKind kind, const std::string& name, int64_t mtime) {
  auto node = std::make_shared<Node>();
  node->ino = ino;
  node->kind = kind;
  node->parent = kRootIno;
  node->path = name;
  node->entry.name = name;
  node->entry.type = EntryType::kDirectory;
  node->entry.mode = 0700;
  node->entry.mtime_sec = mtime;
  nodes_[ino] = Slot{node, 0, ino != kRootIno};
  if (ino != kRootIno) names_[NameKey(kRootIno, name)] = ino;
}

std::string InodeTable::NameKey(uint64_t parent, const std::string& name) {
  std::string key(reinterpret_cast<const char*>(&parent), sizeof(parent));
  key += name;
  return key;
}

std::shared_ptr<const Node> InodeTable::Lookup(Node proto) {
  if (proto.clone) {
    std::pair<uint64_t, CloneIno> key{proto.clone->info().id, proto.clone_ino};
    std::lock_guard<std::mutex> lock(mu_);
    auto it = clone_nodes_.find(key);
    if (it != clone_nodes_.end()) {
      Slot& slot = nodes_.at(it->second);
      ++slot.lookups;
      return slot.node;
    }
    proto.ino = next_ino_++;
    auto node = std::make_shared<const Node>(std::move(proto));
    nodes_[node->ino] = Slot{node, 1, false};
    clone_nodes_[key] = node->ino;
    return node;
  }
  std::string key = NameKey(proto.parent, proto.entry.name);
  std::lock_guard<std::mutex> lock(mu_);
  auto name_it = names_.find(key);
  if (name_it != names_.end()) {
    Slot& slot = nodes_.at(name_it->second);
    if (slot.node->SameContent(proto)) {
      ++slot.lookups;
      return slot.node;
    }
    // The name means something else now; the old node stays until the kernel forgets it.
    slot.named = false;
  }
  proto.ino = next_ino_++;
  auto node = std::make_shared<const Node>(std::move(proto));
  nodes_[node->ino] = Slot{node, 1, true};
  names_[key] = node->ino;
  return node;
}

std::shared_ptr<const Node> InodeTable::AddAnonymous(Node proto) {
  std::lock_guard<std::mutex> lock(mu_);
  proto.ino = next_ino_++;
  auto node = std::make_shared<const Node>(std::move(proto));
  nodes_[node->ino] = Slot{node, 1, false};
  return node;
}

std::shared_ptr<const Node> InodeTable::Get(uint64_t ino) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = nodes_.find(ino);
  return it == nodes_.end() ? nullptr : it->second.node;
}

std::shared_ptr<const Node> InodeTable::Find(uint64_t parent, const std::string& name) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = names_.find(NameKey(parent, name));
  if (it == names_.end()) return nullptr;
  return nodes_.at(it->second).node;
}

std::shared_ptr<const Node> InodeTable::FindClone(uint64_t clone_id, CloneIno clone_ino) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = clone_nodes_.find({clone_id, clone_ino});
  if (it == clone_nodes_.end()) return nullptr;
  return nodes_.at(it->second).node;
}

void InodeTable::Forget(uint64_t ino, uint64_t nlookup) {
  if (ino < kFirstDynamicIno) return;
  std::lock_guard<std::mutex> lock(mu_);
  auto it = nodes_.find(ino);
  if (it == nodes_.end()) return;
  Slot& slot = it->second;
  slot.lookups = nlookup >= slot.lookups ? 0 : slot.lookups - nlookup;
  if (slot.lookups > 0) return;
  if (slot.named) names_.erase(NameKey(slot.node->parent, slot.node->entry.name));
  if (slot.node->clone) clone_nodes_.erase({slot.node->clone->info().id, slot.node->clone_ino});
  nodes_.erase(it);
}

size_t InodeTable::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return nodes_.size();
}

uint64_t InodeTable::LookupCount(uint64_t ino) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = nodes_.find(ino);
  return it == nodes_.end() ? 0 : it->second.lookups;
}

}  // namespace pgbackfs
