#include "repo/chunk_store.h"

#define XXH_INLINE_ALL
#include <xxhash.h>
#include <zstd.h>

#include <algorithm>
#include <condition_variable>
#include <list>
#include <thread>
#include <unordered_map>

#include "repo/coding.h"

namespace pgbackfs {

namespace {
constexpr uint8_t kCodecRaw = 0;
constexpr uint8_t kCodecZstd = 1;
constexpr int kCacheShards = 16;

// One zstd context per thread: creating one per 8 KiB chunk costs more than compressing it.
struct ZstdContexts {
  ZSTD_CCtx* cctx = ZSTD_createCCtx();
  ZSTD_DCtx* dctx = ZSTD_createDCtx();
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

ChunkStore::ChunkStore(KvStore* kv, int zstd_level, size_t cache_bytes)
    : kv_(kv),
      zstd_level_(zstd_level),
      cache_(std::make_unique<ChunkCache>(cache_bytes)),
      pool_(std::make_unique<Pool>(
          std::max(1, static_cast<int>(std::thread::hardware_concurrency()) - 1))) {}

ChunkStore::~ChunkStore() = default;

void ChunkStore::ParallelFor(size_t n, const std::function<void(size_t)>& fn) {
  pool_->ParallelFor(n, fn);
}

std::string ChunkStore::Encode(std::string_view raw) const { return EncodeAt(raw, zstd_level_); }

std::string ChunkStore::EncodeFast(std::string_view raw) const {
  return EncodeAt(raw, std::min(zstd_level_, 1));
}

std::string ChunkStore::EncodeAt(std::string_view raw, int zstd_level) {
  std::string out;
  if (zstd_level > 0) {
    out.resize(1 + ZSTD_compressBound(raw.size()));
    size_t n = ZSTD_compressCCtx(ThreadZstd().cctx, out.data() + 1, out.size() - 1, raw.data(),
                                 raw.size(), zstd_level);
    if (!ZSTD_isError(n) && n < raw.size()) {
      out[0] = static_cast<char>(kCodecZstd);
      out.resize(1 + n);
      return out;
    }
  }
  out.clear();
  out.push_back(static_cast<char>(kCodecRaw));
  out.append(raw);
  return out;
}

Status ChunkStore::DecodeAndVerify(const ChunkId& id, std::string_view stored, std::string* out) {
  if (stored.empty()) return Status::Corruption("empty chunk " + id.Hex());
  uint8_t codec = static_cast<uint8_t>(stored[0]);
  std::string_view payload = stored.substr(1);
  if (codec == kCodecRaw) {
    out->assign(payload);
  } else if (codec == kCodecZstd) {
    unsigned long long n = ZSTD_getFrameContentSize(payload.data(), payload.size());
    if (n == ZSTD_CONTENTSIZE_ERROR || n == ZSTD_CONTENTSIZE_UNKNOWN || n > (64u << 20)) {
      return Status::Corruption("chunk " + id.Hex() + " has a bad zstd frame");
    }
    out->resize(n);
    size_t got =
        ZSTD_decompressDCtx(ThreadZstd().dctx, out->data(), n, payload.data(), payload.size());
    if (ZSTD_isError(got) || got != n) {
      return Status::Corruption("chunk " + id.Hex() + " does not decompress");
    }
  } else {
    return Status::Corruption("chunk " + id.Hex() + " has unknown codec " + std::to_string(codec));
  }
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
  std::string stored;
  Status s = kv_->Get(Cf::kChunks, id.AsKey(), &stored);
  if (s.IsNotFound()) return Status::NotFound("chunk " + id.Hex() + " is missing");
  RETURN_IF_ERROR(s);
  RETURN_IF_ERROR(DecodeAndVerify(id, stored, out));
  if (out->size() != size) {
    return Status::Corruption("chunk " + id.Hex() + " has " + std::to_string(out->size()) +
                              " bytes, expected " + std::to_string(size));
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

ChunkWriter::ChunkWriter(ChunkStore* store, size_t batch_bytes)
    : store_(store), batch_bytes_(batch_bytes) {}

Status ChunkWriter::AddMany(const std::vector<std::string_view>& chunks,
                            std::vector<ChunkId>* ids) {
  const size_t n = chunks.size();
  ids->assign(n, ChunkId());
  // Hash, look up and compress in parallel; only new chunks are compressed.
  std::vector<std::string> encoded(n);
  std::vector<Status> errors(n);
  std::vector<uint8_t> is_new(n, 0);
  store_->ParallelFor(n, [&](size_t i) {
    ChunkId id = ComputeChunkId(chunks[i]);
    (*ids)[i] = id;
    if (id.IsZero()) return;
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
    batch_.Put(Cf::kChunks, id.AsKey(), encoded[i]);
  }
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
  ASSIGN_OR_RETURN(bool have, store_->Contains(id));
  if (have) return Status::OK();
  pending_.insert(id);
  stats_.new_chunks++;
  stats_.new_stored_bytes += encoded.size() + id.bytes.size();
  batch_.Put(Cf::kChunks, id.AsKey(), encoded);
  if (batch_.ApproximateBytes() >= batch_bytes_) return Flush(false);
  return Status::OK();
}

Status ChunkWriter::Flush(bool sync) {
  if (batch_.empty()) {
    return sync ? store_->kv()->Sync() : Status::OK();
  }
  Status s = store_->kv()->Write(batch_, sync);
  batch_.Clear();
  pending_.clear();
  return s;
}

}  // namespace pgbackfs
