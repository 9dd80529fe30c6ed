// expire (repo/retention.h) and gc (repo/gc.h), on both stores: what is removed and kept, that a
// collection frees exactly the unreferenced chunks, and that it deletes nothing a writer running
// beside it reuses.
#include <atomic>
#include <chrono>
#include <map>
#include <random>
#include <thread>

#include "repo/clone.h"
#include "repo/gc.h"
#include "repo/retention.h"
#include "repo/verify.h"
#include "repo/wal_archive.h"
#include "tests/unit/test_util.h"

namespace pgbackfs {
namespace {

constexpr uint64_t kSeg = 1 << 20;

// A segment the archive accepts: a PostgreSQL 15 long page header for `name`, then random data.
std::string Segment(const std::string& name, uint32_t seed) {
  WalFileName parsed;
  EXPECT_TRUE(ParseWalFileName(std::string_view(name), &parsed).ok()) << name;
  std::string s = RandomBytes(kSeg, seed);
  auto put = [&](size_t off, uint64_t v, int bytes) {
    for (int i = 0; i < bytes; ++i) s[off + i] = static_cast<char>(v >> (8 * i));
  };
  put(0, 0xD110, 2);
  put(2, 0x0002, 2);  // XLP_LONG_HEADER
  put(4, parsed.tli, 4);
  put(8, (uint64_t{parsed.log} << 32) + parsed.seg * kSeg, 8);
  put(16, 0, 4);
  put(24, 7301234567890123456ull, 8);
  put(32, kSeg, 4);
  put(36, 8192, 4);
  return s;
}

class RetentionGcTest : public RepoTest {
 protected:
  // A backup-like snapshot: a shared file, a file of its own, and a big file (a two-level tree).
  SnapshotInfo Backup(int64_t time, uint32_t seed, const std::string& start_lsn = "0/100028") {
    auto b = repo_->NewSnapshotBuilder();
    EXPECT_TRUE(b->AddSmallFile("PG_VERSION", 0600, time, "15\n").ok());
    EXPECT_TRUE(b->AddSmallFile("base/1/shared", 0600, time, RandomBytes(8192 * 40, 7)).ok());
    EXPECT_TRUE(b->AddSmallFile("base/1/own", 0600, time, RandomBytes(8192 * 20, seed)).ok());
    EXPECT_TRUE(
        b->AddSmallFile("base/1/big", 0600, time, RandomBytes(8192 * 600, seed + 1000)).ok());
    auto root = b->Finish();
    EXPECT_TRUE(root.ok());
    SnapshotInfo info;
    info.id = *repo_->NewSnapshotId(time);
    info.root = *root;
    info.start_time = time - 10;
    info.stop_time = time;
    info.start_lsn = start_lsn;
    EXPECT_TRUE(repo_->CommitSnapshot(info).ok());
    return info;
  }
  void Push(const std::string& name, uint32_t seed) {
    WalArchive wal(repo_.get());
    auto w = wal.NewWriter(name);
    ASSERT_TRUE(w.ok()) << w.status().ToString();
    std::string data = Segment(name, seed);
    ASSERT_TRUE((*w)->Write(0, data).ok());
    Status s = (*w)->Commit();
    ASSERT_TRUE(s.ok()) << s.ToString();
  }
  uint64_t Entries(Cf cf) {
    uint64_t n = 0;
    auto it = repo_->kv()->NewIterator(cf);
    for (it->Seek(""); it->Valid(); it->Next()) n++;
    return n;
  }
  uint64_t StoredChunks() { return Entries(Cf::kChunks); }
  // Verify finds no damage. The synthetic segments are random after their header, which
  // verify rightly reports as WAL it cannot parse: that is not damage.
  void ExpectVerifies() {
    VerifyReport report;
    ASSERT_TRUE(VerifyRepository(repo_.get(), "", &report).ok());
    for (const VerifyProblem& p : report.problems) {
      if (p.message.find("cannot be parsed") != std::string::npos) continue;
      ADD_FAILURE() << p.snapshot << " " << p.path << ": " << p.message;
    }
  }
  std::string ReadFile(const SnapshotInfo& snap, const std::string& path) {
    auto e = repo_->reader()->Lookup(snap.root, path);
    EXPECT_TRUE(e.ok());
    TreeReader r(repo_->chunks(), e->data, repo_->config().chunk_size);
    std::string out;
    EXPECT_TRUE(r.Read(0, e->data.size, &out).ok());
    return out;
  }
};

TEST(ParseDurationTest, Units) {
  EXPECT_EQ(*ParseDuration("90s"), 90);
  EXPECT_EQ(*ParseDuration("15m"), 900);
  EXPECT_EQ(*ParseDuration("12h"), 43200);
  EXPECT_EQ(*ParseDuration("30d"), 30 * 86400);
  EXPECT_EQ(*ParseDuration("2w"), 14 * 86400);
  for (const char* bad : {"", "d", "10", "10x", "-1d", "1.5d", "10dd", "9999999999999d"}) {
    EXPECT_FALSE(ParseDuration(bad).ok()) << bad;
  }
}

TEST_P(RetentionGcTest, KeepRules) {
  const int64_t day = 86400, t0 = 1790000000;  // 2026-09-21
  std::vector<SnapshotInfo> s;
  for (int i = 0; i < 6; ++i) s.push_back(Backup(t0 + i * day / 2, i + 1));  // two a day
  RetentionPolicy p;
  p.keep_last = 2;
  auto plan = PlanExpire(repo_.get(), p, t0 + 3 * day);
  ASSERT_TRUE(plan.ok()) << plan.status().ToString();
  std::vector<bool> kept;
  for (const auto& d : plan->snapshots) kept.push_back(d.keep);
  EXPECT_EQ(kept, (std::vector<bool>{false, false, false, false, true, true}));

  // t0 is 14:13 UTC, so the days are: s0 | s1 s2 | s3 s4 | s5. The newest of each of the 3
  // latest days: s5, s4, s2.
  p.keep_daily = 3;
  plan = PlanExpire(repo_.get(), p, t0 + 3 * day);
  kept.clear();
  for (const auto& d : plan->snapshots) kept.push_back(d.keep);
  EXPECT_EQ(kept, (std::vector<bool>{false, false, true, false, true, true}));

  p.keep_daily = 0;
  p.keep_within_sec = day * 16 / 10;  // finished after t0 + 1.4 days: s3, s4, s5
  plan = PlanExpire(repo_.get(), p, t0 + 3 * day);
  kept.clear();
  for (const auto& d : plan->snapshots) kept.push_back(d.keep);
  EXPECT_EQ(kept, (std::vector<bool>{false, false, false, true, true, true}));

  p.keep_last = 0;
  EXPECT_EQ(PlanExpire(repo_.get(), p, t0).status().code(), Status::Code::kInvalidArgument);
  p.keep_last = 1;
  p.remove = {"no-such-snapshot"};
  EXPECT_TRUE(PlanExpire(repo_.get(), p, t0).status().IsNotFound());
  // An explicit removal removes only what it names.
  p = RetentionPolicy();
  p.remove = {s[2].id};
  plan = PlanExpire(repo_.get(), p, t0 + 3 * day);
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->removed_snapshots(), 1u);
  EXPECT_FALSE(plan->snapshots[2].keep);
}

TEST_P(RetentionGcTest, ClonesAndSealedClonesKeepTheirSnapshots) {
  SnapshotInfo a = Backup(1790000000, 1), b = Backup(1790001000, 2), c = Backup(1790002000, 3);
  ASSERT_TRUE(CloneFs::Create(repo_.get(), "from-a", a).ok());
  SnapshotInfo sealed = b;
  sealed.id = *repo_->NewSnapshotId(1790001500);
  sealed.kind = "sealed-clone";
  sealed.stop_time = 1790001500;
  ASSERT_TRUE(repo_->CommitSnapshot(sealed).ok());
  RetentionPolicy p;
  p.keep_last = 1;
  auto plan = PlanExpire(repo_.get(), p, 1790003000);
  ASSERT_TRUE(plan.ok());
  std::map<std::string, bool> kept;
  for (const auto& d : plan->snapshots) kept[d.snapshot.id] = d.keep;
  EXPECT_TRUE(kept[a.id]);  // clone from-a
  EXPECT_FALSE(kept[b.id]);
  EXPECT_TRUE(kept[sealed.id]);
  EXPECT_TRUE(kept[c.id]);
  // Explicitly removing a snapshot with a clone is refused.
  p.remove = {a.id};
  EXPECT_EQ(PlanExpire(repo_.get(), p, 1790003000).status().code(),
            Status::Code::kFailedPrecondition);
  // A clone made between planning and applying stops the expire, which removes nothing.
  ASSERT_TRUE(CloneFs::Create(repo_.get(), "from-b", b).ok());
  Status s = ApplyExpire(repo_.get(), *plan);
  EXPECT_EQ(s.code(), Status::Code::kFailedPrecondition) << s.ToString();
  EXPECT_EQ(repo_->ListSnapshots()->size(), 4u);
  // After dropping the clone, expire and gc; the clone of `a` still reads its snapshot's data.
  ASSERT_TRUE(CloneFs::Drop(repo_.get(), "from-b").ok());
  p = RetentionPolicy();
  p.keep_last = 1;
  plan = PlanExpire(repo_.get(), p, 1790003000);
  ASSERT_TRUE(plan.ok());
  ASSERT_TRUE(ApplyExpire(repo_.get(), *plan).ok());
  EXPECT_EQ(repo_->ListSnapshots()->size(), 3u);
  GcReport report;
  ASSERT_TRUE(CollectGarbage(repo_.get(), {}, &report).ok());
  EXPECT_EQ(report.deleted_chunks, 0u);  // the sealed clone shares every chunk of `b`
  auto clone = CloneFs::Open(repo_.get(), "from-a");
  ASSERT_TRUE(clone.ok());
  auto attr = (*clone)->LookupPath("base/1/own");
  ASSERT_TRUE(attr.ok());
  std::string got;
  ASSERT_TRUE((*clone)->Read(attr->ino, 0, attr->size, &got).ok());
  EXPECT_EQ(got, RandomBytes(8192 * 20, 1));
  ExpectVerifies();
}

TEST_P(RetentionGcTest, GcFreesExactlyTheUnreferencedChunks) {
  SnapshotInfo a = Backup(1790000000, 1), b = Backup(1790001000, 2);
  // An orphan: chunks a dead writer left behind.
  {
    ChunkWriter w(repo_->chunks());
    ASSERT_TRUE(w.Add(RandomBytes(8192, 99)).ok());
    ASSERT_TRUE(w.Flush(true).ok());
  }
  // Two writers that stored the same new chunk at once: the location entry of the last one
  // wins, and the other's located data is named by no chunk.
  {
    ChunkWriter w1(repo_->chunks()), w2(repo_->chunks());
    ASSERT_TRUE(w1.Add(RandomBytes(8192, 98)).ok());
    ASSERT_TRUE(w2.Add(RandomBytes(8192, 98)).ok());
    ASSERT_TRUE(w1.Flush(false).ok());
    ASSERT_TRUE(w2.Flush(true).ok());
  }
  const uint64_t before = StoredChunks();
  ASSERT_EQ(Entries(Cf::kChunkData), before + 1);
  GcReport report;
  GcOptions dry;
  dry.dry_run = true;
  ASSERT_TRUE(CollectGarbage(repo_.get(), dry, &report).ok());
  EXPECT_EQ(report.deleted_chunks, 2u);
  EXPECT_EQ(report.deleted_orphans, 1u);
  EXPECT_EQ(StoredChunks(), before);
  EXPECT_EQ(Entries(Cf::kChunkData), before + 1);

  // Remove `a`: the orphan, its own chunks (own: 20 leaves + an index block; big: 600 leaves + 2
  // index blocks + a root block) and its 3 listings go; the shared file and `b` stay.
  RetentionPolicy p;
  p.keep_last = 1;
  auto plan = PlanExpire(repo_.get(), p, 1790002000);
  ASSERT_TRUE(plan.ok());
  ASSERT_TRUE(ApplyExpire(repo_.get(), *plan).ok());
  report = GcReport();
  ASSERT_TRUE(CollectGarbage(repo_.get(), {}, &report).ok());
  EXPECT_EQ(report.snapshots, 1u);
  EXPECT_EQ(report.deleted_chunks, 2u + (20 + 1) + (600 + 2 + 1) + 3);
  EXPECT_EQ(report.deleted_orphans, 1u);
  EXPECT_EQ(StoredChunks(), before - report.deleted_chunks);
  EXPECT_EQ(Entries(Cf::kChunkData), StoredChunks());  // each chunk's data went with it
  EXPECT_EQ(ReadFile(b, "base/1/big"), RandomBytes(8192 * 600, 1002));
  EXPECT_EQ(ReadFile(b, "base/1/shared"), RandomBytes(8192 * 40, 7));
  ExpectVerifies();
  // Nothing left to collect.
  report = GcReport();
  ASSERT_TRUE(CollectGarbage(repo_.get(), {}, &report).ok());
  EXPECT_EQ(report.deleted_chunks, 0u);
}

TEST_P(RetentionGcTest, ExpireRemovesWalBeforeTheOldestKeptBackup) {
  for (int i = 1; i <= 6; ++i) Push("00000001000000000000000" + std::to_string(i), i);
  Backup(1790000000, 1, "0/100028");  // segment 1 (1 MiB segments)
  Backup(1790001000, 2, "0/400100");  // segment 4
  RetentionPolicy p;
  p.keep_last = 1;
  auto plan = PlanExpire(repo_.get(), p, 1790002000);
  ASSERT_TRUE(plan.ok()) << plan.status().ToString();
  EXPECT_EQ(plan->wal_files,
            (std::vector<std::string>{"000000010000000000000001", "000000010000000000000002",
                                      "000000010000000000000003"}));
  EXPECT_EQ(plan->wal_cutoff, "0000000000000004");
  ASSERT_TRUE(ApplyExpire(repo_.get(), *plan).ok());
  WalArchive wal(repo_.get());
  EXPECT_TRUE(wal.Get("000000010000000000000003").status().IsNotFound());
  ASSERT_TRUE(wal.Get("000000010000000000000004").ok());
  // The index forgot the removed segments and kept the others.
  auto it = repo_->kv()->NewIterator(Cf::kMeta);
  int segs = 0;
  for (it->Seek("walidx/seg/"); it->Valid() && it->key().substr(0, 11) == "walidx/seg/"; it->Next())
    segs++;
  EXPECT_EQ(segs, 3);
  GcReport report;
  ASSERT_TRUE(CollectGarbage(repo_.get(), {}, &report).ok());
  EXPECT_EQ(report.wal_files, 3u);
  EXPECT_GT(report.deleted_chunks, 3u * 64);  // each removed segment: 128 chunks, half random
  std::string got;
  auto info = wal.Get("000000010000000000000006");
  ASSERT_TRUE(info.ok());
  ASSERT_TRUE(wal.ReadFile(*info,
                           [&](std::string_view d) {
                             got.append(d);
                             return Status::OK();
                           })
                  .ok());
  EXPECT_EQ(got, Segment("000000010000000000000006", 6));
  ExpectVerifies();
}

// A writer that started before the collection holds it up until it is gone; one that starts
// during it protects the chunks it reuses.
TEST_P(RetentionGcTest, WritersBesideACollectionLoseNothing) {
  ChunkStore* store = repo_->chunks();
  const std::string orphan_a = RandomBytes(8192, 501), orphan_b = RandomBytes(8192, 502);
  {
    ChunkWriter w(store);
    ASSERT_TRUE(w.Add(orphan_a).ok());
    ASSERT_TRUE(w.Add(orphan_b).ok());
    ASSERT_TRUE(w.Flush(true).ok());
  }
  // 1. An older writer reuses orphan_a (a dedup hit) and commits a snapshot naming it only after
  // the collection began: the collection waits for it, then marks the snapshot.
  auto builder = repo_->NewSnapshotBuilder();
  ASSERT_TRUE(builder->AddSmallFile("f", 0600, 1, orphan_a).ok());
  std::atomic<bool> waited{false}, done{false};
  GcReport report;
  Status gc_status;
  std::thread gc([&] {
    gc_status = CollectGarbage(repo_.get(), {}, &report, [&](const std::string& phase, uint64_t) {
      if (phase == "waiting for writers") waited = true;
    });
    done = true;
  });
  for (int i = 0; i < 200 && !waited; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  EXPECT_TRUE(waited.load());
  EXPECT_FALSE(done.load());
  auto root = builder->Finish();
  ASSERT_TRUE(root.ok());
  SnapshotInfo info;
  info.id = *repo_->NewSnapshotId(1790000000);
  info.root = *root;
  ASSERT_TRUE(repo_->CommitSnapshot(info).ok());
  builder.reset();
  gc.join();
  ASSERT_TRUE(gc_status.ok()) << gc_status.ToString();
  EXPECT_EQ(report.deleted_chunks, 1u);  // orphan_b only
  EXPECT_EQ(ReadFile(info, "f"), orphan_a);

  // 2. During a collection, a new writer reuses a chunk the sweep would delete: it is kept.
  {
    ChunkWriter w(store);
    ASSERT_TRUE(w.Add(orphan_b).ok());
    ASSERT_TRUE(w.Flush(true).ok());
  }
  ASSERT_TRUE(store->BeginCollection().ok());
  EXPECT_EQ(store->BeginCollection().code(), Status::Code::kFailedPrecondition);
  {
    ChunkWriter w(store);
    auto id = w.Add(orphan_b);
    ASSERT_TRUE(id.ok());
    uint64_t bytes = 0;
    auto deleted = store->DeleteUnprotected({*id}, &bytes);
    ASSERT_TRUE(deleted.ok());
    EXPECT_EQ(*deleted, 0u);
    EXPECT_TRUE(*store->Contains(*id));
  }
  store->EndCollection();
  ExpectVerifies();
}

TEST_P(RetentionGcTest, DamagedTreeStopsTheCollectionBeforeAnyDelete) {
  SnapshotInfo a = Backup(1790000000, 1);
  {
    ChunkWriter w(repo_->chunks());
    ASSERT_TRUE(w.Add(RandomBytes(8192, 77)).ok());  // garbage that must survive the failed gc
    ASSERT_TRUE(w.Flush(true).ok());
  }
  // Delete the big file's root index block.
  auto e = repo_->reader()->Lookup(a.root, "base/1/big");
  ASSERT_TRUE(e.ok());
  ASSERT_GT(e->data.root.height, 0);
  KvBatch batch;
  batch.Delete(Cf::kChunks, e->data.root.id.AsKey());
  ASSERT_TRUE(repo_->kv()->Write(batch, true).ok());
  const uint64_t before = StoredChunks();
  GcReport report;
  Status s = CollectGarbage(repo_.get(), {}, &report);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.ToString().find("nothing deleted"), std::string::npos) << s.ToString();
  EXPECT_EQ(StoredChunks(), before);
  // The store is usable afterwards: the collection ended.
  EXPECT_TRUE(repo_->chunks()->BeginCollection().ok());
  repo_->chunks()->EndCollection();
}

INSTANTIATE_TEST_SUITE_P(Stores, RetentionGcTest, ::testing::Bool(), StoreName);

}  // namespace
}  // namespace pgbackfs
