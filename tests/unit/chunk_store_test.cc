#include "repo/chunk_store.h"

#include <algorithm>
#include <cstdio>
#include <map>
#include <thread>

#include "repo/chunk_tree.h"
#include "repo/coding.h"
#include "tests/unit/test_util.h"

namespace pgbackfs {
namespace {

class ChunkStoreTest : public RepoTest {};

// Something like a heap page: a header, then rows (a tuple header, an increasing key, a varying
// number, and a text drawn from a few hundred values that recur across pages, not within one).
std::string PageLike(uint32_t seed) {
  static const std::vector<std::string> kTexts = [] {
    std::mt19937 rng(42);
    std::vector<std::string> texts;
    for (int i = 0; i < 400; ++i) {
      std::string t;
      while (t.size() < 48) t += std::to_string(rng() % 1000) + " " + "abcdefghij"[rng() % 10];
      texts.push_back("product '" + t + "'");
    }
    return texts;
  }();
  std::mt19937 rng(seed);
  std::string page(24, '\0');
  page[0] = static_cast<char>(seed);
  page[8] = 0x10;
  page[9] = static_cast<char>(0xd1);
  for (uint32_t r = 0; page.size() < 8192 - 100; ++r) {
    const char header[] = {static_cast<char>(rng()), 0, 2, 0, 0x18, 0, 0, 0};
    page.append(header, sizeof(header));
    page += std::to_string(seed * 60 + r) + "|" + std::to_string(rng() % 10000) + "|" +
            kTexts[rng() % kTexts.size()] + "|";
  }
  page.resize(8192, '\0');
  return page;
}

// Small enough to train in a test: a dictionary is due after 1 MiB of new chunks.
DictionaryOptions SmallDictionaries(std::vector<uint64_t> train_after = {1 << 20}) {
  DictionaryOptions o;
  o.dictionary_bytes = 16 << 10;
  o.sample_chunks = 256;
  o.train_after = std::move(train_after);
  return o;
}

std::vector<uint32_t> StoredDictionaries(KvStore* kv) {
  std::vector<uint32_t> ids;
  auto it = kv->NewIterator(Cf::kMeta);
  const std::string prefix = "zstd_dict/";
  for (it->Seek(prefix); it->Valid() && it->key().substr(0, prefix.size()) == prefix; it->Next()) {
    std::string_view k = it->key().substr(prefix.size());
    uint32_t id = 0;
    for (char c : k) id = (id << 8) | static_cast<uint8_t>(c);
    ids.push_back(id);
  }
  return ids;
}

uint8_t StoredCodec(ChunkStore* store, const ChunkId& id) {
  std::string value;
  EXPECT_TRUE(store->GetStored(id, &value).ok());
  return value.empty() ? 0xff : static_cast<uint8_t>(value[0]);
}

// Adds pages seed_begin..seed_end-1, one AddMany per 16 pages, as a backup would.
std::vector<ChunkId> AddPages(ChunkWriter* writer, uint32_t seed_begin, uint32_t seed_end) {
  std::vector<ChunkId> all;
  for (uint32_t s = seed_begin; s < seed_end; s += 16) {
    std::vector<std::string> pages;
    for (uint32_t i = s; i < std::min(s + 16, seed_end); ++i) pages.push_back(PageLike(i));
    std::vector<std::string_view> views(pages.begin(), pages.end());
    std::vector<ChunkId> ids;
    Status st = writer->AddMany(views, &ids);
    EXPECT_TRUE(st.ok()) << st.ToString();
    all.insert(all.end(), ids.begin(), ids.end());
  }
  return all;
}

// ChunkStore::ReadMany of 8 KiB chunks: the bytes read and each chunk's outcome.
std::vector<Status> ReadManyPages(ChunkStore* store, const std::vector<ChunkId>& ids,
                                  std::vector<std::string>* out,
                                  ChunkStore::ReadManyStats* stats = nullptr) {
  out->assign(ids.size(), std::string(8192, 'x'));
  std::vector<ChunkStore::ChunkRead> reads;
  for (size_t i = 0; i < ids.size(); ++i) reads.push_back({ids[i], 8192, (*out)[i].data()});
  std::vector<Status> errors;
  store->ReadMany(reads, &errors, stats);
  EXPECT_EQ(errors.size(), ids.size());
  return errors;
}

void ExpectPagesReadBack(ChunkStore* store, const std::vector<ChunkId>& ids, uint32_t seed_begin) {
  std::string out;
  for (size_t i = 0; i < ids.size(); ++i) {
    Status s = store->Get(ids[i], 8192, &out);
    ASSERT_TRUE(s.ok()) << s.ToString();
    ASSERT_EQ(out, PageLike(seed_begin + static_cast<uint32_t>(i)));
  }
}

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

TEST_P(ChunkStoreTest, ChunksBeforeAndAfterDictionariesReadBack) {
  ChunkStore* store = repo_->chunks();
  store->SetDictionaryOptions(SmallDictionaries({1 << 20, 2 << 20}));
  ChunkWriter writer(store);
  // 64 pages = 512 KiB: no dictionary yet.
  std::vector<ChunkId> ids = AddPages(&writer, 0, 64);
  EXPECT_EQ(store->current_dictionary_id(), 0u);
  // Past 1 MiB the first dictionary is trained, past 2 MiB the second.
  std::vector<ChunkId> more = AddPages(&writer, 64, 400);
  ids.insert(ids.end(), more.begin(), more.end());
  EXPECT_EQ(store->current_dictionary_id(), 2u);
  EXPECT_EQ(StoredDictionaries(repo_->kv()), (std::vector<uint32_t>{1, 2}));
  ASSERT_TRUE(writer.Flush(false).ok());
  EXPECT_EQ(StoredCodec(repo_->chunks(), ids.front()), 1);  // zstd without a dictionary
  EXPECT_EQ(StoredCodec(repo_->chunks(), ids.back()), 2);   // zstd with a dictionary
  ExpectPagesReadBack(store, ids, 0);
  // A store that has not loaded the dictionaries yet reads them on demand.
  ChunkStore fresh(repo_->kv(), 3, 0);
  ExpectPagesReadBack(&fresh, ids, 0);
}

TEST_P(ChunkStoreTest, DictionaryShrinksPageLikeChunks) {
  ChunkStore* store = repo_->chunks();
  store->SetDictionaryOptions(SmallDictionaries());
  size_t without = 0;
  for (uint32_t i = 10000; i < 10100; ++i) without += store->Encode(PageLike(i)).size();
  ChunkWriter writer(store);
  AddPages(&writer, 0, 160);
  ASSERT_EQ(store->current_dictionary_id(), 1u);
  size_t with = 0;
  for (uint32_t i = 10000; i < 10100; ++i) with += store->Encode(PageLike(i)).size();
  EXPECT_LT(with, without * 3 / 4) << "with " << with << ", without " << without;
  // Incompressible chunks stay raw.
  EXPECT_EQ(store->Encode(RandomBytes(8192, 9))[0], 0);
}

TEST_P(ChunkStoreTest, DictionaryIsTrainedOnceAcrossWriters) {
  ChunkStore* store = repo_->chunks();
  store->SetDictionaryOptions(SmallDictionaries());
  // Two writers at once, each past the point where a dictionary is due.
  std::vector<ChunkId> a, b;
  ChunkWriter wa(store), wb(store);
  std::thread ta([&] { a = AddPages(&wa, 0, 200); });
  std::thread tb([&] { b = AddPages(&wb, 1000, 1200); });
  ta.join();
  tb.join();
  EXPECT_EQ(store->current_dictionary_id(), 1u);
  EXPECT_EQ(StoredDictionaries(repo_->kv()), (std::vector<uint32_t>{1}));
  // And interleaved, after it: still one.
  ChunkWriter wc(store), wd(store);
  AddPages(&wc, 2000, 2100);
  AddPages(&wd, 3000, 3100);
  EXPECT_EQ(StoredDictionaries(repo_->kv()), (std::vector<uint32_t>{1}));
  ASSERT_TRUE(wa.Flush(false).ok());
  ASSERT_TRUE(wb.Flush(false).ok());
  ExpectPagesReadBack(store, a, 0);
  ExpectPagesReadBack(store, b, 1000);
}

TEST_P(ChunkStoreTest, DictionaryChunksSurviveReopen) {
  if (GetParam()) GTEST_SKIP() << "the memory store does not persist";
  repo_->chunks()->SetDictionaryOptions(SmallDictionaries());
  std::vector<ChunkId> ids;
  {
    ChunkWriter writer(repo_->chunks());
    ids = AddPages(&writer, 0, 200);
    ASSERT_TRUE(writer.Flush(true).ok());
  }
  ASSERT_EQ(StoredCodec(repo_->chunks(), ids.back()), 2);
  Reopen();
  ExpectPagesReadBack(repo_->chunks(), ids, 0);
  // New chunks go on using the stored dictionary; none is trained again (the default schedule
  // wants 64 MiB more for the next one).
  ChunkWriter writer(repo_->chunks());
  std::vector<ChunkId> more = AddPages(&writer, 500, 600);
  ASSERT_TRUE(writer.Flush(true).ok());
  EXPECT_EQ(repo_->chunks()->current_dictionary_id(), 1u);
  EXPECT_EQ(StoredCodec(repo_->chunks(), more.back()), 2);
  EXPECT_EQ(StoredDictionaries(repo_->kv()), (std::vector<uint32_t>{1}));
  ExpectPagesReadBack(repo_->chunks(), more, 500);
}

TEST_P(ChunkStoreTest, MissingOrDamagedDictionaryIsCorruption) {
  ChunkStore* store = repo_->chunks();
  store->SetDictionaryOptions(SmallDictionaries());
  ChunkWriter writer(store);
  std::vector<ChunkId> ids = AddPages(&writer, 0, 200);
  ASSERT_TRUE(writer.Flush(false).ok());
  const ChunkId& id = ids.back();
  ASSERT_EQ(StoredCodec(repo_->chunks(), id), 2);
  std::string key = "zstd_dict/";
  key.append("\0\0\0\1", 4);
  std::string dictionary;
  ASSERT_TRUE(repo_->kv()->Get(Cf::kMeta, key, &dictionary).ok());

  // Damaged: other bytes of the same length. Decoding gives other bytes, or fails.
  KvBatch batch;
  batch.Put(Cf::kMeta, key, RandomBytes(dictionary.size(), 7));
  ASSERT_TRUE(repo_->kv()->Write(batch, false).ok());
  std::string out;
  {
    ChunkStore fresh(repo_->kv(), 3, 0);
    Status s = fresh.Get(id, 8192, &out);
    EXPECT_TRUE(s.IsCorruption()) << s.ToString();
  }

  // Missing.
  batch.Clear();
  batch.Delete(Cf::kMeta, key);
  ASSERT_TRUE(repo_->kv()->Write(batch, false).ok());
  ChunkStore fresh(repo_->kv(), 3, 0);
  Status s = fresh.Get(id, 8192, &out);
  EXPECT_TRUE(s.IsCorruption()) << s.ToString();
  EXPECT_NE(s.message().find(id.Hex()), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("dictionary 1"), std::string::npos) << s.message();
  // A writer refuses to go on with a current dictionary it cannot load.
  ChunkWriter w(&fresh);
  s = w.Add(PageLike(5000)).status();
  EXPECT_TRUE(s.IsCorruption()) << s.ToString();
}

TEST_P(ChunkStoreTest, NoDictionaryWithoutCompressionOrInFormat1) {
  for (auto [level, train] : {std::pair{0, true}, std::pair{3, false}}) {
    ChunkStore store(repo_->kv(), level, 0, train);
    store.SetDictionaryOptions(SmallDictionaries());
    ChunkWriter writer(&store);
    std::vector<ChunkId> ids = AddPages(&writer, level * 1000, level * 1000 + 200);
    ASSERT_TRUE(writer.Flush(false).ok());
    EXPECT_EQ(store.current_dictionary_id(), 0u);
    EXPECT_TRUE(StoredDictionaries(repo_->kv()).empty());
    EXPECT_EQ(StoredCodec(repo_->chunks(), ids.back()), level == 0 ? 0 : 1);
  }
}

TEST_P(ChunkStoreTest, FailedTrainingIsRetriedLater) {
  ChunkStore* store = repo_->chunks();
  // Due after 2 chunks: too few samples to train on.
  DictionaryOptions o = SmallDictionaries({16 << 10});
  store->SetDictionaryOptions(o);
  ChunkWriter writer(store);
  AddPages(&writer, 0, 2);
  EXPECT_EQ(store->current_dictionary_id(), 0u);
  // Retried with twice as much seen, and so on, until there is enough.
  AddPages(&writer, 2, 300);
  EXPECT_EQ(store->current_dictionary_id(), 1u);
  EXPECT_EQ(StoredDictionaries(repo_->kv()), (std::vector<uint32_t>{1}));
}

// Format 4: a writer's new chunks are stored at consecutive locations in the order they came,
// and `chunks` holds only where.
TEST_P(ChunkStoreTest, NewChunksAreLocatedInWriteOrder) {
  ChunkStore* store = repo_->chunks();
  ASSERT_TRUE(store->located());
  ChunkWriter writer(store);
  std::vector<ChunkId> ids = AddPages(&writer, 0, 64);
  ASSERT_TRUE(writer.Flush(false).ok());
  std::vector<ChunkId> in_location_order;
  auto it = repo_->kv()->NewIterator(Cf::kChunkData);
  for (it->Seek(""); it->Valid(); it->Next()) {
    ASSERT_EQ(it->key().size(), 8u);
    in_location_order.push_back(ChunkId::FromKey(it->value().substr(0, 16)));
  }
  EXPECT_TRUE(in_location_order == ids);
  auto c = repo_->kv()->NewIterator(Cf::kChunks);
  for (c->Seek(""); c->Valid(); c->Next()) EXPECT_EQ(c->value().size(), 13u);
  for (size_t i = 0; i < ids.size(); ++i) {
    std::string out;
    ASSERT_TRUE(store->Get(ids[i], 8192, &out).ok());
    EXPECT_EQ(out, PageLike(static_cast<uint32_t>(i)));
  }
}

// New locations follow the last stored one, also after a reopen: nothing is written over.
TEST_P(ChunkStoreTest, LocationsGoOnAfterReopen) {
  if (GetParam()) GTEST_SKIP() << "the memory store does not persist";
  std::vector<ChunkId> ids;
  for (uint32_t round = 0; round < 3; ++round) {
    {
      ChunkWriter writer(repo_->chunks());  // gone before the store it writes to
      std::vector<ChunkId> more = AddPages(&writer, round * 16, round * 16 + 16);
      ids.insert(ids.end(), more.begin(), more.end());
      ASSERT_TRUE(writer.Flush(true).ok());
    }
    Reopen();
  }
  uint64_t entries = 0;
  auto it = repo_->kv()->NewIterator(Cf::kChunkData);
  for (it->Seek(""); it->Valid(); it->Next()) entries++;
  EXPECT_EQ(entries, ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    std::string out;
    Status s = repo_->chunks()->Get(ids[i], 8192, &out);
    ASSERT_TRUE(s.ok()) << i << ": " << s.ToString();
    EXPECT_EQ(out, PageLike(static_cast<uint32_t>(i)));
  }
}

// A located chunk whose data is gone, or whose location holds another chunk's, or whose
// location entry is damaged, is Corruption (not NotFound: `chunks` says it is stored), and the
// full scan reports each; the other chunks read as before.
TEST_P(ChunkStoreTest, ALocatedChunkMissingOrMisplacedIsCorruption) {
  ChunkStore* store = repo_->chunks();
  ChunkWriter writer(store);
  std::vector<ChunkId> ids = AddPages(&writer, 0, 5);
  ASSERT_TRUE(writer.Flush(false).ok());
  std::vector<std::string> keys, values;
  auto it = repo_->kv()->NewIterator(Cf::kChunkData);
  for (it->Seek(""); it->Valid(); it->Next()) {
    keys.emplace_back(it->key());
    values.emplace_back(it->value());
  }
  ASSERT_EQ(keys.size(), 5u);
  KvBatch batch;
  batch.Put(Cf::kChunkData, keys[0], values[1]);  // chunk 0's location holds chunk 1
  batch.Delete(Cf::kChunkData, keys[2]);          // chunk 2's data is gone
  batch.Put(Cf::kChunks, ids[3].AsKey(), std::string("\x80\x01", 2));  // damaged entry
  ASSERT_TRUE(repo_->kv()->Write(batch, false).ok());
  for (size_t i = 0; i < ids.size(); ++i) {
    std::string out;
    Status s = store->Get(ids[i], 8192, &out);
    if (i == 0 || i == 2 || i == 3) {
      EXPECT_TRUE(s.IsCorruption()) << i << ": " << s.ToString();
    } else {
      EXPECT_TRUE(s.ok()) << i << ": " << s.ToString();
    }
  }
  // The same through ReadMany, which follows chunk_data from one chunk to the next: chunk 0's
  // location names it no longer, chunk 1 is found right after it, chunk 2 is nowhere.
  std::vector<std::string> pages;
  std::vector<Status> many = ReadManyPages(store, ids, &pages);
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i == 0 || i == 2 || i == 3) {
      EXPECT_TRUE(many[i].IsCorruption()) << i << ": " << many[i].ToString();
    } else {
      EXPECT_TRUE(many[i].ok()) << i << ": " << many[i].ToString();
      EXPECT_EQ(pages[i], PageLike(static_cast<uint32_t>(i))) << i;
    }
  }
  std::map<std::string, std::string> problems;
  std::vector<std::string> sound;
  uint64_t orphans = 0;
  ASSERT_TRUE(store
                  ->ForEachStored(
                      [&](const ChunkId& id, std::string_view stored, const Status& problem) {
                        if (problem.ok()) {
                          std::string out;
                          EXPECT_TRUE(store->DecodeAndVerify(id, stored, &out).ok());
                          sound.push_back(id.Hex());
                        } else {
                          problems[id.Hex()] = problem.message();
                        }
                      },
                      &orphans)
                  .ok());
  EXPECT_EQ(orphans, 2u);  // chunk 1's copy at chunk 0's location; chunk 3's data, unnamed
  std::sort(sound.begin(), sound.end());
  std::vector<std::string> want_sound = {ids[1].Hex(), ids[4].Hex()};
  std::sort(want_sound.begin(), want_sound.end());
  EXPECT_EQ(sound, want_sound);
  ASSERT_EQ(problems.size(), 3u);
  EXPECT_NE(problems[ids[0].Hex()].find("holds something else"), std::string::npos);
  EXPECT_NE(problems[ids[2].Hex()].find("is missing"), std::string::npos);
  EXPECT_NE(problems[ids[3].Hex()].find("damaged location entry"), std::string::npos);
}

// A format-3 store keeps chunks inline; a format-4 store on the same data reads them, stores
// its own located, and the scan sees both.
TEST_P(ChunkStoreTest, InlineAndLocatedChunksLiveSideBySide) {
  ChunkStore inline_store(repo_->kv(), 3, 0, true, /*located=*/false);
  std::vector<ChunkId> ids;
  {
    ChunkWriter writer(&inline_store);
    ids = AddPages(&writer, 0, 16);
    ASSERT_TRUE(writer.Flush(false).ok());
  }
  {
    ChunkWriter writer(repo_->chunks());
    std::vector<ChunkId> more = AddPages(&writer, 0, 32);  // half of them stored already
    ASSERT_TRUE(writer.Flush(false).ok());
    EXPECT_EQ(writer.stats().new_chunks, 16u);
    EXPECT_TRUE(std::vector<ChunkId>(more.begin(), more.begin() + 16) == ids);
    ids = more;
  }
  uint64_t data_entries = 0;
  auto it = repo_->kv()->NewIterator(Cf::kChunkData);
  for (it->Seek(""); it->Valid(); it->Next()) data_entries++;
  EXPECT_EQ(data_entries, 16u);
  for (size_t i = 0; i < ids.size(); ++i) {
    std::string out;
    ASSERT_TRUE(repo_->chunks()->Get(ids[i], 8192, &out).ok()) << i;
    EXPECT_EQ(out, PageLike(static_cast<uint32_t>(i)));
  }
  uint64_t seen = 0, orphans = 0;
  ASSERT_TRUE(repo_->chunks()
                  ->ForEachStored(
                      [&](const ChunkId&, std::string_view, const Status& problem) {
                        EXPECT_TRUE(problem.ok()) << problem.ToString();
                        seen++;
                      },
                      &orphans)
                  .ok());
  EXPECT_EQ(seen, 32u);
  EXPECT_EQ(orphans, 0u);
}

// ReadMany reads a run of neighbours without a lookup each, and anything else (a zero chunk, a
// chunk read twice, one from elsewhere, scattered ones, an inline one) where `chunks` says.
TEST_P(ChunkStoreTest, ReadManyReadsNeighboursAndScatteredChunksAlike) {
  ChunkStore inline_store(repo_->kv(), 3, 0, true, /*located=*/false);
  std::vector<ChunkId> ids;
  {
    ChunkWriter writer(&inline_store);
    ids = AddPages(&writer, 0, 8);  // pages 0-7 inline
    ASSERT_TRUE(writer.Flush(false).ok());
  }
  {
    ChunkWriter writer(repo_->chunks());
    std::vector<ChunkId> more = AddPages(&writer, 8, 200);
    ASSERT_TRUE(writer.Flush(false).ok());
    ids.insert(ids.end(), more.begin(), more.end());
  }
  ChunkStore::ReadManyStats stats;
  {
    // A store of inline chunks (format < 4) has no neighbours to follow: all in parallel.
    std::vector<std::string> out;
    std::vector<ChunkId> first(ids.begin(), ids.begin() + 8);
    std::vector<Status> errors = ReadManyPages(&inline_store, first, &out, &stats);
    for (size_t i = 0; i < first.size(); ++i) {
      ASSERT_TRUE(errors[i].ok()) << errors[i].ToString();
      EXPECT_EQ(out[i], PageLike(static_cast<uint32_t>(i)));
    }
    EXPECT_EQ(stats.scattered, 8u);
  }
  auto check = [&](const std::vector<uint32_t>& pages) {
    stats = {};
    std::vector<ChunkId> want;
    for (uint32_t p : pages) want.push_back(p == UINT32_MAX ? ChunkId() : ids[p]);
    std::vector<std::string> out;
    std::vector<Status> errors = ReadManyPages(repo_->chunks(), want, &out, &stats);
    for (size_t i = 0; i < pages.size(); ++i) {
      ASSERT_TRUE(errors[i].ok()) << i << ": " << errors[i].ToString();
      EXPECT_EQ(out[i], pages[i] == UINT32_MAX ? std::string(8192, '\0') : PageLike(pages[i]))
          << "read " << i << " (page " << pages[i] << ")";
    }
  };
  std::vector<uint32_t> run;
  for (uint32_t p = 20; p < 84; ++p) run.push_back(p);
  check(run);
  EXPECT_EQ(stats.looked_up, 1u);  // the first one; the rest followed
  EXPECT_EQ(stats.followed, run.size() - 1);
  // Gaps of a few chunks (a clone's overridden pages) are stepped over without a lookup.
  std::vector<uint32_t> gaps;
  for (uint32_t p = 100; p < 190; ++p) {
    if (p % 5 != 0 && p % 7 != 0) gaps.push_back(p);
  }
  check(gaps);
  EXPECT_EQ(stats.looked_up, 1u);
  // Zeros, a page twice, a jump back, inline pages, a jump forward, and the run going on.
  check({10, 11, UINT32_MAX, 12, 12, 13, 3, 4, 14, 15, 150, 151, 16, 17, 199, UINT32_MAX});
  EXPECT_EQ(stats.scattered, 0u);
  // Scattered: more lookups than one pass makes; the rest are read in parallel.
  std::vector<uint32_t> scattered;
  for (uint32_t p = 0; p < 200; p += 7) scattered.push_back((p * 37) % 200);
  check(scattered);
  EXPECT_GT(stats.scattered, 0u);
  // A chunk that is not stored fails alone.
  std::vector<ChunkId> with_missing = {ids[30], ComputeChunkId(std::string(8192, 'q')), ids[31]};
  std::vector<std::string> out;
  std::vector<Status> errors = ReadManyPages(repo_->chunks(), with_missing, &out);
  EXPECT_TRUE(errors[0].ok());
  EXPECT_TRUE(errors[1].IsNotFound()) << errors[1].ToString();
  EXPECT_TRUE(errors[2].ok()) << errors[2].ToString();
  EXPECT_EQ(out[2], PageLike(31));
}

// A chunk whose located bytes are damaged (its id intact) fails when read as the neighbour of
// the one before it, as when it is read alone; its neighbours read fine.
TEST_P(ChunkStoreTest, ReadManyReportsADamagedNeighbour) {
  ChunkWriter writer(repo_->chunks());
  std::vector<ChunkId> ids = AddPages(&writer, 0, 16);
  ASSERT_TRUE(writer.Flush(false).ok());
  std::string stored;
  ASSERT_TRUE(repo_->chunks()->GetStored(ids[7], &stored).ok());
  for (size_t i = 1; i < stored.size(); i += 3) stored[i] = static_cast<char>(stored[i] ^ 0x5a);
  ASSERT_TRUE(repo_->chunks()->ReplaceStored(ids[7], stored).ok());
  std::vector<std::string> out;
  std::vector<Status> errors = ReadManyPages(repo_->chunks(), ids, &out);
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i == 7) {
      EXPECT_TRUE(errors[i].IsCorruption()) << errors[i].ToString();
    } else {
      ASSERT_TRUE(errors[i].ok()) << i << ": " << errors[i].ToString();
      EXPECT_EQ(out[i], PageLike(static_cast<uint32_t>(i)));
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Stores, ChunkStoreTest, ::testing::Bool(), StoreName);

}  // namespace
}  // namespace pgbackfs
