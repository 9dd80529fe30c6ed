#include "repo/chunk_tree.h"

#include <algorithm>
#include <cstring>

namespace pgbackfs {

namespace {
// Chunks handed to the ChunkWriter at a time: at most kBatchChunks, at least kMinBatchChunks
// (so that large chunks are still hashed and compressed in parallel), and otherwise as many as
// make kMinBatchBytes.
constexpr size_t kBatchChunks = 64;
constexpr size_t kMinBatchChunks = 2;
constexpr size_t kMinBatchBytes = 512 << 10;
constexpr size_t kIdSize = 16;
}  // namespace

Result<ChunkId> TreeBuilder::StoreBlock(const std::vector<ChunkId>& ids) {
  std::string block;
  block.reserve(ids.size() * kIdSize);
  for (const ChunkId& id : ids) block.append(id.AsKey());
  return writer_->Add(block);
}

Status TreeBuilder::Push(size_t level, const ChunkId& id) {
  if (levels_.size() <= level) levels_.resize(level + 1);
  levels_[level].push_back(id);
  if (levels_[level].size() == kTreeFanout) {
    ASSIGN_OR_RETURN(ChunkId block, StoreBlock(levels_[level]));
    levels_[level].clear();
    return Push(level + 1, block);
  }
  return Status::OK();
}

Status TreeBuilder::Add(const ChunkId& leaf) { return Push(0, leaf); }

Result<TreeRoot> TreeBuilder::Finish() {
  TreeRoot root;
  if (levels_.empty()) return root;  // empty file
  for (size_t level = 0; level < levels_.size(); ++level) {
    bool top = level + 1 == levels_.size();
    auto& ids = levels_[level];
    if (top && ids.size() == 1) {
      root.height = static_cast<uint8_t>(level);
      root.id = ids[0];
      levels_.clear();
      return root;
    }
    if (ids.empty()) continue;  // everything at this level already went up in full blocks
    ASSIGN_OR_RETURN(ChunkId block, StoreBlock(ids));
    ids.clear();
    if (top) levels_.emplace_back();
    levels_[level + 1].push_back(block);
  }
  return Status::Corruption("tree builder ended without a root");  // unreachable
}

FileWriter::FileWriter(ChunkWriter* writer, size_t chunk_size)
    : writer_(writer),
      chunk_size_(chunk_size),
      batch_bytes_(chunk_size *
                   std::clamp<size_t>(kMinBatchBytes / chunk_size, kMinBatchChunks, kBatchChunks)),
      tree_(writer) {}

Status FileWriter::AddChunks(std::string_view whole_chunks) {
  std::vector<std::string_view> chunks;
  for (size_t off = 0; off < whole_chunks.size(); off += chunk_size_) {
    chunks.push_back(whole_chunks.substr(off, chunk_size_));
  }
  std::vector<ChunkId> ids;
  RETURN_IF_ERROR(writer_->AddMany(chunks, &ids));
  for (const ChunkId& id : ids) RETURN_IF_ERROR(tree_.Add(id));
  return Status::OK();
}

Status FileWriter::FlushPending() {
  RETURN_IF_ERROR(AddChunks(pending_));
  pending_.clear();
  return Status::OK();
}

Status FileWriter::Append(std::string_view data) {
  size_ += data.size();
  while (!data.empty()) {
    if (pending_.empty() && data.size() >= batch_bytes_) {
      // Whole batches straight from the caller's buffer, without copying them.
      RETURN_IF_ERROR(AddChunks(data.substr(0, batch_bytes_)));
      data.remove_prefix(batch_bytes_);
      continue;
    }
    if (pending_.capacity() < batch_bytes_) pending_.reserve(batch_bytes_);
    size_t n = std::min(data.size(), batch_bytes_ - pending_.size());
    pending_.append(data.substr(0, n));
    data.remove_prefix(n);
    if (pending_.size() == batch_bytes_) RETURN_IF_ERROR(FlushPending());
  }
  return Status::OK();
}

Result<FileData> FileWriter::Finish() {
  if (!pending_.empty()) RETURN_IF_ERROR(FlushPending());
  FileData data;
  data.size = size_;
  ASSIGN_OR_RETURN(data.root, tree_.Finish());
  return data;
}

TreeReader::TreeReader(ChunkStore* store, const FileData& file, size_t chunk_size)
    : store_(store),
      file_(file),
      chunk_size_(file.chunk_size ? file.chunk_size : chunk_size),
      leaves_((file.size + chunk_size_ - 1) / chunk_size_) {}

size_t TreeReader::LeafSize(uint64_t index) const {
  uint64_t start = index * chunk_size_;
  return static_cast<size_t>(std::min<uint64_t>(chunk_size_, file_.size - start));
}

uint64_t TreeReader::Span(int height) const {
  uint64_t span = 1;
  for (int i = 0; i < height; ++i) span *= kTreeFanout;
  return span;
}

Result<std::shared_ptr<const std::string>> TreeReader::Block(const ChunkId& id, uint64_t children) {
  ASSIGN_OR_RETURN(auto block, store_->GetCached(id, children * kIdSize));
  return block;
}

Status TreeReader::CheckShape() const {
  // A tree of height h holds at most kTreeFanout^h leaves; a file record claiming more (damage)
  // would otherwise read one leaf in place of others, or past the end of an index block.
  uint64_t capacity = 1;
  for (int h = 0; h < file_.root.height && capacity <= leaves_; ++h) capacity *= kTreeFanout;
  if (leaves_ > capacity) {
    return Status::Corruption("chunk tree " + file_.root.id.Hex() + " of height " +
                              std::to_string(file_.root.height) + " cannot hold a file of " +
                              std::to_string(file_.size) + " bytes");
  }
  return Status::OK();
}

Result<ChunkId> TreeReader::Leaf(uint64_t index) {
  if (index >= leaves_) return Status::InvalidArgument("leaf index past the end of the file");
  RETURN_IF_ERROR(CheckShape());
  ChunkId id = file_.root.id;
  uint64_t first = 0;  // first leaf under the current node
  for (int h = file_.root.height; h > 0; --h) {
    uint64_t span = Span(h - 1);
    uint64_t children = std::min<uint64_t>(kTreeFanout, (leaves_ - first + span - 1) / span);
    ASSIGN_OR_RETURN(auto block, Block(id, children));
    uint64_t child = (index - first) / span;
    id = ChunkId::FromKey(std::string_view(*block).substr(child * kIdSize, kIdSize));
    first += child * span;
  }
  return id;
}

Status TreeReader::Walk(int height, const ChunkId& id, uint64_t first_leaf,
                        const std::function<Status(uint64_t, const ChunkId&)>& fn,
                        const std::function<Status(const ChunkId&)>& on_block) {
  if (height == 0) return fn(first_leaf, id);
  uint64_t span = Span(height - 1);
  uint64_t children = std::min<uint64_t>(kTreeFanout, (leaves_ - first_leaf + span - 1) / span);
  if (on_block) RETURN_IF_ERROR(on_block(id));
  ASSIGN_OR_RETURN(auto block, Block(id, children));
  for (uint64_t c = 0; c < children; ++c) {
    ChunkId child = ChunkId::FromKey(std::string_view(*block).substr(c * kIdSize, kIdSize));
    RETURN_IF_ERROR(Walk(height - 1, child, first_leaf + c * span, fn, on_block));
  }
  return Status::OK();
}

Status TreeReader::ForEachLeaf(const std::function<Status(uint64_t, const ChunkId&)>& fn,
                               const std::function<Status(const ChunkId&)>& on_block) {
  if (leaves_ == 0) return Status::OK();
  RETURN_IF_ERROR(CheckShape());
  return Walk(file_.root.height, file_.root.id, 0, fn, on_block);
}

Status TreeReader::CollectLeaves(int height, const ChunkId& id, uint64_t node_first, uint64_t first,
                                 uint64_t end, std::vector<ChunkId>* ids) {
  if (height == 0) {
    ids->push_back(id);
    return Status::OK();
  }
  const uint64_t span = Span(height - 1);
  const uint64_t children =
      std::min<uint64_t>(kTreeFanout, (leaves_ - node_first + span - 1) / span);
  if (id.IsZero()) {  // an all-zero file: zero ids all the way down
    uint64_t from = std::max(first, node_first);
    uint64_t to = std::min(end, node_first + children * span);
    ids->insert(ids->end(), to - from, ChunkId());
    return Status::OK();
  }
  ASSIGN_OR_RETURN(auto block, Block(id, children));
  uint64_t c = first > node_first ? (first - node_first) / span : 0;
  for (; c < children && node_first + c * span < end; ++c) {
    ChunkId child = ChunkId::FromKey(std::string_view(*block).substr(c * kIdSize, kIdSize));
    RETURN_IF_ERROR(CollectLeaves(height - 1, child, node_first + c * span, first, end, ids));
  }
  return Status::OK();
}

Status TreeReader::Leaves(uint64_t first, uint64_t count, std::vector<ChunkId>* ids) {
  ids->clear();
  uint64_t end = std::min(leaves_, first + count);
  if (first >= end) return Status::OK();
  ids->reserve(end - first);
  return CollectLeaves(file_.root.height, file_.root.id, 0, first, end, ids);
}

Status TreeReader::Read(uint64_t offset, size_t len, std::string* out) {
  if (offset >= file_.size) return Status::OK();
  uint64_t end = std::min<uint64_t>(file_.size, offset + len);
  const size_t base = out->size();
  Status s = end - offset >= kDirectReadBytes ? ReadDirect(offset, end, out)
                                              : ReadCached(offset, end, out);
  if (!s.ok()) out->resize(base);
  return s;
}

Status TreeReader::ReadCached(uint64_t offset, uint64_t end, std::string* out) {
  while (offset < end) {
    uint64_t index = offset / chunk_size_;
    size_t in_chunk = offset % chunk_size_;
    size_t n = static_cast<size_t>(std::min<uint64_t>(end - offset, chunk_size_ - in_chunk));
    ASSIGN_OR_RETURN(ChunkId id, Leaf(index));
    if (id.IsZero()) {
      out->append(n, '\0');
    } else {
      ASSIGN_OR_RETURN(auto chunk, store_->GetCached(id, LeafSize(index)));
      out->append(*chunk, in_chunk, n);
    }
    offset += n;
  }
  return Status::OK();
}

Status TreeReader::ReadDirect(uint64_t offset, uint64_t end, std::string* out) {
  const uint64_t first = offset / chunk_size_;
  const uint64_t last = (end - 1) / chunk_size_;
  std::vector<ChunkId> ids;
  RETURN_IF_ERROR(Leaves(first, last - first + 1, &ids));
  if (ids.size() != last - first + 1) return Status::Corruption("chunk tree is short");
  const size_t base = out->size();
  out->resize(base + (end - offset));
  char* dst = out->data() + base;
  // Whole chunks straight into `out`; the one or two the range cuts into `cut`, then their part.
  std::vector<ChunkStore::ChunkRead> reads(ids.size());
  std::vector<std::string> cut(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    const uint64_t chunk_start = (first + i) * chunk_size_;
    const size_t size = LeafSize(first + i);
    const uint64_t from = std::max(offset, chunk_start);
    const uint64_t to = std::min<uint64_t>(end, chunk_start + size);
    if (from == chunk_start && to == chunk_start + size) {
      reads[i] = {ids[i], size, dst + (from - offset)};
    } else {
      cut[i].resize(size);
      reads[i] = {ids[i], size, cut[i].data()};
    }
  }
  std::vector<Status> errors;
  store_->ReadMany(reads, &errors);
  for (size_t i = 0; i < ids.size(); ++i) {
    const uint64_t chunk_start = (first + i) * chunk_size_;
    if (!errors[i].ok()) {
      out->resize(base);
      return errors[i].WithContext("leaf at offset " + std::to_string(chunk_start));
    }
    if (!cut[i].empty()) {
      const uint64_t from = std::max(offset, chunk_start);
      const uint64_t to = std::min<uint64_t>(end, chunk_start + cut[i].size());
      std::memcpy(dst + (from - offset), cut[i].data() + (from - chunk_start), to - from);
    }
  }
  return Status::OK();
}

}  // namespace pgbackfs
