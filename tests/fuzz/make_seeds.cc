// Writes the seed corpora of the fuzz targets (tests/fuzz/corpus/<target>/) with the project's
// own encoders, so that the seeds are what pgbackfs really writes and reads:
//   make_seeds OUT_DIR WAL_HEAD TAR_FILE...
// WAL_HEAD is tests/unit/testdata/pg15-000000010000000000000009.head (a real PG15 segment's
// start); the tar files are small archives made by GNU tar (tests/fuzz/make_seeds.sh).
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "repo/chunk_store.h"
#include "repo/clone.h"
#include "repo/coding.h"
#include "repo/kv.h"
#include "repo/snapshot.h"
#include "repo/wal_archive.h"
#include "repo/wal_index.h"
#include "repo/wal_parser.h"
#include "tests/unit/wal_test_builder.h"
#include "tools/control.h"

namespace fs = std::filesystem;
using namespace pgbackfs;

namespace {

std::string out_dir;

void Write(const std::string& target, const std::string& name, const std::string& bytes) {
  fs::create_directories(out_dir + "/" + target);
  std::ofstream f(out_dir + "/" + target + "/" + name, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string ReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

std::string Byte(int b) { return std::string(1, static_cast<char>(b)); }

std::string Message(const std::string& m) {
  std::string out;
  PutFixed16(&out, static_cast<uint16_t>(m.size()));
  return out + m;
}

void TarSeeds(const std::vector<std::string>& tars) {
  const std::string manifest =
      "{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n\"Files\": [\n"
      "{ \"Path\": \"PG_VERSION\", \"Size\": 3, \"Last-Modified\": \"2026-11-22 02:19:46 GMT\", "
      "\"Checksum-Algorithm\": \"CRC32C\", \"Checksum\": \"c4f5b4c3\" }\n],\n"
      "\"WAL-Ranges\": [\n{ \"Timeline\": 1, \"Start-LSN\": \"0/2000028\", \"End-LSN\": "
      "\"0/2000100\" }\n],\n\"Manifest-Checksum\": \"0123456789abcdef\"}\n";
  for (const std::string& path : tars) {
    std::string tar = ReadFile(path);
    std::string name = fs::path(path).stem().string();
    Write("fuzz_tar", name, Byte(0) + tar);
    Write("fuzz_tar", name + "-cut7", Byte(7) + tar);
    // The COPY stream BASE_BACKUP sends: new archive, data in pieces, progress, the manifest.
    std::string stream = Message(std::string("nbase.tar\0\0", 11));
    for (size_t off = 0; off < tar.size(); off += 1000)
      stream += Message("d" + tar.substr(off, 1000));
    stream += Message(std::string("p\0\0\0\0\0\0\x10\0", 9));
    stream += Message("m");
    stream += Message("d" + manifest);
    Write("fuzz_backup_stream", name, stream);
  }
}

void SnapshotSeeds() {
  std::unique_ptr<KvStore> kv = NewMemoryStore();
  ChunkStore store(kv.get(), 3, 1 << 20, false);
  SnapshotBuilder builder(&store, 8192);
  (void)builder.AddDirectory("base", 0700, 1700000000);
  (void)builder.AddDirectory("base/1", 0700, 1700000000);
  (void)builder.AddSmallFile("PG_VERSION", 0600, 1700000001, "15\n");
  (void)builder.AddSmallFile("base/1/1259", 0600, 1700000002, std::string(20000, 'x'));
  (void)builder.AddSymlink("pg_tblspc_link", "/var/lib/postgresql/ts", 1700000003);
  Result<Entry> root = builder.Finish();
  SnapshotReader reader(&store, 8192);
  std::vector<Entry> entries;
  (void)reader.ReadDir(*root, &entries);
  std::string dir;
  (void)EncodeDirectory(entries, &dir);
  Write("fuzz_snapshot", "dir-root", Byte(0) + dir);
  std::vector<Entry> empty;
  std::string empty_dir;
  (void)EncodeDirectory(empty, &empty_dir);
  Write("fuzz_snapshot", "dir-empty", Byte(0) + empty_dir);

  SnapshotInfo info;
  info.id = "20261122T021946Z";
  info.label = "nightly";
  info.start_lsn = "0/2000028";
  info.end_lsn = "0/2000100";
  info.timeline = 1;
  info.pg_version = "15.18";
  info.pg_version_num = 150018;
  info.system_identifier = "7300000000000000001";
  info.root = *root;
  Write("fuzz_snapshot", "snapshot-info", Byte(1) + info.Encode());

  CloneInfo clone;
  clone.name = "tuesday";
  clone.id = 7;
  clone.snapshot = info.id;
  clone.extra = {{"port", 5433}, {"recovery_target_time", "2026-11-22 10:01:00+00"}};
  Write("fuzz_snapshot", "clone-info", Byte(2) + clone.ToJson().dump());

  std::string page(8192, '\0');
  for (size_t i = 0; i < page.size(); ++i) page[i] = static_cast<char>(i * 7 % 251);
  Write("fuzz_snapshot", "chunk-zstd", Byte(3) + store.Encode(page));
  Write("fuzz_snapshot", "chunk-raw", Byte(3) + Byte(0) + "raw chunk");

  // A tree of height 1 over three leaves (two zero, one real): u8 height, u64 size, u64 offset.
  ChunkId leaf = ComputeChunkId(page);
  std::string block(16, '\0');
  block += std::string(leaf.AsKey());
  block += std::string(16, '\0');
  std::string tree = Byte(4) + Byte(1);
  PutFixed64(&tree, 3 * 8192 - 100);
  PutFixed64(&tree, (uint64_t{4096} << 48) | 8000);
  Write("fuzz_snapshot", "tree-h1", tree + block);
}

void WalSeeds(const std::string& head_path) {
  std::string head = ReadFile(head_path);
  // Flags: bit 0 tolerant, bit 1 name from header, bit 2 .partial, bit 3 continuation, 4-7 pieces.
  Write("fuzz_wal_segment", "real-3pages-tolerant", Byte(0x03) + head.substr(0, 3 * 8192));
  Write("fuzz_wal_segment", "real-2pages-cut", Byte(0x73) + head.substr(0, 2 * 8192));
  Write("fuzz_wal_segment", "real-4pages-partial", Byte(0x07) + head.substr(0, 4 * 8192));

  // Synthetic: every event type, a record across a page and one across a segment boundary.
  waltest::WalBuilder b(1, 1, 1 << 20);
  b.Commit(700, UnixSecondsToTimestampTz(1700000000));
  b.Abort(701, UnixSecondsToTimestampTz(1700000001));
  b.CommitPrepared(702, UnixSecondsToTimestampTz(1700000002), {{703}, 1, 0, 1, true, "gid"});
  b.RestorePoint("before_delete", UnixSecondsToTimestampTz(1700000003));
  b.Checkpoint(true, 0x1000028, 1, 1, 1700000004);
  b.EndOfRecovery(UnixSecondsToTimestampTz(1700000005), 2, 1);
  b.BackupEnd(0x1000028);
  b.Filler(9000);
  b.FillToSegmentEnd(100);
  b.Filler(300);  // spans into the next segment
  b.Commit(704, UnixSecondsToTimestampTz(1700000006));
  b.Switch();
  std::string seg1 = b.Segment(1), seg2 = b.Segment(2);
  Write("fuzz_wal_segment", "synthetic-events", Byte(0x03) + seg1.substr(0, 3 * 8192));
  // The end of the first segment, as a .partial ending inside the record that continues.
  Write("fuzz_wal_segment", "synthetic-tail", Byte(0x07) + seg1.substr(0, 2 * 8192));
  WalParser p(b.SegmentName(1), {}, [](const WalEvent&) { return Status::OK(); });
  (void)p.Feed(seg1);
  (void)p.Finish();
  if (p.continuation()) {
    std::string cont;
    p.continuation()->EncodeTo(&cont);
    std::string seed = Byte(0x0B);
    PutFixed16(&seed, static_cast<uint16_t>(cont.size()));
    Write("fuzz_wal_segment", "synthetic-continued", seed + cont + seg2.substr(0, 2 * 8192));
    Write("fuzz_wal_index", "continuation", Byte(6) + cont);
  }

  // fuzz_wal_index: byte 0 picks the parser.
  std::string tli;
  PutFixed32(&tli, 3);
  Write("fuzz_wal_index", "history",
        Byte(0) + tli +
            "1\t0/3000000\tno recovery target specified\n\n# comment\n2\t0/5000A8\tat restore "
            "point \"x\"\n");
  Write("fuzz_wal_index", "name-segment", Byte(1) + "000000010000000000000009");
  Write("fuzz_wal_index", "name-partial", Byte(1) + "000000020000000100000042.partial");
  Write("fuzz_wal_index", "name-history", Byte(1) + "00000002.history");
  Write("fuzz_wal_index", "name-backup", Byte(1) + "000000010000000000000002.00000028.backup");
  Write("fuzz_wal_index", "lsn", Byte(2) + "16/B374D848");
  Write("fuzz_wal_index", "time", Byte(2) + "2026-11-22 02:19:46.038306 UTC");
  Write("fuzz_wal_index", "page-header", Byte(3) + head.substr(0, 40));

  WalParser real("000000010000000000000009", {.tolerant = true}, [&](const WalEvent& e) {
    std::string enc;
    e.EncodeTo(&enc);
    Write("fuzz_wal_index", std::string("event-") + WalEventTypeName(e.type), Byte(5) + enc);
    return Status::OK();
  });
  (void)real.Feed(head);
  (void)real.Finish();
  WalSegmentRecord rec;
  rec.ok = true;
  rec.seg_size = 1 << 20;
  rec.start_lsn = 0x9000000;
  rec.first_lsn = 0x9000028;
  rec.last_lsn = 0x902A000;
  rec.end_lsn = 0x902A018;
  rec.records = 220;
  rec.commits = 5;
  std::string enc;
  rec.EncodeTo(&enc);
  Write("fuzz_wal_index", "segment-record", Byte(4) + enc);
  TimelineHistory h;
  (void)TimelineHistory::Parse(3, "1\t0/3000000\treason\n2\t0/5000000\tother\n", &h);
  enc.clear();
  h.EncodeTo(&enc);
  Write("fuzz_wal_index", "history-record", Byte(7) + enc);
  WalFileInfo wf;
  wf.kind = WalFileKind::kSegment;
  wf.data.size = 1 << 20;
  wf.data.root.height = 1;
  wf.archived_time = 1700000000;
  enc.clear();
  wf.EncodeTo(&enc);
  Write("fuzz_wal_index", "archive-record", Byte(8) + enc);
}

void ControlSeeds() {
  ControlRequest req;
  req.args = {"pgbackfs", "list", "/backup/repo", "--json"};
  req.cwd = "/root";
  Write("fuzz_control", "request-list", Byte(0) + req.Encode());
  req.args = {"pgbackfs", "clone", "create", "/backup/repo", "tuesday", "--from", "latest"};
  Write("fuzz_control", "request-clone", Byte(0) + req.Encode());
  Write("fuzz_control", "reply", Byte(1) + EncodeControlReply(2));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: make_seeds OUT_DIR WAL_HEAD [TAR...]\n");
    return 2;
  }
  out_dir = argv[1];
  TarSeeds(std::vector<std::string>(argv + 3, argv + argc));
  SnapshotSeeds();
  WalSeeds(argv[2]);
  ControlSeeds();
  return 0;
}
