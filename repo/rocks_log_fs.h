// A RocksDB file system layer that keeps the write-ahead logs' next megabytes written ahead.
// Internal to repo/ (the RocksDB store, repo/kv_rocksdb.cc).
#pragma once

#include <rocksdb/file_system.h>

#include <memory>

namespace pgbackfs {

// Wraps `base`. Each write-ahead log (NNNNNN.log) that RocksDB syncs gets zeros written and made
// durable ahead of its end, in steps of `step` bytes, by a background thread. A log append then
// overwrites blocks the file already has, and the fdatasync of a synced write writes the data
// only, not also the inode for a grown size: 143 against 245 µs for a 16 KiB append on this
// project's machines (ext4). That is what RocksDB's own log recycling is for, but RocksDB turns
// recycling off with point-in-time recovery, the mode the store needs.
//
// The zeros are what a preallocated log looks like: RocksDB's log reader skips them at recovery
// as it skips the rest of a block after a zero record header, and reads to the end of the file.
// A log is cut back to what was appended when RocksDB closes it. A log that is only appended to,
// or takes more than 1 MiB between syncs (a backup's bulk writes, a pushed WAL segment), gets no
// zeros: there the data dominates each fdatasync, and zeros would add to what it writes.
std::shared_ptr<rocksdb::FileSystem> NewZeroAheadLogFs(std::shared_ptr<rocksdb::FileSystem> base,
                                                       uint64_t step = 8 << 20);

}  // namespace pgbackfs
