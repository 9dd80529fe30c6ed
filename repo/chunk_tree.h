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
  // Its leaf size when it is not the repository's chunk size (0): archived WAL files in
  // repositories of format 3 and later (repo/wal_archive.h). Snapshot entries never set it.
  uint32_t chunk_size = 0;
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

// Streams a file's bytes into fixed-size chunks and a tree. Memory: a batch of chunks (64 small
// ones, or at least 512 KiB: two of 1 MiB) plus one index block per level, whatever the file size.
class FileWriter {
 public:
  FileWriter(ChunkWriter* writer, size_t chunk_size);
  Status Append(std::string_view data);
  Result<FileData> Finish();
  uint64_t size() const { return size_; }

 private:
  Status FlushPending();

  Status AddChunks(std::string_view whole_chunks);

  ChunkWriter* writer_;
  size_t chunk_size_;
  size_t batch_bytes_;  // whole chunks handed to the writer at a time (hashed in parallel)
  TreeBuilder tree_;
  std::string pending_;  // less than a batch, not yet handed to the writer
  uint64_t size_ = 0;
};

// Random and sequential access to a file stored as a tree. Thread-compatible: one reader per
// thread, any number per store. Index blocks come through the store's chunk cache.
class TreeReader {
 public:
  // `chunk_size` is the repository's; file.chunk_size, when set, wins.
  TreeReader(ChunkStore* store, const FileData& file, size_t chunk_size);

  size_t chunk_size() const { return chunk_size_; }  // the file's leaf size
  uint64_t leaf_count() const { return leaves_; }
  size_t LeafSize(uint64_t index) const;
  // Id of leaf `index` (< leaf_count()).
  Result<ChunkId> Leaf(uint64_t index);
  // Calls fn(index, id) for each leaf in order, reading each index block once. Stops at the first
  // error from the tree or from fn. `on_block` (optional) sees each index block id.
  Status ForEachLeaf(const std::function<Status(uint64_t, const ChunkId&)>& fn,
                     const std::function<Status(const ChunkId&)>& on_block = nullptr);
  // The ids of leaves [first, first + count) (clipped to the file), reading each index block on
  // the way once.
  Status Leaves(uint64_t first, uint64_t count, std::vector<ChunkId>* ids);
  // Reads [offset, offset + len) clipped to the file size, appending to `out`. On error, `out`
  // is as it was. A read of at least kDirectReadBytes fetches and decodes its chunks in parallel
  // (ChunkStore::ParallelFor) straight into `out`, past the chunk cache: a large read is
  // sequential, the kernel's page cache keeps what it returns, and its chunks would only push
  // index blocks and small reads' chunks out of the cache. Smaller reads go through the cache.
  Status Read(uint64_t offset, size_t len, std::string* out);
  static constexpr size_t kDirectReadBytes = 64 << 10;

 private:
  Status CollectLeaves(int height, const ChunkId& id, uint64_t node_first, uint64_t first,
                       uint64_t end, std::vector<ChunkId>* ids);
  Status ReadCached(uint64_t offset, uint64_t end, std::string* out);
  Status ReadDirect(uint64_t offset, uint64_t end, std::string* out);
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
