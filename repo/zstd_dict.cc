#include "repo/zstd_dict.h"

// ZSTD_createCDict_advanced / ZSTD_createDDict_advanced (raw-content dictionaries) and
// ZDICT_trainFromBuffer_fastCover are in zstd's "advanced" API, unchanged since zstd 1.3/1.4.
#define ZSTD_STATIC_LINKING_ONLY
#define ZDICT_STATIC_LINKING_ONLY
#include <zdict.h>
#include <zstd.h>

#include <algorithm>

namespace pgbackfs {

std::string ZstdDictKey(uint32_t id) {
  std::string key(kZstdDictKeyPrefix);
  for (int shift = 24; shift >= 0; shift -= 8) key.push_back(static_cast<char>(id >> shift));
  return key;
}

Result<std::shared_ptr<const ZstdDictionary>> ZstdDictionary::Create(uint32_t id,
                                                                     std::string content,
                                                                     int level) {
  std::shared_ptr<ZstdDictionary> dict(new ZstdDictionary());
  dict->id_ = id;
  dict->content_ = std::move(content);
  const std::string& c = dict->content_;
  dict->ddict_ = ZSTD_createDDict_advanced(c.data(), c.size(), ZSTD_dlm_byRef, ZSTD_dct_rawContent,
                                           ZSTD_defaultCMem);
  if (!dict->ddict_) {
    return Status::Corruption("zstd dictionary " + std::to_string(id) + " cannot be loaded");
  }
  if (level > 0) {
    // Parameters for an unknown source size, as ZSTD_createCDict chooses them.
    ZSTD_compressionParameters params = ZSTD_getCParams(level, 0, c.size());
    dict->cdict_ = ZSTD_createCDict_advanced(c.data(), c.size(), ZSTD_dlm_byRef,
                                             ZSTD_dct_rawContent, params, ZSTD_defaultCMem);
    if (!dict->cdict_) {
      return Status::Corruption("zstd dictionary " + std::to_string(id) + " cannot be loaded");
    }
  }
  return std::shared_ptr<const ZstdDictionary>(std::move(dict));
}

ZstdDictionary::~ZstdDictionary() {
  ZSTD_freeCDict(cdict_);
  ZSTD_freeDDict(ddict_);
}

void ChunkSample::Add(std::string_view chunk) {
  std::string_view piece = chunk.substr(0, max_piece_);
  ++seen_;
  if (items_.size() < max_items_) {
    items_.emplace_back(piece);
    bytes_ += piece.size();
    return;
  }
  // Reservoir sampling: every chunk seen so far is in the sample with the same probability.
  uint64_t slot = rng_() % seen_;
  if (slot >= items_.size()) return;
  bytes_ -= items_[slot].size();
  items_[slot].assign(piece);
  bytes_ += piece.size();
}

void ChunkSample::Concatenate(std::string* buffer, std::vector<size_t>* sizes) const {
  buffer->clear();
  buffer->reserve(bytes_);
  sizes->clear();
  for (const std::string& item : items_) {
    buffer->append(item);
    sizes->push_back(item.size());
  }
}

void ChunkSample::Clear() {
  items_.clear();
  items_.shrink_to_fit();
  bytes_ = 0;
}

Result<std::string> TrainZstdDictionary(const std::string& samples,
                                        const std::vector<size_t>& sizes, size_t capacity) {
  std::string dict(capacity, '\0');
  // One fastCover pass with fixed parameters. ZDICT_trainFromBuffer searches several (it tries
  // k values on 3/4 of the sample and scores them on the rest) and takes 4x as long, a pause of
  // about 0.3 s per 8 MiB sample in the writer, for no better result on PostgreSQL pages
  // (measured on a pgbench + random text database: 0.5% smaller repository, 1% larger chunks
  // with the last dictionary).
  ZDICT_fastCover_params_t params{};
  params.k = static_cast<unsigned>(std::min<size_t>(1024, capacity / 4));
  params.d = 8;
  params.f = 20;
  params.accel = 1;
  params.steps = 0;
  params.splitPoint = 1.0;
  params.zParams.compressionLevel = 3;
  size_t n = ZDICT_trainFromBuffer_fastCover(dict.data(), dict.size(), samples.data(), sizes.data(),
                                             static_cast<unsigned>(sizes.size()), params);
  if (ZDICT_isError(n)) {
    return Status::FailedPrecondition(std::string("cannot train a zstd dictionary on ") +
                                      std::to_string(sizes.size()) +
                                      " chunks: " + ZDICT_getErrorName(n));
  }
  // Keep the content only (see zstd_dict.h).
  size_t header = ZDICT_getDictHeaderSize(dict.data(), n);
  if (ZDICT_isError(header) || header >= n) {
    return Status::FailedPrecondition("zstd dictionary training produced no content");
  }
  return dict.substr(header, n - header);
}

}  // namespace pgbackfs
