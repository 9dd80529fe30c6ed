#include "repo/chunk_tree.h"

#include <algorithm>
#include <random>

#include "tests/unit/test_util.h"

namespace pgbackfs {
namespace {

class ChunkTreeTest : public RepoTest {
 protected:
  FileData Store(const std::string& data, size_t piece = 100000) {
    ChunkWriter writer(repo_->chunks());
    FileWriter fw(&writer, kChunk);
    for (size_t off = 0; off < data.size(); off += piece) {
      EXPECT_TRUE(fw.Append(std::string_view(data).substr(off, piece)).ok());
    }
    auto fd = fw.Finish();
    EXPECT_TRUE(fd.ok());
    EXPECT_TRUE(writer.Flush(false).ok());
    last_stats_ = writer.stats();
    return *fd;
  }
  std::string ReadAll(const FileData& fd) {
    TreeReader reader(repo_->chunks(), fd, kChunk);
    std::string out;
    EXPECT_TRUE(reader.Read(0, fd.size, &out).ok());
    return out;
  }
  static constexpr size_t kChunk = 8192;
  WriteStats last_stats_;
};

TEST_P(ChunkTreeTest, RoundTripsAllShapes) {
  // Sizes around the chunk and fanout boundaries, including two and three tree levels.
  for (size_t size :
       {size_t{0}, size_t{1}, kChunk - 1, kChunk, kChunk + 1, kChunk * 2, kChunk * kTreeFanout,
        kChunk * kTreeFanout + 5, kChunk * (kTreeFanout + 1), kChunk * 3 * kTreeFanout + 77}) {
    std::string data = RandomBytes(size, static_cast<uint32_t>(size));
    FileData fd = Store(data, 33333);
    EXPECT_EQ(fd.size, size);
    EXPECT_EQ(ReadAll(fd), data) << "size " << size;
  }
}

TEST_P(ChunkTreeTest, HeightGrowsWithLeaves) {
  EXPECT_EQ(Store(RandomBytes(kChunk, 1)).root.height, 0);
  EXPECT_EQ(Store(RandomBytes(kChunk * 2, 2)).root.height, 1);
  EXPECT_EQ(Store(RandomBytes(kChunk * kTreeFanout, 3)).root.height, 1);
  EXPECT_EQ(Store(RandomBytes(kChunk * kTreeFanout + 1, 4)).root.height, 2);
}

TEST_P(ChunkTreeTest, RandomReadsMatch) {
  std::string data = RandomBytes(kChunk * 700 + 123, 9);
  FileData fd = Store(data);
  TreeReader reader(repo_->chunks(), fd, kChunk);
  std::mt19937 rng(1);
  for (int i = 0; i < 200; ++i) {
    uint64_t off = rng() % (data.size() + 10);
    size_t len = rng() % 70000;
    std::string out;
    ASSERT_TRUE(reader.Read(off, len, &out).ok());
    EXPECT_EQ(out, off >= data.size() ? "" : data.substr(off, len));
  }
}

TEST_P(ChunkTreeTest, SparseFilesStoreNothing) {
  FileData fd = Store(std::string(kChunk * 1500, '\0'));
  EXPECT_EQ(last_stats_.new_stored_bytes, 0u);
  EXPECT_TRUE(fd.root.id.IsZero());
  EXPECT_EQ(ReadAll(fd), std::string(kChunk * 1500, '\0'));
}

TEST_P(ChunkTreeTest, SmallChangeAddsLittle) {
  // Invariant 7: changing 1% of a file's chunks adds about 1% (data and index blocks).
  std::string data = RandomBytes(kChunk * 2000, 10);
  FileData first = Store(data);
  uint64_t full = last_stats_.new_stored_bytes;
  for (int i = 0; i < 20; ++i) data[(100 + i) * kChunk + 7] ^= 1;  // 20 contiguous chunks
  FileData second = Store(data);
  EXPECT_NE(first.root, second.root);
  EXPECT_LT(last_stats_.new_stored_bytes, full / 50);
  EXPECT_EQ(ReadAll(second), data);
}

TEST_P(ChunkTreeTest, ForEachLeafVisitsInOrder) {
  std::string data = RandomBytes(kChunk * 600, 11);
  FileData fd = Store(data);
  TreeReader reader(repo_->chunks(), fd, kChunk);
  uint64_t expect = 0;
  int blocks = 0;
  ASSERT_TRUE(reader
                  .ForEachLeaf(
                      [&](uint64_t i, const ChunkId& id) {
                        EXPECT_EQ(i, expect++);
                        EXPECT_EQ(id, ComputeChunkId(data.substr(i * kChunk, kChunk)));
                        return Status::OK();
                      },
                      [&](const ChunkId&) {
                        ++blocks;
                        return Status::OK();
                      })
                  .ok());
  EXPECT_EQ(expect, 600u);
  EXPECT_EQ(blocks, 3);  // two leaf blocks and the root
}

TEST_P(ChunkTreeTest, MissingIndexBlockIsAnError) {
  std::string data = RandomBytes(kChunk * 10, 12);
  FileData fd = Store(data);
  KvBatch batch;
  batch.Delete(Cf::kChunks, fd.root.id.AsKey());
  ASSERT_TRUE(repo_->kv()->Write(batch, false).ok());
  TreeReader reader(repo_->chunks(), fd, kChunk);
  std::string out;
  EXPECT_FALSE(reader.Read(0, 100, &out).ok());
}

// Reads of kDirectReadBytes or more take the batched path (leaf ids for the range at once,
// chunks fetched in parallel straight into the output); smaller ones go through the cache.
// Both give the file's bytes, wherever the range starts and ends.
TEST_P(ChunkTreeTest, BatchedReadsEqualSingleReads) {
  std::string data = RandomBytes(kChunk * 1300 + 321, 13);
  std::fill(data.begin() + kChunk * 40, data.begin() + kChunk * 600, '\0');  // zero leaves too
  FileData fd = Store(data);
  TreeReader reader(repo_->chunks(), fd, kChunk);
  std::vector<ChunkId> ids;
  ASSERT_TRUE(reader.Leaves(0, reader.leaf_count(), &ids).ok());
  std::vector<ChunkId> walked;
  ASSERT_TRUE(reader
                  .ForEachLeaf([&](uint64_t, const ChunkId& id) {
                    walked.push_back(id);
                    return Status::OK();
                  })
                  .ok());
  EXPECT_TRUE(ids == walked);
  ASSERT_TRUE(reader.Leaves(511, 3, &ids).ok());  // across an index block boundary
  EXPECT_TRUE(ids == std::vector<ChunkId>(walked.begin() + 511, walked.begin() + 514));
  ASSERT_TRUE(reader.Leaves(1300, 10, &ids).ok());  // clipped to the file
  EXPECT_EQ(ids.size(), 1u);

  std::mt19937 rng(2);
  for (int i = 0; i < 100; ++i) {
    uint64_t off = rng() % data.size();
    size_t len = TreeReader::kDirectReadBytes + rng() % (3 << 20);
    std::string batched = "x";  // appended to, after what is there
    ASSERT_TRUE(reader.Read(off, len, &batched).ok());
    std::string single = "x";
    for (uint64_t at = off; at < std::min<uint64_t>(data.size(), off + len); at += 5000) {
      size_t n = std::min<uint64_t>(5000, off + len - at);
      ASSERT_TRUE(reader.Read(at, n, &single).ok());
    }
    ASSERT_TRUE(batched == single) << off << " +" << len;
    ASSERT_TRUE(batched == "x" + data.substr(off, len)) << off << " +" << len;
  }
}

// A file whose FileData names its own leaf size (archived WAL) is read with it, whatever the
// reader is told.
TEST_P(ChunkTreeTest, FileChunkSizeWins) {
  constexpr size_t kBig = 64 << 10;
  std::string data = RandomBytes(kBig * 20 + 5, 14);
  ChunkWriter writer(repo_->chunks());
  FileWriter fw(&writer, kBig);
  ASSERT_TRUE(fw.Append(data).ok());
  auto fd = fw.Finish();
  ASSERT_TRUE(fd.ok());
  ASSERT_TRUE(writer.Flush(false).ok());
  fd->chunk_size = kBig;
  TreeReader reader(repo_->chunks(), *fd, kChunk);
  EXPECT_EQ(reader.chunk_size(), kBig);
  EXPECT_EQ(reader.leaf_count(), 21u);
  EXPECT_EQ(ReadAll(*fd), data);
  std::string part;
  ASSERT_TRUE(reader.Read(kBig - 3, 10, &part).ok());
  EXPECT_EQ(part, data.substr(kBig - 3, 10));
}

// A damaged or missing chunk inside a batched read fails the whole read (never wrong bytes),
// names the leaf's offset, and leaves the output as it was.
TEST_P(ChunkTreeTest, BadChunkInsideABatchFailsTheRead) {
  std::string data = RandomBytes(kChunk * 300, 15);
  FileData fd = Store(data);
  TreeReader reader(repo_->chunks(), fd, kChunk);
  std::vector<ChunkId> ids;
  ASSERT_TRUE(reader.Leaves(0, 300, &ids).ok());
  // Chunk 137's stored bytes are damaged; chunk 250 is gone, its data and its `chunks` entry.
  std::string stored;
  ASSERT_TRUE(repo_->chunks()->GetStored(ids[137], &stored).ok());
  for (size_t i = 1; i < stored.size(); i += 7) stored[i] = static_cast<char>(stored[i] ^ 0x33);
  ASSERT_TRUE(repo_->chunks()->ReplaceStored(ids[137], stored).ok());
  std::string entry;
  ASSERT_TRUE(repo_->kv()->Get(Cf::kChunks, ids[250].AsKey(), &entry).ok());
  KvBatch batch;
  batch.Delete(Cf::kChunks, ids[250].AsKey());
  if (entry.size() == 13) batch.Delete(Cf::kChunkData, entry.substr(1, 8));  // its location
  ASSERT_TRUE(repo_->kv()->Write(batch, false).ok());

  std::string out = "kept";
  Status s = reader.Read(kChunk * 100, kChunk * 100, &out);
  EXPECT_TRUE(s.IsCorruption()) << s.ToString();
  EXPECT_NE(s.message().find("leaf at offset " + std::to_string(kChunk * 137)), std::string::npos)
      << s.message();
  EXPECT_EQ(out, "kept");
  s = reader.Read(kChunk * 200, kChunk * 100, &out);
  EXPECT_TRUE(s.IsNotFound()) << s.ToString();
  EXPECT_EQ(out, "kept");
  // Partly covered: the first and last chunks of the range are cut.
  s = reader.Read(kChunk * 137 - 5, TreeReader::kDirectReadBytes, &out);
  EXPECT_TRUE(s.IsCorruption()) << s.ToString();
  // Ranges without them read fine.
  out.clear();
  ASSERT_TRUE(reader.Read(0, kChunk * 137, &out).ok());
  EXPECT_TRUE(out == data.substr(0, kChunk * 137));
}

INSTANTIATE_TEST_SUITE_P(Stores, ChunkTreeTest, ::testing::Bool(), StoreName);

}  // namespace
}  // namespace pgbackfs
