#include "repo/restore.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "repo/file_util.h"

namespace pgbackfs {

namespace {

constexpr uint64_t kPieceBytes = 64ull << 20;  // large files are split into pieces for --jobs
constexpr size_t kWriteBuffer = 1 << 20;

struct FileJob {
  std::string path;  // absolute
  Entry entry;
};

struct Piece {
  size_t file;
  uint64_t first_leaf, end_leaf;
};

// Removes `path` (file, link or tree) from disk.
Status RemovePath(const std::string& path) {
  std::error_code ec;
  std::filesystem::remove_all(path, ec);
  if (ec) return Status::IOError("remove '" + path + "': " + ec.message());
  return Status::OK();
}

class Restorer {
 public:
  Restorer(Repository* repo, const std::string& dest, const RestoreOptions& options)
      : repo_(repo), dest_(dest), options_(options) {}

  Status Run(const SnapshotInfo& snap, RestoreStats* stats) {
    RETURN_IF_ERROR(PrepareDest());
    RETURN_IF_ERROR(Layout(snap.root));
    if (options_.delta) RETURN_IF_ERROR(RemoveExtra(dest_, ""));
    RETURN_IF_ERROR(OpenFiles());
    RETURN_IF_ERROR(WriteAll());
    RETURN_IF_ERROR(Finish(snap.root));
    stats->files = files_.size();
    stats->logical_bytes = total_;
    stats->bytes_written = written_;
    stats->files_removed = removed_;
    return Status::OK();
  }

 private:
  Status PrepareDest() {
    struct stat st;
    if (stat(dest_.c_str(), &st) == 0) {
      if (!S_ISDIR(st.st_mode)) {
        return Status::InvalidArgument("destination '" + dest_ + "' is not a directory");
      }
      if (!options_.delta && !DirectoryIsEmpty(dest_)) {
        return Status::InvalidArgument("destination '" + dest_ +
                                       "' is not empty (use --delta to update it in place)");
      }
      return Status::OK();
    }
    if (mkdir(dest_.c_str(), 0700) != 0) {
      return Status::FromErrno(errno, "create destination '" + dest_ + "'");
    }
    return Status::OK();
  }

  // Creates directories and symlinks, and lists the files to write.
  Status Layout(const Entry& root) {
    return repo_->reader()->Walk(root, "", [&](const std::string& rel, const Entry& e) -> Status {
      std::string path = dest_ + "/" + rel;
      struct stat st;
      bool exists = lstat(path.c_str(), &st) == 0;
      if (e.is_dir()) {
        snapshot_paths_.insert(rel);
        if (exists && !S_ISDIR(st.st_mode)) {
          RETURN_IF_ERROR(RemovePath(path));
          exists = false;
        }
        if (!exists && mkdir(path.c_str(), 0700) != 0) {
          return Status::FromErrno(errno, "create directory '" + path + "'");
        }
        dirs_.push_back({path, e});
      } else if (e.type == EntryType::kSymlink) {
        snapshot_paths_.insert(rel);
        if (exists) RETURN_IF_ERROR(RemovePath(path));
        if (symlink(e.link_target.c_str(), path.c_str()) != 0) {
          return Status::FromErrno(errno, "create symlink '" + path + "'");
        }
      } else {
        snapshot_paths_.insert(rel);
        if (exists && !S_ISREG(st.st_mode)) RETURN_IF_ERROR(RemovePath(path));
        files_.push_back({path, e});
        total_ += e.data.size;
      }
      return Status::OK();
    });
  }

  // Delta mode: removes what the snapshot does not have.
  Status RemoveExtra(const std::string& dir, const std::string& rel) {
    DIR* d = opendir(dir.c_str());
    if (!d) return Status::FromErrno(errno, "open directory '" + dir + "'");
    std::vector<std::pair<std::string, bool>> children;
    while (dirent* de = readdir(d)) {
      std::string name = de->d_name;
      if (name == "." || name == "..") continue;
      children.push_back({name, de->d_type == DT_DIR});
    }
    closedir(d);
    for (auto& [name, is_dir] : children) {
      std::string child_rel = rel.empty() ? name : rel + "/" + name;
      std::string child = dir + "/" + name;
      if (!snapshot_paths_.count(child_rel)) {
        RETURN_IF_ERROR(RemovePath(child));
        removed_++;
      } else if (is_dir) {
        RETURN_IF_ERROR(RemoveExtra(child, child_rel));
      }
    }
    return Status::OK();
  }

  // Creates each file at its final size. Files are opened one piece at a time later, so a
  // database with many files does not run out of descriptors.
  Status OpenFiles() {
    const size_t chunk = repo_->config().chunk_size;
    for (size_t i = 0; i < files_.size(); ++i) {
      const FileJob& f = files_[i];
      int fd = open(f.path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
      if (fd < 0) return Status::FromErrno(errno, "create '" + f.path + "'");
      struct stat st;
      Status s;
      if (fstat(fd, &st) != 0) s = Status::FromErrno(errno, "stat '" + f.path + "'");
      // Without --delta the file is new and empty: zero chunks become holes. With --delta, a
      // longer local file is cut; the chunk comparison below handles the rest.
      if (s.ok() && static_cast<uint64_t>(st.st_size) != f.entry.data.size &&
          ftruncate(fd, static_cast<off_t>(f.entry.data.size)) != 0) {
        s = Status::FromErrno(errno, "truncate '" + f.path + "'");
      }
      close(fd);
      RETURN_IF_ERROR(s);
      uint64_t leaves = (f.entry.data.size + chunk - 1) / chunk;
      uint64_t per_piece = kPieceBytes / chunk;
      for (uint64_t first = 0; first < leaves; first += per_piece) {
        pieces_.push_back({i, first, std::min(leaves, first + per_piece)});
      }
    }
    // Largest pieces first keeps the workers busy until the end.
    std::stable_sort(pieces_.begin(), pieces_.end(), [](const Piece& a, const Piece& b) {
      return (a.end_leaf - a.first_leaf) > (b.end_leaf - b.first_leaf);
    });
    return Status::OK();
  }

  Status WritePiece(const Piece& p) {
    const FileJob& f = files_[p.file];
    int fd = open(f.path.c_str(), O_RDWR | O_CLOEXEC);
    if (fd < 0) return Status::FromErrno(errno, "open '" + f.path + "'");
    Status s = WritePieceTo(fd, f, p);
    close(fd);
    return s;
  }

  Status WritePieceTo(int fd, const FileJob& f, const Piece& p) {
    const size_t chunk = repo_->config().chunk_size;
    TreeReader reader(repo_->chunks(), f.entry.data, chunk);
    std::string buf, data, local;
    uint64_t buf_offset = 0;
    auto flush = [&]() -> Status {
      if (buf.empty()) return Status::OK();
      RETURN_IF_ERROR(PWriteAll(fd, buf.data(), buf.size(), buf_offset, f.path));
      written_ += buf.size();
      buf.clear();
      return Status::OK();
    };
    for (uint64_t i = p.first_leaf; i < p.end_leaf; ++i) {
      uint64_t offset = i * chunk;
      size_t size = reader.LeafSize(i);
      ASSIGN_OR_RETURN(ChunkId id, reader.Leaf(i));
      bool skip = false;
      if (options_.delta) {
        local.resize(size);
        ssize_t n = pread(fd, local.data(), size, static_cast<off_t>(offset));
        skip = n == static_cast<ssize_t>(size) && ComputeChunkId(local) == id;
      } else {
        skip = id.IsZero();  // a hole in a new file reads as zeros
      }
      if (skip) {
        RETURN_IF_ERROR(flush());
      } else {
        Status s = repo_->chunks()->Get(id, size, &data);
        if (!s.ok()) {
          return s.WithContext("file '" + f.path + "' at offset " + std::to_string(offset));
        }
        if (buf.empty()) buf_offset = offset;
        buf.append(data);
        if (buf.size() >= kWriteBuffer) RETURN_IF_ERROR(flush());
      }
      uint64_t done = done_.fetch_add(size) + size;
      if (options_.progress && (i % 128) == 0) options_.progress(done, total_);
    }
    return flush();
  }

  Status WriteAll() {
    std::atomic<size_t> next{0};
    std::mutex mu;
    Status first_error;
    auto worker = [&] {
      for (size_t k; (k = next.fetch_add(1)) < pieces_.size();) {
        {
          std::lock_guard<std::mutex> lock(mu);
          if (!first_error.ok()) return;
        }
        Status s = WritePiece(pieces_[k]);
        if (!s.ok()) {
          std::lock_guard<std::mutex> lock(mu);
          if (first_error.ok()) first_error = s;
          return;
        }
      }
    };
    int jobs = std::max(1, options_.jobs);
    std::vector<std::thread> threads;
    for (int j = 1; j < jobs; ++j) threads.emplace_back(worker);
    worker();
    for (auto& t : threads) t.join();
    if (options_.progress) options_.progress(done_.load(), total_);
    return first_error;
  }

  Status Finish(const Entry& root) {
    for (const FileJob& f : files_) {
      const Entry& e = f.entry;
      int fd = open(f.path.c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0) return Status::FromErrno(errno, "open '" + f.path + "'");
      struct timespec times[2] = {{e.mtime_sec, e.mtime_nsec}, {e.mtime_sec, e.mtime_nsec}};
      Status s;
      if (fchmod(fd, e.mode & 07777) != 0) {
        s = Status::FromErrno(errno, "chmod '" + f.path + "'");
      } else if (futimens(fd, times) != 0) {
        s = Status::FromErrno(errno, "set times of '" + f.path + "'");
      } else if (options_.sync && fsync(fd) != 0) {
        s = Status::FromErrno(errno, "fsync '" + f.path + "'");
      }
      close(fd);
      RETURN_IF_ERROR(s);
    }
    // Directories deepest first, so setting a child's times does not disturb its parent's.
    dirs_.insert(dirs_.begin(), {dest_, root});
    for (auto it = dirs_.rbegin(); it != dirs_.rend(); ++it) {
      const Entry& e = it->entry;
      if (options_.sync) RETURN_IF_ERROR(FsyncDir(it->path));
      chmod(it->path.c_str(), e.mode & 07777 ? e.mode & 07777 : 0700);
      struct timespec times[2] = {{e.mtime_sec, e.mtime_nsec}, {e.mtime_sec, e.mtime_nsec}};
      if (e.mtime_sec) utimensat(AT_FDCWD, it->path.c_str(), times, 0);
    }
    return Status::OK();
  }

  Repository* repo_;
  std::string dest_;
  RestoreOptions options_;
  std::vector<FileJob> files_;
  std::vector<FileJob> dirs_;
  std::vector<Piece> pieces_;
  std::set<std::string> snapshot_paths_;
  uint64_t total_ = 0;
  std::atomic<uint64_t> done_{0};
  std::atomic<uint64_t> written_{0};
  uint64_t removed_ = 0;
};

}  // namespace

Status RestoreSnapshot(Repository* repo, const SnapshotInfo& snapshot, const std::string& dest,
                       const RestoreOptions& options, RestoreStats* stats) {
  Restorer restorer(repo, dest, options);
  return restorer.Run(snapshot, stats);
}

}  // namespace pgbackfs
