#include "repo/chunk_tree.h"

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

INSTANTIATE_TEST_SUITE_P(Stores, ChunkTreeTest, ::testing::Bool(), StoreName);

}  // namespace
}  // namespace pgbackfs
