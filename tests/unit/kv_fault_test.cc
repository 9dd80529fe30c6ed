// The RocksDB store on a full disk (KvFaultInjection): writes fail with NoSpace and nothing is
// acknowledged that was not stored; once space is back, writing resumes without a reopen by the
// caller (the store reopens its database by itself when RocksDB cannot resume), and everything
// acknowledged before, during and after survives a reopen.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "repo/kv.h"
#include "tests/unit/test_util.h"

namespace pgbackfs {
namespace {

class KvFaultTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = MakeTempDir();
    Open();
  }
  void TearDown() override {
    kv_.reset();
    if (!HasFailure()) std::filesystem::remove_all(dir_);
  }
  void Open() {
    kv_.reset();
    options_.create_if_missing = true;
    options_.faults = &faults_;
    auto kv = OpenRocksDbStore(dir_, options_);
    ASSERT_TRUE(kv.ok()) << kv.status().ToString();
    kv_ = std::move(kv).value();
  }
  Status Put(const std::string& key, const std::string& value, bool sync) {
    KvBatch batch;
    batch.Put(Cf::kChunks, key, value);
    batch.Put(Cf::kMeta, "meta-" + key, value);
    return kv_->Write(batch, sync);
  }
  // The value under `key` in both column families, "" if absent in both; fails on a mismatch.
  std::string Get(const std::string& key) {
    std::string chunk, meta;
    Status a = kv_->Get(Cf::kChunks, key, &chunk);
    Status b = kv_->Get(Cf::kMeta, "meta-" + key, &meta);
    EXPECT_EQ(a.ok(), b.ok()) << key << ": a batch was applied in part";
    if (!a.ok()) {
      EXPECT_TRUE(a.IsNotFound()) << a.ToString();
      return "";
    }
    EXPECT_EQ(chunk, meta);
    return chunk;
  }
  // Every key of `expected` holds its value ("": absent).
  void ExpectStored(const std::map<std::string, std::string>& expected) {
    for (const auto& [key, value] : expected) EXPECT_EQ(Get(key), value) << key;
  }

  // Leaves the store in the state RocksDB's resume cannot get it out of: a write failed on the
  // full disk, and once space is back, the resume's flush crawls (every table append takes
  // longer than the resume may; Open with a short resume_timeout first). The next write gives
  // the resume up and reopens the database.
  void StopWithAResumeThatCannotFinish() {
    faults_.disk_full = true;
    EXPECT_EQ(Put("refused", "x", true).code(), Status::Code::kNoSpace);
    faults_.disk_full = false;
    faults_.table_append_delay_ms = 10 * static_cast<int>(options_.resume_timeout.count());
  }

  std::string dir_;
  KvFaultInjection faults_;
  KvOptions options_;
  std::unique_ptr<KvStore> kv_;
};

TEST_F(KvFaultTest, WritesFailWhileFullAndResumeAfterwardsWithoutReopen) {
  ASSERT_TRUE(Put("a", "acknowledged before", true).ok());
  ASSERT_TRUE(Put("b", "unsynced before", false).ok());

  faults_.disk_full = true;
  Status s = Put("c", "synced while full", true);
  EXPECT_EQ(s.code(), Status::Code::kNoSpace) << s.ToString();
  s = Put("d", "unsynced while full", false);
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.code(), Status::Code::kNoSpace) << s.ToString();
  EXPECT_NE(s.message().find("free"), std::string::npos) << "says what to do: " << s.ToString();
  EXPECT_FALSE(kv_->Sync().ok());
  // Reads keep working.
  EXPECT_EQ(Get("a"), "acknowledged before");
  EXPECT_EQ(Get("b"), "unsynced before");
  EXPECT_EQ(Get("c"), "");

  faults_.disk_full = false;
  {
    Status r = Put("e", "after space came back", true);
    ASSERT_TRUE(r.ok()) << r.ToString();
  }
  ASSERT_TRUE(kv_->Sync().ok());
  EXPECT_EQ(Get("a"), "acknowledged before");
  EXPECT_EQ(Get("b"), "unsynced before");
  EXPECT_EQ(Get("c"), "");
  EXPECT_EQ(Get("d"), "");
  EXPECT_EQ(Get("e"), "after space came back");

  Open();
  EXPECT_EQ(Get("a"), "acknowledged before");
  EXPECT_EQ(Get("b"), "unsynced before");
  EXPECT_EQ(Get("c"), "");
  EXPECT_EQ(Get("d"), "");
  EXPECT_EQ(Get("e"), "after space came back");
}

TEST_F(KvFaultTest, FailedMemtableFlushStopsWritesUntilSpaceIsBack) {
  const std::string big(64 << 10, 'x');
  for (int i = 0; i < 64; ++i) {
    ASSERT_TRUE(Put("k" + std::to_string(i), big + std::to_string(i), false).ok());
  }
  faults_.disk_full = true;
  Status s = kv_->Flush();
  EXPECT_EQ(s.code(), Status::Code::kNoSpace) << s.ToString();
  EXPECT_FALSE(Put("while-full", "x", true).ok());
  faults_.disk_full = false;
  ASSERT_TRUE(Put("after", "y", true).ok());
  ASSERT_TRUE(kv_->Flush().ok());
  Open();
  for (int i = 0; i < 64; ++i) {
    EXPECT_EQ(Get("k" + std::to_string(i)), big + std::to_string(i)) << i;
  }
  EXPECT_EQ(Get("while-full"), "");
  EXPECT_EQ(Get("after"), "y");
}

TEST_F(KvFaultTest, ManyFullDiskEpisodesLoseNothingAcknowledged) {
  std::vector<std::string> acknowledged, refused;
  for (int episode = 0; episode < 8; ++episode) {
    for (int i = 0; i < 20; ++i) {
      std::string key = "e" + std::to_string(episode) + "-" + std::to_string(i);
      faults_.disk_full = i >= 12 && i < 16;
      Status s = Put(key, RandomBytes(10000, episode * 100 + i), i % 3 == 0);
      (s.ok() ? acknowledged : refused).push_back(key);
      if (!s.ok()) {
        EXPECT_EQ(s.code(), Status::Code::kNoSpace) << s.ToString();
      }
    }
    faults_.disk_full = false;
    if (episode % 2) {
      ASSERT_TRUE(kv_->Flush().ok());
    }
  }
  // The writes while full are refused; rarely the first one after a resume is too (RocksDB hits
  // the log whose write failed once more before the new one takes over).
  EXPECT_GE(refused.size(), 8u * 4u);
  EXPECT_LE(refused.size(), 8u * 4u + 4u);
  ASSERT_TRUE(kv_->Sync().ok());
  Open();
  for (const auto& key : acknowledged) {
    EXPECT_NE(Get(key), "") << key;
  }
  for (const auto& key : refused) {
    EXPECT_EQ(Get(key), "") << key;
  }
}

// The write that fails is the first after a flush: no memtable holds anything, and RocksDB's
// resume keeps the log whose append failed unless one does (the next append to it aborted the
// process; an attempt to switch logs made the error fatal).
TEST_F(KvFaultTest, AWriteThatFailsRightAfterAFlushResumes) {
  for (int round = 0; round < 3; ++round) {
    const std::string r = std::to_string(round);
    ASSERT_TRUE(Put("before-" + r, "a", true).ok());
    ASSERT_TRUE(kv_->Flush().ok());
    faults_.disk_full = true;
    EXPECT_EQ(Put("while-full-" + r, "b", round % 2 == 0).code(), Status::Code::kNoSpace);
    faults_.disk_full = false;
    Status s = Put("after-" + r, "c", true);
    ASSERT_TRUE(s.ok()) << s.ToString();
    ASSERT_TRUE(Put("after2-" + r, "d", false).ok());
  }
  ASSERT_TRUE(kv_->Sync().ok());
  Open();
  for (int round = 0; round < 3; ++round) {
    const std::string r = std::to_string(round);
    EXPECT_EQ(Get("before-" + r), "a");
    EXPECT_EQ(Get("while-full-" + r), "");
    EXPECT_EQ(Get("after-" + r), "c");
    EXPECT_EQ(Get("after2-" + r), "d");
  }
}

// A compaction that runs while the disk fills fails a little later, when a resume may already
// have started. RocksDB 7.8 then abandons the resume's flush with its memtable still queued, and
// the next resume waited for it forever (seen under ASan in CI). The store resumes only once no
// background job runs.
TEST_F(KvFaultTest, ResumeWaitsForACompactionThatFailsOnTheFullDisk) {
  std::vector<std::string> acknowledged;
  for (int file = 0; file < 4; ++file) {
    for (int i = 0; i < 300; ++i) {  // 3 MB: a compaction of them makes a dozen 1 MiB appends
      std::string key = "f" + std::to_string(file) + "-" + std::to_string(i);
      ASSERT_TRUE(Put(key, RandomBytes(10000, file * 1000 + i), false).ok());
      acknowledged.push_back(key);
    }
    if (file == 3) faults_.table_append_delay_ms = 150;  // the compaction after it crawls
    ASSERT_TRUE(kv_->Flush().ok());
  }
  // Four level-0 files per column family: a compaction is running now, one slow append at a time.
  faults_.disk_full = true;
  // Once the compaction started an append on the full disk, it fails 150 ms later: after the
  // resume below began.
  for (int i = 0; i < 500 && faults_.table_writes_refused.load() == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_GT(faults_.table_writes_refused.load(), 0) << "no compaction ran";
  EXPECT_EQ(Put("while-full", "x", true).code(), Status::Code::kNoSpace);
  faults_.disk_full = false;
  for (int i = 0; i < 3; ++i) {
    std::string key = "after-" + std::to_string(i);
    Status s = Put(key, "y", true);
    ASSERT_TRUE(s.ok()) << s.ToString();
    acknowledged.push_back(key);
  }
  faults_.table_append_delay_ms = 0;
  ASSERT_TRUE(kv_->Flush().ok());
  Open();
  for (const auto& key : acknowledged) {
    EXPECT_NE(Get(key), "") << key;
  }
  EXPECT_EQ(Get("while-full"), "");
}

// RocksDB's resume does not finish (in production: within 120 s; RocksDB 7.8 can wait forever
// for an orphaned flush). The same write reopens the database, and goes through.
TEST_F(KvFaultTest, AResumeThatCannotFinishMakesTheStoreReopenInTheSameWrite) {
  options_.resume_timeout = std::chrono::milliseconds(20);
  Open();
  ASSERT_TRUE(Put("a", "synced before", true).ok());
  ASSERT_TRUE(kv_->Flush().ok());
  ASSERT_TRUE(Put("b", "unsynced before", false).ok());
  StopWithAResumeThatCannotFinish();
  Status s = Put("c", "after space came back", true);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(faults_.reopens_tried.load(), 1);
  faults_.table_append_delay_ms = 0;
  const std::map<std::string, std::string> stored = {{"a", "synced before"},
                                                     {"b", "unsynced before"},
                                                     {"c", "after space came back"},
                                                     {"refused", ""}};
  ExpectStored(stored);
  ASSERT_TRUE(kv_->Flush().ok());
  ASSERT_TRUE(kv_->Compact(Cf::kChunks).ok());
  Open();
  ExpectStored(stored);
}

// The store cannot resume, and its reopen fails too: the disk filled again meanwhile. Reads go
// on (a read-only instance); writes fail with the full-disk message, and a later write, once
// space is back and the backoff passed, reopens the store and goes through.
TEST_F(KvFaultTest, AFailedReopenIsRetriedByALaterWriteOnceSpaceIsBack) {
  options_.resume_timeout = std::chrono::milliseconds(20);
  options_.reopen_backoff = std::chrono::milliseconds(1000);
  Open();
  ASSERT_TRUE(Put("a", "synced before", true).ok());
  ASSERT_TRUE(kv_->Flush().ok());
  ASSERT_TRUE(Put("b", "synced before too", true).ok());
  ASSERT_TRUE(Put("c", "unsynced before", false).ok());
  StopWithAResumeThatCannotFinish();
  faults_.fill_disk_at_reopen = true;
  Status s = Put("while-reopening", "x", true);
  const auto failed_at = std::chrono::steady_clock::now();
  EXPECT_EQ(s.code(), Status::Code::kNoSpace) << s.ToString();
  EXPECT_NE(s.message().find("file system is full"), std::string::npos) << s.ToString();
  EXPECT_EQ(faults_.reopens_tried.load(), 1);
  EXPECT_TRUE(faults_.disk_full.load());
  std::map<std::string, std::string> stored = {{"a", "synced before"},
                                               {"b", "synced before too"},
                                               {"c", "unsynced before"},
                                               {"refused", ""},
                                               {"while-reopening", ""}};
  ExpectStored(stored);
  EXPECT_FALSE(kv_->Sync().ok());

  faults_.disk_full = false;
  faults_.table_append_delay_ms = 0;
  const Status during_backoff = Put("during-backoff", "x", true);
  if (std::chrono::steady_clock::now() - failed_at < options_.reopen_backoff) {
    EXPECT_EQ(during_backoff.code(), Status::Code::kNoSpace) << during_backoff.ToString();
    EXPECT_EQ(faults_.reopens_tried.load(), 1) << "a reopen before the backoff passed";
  }
  std::this_thread::sleep_until(failed_at + options_.reopen_backoff);
  s = Put("after", "after space came back", true);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_GE(faults_.reopens_tried.load(), 2);
  stored["after"] = "after space came back";
  stored["during-backoff"] = during_backoff.ok() ? "x" : "";
  ExpectStored(stored);
  ASSERT_TRUE(kv_->Flush().ok());
  Open();
  ExpectStored(stored);
}

// Iterators open across a reopen keep their current entry (what key() and value() returned
// stays valid), then end with Busy; the thread that holds them can write (and so reopen).
TEST_F(KvFaultTest, IteratorsOpenAcrossAReopenKeepTheirEntryThenEndWithBusy) {
  options_.resume_timeout = std::chrono::milliseconds(20);
  Open();
  for (int i = 0; i < 10; ++i) {
    ASSERT_TRUE(Put("k" + std::to_string(i), "v" + std::to_string(i), true).ok());
  }
  auto viewed = kv_->NewIterator(Cf::kChunks);  // value() read before the reopen
  viewed->Seek("k3");
  ASSERT_TRUE(viewed->Valid());
  const std::string_view key = viewed->key();
  const std::string_view value = viewed->value();
  auto positioned = kv_->NewIterator(Cf::kChunks);  // value() first read after it
  positioned->Seek("k5");
  ASSERT_TRUE(positioned->Valid());
  auto unpositioned = kv_->NewIterator(Cf::kMeta);

  StopWithAResumeThatCannotFinish();
  Status s = Put("after", "y", true);
  ASSERT_TRUE(s.ok()) << s.ToString();
  ASSERT_EQ(faults_.reopens_tried.load(), 1);
  faults_.table_append_delay_ms = 0;

  EXPECT_TRUE(viewed->Valid());
  EXPECT_EQ(key, "k3");
  EXPECT_EQ(value, "v3");
  EXPECT_EQ(viewed->value(), "v3");
  EXPECT_TRUE(viewed->status().ok()) << viewed->status().ToString();
  viewed->Next();
  EXPECT_FALSE(viewed->Valid());
  EXPECT_EQ(viewed->status().code(), Status::Code::kBusy) << viewed->status().ToString();
  EXPECT_NE(viewed->status().message().find("reopened"), std::string::npos);
  viewed->Seek("k0");
  EXPECT_FALSE(viewed->Valid());

  EXPECT_TRUE(positioned->Valid());
  EXPECT_EQ(positioned->key(), "k5");
  EXPECT_EQ(positioned->value(), "v5");
  positioned->Next();
  EXPECT_FALSE(positioned->Valid());
  EXPECT_EQ(positioned->status().code(), Status::Code::kBusy);

  unpositioned->Seek("");
  EXPECT_FALSE(unpositioned->Valid());
  EXPECT_EQ(unpositioned->status().code(), Status::Code::kBusy);

  int n = 0;
  auto fresh = kv_->NewIterator(Cf::kChunks);
  for (fresh->Seek(""); fresh->Valid(); fresh->Next()) ++n;
  EXPECT_TRUE(fresh->status().ok()) << fresh->status().ToString();
  EXPECT_EQ(n, 11);  // k0..k9, after
  viewed.reset();
  positioned.reset();
  unpositioned.reset();
  fresh.reset();
  Open();
  EXPECT_EQ(Get("k3"), "v3");
  EXPECT_EQ(Get("after"), "y");
}

// Readers on other threads while the store reopens: point reads wait and succeed, scans either
// see every key or end with Busy; nothing crashes or hangs (run it under ASan).
TEST_F(KvFaultTest, ReadersOnOtherThreadsGoOnAcrossAReopen) {
  options_.resume_timeout = std::chrono::milliseconds(20);
  Open();
  constexpr int kKeys = 50;
  for (int i = 0; i < kKeys; ++i) {
    ASSERT_TRUE(Put("k" + std::to_string(i), RandomBytes(3000, i), i % 10 == 0).ok());
  }
  std::atomic<bool> stop{false};
  std::atomic<int> scans{0}, ended{0}, bad{0};
  std::vector<std::thread> readers;
  for (int t = 0; t < 2; ++t) {
    readers.emplace_back([&, t] {
      for (int round = 0; !stop.load(); ++round) {
        const int i = (round * 7 + t) % kKeys;
        std::string value;
        Status s = kv_->Get(Cf::kChunks, "k" + std::to_string(i), &value);
        if (!s.ok() || value != RandomBytes(3000, i)) bad++;
        auto it = kv_->NewIterator(Cf::kChunks);
        int n = 0;
        for (it->Seek(""); it->Valid(); it->Next()) {
          if (it->key().substr(0, 1) == "k" && it->value().size() != 3000) bad++;
          ++n;
        }
        if (it->status().ok()) {
          if (n < kKeys) bad++;
          scans++;
        } else if (it->status().code() == Status::Code::kBusy) {
          ended++;
        } else {
          bad++;
        }
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  StopWithAResumeThatCannotFinish();
  Status s = Put("after", "y", true);
  EXPECT_TRUE(s.ok()) << s.ToString();
  faults_.table_append_delay_ms = 0;
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  stop = true;
  for (auto& r : readers) r.join();
  EXPECT_EQ(faults_.reopens_tried.load(), 1);
  EXPECT_EQ(bad.load(), 0);
  EXPECT_GT(scans.load(), 0);
  EXPECT_EQ(Get("after"), "y");
}

// The disk fills again while RocksDB's resume flushes: the resume fails, and a later one, once
// space is back, succeeds (RocksDB 7.8 classes the failed flush as a hard error, not a fatal one,
// so no reopen is needed).
TEST_F(KvFaultTest, AResumeThatFailsOnADiskThatFilledAgainIsRetriedLater) {
  ASSERT_TRUE(Put("a", "synced before", true).ok());
  ASSERT_TRUE(Put("b", "unsynced before", false).ok());
  faults_.disk_full = true;
  EXPECT_EQ(Put("refused", "x", true).code(), Status::Code::kNoSpace);
  faults_.disk_full = false;
  faults_.fill_disk_at_resume = true;
  Status s = Put("refused-2", "x", true);
  EXPECT_EQ(s.code(), Status::Code::kNoSpace) << s.ToString();
  EXPECT_NE(s.message().find("file system is full"), std::string::npos) << s.ToString();
  faults_.disk_full = false;
  s = Put("c", "after space came back", true);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(faults_.reopens_tried.load(), 0);
  Open();
  ExpectStored({{"a", "synced before"},
                {"b", "unsynced before"},
                {"c", "after space came back"},
                {"refused", ""},
                {"refused-2", ""}});
}

// An I/O error other than ENOSPC on the log: RocksDB names it fatal and refuses to resume. The
// next write reopens the database and goes through.
TEST_F(KvFaultTest, AFatalErrorMakesTheStoreReopen) {
  ASSERT_TRUE(Put("a", "synced before", true).ok());
  ASSERT_TRUE(kv_->Flush().ok());
  ASSERT_TRUE(Put("b", "unsynced before", false).ok());
  faults_.io_error = true;
  Status s = Put("refused", "x", true);
  EXPECT_EQ(s.code(), Status::Code::kIOError) << s.ToString();
  faults_.io_error = false;
  s = Put("c", "after the error", true);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(faults_.reopens_tried.load(), 1);
  const std::map<std::string, std::string> stored = {
      {"a", "synced before"}, {"b", "unsynced before"}, {"c", "after the error"}, {"refused", ""}};
  ExpectStored(stored);
  ASSERT_TRUE(kv_->Flush().ok());
  Open();
  ExpectStored(stored);
}

// A damaged block that RocksDB reads when it opens the database (a table's footer, properties or
// index): the open fails, and its error names the damaged table file even where RocksDB's own
// message names only the manifest. Every 19th byte of each table's last 1.5 KiB is flipped in turn.
TEST_F(KvFaultTest, ATableDamagedWhereTheOpenReadsItIsNamed) {
  for (int i = 0; i < 50; ++i) {
    ASSERT_TRUE(
        Put("key-" + std::to_string(i), std::string(300, static_cast<char>('a' + i % 26)), false)
            .ok());
  }
  ASSERT_TRUE(kv_->Flush().ok());
  kv_.reset();
  std::vector<std::filesystem::path> tables;
  for (const auto& entry : std::filesystem::directory_iterator(dir_)) {
    if (entry.path().extension() == ".sst") tables.push_back(entry.path());
  }
  ASSERT_FALSE(tables.empty());
  int refused = 0;
  for (const auto& table : tables) {
    std::string bytes = ReadWholeFile(table.string());
    size_t from = bytes.size() > 1536 ? bytes.size() - 1536 : 0;
    for (size_t offset = from; offset < bytes.size(); offset += 19) {
      std::string damaged = bytes;
      damaged[offset] = static_cast<char>(damaged[offset] ^ 0x5a);
      WriteWholeFile(table.string(), damaged);
      auto kv = OpenRocksDbStore(dir_, options_);
      if (!kv.ok()) {
        ++refused;
        EXPECT_EQ(kv.status().code(), Status::Code::kCorruption) << kv.status().ToString();
        EXPECT_NE(kv.status().message().find(table.filename().string()), std::string::npos)
            << "offset " << offset << ": " << kv.status().ToString();
      }
    }
    WriteWholeFile(table.string(), bytes);
  }
  EXPECT_GT(refused, 0) << "no flip made the open fail: the test checked nothing";
  Open();
  EXPECT_EQ(Get("key-7"), std::string(300, 'h'));
}

}  // namespace
}  // namespace pgbackfs
