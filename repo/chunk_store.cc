#include "repo/chunk_store.h"

#define XXH_INLINE_ALL
#include <spdlog/spdlog.h>
#include <xxhash.h>
#include <zstd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <list>
#include <optional>
#include <thread>
#include <tuple>
#include <unordered_map>
#include <utility>

#include "repo/coding.h"
#include "repo/zstd_dict.h"

namespace pgbackfs {

namespace {
constexpr uint8_t kCodecRaw = 0;
constexpr uint8_t kCodecZstd = 1;
constexpr uint8_t kCodecZstdDict = 2;  // u32 LE dictionary id, then the frame
constexpr int kCacheShards = 16;
constexpr size_t kMaxCachedDictionaries = 8;
constexpr size_t kMaxChunkBytes = 64u << 20;  // a frame claiming more is corrupt
// Larger chunks (archived WAL's) are compressed without a dictionary, and are not sampled for
// one: a frame that size has history enough of its own (WAL in 1 MiB frames: a dictionary made
// it 2% smaller and 25% slower to compress).
constexpr size_t kMaxDictionaryChunk = 64u << 10;

// A `chunks` value that names a location in `chunk_data` (format >= 4) instead of holding the
// encoded chunk: the tag, the location (u64 big-endian, the `chunk_data` key), and the size of
// the encoded chunk there (u32). Encoded chunks start with a codec byte (0-2), never the tag.
constexpr uint8_t kLocatedTag = 0x80;
constexpr size_t kLocatedValueBytes = 1 + 8 + 4;
constexpr size_t kIdBytes = 16;

std::string LocationKey(uint64_t location) {
  std::string key;
  PutBigEndian64(&key, location);
  return key;
}

std::string LocatedValue(uint64_t location, size_t stored_bytes) {
  std::string value(1, static_cast<char>(kLocatedTag));
  PutBigEndian64(&value, location);
  PutFixed32(&value, static_cast<uint32_t>(stored_bytes));
  return value;
}

bool IsLocated(std::string_view value) {
  return !value.empty() && static_cast<uint8_t>(value[0]) == kLocatedTag;
}

struct Located {
  uint64_t location;
  uint32_t bytes;  // of the encoded chunk
};

// The location entry `value` holds; nullopt when it holds none, or a damaged one (IsLocated
// tells which).
std::optional<Located> ParseLocated(std::string_view value) {
  if (!IsLocated(value) || value.size() != kLocatedValueBytes) return std::nullopt;
  Located l{GetBigEndian(value.substr(1), 8), 0};
  Decoder d(value.substr(9));
  if (!d.GetFixed32(&l.bytes)) return std::nullopt;
  return l;
}

// True if `value` (a `chunks` value) names `location_key`.
bool NamesLocation(std::string_view value, std::string_view location_key) {
  std::optional<Located> l = ParseLocated(value);
  return l && LocationKey(l->location) == location_key;
}

Status DamagedLocation(const ChunkId& id) {
  return Status::Corruption("chunk " + id.Hex() + " has a damaged location entry");
}

// Moves `it` (a `chunk_data` iterator, may be null) to the entry of chunk `id` if that is at
// most `max_steps` entries on; false if it is not (`it` may have moved).
bool FindAhead(KvIterator* it, const ChunkId& id, uint64_t max_steps) {
  if (!it) return false;
  for (uint64_t steps = 0; it->Valid(); it->Next()) {
    std::string_view value = it->value();
    if (value.size() > kIdBytes && value.substr(0, kIdBytes) == id.AsKey()) return true;
    if (steps++ == max_steps) break;
  }
  return false;
}

std::string WhereLocated(const ChunkId& id, const Located& l) {
  return "chunk " + id.Hex() + " at location " + std::to_string(l.location);
}

// OK if `data`, the `chunk_data` value at l's location, is chunk `id`'s (its id and l's size).
Status CheckLocatedData(const ChunkId& id, const Located& l, std::string_view data) {
  if (data.size() != kIdBytes + l.bytes || data.substr(0, kIdBytes) != id.AsKey()) {
    return Status::Corruption(WhereLocated(id, l) + ": the location holds something else");
  }
  return Status::OK();
}

// One zstd context per thread: creating one per 8 KiB chunk costs more than compressing it.
struct ZstdContexts {
  ZSTD_CCtx* cctx = ZSTD_createCCtx();
  ZSTD_DCtx* dctx = ZSTD_createDCtx();
  std::string buf;  // compression output; grows to the largest chunk's bound
  ~ZstdContexts() {
    ZSTD_freeCCtx(cctx);
    ZSTD_freeDCtx(dctx);
  }
};
ZstdContexts& ThreadZstd() {
  thread_local ZstdContexts contexts;
  return contexts;
}
}  // namespace

ChunkId ChunkId::FromKey(std::string_view key) {
  ChunkId id;
  std::memcpy(id.bytes.data(), key.data(), std::min(key.size(), id.bytes.size()));
  return id;
}

std::string ChunkId::Hex() const { return HexEncode(AsKey()); }

bool IsAllZero(std::string_view data) {
  const char* p = data.data();
  size_t n = data.size();
  while (n >= 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    if (w) return false;
    p += 8;
    n -= 8;
  }
  while (n--) {
    if (*p++) return false;
  }
  return true;
}

ChunkId ComputeChunkId(std::string_view data) {
  ChunkId id;
  if (IsAllZero(data)) return id;
  XXH128_hash_t h = XXH3_128bits(data.data(), data.size());
  XXH128_canonical_t c;
  XXH128_canonicalFromHash(&c, h);
  std::memcpy(id.bytes.data(), c.digest, 16);
  // A real hash that happens to be all zeros would collide with the zero chunk; flip a bit.
  if (id.IsZero()) id.bytes[15] = 1;
  return id;
}

// A sharded LRU cache of decompressed chunks, bounded in bytes.
class ChunkCache {
 public:
  explicit ChunkCache(size_t capacity) : shard_capacity_(capacity / kCacheShards) {}

  std::shared_ptr<const std::string> Lookup(const ChunkId& id) {
    Shard& s = shard(id);
    std::lock_guard<std::mutex> lock(s.mu);
    auto it = s.map.find(id);
    if (it == s.map.end()) return nullptr;
    s.lru.splice(s.lru.begin(), s.lru, it->second);
    return it->second->second;
  }

  void Insert(const ChunkId& id, std::shared_ptr<const std::string> value) {
    if (shard_capacity_ == 0) return;
    Shard& s = shard(id);
    std::lock_guard<std::mutex> lock(s.mu);
    if (s.map.count(id)) return;
    s.lru.emplace_front(id, value);
    s.map[id] = s.lru.begin();
    s.bytes += value->size();
    while (s.bytes > shard_capacity_ && !s.lru.empty()) {
      auto& last = s.lru.back();
      s.bytes -= last.second->size();
      s.map.erase(last.first);
      s.lru.pop_back();
    }
  }

 private:
  struct Shard {
    std::mutex mu;
    std::list<std::pair<ChunkId, std::shared_ptr<const std::string>>> lru;
    std::unordered_map<ChunkId, decltype(lru)::iterator, ChunkIdHash> map;
    size_t bytes = 0;
  };
  Shard& shard(const ChunkId& id) { return shards_[id.bytes[0] % kCacheShards]; }

  size_t shard_capacity_;
  Shard shards_[kCacheShards];
};

// A fixed pool of worker threads for ParallelFor; one job at a time per caller.
class ChunkStore::Pool {
 public:
  explicit Pool(int workers) {
    for (int i = 0; i < workers; ++i) threads_.emplace_back([this] { Run(); });
  }
  ~Pool() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
  }
  void ParallelFor(size_t n, const std::function<void(size_t)>& fn) {
    if (n <= 1 || threads_.empty()) {
      for (size_t i = 0; i < n; ++i) fn(i);
      return;
    }
    auto job = std::make_shared<Job>();
    job->fn = &fn;
    job->n = n;
    {
      std::lock_guard<std::mutex> lock(mu_);
      jobs_.push_back(job);
    }
    cv_.notify_all();
    Work(job.get());
    std::unique_lock<std::mutex> lock(job->mu);
    job->done_cv.wait(lock, [&] { return job->done == job->n; });
  }

 private:
  struct Job {
    const std::function<void(size_t)>* fn;
    size_t n;
    std::atomic<size_t> next{0};
    std::mutex mu;
    std::condition_variable done_cv;
    size_t done = 0;
  };
  static void Work(Job* job) {
    size_t finished = 0;
    for (size_t i; (i = job->next.fetch_add(1)) < job->n;) {
      (*job->fn)(i);
      ++finished;
    }
    if (finished) {
      std::lock_guard<std::mutex> lock(job->mu);
      job->done += finished;
      if (job->done == job->n) job->done_cv.notify_all();
    }
  }
  void Run() {
    for (;;) {
      std::shared_ptr<Job> job;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return stop_ || !jobs_.empty(); });
        if (stop_) return;
        job = jobs_.front();
        if (job->next.load() >= job->n) {
          jobs_.pop_front();
          continue;
        }
      }
      Work(job.get());
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::list<std::shared_ptr<Job>> jobs_;
  std::vector<std::thread> threads_;
  bool stop_ = false;
};

namespace {
std::atomic<uint64_t> next_store_serial{0};
}  // namespace

ChunkStore::ChunkStore(KvStore* kv, int zstd_level, size_t cache_bytes, bool train_dictionaries,
                       bool located)
    : kv_(kv),
      zstd_level_(zstd_level),
      train_dictionaries_(train_dictionaries),
      located_(located),
      serial_(next_store_serial.fetch_add(1) + 1),
      cache_(std::make_unique<ChunkCache>(cache_bytes)),
      pool_(std::make_unique<Pool>(
          std::max(1, static_cast<int>(std::thread::hardware_concurrency()) - 1))) {}

ChunkStore::~ChunkStore() = default;

void ChunkStore::ParallelFor(size_t n, const std::function<void(size_t)>& fn) {
  pool_->ParallelFor(n, fn);
}

void ChunkStore::ParallelRead(size_t n, const std::function<void(size_t)>& fn) {
  std::call_once(read_pool_once_,
                 [this] { read_pool_ = std::make_unique<Pool>(kReadThreads - 1); });
  read_pool_->ParallelFor(n, fn);
}

std::string ChunkStore::Encode(std::string_view raw) const {
  std::shared_ptr<const ZstdDictionary> dict = current_dict_.load(std::memory_order_acquire);
  return EncodeAt(raw, zstd_level_, dict.get());
}

std::string ChunkStore::EncodeFast(std::string_view raw) const {
  return EncodeAt(raw, std::min(zstd_level_, 1), nullptr);
}

std::string ChunkStore::EncodeAt(std::string_view raw, int zstd_level, const ZstdDictionary* dict) {
  std::string out;
  if (zstd_level > 0) {
    // Compressed into a per-thread buffer, then copied at its size: sizing the result to the
    // compression bound would clear (and often fault in) that many bytes per chunk.
    ZstdContexts& z = ThreadZstd();
    z.buf.resize(std::max(z.buf.size(), ZSTD_compressBound(raw.size())));
    if (dict && dict->cdict() && raw.size() <= kMaxDictionaryChunk) {
      size_t n = ZSTD_compress_usingCDict(z.cctx, z.buf.data(), z.buf.size(), raw.data(),
                                          raw.size(), dict->cdict());
      constexpr size_t kHeader = 5;  // codec, dictionary id
      if (!ZSTD_isError(n) && kHeader + n < 1 + raw.size()) {
        out.reserve(kHeader + n);
        out.push_back(static_cast<char>(kCodecZstdDict));
        PutFixed32(&out, dict->id());
        out.append(z.buf.data(), n);
        return out;
      }
    } else {
      size_t n =
          ZSTD_compressCCtx(z.cctx, z.buf.data(), z.buf.size(), raw.data(), raw.size(), zstd_level);
      if (!ZSTD_isError(n) && n < raw.size()) {
        out.reserve(1 + n);
        out.push_back(static_cast<char>(kCodecZstd));
        out.append(z.buf.data(), n);
        return out;
      }
    }
  }
  out.reserve(1 + raw.size());
  out.push_back(static_cast<char>(kCodecRaw));
  out.append(raw);
  return out;
}

Status ChunkStore::Decode(const ChunkId& id, std::string_view stored, std::string* grow, char* dst,
                          size_t size) {
  auto place = [&](size_t n) -> char* {
    if (grow) {
      grow->resize(n);
      return grow->data();
    }
    return n == size ? dst : nullptr;
  };
  auto wrong_size = [&](size_t n) {
    return Status::Corruption("chunk " + id.Hex() + " has " + std::to_string(n) +
                              " bytes, expected " + std::to_string(size));
  };
  if (stored.empty()) return Status::Corruption("empty chunk " + id.Hex());
  uint8_t codec = static_cast<uint8_t>(stored[0]);
  std::string_view payload = stored.substr(1);
  if (codec == kCodecRaw) {
    char* out = place(payload.size());
    if (!out) return wrong_size(payload.size());
    std::memcpy(out, payload.data(), payload.size());
    return Status::OK();
  }
  if (codec != kCodecZstd && codec != kCodecZstdDict) {
    return Status::Corruption("chunk " + id.Hex() + " has unknown codec " + std::to_string(codec));
  }
  const ZstdDictionary* dict = nullptr;
  if (codec == kCodecZstdDict) {
    Decoder d(payload);
    uint32_t dict_id;
    if (!d.GetFixed32(&dict_id)) {
      return Status::Corruption("chunk " + id.Hex() + " is truncated");
    }
    payload = payload.substr(4);
    // Each thread keeps the dictionary it used last (a reference): consecutive chunks mostly use
    // the same one, and GetDictionary's shared state (an atomic shared_ptr, reference counts)
    // is contended when many threads decode at once.
    struct LastDictionary {
      uint64_t store = 0;
      std::shared_ptr<const ZstdDictionary> dict;
    };
    thread_local LastDictionary last;
    if (last.store != serial_ || !last.dict || last.dict->id() != dict_id) {
      Result<std::shared_ptr<const ZstdDictionary>> r = GetDictionary(dict_id);
      if (!r.ok()) {
        Status s = r.status();
        return (s.IsNotFound() ? Status::Corruption(s.message()) : s)
            .WithContext("chunk " + id.Hex() + " uses zstd dictionary " + std::to_string(dict_id));
      }
      last = {serial_, std::move(r).value()};
    }
    dict = last.dict.get();
  }
  unsigned long long n = ZSTD_getFrameContentSize(payload.data(), payload.size());
  if (n == ZSTD_CONTENTSIZE_ERROR || n == ZSTD_CONTENTSIZE_UNKNOWN || n > kMaxChunkBytes) {
    return Status::Corruption("chunk " + id.Hex() + " has a bad zstd frame");
  }
  char* out = place(n);
  if (!out) return wrong_size(n);
  size_t got = dict
                   ? ZSTD_decompress_usingDDict(ThreadZstd().dctx, out, n, payload.data(),
                                                payload.size(), dict->ddict())
                   : ZSTD_decompressDCtx(ThreadZstd().dctx, out, n, payload.data(), payload.size());
  if (ZSTD_isError(got) || got != n) {
    return Status::Corruption("chunk " + id.Hex() + " does not decompress");
  }
  return Status::OK();
}

Status ChunkStore::DecodeAndVerify(const ChunkId& id, std::string_view stored, std::string* out) {
  RETURN_IF_ERROR(Decode(id, stored, out, nullptr, 0));
  if (ComputeChunkId(*out) != id) {
    return Status::Corruption("chunk " + id.Hex() + " does not match its hash");
  }
  return Status::OK();
}

Status ChunkStore::Get(const ChunkId& id, size_t size, std::string* out) {
  if (id.IsZero()) {
    out->assign(size, '\0');
    return Status::OK();
  }
  thread_local std::string stored;  // no allocation per chunk
  RETURN_IF_ERROR(GetStored(id, &stored));
  RETURN_IF_ERROR(DecodeAndVerify(id, stored, out));
  if (out->size() != size) {
    return Status::Corruption("chunk " + id.Hex() + " has " + std::to_string(out->size()) +
                              " bytes, expected " + std::to_string(size));
  }
  return Status::OK();
}

Status ChunkStore::GetInto(const ChunkId& id, size_t size, char* dst) {
  if (id.IsZero()) {
    std::memset(dst, 0, size);
    return Status::OK();
  }
  thread_local std::string stored;
  RETURN_IF_ERROR(GetStored(id, &stored));
  RETURN_IF_ERROR(Decode(id, stored, nullptr, dst, size));
  if (ComputeChunkId(std::string_view(dst, size)) != id) {
    return Status::Corruption("chunk " + id.Hex() + " does not match its hash");
  }
  return Status::OK();
}

Result<std::shared_ptr<const std::string>> ChunkStore::GetCached(const ChunkId& id, size_t size) {
  if (auto hit = cache_->Lookup(id); hit && hit->size() == size) return hit;
  auto data = std::make_shared<std::string>();
  RETURN_IF_ERROR(Get(id, size, data.get()));
  if (!id.IsZero()) cache_->Insert(id, data);
  return std::shared_ptr<const std::string>(std::move(data));
}

Result<bool> ChunkStore::Contains(const ChunkId& id) {
  if (id.IsZero()) return true;
  std::string value;
  Status s = kv_->Get(Cf::kChunks, id.AsKey(), &value);
  if (s.IsNotFound()) return false;
  RETURN_IF_ERROR(s);
  return true;
}

Status ChunkStore::GetStored(const ChunkId& id, std::string* stored) {
  Status s = kv_->Get(Cf::kChunks, id.AsKey(), stored);
  if (s.IsNotFound()) return Status::NotFound("chunk " + id.Hex() + " is missing");
  RETURN_IF_ERROR(s);
  if (!IsLocated(*stored)) return Status::OK();
  std::optional<Located> l = ParseLocated(*stored);
  if (!l) return DamagedLocation(id);
  s = kv_->Get(Cf::kChunkData, LocationKey(l->location), stored);
  if (s.IsNotFound()) return Status::Corruption(WhereLocated(id, *l) + " is missing");
  if (!s.ok()) return s.WithContext(WhereLocated(id, *l));
  RETURN_IF_ERROR(CheckLocatedData(id, *l, *stored));
  stored->erase(0, kIdBytes);
  return Status::OK();
}

void ChunkStore::ReadMany(const std::vector<ChunkRead>& reads, std::vector<Status>* errors,
                          ReadManyStats* stats) {
  errors->assign(reads.size(), Status::OK());
  // The encoded chunks go to one buffer per thread, reused: no allocation per chunk.
  thread_local std::string arena;
  arena.clear();
  std::vector<std::pair<size_t, size_t>> spans(reads.size());  // in `arena`: offset, size
  std::vector<char> taken(reads.size(), 0);
  auto take = [&](size_t i, std::string_view encoded) {
    spans[i] = {arena.size(), encoded.size()};
    taken[i] = 1;
    arena.append(encoded);
  };
  // A file's chunks, written together, are mostly neighbours in `chunk_data`, in file order. So
  // the chunk after one just read is looked for first where the iterator now stands, or a few
  // entries on (past chunks this read does not want: a clone's overridden pages, a chunk stored
  // earlier elsewhere): an entry of `chunk_data` that carries its id holds it (its bytes are
  // checked against the id after decoding). Only where that guess fails is `chunks` asked, and
  // the iterator moved there (a few entries forward, or a seek). RocksDB's iterators read ahead,
  // so a run of neighbours comes in a few large disk reads, not one small random read each.
  constexpr uint64_t kMaxStep = 16;
  // More lookups than this, and the chunks are scattered: the rest are read in parallel. A store
  // that keeps its chunks inline (format < 4) has nothing to follow: all are read so.
  const int max_lookups = located_ ? 8 : 0;
  std::vector<char> guessed(reads.size(), 0);
  std::vector<size_t> scattered;
  std::unique_ptr<KvIterator> it;
  std::string value;
  int lookups = 0;
  for (size_t i = 0; i < reads.size(); ++i) {
    const ChunkId& id = reads[i].id;
    Status& error = (*errors)[i];
    if (id.IsZero()) {
      std::memset(reads[i].dst, 0, reads[i].size);
      continue;
    }
    if (FindAhead(it.get(), id, kMaxStep)) {
      take(i, it->value().substr(kIdBytes));
      guessed[i] = 1;
      it->Next();
      continue;
    }
    if (lookups == max_lookups) {
      scattered.push_back(i);
      continue;
    }
    lookups++;
    Status s = kv_->Get(Cf::kChunks, id.AsKey(), &value);
    if (s.IsNotFound()) {
      error = Status::NotFound("chunk " + id.Hex() + " is missing");
      continue;
    }
    if (!s.ok()) {
      error = s;
      continue;
    }
    if (!IsLocated(value)) {
      take(i, value);
      continue;
    }
    std::optional<Located> l = ParseLocated(value);
    if (!l) {
      error = DamagedLocation(id);
      continue;
    }
    const std::string key = LocationKey(l->location);
    if (!it) {
      it = kv_->NewIterator(Cf::kChunkData);
      it->Seek(key);
    } else {
      for (uint64_t steps = 0; it->Valid() && it->key() < key && steps < kMaxStep; ++steps) {
        it->Next();
      }
      if (!it->Valid() || it->key() != key) it->Seek(key);
    }
    if (!it->Valid() || it->key() != key) {
      s = it->status();
      error = s.ok() ? Status::Corruption(WhereLocated(id, *l) + " is missing")
                     : s.WithContext(WhereLocated(id, *l));
      it.reset();  // a new one for the next chunk: this one may have ended on an error
      continue;
    }
    error = CheckLocatedData(id, *l, it->value());
    if (error.ok()) take(i, it->value().substr(kIdBytes));
    it->Next();
  }
  // Decoded and checked in parallel (work for the cores: the reading is done), straight into
  // their destinations. A guessed chunk that fails is read again where `chunks` says, so that a
  // damaged entry is reported as GetInto reports it. Scattered chunks are read and decoded one
  // per read thread, as GetInto does: most of their time is waiting on random disk reads.
  const std::string_view all(arena);
  ParallelFor(reads.size(), [&](size_t i) {
    const ChunkRead& r = reads[i];
    Status& error = (*errors)[i];
    if (!taken[i] || !error.ok()) return;
    error = Decode(r.id, all.substr(spans[i].first, spans[i].second), nullptr, r.dst, r.size);
    if (error.ok() && ComputeChunkId(std::string_view(r.dst, r.size)) != r.id) {
      error = Status::Corruption("chunk " + r.id.Hex() + " does not match its hash");
    }
    if (!error.ok() && guessed[i]) error = GetInto(r.id, r.size, r.dst);
  });
  if (stats) {
    stats->followed += std::count(guessed.begin(), guessed.end(), 1);
    stats->looked_up += lookups;
    stats->scattered += scattered.size();
  }
  if (scattered.empty()) return;
  ParallelRead(scattered.size(), [&](size_t j) {
    const ChunkRead& r = reads[scattered[j]];
    (*errors)[scattered[j]] = GetInto(r.id, r.size, r.dst);
  });
}

Status ChunkStore::ReplaceStored(const ChunkId& id, std::string_view stored) {
  std::string value;
  Status s = kv_->Get(Cf::kChunks, id.AsKey(), &value);
  if (s.IsNotFound()) return Status::NotFound("chunk " + id.Hex() + " is missing");
  RETURN_IF_ERROR(s);
  KvBatch batch;
  if (!IsLocated(value)) {
    batch.Put(Cf::kChunks, id.AsKey(), stored);
  } else {
    std::optional<Located> l = ParseLocated(value);
    if (!l) return DamagedLocation(id);
    if (stored.size() != l->bytes) {
      return Status::InvalidArgument("a replacement must have the stored chunk's size");
    }
    batch.Put(Cf::kChunkData, LocationKey(l->location),
              std::string(id.AsKey()) + std::string(stored));
  }
  return kv_->Write(batch, /*sync=*/true);
}

Result<uint64_t> ChunkStore::AllocateLocations(uint64_t n) {
  std::lock_guard<std::mutex> lock(location_mu_);
  if (!location_loaded_) {
    // After the last location stored. Locations allocated but never written (a writer that
    // failed, or a process that died before its write) leave gaps, or are handed out again.
    auto it = kv_->NewIterator(Cf::kChunkData);
    it->SeekToLast();
    RETURN_IF_ERROR(it->status());
    if (it->Valid() && it->key().size() != 8) {
      return Status::Corruption("chunk_data key of bad length in the store");
    }
    next_location_ = it->Valid() ? GetBigEndian(it->key(), 8) + 1 : 1;
    location_loaded_ = true;
  }
  uint64_t first = next_location_;
  next_location_ += n;
  return first;
}

uint64_t ChunkStore::EntryBytes(std::string_view chunks_value) {
  if (std::optional<Located> l = ParseLocated(chunks_value)) {
    return kIdBytes + chunks_value.size() + 8 + kIdBytes + l->bytes;
  }
  return kIdBytes + chunks_value.size();
}

Status ChunkStore::ForEachStored(const StoredFn& fn, uint64_t* orphans) {
  *orphans = 0;
  // Inline chunks as `chunks` holds them; located ones are only counted here, and read below in
  // location order (sequential reads of `chunk_data`, not one random read each).
  uint64_t located = 0;
  auto scan_chunks = [&](const std::function<void(const ChunkId&, std::string_view)>& each) {
    auto it = kv_->NewIterator(Cf::kChunks);
    for (it->Seek(""); it->Valid(); it->Next()) {
      if (it->key().size() != kIdBytes) {
        return Status::Corruption("chunk key of bad length in the store");
      }
      each(ChunkId::FromKey(it->key()), it->value());
    }
    return it->status();
  };
  RETURN_IF_ERROR(scan_chunks([&](const ChunkId& id, std::string_view value) {
    if (IsLocated(value)) {
      located++;
    } else {
      fn(id, value, Status::OK());
    }
  }));
  // An entry is a chunk's only if that chunk's `chunks` entry names it (an entry whose id is
  // damaged names no chunk, or another one: the chunk it belonged to is found below).
  uint64_t matched = 0;
  std::string value;
  auto it = kv_->NewIterator(Cf::kChunkData);
  for (it->Seek(""); it->Valid(); it->Next()) {
    std::string_view data = it->value();
    if (it->key().size() != 8)
      return Status::Corruption("chunk_data key of bad length in the store");
    if (data.size() >= kIdBytes) {
      Status s = kv_->Get(Cf::kChunks, data.substr(0, kIdBytes), &value);
      if (!s.ok() && !s.IsNotFound()) return s;
      if (s.ok() && NamesLocation(value, it->key())) {
        matched++;
        fn(ChunkId::FromKey(data.substr(0, kIdBytes)), data.substr(kIdBytes), Status::OK());
        continue;
      }
    }
    (*orphans)++;
  }
  RETURN_IF_ERROR(it->status());
  if (matched == located) return Status::OK();
  // Some located chunks were not found where `chunks` says: find which.
  std::string stored;
  return scan_chunks([&](const ChunkId& id, std::string_view chunks_value) {
    if (!IsLocated(chunks_value)) return;
    Status s = GetStored(id, &stored);
    if (!s.ok()) fn(id, {}, s);
  });
}

Result<uint64_t> ChunkStore::DeleteOrphans(bool dry_run, uint64_t* bytes) {
  // An entry no `chunks` entry names stays so: locations are never written twice, and a chunk's
  // `chunks` entry and its `chunk_data` entry are written, and deleted, in one batch.
  uint64_t deleted = 0;
  KvBatch batch;
  std::string value;
  auto it = kv_->NewIterator(Cf::kChunkData);
  for (it->Seek(""); it->Valid(); it->Next()) {
    std::string_view data = it->value();
    if (data.size() >= kIdBytes) {
      Status s = kv_->Get(Cf::kChunks, data.substr(0, kIdBytes), &value);
      if (!s.ok() && !s.IsNotFound()) return s;
      if (s.ok() && NamesLocation(value, it->key())) continue;
    }
    *bytes += it->key().size() + data.size();
    if (!dry_run) batch.Delete(Cf::kChunkData, it->key());
    deleted++;
    if (batch.ops().size() >= 4096) {
      RETURN_IF_ERROR(kv_->Write(batch, false));
      batch.Clear();
    }
  }
  RETURN_IF_ERROR(it->status());
  if (!batch.empty()) RETURN_IF_ERROR(kv_->Write(batch, false));
  return deleted;
}

// Garbage collection and the writers beside it.

uint64_t ChunkStore::RegisterWriter() {
  std::lock_guard<std::mutex> lock(writers_mu_);
  writers_[writer_epoch_]++;
  return writer_epoch_;
}

void ChunkStore::UnregisterWriter(uint64_t epoch) {
  std::lock_guard<std::mutex> lock(writers_mu_);
  auto it = writers_.find(epoch);
  if (it != writers_.end() && --it->second == 0) writers_.erase(it);
  writers_cv_.notify_all();
}

void ChunkStore::Protect(const ChunkId& id) {
  if (!protecting_.load(std::memory_order_acquire)) return;
  std::lock_guard<std::mutex> lock(protect_mu_);
  protected_.insert(id);
}

Status ChunkStore::BeginCollection(const std::function<void(size_t)>& waiting) {
  std::unique_lock<std::mutex> lock(writers_mu_);
  if (collecting_) return Status::FailedPrecondition("a garbage collection is running already");
  collecting_ = true;
  {
    std::lock_guard<std::mutex> p(protect_mu_);
    protected_.clear();
  }
  // Writers that register from here on see protecting_ set before they reference anything:
  // they take writers_mu_ to register, which we hold while setting it.
  protecting_.store(true, std::memory_order_release);
  const uint64_t epoch = ++writer_epoch_;
  for (;;) {
    size_t older = 0;
    for (auto it = writers_.begin(); it != writers_.end() && it->first < epoch; ++it) {
      older += it->second;
    }
    if (older == 0) break;
    if (waiting) {
      lock.unlock();
      waiting(older);
      lock.lock();
    }
    writers_cv_.wait_for(lock, std::chrono::seconds(1));
  }
  return Status::OK();
}

Result<uint64_t> ChunkStore::DeleteUnprotected(const std::vector<ChunkId>& ids, uint64_t* bytes) {
  // Holding protect_mu_ across the check and the write: a writer that protects an id after we
  // checked it finds it deleted (Contains is false) and stores it again.
  std::lock_guard<std::mutex> lock(protect_mu_);
  KvBatch batch;
  uint64_t deleted = 0;
  std::string value;
  for (const ChunkId& id : ids) {
    if (id.IsZero() || protected_.count(id)) continue;
    Status s = kv_->Get(Cf::kChunks, id.AsKey(), &value);
    if (s.IsNotFound()) continue;
    RETURN_IF_ERROR(s);
    *bytes += EntryBytes(value);
    batch.Delete(Cf::kChunks, id.AsKey());
    if (std::optional<Located> l = ParseLocated(value)) {
      batch.Delete(Cf::kChunkData, LocationKey(l->location));
    }
    deleted++;
  }
  if (!batch.empty()) RETURN_IF_ERROR(kv_->Write(batch, false));
  return deleted;
}

void ChunkStore::EndCollection() {
  std::lock_guard<std::mutex> lock(writers_mu_);
  protecting_.store(false, std::memory_order_release);
  {
    std::lock_guard<std::mutex> p(protect_mu_);
    protected_.clear();
  }
  collecting_ = false;
}

// Dictionaries (docs/FORMAT.md, "chunks").

uint32_t ChunkStore::current_dictionary_id() const {
  std::shared_ptr<const ZstdDictionary> dict = current_dict_.load(std::memory_order_acquire);
  return dict ? dict->id() : 0;
}

void ChunkStore::SetDictionaryOptions(const DictionaryOptions& options) {
  std::lock_guard<std::mutex> lock(sample_mu_);
  dict_options_ = options;
  sample_.reset();
  dict_loaded_.store(false);  // the next writer recomputes the schedule
}

void ChunkStore::CacheDictionary(std::shared_ptr<const ZstdDictionary> dict) {
  std::lock_guard<std::mutex> lock(dicts_mu_);
  for (auto& d : dicts_) {
    if (d->id() == dict->id()) {
      if (dict->cdict() && !d->cdict()) d = dict;
      return;
    }
  }
  if (dicts_.size() >= kMaxCachedDictionaries) {
    uint32_t current = current_dictionary_id();
    for (auto it = dicts_.begin(); it != dicts_.end(); ++it) {
      if ((*it)->id() != current) {
        dicts_.erase(it);
        break;
      }
    }
  }
  dicts_.push_back(std::move(dict));
}

Result<std::shared_ptr<const ZstdDictionary>> ChunkStore::GetDictionary(uint32_t id) {
  std::shared_ptr<const ZstdDictionary> current = current_dict_.load(std::memory_order_acquire);
  if (current && current->id() == id) return current;
  {
    std::lock_guard<std::mutex> lock(dicts_mu_);
    for (const auto& d : dicts_) {
      if (d->id() == id) return d;
    }
  }
  std::string content;
  Status s = kv_->Get(Cf::kMeta, ZstdDictKey(id), &content);
  if (s.IsNotFound()) {
    return Status::NotFound("zstd dictionary " + std::to_string(id) + " is missing");
  }
  RETURN_IF_ERROR(s);
  ASSIGN_OR_RETURN(std::shared_ptr<const ZstdDictionary> dict,
                   ZstdDictionary::Create(id, std::move(content), 0));
  CacheDictionary(dict);
  return dict;
}

Status ChunkStore::LoadCurrentDictionaryLocked() {
  uint32_t id = 0;
  if (zstd_level_ > 0) {
    std::string value;
    Status s = kv_->Get(Cf::kMeta, kZstdDictCurrentKey, &value);
    if (s.ok()) {
      Decoder d(value);
      if (value.size() != 4 || !d.GetFixed32(&id) || id == 0) {
        return Status::Corruption("bad '" + std::string(kZstdDictCurrentKey) + "' record");
      }
    } else if (!s.IsNotFound()) {
      return s;
    }
  }
  if (id == 0) {
    current_dict_.store(nullptr, std::memory_order_release);
  } else if (id != current_dictionary_id()) {
    std::string content;
    Status s = kv_->Get(Cf::kMeta, ZstdDictKey(id), &content);
    if (s.IsNotFound()) {
      return Status::Corruption("the current zstd dictionary " + std::to_string(id) +
                                " is missing");
    }
    RETURN_IF_ERROR(s);
    ASSIGN_OR_RETURN(std::shared_ptr<const ZstdDictionary> dict,
                     ZstdDictionary::Create(id, std::move(content), zstd_level_));
    CacheDictionary(dict);
    current_dict_.store(dict, std::memory_order_release);
  }
  const auto& after = dict_options_.train_after;
  if (train_dictionaries_ && zstd_level_ > 0 && id < after.size()) {
    next_training_at_ = std::max(after[id], new_bytes_seen_ + 1);
    if (!sample_) {
      sample_ =
          std::make_unique<ChunkSample>(dict_options_.sample_chunks, dict_options_.sample_piece);
    }
    sampling_.store(true);
  } else {
    sample_.reset();
    sampling_.store(false);
  }
  dict_loaded_.store(true, std::memory_order_release);
  return Status::OK();
}

Status ChunkStore::PrepareDictionary() {
  if (dict_loaded_.load(std::memory_order_acquire)) return Status::OK();
  std::lock_guard<std::mutex> lock(sample_mu_);
  if (dict_loaded_.load()) return Status::OK();
  return LoadCurrentDictionaryLocked();
}

Status ChunkStore::SampleNewChunks(const std::vector<std::string_view>& chunks) {
  if (chunks.empty() || !sampling_.load(std::memory_order_acquire)) return Status::OK();
  std::string samples;
  std::vector<size_t> sizes;
  size_t capacity;
  {
    std::lock_guard<std::mutex> lock(sample_mu_);
    if (!sample_) return Status::OK();
    for (std::string_view c : chunks) {
      sample_->Add(c);
      new_bytes_seen_ += c.size();
    }
    if (training_ || new_bytes_seen_ < next_training_at_) return Status::OK();
    training_ = true;  // the other writers go on without waiting
    sample_->Concatenate(&samples, &sizes);
    capacity = dict_options_.dictionary_bytes;
  }
  // Trains outside the lock: it takes a fraction of a second for an 8 MiB sample.
  Result<std::string> content = TrainZstdDictionary(samples, sizes, capacity);
  std::lock_guard<std::mutex> lock(sample_mu_);
  training_ = false;
  if (!content.ok()) {
    // Too little or too uniform data: try again with twice as much seen, never per chunk.
    spdlog::debug("{}; trying again later", content.status().message());
    next_training_at_ = 2 * new_bytes_seen_;
    return Status::OK();
  }
  // Re-check under the lock: a dictionary switched meanwhile (by another store on the same
  // database) is adopted, not trained over.
  uint32_t believed = current_dictionary_id();
  dict_loaded_.store(false);
  RETURN_IF_ERROR(LoadCurrentDictionaryLocked());
  if (current_dictionary_id() != believed) return Status::OK();

  uint32_t id = 1;
  auto it = kv_->NewIterator(Cf::kMeta);
  for (it->Seek(kZstdDictKeyPrefix);
       it->Valid() && it->key().substr(0, kZstdDictKeyPrefix.size()) == kZstdDictKeyPrefix;
       it->Next()) {
    std::string_view key = it->key().substr(kZstdDictKeyPrefix.size());
    if (key.size() != 4) continue;
    uint32_t existing = 0;
    for (char c : key) existing = (existing << 8) | static_cast<uint8_t>(c);
    id = std::max(id, existing + 1);
  }
  RETURN_IF_ERROR(it->status());
  // If what follows fails, the next attempt waits like after a failed training.
  next_training_at_ = 2 * new_bytes_seen_;
  ASSIGN_OR_RETURN(std::shared_ptr<const ZstdDictionary> dict,
                   ZstdDictionary::Create(id, std::move(content).value(), zstd_level_));
  // Synced before any chunk uses it, so a chunk is never durable without its dictionary.
  KvBatch batch;
  batch.Put(Cf::kMeta, ZstdDictKey(id), dict->content());
  std::string current;
  PutFixed32(&current, id);
  batch.Put(Cf::kMeta, kZstdDictCurrentKey, current);
  RETURN_IF_ERROR(kv_->Write(batch, /*sync=*/true));
  spdlog::debug("trained zstd dictionary {} ({} bytes) on {} sample chunks", id,
                dict->content().size(), sizes.size());
  CacheDictionary(dict);
  current_dict_.store(dict, std::memory_order_release);
  // The next dictionary, if one is due, is trained on the same (still growing) sample.
  dict_loaded_.store(false);
  return LoadCurrentDictionaryLocked();
}

ChunkWriter::ChunkWriter(ChunkStore* store, size_t batch_bytes)
    : store_(store), epoch_(store->RegisterWriter()), batch_bytes_(batch_bytes) {}

ChunkWriter::~ChunkWriter() { store_->UnregisterWriter(epoch_); }

Status ChunkWriter::AddMany(const std::vector<std::string_view>& chunks,
                            std::vector<ChunkId>* ids) {
  const size_t n = chunks.size();
  ids->assign(n, ChunkId());
  RETURN_IF_ERROR(store_->PrepareDictionary());
  // Hash, look up and compress in parallel; only new chunks are compressed.
  std::vector<std::string> encoded(n);
  std::vector<Status> errors(n);
  std::vector<uint8_t> is_new(n, 0);
  store_->ParallelFor(n, [&](size_t i) {
    ChunkId id = ComputeChunkId(chunks[i]);
    (*ids)[i] = id;
    if (id.IsZero()) return;
    store_->Protect(id);  // before Contains: a collection must not delete what we reuse
    Result<bool> have = store_->Contains(id);
    if (!have.ok()) {
      errors[i] = have.status();
      return;
    }
    if (!*have) {
      is_new[i] = 1;
      encoded[i] = store_->Encode(chunks[i]);
    }
  });
  std::vector<std::string_view> stored;  // the new chunks, for the dictionary sample
  std::vector<std::pair<ChunkId, std::string_view>> fresh;
  for (size_t i = 0; i < n; ++i) {
    RETURN_IF_ERROR(errors[i]);
    const ChunkId& id = (*ids)[i];
    stats_.chunks++;
    stats_.logical_bytes += chunks[i].size();
    if (id.IsZero()) {
      stats_.zero_chunks++;
      continue;
    }
    if (!is_new[i] || !pending_.insert(id).second) continue;
    stats_.new_chunks++;
    stats_.new_stored_bytes += encoded[i].size() + id.bytes.size();
    fresh.emplace_back(id, encoded[i]);
    if (chunks[i].size() <= kMaxDictionaryChunk) stored.push_back(chunks[i]);
  }
  RETURN_IF_ERROR(Stage(fresh));
  RETURN_IF_ERROR(store_->SampleNewChunks(stored));
  if (batch_.ApproximateBytes() >= batch_bytes_) return Flush(false);
  return Status::OK();
}

Result<ChunkId> ChunkWriter::Add(std::string_view chunk) {
  std::vector<ChunkId> ids;
  RETURN_IF_ERROR(AddMany({chunk}, &ids));
  return ids[0];
}

Status ChunkWriter::AddEncoded(const ChunkId& id, size_t raw_size, std::string_view encoded) {
  stats_.chunks++;
  stats_.logical_bytes += raw_size;
  if (id.IsZero()) {
    stats_.zero_chunks++;
    return Status::OK();
  }
  if (pending_.count(id)) return Status::OK();
  store_->Protect(id);
  ASSIGN_OR_RETURN(bool have, store_->Contains(id));
  if (have) return Status::OK();
  pending_.insert(id);
  stats_.new_chunks++;
  stats_.new_stored_bytes += encoded.size() + id.bytes.size();
  RETURN_IF_ERROR(Stage({{id, encoded}}));
  if (batch_.ApproximateBytes() >= batch_bytes_) return Flush(false);
  return Status::OK();
}

Status ChunkWriter::Stage(const std::vector<std::pair<ChunkId, std::string_view>>& fresh) {
  if (fresh.empty()) return Status::OK();
  if (!store_->located()) {
    for (const auto& [id, encoded] : fresh) batch_.Put(Cf::kChunks, id.AsKey(), encoded);
    return Status::OK();
  }
  // Consecutive locations, in the order the chunks came: a file's new chunks are neighbours.
  ASSIGN_OR_RETURN(uint64_t location, store_->AllocateLocations(fresh.size()));
  std::string data;
  for (const auto& [id, encoded] : fresh) {
    data.assign(id.AsKey());
    data.append(encoded);
    batch_.Put(Cf::kChunkData, LocationKey(location), data);
    batch_.Put(Cf::kChunks, id.AsKey(), LocatedValue(location, encoded.size()));
    location++;
  }
  return Status::OK();
}

Status ChunkWriter::Flush(bool sync) {
  if (batch_.empty()) {
    return sync ? store_->kv()->Sync() : Status::OK();
  }
  // Chunk ids are random. In key order, RocksDB's memtable finds each insert's place from the
  // one before it (its skiplist keeps the last insert's path) instead of from the top, which on
  // a large memtable is a cache miss per level.
  std::vector<const KvBatch::Op*> ops;
  ops.reserve(batch_.ops().size());
  for (const KvBatch::Op& op : batch_.ops()) ops.push_back(&op);
  std::sort(ops.begin(), ops.end(), [](const KvBatch::Op* a, const KvBatch::Op* b) {
    return std::tie(a->cf, a->key) < std::tie(b->cf, b->key);
  });
  KvBatch sorted;
  for (const KvBatch::Op* op : ops) sorted.Put(op->cf, op->key, op->value);
  Status s = store_->kv()->Write(sorted, sync);
  batch_.Clear();
  pending_.clear();
  return s;
}

}  // namespace pgbackfs
