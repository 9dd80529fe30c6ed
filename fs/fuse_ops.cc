#include "fs/fuse_ops.h"

#include <cerrno>
#include <ctime>
#include <string>
#include <vector>

#include "fs/filesystem.h"

namespace pgbackfs {

namespace {

constexpr unsigned kMaxRequest = 1 << 20;  // libfuse derives max_pages (256) from max_write

Filesystem* Fs(fuse_req_t req) { return static_cast<Filesystem*>(fuse_req_userdata(req)); }
Filesystem* Fs(void* userdata) { return static_cast<Filesystem*>(userdata); }

void Want(fuse_conn_info* conn, unsigned cap) {
  if (conn->capable & cap) conn->want |= cap;
}

fuse_entry_param ToParam(const EntryOut& out) {
  fuse_entry_param e{};
  e.ino = out.ino;
  e.generation = 1;  // inode numbers are never reused within a mount
  e.attr = out.attr;
  e.attr_timeout = out.attr_timeout;
  e.entry_timeout = out.entry_timeout;
  return e;
}

void SetOpen(const OpenOut& out, fuse_file_info* fi) {
  fi->fh = out.fh;
  fi->keep_cache = out.keep_cache;
  fi->direct_io = out.direct_io;
  fi->noflush = out.noflush;
}

void Init(void* userdata, fuse_conn_info* conn) {
  conn->max_write = kMaxRequest;
  conn->max_readahead = 4 * kMaxRequest;  // in 1 MiB requests, several in flight (fs/mount.cc)
  conn->max_background = 64;
  conn->congestion_threshold = 48;
  Want(conn, FUSE_CAP_ASYNC_READ);
  Want(conn, FUSE_CAP_ATOMIC_O_TRUNC);  // cp over a WAL file: no separate truncate
  Want(conn, FUSE_CAP_READDIRPLUS);
  conn->want &= ~FUSE_CAP_READDIRPLUS_AUTO;
  Want(conn, FUSE_CAP_PARALLEL_DIROPS);
  Want(conn, FUSE_CAP_CACHE_SYMLINKS);
  // Clone files: writes land in the page cache and reach the clone in large batches, on fsync,
  // close or the kernel's own writeback (fs/README.md, "Clones"). WAL files being archived are
  // direct_io, so their writes still reach the WalWriter before flush (invariant 1).
  if (Fs(userdata)->options().writeback_cache) {
    Want(conn, FUSE_CAP_WRITEBACK_CACHE);
  } else {
    conn->want &= ~FUSE_CAP_WRITEBACK_CACHE;
  }
  // Every change to a file's content reaches it through this mount's page cache (snapshots and
  // archived WAL never change), so the page cache is never stale. With auto_inval_data the kernel
  // would drop a clone file's whole cache each time it sees the mtime that the file's own writes
  // moved: a scan that sets hint bits would re-read everything.
  conn->want &= ~FUSE_CAP_AUTO_INVAL_DATA;
}

void Lookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
  EntryOut out;
  int err = Fs(req)->Lookup(parent, name, &out);
  if (err) {
    fuse_reply_err(req, err);  // an error reply leaves no negative entry in the kernel's cache
    return;
  }
  fuse_entry_param e = ToParam(out);
  fuse_reply_entry(req, &e);
}

void Forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup) {
  Fs(req)->Forget(ino, nlookup);
  fuse_reply_none(req);
}

void ForgetMulti(fuse_req_t req, size_t count, fuse_forget_data* forgets) {
  for (size_t i = 0; i < count; ++i) Fs(req)->Forget(forgets[i].ino, forgets[i].nlookup);
  fuse_reply_none(req);
}

void GetAttr(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  struct stat st;
  double timeout;
  int err = Fs(req)->GetAttr(ino, &st, &timeout);
  if (err) {
    fuse_reply_err(req, err);
    return;
  }
  fuse_reply_attr(req, &st, timeout);
}

void SetAttr(fuse_req_t req, fuse_ino_t ino, struct stat* attr, int to_set, fuse_file_info* fi) {
  AttrChange change;
  if (to_set & FUSE_SET_ATTR_SIZE) change.size = static_cast<uint64_t>(attr->st_size);
  if (to_set & FUSE_SET_ATTR_MODE) change.mode = attr->st_mode;
  if (to_set & FUSE_SET_ATTR_UID) change.uid = attr->st_uid;
  if (to_set & FUSE_SET_ATTR_GID) change.gid = attr->st_gid;
  if (to_set & FUSE_SET_ATTR_MTIME_NOW) {
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    change.mtime = now;
  } else if (to_set & FUSE_SET_ATTR_MTIME) {
    change.mtime = attr->st_mtim;
  }
  // atime is not kept (it shows the mtime).
  change.fh = fi ? fi->fh : 0;
  struct stat st;
  double timeout;
  int err = Fs(req)->SetAttr(ino, change, &st, &timeout);
  if (err) {
    fuse_reply_err(req, err);
    return;
  }
  fuse_reply_attr(req, &st, timeout);
}

void ReadLink(fuse_req_t req, fuse_ino_t ino) {
  std::string target;
  int err = Fs(req)->ReadLink(ino, &target);
  if (err) {
    fuse_reply_err(req, err);
    return;
  }
  fuse_reply_readlink(req, target.c_str());
}

// Replies with a new entry, or the error; an entry the kernel never got is forgotten again.
void ReplyEntry(fuse_req_t req, int err, const EntryOut& out) {
  if (err) {
    fuse_reply_err(req, err);
    return;
  }
  fuse_entry_param e = ToParam(out);
  if (fuse_reply_entry(req, &e) == -ENOENT) Fs(req)->Forget(out.ino, 1);  // interrupted
}

void Mknod(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode, dev_t) {
  EntryOut out;
  int err = Fs(req)->Mknod(parent, name, mode, &out);
  ReplyEntry(req, err, out);
}
void Mkdir(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode) {
  EntryOut out;
  int err = Fs(req)->Mkdir(parent, name, mode, &out);
  ReplyEntry(req, err, out);
}
void Symlink(fuse_req_t req, const char* target, fuse_ino_t parent, const char* name) {
  EntryOut out;
  int err = Fs(req)->Symlink(parent, name, target, &out);
  ReplyEntry(req, err, out);
}
void Unlink(fuse_req_t req, fuse_ino_t parent, const char* name) {
  fuse_reply_err(req, Fs(req)->Unlink(parent, name));
}
void Rmdir(fuse_req_t req, fuse_ino_t parent, const char* name) {
  fuse_reply_err(req, Fs(req)->Rmdir(parent, name));
}
void Link(fuse_req_t req, fuse_ino_t, fuse_ino_t newparent, const char*) {
  fuse_reply_err(req, Fs(req)->DenyChange(newparent));
}
void Rename(fuse_req_t req, fuse_ino_t parent, const char* name, fuse_ino_t newparent,
            const char* newname, unsigned int flags) {
  fuse_reply_err(req, Fs(req)->Rename(parent, name, newparent, newname, flags));
}

void Open(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  OpenOut out;
  int err = Fs(req)->Open(ino, fi->flags, &out);
  if (err) {
    fuse_reply_err(req, err);
    return;
  }
  SetOpen(out, fi);
  if (fuse_reply_open(req, fi) == -ENOENT) Fs(req)->Release(out.fh);  // interrupted
}

void Create(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode, fuse_file_info* fi) {
  EntryOut entry;
  OpenOut out;
  int err = Fs(req)->Create(parent, name, fi->flags, &entry, &out, mode);
  if (err) {
    fuse_reply_err(req, err);
    return;
  }
  SetOpen(out, fi);
  fuse_entry_param e = ToParam(entry);
  if (fuse_reply_create(req, &e, fi) == -ENOENT) {
    Fs(req)->Release(out.fh);
    Fs(req)->Forget(entry.ino, 1);
  }
}

void Read(fuse_req_t req, fuse_ino_t, size_t size, off_t off, fuse_file_info* fi) {
  // One reply buffer per worker thread: a fresh 1 MiB allocation per request costs page faults
  // and fragments the heap.
  thread_local std::string buf;
  buf.clear();
  buf.reserve(size);
  int err = Fs(req)->Read(fi->fh, static_cast<uint64_t>(off), size, &buf);
  if (err) {
    fuse_reply_err(req, err);
    return;
  }
  fuse_reply_buf(req, buf.data(), buf.size());
}

void Write(fuse_req_t req, fuse_ino_t, const char* buf, size_t size, off_t off,
           fuse_file_info* fi) {
  int err = Fs(req)->Write(fi->fh, static_cast<uint64_t>(off), std::string_view(buf, size));
  if (err) {
    fuse_reply_err(req, err);
    return;
  }
  fuse_reply_write(req, size);
}

void Flush(fuse_req_t req, fuse_ino_t, fuse_file_info* fi) {
  fuse_reply_err(req, Fs(req)->Flush(fi->fh));
}

void Release(fuse_req_t req, fuse_ino_t, fuse_file_info* fi) {
  Fs(req)->Release(fi->fh);
  fuse_reply_err(req, 0);
}

// fsync and fsyncdir. A clone's changes are durable when this replies 0; elsewhere nothing is
// buffered. PostgreSQL PANICs on ENOSYS or EINVAL, so both are always implemented.
void Fsync(fuse_req_t req, fuse_ino_t ino, int, fuse_file_info*) {
  fuse_reply_err(req, Fs(req)->Fsync(ino));
}

void Fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t offset, off_t length,
               fuse_file_info*) {
  if (offset < 0 || length <= 0) {
    fuse_reply_err(req, EINVAL);
    return;
  }
  fuse_reply_err(req, Fs(req)->Fallocate(ino, mode, static_cast<uint64_t>(offset),
                                         static_cast<uint64_t>(length)));
}

void OpenDir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  uint64_t fh;
  int err = Fs(req)->OpenDir(ino, &fh);
  if (err) {
    fuse_reply_err(req, err);
    return;
  }
  fi->fh = fh;
  if (fuse_reply_open(req, fi) == -ENOENT) Fs(req)->ReleaseDir(fh);
}

void DoReadDir(fuse_req_t req, size_t size, off_t off, fuse_file_info* fi, bool plus) {
  std::vector<char> buf(size);
  size_t used = 0;
  int err = Fs(req)->ReadDir(fi->fh, static_cast<uint64_t>(off), plus, [&](const DirItem& item) {
    size_t n;
    if (plus) {
      fuse_entry_param e = ToParam(item.entry);
      n = fuse_add_direntry_plus(req, buf.data() + used, size - used, item.name.c_str(), &e,
                                 static_cast<off_t>(item.next_offset));
    } else {
      struct stat st {};
      st.st_ino = item.ino;
      st.st_mode = item.type;
      n = fuse_add_direntry(req, buf.data() + used, size - used, item.name.c_str(), &st,
                            static_cast<off_t>(item.next_offset));
    }
    if (n > size - used) return false;
    used += n;
    return true;
  });
  if (err) {
    fuse_reply_err(req, err);
    return;
  }
  fuse_reply_buf(req, buf.data(), used);
}

void ReadDir(fuse_req_t req, fuse_ino_t, size_t size, off_t off, fuse_file_info* fi) {
  DoReadDir(req, size, off, fi, /*plus=*/false);
}

void ReadDirPlus(fuse_req_t req, fuse_ino_t, size_t size, off_t off, fuse_file_info* fi) {
  DoReadDir(req, size, off, fi, /*plus=*/true);
}

void ReleaseDir(fuse_req_t req, fuse_ino_t, fuse_file_info* fi) {
  Fs(req)->ReleaseDir(fi->fh);
  fuse_reply_err(req, 0);
}

void StatFs(fuse_req_t req, fuse_ino_t) {
  struct statvfs st;
  int err = Fs(req)->StatFs(&st);
  if (err) {
    fuse_reply_err(req, err);
    return;
  }
  fuse_reply_statfs(req, &st);
}

fuse_lowlevel_ops MakeOps() {
  fuse_lowlevel_ops ops{};
  ops.init = Init;
  ops.lookup = Lookup;
  ops.forget = Forget;
  ops.forget_multi = ForgetMulti;
  ops.getattr = GetAttr;
  ops.setattr = SetAttr;
  ops.readlink = ReadLink;
  ops.mknod = Mknod;
  ops.mkdir = Mkdir;
  ops.unlink = Unlink;
  ops.rmdir = Rmdir;
  ops.symlink = Symlink;
  ops.link = Link;
  ops.rename = Rename;
  ops.open = Open;
  ops.create = Create;
  ops.read = Read;
  ops.write = Write;
  ops.flush = Flush;
  ops.release = Release;
  ops.fsync = Fsync;
  ops.opendir = OpenDir;
  ops.readdir = ReadDir;
  ops.readdirplus = ReadDirPlus;
  ops.releasedir = ReleaseDir;
  ops.fsyncdir = Fsync;
  ops.fallocate = Fallocate;
  ops.statfs = StatFs;
  return ops;
}

}  // namespace

const fuse_lowlevel_ops& FilesystemOps() {
  static const fuse_lowlevel_ops ops = MakeOps();
  return ops;
}

}  // namespace pgbackfs
