// Fuzzes the decoders of stored snapshot data (repo/snapshot.h, repo/chunk_tree.h,
// repo/chunk_store.h, repo/clone.h): what a damaged or hostile repository hands them.
//
// Input: byte 0 picks the decoder, the rest is its input:
//   0  DecodeDirectory (a directory listing); a listing that decodes must encode to the same
//      bytes, with valid names in strict order
//   1  SnapshotInfo::Decode (the JSON snapshot record); a record that decodes must survive
//      Encode + Decode unchanged
//   2  CloneInfo::Decode (the JSON clone record)
//   3  ChunkStore::DecodeAndVerify (a stored chunk: codec byte, zstd frame)
//   4  TreeReader over a chunk tree whose root index block is the input: u8 height, u64 file
//      size, u64 read offset, then the block's bytes (stored as a real chunk)
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "repo/chunk_store.h"
#include "repo/chunk_tree.h"
#include "repo/clone.h"
#include "repo/coding.h"
#include "repo/kv.h"
#include "repo/snapshot.h"
#include "tests/fuzz/fuzz_util.h"

namespace pgbackfs {
namespace {

constexpr size_t kChunkSize = 8192;

struct Store {
  std::unique_ptr<KvStore> kv = NewMemoryStore();
  ChunkStore chunks{kv.get(), 1, 1 << 20, /*train_dictionaries=*/false};
};

// One store for the whole run: a ChunkStore starts worker threads.
Store* TheStore() {
  static Store* store = new Store;
  return store;
}

void CheckName(const std::string& name) {
  FUZZ_CHECK(!name.empty());
  FUZZ_CHECK(name != "." && name != "..");
  FUZZ_CHECK(name.find('/') == std::string::npos);
  FUZZ_CHECK(name.find('\0') == std::string::npos);
}

void FuzzDirectory(std::string_view in) {
  std::vector<Entry> entries;
  if (!DecodeDirectory(in, &entries).ok()) return;
  for (size_t i = 0; i < entries.size(); ++i) {
    CheckName(entries[i].name);
    if (i > 0) FUZZ_CHECK(entries[i - 1].name < entries[i].name);
  }
  std::string again;
  FUZZ_CHECK(EncodeDirectory(entries, &again).ok());
  FUZZ_CHECK(again == in);
}

void FuzzSnapshotInfo(std::string_view in) {
  SnapshotInfo info;
  if (!SnapshotInfo::Decode(in, &info).ok()) return;
  SnapshotInfo again;
  Status s = SnapshotInfo::Decode(info.Encode(), &again);
  FUZZ_CHECK_MSG(s.ok(), s.ToString());
  FUZZ_CHECK(again.ToJson() == info.ToJson());
  FUZZ_CHECK(again.root.mode == info.root.mode && again.root.mtime_sec == info.root.mtime_sec &&
             again.root.data.size == info.root.data.size &&
             again.root.data.root == info.root.data.root);
}

void FuzzCloneInfo(std::string_view in) {
  CloneInfo info;
  if (!CloneInfo::Decode(in, &info).ok()) return;
  (void)info.ToJson().dump();
}

void FuzzChunk(Store* store, std::string_view in) {
  std::string out;
  // The id of the input itself: a raw chunk ("\0" + bytes) whose bytes hash to it passes.
  ChunkId id = ComputeChunkId(in.empty() ? in : in.substr(1));
  Status s = store->chunks.DecodeAndVerify(id, in, &out);
  if (s.ok()) FUZZ_CHECK(ComputeChunkId(out) == id);
}

void FuzzTree(Store* store, std::string_view in) {
  Decoder d(in);
  uint8_t height;
  uint64_t size, offset;
  if (!d.GetFixed8(&height) || !d.GetFixed64(&size) || !d.GetFixed64(&offset)) return;
  std::string_view block = in.substr(17);
  if (height > 8) return;  // Entry::DecodeFrom refuses taller trees
  ChunkWriter writer(&store->chunks);
  Result<ChunkId> id = writer.Add(block);
  FUZZ_CHECK(id.ok());
  FUZZ_CHECK(writer.Flush(false).ok());

  FileData file;
  file.size = size;
  file.root.height = height;
  file.root.id = *id;
  TreeReader reader(&store->chunks, file, kChunkSize);
  uint64_t visited = 0;
  uint64_t expected_next = 0;
  Status s = reader.ForEachLeaf([&](uint64_t index, const ChunkId&) {
    FUZZ_CHECK(index == expected_next);
    FUZZ_CHECK(index < reader.leaf_count());
    ++expected_next;
    if (++visited > 4096) return Status::Busy("enough");
    return Status::OK();
  });
  if (s.ok()) FUZZ_CHECK(visited == reader.leaf_count());
  if (reader.leaf_count() > 0) {
    uint64_t index = offset % reader.leaf_count();
    Result<ChunkId> leaf = reader.Leaf(index);
    (void)leaf;
    FUZZ_CHECK(reader.LeafSize(index) <= kChunkSize);
  }
  std::string out;
  size_t len = static_cast<size_t>(offset >> 48);  // up to 64 KiB
  s = reader.Read(size ? offset % size : offset, len, &out);
  if (s.ok()) FUZZ_CHECK(out.size() <= len);

  // The store lives as long as the process: forget the block again.
  KvBatch batch;
  batch.Delete(Cf::kChunks, id->AsKey());
  FUZZ_CHECK(store->kv->Write(batch, false).ok());
}

}  // namespace
}  // namespace pgbackfs

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace pgbackfs;
  static bool init = (fuzz::QuietLogs(), true);
  (void)init;
  if (size < 1) return 0;
  std::string_view in(reinterpret_cast<const char*>(data) + 1, size - 1);
  switch (data[0] % 5) {
    case 0:
      FuzzDirectory(in);
      break;
    case 1:
      FuzzSnapshotInfo(in);
      break;
    case 2:
      FuzzCloneInfo(in);
      break;
    case 3:
      FuzzChunk(TheStore(), in);
      break;
    case 4:
      FuzzTree(TheStore(), in);
      break;
  }
  return 0;
}
