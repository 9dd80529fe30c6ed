// MOUNT/clones/ without a kernel: fs/filesystem.h driven directly on both stores. PostgreSQL on a
// real mount is tests/integration/test_clone.sh.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/fs.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <set>

#include "fs/filesystem.h"
#include "repo/clone.h"
#include "tests/unit/test_util.h"

namespace pgbackfs {
namespace {

class FsCloneTest : public RepoTest {
 protected:
  void SetUp() override {
    RepoTest::SetUp();
    big_ = RandomBytes(8192 * 40 + 123, 5);
    auto b = repo_->NewSnapshotBuilder();
    ASSERT_TRUE(b->AddSmallFile("PG_VERSION", 0600, 100, "15\n").ok());
    ASSERT_TRUE(b->AddSmallFile("base/1/1259", 0600, 100, big_).ok());
    ASSERT_TRUE(b->AddSmallFile("global/pg_control", 0600, 100, RandomBytes(8192, 6)).ok());
    ASSERT_TRUE(b->AddDirectory("pg_notify", 0700, 100).ok());
    ASSERT_TRUE(b->AddSymlink("pg_tblspc/16400", "/somewhere", 100).ok());
    auto root = b->Finish();
    ASSERT_TRUE(root.ok());
    snap_.id = *repo_->NewSnapshotId(1700000000);
    snap_.stop_time = 1700000000;
    snap_.root = *root;
    ASSERT_TRUE(repo_->CommitSnapshot(snap_).ok());
    ASSERT_TRUE(CloneFs::Create(repo_.get(), "c1", snap_).ok());
    FsOptions options;
    options.uid = 70;
    options.gid = 71;
    fs_ = std::make_unique<Filesystem>(repo_.get(), options);
    root_ = LookupOk(InodeTable::kClonesIno, "c1");
  }
  void TearDown() override {
    fs_.reset();
    RepoTest::TearDown();
  }

  uint64_t LookupOk(uint64_t parent, const std::string& name) {
    EntryOut out;
    int err = fs_->Lookup(parent, name, &out);
    EXPECT_EQ(err, 0) << name << ": " << strerror(err);
    return out.ino;
  }
  int LookupErr(uint64_t parent, const std::string& name) {
    EntryOut out;
    return fs_->Lookup(parent, name, &out);
  }
  struct stat Stat(uint64_t ino) {
    struct stat st {};
    double timeout;
    EXPECT_EQ(fs_->GetAttr(ino, &st, &timeout), 0);
    return st;
  }
  std::vector<std::string> List(uint64_t ino, bool plus = false) {
    uint64_t fh;
    EXPECT_EQ(fs_->OpenDir(ino, &fh), 0);
    std::vector<std::string> names;
    EXPECT_EQ(fs_->ReadDir(fh, 0, plus,
                           [&](const DirItem& item) {
                             names.push_back(item.name);
                             return true;
                           }),
              0);
    fs_->ReleaseDir(fh);
    return names;
  }
  std::string ReadAll(uint64_t ino) {
    OpenOut out;
    EXPECT_EQ(fs_->Open(ino, O_RDONLY, &out), 0);
    std::string data;
    EXPECT_EQ(fs_->Read(out.fh, 0, 1 << 30, &data), 0);
    fs_->Release(out.fh);
    return data;
  }
  // Creates (O_CREAT|O_EXCL) and writes a file; returns its inode.
  uint64_t MakeFile(uint64_t parent, const std::string& name, const std::string& data) {
    EntryOut e;
    OpenOut out;
    EXPECT_EQ(fs_->Create(parent, name, O_WRONLY | O_CREAT | O_EXCL, &e, &out, 0600), 0) << name;
    if (!data.empty()) {
      EXPECT_EQ(fs_->Write(out.fh, 0, data), 0);
    }
    fs_->Release(out.fh);
    return e.ino;
  }
  std::string SnapshotFile(const std::string& path) {
    auto e = repo_->reader()->Lookup(snap_.root, path);
    EXPECT_TRUE(e.ok()) << path;
    std::string out;
    EXPECT_TRUE(repo_->reader()->OpenFile(*e)->Read(0, e->size(), &out).ok());
    return out;
  }

  SnapshotInfo snap_;
  std::string big_;
  std::unique_ptr<Filesystem> fs_;
  uint64_t root_ = 0;
};

TEST_P(FsCloneTest, ClonesDirectoryFollowsTheCli) {
  EXPECT_EQ(List(InodeTable::kClonesIno), (std::vector<std::string>{".", "..", "c1"}));
  struct stat st = Stat(root_);
  EXPECT_EQ(st.st_mode, S_IFDIR | 0700);  // postgres requires 0700 or 0750
  EXPECT_EQ(st.st_uid, 70u);
  EXPECT_EQ(st.st_gid, 71u);
  // A clone made (or dropped) by a forwarded command shows at once.
  EXPECT_EQ(LookupErr(InodeTable::kClonesIno, "c2"), ENOENT);
  ASSERT_TRUE(CloneFs::Create(repo_.get(), "c2", snap_).ok());
  EXPECT_EQ(List(InodeTable::kClonesIno, /*plus=*/true),
            (std::vector<std::string>{".", "..", "c1", "c2"}));
  uint64_t c2 = LookupOk(InodeTable::kClonesIno, "c2");
  EXPECT_NE(c2, root_);
  EntryOut e;
  ASSERT_EQ(fs_->Lookup(InodeTable::kClonesIno, "c2", &e), 0);
  EXPECT_EQ(e.ino, c2);           // one node per clone inode
  EXPECT_EQ(e.entry_timeout, 0);  // clones/<name> is asked again on every walk
  ASSERT_TRUE(CloneFs::Drop(repo_.get(), "c2").ok());
  EXPECT_EQ(LookupErr(InodeTable::kClonesIno, "c2"), ENOENT);
  EXPECT_EQ(List(InodeTable::kClonesIno), (std::vector<std::string>{".", "..", "c1"}));
  // Made again under the same name: a new clone, a new node.
  ASSERT_TRUE(CloneFs::Create(repo_.get(), "c2", snap_).ok());
  EXPECT_NE(LookupOk(InodeTable::kClonesIno, "c2"), c2);
  // Clones are made with `pgbackfs clone create`, not here.
  EXPECT_EQ(fs_->Mkdir(InodeTable::kClonesIno, "x", 0700, &e), EPERM);
  EXPECT_EQ(fs_->Rmdir(InodeTable::kClonesIno, "c1"), EPERM);
  EXPECT_EQ(fs_->Unlink(InodeTable::kClonesIno, "c1"), EPERM);
  EXPECT_EQ(fs_->Rename(InodeTable::kClonesIno, "c1", InodeTable::kClonesIno, "c3", 0), EPERM);
  EXPECT_EQ(fs_->Symlink(InodeTable::kClonesIno, "l", "c1", &e), EPERM);
  EXPECT_EQ(fs_->Mknod(InodeTable::kClonesIno, "f", S_IFREG | 0600, &e), EPERM);
  OpenOut out;
  EXPECT_EQ(fs_->Create(InodeTable::kClonesIno, "f", O_WRONLY | O_CREAT, &e, &out), EPERM);
  EXPECT_EQ(LookupErr(InodeTable::kClonesIno, "bad/name"), ENOENT);
}

TEST_P(FsCloneTest, BrowseTheSnapshotThroughTheClone) {
  EXPECT_EQ(List(root_), (std::vector<std::string>{".", "..", "PG_VERSION", "base", "global",
                                                   "pg_notify", "pg_tblspc"}));
  uint64_t file = LookupOk(LookupOk(LookupOk(root_, "base"), "1"), "1259");
  struct stat st = Stat(file);
  EXPECT_EQ(st.st_mode, S_IFREG | 0600);
  EXPECT_EQ(static_cast<size_t>(st.st_size), big_.size());
  EXPECT_EQ(st.st_uid, 70u);
  EXPECT_EQ(ReadAll(file), big_);
  uint64_t link = LookupOk(LookupOk(root_, "pg_tblspc"), "16400");
  EXPECT_EQ(Stat(link).st_mode, S_IFLNK | 0777);
  std::string target;
  ASSERT_EQ(fs_->ReadLink(link, &target), 0);
  EXPECT_EQ(target, "/somewhere");
  EXPECT_EQ(fs_->ReadLink(file, &target), EINVAL);
  EXPECT_EQ(Stat(LookupOk(root_, "pg_notify")).st_mode, S_IFDIR | 0700);
  EXPECT_EQ(LookupErr(root_, "missing"), ENOENT);
  EXPECT_EQ(LookupErr(file, "x"), ENOTDIR);
  EXPECT_EQ(LookupErr(root_, std::string(256, 'x')), ENAMETOOLONG);
  OpenOut out;
  EXPECT_EQ(fs_->Open(root_, O_RDONLY, &out), EISDIR);
}

TEST_P(FsCloneTest, CreateHonoursExclusive) {
  EntryOut e;
  OpenOut out;
  // postmaster.pid: O_CREAT|O_EXCL.
  ASSERT_EQ(fs_->Create(root_, "postmaster.pid", O_WRONLY | O_CREAT | O_EXCL, &e, &out, 0600), 0);
  uint64_t pid_ino = e.ino;
  EXPECT_EQ(e.attr.st_mode, S_IFREG | 0600);
  EXPECT_EQ(e.attr.st_size, 0);
  ASSERT_EQ(fs_->Write(out.fh, 0, "1234\n"), 0);
  ASSERT_EQ(fs_->Flush(out.fh), 0);
  fs_->Release(out.fh);
  EXPECT_EQ(fs_->Create(root_, "postmaster.pid", O_WRONLY | O_CREAT | O_EXCL, &e, &out, 0600),
            EEXIST);
  // A name from the snapshot exists too.
  EXPECT_EQ(fs_->Create(root_, "PG_VERSION", O_WRONLY | O_CREAT | O_EXCL, &e, &out, 0600), EEXIST);
  EXPECT_EQ(fs_->Create(root_, "base", O_WRONLY | O_CREAT, &e, &out, 0600), EISDIR);
  // Without O_EXCL, a create that lost a race opens the file that won it.
  ASSERT_EQ(fs_->Create(root_, "postmaster.pid", O_RDWR | O_CREAT, &e, &out, 0600), 0);
  EXPECT_EQ(e.ino, pid_ino);
  std::string data;
  ASSERT_EQ(fs_->Read(out.fh, 0, 100, &data), 0);
  EXPECT_EQ(data, "1234\n");
  fs_->Release(out.fh);
  ASSERT_EQ(fs_->Create(root_, "postmaster.pid", O_WRONLY | O_CREAT | O_TRUNC, &e, &out, 0600), 0);
  EXPECT_EQ(e.attr.st_size, 0);
  fs_->Release(out.fh);
  EXPECT_EQ(Stat(pid_ino).st_size, 0);
  // Modes come from the caller (after its umask).
  ASSERT_EQ(fs_->Create(root_, "conf", O_WRONLY | O_CREAT, &e, &out, 0640), 0);
  fs_->Release(out.fh);
  EXPECT_EQ(Stat(e.ino).st_mode, S_IFREG | 0640);
  EXPECT_EQ(fs_->Create(root_, std::string(256, 'x'), O_WRONLY | O_CREAT, &e, &out, 0600),
            ENAMETOOLONG);
  EXPECT_EQ(fs_->open_handles(), 0u);
}

TEST_P(FsCloneTest, WritesAreCopyOnWrite) {
  uint64_t base1 = LookupOk(LookupOk(root_, "base"), "1");
  uint64_t file = LookupOk(base1, "1259");
  OpenOut out;
  ASSERT_EQ(fs_->Open(file, O_RDWR, &out), 0);
  EXPECT_FALSE(out.direct_io);
  std::string page = RandomBytes(8192, 7);
  ASSERT_EQ(fs_->Write(out.fh, 8192 * 3, page), 0);
  ASSERT_EQ(fs_->Write(out.fh, 100, "hello"), 0);
  std::string tail = RandomBytes(20000, 8);  // extends the file, across chunks
  ASSERT_EQ(fs_->Write(out.fh, big_.size() + 1000, tail), 0);
  ASSERT_EQ(fs_->Fsync(file), 0);
  std::string expect = big_;
  expect.replace(8192 * 3, 8192, page);
  expect.replace(100, 5, "hello");
  expect += std::string(1000, '\0') + tail;
  std::string got;
  ASSERT_EQ(fs_->Read(out.fh, 0, expect.size() + 4096, &got), 0);
  EXPECT_EQ(got, expect);
  got.clear();
  ASSERT_EQ(fs_->Read(out.fh, 8192 * 3 - 10, 20, &got), 0);
  EXPECT_EQ(got, expect.substr(8192 * 3 - 10, 20));
  fs_->Release(out.fh);
  EXPECT_EQ(static_cast<size_t>(Stat(file).st_size), expect.size());
  // The snapshot never changes (invariant 4), nor does its view under backups/.
  EXPECT_EQ(SnapshotFile("base/1/1259"), big_);
  uint64_t snap = LookupOk(InodeTable::kBackupsIno, snap_.id);
  uint64_t snap_file = LookupOk(LookupOk(LookupOk(snap, "base"), "1"), "1259");
  EXPECT_EQ(Stat(snap_file).st_size, static_cast<off_t>(big_.size()));
  // Writing to a directory handle or a read of one is refused.
  EXPECT_EQ(fs_->Write(12345, 0, "x"), EBADF);
}

// A file opened for writing with O_DSYNC or O_SYNC (wal_sync_method = open_datasync) is
// direct_io, so each write reaches the clone at once and is durable when answered.
TEST_P(FsCloneTest, DsyncOpensWriteThrough) {
  uint64_t file = LookupOk(LookupOk(LookupOk(root_, "base"), "1"), "1259");
  OpenOut w;
  ASSERT_EQ(fs_->Open(file, O_WRONLY | O_DSYNC, &w), 0);
  EXPECT_TRUE(w.direct_io);
  std::string page = RandomBytes(8192, 11);
  ASSERT_EQ(fs_->Write(w.fh, 8192, page), 0);
  ASSERT_EQ(fs_->Write(w.fh, 20, "dsync"), 0);
  OpenOut r;
  ASSERT_EQ(fs_->Open(file, O_RDONLY | O_DSYNC, &r), 0);  // nothing to sync: cached
  EXPECT_FALSE(r.direct_io);
  std::string expect = big_;
  expect.replace(8192, 8192, page);
  expect.replace(20, 5, "dsync");
  std::string got;
  ASSERT_EQ(fs_->Read(r.fh, 0, expect.size(), &got), 0);
  EXPECT_EQ(got, expect);
  fs_->Release(r.fh);
  fs_->Release(w.fh);
  OpenOut plain;
  ASSERT_EQ(fs_->Open(file, O_RDWR, &plain), 0);
  EXPECT_FALSE(plain.direct_io);
  fs_->Release(plain.fh);
  EntryOut e;
  OpenOut created;
  ASSERT_EQ(fs_->Create(root_, "wal.tmp", O_RDWR | O_CREAT | O_EXCL | O_SYNC, &e, &created, 0600),
            0);
  EXPECT_TRUE(created.direct_io);
  ASSERT_EQ(fs_->Write(created.fh, 0, "x"), 0);
  fs_->Release(created.fh);
  EXPECT_EQ(ReadAll(e.ino), "x");
  EXPECT_EQ(SnapshotFile("base/1/1259"), big_);  // invariant 4
  EXPECT_EQ(fs_->open_handles(), 0u);
}

TEST_P(FsCloneTest, TruncateExtendAndAttributes) {
  uint64_t file = LookupOk(LookupOk(LookupOk(root_, "base"), "1"), "1259");
  struct stat st;
  double timeout;
  AttrChange change;
  change.size = 10000;
  ASSERT_EQ(fs_->SetAttr(file, change, &st, &timeout), 0);
  EXPECT_EQ(st.st_size, 10000);
  EXPECT_EQ(ReadAll(file), big_.substr(0, 10000));
  change.size = 30000;  // grows with zeros, not with the old bytes
  ASSERT_EQ(fs_->SetAttr(file, change, &st, &timeout), 0);
  EXPECT_EQ(ReadAll(file), big_.substr(0, 10000) + std::string(20000, '\0'));
  // open(O_TRUNC) truncates (FUSE_CAP_ATOMIC_O_TRUNC sends no setattr).
  OpenOut out;
  ASSERT_EQ(fs_->Open(file, O_WRONLY | O_TRUNC, &out), 0);
  fs_->Release(out.fh);
  EXPECT_EQ(Stat(file).st_size, 0);
  // chmod and utimens.
  AttrChange chmod;
  chmod.mode = S_IFREG | 0640;
  ASSERT_EQ(fs_->SetAttr(file, chmod, &st, &timeout), 0);
  EXPECT_EQ(st.st_mode, S_IFREG | 0640);
  AttrChange touch;
  touch.mtime = timespec{1600000000, 5};
  ASSERT_EQ(fs_->SetAttr(file, touch, &st, &timeout), 0);
  EXPECT_EQ(Stat(file).st_mtim.tv_sec, 1600000000);
  EXPECT_EQ(Stat(file).st_mtim.tv_nsec, 5);
  // Everything shows the --owner: a chown to it is a no-op, any other is refused.
  AttrChange chown;
  chown.uid = 70;
  chown.gid = 71;
  EXPECT_EQ(fs_->SetAttr(file, chown, &st, &timeout), 0);
  chown.uid = 0;
  EXPECT_EQ(fs_->SetAttr(file, chown, &st, &timeout), EPERM);
  AttrChange dir_size;
  dir_size.size = 0;
  EXPECT_EQ(fs_->SetAttr(root_, dir_size, &st, &timeout), EISDIR);
  // fallocate mode 0 extends with zeros, never shrinks; other modes are not supported.
  ASSERT_EQ(fs_->Fallocate(file, 0, 0, 16384), 0);
  EXPECT_EQ(Stat(file).st_size, 16384);
  ASSERT_EQ(fs_->Fallocate(file, 0, 0, 100), 0);
  EXPECT_EQ(Stat(file).st_size, 16384);
  EXPECT_EQ(ReadAll(file), std::string(16384, '\0'));
  EXPECT_EQ(fs_->Fallocate(file, FALLOC_FL_KEEP_SIZE, 0, 1 << 20), EOPNOTSUPP);
  EXPECT_EQ(fs_->Fallocate(file, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 8192), EOPNOTSUPP);
  EXPECT_EQ(fs_->Fallocate(root_, 0, 0, 1), EISDIR);
}

TEST_P(FsCloneTest, NamespaceChanges) {
  EntryOut e;
  ASSERT_EQ(fs_->Mkdir(root_, "pg_wal", 0700, &e), 0);
  uint64_t wal = e.ino;
  EXPECT_EQ(e.attr.st_mode, S_IFDIR | 0700);
  EXPECT_EQ(fs_->Mkdir(root_, "pg_wal", 0700, &e), EEXIST);
  uint64_t a = MakeFile(wal, "a", "AAAA");
  uint64_t b = MakeFile(wal, "b", "BB");
  ASSERT_EQ(fs_->Symlink(root_, "lnk", "pg_wal/a", &e), 0);
  std::string target;
  ASSERT_EQ(fs_->ReadLink(e.ino, &target), 0);
  EXPECT_EQ(target, "pg_wal/a");
  ASSERT_EQ(fs_->Mknod(wal, "m", S_IFREG | 0600, &e), 0);
  EXPECT_EQ(fs_->Mknod(wal, "fifo", S_IFIFO | 0600, &e), EPERM);
  EXPECT_EQ(List(wal), (std::vector<std::string>{".", "..", "a", "b", "m"}));
  EXPECT_EQ(fs_->DenyChange(wal), EPERM);  // hard links: a clone has none

  // rename over an existing file replaces it atomically; the moved file keeps its inode.
  ASSERT_EQ(fs_->Rename(wal, "a", wal, "b", 0), 0);
  EXPECT_EQ(LookupErr(wal, "a"), ENOENT);
  EXPECT_EQ(LookupOk(wal, "b"), a);
  EXPECT_EQ(ReadAll(a), "AAAA");
  struct stat st;
  double timeout;
  EXPECT_EQ(fs_->GetAttr(b, &st, &timeout), ENOENT);  // the replaced one is gone
  // RENAME_NOREPLACE, RENAME_EXCHANGE.
  EXPECT_EQ(fs_->Rename(wal, "m", wal, "b", RENAME_NOREPLACE), EEXIST);
  EXPECT_EQ(fs_->Rename(wal, "m", wal, "b", RENAME_EXCHANGE), EINVAL);
  ASSERT_EQ(fs_->Rename(wal, "m", wal, "n", RENAME_NOREPLACE), 0);
  EXPECT_EQ(fs_->Rename(wal, "missing", wal, "x", 0), ENOENT);
  // Across directories, and directories over files and back.
  ASSERT_EQ(fs_->Rename(wal, "n", root_, "n2", 0), 0);
  EXPECT_EQ(LookupErr(wal, "n"), ENOENT);
  LookupOk(root_, "n2");
  EXPECT_EQ(fs_->Rename(root_, "pg_notify", wal, "b", 0), ENOTDIR);
  EXPECT_EQ(fs_->Rename(wal, "b", root_, "pg_notify", 0), EISDIR);
  EXPECT_EQ(fs_->Rename(root_, "pg_notify", root_, "pg_wal", 0), ENOTEMPTY);
  EXPECT_EQ(fs_->Rename(root_, "pg_wal", wal, "sub", 0), EINVAL);  // into itself
  // Between clones, and between a clone and the archive: EXDEV, so mv copies.
  ASSERT_TRUE(CloneFs::Create(repo_.get(), "c2", snap_).ok());
  uint64_t c2 = LookupOk(InodeTable::kClonesIno, "c2");
  EXPECT_EQ(fs_->Rename(wal, "b", c2, "b", 0), EXDEV);
  EXPECT_EQ(fs_->Rename(wal, "b", InodeTable::kWalIno, "000000010000000000000001", 0), EXDEV);
  uint64_t snap = LookupOk(InodeTable::kBackupsIno, snap_.id);
  EXPECT_EQ(fs_->Rename(wal, "b", snap, "b", 0), EROFS);

  // unlink and rmdir.
  EXPECT_EQ(fs_->Rmdir(root_, "pg_wal"), ENOTEMPTY);
  EXPECT_EQ(fs_->Rmdir(wal, "b"), ENOTDIR);
  EXPECT_EQ(fs_->Unlink(root_, "pg_wal"), EISDIR);
  EXPECT_EQ(fs_->Unlink(root_, "missing"), ENOENT);
  ASSERT_EQ(fs_->Unlink(wal, "b"), 0);
  EXPECT_EQ(LookupErr(wal, "b"), ENOENT);
  ASSERT_EQ(fs_->Rmdir(root_, "pg_wal"), 0);
  EXPECT_EQ(LookupErr(root_, "pg_wal"), ENOENT);
  ASSERT_EQ(fs_->Unlink(root_, "lnk"), 0);
  // A file from the snapshot can go too; the snapshot keeps it.
  ASSERT_EQ(fs_->Unlink(root_, "PG_VERSION"), 0);
  EXPECT_EQ(LookupErr(root_, "PG_VERSION"), ENOENT);
  EXPECT_EQ(SnapshotFile("PG_VERSION"), "15\n");
  ASSERT_EQ(fs_->Fsync(root_), 0);  // fsyncdir
}

TEST_P(FsCloneTest, ReadDirResumesAtOffsets) {
  EntryOut e;
  ASSERT_EQ(fs_->Mkdir(root_, "many", 0700, &e), 0);
  uint64_t dir = e.ino;
  std::set<std::string> names;
  for (int i = 0; i < 700; ++i) {  // several windows of the cursor
    char name[16];
    snprintf(name, sizeof(name), "f%04d", i);
    MakeFile(dir, name, "");
    names.insert(name);
  }
  // Read a few entries per call, resuming at the offset of the last one taken, as the kernel does.
  for (bool plus : {false, true}) {
    uint64_t fh;
    ASSERT_EQ(fs_->OpenDir(dir, &fh), 0);
    std::vector<std::string> got;
    uint64_t offset = 0;
    for (;;) {
      int taken = 0;
      uint64_t next = offset;
      ASSERT_EQ(fs_->ReadDir(fh, offset, plus,
                             [&](const DirItem& item) {
                               if (taken == 7) return false;  // the reply buffer is full
                               ++taken;
                               got.push_back(item.name);
                               next = item.next_offset;
                               if (plus && item.name != "." && item.name != "..") {
                                 EXPECT_EQ(item.entry.attr.st_mode, S_IFREG | 0600);
                                 fs_->Forget(item.entry.ino, 1);
                               }
                               return true;
                             }),
                0);
      if (taken == 0) break;
      offset = next;
    }
    ASSERT_EQ(got.size(), 702u);
    EXPECT_EQ(got[0], ".");
    EXPECT_EQ(got[1], "..");
    EXPECT_EQ(std::set<std::string>(got.begin() + 2, got.end()), names);
    EXPECT_TRUE(std::is_sorted(got.begin() + 2, got.end()));
    // Seeking back (telldir/seekdir) works too.
    std::vector<std::string> again;
    ASSERT_EQ(fs_->ReadDir(fh, 2 + 10, false,
                           [&](const DirItem& item) {
                             again.push_back(item.name);
                             return again.size() < 2;
                           }),
              0);
    EXPECT_EQ(again, (std::vector<std::string>{"f0010", "f0011"}));
    fs_->ReleaseDir(fh);
  }
  // Entries removed or added while a listing is under way: the rest still comes, once each.
  uint64_t fh;
  ASSERT_EQ(fs_->OpenDir(dir, &fh), 0);
  std::vector<std::string> got;
  uint64_t next = 0;
  ASSERT_EQ(fs_->ReadDir(fh, 0, false,
                         [&](const DirItem& item) {
                           got.push_back(item.name);
                           next = item.next_offset;
                           return got.size() < 302;
                         }),
            0);
  EXPECT_EQ(got.back(), "f0299");
  ASSERT_EQ(fs_->Unlink(dir, "f0000"), 0);  // before the cursor
  ASSERT_EQ(fs_->Unlink(dir, "f0600"), 0);  // after it, beyond the window read so far
  MakeFile(dir, "a-new", "");               // before it
  MakeFile(dir, "z-new", "");               // after it
  ASSERT_EQ(fs_->ReadDir(fh, next, false,
                         [&](const DirItem& item) {
                           got.push_back(item.name);
                           return true;
                         }),
            0);
  fs_->ReleaseDir(fh);
  std::set<std::string> seen(got.begin() + 2, got.end());
  EXPECT_EQ(seen.size(), got.size() - 2) << "an entry came twice";
  EXPECT_TRUE(seen.count("f0699"));
  EXPECT_TRUE(seen.count("z-new"));
  EXPECT_FALSE(seen.count("f0600"));
  EXPECT_EQ(seen.size(), 700u - 1 + 1);  // f0000 (already listed) stays, f0600 went, z-new came
}

TEST_P(FsCloneTest, LookupCountsAndForget) {
  size_t before = fs_->inodes()->size();
  uint64_t base = LookupOk(root_, "base");
  EXPECT_EQ(LookupOk(root_, "base"), base);
  EXPECT_EQ(fs_->inodes()->LookupCount(base), 2u);
  List(root_, /*plus=*/true);  // readdirplus counts one lookup per entry handed out
  EXPECT_EQ(fs_->inodes()->LookupCount(base), 3u);
  fs_->Forget(base, 3);
  EXPECT_EQ(fs_->inodes()->LookupCount(base), 0u);
  struct stat st;
  double timeout;
  EXPECT_EQ(fs_->GetAttr(base, &st, &timeout), ENOENT);
  // The other entries readdirplus handed out.
  for (const char* name : {"PG_VERSION", "global", "pg_notify", "pg_tblspc"}) {
    EntryOut e;
    ASSERT_EQ(fs_->Lookup(root_, name, &e), 0);
    fs_->Forget(e.ino, 2);
  }
  EXPECT_EQ(fs_->inodes()->size(), before);
  // A new lookup after forget gets a new number (numbers are never reused).
  EXPECT_NE(LookupOk(root_, "base"), base);
}

TEST_P(FsCloneTest, RemovedWhileOpen) {
  // POSIX: an unlinked (or renamed-over) file stays readable and writable through open handles
  // until the last close. The kernel's writeback cache relies on it: it writes back dirty pages of
  // a file after postgres unlinked it.
  uint64_t a = MakeFile(root_, "a", "first");
  uint64_t b = MakeFile(root_, "b", "second");
  OpenOut fa, fb, fb2;
  ASSERT_EQ(fs_->Open(a, O_RDWR, &fa), 0);
  ASSERT_EQ(fs_->Open(b, O_RDWR, &fb), 0);
  ASSERT_EQ(fs_->Open(b, O_RDONLY, &fb2), 0);
  ASSERT_EQ(fs_->Unlink(root_, "a"), 0);
  ASSERT_EQ(fs_->Rename(root_, "PG_VERSION", root_, "b", 0), 0);  // replaces b
  EXPECT_EQ(LookupErr(root_, "a"), ENOENT);
  ASSERT_EQ(fs_->Write(fa.fh, 5, "+more"), 0);
  ASSERT_EQ(fs_->Write(fb.fh, 0, "SECOND"), 0);
  std::string got;
  ASSERT_EQ(fs_->Read(fa.fh, 0, 100, &got), 0);
  EXPECT_EQ(got, "first+more");
  EXPECT_EQ(Stat(a).st_nlink, 0u);
  fs_->Release(fa.fh);
  struct stat st;
  double timeout;
  EXPECT_EQ(fs_->GetAttr(a, &st, &timeout), ENOENT);  // gone with the last close
  fs_->Release(fb.fh);
  got.clear();
  ASSERT_EQ(fs_->Read(fb2.fh, 0, 100, &got), 0);  // b is still open once
  EXPECT_EQ(got, "SECOND");
  fs_->Release(fb2.fh);
  EXPECT_EQ(fs_->GetAttr(b, &st, &timeout), ENOENT);
  EXPECT_EQ(ReadAll(LookupOk(root_, "b")), "15\n");
}

TEST_P(FsCloneTest, DroppedWhileOpen) {
  uint64_t file = LookupOk(root_, "PG_VERSION");
  OpenOut out;
  ASSERT_EQ(fs_->Open(file, O_RDWR, &out), 0);
  uint64_t dir_fh;
  ASSERT_EQ(fs_->OpenDir(root_, &dir_fh), 0);
  ASSERT_TRUE(CloneFs::Drop(repo_.get(), "c1").ok());
  std::string data;
  EXPECT_EQ(fs_->Read(out.fh, 0, 10, &data), ENOENT);
  EXPECT_EQ(fs_->Write(out.fh, 0, "16\n"), ENOENT);
  struct stat st;
  double timeout;
  EXPECT_EQ(fs_->GetAttr(file, &st, &timeout), ENOENT);
  EXPECT_EQ(fs_->GetAttr(root_, &st, &timeout), ENOENT);
  EXPECT_EQ(LookupErr(root_, "base"), ENOENT);
  EXPECT_EQ(LookupErr(InodeTable::kClonesIno, "c1"), ENOENT);
  EntryOut e;
  EXPECT_EQ(fs_->Mkdir(root_, "x", 0700, &e), ENOENT);
  EXPECT_EQ(fs_->ReadDir(dir_fh, 0, false, [](const DirItem&) { return true; }), ENOENT);
  EXPECT_EQ(fs_->Fsync(file), 0);  // nothing left to lose
  fs_->ReleaseDir(dir_fh);
  fs_->Release(out.fh);
  fs_->Forget(file, 1);
  fs_->Forget(root_, 1);
  EXPECT_EQ(List(InodeTable::kClonesIno), (std::vector<std::string>{".", ".."}));
  EXPECT_EQ(fs_->open_handles(), 0u);
  // Nothing of the snapshot went with it.
  EXPECT_EQ(SnapshotFile("PG_VERSION"), "15\n");
}

INSTANTIATE_TEST_SUITE_P(Stores, FsCloneTest, ::testing::Bool(), StoreName);

}  // namespace
}  // namespace pgbackfs
