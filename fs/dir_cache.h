// A bounded cache of decoded snapshot directories. The key is the directory's content (size and
// tree root), so a directory that did not change between snapshots is decoded once for all of
// them. Listings are shared: a reader keeps its listing alive after the cache drops it.
#pragma once

#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "repo/snapshot.h"

namespace pgbackfs {

class DirCache {
 public:
  using Listing = std::shared_ptr<const std::vector<Entry>>;

  explicit DirCache(size_t capacity_bytes) : capacity_(capacity_bytes) {}
  DirCache(const DirCache&) = delete;
  DirCache& operator=(const DirCache&) = delete;

  // The decoded listing of directory `dir` (entries sorted by name), from the cache or from
  // `load`. A listing larger than the whole cache is returned but not kept.
  Result<Listing> Get(const Entry& dir, const std::function<Status(std::vector<Entry>*)>& load);

  // The entry named `name` in a listing, or null.
  static const Entry* Find(const std::vector<Entry>& listing, const std::string& name);

  size_t bytes() const;
  size_t count() const;

 private:
  struct Item {
    std::string key;
    Listing listing;
    size_t charge;
  };
  static std::string Key(const Entry& dir);
  static size_t Charge(const std::vector<Entry>& entries);

  size_t capacity_;
  mutable std::mutex mu_;
  std::list<Item> lru_;  // most recent first; guarded by mu_
  std::unordered_map<std::string, std::list<Item>::iterator> index_;  // guarded by mu_
  size_t bytes_ = 0;                                                  // guarded by mu_
};

}  // namespace pgbackfs
