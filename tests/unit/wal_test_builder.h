// Builds synthetic PostgreSQL 15 WAL for tests: a stream of records laid out as the server
// does it (8-byte aligned records, short page headers, a long header on each segment's first
// page, XLP_FIRST_IS_CONTRECORD and xlp_rem_len on continuation pages, CRC-32C over the data then
// the header), cut into segments.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "repo/crc32c.h"
#include "repo/wal_parser.h"

namespace pgbackfs {
namespace waltest {

inline void Put16(std::string* d, uint16_t v) { d->append(reinterpret_cast<const char*>(&v), 2); }
inline void Put32(std::string* d, uint32_t v) { d->append(reinterpret_cast<const char*>(&v), 4); }
inline void Put64(std::string* d, uint64_t v) { d->append(reinterpret_cast<const char*>(&v), 8); }

// Record bodies (everything after the 24-byte header).
inline std::string MainData(std::string_view main) {
  std::string b;
  if (main.empty()) return b;
  if (main.size() < 256) {
    b.push_back(static_cast<char>(0xFF));
    b.push_back(static_cast<char>(main.size()));
  } else {
    b.push_back(static_cast<char>(0xFE));
    Put32(&b, static_cast<uint32_t>(main.size()));
  }
  b.append(main);
  return b;
}

// A heap-like record with one block reference carrying `block_data` bytes, and main data.
inline std::string BlockRecordBody(std::string_view block_data, std::string_view main) {
  std::string b;
  b.push_back(0);     // block id 0
  b.push_back(0x20);  // BKPBLOCK_HAS_DATA, main fork
  Put16(&b, static_cast<uint16_t>(block_data.size()));
  b.append(12, '\x01');  // RelFileNode
  Put32(&b, 42);         // block number
  std::string m = MainData(main);
  // The data headers come before all payloads: block data, then main data.
  std::string out = b;
  if (!m.empty()) out += m.substr(0, m.size() - main.size());
  out.append(block_data);
  out.append(main);
  return out;
}

struct XactParts {
  std::vector<uint32_t> subxacts;
  int rels = 0;
  int stats = 0;
  int invals = 0;
  bool dbinfo = false;
  std::string gid;
};

// xl_xact_commit / xl_xact_abort main data, with an xinfo when anything beyond the time is set.
inline std::string XactMain(int64_t time, bool commit, uint32_t twophase_xid,
                            const XactParts& parts, bool* has_info) {
  std::string m;
  Put64(&m, static_cast<uint64_t>(time));
  uint32_t xinfo = 0;
  if (parts.dbinfo) xinfo |= 1u << 0;
  if (!parts.subxacts.empty()) xinfo |= 1u << 1;
  if (parts.rels) xinfo |= 1u << 2;
  if (commit && parts.invals) xinfo |= 1u << 3;
  if (twophase_xid) xinfo |= 1u << 4;
  if (!parts.gid.empty()) xinfo |= 1u << 7;
  if (parts.stats) xinfo |= 1u << 8;
  *has_info = xinfo != 0;
  if (!xinfo) return m;
  Put32(&m, xinfo);
  if (parts.dbinfo) {
    Put32(&m, 5);
    Put32(&m, 1663);
  }
  if (!parts.subxacts.empty()) {
    Put32(&m, static_cast<uint32_t>(parts.subxacts.size()));
    for (uint32_t x : parts.subxacts) Put32(&m, x);
  }
  if (parts.rels) {
    Put32(&m, static_cast<uint32_t>(parts.rels));
    m.append(12 * parts.rels, '\x07');
  }
  if (parts.stats) {
    Put32(&m, static_cast<uint32_t>(parts.stats));
    m.append(12 * parts.stats, '\x08');
  }
  if (commit && parts.invals) {
    Put32(&m, static_cast<uint32_t>(parts.invals));
    m.append(16 * parts.invals, '\x09');
  }
  if (twophase_xid) {
    Put32(&m, twophase_xid);
    if (!parts.gid.empty()) {
      m += parts.gid;
      m.push_back('\0');
    }
  }
  return m;
}

class WalBuilder {
 public:
  WalBuilder(uint32_t tli, uint64_t first_segno, uint64_t seg_size = 1 << 20,
             uint32_t page_size = 8192, uint64_t sysid = 7300000000000000001ull)
      : tli_(tli),
        seg_size_(seg_size),
        page_size_(page_size),
        sysid_(sysid),
        base_(first_segno * seg_size),
        pos_(base_) {}

  uint64_t pos() const { return pos_; }
  // Just past the last record's last byte (page headers inside it included, alignment not).
  uint64_t last_end() const { return last_end_; }
  uint64_t seg_size() const { return seg_size_; }
  uint32_t page_size() const { return page_size_; }
  uint32_t tli() const { return tli_; }
  void set_tli(uint32_t tli) { tli_ = tli; }
  // The next page header gets this flag (XLP_FIRST_IS_OVERWRITE_CONTRECORD).
  void set_next_page_flags(uint16_t flags) { next_page_flags_ = flags; }
  void set_prev(uint64_t prev) { prev_ = prev; }

  // Appends a record; returns its LSN.
  uint64_t Add(uint8_t rmid, uint8_t info, uint32_t xid, std::string_view body) {
    std::string rec;
    Put32(&rec, static_cast<uint32_t>(24 + body.size()));
    Put32(&rec, xid);
    Put64(&rec, prev_);
    rec.push_back(static_cast<char>(info));
    rec.push_back(static_cast<char>(rmid));
    rec.append(2, '\0');
    uint32_t crc = Crc32cExtend(kCrc32cInit, body.data(), body.size());
    crc = Crc32cFinish(Crc32cExtend(crc, rec.data(), 20));
    Put32(&rec, crc);
    rec.append(body);
    uint64_t lsn = pos_;
    if (pos_ % page_size_ == 0) lsn += HeaderSize(pos_);
    WriteRecordBytes(rec);
    prev_ = lsn;
    return lsn;
  }

  uint64_t Commit(uint32_t xid, int64_t time, const XactParts& parts = {}) {
    bool has_info;
    std::string m = XactMain(time, true, 0, parts, &has_info);
    return Add(1, has_info ? 0x80 : 0x00, xid, MainData(m));
  }
  uint64_t Abort(uint32_t xid, int64_t time, const XactParts& parts = {}) {
    bool has_info;
    std::string m = XactMain(time, false, 0, parts, &has_info);
    return Add(1, 0x20 | (has_info ? 0x80 : 0x00), xid, MainData(m));
  }
  uint64_t CommitPrepared(uint32_t prepared_xid, int64_t time, const XactParts& parts = {}) {
    bool has_info;
    std::string m = XactMain(time, true, prepared_xid, parts, &has_info);
    return Add(1, 0x30 | 0x80, 0, MainData(m));
  }
  uint64_t AbortPrepared(uint32_t prepared_xid, int64_t time, const XactParts& parts = {}) {
    bool has_info;
    std::string m = XactMain(time, false, prepared_xid, parts, &has_info);
    return Add(1, 0x40 | 0x80, 0, MainData(m));
  }
  uint64_t RestorePoint(const std::string& name, int64_t time) {
    std::string m;
    Put64(&m, static_cast<uint64_t>(time));
    std::string n = name;
    n.resize(64, '\0');
    m += n;
    return Add(0, 0x70, 0, MainData(m));
  }
  uint64_t Checkpoint(bool online, uint64_t redo, uint32_t this_tli, uint32_t prev_tli,
                      int64_t unix_time, uint64_t next_xid = 1000) {
    std::string m(88, '\0');
    std::memcpy(&m[0], &redo, 8);
    std::memcpy(&m[8], &this_tli, 4);
    std::memcpy(&m[12], &prev_tli, 4);
    m[16] = 1;
    std::memcpy(&m[24], &next_xid, 8);
    std::memcpy(&m[64], &unix_time, 8);
    return Add(0, online ? 0x10 : 0x00, 0, MainData(m));
  }
  uint64_t EndOfRecovery(int64_t time, uint32_t this_tli, uint32_t prev_tli) {
    std::string m;
    Put64(&m, static_cast<uint64_t>(time));
    Put32(&m, this_tli);
    Put32(&m, prev_tli);
    return Add(0, 0x90, 0, MainData(m));
  }
  uint64_t BackupEnd(uint64_t start) {
    std::string m;
    Put64(&m, start);
    return Add(0, 0x50, 0, MainData(m));
  }
  uint64_t OverwriteContrecord(uint64_t overwritten, int64_t time) {
    std::string m;
    Put64(&m, overwritten);
    Put64(&m, static_cast<uint64_t>(time));
    return Add(0, 0xD0, 0, MainData(m));
  }
  // A heap record of exactly `total` bytes (>= 32, a multiple of 8 is easiest to reason about).
  uint64_t Filler(uint32_t total, uint32_t xid = 0) {
    const uint32_t overhead = 24 + 2;  // header + short data header
    if (total < overhead + 1) total = overhead + 1;
    if (total - overhead < 256)
      return Add(10, 0x00, xid, MainData(std::string(total - overhead, 'f')));
    return Add(10, 0x00, xid, MainData(std::string(total - 24 - 5, 'F')));
  }
  // An XLOG_SWITCH record; the rest of the segment is left as zeros.
  uint64_t Switch() {
    uint64_t lsn = Add(0, 0x40, 0, "");
    pos_ = (pos_ + seg_size_ - 1) / seg_size_ * seg_size_;
    return lsn;
  }
  // Adds fillers until the next record starts `before_end` bytes before the end of the current
  // page (before_end a multiple of 8, at least 8, less than the page's room).
  void FillToPageOffset(uint32_t before_end) {
    for (int i = 0; i < 4; ++i) {
      uint64_t in_page = pos_ % page_size_;
      uint64_t room = in_page == 0 ? page_size_ - HeaderSize(pos_) : page_size_ - in_page;
      if (room == before_end) return;
      if (room >= before_end + 32) {
        Filler(static_cast<uint32_t>(room - before_end));
        return;
      }
      Filler(static_cast<uint32_t>(room + 64));  // spill into the next page and try again
    }
  }
  // Fills until the next record starts `before_end` bytes before the end of the segment.
  void FillToSegmentEnd(uint32_t before_end) {
    uint64_t seg_end = (pos_ / seg_size_ + 1) * seg_size_;
    while (seg_end - pos_ > page_size_ * 2) Filler(4000);
    while (seg_end - AlignUp(pos_) > page_size_) Filler(512);
    FillToPageOffset(before_end);
  }

  // The bytes of segment `segno` (zeros where nothing was written).
  std::string Segment(uint64_t segno) const {
    std::string s(seg_size_, '\0');
    uint64_t start = segno * seg_size_;
    if (start + seg_size_ > base_ && start < base_ + stream_.size()) {
      uint64_t from = std::max(start, base_);
      uint64_t to = std::min(start + seg_size_, base_ + stream_.size());
      std::memcpy(&s[from - start], stream_.data() + (from - base_), to - from);
    }
    return s;
  }
  std::string SegmentName(uint64_t segno) const {
    return WalSegmentName::FromSegNo(tli_, segno, seg_size_).ToString();
  }

 private:
  static uint64_t AlignUp(uint64_t v) { return (v + 7) & ~uint64_t{7}; }
  uint32_t HeaderSize(uint64_t at) const { return at % seg_size_ == 0 ? 40 : 24; }

  void Put(std::string_view bytes) {
    uint64_t off = pos_ - base_;
    if (stream_.size() < off) stream_.resize(off, '\0');
    stream_.resize(off);
    stream_.append(bytes);
    pos_ += bytes.size();
  }
  void PageHeader(uint32_t rem_len) {
    std::string h;
    bool is_long = pos_ % seg_size_ == 0;
    uint16_t info = (rem_len ? 0x0001 : 0) | (is_long ? 0x0002 : 0) | next_page_flags_;
    next_page_flags_ = 0;
    Put16(&h, 0xD110);
    Put16(&h, info);
    Put32(&h, tli_);
    Put64(&h, pos_);
    Put32(&h, rem_len);
    Put32(&h, 0);
    if (is_long) {
      Put64(&h, sysid_);
      Put32(&h, static_cast<uint32_t>(seg_size_));
      Put32(&h, page_size_);
    }
    Put(h);
  }
  void WriteRecordBytes(const std::string& rec) {
    size_t written = 0;
    while (written < rec.size()) {
      if (pos_ % page_size_ == 0)
        PageHeader(static_cast<uint32_t>(written ? rec.size() - written : 0));
      size_t room = page_size_ - pos_ % page_size_;
      size_t n = std::min(room, rec.size() - written);
      Put(std::string_view(rec).substr(written, n));
      written += n;
    }
    last_end_ = pos_;
    uint64_t aligned = AlignUp(pos_);
    if (aligned != pos_) Put(std::string(aligned - pos_, '\0'));
  }

  uint32_t tli_;
  uint64_t seg_size_;
  uint32_t page_size_;
  uint64_t sysid_;
  uint64_t base_;
  uint64_t pos_;
  uint64_t last_end_ = 0;
  uint64_t prev_ = 0;
  uint16_t next_page_flags_ = 0;
  std::string stream_;
};

}  // namespace waltest
}  // namespace pgbackfs
