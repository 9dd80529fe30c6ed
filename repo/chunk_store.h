// Content-addressed chunks. A chunk is addressed by the XXH3-128 hash of its raw bytes, stored
// zstd-compressed once however often it occurs, and checked against its hash on every read.
// The all-zero chunk of any length has the reserved id 0 and is never stored.
// Chunks are compressed with a zstd dictionary once the store has trained one on a sample of the
// chunks it stored (repo/zstd_dict.h).
// Value layout: docs/FORMAT.md, "chunks".
#pragma once

#include <array>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>

#include "repo/kv.h"
#include "repo/status.h"

namespace pgbackfs {

struct ChunkId {
  std::array<uint8_t, 16> bytes{};

  bool IsZero() const {
    for (uint8_t b : bytes)
      if (b) return false;
    return true;
  }
  std::string_view AsKey() const {
    return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
  }
  static ChunkId FromKey(std::string_view key);  // key must be 16 bytes
  std::string Hex() const;
  bool operator==(const ChunkId& o) const { return bytes == o.bytes; }
  bool operator!=(const ChunkId& o) const { return bytes != o.bytes; }
};

struct ChunkIdHash {
  size_t operator()(const ChunkId& id) const {
    size_t h;
    std::memcpy(&h, id.bytes.data(), sizeof(h));
    return h;
  }
};

// XXH3-128 of `data`, or the zero id when `data` is all zeros.
ChunkId ComputeChunkId(std::string_view data);
bool IsAllZero(std::string_view data);

// What a writer added: the figures `backup` and `info` report.
struct WriteStats {
  uint64_t logical_bytes = 0;  // bytes handed to the writer
  uint64_t chunks = 0;         // chunks handed to the writer, zero chunks included
  uint64_t zero_chunks = 0;
  uint64_t new_chunks = 0;        // chunks not stored before
  uint64_t new_stored_bytes = 0;  // encoded bytes of the new chunks (keys included)
  void Add(const WriteStats& o) {
    logical_bytes += o.logical_bytes;
    chunks += o.chunks;
    zero_chunks += o.zero_chunks;
    new_chunks += o.new_chunks;
    new_stored_bytes += o.new_stored_bytes;
  }
};

class ChunkCache;
class ChunkSample;
class ZstdDictionary;

// When and how the store trains zstd dictionaries. Tests shrink these.
struct DictionaryOptions {
  size_t dictionary_bytes = 112 << 10;  // capacity of a trained dictionary
  size_t sample_chunks = 1024;          // the sample: at most this many chunks ...
  size_t sample_piece = 8 << 10;        // ... of at most this many bytes each (so <= 8 MiB)
  // Dictionary k+1 is trained once this process has stored train_after[k] bytes of new chunks
  // (k = the id of the current dictionary, 0 for none); none is trained after the last. The
  // sample is uniform over all new chunks seen, so a later dictionary fits the data better than
  // one trained on whatever relation the first backup happened to start with.
  std::vector<uint64_t> train_after = {8ull << 20, 64ull << 20, 512ull << 20};
};

class ChunkStore {
 public:
  // `kv` must outlive the store, and be used by no other ChunkStore. With `train_dictionaries`
  // false (format-1 repositories) new chunks never use a dictionary; chunks that do are read
  // either way. With `located` (format >= 4) new chunks are stored in `chunk_data` in the order
  // they are written, and `chunks` holds their location; chunks stored inline are read either
  // way (docs/FORMAT.md, "chunks").
  ChunkStore(KvStore* kv, int zstd_level, size_t cache_bytes, bool train_dictionaries = true,
             bool located = false);
  ~ChunkStore();
  ChunkStore(const ChunkStore&) = delete;
  ChunkStore& operator=(const ChunkStore&) = delete;

  // Reads chunk `id` of `size` raw bytes into `out`, checking its hash. Corruption on mismatch or
  // on a chunk that cannot be decoded; NotFound when it is missing.
  Status Get(const ChunkId& id, size_t size, std::string* out);
  // Same, into dst[0, size) (a chunk of another size is Corruption), without the cache: for large
  // reads, whose chunks would only push out what the cache holds. Thread-safe.
  Status GetInto(const ChunkId& id, size_t size, char* dst);
  // Many chunks, each as GetInto reads one: reads[i].size raw bytes of chunk reads[i].id into
  // reads[i].dst; (*errors)[i] is that chunk's outcome. For large reads of files, in file order:
  // located chunks that are neighbours in `chunk_data` (a file's chunks, written together) are
  // read in one pass of an iterator, without a `chunks` lookup each, and come in a few large
  // disk reads; all are decoded and checked in parallel. Thread-safe.
  struct ChunkRead {
    ChunkId id;
    size_t size;
    char* dst;
  };
  // How ReadMany found the chunks (for tests): by following `chunk_data`, by a `chunks` lookup,
  // or one chunk per read thread.
  struct ReadManyStats {
    uint64_t followed = 0;
    uint64_t looked_up = 0;
    uint64_t scattered = 0;
  };
  void ReadMany(const std::vector<ChunkRead>& reads, std::vector<Status>* errors,
                ReadManyStats* stats = nullptr);
  // Same, through the decompressed-chunk cache.
  Result<std::shared_ptr<const std::string>> GetCached(const ChunkId& id, size_t size);
  // True if the chunk is stored (or is the zero chunk). Does not read or check the data.
  Result<bool> Contains(const ChunkId& id);
  // The stored (encoded) form of chunk `id`, wherever it is; not decoded or checked. NotFound
  // when it is missing; Corruption when its `chunks` entry or its located entry is damaged.
  Status GetStored(const ChunkId& id, std::string* stored);
  // Test hook (`debug corrupt-chunk`): replaces the stored form of a stored chunk, in place.
  Status ReplaceStored(const ChunkId& id, std::string_view stored);
  bool located() const { return located_; }

  // Every stored chunk, for `verify`: fn(id, stored, problem) once per chunk in `chunks`, with
  // its stored form, or with a non-OK `problem` (and no bytes) when that form cannot be found:
  // a damaged `chunks` entry, a location with no entry or an entry of another chunk. Located
  // chunks are read in location order. `*orphans` counts `chunk_data` entries no `chunks` entry
  // names (left by two writers that stored the same new chunk at once; `gc` deletes them). A
  // failed scan is returned; `fn` may have been called for part of the chunks.
  using StoredFn =
      std::function<void(const ChunkId& id, std::string_view stored, const Status& problem)>;
  Status ForEachStored(const StoredFn& fn, uint64_t* orphans);
  // Deletes those orphans (counts them only, with `dry_run`); returns how many, and adds their
  // bytes to `*bytes`.
  Result<uint64_t> DeleteOrphans(bool dry_run, uint64_t* bytes);
  // Approximate bytes on disk of the chunks (both column families).
  uint64_t ApproximateBytes() {
    return kv_->ApproximateSize(Cf::kChunks) + kv_->ApproximateSize(Cf::kChunkData);
  }
  // The bytes a chunk takes in the store (keys included), given its `chunks` value.
  static uint64_t EntryBytes(std::string_view chunks_value);

  // Encodes raw chunk bytes for storage (compressed, with the current dictionary if there is
  // one, when that is smaller).
  std::string Encode(std::string_view raw) const;
  // Same, with the fastest zstd level (1) whatever the repository's, and no dictionary: for
  // bytes that are written often and may be overwritten soon (clone overrides), where
  // compression time is latency.
  std::string EncodeFast(std::string_view raw) const;
  // Decodes a stored value and checks it against `id`. Corruption when it cannot be decoded
  // (also when the dictionary it names is missing) or does not match.
  Status DecodeAndVerify(const ChunkId& id, std::string_view stored, std::string* out);

  // For writers: loads the current dictionary (once), and adds new chunks about to be stored to
  // the training sample, training a dictionary when one is due (a synced write of it, before
  // any chunk uses it). Thread-safe; one training at a time.
  Status PrepareDictionary();
  Status SampleNewChunks(const std::vector<std::string_view>& chunks);
  // The id of the dictionary new chunks use (0: none).
  uint32_t current_dictionary_id() const;
  // Before the first write.
  void SetDictionaryOptions(const DictionaryOptions& options);

  // Runs fn(i) for i in [0, n) on the store's worker threads and the caller's, and waits.
  void ParallelFor(size_t n, const std::function<void(size_t)>& fn);
  // The same on a wider pool (kReadThreads), for reads: most of a cold read's time is waiting
  // for the disk, and more reads in flight keep it busy.
  void ParallelRead(size_t n, const std::function<void(size_t)>& fn);
  static constexpr int kReadThreads = 16;

  // The first of `n` consecutive new locations in `chunk_data`.
  Result<uint64_t> AllocateLocations(uint64_t n);

  KvStore* kv() { return kv_; }
  int zstd_level() const { return zstd_level_; }

  // Garbage collection (repo/gc.h) and the writers running beside it. A chunk becomes referenced
  // only when a writer's caller commits a record naming it, and a writer may reuse a stored chunk
  // (a dedup hit) long before that. So while a collection runs, every id a writer hands out is
  // recorded as protected (before its Contains check), and the collection deletes no protected
  // chunk; and the collection marks only after every writer that started before it is gone
  // (their references are committed by then, or never will be).
  //
  // Starts a collection: from now on writers protect what they reference. Waits until the
  // writers that existed before have ended, calling `waiting(n)` about once a second while n of
  // them remain. FailedPrecondition if a collection is running already.
  Status BeginCollection(const std::function<void(size_t)>& waiting = nullptr);
  // Deletes those of `ids` that no writer has protected since BeginCollection, in one unsynced
  // batch; returns how many it deleted and their encoded bytes in `*bytes`.
  Result<uint64_t> DeleteUnprotected(const std::vector<ChunkId>& ids, uint64_t* bytes);
  // Ends it (also when it failed).
  void EndCollection();
  // For writers (ChunkWriter): registration, and protection of an id during a collection.
  uint64_t RegisterWriter();
  void UnregisterWriter(uint64_t epoch);
  void Protect(const ChunkId& id);

 private:
  class Pool;
  // Decodes `stored` into *grow (resized to fit) or, when grow is null, into dst[0, size), which
  // it must fill exactly. Does not check the hash.
  Status Decode(const ChunkId& id, std::string_view stored, std::string* grow, char* dst,
                size_t size);
  // `dict` (may be null) must have been prepared at `zstd_level`.
  static std::string EncodeAt(std::string_view raw, int zstd_level, const ZstdDictionary* dict);
  // A dictionary by id: the current one, a cached one, or loaded from the meta column family.
  Result<std::shared_ptr<const ZstdDictionary>> GetDictionary(uint32_t id);
  void CacheDictionary(std::shared_ptr<const ZstdDictionary> dict);
  Status LoadCurrentDictionaryLocked();  // sample_mu_ held

  KvStore* kv_;
  int zstd_level_;
  const bool train_dictionaries_;
  const bool located_;
  const uint64_t serial_;  // tells this store's dictionaries from another's (Decode)
  std::mutex location_mu_;
  bool location_loaded_ = false;  // GUARDED_BY(location_mu_)
  uint64_t next_location_ = 0;    // GUARDED_BY(location_mu_)
  std::unique_ptr<ChunkCache> cache_;
  std::unique_ptr<Pool> pool_;
  std::unique_ptr<Pool> read_pool_;  // made on first use
  std::once_flag read_pool_once_;

  std::atomic<std::shared_ptr<const ZstdDictionary>> current_dict_;
  std::mutex dicts_mu_;
  std::vector<std::shared_ptr<const ZstdDictionary>> dicts_;  // GUARDED_BY(dicts_mu_), bounded

  std::atomic<bool> dict_loaded_{false};
  std::atomic<bool> sampling_{false};  // false once no further dictionary is due
  std::mutex sample_mu_;
  // GUARDED_BY(sample_mu_):
  DictionaryOptions dict_options_;
  std::unique_ptr<ChunkSample> sample_;
  uint64_t new_bytes_seen_ = 0;  // bytes of new chunks stored by this process
  uint64_t next_training_at_ = 0;
  bool training_ = false;

  std::mutex writers_mu_;
  std::condition_variable writers_cv_;
  // GUARDED_BY(writers_mu_):
  uint64_t writer_epoch_ = 0;           // bumped by BeginCollection
  std::map<uint64_t, size_t> writers_;  // live writers by the epoch they started in
  bool collecting_ = false;
  std::atomic<bool> protecting_{false};  // a collection runs: writers record their ids
  std::mutex protect_mu_;
  std::unordered_set<ChunkId, ChunkIdHash> protected_;  // GUARDED_BY(protect_mu_)
};

// Buffers new chunks into batches and writes them. One writer per producer (not thread-safe);
// many writers may share a store. Nothing a writer adds is referenced by any snapshot until the
// caller commits a record naming it, so a writer that dies leaves only unreferenced chunks.
class ChunkWriter {
 public:
  explicit ChunkWriter(ChunkStore* store, size_t batch_bytes = 4 << 20);
  ~ChunkWriter();
  ChunkWriter(const ChunkWriter&) = delete;
  ChunkWriter& operator=(const ChunkWriter&) = delete;
  // Adds chunks, hashing and compressing them in parallel; ids[i] is the id of chunks[i].
  Status AddMany(const std::vector<std::string_view>& chunks, std::vector<ChunkId>* ids);
  Result<ChunkId> Add(std::string_view chunk);
  // Adds a chunk already hashed and encoded (ChunkStore::Encode), unless it is stored already.
  Status AddEncoded(const ChunkId& id, size_t raw_size, std::string_view encoded);
  // Writes what is buffered. Durable with `sync` (or by a later synced write of the same store).
  Status Flush(bool sync);
  const WriteStats& stats() const { return stats_; }

 private:
  // Puts new chunks (id, encoded) into the batch: inline, or at new locations.
  Status Stage(const std::vector<std::pair<ChunkId, std::string_view>>& fresh);
  ChunkStore* store_;
  uint64_t epoch_;  // ChunkStore::RegisterWriter
  size_t batch_bytes_;
  KvBatch batch_;
  std::unordered_set<ChunkId, ChunkIdHash> pending_;
  WriteStats stats_;
};

}  // namespace pgbackfs
