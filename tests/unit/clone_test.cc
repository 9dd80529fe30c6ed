#include "repo/clone.h"

#include "repo/verify.h"
#include "tests/unit/test_util.h"

namespace pgbackfs {
namespace {

class CloneTest : public RepoTest {
 protected:
  void SetUp() override {
    RepoTest::SetUp();
    auto b = repo_->NewSnapshotBuilder();
    big_ = RandomBytes(8192 * 700 + 100, 1);
    ASSERT_TRUE(b->AddSmallFile("base/1/big", 0600, 100, big_).ok());
    ASSERT_TRUE(b->AddSmallFile("PG_VERSION", 0600, 100, "15\n").ok());
    ASSERT_TRUE(b->AddSmallFile("postmaster.pid", 0600, 100, "1234\n").ok());
    ASSERT_TRUE(b->AddDirectory("pg_notify", 0700, 100).ok());
    ASSERT_TRUE(b->AddSmallFile("global/pg_control", 0600, 100, RandomBytes(8192, 2)).ok());
    auto root = b->Finish();
    ASSERT_TRUE(root.ok());
    snap_.id = *repo_->NewSnapshotId(1700000000);
    snap_.root = *root;
    snap_.system_identifier = "42";
    ASSERT_TRUE(repo_->CommitSnapshot(snap_).ok());
    ASSERT_TRUE(CloneFs::Create(repo_.get(), "c1", snap_).ok());
    auto fs = CloneFs::Open(repo_.get(), "c1");
    ASSERT_TRUE(fs.ok()) << fs.status().ToString();
    fs_ = std::move(fs).value();
  }
  std::string ReadPath(CloneFs* fs, const std::string& path) {
    auto attr = fs->LookupPath(path);
    EXPECT_TRUE(attr.ok()) << path << ": " << attr.status().ToString();
    std::string out;
    EXPECT_TRUE(fs->Read(attr->ino, 0, attr->size + 100, &out).ok());
    return out;
  }
  std::string Snapshot(const SnapshotInfo& s, const std::string& path) {
    auto e = repo_->reader()->Lookup(s.root, path);
    EXPECT_TRUE(e.ok()) << path;
    std::string out;
    EXPECT_TRUE(repo_->reader()->OpenFile(*e)->Read(0, e->size(), &out).ok());
    return out;
  }
  SnapshotInfo snap_;
  std::string big_;
  std::shared_ptr<CloneFs> fs_;
};

TEST_P(CloneTest, ReadsTheSnapshot) {
  EXPECT_EQ(ReadPath(fs_.get(), "base/1/big"), big_);
  EXPECT_EQ(ReadPath(fs_.get(), "PG_VERSION"), "15\n");
  std::vector<std::string> names;
  ASSERT_TRUE(fs_->ReadDir(kCloneRootIno, "",
                           [&](const std::string& n, CloneIno, EntryType) {
                             names.push_back(n);
                             return true;
                           })
                  .ok());
  EXPECT_EQ(names, (std::vector<std::string>{"PG_VERSION", "base", "global", "pg_notify",
                                             "postmaster.pid"}));
  // Resuming after a name.
  names.clear();
  ASSERT_TRUE(fs_->ReadDir(kCloneRootIno, "global",
                           [&](const std::string& n, CloneIno, EntryType) {
                             names.push_back(n);
                             return true;
                           })
                  .ok());
  EXPECT_EQ(names, (std::vector<std::string>{"pg_notify", "postmaster.pid"}));
}

TEST_P(CloneTest, WritesAreCopyOnWrite) {
  auto attr = fs_->LookupPath("base/1/big");
  ASSERT_TRUE(attr.ok());
  std::string page = RandomBytes(8192, 9);
  ASSERT_TRUE(fs_->Write(attr->ino, 8192 * 10, page).ok());       // aligned page
  ASSERT_TRUE(fs_->Write(attr->ino, 8192 * 20 + 5, "xyz").ok());  // partial
  std::string expect = big_;
  expect.replace(8192 * 10, 8192, page);
  expect.replace(8192 * 20 + 5, 3, "xyz");
  EXPECT_EQ(ReadPath(fs_.get(), "base/1/big"), expect);
  // The snapshot is untouched (invariant 4).
  EXPECT_EQ(Snapshot(snap_, "base/1/big"), big_);
  VerifyReport report;
  ASSERT_TRUE(VerifyRepository(repo_.get(), snap_.id, &report).ok());
  EXPECT_TRUE(report.ok());
}

TEST_P(CloneTest, ExtendTruncateAndRegrow) {
  auto attr = fs_->LookupPath("base/1/big");
  ASSERT_TRUE(attr.ok());
  CloneSetAttr cut;
  cut.size = 8192 * 3 + 10;
  ASSERT_TRUE(fs_->SetAttr(attr->ino, cut).ok());
  EXPECT_EQ(ReadPath(fs_.get(), "base/1/big"), big_.substr(0, 8192 * 3 + 10));
  CloneSetAttr grow;
  grow.size = 8192 * 5;
  ASSERT_TRUE(fs_->SetAttr(attr->ino, grow).ok());
  std::string expect = big_.substr(0, 8192 * 3 + 10) + std::string(8192 * 2 - 10, '\0');
  EXPECT_EQ(ReadPath(fs_.get(), "base/1/big"), expect);
  // Writing past the end leaves a hole of zeros.
  ASSERT_TRUE(fs_->Write(attr->ino, 8192 * 9 + 1, "end").ok());
  expect += std::string(8192 * 4 + 1, '\0') + "end";
  EXPECT_EQ(ReadPath(fs_.get(), "base/1/big"), expect);
}

// Reads across chunks decode their chunks in parallel (CloneFs::ReadRange), reads within one
// chunk go through the chunk cache: both must give the same bytes over overrides, a truncation
// inside a chunk, a regrown tail, a hole and the base's short last leaf.
TEST_P(CloneTest, LargeAndSmallReadsAgree) {
  auto attr = fs_->LookupPath("base/1/big");
  ASSERT_TRUE(attr.ok());
  std::string expect = big_;
  auto check = [&](const char* when) {
    const uint64_t size = expect.size();
    for (uint64_t offset :
         {uint64_t{0}, uint64_t{1}, uint64_t{8191}, uint64_t{8192 * 5 + 3}, uint64_t{8192 * 590},
          uint64_t{8192 * 600 + 123 - 70000}, uint64_t{8192 * 699 + 50}}) {
      for (size_t len : {size_t{4096}, size_t{65536}, size_t{65537}, size_t{1 << 20}}) {
        std::string out = "prefix";
        ASSERT_TRUE(fs_->Read(attr->ino, offset, len, &out).ok()) << offset << "+" << len;
        uint64_t n = std::min<uint64_t>(len, size - offset);
        EXPECT_EQ(out, "prefix" + expect.substr(offset, n)) << when << ": " << offset << "+" << len;
      }
    }
    // The whole file in 1 MiB requests, as the kernel's readahead asks for it.
    std::string whole;
    for (uint64_t offset = 0; offset < size; offset += 1 << 20) {
      ASSERT_TRUE(fs_->Read(attr->ino, offset, 1 << 20, &whole).ok());
    }
    EXPECT_EQ(whole, expect) << when;
  };
  for (uint64_t page : {0, 7, 8, 9, 100, 101, 650}) {
    std::string bytes = RandomBytes(8192, 100 + page);
    ASSERT_TRUE(fs_->Write(attr->ino, page * 8192, bytes).ok());
    expect.replace(page * 8192, 8192, bytes);
  }
  ASSERT_TRUE(fs_->Write(attr->ino, 8192 * 30 + 17, "partial").ok());
  expect.replace(8192 * 30 + 17, 7, "partial");
  check("overrides");
  // Grown past the base's short last leaf (100 bytes at page 700), with a hole and a tail.
  CloneSetAttr grow;
  grow.size = 8192 * 720;
  ASSERT_TRUE(fs_->SetAttr(attr->ino, grow).ok());
  expect.resize(8192 * 720, '\0');
  ASSERT_TRUE(fs_->Write(attr->ino, 8192 * 710 + 5, "tail").ok());
  expect.replace(8192 * 710 + 5, 4, "tail");
  check("grown");
  // Cut inside a chunk and grown again: the base's bytes after the cut read as zeros.
  CloneSetAttr cut;
  cut.size = 8192 * 600 + 123;
  ASSERT_TRUE(fs_->SetAttr(attr->ino, cut).ok());
  expect.resize(8192 * 600 + 123);
  ASSERT_TRUE(fs_->SetAttr(attr->ino, grow).ok());
  expect.resize(8192 * 720, '\0');
  check("cut and regrown");
}

TEST_P(CloneTest, NamespaceOperations) {
  auto root = fs_->GetAttr(kCloneRootIno);
  ASSERT_TRUE(root.ok());
  auto f = fs_->CreateFile(kCloneRootIno, "postmaster.opts", 0600);
  ASSERT_TRUE(f.ok());
  EXPECT_TRUE(fs_->CreateFile(kCloneRootIno, "postmaster.opts", 0600).status().IsAlreadyExists());
  EXPECT_TRUE(fs_->CreateFile(kCloneRootIno, "postmaster.pid", 0600).status().IsAlreadyExists());
  ASSERT_TRUE(fs_->Write(f->ino, 0, "opts").ok());
  auto d = fs_->Mkdir(kCloneRootIno, "pg_tmp", 0700);
  ASSERT_TRUE(d.ok());
  auto inner = fs_->CreateFile(d->ino, "t1", 0600);
  ASSERT_TRUE(inner.ok());
  EXPECT_EQ(fs_->Rmdir(kCloneRootIno, "pg_tmp").code(), Status::Code::kNotEmpty);
  EXPECT_EQ(fs_->Unlink(kCloneRootIno, "pg_tmp").code(), Status::Code::kIsADirectory);
  // Rename over an existing file replaces it atomically.
  ASSERT_TRUE(fs_->Rename(d->ino, "t1", kCloneRootIno, "postmaster.opts", false).ok());
  EXPECT_EQ(ReadPath(fs_.get(), "postmaster.opts"), "");
  EXPECT_TRUE(fs_->Rename(kCloneRootIno, "PG_VERSION", kCloneRootIno, "postmaster.opts", true)
                  .IsAlreadyExists());
  ASSERT_TRUE(fs_->Rmdir(kCloneRootIno, "pg_tmp").ok());
  EXPECT_TRUE(fs_->Lookup(kCloneRootIno, "pg_tmp").status().IsNotFound());
  // A directory cannot move into itself.
  auto a = fs_->Mkdir(kCloneRootIno, "a", 0700);
  auto b = fs_->Mkdir(a->ino, "b", 0700);
  EXPECT_EQ(fs_->Rename(kCloneRootIno, "a", b->ino, "a2", false).code(),
            Status::Code::kInvalidArgument);
  // Moving a snapshot directory keeps its contents.
  ASSERT_TRUE(fs_->Rename(kCloneRootIno, "base", a->ino, "base", false).ok());
  EXPECT_EQ(ReadPath(fs_.get(), "a/base/1/big"), big_);
  auto link = fs_->Symlink(kCloneRootIno, "lnk", "a/base");
  ASSERT_TRUE(link.ok());
  EXPECT_EQ(*fs_->Readlink(link->ino), "a/base");
  ASSERT_TRUE(fs_->Unlink(kCloneRootIno, "postmaster.pid").ok());
  EXPECT_TRUE(fs_->Lookup(kCloneRootIno, "postmaster.pid").status().IsNotFound());
  EXPECT_FALSE(fs_->CreateFile(kCloneRootIno, "x/y", 0600).ok());
  EXPECT_FALSE(fs_->CreateFile(kCloneRootIno, "..", 0600).ok());
}

TEST_P(CloneTest, SurvivesReopenAndSealsIntoASnapshot) {
  auto attr = fs_->LookupPath("base/1/big");
  ASSERT_TRUE(attr.ok());
  std::string page = RandomBytes(8192, 5);
  ASSERT_TRUE(fs_->Write(attr->ino, 8192 * 100, page).ok());
  ASSERT_TRUE(fs_->WriteWholeFile("recovery.signal", "").ok());
  ASSERT_TRUE(fs_->WriteWholeFile("PG_VERSION", "16\n").ok());
  ASSERT_TRUE(fs_->RemovePath("postmaster.pid").ok());
  CloneSetAttr grow;
  grow.size = big_.size() + 8192 * 2;
  ASSERT_TRUE(fs_->SetAttr(attr->ino, grow).ok());
  ASSERT_TRUE(fs_->Fsync().ok());
  if (!GetParam()) {
    fs_.reset();
    Reopen();
    auto fs = CloneFs::Open(repo_.get(), "c1");
    ASSERT_TRUE(fs.ok());
    fs_ = std::move(fs).value();
  }
  std::string expect = big_;
  expect.replace(8192 * 100, 8192, page);
  expect += std::string(8192 * 2, '\0');
  EXPECT_EQ(ReadPath(fs_.get(), "base/1/big"), expect);

  auto sealed = fs_->Seal("after-change");
  ASSERT_TRUE(sealed.ok()) << sealed.status().ToString();
  EXPECT_EQ(sealed->kind, "sealed-clone");
  EXPECT_EQ(sealed->parent, snap_.id);
  EXPECT_EQ(sealed->system_identifier, "42");
  EXPECT_LT(sealed->bytes_added, 8192u * 8);  // one page, the regrown tail, listings, index
  EXPECT_EQ(Snapshot(*sealed, "base/1/big"), expect);
  EXPECT_EQ(Snapshot(*sealed, "PG_VERSION"), "16\n");
  EXPECT_EQ(Snapshot(*sealed, "global/pg_control"), Snapshot(snap_, "global/pg_control"));
  EXPECT_TRUE(repo_->reader()->Lookup(sealed->root, "postmaster.pid").status().IsNotFound());
  EXPECT_TRUE(repo_->reader()->Lookup(sealed->root, "pg_notify").ok());
  EXPECT_EQ(Snapshot(snap_, "base/1/big"), big_);
  VerifyReport report;
  ASSERT_TRUE(VerifyRepository(repo_.get(), "", &report).ok());
  EXPECT_TRUE(report.ok()) << report.problems[0].message;
  EXPECT_EQ(report.snapshots, 2u);
}

TEST_P(CloneTest, ListGetDropAndBadNames) {
  EXPECT_TRUE(CloneFs::Create(repo_.get(), "c1", snap_).status().IsAlreadyExists());
  for (const char* bad : {"", ".", "..", "a/b"}) {
    EXPECT_EQ(CloneFs::Create(repo_.get(), bad, snap_).status().code(),
              Status::Code::kInvalidArgument)
        << bad;
  }
  ASSERT_TRUE(CloneFs::Create(repo_.get(), "c2", snap_).ok());
  auto all = CloneFs::List(repo_.get());
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 2u);
  EXPECT_NE((*all)[0].id, (*all)[1].id);
  std::shared_ptr<CloneFs> held = fs_;
  fs_.reset();
  ASSERT_TRUE(CloneFs::Drop(repo_.get(), "c1").ok());
  EXPECT_TRUE(held->GetAttr(kCloneRootIno).status().IsNotFound());  // a live instance is disabled
  EXPECT_TRUE(CloneFs::Get(repo_.get(), "c1").status().IsNotFound());
  EXPECT_TRUE(CloneFs::Drop(repo_.get(), "c1").IsNotFound());
  // A new clone of the same name starts fresh.
  ASSERT_TRUE(CloneFs::Create(repo_.get(), "c1", snap_).ok());
  auto fs = CloneFs::Open(repo_.get(), "c1");
  ASSERT_TRUE(fs.ok());
  EXPECT_NE(fs->get(), held.get());
  EXPECT_EQ(ReadPath(fs->get(), "postmaster.pid"), "1234\n");
  // Opening again while held returns the same instance.
  auto again = CloneFs::Open(repo_.get(), "c1");
  EXPECT_EQ(again->get(), fs->get());
}

TEST_P(CloneTest, OrphansLiveUntilTheLastCloseOrTheNextOpen) {
  auto attr = fs_->LookupPath("PG_VERSION");
  ASSERT_TRUE(attr.ok());
  fs_->OpenFile(attr->ino);
  ASSERT_TRUE(fs_->Unlink(kCloneRootIno, "PG_VERSION").ok());
  EXPECT_TRUE(fs_->LookupPath("PG_VERSION").status().IsNotFound());
  ASSERT_TRUE(fs_->Write(attr->ino, 0, "16").ok());
  std::string out;
  ASSERT_TRUE(fs_->Read(attr->ino, 0, 10, &out).ok());
  EXPECT_EQ(out, "16\n");
  EXPECT_EQ(fs_->GetAttr(attr->ino)->nlink, 0u);
  // Not part of a seal.
  auto sealed = fs_->Seal("with an orphan");
  ASSERT_TRUE(sealed.ok()) << sealed.status().ToString();
  EXPECT_TRUE(repo_->reader()->Lookup(sealed->root, "PG_VERSION").status().IsNotFound());
  ASSERT_TRUE(fs_->CloseFile(attr->ino).ok());
  EXPECT_TRUE(fs_->GetAttr(attr->ino).status().IsNotFound());

  // An orphan left by a crash (the process died with the file open) goes at the next open.
  if (GetParam()) return;  // the memory store does not survive a reopen
  auto pid = fs_->LookupPath("postmaster.pid");
  ASSERT_TRUE(pid.ok());
  fs_->OpenFile(pid->ino);
  ASSERT_TRUE(fs_->Unlink(kCloneRootIno, "postmaster.pid").ok());
  ASSERT_TRUE(fs_->GetAttr(pid->ino).ok());
  fs_.reset();
  Reopen();
  auto again = CloneFs::Open(repo_.get(), "c1");
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_TRUE((*again)->GetAttr(pid->ino).status().IsNotFound());
  EXPECT_TRUE((*again)->LookupPath("global/pg_control").ok());
}

INSTANTIATE_TEST_SUITE_P(Stores, CloneTest, ::testing::Bool(), StoreName);

}  // namespace
}  // namespace pgbackfs
