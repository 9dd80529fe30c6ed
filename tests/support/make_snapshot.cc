// pgbackfs_make_snapshot REPO DIR [LABEL]: stores the tree DIR as a snapshot of REPO, the way a
// backup would. A test and benchmark helper until `pgbackfs backup` exists; not installed.
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <ctime>
#include <string>

#include "repo/repository.h"

namespace pgbackfs {
namespace {

Status AddTree(SnapshotBuilder* b, const std::string& root, const std::string& rel) {
  std::string dir = rel.empty() ? root : root + "/" + rel;
  DIR* d = opendir(dir.c_str());
  if (!d) return Status::FromErrno(errno, "opendir '" + dir + "'");
  std::vector<std::string> names;
  while (dirent* e = readdir(d)) {
    std::string n = e->d_name;
    if (n != "." && n != "..") names.push_back(n);
  }
  closedir(d);
  for (const std::string& n : names) {
    std::string r = rel.empty() ? n : rel + "/" + n;
    std::string full = root + "/" + r;
    struct stat st;
    if (lstat(full.c_str(), &st) != 0) return Status::FromErrno(errno, "lstat '" + full + "'");
    if (S_ISDIR(st.st_mode)) {
      RETURN_IF_ERROR(b->AddDirectory(r, st.st_mode & 07777, st.st_mtime));
      RETURN_IF_ERROR(AddTree(b, root, r));
    } else if (S_ISLNK(st.st_mode)) {
      char target[4096];
      ssize_t len = readlink(full.c_str(), target, sizeof(target));
      if (len < 0) return Status::FromErrno(errno, "readlink '" + full + "'");
      RETURN_IF_ERROR(b->AddSymlink(r, std::string(target, len), st.st_mtime));
    } else if (S_ISREG(st.st_mode)) {
      int fd = open(full.c_str(), O_RDONLY);
      if (fd < 0) return Status::FromErrno(errno, "open '" + full + "'");
      FileWriter fw(b->writer(), b->chunk_size());
      std::string buf(1 << 20, '\0');
      ssize_t n;
      while ((n = read(fd, buf.data(), buf.size())) > 0) {
        Status s = fw.Append(std::string_view(buf.data(), static_cast<size_t>(n)));
        if (!s.ok()) {
          close(fd);
          return s;
        }
      }
      close(fd);
      if (n < 0) return Status::FromErrno(errno, "read '" + full + "'");
      ASSIGN_OR_RETURN(FileData data, fw.Finish());
      RETURN_IF_ERROR(b->AddFile(r, st.st_mode & 07777, st.st_mtime, data));
    }
  }
  return Status::OK();
}

Status Run(const std::string& repo_path, const std::string& dir, const std::string& label) {
  ASSIGN_OR_RETURN(auto repo, Repository::Open(repo_path));
  auto builder = repo->NewSnapshotBuilder();
  RETURN_IF_ERROR(AddTree(builder.get(), dir, ""));
  ASSIGN_OR_RETURN(Entry root, builder->Finish());
  SnapshotInfo info;
  int64_t now = time(nullptr);
  ASSIGN_OR_RETURN(info.id, repo->NewSnapshotId(now));
  info.label = label;
  info.start_time = info.stop_time = now;
  info.root = root;
  info.logical_size = builder->logical_size();
  info.file_count = builder->file_count();
  RETURN_IF_ERROR(repo->CommitSnapshot(info));
  printf("%s\n", info.id.c_str());
  return Status::OK();
}

}  // namespace
}  // namespace pgbackfs

int main(int argc, char** argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s REPO DIR [LABEL]\n", argv[0]);
    return 2;
  }
  pgbackfs::Status s = pgbackfs::Run(argv[1], argv[2], argc > 3 ? argv[3] : "");
  if (!s.ok()) {
    fprintf(stderr, "error: %s\n", s.ToString().c_str());
    return 1;
  }
  return 0;
}
