// The mount's behaviour without a kernel: fs/filesystem.h driven directly, on an in-memory
// repository. The real mount is exercised by tests/integration/test_mount_*.sh.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <map>

#include "fs/filesystem.h"
#include "repo/coding.h"

namespace pgbackfs {
namespace {

constexpr uint64_t kSegSize = 16 << 20;
constexpr uint64_t kSysid = 7300000000000000042ull;

void Store16(std::string* s, size_t off, uint16_t v) {
  for (int i = 0; i < 2; ++i) (*s)[off + i] = static_cast<char>(v >> (8 * i));
}
void Store32(std::string* s, size_t off, uint32_t v) {
  for (int i = 0; i < 4; ++i) (*s)[off + i] = static_cast<char>(v >> (8 * i));
}
void Store64(std::string* s, size_t off, uint64_t v) {
  for (int i = 0; i < 8; ++i) (*s)[off + i] = static_cast<char>(v >> (8 * i));
}

// A WAL segment as PostgreSQL 15 writes it: a page header on every 8 KiB page, the long one
// (system identifier, segment and block size) first. `fill` goes into the record space.
std::string MakeSegment(const std::string& name, char fill) {
  uint32_t tli = static_cast<uint32_t>(std::stoul(name.substr(0, 8), nullptr, 16));
  uint64_t log = std::stoull(name.substr(8, 8), nullptr, 16);
  uint64_t seg = std::stoull(name.substr(16, 8), nullptr, 16);
  uint64_t start = (log * (0x100000000ull / kSegSize) + seg) * kSegSize;
  std::string data(kSegSize, fill);
  for (uint64_t off = 0; off < kSegSize; off += 8192) {
    bool first = off == 0;
    std::string hdr(first ? 40 : 24, '\0');
    Store16(&hdr, 0, 0xD110);
    Store16(&hdr, 2, first ? 0x0002 : 0);
    Store32(&hdr, 4, tli);
    Store64(&hdr, 8, start + off);
    if (first) {
      Store64(&hdr, 24, kSysid);
      Store32(&hdr, 32, static_cast<uint32_t>(kSegSize));
      Store32(&hdr, 36, 8192);
    }
    data.replace(off, hdr.size(), hdr);
  }
  return data;
}

class FilesystemTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/pgbackfs-fs-test.XXXXXX";
    ASSERT_TRUE(mkdtemp(tmpl));
    dir_ = tmpl;
    ASSERT_TRUE(Repository::Init(dir_ + "/repo", RepoConfig{}).ok());
    OpenOptions options;
    options.in_memory = true;
    auto repo = Repository::Open(dir_ + "/repo", options);
    ASSERT_TRUE(repo.ok()) << repo.status().ToString();
    repo_ = std::move(repo).value();
    FsOptions fs_options;
    fs_options.uid = 70;
    fs_options.gid = 71;
    fs_ = std::make_unique<Filesystem>(repo_.get(), fs_options);
  }
  void TearDown() override {
    fs_.reset();
    repo_.reset();
    std::filesystem::remove_all(dir_);
  }

  // A snapshot holding `files` (path -> content) and a symlink "link" -> "target".
  std::string AddSnapshot(const std::map<std::string, std::string>& files, int64_t t) {
    auto b = repo_->NewSnapshotBuilder();
    for (const auto& [path, content] : files) {
      EXPECT_TRUE(b->AddSmallFile(path, 0644, t, content).ok());
    }
    EXPECT_TRUE(b->AddSymlink("link", "target", t).ok());
    auto root = b->Finish();
    EXPECT_TRUE(root.ok());
    SnapshotInfo info;
    info.id = *repo_->NewSnapshotId(t);
    info.stop_time = t;
    info.root = *root;
    EXPECT_TRUE(repo_->CommitSnapshot(info).ok());
    return info.id;
  }

  uint64_t LookupOk(uint64_t parent, const std::string& name) {
    EntryOut out;
    int err = fs_->Lookup(parent, name, &out);
    EXPECT_EQ(err, 0) << name << ": " << strerror(err);
    return out.ino;
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
    EXPECT_TRUE(out.keep_cache);
    std::string data;
    for (uint64_t off = 0;; off += 1 << 20) {
      size_t before = data.size();
      EXPECT_EQ(fs_->Read(out.fh, off, 1 << 20, &data), 0);
      if (data.size() - before < (1u << 20)) break;
    }
    fs_->Release(out.fh);
    return data;
  }

  // cp SRC wal/NAME: create (or open with O_TRUNC if it exists), write, close (flush, release).
  // Returns the errno close() would return, or the create/open/write error.
  int CopyIntoWal(const std::string& name, const std::string& data) {
    EntryOut entry;
    OpenOut out;
    int err;
    EntryOut existing;
    if (fs_->Lookup(InodeTable::kWalIno, name, &existing) == 0) {
      err = fs_->Open(existing.ino, O_WRONLY | O_TRUNC, &out);
      fs_->Forget(existing.ino, 1);
    } else {
      err = fs_->Create(InodeTable::kWalIno, name, O_WRONLY | O_CREAT, &entry, &out);
    }
    if (err) return err;
    EXPECT_TRUE(out.direct_io);
    for (size_t off = 0; off < data.size() && !err; off += 128 << 10) {
      err = fs_->Write(out.fh, off, std::string_view(data).substr(off, 128 << 10));
    }
    if (!err) err = fs_->Flush(out.fh);
    fs_->Release(out.fh);
    if (entry.ino) fs_->Forget(entry.ino, 1);
    return err;
  }

  std::string dir_;
  std::unique_ptr<Repository> repo_;
  std::unique_ptr<Filesystem> fs_;
};

TEST_F(FilesystemTest, RootLayout) {
  EXPECT_EQ(List(InodeTable::kRootIno),
            (std::vector<std::string>{".", "..", "backups", "wal", "clones"}));
  EXPECT_EQ(List(InodeTable::kClonesIno), (std::vector<std::string>{".", ".."}));
  struct stat st;
  double timeout;
  ASSERT_EQ(fs_->GetAttr(InodeTable::kWalIno, &st, &timeout), 0);
  EXPECT_EQ(st.st_mode, S_IFDIR | 0700);
  EXPECT_EQ(st.st_uid, 70u);
  EXPECT_EQ(st.st_gid, 71u);
  EntryOut out;
  EXPECT_EQ(fs_->Lookup(InodeTable::kRootIno, "nope", &out), ENOENT);
  EXPECT_EQ(fs_->Lookup(InodeTable::kClonesIno, "x", &out), ENOENT);
}

TEST_F(FilesystemTest, BrowseAndReadASnapshot) {
  std::string big(3 * 8192 + 100, 'b');
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>(i * 7);
  std::string id = AddSnapshot({{"PG_VERSION", "15\n"}, {"base/1/1259", big}}, 1700000000);
  EXPECT_EQ(List(InodeTable::kBackupsIno), (std::vector<std::string>{".", "..", id}));
  uint64_t snap = LookupOk(InodeTable::kBackupsIno, id);
  EXPECT_EQ(List(snap), (std::vector<std::string>{".", "..", "PG_VERSION", "base", "link"}));
  uint64_t base = LookupOk(snap, "base");
  uint64_t one = LookupOk(base, "1");
  uint64_t file = LookupOk(one, "1259");
  struct stat st;
  double timeout;
  ASSERT_EQ(fs_->GetAttr(file, &st, &timeout), 0);
  EXPECT_EQ(st.st_mode, S_IFREG | 0600);
  EXPECT_EQ(static_cast<size_t>(st.st_size), big.size());
  EXPECT_EQ(st.st_mtim.tv_sec, 1700000000);
  EXPECT_GE(timeout, 60);  // immutable
  EXPECT_EQ(ReadAll(file), big);
  // Reads at odd offsets and past the end.
  OpenOut out;
  ASSERT_EQ(fs_->Open(file, O_RDONLY, &out), 0);
  std::string part;
  ASSERT_EQ(fs_->Read(out.fh, 8190, 10, &part), 0);
  EXPECT_EQ(part, big.substr(8190, 10));
  part.clear();
  ASSERT_EQ(fs_->Read(out.fh, big.size() + 5, 10, &part), 0);
  EXPECT_TRUE(part.empty());
  fs_->Release(out.fh);

  uint64_t link = LookupOk(snap, "link");
  std::string target;
  ASSERT_EQ(fs_->ReadLink(link, &target), 0);
  EXPECT_EQ(target, "target");
  ASSERT_EQ(fs_->GetAttr(link, &st, &timeout), 0);
  EXPECT_EQ(st.st_mode, S_IFLNK | 0777);
  ASSERT_EQ(fs_->GetAttr(base, &st, &timeout), 0);
  EXPECT_EQ(st.st_mode, S_IFDIR | 0700);
  EntryOut e;
  EXPECT_EQ(fs_->Lookup(snap, "missing", &e), ENOENT);
  EXPECT_EQ(fs_->Lookup(file, "x", &e), ENOTDIR);
  EXPECT_EQ(fs_->Lookup(InodeTable::kBackupsIno, "latest", &e), ENOENT);
  EXPECT_EQ(fs_->Lookup(InodeTable::kBackupsIno, "no-such-id", &e), ENOENT);
}

TEST_F(FilesystemTest, SnapshotsAreReadOnly) {
  std::string id = AddSnapshot({{"f", "x"}}, 1700000000);
  uint64_t snap = LookupOk(InodeTable::kBackupsIno, id);
  uint64_t file = LookupOk(snap, "f");
  OpenOut out;
  EXPECT_EQ(fs_->Open(file, O_WRONLY, &out), EROFS);
  EXPECT_EQ(fs_->Open(file, O_RDWR, &out), EROFS);
  EXPECT_EQ(fs_->Open(file, O_RDONLY | O_TRUNC, &out), EROFS);
  EntryOut e;
  EXPECT_EQ(fs_->Create(snap, "new", O_WRONLY, &e, &out), EROFS);
  EXPECT_EQ(fs_->Create(InodeTable::kBackupsIno, "new", O_WRONLY, &e, &out), EROFS);
  EXPECT_EQ(fs_->Create(InodeTable::kRootIno, "new", O_WRONLY, &e, &out), EROFS);
  EXPECT_EQ(fs_->Create(InodeTable::kClonesIno, "new", O_WRONLY, &e, &out), EPERM);
  EXPECT_EQ(fs_->DenyChange(snap), EROFS);
  EXPECT_EQ(fs_->DenyChange(InodeTable::kRootIno), EROFS);
  EXPECT_EQ(fs_->Rename(snap, "PG_VERSION", InodeTable::kWalIno, "x", 0), EROFS);
  EXPECT_EQ(fs_->Mkdir(snap, "d", 0700, &e), EROFS);
  EXPECT_EQ(fs_->Unlink(snap, "PG_VERSION"), EROFS);
  EXPECT_EQ(fs_->Fallocate(file, 0, 0, 1), EROFS);
  EXPECT_EQ(fs_->Fsync(file), 0);
  struct stat st;
  double timeout;
  AttrChange truncate;
  truncate.size = 0;
  EXPECT_EQ(fs_->SetAttr(file, truncate, &st, &timeout), EROFS);
  AttrChange chmod;
  chmod.mode = 0755;
  EXPECT_EQ(fs_->SetAttr(snap, chmod, &st, &timeout), EROFS);
  EXPECT_EQ(fs_->Open(snap, O_RDONLY, &out), EISDIR);
  EXPECT_EQ(fs_->open_handles(), 0u);
}

TEST_F(FilesystemTest, NewSnapshotsShowAtOnce) {
  std::string a = AddSnapshot({{"f", "1"}}, 1700000000);
  EXPECT_EQ(List(InodeTable::kBackupsIno).size(), 3u);
  // An open listing sees the new snapshot when read again from offset 0 (rewinddir).
  uint64_t fh;
  ASSERT_EQ(fs_->OpenDir(InodeTable::kBackupsIno, &fh), 0);
  int n = 0;
  auto count = [&n](const DirItem&) {
    ++n;
    return true;
  };
  ASSERT_EQ(fs_->ReadDir(fh, 0, false, count), 0);
  EXPECT_EQ(n, 3);
  std::string b = AddSnapshot({{"f", "2"}}, 1700000100);
  EntryOut e;
  EXPECT_EQ(fs_->Lookup(InodeTable::kBackupsIno, b, &e), 0);
  n = 0;
  ASSERT_EQ(fs_->ReadDir(fh, 0, false, count), 0);
  EXPECT_EQ(n, 4);
  fs_->ReleaseDir(fh);
  EXPECT_EQ(List(InodeTable::kBackupsIno), (std::vector<std::string>{".", "..", a, b}));
}

TEST_F(FilesystemTest, ReaddirPlusCountsLookupsOnlyForEntriesHandedOut) {
  std::string id = AddSnapshot({{"a", "1"}, {"b", "2"}, {"c", "3"}}, 1700000000);
  uint64_t snap = LookupOk(InodeTable::kBackupsIno, id);
  uint64_t fh;
  ASSERT_EQ(fs_->OpenDir(snap, &fh), 0);
  std::vector<DirItem> got;
  // The "reply" takes ".", "..", "a" and is full at "b".
  ASSERT_EQ(fs_->ReadDir(fh, 0, true,
                         [&](const DirItem& item) {
                           if (got.size() == 3) return false;
                           got.push_back(item);
                           return true;
                         }),
            0);
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(got[2].name, "a");
  uint64_t a_ino = got[2].entry.ino;
  EXPECT_EQ(fs_->inodes()->LookupCount(a_ino), 1u);
  EXPECT_FALSE(fs_->inodes()->Find(snap, "b"));  // refused: not counted, not kept
  // Resume after "a".
  std::vector<std::string> rest;
  ASSERT_EQ(fs_->ReadDir(fh, got[2].next_offset, true,
                         [&](const DirItem& item) {
                           rest.push_back(item.name);
                           return true;
                         }),
            0);
  EXPECT_EQ(rest, (std::vector<std::string>{"b", "c", "link"}));
  fs_->ReleaseDir(fh);
  EXPECT_EQ(LookupOk(snap, "a"), a_ino);
  EXPECT_EQ(fs_->inodes()->LookupCount(a_ino), 2u);
  fs_->Forget(a_ino, 2);
  EXPECT_FALSE(fs_->inodes()->Get(a_ino));
}

TEST_F(FilesystemTest, CorruptChunkIsEioNeverWrongBytes) {
  std::string content(8192, 'z');
  content[0] = 'a';
  std::string id = AddSnapshot({{"f", content}}, 1700000000);
  uint64_t snap = LookupOk(InodeTable::kBackupsIno, id);
  uint64_t file = LookupOk(snap, "f");
  auto node = fs_->inodes()->Get(file);
  ASSERT_EQ(node->entry.data.root.height, 0);
  // Replace the stored chunk with another chunk's valid encoding: decodes fine, wrong hash.
  KvBatch batch;
  batch.Put(Cf::kChunks, node->entry.data.root.id.AsKey(),
            repo_->chunks()->Encode(std::string(8192, 'y')));
  ASSERT_TRUE(repo_->kv()->Write(batch, false).ok());
  OpenOut out;
  ASSERT_EQ(fs_->Open(file, O_RDONLY, &out), 0);
  std::string data;
  EXPECT_EQ(fs_->Read(out.fh, 0, 4096, &data), EIO);
  fs_->Release(out.fh);
  // A missing chunk too.
  KvBatch del;
  del.Delete(Cf::kChunks, node->entry.data.root.id.AsKey());
  ASSERT_TRUE(repo_->kv()->Write(del, false).ok());
  ASSERT_EQ(fs_->Open(file, O_RDONLY, &out), 0);
  EXPECT_EQ(fs_->Read(out.fh, 0, 4096, &data), EIO);
  fs_->Release(out.fh);
}

TEST_F(FilesystemTest, ArchiveAWalSegmentAndReadItBack) {
  const std::string name = "000000010000000000000003";
  std::string seg = MakeSegment(name, 'w');
  EntryOut e;
  EXPECT_EQ(fs_->Lookup(InodeTable::kWalIno, name, &e), ENOENT);

  // Written but not yet flushed: getattr shows the size; a lookup does not find it.
  OpenOut out;
  EntryOut created;
  ASSERT_EQ(fs_->Create(InodeTable::kWalIno, name, O_WRONLY | O_CREAT, &created, &out), 0);
  EXPECT_EQ(created.entry_timeout, 0);
  EXPECT_EQ(created.attr.st_size, 0);
  ASSERT_EQ(fs_->Write(out.fh, 0, std::string_view(seg).substr(0, 1 << 20)), 0);
  struct stat st;
  double timeout;
  ASSERT_EQ(fs_->GetAttr(created.ino, &st, &timeout), 0);
  EXPECT_EQ(st.st_size, 1 << 20);
  EXPECT_EQ(fs_->Lookup(InodeTable::kWalIno, name, &e), ENOENT);
  EXPECT_EQ(List(InodeTable::kWalIno), (std::vector<std::string>{".", ".."}));
  // ftruncate on the open file.
  AttrChange truncate;
  truncate.size = 0;
  truncate.fh = out.fh;
  ASSERT_EQ(fs_->SetAttr(created.ino, truncate, &st, &timeout), 0);
  EXPECT_EQ(st.st_size, 0);
  ASSERT_EQ(fs_->Write(out.fh, 0, seg), 0);
  ASSERT_EQ(fs_->Flush(out.fh), 0);
  ASSERT_EQ(fs_->Flush(out.fh), 0);  // a second close of a dup'ed descriptor
  fs_->Release(out.fh);

  uint64_t ino = LookupOk(InodeTable::kWalIno, name);
  ASSERT_EQ(fs_->GetAttr(ino, &st, &timeout), 0);
  EXPECT_EQ(static_cast<uint64_t>(st.st_size), kSegSize);
  EXPECT_EQ(st.st_mode, S_IFREG | 0600);
  EXPECT_EQ(ReadAll(ino), seg);
  EXPECT_EQ(List(InodeTable::kWalIno), (std::vector<std::string>{".", "..", name}));
  // The created inode, once released, reports the archived file.
  ASSERT_EQ(fs_->GetAttr(created.ino, &st, &timeout), 0);
  EXPECT_EQ(static_cast<uint64_t>(st.st_size), kSegSize);
  fs_->Forget(created.ino, 1);
  EXPECT_EQ(fs_->open_handles(), 0u);
}

TEST_F(FilesystemTest, WalDuplicatesBadNamesAndSizes) {
  const std::string name = "000000010000000000000004";
  std::string seg = MakeSegment(name, 'a');
  ASSERT_EQ(CopyIntoWal(name, seg), 0);
  // The same bytes again: success, nothing changes (invariant 2).
  EXPECT_EQ(CopyIntoWal(name, seg), 0);
  // Other bytes: close() fails with EEXIST, and the stored file stays as it was.
  EXPECT_EQ(CopyIntoWal(name, MakeSegment(name, 'b')), EEXIST);
  EXPECT_EQ(ReadAll(LookupOk(InodeTable::kWalIno, name)), seg);
  // Wrong size: EINVAL at close, nothing visible.
  const std::string short_name = "000000010000000000000005";
  EXPECT_EQ(CopyIntoWal(short_name, MakeSegment(short_name, 'c').substr(0, 1 << 20)), EINVAL);
  EntryOut e;
  EXPECT_EQ(fs_->Lookup(InodeTable::kWalIno, short_name, &e), ENOENT);
  // Bad names are refused at create.
  OpenOut out;
  EXPECT_EQ(fs_->Create(InodeTable::kWalIno, "notawal", O_WRONLY, &e, &out), EINVAL);
  EXPECT_EQ(fs_->Create(InodeTable::kWalIno, "00000001000000000000000G", O_WRONLY, &e, &out),
            EINVAL);
  EXPECT_EQ(fs_->Lookup(InodeTable::kWalIno, "notawal", &e), ENOENT);
  // O_EXCL on an archived name.
  EXPECT_EQ(fs_->Create(InodeTable::kWalIno, name, O_WRONLY | O_CREAT | O_EXCL, &e, &out), EEXIST);
  // Appending to an archived file, and truncating it without a writer.
  uint64_t ino = LookupOk(InodeTable::kWalIno, name);
  EXPECT_EQ(fs_->Open(ino, O_WRONLY | O_APPEND, &out), EPERM);
  struct stat st;
  double timeout;
  AttrChange truncate;
  truncate.size = 0;
  EXPECT_EQ(fs_->SetAttr(ino, truncate, &st, &timeout), EPERM);
  // The archive is append-only.
  EXPECT_EQ(fs_->DenyChange(InodeTable::kWalIno), EPERM);
  EXPECT_EQ(fs_->Rename(InodeTable::kWalIno, name, InodeTable::kWalIno, "x", 0), EPERM);
  EXPECT_EQ(fs_->Unlink(InodeTable::kWalIno, name), EPERM);
  EXPECT_EQ(fs_->open_handles(), 0u);
}

TEST_F(FilesystemTest, AWriterDroppedWithoutFlushLeavesNothing) {
  const std::string name = "000000010000000000000006";
  std::string seg = MakeSegment(name, 'd');
  EntryOut created;
  OpenOut out;
  ASSERT_EQ(fs_->Create(InodeTable::kWalIno, name, O_WRONLY | O_CREAT, &created, &out), 0);
  ASSERT_EQ(fs_->Write(out.fh, 0, seg), 0);
  fs_->Release(out.fh);  // the writer died: no flush
  EntryOut e;
  EXPECT_EQ(fs_->Lookup(InodeTable::kWalIno, name, &e), ENOENT);
  struct stat st;
  double timeout;
  EXPECT_EQ(fs_->GetAttr(created.ino, &st, &timeout), ENOENT);
  // And the cp can be run again.
  EXPECT_EQ(CopyIntoWal(name, seg), 0);
}

TEST_F(FilesystemTest, HistoryFilesAndMissingProbes) {
  EntryOut e;
  EXPECT_EQ(fs_->Lookup(InodeTable::kWalIno, "00000002.history", &e), ENOENT);
  ASSERT_EQ(CopyIntoWal("00000002.history", "1\t0/3000000\tno recovery target specified\n"), 0);
  uint64_t ino = LookupOk(InodeTable::kWalIno, "00000002.history");
  EXPECT_EQ(ReadAll(ino), "1\t0/3000000\tno recovery target specified\n");
}

TEST_F(FilesystemTest, ARefusedRewriteNeverShowsAnotherSize) {
  // truncate -s 0, or dd conv=notrunc of one block, on an archived segment: the kernel takes the
  // size in the setattr and getattr replies as the file's; a smaller one would cut its cached copy
  // and readers would see a short file until the commit is refused.
  const std::string name = "000000010000000000000009";
  std::string seg = MakeSegment(name, 'k');
  ASSERT_EQ(CopyIntoWal(name, seg), 0);
  uint64_t ino = LookupOk(InodeTable::kWalIno, name);
  OpenOut out;
  ASSERT_EQ(fs_->Open(ino, O_WRONLY, &out), 0);
  struct stat st;
  double timeout;
  AttrChange truncate;
  truncate.size = 0;
  truncate.fh = out.fh;
  ASSERT_EQ(fs_->SetAttr(ino, truncate, &st, &timeout), 0);
  EXPECT_EQ(static_cast<uint64_t>(st.st_size), seg.size());
  ASSERT_EQ(fs_->Write(out.fh, 0, std::string_view(seg).substr(0, 8192)), 0);
  ASSERT_EQ(fs_->GetAttr(ino, &st, &timeout), 0);
  EXPECT_EQ(static_cast<uint64_t>(st.st_size), seg.size());
  EntryOut e;
  ASSERT_EQ(fs_->Lookup(InodeTable::kWalIno, name, &e), 0);
  EXPECT_EQ(static_cast<uint64_t>(e.attr.st_size), seg.size());
  fs_->Forget(e.ino, 1);
  EXPECT_EQ(fs_->Flush(out.fh), EINVAL);  // 8192 bytes: refused
  fs_->Release(out.fh);
  EXPECT_EQ(ReadAll(ino), seg);
  fs_->Forget(ino, 1);
}

}  // namespace
}  // namespace pgbackfs
