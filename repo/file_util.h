// Small POSIX helpers shared by repo/ and tools/.
#pragma once

#include <string>

#include "repo/status.h"

namespace pgbackfs {

// Writes `data` to `path` atomically and durably: temp file, fsync, rename, fsync of the directory.
Status WriteFileAtomic(const std::string& path, const std::string& data, int mode = 0600);
Status ReadSmallFile(const std::string& path, std::string* out);
Status FsyncDir(const std::string& dir);
// Writes all of `data` at `offset` (pwrite loop).
Status PWriteAll(int fd, const char* data, size_t len, off_t offset, const std::string& what);
bool DirectoryIsEmpty(const std::string& path);
bool PathExists(const std::string& path);

}  // namespace pgbackfs
