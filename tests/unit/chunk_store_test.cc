#include "repo/chunk_store.h"

#include "repo/chunk_tree.h"
#include "tests/unit/test_util.h"

namespace pgbackfs {
namespace {

class ChunkStoreTest : public RepoTest {};

TEST_P(ChunkStoreTest, StoresOnceAndReadsBack) {
  ChunkStore* store = repo_->chunks();
  ChunkWriter writer(store);
  std::string a = RandomBytes(8192, 1), b = RandomBytes(8192, 2);
  std::vector<ChunkId> ids;
  ASSERT_TRUE(writer.AddMany({a, b, a}, &ids).ok());
  EXPECT_EQ(ids[0], ids[2]);
  EXPECT_NE(ids[0], ids[1]);
  EXPECT_EQ(writer.stats().chunks, 3u);
  EXPECT_EQ(writer.stats().new_chunks, 2u);
  ASSERT_TRUE(writer.Flush(true).ok());

  std::string out;
  ASSERT_TRUE(store->Get(ids[0], a.size(), &out).ok());
  EXPECT_EQ(out, a);
  ASSERT_TRUE(store->Get(ids[1], b.size(), &out).ok());
  EXPECT_EQ(out, b);

  // Storing again adds nothing.
  ChunkWriter again(store);
  ASSERT_TRUE(again.Add(a).ok());
  EXPECT_EQ(again.stats().new_chunks, 0u);
  EXPECT_EQ(again.stats().new_stored_bytes, 0u);
}

TEST_P(ChunkStoreTest, ZeroChunkCostsNothing) {
  ChunkWriter writer(repo_->chunks());
  auto id = writer.Add(std::string(8192, '\0'));
  ASSERT_TRUE(id.ok());
  EXPECT_TRUE(id->IsZero());
  EXPECT_EQ(writer.stats().zero_chunks, 1u);
  EXPECT_EQ(writer.stats().new_stored_bytes, 0u);
  std::string out;
  ASSERT_TRUE(repo_->chunks()->Get(*id, 8192, &out).ok());
  EXPECT_EQ(out, std::string(8192, '\0'));
}

TEST_P(ChunkStoreTest, CompressesCompressibleData) {
  ChunkWriter writer(repo_->chunks());
  ASSERT_TRUE(writer.Add(std::string(8192, 'x')).ok());
  EXPECT_LT(writer.stats().new_stored_bytes, 200u);
}

TEST_P(ChunkStoreTest, DetectsCorruptionAndAbsence) {
  ChunkStore* store = repo_->chunks();
  ChunkWriter writer(store);
  std::string a = RandomBytes(8192, 3);
  auto id = writer.Add(a);
  ASSERT_TRUE(id.ok());
  ASSERT_TRUE(writer.Flush(false).ok());

  // Replace the stored value with another chunk's valid encoding: the hash check must catch it.
  KvBatch batch;
  batch.Put(Cf::kChunks, id->AsKey(), store->Encode(RandomBytes(8192, 4)));
  ASSERT_TRUE(repo_->kv()->Write(batch, false).ok());
  std::string out;
  Status s = store->Get(*id, a.size(), &out);
  EXPECT_TRUE(s.IsCorruption()) << s.ToString();

  // A flipped byte in the encoded value.
  std::string enc = store->Encode(a);
  enc[enc.size() / 2] ^= 0x40;
  batch.Clear();
  batch.Put(Cf::kChunks, id->AsKey(), enc);
  ASSERT_TRUE(repo_->kv()->Write(batch, false).ok());
  EXPECT_TRUE(store->Get(*id, a.size(), &out).IsCorruption());

  // Garbage codec byte.
  batch.Clear();
  batch.Put(Cf::kChunks, id->AsKey(), std::string("\x07garbage", 8));
  ASSERT_TRUE(repo_->kv()->Write(batch, false).ok());
  EXPECT_TRUE(store->Get(*id, a.size(), &out).IsCorruption());

  ChunkId missing = ComputeChunkId(RandomBytes(100, 5));
  EXPECT_TRUE(store->Get(missing, 100, &out).IsNotFound());
}

TEST_P(ChunkStoreTest, SurvivesReopen) {
  if (GetParam()) GTEST_SKIP() << "the memory store does not persist";
  std::string a = RandomBytes(20000, 6);
  ChunkId id;
  {
    ChunkWriter writer(repo_->chunks());
    auto r = writer.Add(a);
    ASSERT_TRUE(r.ok());
    id = *r;
    ASSERT_TRUE(writer.Flush(true).ok());
  }
  Reopen();
  std::string out;
  ASSERT_TRUE(repo_->chunks()->Get(id, a.size(), &out).ok());
  EXPECT_EQ(out, a);
}

INSTANTIATE_TEST_SUITE_P(Stores, ChunkStoreTest, ::testing::Bool(), StoreName);

}  // namespace
}  // namespace pgbackfs
