// Zstd dictionaries for chunk compression (private to repo/chunk_store.cc).
// A chunk of 8 KiB compressed on its own has no history to match against; a dictionary trained
// on sample chunks supplies one. Layout of the records: docs/FORMAT.md, "chunks".
//
// Dictionaries are used as raw content (ZSTD_dct_rawContent), not in ZDICT format: the trainer's
// entropy tables fit the sample, and on data unlike the sample they make chunks larger (measured:
// +40% on pgbench_accounts pages with a dictionary trained on random text, against +2% with the
// same dictionary's content alone). The content carries most of the gain.
#pragma once

#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "repo/status.h"

struct ZSTD_CDict_s;
struct ZSTD_DDict_s;

namespace pgbackfs {

// Meta column family keys.
inline constexpr std::string_view kZstdDictKeyPrefix = "zstd_dict/";          // + u32 BE id
inline constexpr std::string_view kZstdDictCurrentKey = "zstd_dict_current";  // u32 LE id
std::string ZstdDictKey(uint32_t id);

// An immutable dictionary, prepared for compression (at one level) and decompression.
class ZstdDictionary {
 public:
  // `level` 0 prepares it for decompression only. Corruption if zstd cannot load it.
  static Result<std::shared_ptr<const ZstdDictionary>> Create(uint32_t id, std::string content,
                                                              int level);
  ~ZstdDictionary();
  ZstdDictionary(const ZstdDictionary&) = delete;
  ZstdDictionary& operator=(const ZstdDictionary&) = delete;

  uint32_t id() const { return id_; }
  const std::string& content() const { return content_; }
  const ZSTD_CDict_s* cdict() const { return cdict_; }  // null when created with level 0
  const ZSTD_DDict_s* ddict() const { return ddict_; }

 private:
  ZstdDictionary() = default;
  uint32_t id_ = 0;
  std::string content_;
  ZSTD_CDict_s* cdict_ = nullptr;
  ZSTD_DDict_s* ddict_ = nullptr;
};

// A uniform sample (reservoir) of the chunks seen, bounded in count and in bytes: each chunk
// contributes at most `max_piece` bytes (its beginning). Not thread-safe.
class ChunkSample {
 public:
  ChunkSample(size_t max_items, size_t max_piece) : max_items_(max_items), max_piece_(max_piece) {}
  void Add(std::string_view chunk);
  size_t items() const { return items_.size(); }
  size_t bytes() const { return bytes_; }
  // The sample as ZDICT wants it: the pieces concatenated, and their sizes.
  void Concatenate(std::string* buffer, std::vector<size_t>* sizes) const;
  void Clear();

 private:
  size_t max_items_;
  size_t max_piece_;
  uint64_t seen_ = 0;
  size_t bytes_ = 0;
  std::vector<std::string> items_;
  std::mt19937_64 rng_{0x9e3779b97f4a7c15ull};
};

// Trains a dictionary of at most `capacity` bytes on the sample and returns its content.
// FailedPrecondition when the sample is too small or too uniform to train on.
Result<std::string> TrainZstdDictionary(const std::string& samples,
                                        const std::vector<size_t>& sizes, size_t capacity);

}  // namespace pgbackfs
