// In-memory KvStore for unit tests: same contract as RocksDB, no durability.
#include <iterator>
#include <map>
#include <mutex>

#include "repo/kv.h"

namespace pgbackfs {
namespace {

using Table = std::map<std::string, std::string, std::less<>>;

// Iterates a copy taken at creation: a consistent view, as RocksDB's implicit snapshot gives.
class MemoryIterator : public KvIterator {
 public:
  explicit MemoryIterator(Table copy) : table_(std::move(copy)), it_(table_.begin()) {}
  void Seek(std::string_view key) override { it_ = table_.lower_bound(key); }
  void SeekToLast() override { it_ = table_.empty() ? table_.end() : std::prev(table_.end()); }
  bool Valid() const override { return it_ != table_.end(); }
  void Next() override { ++it_; }
  std::string_view key() const override { return it_->first; }
  std::string_view value() const override { return it_->second; }
  Status status() const override { return Status::OK(); }

 private:
  Table table_;
  Table::const_iterator it_;
};

class MemoryStore : public KvStore {
 public:
  Status Get(Cf cf, std::string_view key, std::string* value) override {
    std::lock_guard<std::mutex> lock(mu_);
    const Table& t = tables_[static_cast<int>(cf)];
    auto it = t.find(key);
    if (it == t.end()) return Status::NotFound("key not found");
    *value = it->second;
    return Status::OK();
  }
  Status Write(const KvBatch& batch, bool /*sync*/) override {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& op : batch.ops()) {
      Table& t = tables_[static_cast<int>(op.cf)];
      if (op.is_delete) {
        t.erase(op.key);
      } else {
        t[op.key] = op.value;
      }
    }
    return Status::OK();
  }
  std::unique_ptr<KvIterator> NewIterator(Cf cf) override {
    std::lock_guard<std::mutex> lock(mu_);
    return std::make_unique<MemoryIterator>(tables_[static_cast<int>(cf)]);
  }
  Status Sync() override { return Status::OK(); }
  Status Flush() override { return Status::OK(); }
  Status Compact(Cf) override { return Status::OK(); }
  uint64_t ApproximateSize(Cf cf) override {
    std::lock_guard<std::mutex> lock(mu_);
    uint64_t n = 0;
    for (const auto& [k, v] : tables_[static_cast<int>(cf)]) n += k.size() + v.size();
    return n;
  }

 private:
  std::mutex mu_;
  Table tables_[static_cast<int>(Cf::kCount)];
};

}  // namespace

std::unique_ptr<KvStore> NewMemoryStore() { return std::make_unique<MemoryStore>(); }

}  // namespace pgbackfs
