// Chunk lists as Merkle trees. A file is a list of fixed-size leaf chunks; the list of their ids
// is itself cut into index blocks of kTreeFanout ids, each stored as a content-addressed chunk,
// level upon level until one id remains: the root. Unchanged parts of a file share index blocks
// between snapshots, so metadata grows with what changed (invariant 7). docs/FORMAT.md, "trees".
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "repo/chunk_store.h"

namespace pgbackfs {

constexpr size_t kTreeFanout = 512;  // ids per index block: 8 KiB blocks

// The root of a chunk tree. Height 0: `id` is the only leaf (or the zero id of an empty or
// all-zero file). Height h > 0: `id` is an index block whose children have height h - 1.
struct TreeRoot {
  uint8_t height = 0;
  ChunkId id;
  bool operator==(const TreeRoot& o) const { return height == o.height && id == o.id; }
};

// A file's content: its size and the root of its chunk tree.
struct FileData {
  uint64_t size = 0;
  TreeRoot root;
};

// Builds a tree from leaf ids appended in order.
class TreeBuilder {
 public:
  explicit TreeBuilder(ChunkWriter* writer) : writer_(writer) {}
  Status Add(const ChunkId& leaf);
  Result<TreeRoot> Finish();

 private:
  Status Push(size_t level, const ChunkId& id);
  Result<ChunkId> StoreBlock(const std::vector<ChunkId>& ids);

  ChunkWriter* writer_;
  std::vector<std::vector<ChunkId>> levels_;
};

// Streams a file's bytes into fixed-size chunks and a tree. Memory: a few chunks plus one index
// block per level, whatever the file size.
class FileWriter {
 public:
  FileWriter(ChunkWriter* writer, size_t chunk_size);
  Status Append(std::string_view data);
  Result<FileData> Finish();
  uint64_t size() const { return size_; }

 private:
  Status FlushPending();

  ChunkWriter* writer_;
  size_t chunk_size_;
  TreeBuilder tree_;
  std::string pending_;  // up to kBatchChunks whole chunks not yet handed to the writer
  uint64_t size_ = 0;
};

// Random and sequential access to a file stored as a tree. Thread-compatible: one reader per
// thread, any number per store. Index blocks come through the store's chunk cache.
class TreeReader {
 public:
  TreeReader(ChunkStore* store, const FileData& file, size_t chunk_size);

  uint64_t leaf_count() const { return leaves_; }
  size_t LeafSize(uint64_t index) const;
  // Id of leaf `index` (< leaf_count()).
  Result<ChunkId> Leaf(uint64_t index);
  // Calls fn(index, id) for each leaf in order, reading each index block once. Stops at the first
  // error from the tree or from fn. `on_block` (optional) sees each index block id.
  Status ForEachLeaf(const std::function<Status(uint64_t, const ChunkId&)>& fn,
                     const std::function<Status(const ChunkId&)>& on_block = nullptr);
  // Reads [offset, offset + len) clipped to the file size, appending to `out`.
  Status Read(uint64_t offset, size_t len, std::string* out);

 private:
  Result<std::shared_ptr<const std::string>> Block(const ChunkId& id, uint64_t children);
  uint64_t Span(int height) const;  // leaves under one node of `height`
  Status CheckShape() const;        // Corruption if the height cannot hold the file's leaves
  Status Walk(int height, const ChunkId& id, uint64_t first_leaf,
              const std::function<Status(uint64_t, const ChunkId&)>& fn,
              const std::function<Status(const ChunkId&)>& on_block);

  ChunkStore* store_;
  FileData file_;
  size_t chunk_size_;
  uint64_t leaves_;
};

}  // namespace pgbackfs
