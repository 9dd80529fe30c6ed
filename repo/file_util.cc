#include "repo/file_util.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace pgbackfs {

Status FsyncDir(const std::string& dir) {
  int fd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return Status::FromErrno(errno, "open directory '" + dir + "'");
  int rc = fsync(fd);
  int err = errno;
  close(fd);
  if (rc != 0) return Status::FromErrno(err, "fsync directory '" + dir + "'");
  return Status::OK();
}

Status PWriteAll(int fd, const char* data, size_t len, off_t offset, const std::string& what) {
  while (len > 0) {
    ssize_t n = pwrite(fd, data, len, offset);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::FromErrno(errno, "write '" + what + "'");
    }
    data += n;
    len -= n;
    offset += n;
  }
  return Status::OK();
}

Status WriteFileAtomic(const std::string& path, const std::string& data, int mode) {
  std::string tmp = path + ".tmp";
  int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
  if (fd < 0) return Status::FromErrno(errno, "create '" + tmp + "'");
  Status s = PWriteAll(fd, data.data(), data.size(), 0, tmp);
  if (s.ok() && fsync(fd) != 0) s = Status::FromErrno(errno, "fsync '" + tmp + "'");
  close(fd);
  if (s.ok() && rename(tmp.c_str(), path.c_str()) != 0) {
    s = Status::FromErrno(errno, "rename '" + tmp + "'");
  }
  if (!s.ok()) {
    unlink(tmp.c_str());
    return s;
  }
  std::string dir = path.substr(0, path.find_last_of('/'));
  return FsyncDir(dir.empty() ? "." : dir);
}

Status ReadSmallFile(const std::string& path, std::string* out) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Status::FromErrno(errno, "open '" + path + "'");
  out->clear();
  char buf[65536];
  for (;;) {
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      close(fd);
      return Status::FromErrno(err, "read '" + path + "'");
    }
    if (n == 0) break;
    out->append(buf, n);
  }
  close(fd);
  return Status::OK();
}

bool DirectoryIsEmpty(const std::string& path) {
  DIR* d = opendir(path.c_str());
  if (!d) return false;
  bool empty = true;
  while (dirent* e = readdir(d)) {
    if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) {
      empty = false;
      break;
    }
  }
  closedir(d);
  return empty;
}

bool PathExists(const std::string& path) {
  struct stat st;
  return lstat(path.c_str(), &st) == 0;
}

}  // namespace pgbackfs
