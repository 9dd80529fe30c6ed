#include "repo/wal_index.h"

#include <gtest/gtest.h>

#include <functional>
#include <map>

#include "repo/chunk_tree.h"
#include "tests/unit/test_util.h"
#include "tests/unit/wal_test_builder.h"

namespace pgbackfs {
namespace {

using waltest::WalBuilder;
using waltest::XactParts;

constexpr int64_t kT0 = 847000000000000;  // a TimestampTz in 2026
constexpr uint64_t kSeg = 1 << 20;

class WalIndexTest : public RepoTest {
 protected:
  void SetUp() override {
    RepoTest::SetUp();
    index_ = std::make_unique<WalIndex>(repo_.get());
  }
  void TearDown() override {
    index_.reset();
    RepoTest::TearDown();
  }

  // Stores `name`'s bytes for the fetcher and indexes it.
  WalSegmentRecord Index(const std::string& name, const std::string& bytes, bool tolerant = false) {
    files_[name] = bytes;
    WalIndexOptions o;
    o.tolerant = tolerant;
    auto r = index_->IndexSegment(name, BytesFrom(files_[name]), o);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? *r : WalSegmentRecord();
  }
  void IndexBuilt(const WalBuilder& b, uint64_t segno) {
    Index(b.SegmentName(segno), b.Segment(segno));
  }
  void Reset() {
    TearDown();
    SetUp();
    files_.clear();
  }
  void EnableFetcher() {
    index_->SetSegmentFetcher([this](const std::string& name) -> Result<ByteSource> {
      auto it = files_.find(name);
      if (it == files_.end()) return Status::NotFound("'" + name + "' is not archived");
      return BytesFrom(it->second);
    });
  }
  // Every key and value under walidx/.
  std::map<std::string, std::string> Dump() {
    std::map<std::string, std::string> out;
    auto it = repo_->kv()->NewIterator(Cf::kMeta);
    for (it->Seek(kWalIndexKeyPrefix);
         it->Valid() && it->key().substr(0, kWalIndexKeyPrefix.size()) == kWalIndexKeyPrefix;
         it->Next())
      out[std::string(it->key())] = std::string(it->value());
    return out;
  }
  SnapshotInfo Snap(const std::string& id, uint32_t tli, uint64_t start, uint64_t end) {
    SnapshotInfo s;
    s.id = id;
    s.timeline = tli;
    s.start_lsn = FormatLsn(start);
    s.end_lsn = FormatLsn(end);
    s.stop_time = 1700000000;
    return s;
  }

  std::unique_ptr<WalIndex> index_;
  std::map<std::string, std::string> files_;
};

TEST_P(WalIndexTest, IndexesSegmentsAndAnswersQueries) {
  WalBuilder b(1, 1);
  b.Checkpoint(true, kSeg, 1, 1, 1700000000);
  uint64_t c100 = b.Commit(100, kT0 + 100);
  uint64_t a101 = b.Abort(101, kT0 + 110);
  uint64_t rp1 = b.RestorePoint("daily", kT0 + 120);
  b.Switch();
  uint64_t c102 = b.Commit(102, kT0 + 200);
  uint64_t cp = b.CommitPrepared(103, kT0 + 210);
  uint64_t rp2 = b.RestorePoint("daily", kT0 + 220);
  b.RestorePoint("daily-extra", kT0 + 230);
  b.Switch();
  IndexBuilt(b, 1);
  IndexBuilt(b, 2);

  auto x = index_->FindXid(100);
  ASSERT_TRUE(x.ok());
  ASSERT_EQ(x->size(), 1u);
  EXPECT_EQ((*x)[0].type, WalEventType::kCommit);
  EXPECT_EQ((*x)[0].lsn, c100);
  EXPECT_EQ((*x)[0].tli, 1u);
  EXPECT_EQ((*x)[0].time, kT0 + 100);
  x = index_->FindXid(101);
  ASSERT_EQ(x->size(), 1u);
  EXPECT_EQ((*x)[0].type, WalEventType::kAbort);
  EXPECT_EQ((*x)[0].lsn, a101);
  x = index_->FindXid(103);
  ASSERT_EQ(x->size(), 1u);
  EXPECT_EQ((*x)[0].type, WalEventType::kCommitPrepared);
  EXPECT_EQ((*x)[0].lsn, cp);
  EXPECT_TRUE(index_->FindXid(999)->empty());

  auto rps = index_->FindRestorePoints("daily");
  ASSERT_TRUE(rps.ok());
  ASSERT_EQ(rps->size(), 2u);
  EXPECT_EQ((*rps)[0].lsn, rp1);
  auto latest = index_->FindRestorePoint("daily");
  ASSERT_TRUE(latest.ok());
  EXPECT_EQ(latest->lsn, rp2);
  EXPECT_EQ(latest->time, kT0 + 220);
  EXPECT_TRUE(index_->FindRestorePoint("dail").status().IsNotFound());
  EXPECT_TRUE(index_->FindRestorePoint("nope").status().IsNotFound());

  auto m = index_->FindTime(1, kT0 + 150);
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  ASSERT_TRUE(m->before && m->at_or_after);
  EXPECT_EQ(m->before->lsn, a101);
  EXPECT_EQ(m->at_or_after->lsn, c102);
  m = index_->FindTime(1, kT0 + 200);  // exactly a commit's time
  EXPECT_EQ(m->at_or_after->lsn, c102);
  m = index_->FindTime(1, kT0);
  EXPECT_FALSE(m->before);
  EXPECT_EQ(m->at_or_after->lsn, c100);
  m = index_->FindTime(1, kT0 + 1000);
  EXPECT_FALSE(m->at_or_after);
  EXPECT_EQ(m->before->lsn, cp);
  m = index_->FindTime(1, kT0 + 150, c102 + 1);  // from an LSN on
  EXPECT_FALSE(m->before);
  EXPECT_EQ(m->at_or_after->lsn, cp);

  auto seg = index_->GetSegment(b.SegmentName(2));
  ASSERT_TRUE(seg.ok());
  EXPECT_TRUE(seg->ok);
  EXPECT_TRUE(seg->complete());
  EXPECT_EQ(seg->end, WalEnd::kSwitch);
  EXPECT_EQ(seg->commits, 2u);
  EXPECT_EQ(seg->aborts, 0u);
  EXPECT_EQ(seg->first_commit_time, kT0 + 200);
  EXPECT_EQ(seg->last_commit_time, kT0 + 210);
  EXPECT_EQ(seg->first_lsn, c102);
  EXPECT_EQ(seg->seg_size, kSeg);
  EXPECT_TRUE(index_->GetSegment(b.SegmentName(3)).status().IsNotFound());

  auto tl = index_->Timelines();
  ASSERT_TRUE(tl.ok());
  ASSERT_EQ(tl->size(), 1u);
  EXPECT_EQ((*tl)[0].segments, 2u);
  EXPECT_EQ((*tl)[0].commits, 3u);
  EXPECT_EQ((*tl)[0].aborts, 1u);
  EXPECT_EQ((*tl)[0].first_commit_time, kT0 + 100);
  EXPECT_EQ((*tl)[0].last_commit_time, kT0 + 210);
  EXPECT_EQ((*tl)[0].missing_count, 0u);
  EXPECT_EQ((*tl)[0].first_segment, b.SegmentName(1));
  EXPECT_EQ((*tl)[0].last_segment, b.SegmentName(2));

  // Checkpoints and other events, in LSN order.
  std::vector<WalEventType> types;
  ASSERT_TRUE(index_
                  ->ForEachEvent(1, 0, UINT64_MAX,
                                 [&](const WalEvent& e) {
                                   types.push_back(e.type);
                                   return Status::OK();
                                 })
                  .ok());
  ASSERT_GE(types.size(), 3u);
  EXPECT_EQ(types[0], WalEventType::kCheckpointOnline);
}

TEST_P(WalIndexTest, IndexingTwiceChangesNothing) {
  WalBuilder b(1, 1);
  for (int i = 0; i < 50; ++i) b.Commit(200 + i, kT0 + i);
  b.RestorePoint("x", kT0 + 60);
  b.FillToSegmentEnd(200);
  XactParts big;
  big.invals = 1000;
  b.Commit(300, kT0 + 70, big);  // continues into segment 2
  b.Commit(301, kT0 + 80);
  IndexBuilt(b, 1);
  IndexBuilt(b, 2);
  auto before = Dump();
  IndexBuilt(b, 2);
  IndexBuilt(b, 1);
  EXPECT_EQ(Dump(), before);
  EXPECT_EQ(index_->FindXid(300)->size(), 1u);
}

TEST_P(WalIndexTest, RecordAcrossSegmentsInAnyOrder) {
  WalBuilder b(1, 4);
  b.Commit(1, kT0);
  b.FillToSegmentEnd(200);
  XactParts big;
  big.invals = 1000;
  uint64_t crossing = b.Commit(2, kT0 + 1, big);
  uint64_t after = b.Commit(3, kT0 + 2);
  ASSERT_GT(after, 5 * kSeg);

  // In order: the continuation stored with segment 4 finishes the record in segment 5.
  {
    IndexBuilt(b, 4);
    IndexBuilt(b, 5);
    auto x = index_->FindXid(2);
    ASSERT_EQ(x->size(), 1u);
    EXPECT_EQ((*x)[0].lsn, crossing);
    EXPECT_EQ(index_->GetSegment(b.SegmentName(5))->unverified_head, 0u);
    EXPECT_EQ(index_->GetSegment(b.SegmentName(5))->first_lsn, crossing);
    EXPECT_TRUE(index_->GetSegment(b.SegmentName(4))->continues);
  }
  Reset();
  // Out of order, without access to the archive: the record stays unverified, and says so.
  {
    IndexBuilt(b, 5);
    IndexBuilt(b, 4);
    EXPECT_TRUE(index_->FindXid(2)->empty());
    EXPECT_GT(index_->GetSegment(b.SegmentName(5))->unverified_head, 0u);
    EXPECT_EQ(index_->FindXid(3)->size(), 1u);
  }
  Reset();
  // Out of order, with the archive: indexing segment 4 re-reads segment 5.
  {
    EnableFetcher();
    IndexBuilt(b, 5);
    IndexBuilt(b, 4);
    ASSERT_EQ(index_->FindXid(2)->size(), 1u);
    EXPECT_EQ(index_->GetSegment(b.SegmentName(5))->unverified_head, 0u);
  }
  Reset();
  // A segment whose predecessor is archived but not indexed: the predecessor is indexed first.
  {
    EnableFetcher();
    files_[b.SegmentName(4)] = b.Segment(4);
    IndexBuilt(b, 5);
    ASSERT_EQ(index_->FindXid(2)->size(), 1u);
    EXPECT_TRUE(index_->GetSegment(b.SegmentName(4)).ok());
    EXPECT_EQ(index_->GetSegment(b.SegmentName(5))->unverified_head, 0u);
  }
}

TEST_P(WalIndexTest, UnparseableSegmentIsRecorded) {
  WalBuilder b(1, 1);
  b.Commit(1, kT0);
  b.Switch();
  b.Commit(2, kT0 + 10);
  uint64_t damaged = b.Commit(3, kT0 + 20);
  b.Commit(4, kT0 + 30);
  b.Switch();
  b.Commit(5, kT0 + 40);
  b.Switch();
  std::string seg2 = b.Segment(2);
  seg2[damaged - 2 * kSeg + 30] ^= 1;
  IndexBuilt(b, 1);
  WalSegmentRecord r = Index(b.SegmentName(2), seg2);
  EXPECT_FALSE(r.ok);
  EXPECT_NE(r.error.find(FormatLsn(damaged)), std::string::npos) << r.error;
  EXPECT_NE(r.error.find("CRC"), std::string::npos) << r.error;
  IndexBuilt(b, 3);
  EXPECT_EQ(index_->FindXid(2)->size(), 1u);  // read before the damage
  EXPECT_TRUE(index_->FindXid(3)->empty());
  EXPECT_TRUE(index_->FindXid(4)->empty());
  auto stored = index_->GetSegment(b.SegmentName(2));
  ASSERT_TRUE(stored.ok());
  EXPECT_FALSE(stored->ok);

  auto tl = index_->Timelines();
  ASSERT_EQ(tl->size(), 1u);
  ASSERT_EQ((*tl)[0].failed.size(), 1u);
  EXPECT_EQ((*tl)[0].failed[0], b.SegmentName(2));

  auto w = index_->RecoverableWindows({Snap("s1", 1, kSeg + 40, kSeg + 100)});
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  ASSERT_EQ(w->size(), 1u);
  EXPECT_TRUE((*w)[0].consistent);
  EXPECT_NE((*w)[0].gap.find("unparseable"), std::string::npos) << (*w)[0].gap;
  EXPECT_EQ((*w)[0].end_lsn, damaged - 8 + 2);  // the end of commit 2 (34 bytes, aligned 40)

  // A good copy of the same segment replaces the failed record.
  IndexBuilt(b, 2);
  EXPECT_TRUE(index_->GetSegment(b.SegmentName(2))->ok);
  EXPECT_EQ(index_->FindXid(4)->size(), 1u);
}

TEST_P(WalIndexTest, GapsAndRecoverableWindows) {
  WalBuilder b(1, 1);
  b.Checkpoint(true, kSeg + 40, 1, 1, 1700000000);
  uint64_t c1 = b.Commit(1, kT0 + 10);
  b.Commit(2, kT0 + 20);
  b.Switch();
  for (uint32_t s = 2; s <= 5; ++s) {
    b.Commit(s * 10, kT0 + s * 100);
    b.Switch();
  }
  IndexBuilt(b, 1);
  IndexBuilt(b, 2);
  IndexBuilt(b, 4);  // 3 is missing
  IndexBuilt(b, 5);

  auto tl = index_->Timelines();
  ASSERT_TRUE(tl.ok());
  ASSERT_EQ(tl->size(), 1u);
  EXPECT_EQ((*tl)[0].segments, 4u);
  EXPECT_EQ((*tl)[0].missing_count, 1u);
  ASSERT_EQ((*tl)[0].missing.size(), 1u);
  EXPECT_EQ((*tl)[0].missing[0], b.SegmentName(3));

  // Snapshot s1 is consistent at c1's end; WAL runs through segment 2, then 3 is missing.
  // Snapshot s2 starts after the gap.
  std::vector<SnapshotInfo> snaps = {Snap("s1", 1, kSeg + 40, c1 + 34),
                                     Snap("s2", 1, 4 * kSeg + 80, 4 * kSeg + 100),
                                     Snap("s3", 1, 3 * kSeg + 40, 3 * kSeg + 100)};
  auto w = index_->RecoverableWindows(snaps);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  ASSERT_EQ(w->size(), 3u);
  const RecoveryWindow& first = (*w)[0];
  EXPECT_EQ(first.snapshot, "s1");
  EXPECT_TRUE(first.consistent);
  EXPECT_EQ(first.start_lsn, c1 + 34);
  EXPECT_EQ(first.start_time, kT0 + 10);  // c1 is inside the snapshot's own WAL
  EXPECT_EQ(first.end_time, kT0 + 200);
  EXPECT_EQ(first.end_lsn, index_->GetSegment(b.SegmentName(2))->end_lsn);
  EXPECT_NE(first.gap.find(b.SegmentName(3) + " is missing"), std::string::npos) << first.gap;
  const RecoveryWindow& second = (*w)[1];
  EXPECT_EQ(second.snapshot, "s2");
  EXPECT_TRUE(second.consistent);
  EXPECT_EQ(second.end_time, kT0 + 500);
  EXPECT_EQ(second.gap, "");
  EXPECT_EQ(second.start_time, UnixSecondsToTimestampTz(1700000000));  // no commit in its WAL
  const RecoveryWindow& broken = (*w)[2];
  EXPECT_EQ(broken.snapshot, "s3");
  EXPECT_FALSE(broken.consistent);

  // Overlapping windows of two snapshots merge into one.
  w = index_->RecoverableWindows(
      {Snap("a", 1, kSeg + 40, c1 + 34), Snap("b", 1, 2 * kSeg + 40, 2 * kSeg + 100)});
  ASSERT_EQ(w->size(), 1u);
  EXPECT_EQ((*w)[0].snapshot, "a");
}

TEST_P(WalIndexTest, CommitTimesOutOfOrder) {
  // Commit timestamps are taken before the record is inserted, so WAL order and time order can
  // differ; recovery stops at the first record in WAL order whose time reaches the target.
  WalBuilder b(1, 1);
  uint64_t c1 = b.Commit(1, kT0 + 100);
  uint64_t c2 = b.Commit(2, kT0 + 300);
  b.Switch();
  uint64_t c3 = b.Commit(3, kT0 + 200);
  uint64_t c4 = b.Commit(4, kT0 + 400);
  b.Switch();
  IndexBuilt(b, 1);
  IndexBuilt(b, 2);
  auto m = index_->FindTime(1, kT0 + 250);
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->at_or_after->lsn, c2);
  EXPECT_EQ(m->before->lsn, c1);
  m = index_->FindTime(1, kT0 + 350);
  EXPECT_EQ(m->at_or_after->lsn, c4);
  EXPECT_EQ(m->before->lsn, c3);
  m = index_->FindTime(1, kT0 + 150, c2 + 1);
  EXPECT_EQ(m->at_or_after->lsn, c3);
  EXPECT_FALSE(m->before);
}

TEST_P(WalIndexTest, TimelinesAndHistory) {
  // Timeline 1 runs through segment 1 into segment 2, where timeline 2 branches off at `sp`.
  // Timeline 2's segment 2 repeats timeline 1's WAL up to there.
  WalBuilder b(1, 1);
  b.Checkpoint(true, kSeg + 40, 1, 1, 1700000000);
  uint64_t c1 = b.Commit(1, kT0 + 10);
  b.Commit(2, kT0 + 20);
  b.Switch();
  uint64_t c3 = b.Commit(3, kT0 + 30);
  b.set_tli(2);  // pages from the next one on are timeline 2's
  uint64_t sp = b.EndOfRecovery(kT0 + 40, 2, 1);
  uint64_t c4 = b.Commit(4, kT0 + 50);
  b.Switch();
  uint64_t c5 = b.Commit(5, kT0 + 60);
  b.Switch();
  Index(WalSegmentName::FromSegNo(1, 1, kSeg).ToString(), b.Segment(1));
  Index(WalSegmentName::FromSegNo(2, 2, kSeg).ToString(), b.Segment(2));
  Index(WalSegmentName::FromSegNo(2, 3, kSeg).ToString(), b.Segment(3));
  ASSERT_TRUE(index_
                  ->IndexHistory("00000002.history", "# comment\n1\t" + FormatLsn(sp) +
                                                         "\tno recovery target specified\n")
                  .ok());

  auto h = index_->History(2);
  ASSERT_TRUE(h.ok());
  ASSERT_EQ(h->parents.size(), 1u);
  EXPECT_EQ(h->parents[0].tli, 1u);
  EXPECT_EQ(h->parents[0].switch_lsn, sp);
  EXPECT_EQ(h->parents[0].reason, "no recovery target specified");
  auto path = index_->TimelinePath(2);
  ASSERT_EQ(path->size(), 2u);
  EXPECT_EQ((*path)[0].tli, 1u);
  EXPECT_EQ((*path)[0].end_lsn, sp);
  EXPECT_EQ((*path)[1].tli, 2u);
  EXPECT_EQ((*path)[1].begin_lsn, sp);

  // c3 was written on timeline 1 and is read from timeline 2's file.
  auto x = index_->FindXid(3);
  ASSERT_EQ(x->size(), 1u);
  EXPECT_EQ((*x)[0].tli, 2u);
  EXPECT_EQ((*x)[0].lsn, c3);
  auto eor = index_->ForEachEvent(2, sp, sp + 1, [&](const WalEvent& e) {
    EXPECT_EQ(e.type, WalEventType::kEndOfRecovery);
    EXPECT_EQ(e.this_tli, 2u);
    return Status::OK();
  });
  EXPECT_TRUE(eor.ok());

  // Timeline 2's time search follows its history into timeline 1's segment.
  auto m = index_->FindTime(2, kT0 + 15);
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->before->lsn, c1);
  EXPECT_EQ(m->at_or_after->tli, 1u);
  m = index_->FindTime(2, kT0 + 55);
  EXPECT_EQ(m->before->lsn, c4);
  EXPECT_EQ(m->at_or_after->lsn, c5);

  // A snapshot on timeline 1 can be recovered on timeline 1 (to the end of segment 1: timeline
  // 1's own segment 2 is not archived) and on timeline 2 (to the end of segment 3).
  auto w = index_->RecoverableWindows({Snap("s1", 1, kSeg + 40, c1 + 34)});
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  ASSERT_EQ(w->size(), 2u);
  EXPECT_EQ((*w)[0].timeline, 1u);
  EXPECT_EQ((*w)[0].end_lsn, index_->GetSegment("000000010000000000000001")->end_lsn);
  EXPECT_EQ((*w)[0].gap, "");
  EXPECT_EQ((*w)[1].timeline, 2u);
  EXPECT_EQ((*w)[1].end_lsn, index_->GetSegment("000000020000000000000003")->end_lsn);
  EXPECT_EQ((*w)[1].end_time, kT0 + 60);
  EXPECT_EQ((*w)[1].gap, "");

  // A snapshot taken on timeline 1 after the branch point is not on timeline 2's history.
  w = index_->RecoverableWindows({Snap("late", 1, sp + 100, sp + 200)});
  for (const auto& win : *w) EXPECT_NE(win.timeline, 2u);

  auto tls = index_->Timelines();
  ASSERT_EQ(tls->size(), 2u);
  EXPECT_EQ((*tls)[1].tli, 2u);
  EXPECT_EQ((*tls)[1].segments, 2u);
}

TEST(TimelineHistoryTest, Parse) {
  TimelineHistory h;
  ASSERT_TRUE(TimelineHistory::Parse(3,
                                     "1\t0/3000000\tno recovery target specified\n\n"
                                     "# a comment\n2\t0/5000A28\tbefore 2026-01-01 00:00:00+00\n",
                                     &h)
                  .ok());
  ASSERT_EQ(h.parents.size(), 2u);
  EXPECT_EQ(h.parents[1].tli, 2u);
  EXPECT_EQ(h.parents[1].switch_lsn, 0x5000A28u);
  EXPECT_EQ(h.parents[1].reason, "before 2026-01-01 00:00:00+00");
  std::string enc;
  h.EncodeTo(&enc);
  TimelineHistory back;
  Decoder d(enc);
  ASSERT_TRUE(TimelineHistory::DecodeFrom(&d, &back).ok());
  EXPECT_EQ(back.parents.size(), 2u);
  EXPECT_EQ(back.parents[0].reason, "no recovery target specified");

  Status s = TimelineHistory::Parse(3, "2\t0/1\tx\n1\t0/2\ty\n", &h);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("increasing"), std::string::npos);
  EXPECT_NE(s.message().find("line 2"), std::string::npos);
  EXPECT_FALSE(TimelineHistory::Parse(3, "1\tzz\tx\n", &h).ok());
  EXPECT_FALSE(TimelineHistory::Parse(3, "3\t0/1\tx\n", &h).ok());
  EXPECT_FALSE(TimelineHistory::Parse(3, "one\t0/1\n", &h).ok());
}

TEST_P(WalIndexTest, TolerantFilesAndBadNames) {
  WalBuilder b(1, 1);
  for (int i = 0; i < 1000; ++i) b.Commit(i + 10, kT0 + i);  // five pages
  std::string full = b.Segment(1);
  // A backup's copy of the segment being written: WAL stops somewhere in it.
  WalSegmentRecord t = Index(b.SegmentName(1), full.substr(0, 2 * 8192), true);
  EXPECT_TRUE(t.ok);
  EXPECT_EQ(t.end, WalEnd::kTruncated);
  EXPECT_FALSE(t.complete());
  // The archived segment is better, and replaces it; the partial copy does not come back.
  WalSegmentRecord a = Index(b.SegmentName(1), full);
  EXPECT_EQ(a.end, WalEnd::kZeros);
  EXPECT_GT(a.end_lsn, t.end_lsn);
  Index(b.SegmentName(1), full.substr(0, 2 * 8192), true);
  EXPECT_EQ(index_->GetSegment(b.SegmentName(1))->end_lsn, a.end_lsn);
  EXPECT_EQ(index_->FindXid(1009)->size(), 1u);

  EXPECT_FALSE(index_->IndexSegment("00000001000000000000000Z", BytesFrom(full)).ok());
  EXPECT_FALSE(index_->IndexSegment(b.SegmentName(1) + ".partial", BytesFrom(full)).ok());
  EXPECT_FALSE(index_->IndexHistory("00000001.history", "").ok());
  EXPECT_FALSE(index_->IndexHistory("0000000G.history", "").ok());

  // A source that fails is an error, not an unparseable segment.
  auto r = index_->IndexSegment(b.SegmentName(2),
                                [](const ByteSink&) { return Status::IOError("disk on fire"); });
  EXPECT_EQ(r.status().code(), Status::Code::kIOError);
  EXPECT_TRUE(index_->GetSegment(b.SegmentName(2)).status().IsNotFound());
}

TEST_P(WalIndexTest, ReadsStoredFilesAndJoinsACallersBatch) {
  WalBuilder b(1, 1);
  b.Commit(77, kT0);
  b.Switch();
  std::string seg = b.Segment(1);
  ChunkWriter writer(repo_->chunks());
  FileWriter fw(&writer, repo_->config().chunk_size);
  ASSERT_TRUE(fw.Append(seg).ok());
  auto data = fw.Finish();
  ASSERT_TRUE(data.ok());
  ASSERT_TRUE(writer.Flush(false).ok());
  TreeReader reader(repo_->chunks(), *data, repo_->config().chunk_size);

  KvBatch batch;
  auto r = index_->PrepareSegment(b.SegmentName(1), BytesFrom(&reader, data->size), &batch);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_TRUE(r->ok);
  EXPECT_FALSE(batch.empty());
  EXPECT_TRUE(index_->FindXid(77)->empty());  // nothing written yet
  ASSERT_TRUE(repo_->kv()->Write(batch, true).ok());
  EXPECT_EQ(index_->FindXid(77)->size(), 1u);
}

// What the archive does: the segment parsed as it streams in, in uneven pieces, then prepared at
// commit. `between` runs after the last byte and before the prepare. Sets *reread if the parse
// had to read the file again.
Result<WalSegmentRecord> PrepareStreamed(WalIndex* index, const std::string& name,
                                         const std::string& bytes, KvBatch* batch, bool* reread,
                                         const std::function<void()>& between = nullptr) {
  ASSIGN_OR_RETURN(std::unique_ptr<WalSegmentParse> parse, index->StartSegment(name));
  size_t piece = 1;
  for (size_t off = 0; off < bytes.size(); off += piece, piece = piece * 3 + 7) {
    parse->Feed(std::string_view(bytes).substr(off, piece));
  }
  if (between) between();
  *reread = false;
  return index->PrepareParsedSegment(
      parse.get(),
      [&](const ByteSink& sink) {
        *reread = true;
        return sink(bytes);
      },
      batch);
}

std::map<std::string, std::string> BatchMap(const KvBatch& batch) {
  std::map<std::string, std::string> out;
  for (const KvBatch::Op& op : batch.ops()) out[op.key] = op.value;
  return out;
}

std::string Encoded(const WalSegmentRecord& r) {
  std::string out;
  r.EncodeTo(&out);
  return out;
}

TEST_P(WalIndexTest, StreamedParseEqualsWholeParse) {
  WalBuilder b(1, 4);
  for (int i = 0; i < 40; ++i) b.Commit(10 + i, kT0 + i);
  b.RestorePoint("before", kT0 + 50);
  b.FillToSegmentEnd(200);
  XactParts big;
  big.invals = 1000;
  b.Commit(2, kT0 + 60, big);  // crosses from segment 4 into 5
  for (int i = 0; i < 40; ++i) b.Commit(100 + i, kT0 + 70 + i);
  b.Switch();
  std::string damaged = b.Segment(5);
  damaged[20000] ^= 1;

  // `setup` prepares the index; then segment `name` is prepared both ways, in fresh repositories.
  auto compare = [&](const std::string& what, const std::string& name, const std::string& bytes,
                     const std::function<void()>& setup, bool expect_reread) {
    SCOPED_TRACE(what);
    Reset();
    setup();
    KvBatch whole;
    auto a = index_->PrepareSegment(name, BytesFrom(bytes), &whole);
    ASSERT_TRUE(a.ok()) << a.status().ToString();
    auto expected_dump = Dump();
    Reset();
    setup();
    KvBatch streamed;
    bool reread = false;
    auto s = PrepareStreamed(index_.get(), name, bytes, &streamed, &reread);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    EXPECT_EQ(reread, expect_reread);
    EXPECT_EQ(Encoded(*s), Encoded(*a));
    EXPECT_EQ(BatchMap(streamed), BatchMap(whole));
    EXPECT_EQ(Dump(), expected_dump);  // the same side effects (none, or the predecessor indexed)
  };
  auto nothing = [] {};
  auto index4 = [&] { IndexBuilt(b, 4); };
  compare("first segment", b.SegmentName(4), b.Segment(4), nothing, false);
  compare("predecessor indexed", b.SegmentName(5), b.Segment(5), index4, false);
  compare("predecessor unknown", b.SegmentName(5), b.Segment(5), nothing, false);
  compare("unparseable", b.SegmentName(5), damaged, index4, false);
  compare(
      "predecessor archived, not indexed", b.SegmentName(5), b.Segment(5),
      [&] {
        EnableFetcher();
        files_[b.SegmentName(4)] = b.Segment(4);
      },
      true);
  // The predecessor is indexed while the segment streams in (after its first page was parsed):
  // the streamed parse skipped the record's head unverified, so it is parsed again.
  Reset();
  index4();
  KvBatch expected;
  auto a = index_->PrepareSegment(b.SegmentName(5), BytesFrom(b.Segment(5)), &expected);
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  Reset();
  KvBatch batch;
  bool reread = false;
  auto r = PrepareStreamed(index_.get(), b.SegmentName(5), b.Segment(5), &batch, &reread, index4);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_TRUE(reread);
  EXPECT_EQ(r->unverified_head, 0u);
  EXPECT_EQ(Encoded(*r), Encoded(*a));
  EXPECT_EQ(BatchMap(batch), BatchMap(expected));
  ASSERT_TRUE(repo_->kv()->Write(batch, true).ok());
  EXPECT_EQ(index_->FindXid(2)->size(), 1u);
  EXPECT_EQ(index_->FindXid(139)->size(), 1u);

  // Names that are not indexed are refused at the start, as by PrepareSegment.
  EXPECT_FALSE(index_->StartSegment(b.SegmentName(5) + ".partial").ok());
  EXPECT_FALSE(index_->StartSegment("00000001000000000000000Z").ok());
}

INSTANTIATE_TEST_SUITE_P(Stores, WalIndexTest, ::testing::Bool(), StoreName);

}  // namespace
}  // namespace pgbackfs
