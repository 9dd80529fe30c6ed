#include "repo/snapshot.h"

#include <algorithm>

#include "repo/coding.h"
#include "repo/json_util.h"

namespace pgbackfs {

namespace {
constexpr char kDirMagic[4] = {'P', 'B', 'D', '1'};
}

void Entry::EncodeTo(std::string* dst) const {
  dst->push_back(static_cast<char>(type));
  PutFixed32(dst, mode);
  PutFixed64(dst, static_cast<uint64_t>(mtime_sec));
  PutFixed32(dst, mtime_nsec);
  PutFixed64(dst, data.size);
  dst->push_back(static_cast<char>(data.root.height));
  dst->append(data.root.id.AsKey());
  PutFixed16(dst, static_cast<uint16_t>(name.size()));
  dst->append(name);
  PutFixed16(dst, static_cast<uint16_t>(link_target.size()));
  dst->append(link_target);
}

Status Entry::DecodeFrom(Decoder* in, Entry* e) {
  uint8_t type, height;
  uint64_t mtime;
  uint16_t name_len, link_len;
  std::string_view id, name, link;
  if (!in->GetFixed8(&type) || !in->GetFixed32(&e->mode) || !in->GetFixed64(&mtime) ||
      !in->GetFixed32(&e->mtime_nsec) || !in->GetFixed64(&e->data.size) ||
      !in->GetFixed8(&height) || !in->GetBytes(16, &id) || !in->GetFixed16(&name_len) ||
      !in->GetBytes(name_len, &name) || !in->GetFixed16(&link_len) ||
      !in->GetBytes(link_len, &link)) {
    return Status::Corruption("truncated directory entry");
  }
  if (type < 1 || type > 3) return Status::Corruption("bad entry type " + std::to_string(type));
  if (height > 8) return Status::Corruption("bad tree height " + std::to_string(height));
  e->type = static_cast<EntryType>(type);
  e->mtime_sec = static_cast<int64_t>(mtime);
  e->data.root.height = height;
  e->data.root.id = ChunkId::FromKey(id);
  e->name.assign(name);
  e->link_target.assign(link);
  if (e->name.empty() || e->name.find('/') != std::string::npos || e->name == "." ||
      e->name == ".." || e->name.find('\0') != std::string::npos) {
    return Status::Corruption("bad entry name '" + e->name + "'");
  }
  return Status::OK();
}

Status EncodeDirectory(const std::vector<Entry>& entries, std::string* dst) {
  dst->append(kDirMagic, 4);
  PutFixed32(dst, static_cast<uint32_t>(entries.size()));
  for (const Entry& e : entries) {
    if (e.name.size() > 0xffff || e.link_target.size() > 0xffff) {
      return Status::InvalidArgument("name too long: '" + e.name + "'");
    }
    e.EncodeTo(dst);
  }
  return Status::OK();
}

Status DecodeDirectory(std::string_view data, std::vector<Entry>* entries) {
  Decoder in(data);
  std::string_view magic;
  uint32_t count;
  if (!in.GetBytes(4, &magic) || magic != std::string_view(kDirMagic, 4) ||
      !in.GetFixed32(&count)) {
    return Status::Corruption("bad directory header");
  }
  if (count > data.size() / 40) return Status::Corruption("bad directory entry count");
  entries->clear();
  entries->reserve(count);
  for (uint32_t i = 0; i < count; ++i) {
    Entry e;
    RETURN_IF_ERROR(Entry::DecodeFrom(&in, &e));
    if (!entries->empty() && entries->back().name >= e.name) {
      return Status::Corruption("directory entries out of order");
    }
    entries->push_back(std::move(e));
  }
  if (!in.empty()) return Status::Corruption("trailing bytes after directory entries");
  return Status::OK();
}

nlohmann::json SnapshotInfo::ToJson() const {
  nlohmann::json j = {
      {"id", id},
      {"kind", kind},
      {"label", label},
      {"start_lsn", start_lsn},
      {"end_lsn", end_lsn},
      {"timeline", timeline},
      {"start_time", start_time},
      {"stop_time", stop_time},
      {"pg_version", pg_version},
      {"pg_version_num", pg_version_num},
      {"system_identifier", system_identifier},
      {"logical_size", logical_size},
      {"file_count", file_count},
      {"bytes_added", bytes_added},
      {"parent", parent},
  };
  if (!extra.empty()) j["extra"] = extra;
  return j;
}

std::string SnapshotInfo::Encode() const {
  nlohmann::json j = ToJson();
  j["format"] = 1;
  j["root"] = {{"mode", root.mode},
               {"mtime", root.mtime_sec},
               {"size", root.data.size},
               {"height", root.data.root.height},
               {"id", root.data.root.id.Hex()}};
  return j.dump();
}

Status SnapshotInfo::Decode(std::string_view data, SnapshotInfo* info) {
  try {
    nlohmann::json j = nlohmann::json::parse(data);
    if (JsonIntOr<int>(j, "format", 0) != 1)
      return Status::Corruption("unknown snapshot record format");
    info->id = j.at("id").get<std::string>();
    info->kind = j.value("kind", "backup");
    info->label = j.value("label", "");
    info->start_lsn = j.value("start_lsn", "");
    info->end_lsn = j.value("end_lsn", "");
    info->timeline = JsonIntOr<uint32_t>(j, "timeline", 0);
    info->start_time = JsonIntOr<int64_t>(j, "start_time", 0);
    info->stop_time = JsonIntOr<int64_t>(j, "stop_time", 0);
    info->pg_version = j.value("pg_version", "");
    info->pg_version_num = JsonIntOr<uint32_t>(j, "pg_version_num", 0);
    info->system_identifier = j.value("system_identifier", "");
    info->logical_size = JsonIntOr<uint64_t>(j, "logical_size", 0);
    info->file_count = JsonIntOr<uint64_t>(j, "file_count", 0);
    info->bytes_added = JsonIntOr<uint64_t>(j, "bytes_added", 0);
    info->parent = j.value("parent", "");
    if (j.contains("extra")) info->extra = j["extra"];
    const auto& r = j.at("root");
    info->root = Entry();
    info->root.type = EntryType::kDirectory;
    info->root.mode = JsonInt<uint32_t>(r, "mode");
    info->root.mtime_sec = JsonInt<int64_t>(r, "mtime");
    info->root.data.size = JsonInt<uint64_t>(r, "size");
    info->root.data.root.height = JsonInt<uint8_t>(r, "height");
    if (info->root.data.root.height > 8) return Status::Corruption("bad root tree height");
    std::string raw;
    if (!HexDecode(r.at("id").get<std::string>(), &raw) || raw.size() != 16) {
      return Status::Corruption("bad root id in snapshot record");
    }
    info->root.data.root.id = ChunkId::FromKey(raw);
  } catch (const std::exception& e) {
    return Status::Corruption(std::string("bad snapshot record: ") + e.what());
  }
  return Status::OK();
}

Status SplitPath(const std::string& path, std::vector<std::string>* parts) {
  parts->clear();
  size_t start = 0;
  while (start <= path.size()) {
    size_t end = path.find('/', start);
    if (end == std::string::npos) end = path.size();
    std::string part = path.substr(start, end - start);
    if (!part.empty()) {
      if (part == "." || part == ".." || part.find('\0') != std::string::npos) {
        return Status::InvalidArgument("bad path '" + path + "'");
      }
      parts->push_back(std::move(part));
    }
    start = end + 1;
  }
  return Status::OK();
}

SnapshotBuilder::SnapshotBuilder(ChunkStore* store, size_t chunk_size)
    : writer_(store), chunk_size_(chunk_size) {
  root_.entry.type = EntryType::kDirectory;
  root_.entry.mode = 0700;
}

Result<SnapshotBuilder::Node*> SnapshotBuilder::Parent(const std::string& path, std::string* leaf) {
  std::vector<std::string> parts;
  RETURN_IF_ERROR(SplitPath(path, &parts));
  if (parts.empty()) return Status::InvalidArgument("empty path");
  Node* node = &root_;
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    auto& child = node->children[parts[i]];
    if (!child) {
      child = std::make_unique<Node>();
      child->entry.name = parts[i];
      child->entry.type = EntryType::kDirectory;
      child->entry.mode = 0700;
    } else if (!child->entry.is_dir()) {
      return Status::InvalidArgument("'" + parts[i] + "' in '" + path + "' is not a directory");
    }
    node = child.get();
  }
  *leaf = parts.back();
  return node;
}

Status SnapshotBuilder::AddDirectory(const std::string& path, uint32_t mode, int64_t mtime) {
  std::string leaf;
  ASSIGN_OR_RETURN(Node * parent, Parent(path, &leaf));
  auto& child = parent->children[leaf];
  if (!child) child = std::make_unique<Node>();
  child->entry.name = leaf;
  child->entry.type = EntryType::kDirectory;
  child->entry.mode = mode & 07777;
  child->entry.mtime_sec = mtime;
  return Status::OK();
}

Status SnapshotBuilder::AddSymlink(const std::string& path, const std::string& target,
                                   int64_t mtime) {
  std::string leaf;
  ASSIGN_OR_RETURN(Node * parent, Parent(path, &leaf));
  auto node = std::make_unique<Node>();
  node->entry.name = leaf;
  node->entry.type = EntryType::kSymlink;
  node->entry.mode = 0777;
  node->entry.mtime_sec = mtime;
  node->entry.link_target = target;
  parent->children[leaf] = std::move(node);
  return Status::OK();
}

Status SnapshotBuilder::AddFile(const std::string& path, uint32_t mode, int64_t mtime,
                                const FileData& data) {
  std::string leaf;
  ASSIGN_OR_RETURN(Node * parent, Parent(path, &leaf));
  auto& slot = parent->children[leaf];
  if (slot && slot->entry.is_dir()) {
    return Status::InvalidArgument("'" + path + "' is already a directory");
  }
  if (slot && slot->entry.type == EntryType::kFile) {
    logical_size_ -= slot->entry.data.size;
    file_count_--;
  }
  auto node = std::make_unique<Node>();
  node->entry.name = leaf;
  node->entry.type = EntryType::kFile;
  node->entry.mode = mode & 07777;
  node->entry.mtime_sec = mtime;
  node->entry.data = data;
  slot = std::move(node);
  logical_size_ += data.size;
  file_count_++;
  return Status::OK();
}

Status SnapshotBuilder::AddSmallFile(const std::string& path, uint32_t mode, int64_t mtime,
                                     std::string_view data) {
  FileWriter fw(&writer_, chunk_size_);
  RETURN_IF_ERROR(fw.Append(data));
  ASSIGN_OR_RETURN(FileData fd, fw.Finish());
  return AddFile(path, mode, mtime, fd);
}

Status SnapshotBuilder::AddStoredDirectory(const std::string& path, const Entry& dir) {
  std::string leaf;
  ASSIGN_OR_RETURN(Node * parent, Parent(path, &leaf));
  auto node = std::make_unique<Node>();
  node->entry = dir;
  node->entry.name = leaf;
  node->stored = true;
  parent->children[leaf] = std::move(node);
  return Status::OK();
}

Status SnapshotBuilder::StoreDir(Node* node) {
  if (node->stored) return Status::OK();
  std::vector<Entry> entries;
  entries.reserve(node->children.size());
  for (auto& [name, child] : node->children) {  // std::map: sorted by name
    if (child->entry.is_dir()) RETURN_IF_ERROR(StoreDir(child.get()));
    entries.push_back(child->entry);
  }
  node->children.clear();
  std::string encoded;
  RETURN_IF_ERROR(EncodeDirectory(entries, &encoded));
  FileWriter fw(&writer_, chunk_size_);
  RETURN_IF_ERROR(fw.Append(encoded));
  ASSIGN_OR_RETURN(node->entry.data, fw.Finish());
  return Status::OK();
}

Result<Entry> SnapshotBuilder::Finish() {
  RETURN_IF_ERROR(StoreDir(&root_));
  RETURN_IF_ERROR(writer_.Flush(false));
  return root_.entry;
}

Status SnapshotReader::ReadDir(const Entry& dir, std::vector<Entry>* entries) {
  if (!dir.is_dir()) return Status::InvalidArgument("'" + dir.name + "' is not a directory");
  TreeReader reader(store_, dir.data, chunk_size_);
  std::string encoded;
  encoded.reserve(dir.data.size);
  RETURN_IF_ERROR(reader.Read(0, dir.data.size, &encoded));
  return DecodeDirectory(encoded, entries);
}

Result<Entry> SnapshotReader::Lookup(const Entry& root, const std::string& path) {
  std::vector<std::string> parts;
  RETURN_IF_ERROR(SplitPath(path, &parts));
  Entry cur = root;
  std::vector<Entry> entries;
  for (const auto& part : parts) {
    if (!cur.is_dir()) return Status::NotFound("'" + path + "' not found");
    RETURN_IF_ERROR(ReadDir(cur, &entries));
    auto it = std::lower_bound(entries.begin(), entries.end(), part,
                               [](const Entry& e, const std::string& n) { return e.name < n; });
    if (it == entries.end() || it->name != part) {
      return Status::NotFound("'" + path + "' not found");
    }
    cur = std::move(*it);
  }
  return cur;
}

Status SnapshotReader::Walk(const Entry& dir, const std::string& prefix,
                            const std::function<Status(const std::string&, const Entry&)>& fn) {
  std::vector<Entry> entries;
  RETURN_IF_ERROR(ReadDir(dir, &entries).WithContext(prefix.empty() ? "/" : prefix));
  for (const Entry& e : entries) {
    std::string path = prefix.empty() ? e.name : prefix + "/" + e.name;
    RETURN_IF_ERROR(fn(path, e));
    if (e.is_dir()) RETURN_IF_ERROR(Walk(e, path, fn));
  }
  return Status::OK();
}

}  // namespace pgbackfs
