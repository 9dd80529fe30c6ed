// RocksDB implementation of KvStore. The only file that includes RocksDB headers.
#include <rocksdb/db.h>
#include <rocksdb/filter_policy.h>
#include <rocksdb/table.h>
#include <rocksdb/utilities/options_util.h>

#include <array>
#include <memory>

#include "repo/kv.h"

namespace pgbackfs {

const char* CfName(Cf cf) {
  switch (cf) {
    case Cf::kMeta:
      return "default";
    case Cf::kChunks:
      return "chunks";
    case Cf::kWal:
      return "wal";
    case Cf::kOverlay:
      return "overlay";
    case Cf::kCount:
      break;
  }
  return "?";
}

namespace {

Status Convert(const rocksdb::Status& s, const char* what) {
  if (s.ok()) return Status::OK();
  std::string msg = std::string(what) + ": " + s.ToString();
  if (s.IsNotFound()) return Status::NotFound(msg);
  if (s.IsCorruption()) return Status::Corruption(msg);
  if (s.IsNoSpace() || s.subcode() == rocksdb::Status::kNoSpace) return Status::NoSpace(msg);
  if (s.IsBusy() || s.IsTimedOut() || s.IsTryAgain()) return Status::Busy(msg);
  if (s.IsInvalidArgument()) return Status::InvalidArgument(msg);
  if (s.IsNotSupported()) return Status::NotSupported(msg);
  return Status::IOError(msg);
}

class RocksIterator : public KvIterator {
 public:
  explicit RocksIterator(rocksdb::Iterator* it) : it_(it) {}
  void Seek(std::string_view key) override { it_->Seek(rocksdb::Slice(key.data(), key.size())); }
  bool Valid() const override { return it_->Valid(); }
  void Next() override { it_->Next(); }
  std::string_view key() const override {
    rocksdb::Slice k = it_->key();
    return {k.data(), k.size()};
  }
  std::string_view value() const override {
    rocksdb::Slice v = it_->value();
    return {v.data(), v.size()};
  }
  Status status() const override { return Convert(it_->status(), "iterate"); }

 private:
  std::unique_ptr<rocksdb::Iterator> it_;
};

class RocksStore : public KvStore {
 public:
  ~RocksStore() override {
    for (auto* h : handles_) {
      if (h) db_->DestroyColumnFamilyHandle(h);
    }
    if (db_) {
      db_->Close();
      delete db_;
    }
  }

  static Result<std::unique_ptr<KvStore>> Open(const std::string& dir, const KvOptions& options) {
    auto store = std::unique_ptr<RocksStore>(new RocksStore());
    rocksdb::DBOptions db_options;
    db_options.create_if_missing = options.create_if_missing;
    db_options.create_missing_column_families = true;
    db_options.paranoid_checks = true;
    db_options.max_background_jobs = 2;
    db_options.bytes_per_sync = 1 << 20;
    db_options.max_total_wal_size = 256 << 20;
    db_options.keep_log_file_num = 4;
    db_options.max_manifest_file_size = 64 << 20;
    // Short-lived commands (archive-push per segment) must not open every SST file at start-up.
    db_options.max_open_files = 512;
    db_options.skip_stats_update_on_db_open = true;
    db_options.skip_checking_sst_file_sizes_on_db_open = true;

    auto cache = rocksdb::NewLRUCache(options.block_cache_bytes);
    auto table_options = [&](size_t block_size) {
      rocksdb::BlockBasedTableOptions t;
      t.block_cache = cache;
      t.block_size = block_size;
      t.filter_policy.reset(rocksdb::NewBloomFilterPolicy(10, false));
      t.cache_index_and_filter_blocks = true;
      t.pin_l0_filter_and_index_blocks_in_cache = true;
      t.format_version = 5;
      return t;
    };

    std::vector<rocksdb::ColumnFamilyDescriptor> cfs;
    for (int i = 0; i < static_cast<int>(Cf::kCount); ++i) {
      Cf cf = static_cast<Cf>(i);
      rocksdb::ColumnFamilyOptions cfo;
      if (cf == Cf::kChunks || cf == Cf::kWal || cf == Cf::kOverlay) {
        // Values are already zstd-compressed chunks: compressing SST blocks again wastes CPU.
        cfo.compression = rocksdb::kNoCompression;
        cfo.write_buffer_size = 64 << 20;
        cfo.target_file_size_base = 64 << 20;
        cfo.max_bytes_for_level_base = 512 << 20;
        cfo.table_factory.reset(rocksdb::NewBlockBasedTableFactory(table_options(32 << 10)));
        // Most lookups during a backup ask for chunks that are not stored yet: a memtable bloom
        // filter answers those without walking the skip list.
        cfo.memtable_whole_key_filtering = true;
        cfo.memtable_prefix_bloom_size_ratio = 0.05;
      } else {
        cfo.compression = rocksdb::kZSTD;
        cfo.table_factory.reset(rocksdb::NewBlockBasedTableFactory(table_options(4 << 10)));
      }
      cfs.emplace_back(CfName(cf), cfo);
    }
    rocksdb::Status s = rocksdb::DB::Open(db_options, dir, cfs, &store->handles_, &store->db_);
    if (!s.ok()) {
      if (s.IsIOError() && s.ToString().find("lock") != std::string::npos) {
        return Status::Busy("repository database '" + dir + "' is in use by another process");
      }
      return Convert(s, ("open rocksdb '" + dir + "'").c_str());
    }
    return std::unique_ptr<KvStore>(std::move(store));
  }

  Status Get(Cf cf, std::string_view key, std::string* value) override {
    rocksdb::PinnableSlice pinned;
    rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), handle(cf),
                                 rocksdb::Slice(key.data(), key.size()), &pinned);
    if (s.IsNotFound()) return Status::NotFound("key not found");
    if (!s.ok()) return Convert(s, "get");
    value->assign(pinned.data(), pinned.size());
    return Status::OK();
  }

  Status Write(const KvBatch& batch, bool sync) override {
    rocksdb::WriteBatch wb;
    for (const auto& op : batch.ops()) {
      rocksdb::Status s =
          op.is_delete ? wb.Delete(handle(op.cf), op.key) : wb.Put(handle(op.cf), op.key, op.value);
      if (!s.ok()) return Convert(s, "batch");
    }
    rocksdb::WriteOptions wo;
    wo.sync = sync;
    return Convert(db_->Write(wo, &wb), "write");
  }

  std::unique_ptr<KvIterator> NewIterator(Cf cf) override {
    rocksdb::ReadOptions ro;
    ro.fill_cache = cf != Cf::kChunks;
    return std::make_unique<RocksIterator>(db_->NewIterator(ro, handle(cf)));
  }

  Status Sync() override { return Convert(db_->SyncWAL(), "sync wal"); }

  Status Flush() override {
    rocksdb::FlushOptions fo;
    fo.wait = true;
    return Convert(db_->Flush(fo, handles_), "flush");
  }

  Status Compact(Cf cf) override {
    rocksdb::CompactRangeOptions co;
    co.bottommost_level_compaction = rocksdb::BottommostLevelCompaction::kForce;
    return Convert(db_->CompactRange(co, handle(cf), nullptr, nullptr), "compact");
  }

  uint64_t ApproximateSize(Cf cf) override {
    uint64_t live = 0;
    db_->GetIntProperty(handle(cf), "rocksdb.live-sst-files-size", &live);
    uint64_t mem = 0;
    db_->GetIntProperty(handle(cf), "rocksdb.cur-size-all-mem-tables", &mem);
    return live + mem;
  }

 private:
  RocksStore() = default;
  rocksdb::ColumnFamilyHandle* handle(Cf cf) { return handles_[static_cast<int>(cf)]; }

  rocksdb::DB* db_ = nullptr;
  std::vector<rocksdb::ColumnFamilyHandle*> handles_;
};

}  // namespace

Result<std::unique_ptr<KvStore>> OpenRocksDbStore(const std::string& dir,
                                                  const KvOptions& options) {
  return RocksStore::Open(dir, options);
}

}  // namespace pgbackfs
