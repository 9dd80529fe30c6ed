#include "fs/dir_cache.h"

#include <algorithm>

namespace pgbackfs {

std::string DirCache::Key(const Entry& dir) {
  std::string key;
  PutFixed64(&key, dir.data.size);
  key.push_back(static_cast<char>(dir.data.root.height));
  key.append(dir.data.root.id.AsKey());
  return key;
}

size_t DirCache::Charge(const std::vector<Entry>& entries) {
  size_t charge = sizeof(std::vector<Entry>) + 64;
  for (const Entry& e : entries) charge += sizeof(Entry) + e.name.size() + e.link_target.size();
  return charge;
}

Result<DirCache::Listing> DirCache::Get(const Entry& dir,
                                        const std::function<Status(std::vector<Entry>*)>& load) {
  std::string key = Key(dir);
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = index_.find(key);
    if (it != index_.end()) {
      lru_.splice(lru_.begin(), lru_, it->second);
      return it->second->listing;
    }
  }
  auto entries = std::make_shared<std::vector<Entry>>();
  RETURN_IF_ERROR(load(entries.get()));
  Listing listing = std::move(entries);
  size_t charge = Charge(*listing);
  if (charge > capacity_) return listing;
  std::lock_guard<std::mutex> lock(mu_);
  if (index_.count(key)) return listing;  // another thread loaded it meanwhile
  lru_.push_front(Item{key, listing, charge});
  index_[key] = lru_.begin();
  bytes_ += charge;
  while (bytes_ > capacity_ && !lru_.empty()) {
    bytes_ -= lru_.back().charge;
    index_.erase(lru_.back().key);
    lru_.pop_back();
  }
  return listing;
}

const Entry* DirCache::Find(const std::vector<Entry>& listing, const std::string& name) {
  auto it = std::lower_bound(listing.begin(), listing.end(), name,
                             [](const Entry& e, const std::string& n) { return e.name < n; });
  if (it == listing.end() || it->name != name) return nullptr;
  return &*it;
}

size_t DirCache::bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return bytes_;
}

size_t DirCache::count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return index_.size();
}

}  // namespace pgbackfs
