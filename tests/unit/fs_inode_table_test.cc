#include <gtest/gtest.h>

#include <thread>
#include <vector>

#include "fs/dir_cache.h"
#include "fs/inode_table.h"

namespace pgbackfs {
namespace {

Node FileProto(uint64_t parent, const std::string& name, uint64_t size) {
  Node n;
  n.kind = NodeKind::kSnapshotEntry;
  n.parent = parent;
  n.snapshot_id = "s1";
  n.path = name;
  n.entry.name = name;
  n.entry.type = EntryType::kFile;
  n.entry.data.size = size;
  return n;
}

TEST(InodeTable, FixedDirectories) {
  InodeTable t(1000);
  EXPECT_EQ(t.size(), 4u);
  auto root = t.Get(InodeTable::kRootIno);
  ASSERT_TRUE(root);
  EXPECT_EQ(root->kind, NodeKind::kRoot);
  EXPECT_TRUE(root->is_dir());
  EXPECT_EQ(root->entry.mtime_sec, 1000);
  auto wal = t.Find(InodeTable::kRootIno, "wal");
  ASSERT_TRUE(wal);
  EXPECT_EQ(wal->ino, InodeTable::kWalIno);
  EXPECT_EQ(wal->area(), Area::kWal);
  EXPECT_EQ(t.Find(InodeTable::kRootIno, "backups")->area(), Area::kBackups);
  EXPECT_EQ(t.Find(InodeTable::kRootIno, "clones")->area(), Area::kClones);
  // Forgetting a fixed directory never removes it.
  t.Forget(InodeTable::kWalIno, 100);
  EXPECT_TRUE(t.Get(InodeTable::kWalIno));
}

TEST(InodeTable, SameNameSameInodeAndLookupCounts) {
  InodeTable t(0);
  auto a = t.Lookup(FileProto(InodeTable::kBackupsIno, "f", 10));
  auto b = t.Lookup(FileProto(InodeTable::kBackupsIno, "f", 10));
  EXPECT_EQ(a->ino, b->ino);
  EXPECT_GE(a->ino, InodeTable::kFirstDynamicIno);
  EXPECT_EQ(t.LookupCount(a->ino), 2u);
  t.Forget(a->ino, 1);
  EXPECT_TRUE(t.Get(a->ino));
  EXPECT_EQ(t.LookupCount(a->ino), 1u);
  t.Forget(a->ino, 1);
  EXPECT_FALSE(t.Get(a->ino));
  EXPECT_FALSE(t.Find(InodeTable::kBackupsIno, "f"));
  // A new lookup after the forget gets a new number: numbers are never reused.
  auto c = t.Lookup(FileProto(InodeTable::kBackupsIno, "f", 10));
  EXPECT_GT(c->ino, a->ino);
  EXPECT_EQ(t.size(), 5u);
}

TEST(InodeTable, ChangedContentGetsANewNodeAndTheOldOneLivesUntilForgotten) {
  InodeTable t(0);
  auto old_node = t.Lookup(FileProto(InodeTable::kWalIno, "x", 1));
  auto new_node = t.Lookup(FileProto(InodeTable::kWalIno, "x", 2));
  EXPECT_NE(old_node->ino, new_node->ino);
  EXPECT_EQ(t.Find(InodeTable::kWalIno, "x")->ino, new_node->ino);
  EXPECT_TRUE(t.Get(old_node->ino));
  t.Forget(old_node->ino, 1);
  EXPECT_FALSE(t.Get(old_node->ino));
  // Forgetting the old node must not drop the name of the new one.
  EXPECT_EQ(t.Find(InodeTable::kWalIno, "x")->ino, new_node->ino);
  t.Forget(new_node->ino, 1);
  EXPECT_FALSE(t.Find(InodeTable::kWalIno, "x"));
  EXPECT_EQ(t.size(), 4u);
}

TEST(InodeTable, AnonymousNodesAreNotFoundByName) {
  InodeTable t(0);
  Node p = FileProto(InodeTable::kWalIno, "000000010000000000000001", 0);
  p.kind = NodeKind::kWalNew;
  auto n = t.AddAnonymous(p);
  EXPECT_TRUE(t.Get(n->ino));
  EXPECT_FALSE(t.Find(InodeTable::kWalIno, "000000010000000000000001"));
  EXPECT_EQ(t.LookupCount(n->ino), 1u);
  // A named node of the same name does not disturb it, nor it the named one.
  auto named = t.Lookup(FileProto(InodeTable::kWalIno, "000000010000000000000001", 5));
  EXPECT_NE(named->ino, n->ino);
  t.Forget(n->ino, 1);
  EXPECT_FALSE(t.Get(n->ino));
  EXPECT_TRUE(t.Find(InodeTable::kWalIno, "000000010000000000000001"));
}

TEST(InodeTable, ForgetMoreThanLookedUpAndUnknownInodes) {
  InodeTable t(0);
  auto a = t.Lookup(FileProto(InodeTable::kBackupsIno, "f", 1));
  t.Forget(a->ino, 5);
  EXPECT_FALSE(t.Get(a->ino));
  t.Forget(123456, 1);  // unknown: ignored
  EXPECT_EQ(t.size(), 4u);
}

TEST(InodeTable, ConcurrentLookupsAndForgetsBalance) {
  InodeTable t(0);
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&t] {
      for (int k = 0; k < 2000; ++k) {
        auto n = t.Lookup(FileProto(InodeTable::kBackupsIno, "f" + std::to_string(k % 50), 1));
        t.Forget(n->ino, 1);
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(t.size(), 4u);
}

TEST(DirCache, SharesByContentAndStaysBounded) {
  DirCache cache(4096);
  int loads = 0;
  auto load = [&loads](std::vector<Entry>* out) {
    ++loads;
    for (int i = 0; i < 3; ++i) {
      Entry e;
      e.name = "e" + std::to_string(i);
      out->push_back(e);
    }
    return Status::OK();
  };
  Entry dir;
  dir.type = EntryType::kDirectory;
  dir.data.size = 100;
  auto a = cache.Get(dir, load);
  ASSERT_TRUE(a.ok());
  auto b = cache.Get(dir, load);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(loads, 1);
  EXPECT_EQ(a->get(), b->get());
  EXPECT_NE(DirCache::Find(**a, "e1"), nullptr);
  EXPECT_EQ(DirCache::Find(**a, "e3"), nullptr);
  for (int i = 0; i < 100; ++i) {
    Entry d = dir;
    d.data.size = 1000 + i;
    ASSERT_TRUE(cache.Get(d, load).ok());
    EXPECT_LE(cache.bytes(), 4096u);
  }
  EXPECT_GT(loads, 50);
  // A listing larger than the cache is returned, not kept.
  DirCache tiny(10);
  auto c = tiny.Get(dir, load);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ((*c)->size(), 3u);
  EXPECT_EQ(tiny.count(), 0u);
}

TEST(DirCache, LoadErrorsAreReturnedAndNotCached) {
  DirCache cache(1 << 20);
  Entry dir;
  dir.type = EntryType::kDirectory;
  auto r = cache.Get(dir, [](std::vector<Entry>*) { return Status::Corruption("bad"); });
  EXPECT_TRUE(r.status().IsCorruption());
  EXPECT_EQ(cache.count(), 0u);
}

}  // namespace
}  // namespace pgbackfs
