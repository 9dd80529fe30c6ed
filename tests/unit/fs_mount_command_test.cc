// `mount` and `umount` refuse to run inside the mount daemon (a forwarded command line).
#include <gtest/gtest.h>
#include <stdio.h>

#include "tools/cli.h"

namespace pgbackfs {
namespace {

class DaemonProvider : public RepoProvider {
 public:
  Result<Repository*> Get(const std::string&) override {
    return Status::InvalidArgument("no repository in this test");
  }
  bool in_daemon() const override { return true; }
};

int RunInDaemon(const std::vector<std::string>& args, std::string* err) {
  char* buf = nullptr;
  size_t len = 0;
  FILE* err_file = open_memstream(&buf, &len);
  FILE* out_file = fopen("/dev/null", "w");
  CommandIo io;
  io.out = out_file;
  io.err = err_file;
  io.cwd = "/";
  DaemonProvider provider;
  int code = RunCli(args, &io, &provider);
  fclose(err_file);
  fclose(out_file);
  *err = std::string(buf, len);
  free(buf);
  return code;
}

TEST(MountCommand, RefusesToRunInTheDaemon) {
  std::string err;
  EXPECT_EQ(RunInDaemon({"pgbackfs", "mount", "/tmp/repo", "/tmp/mnt"}, &err), 1);
  EXPECT_NE(err.find("already mounted"), std::string::npos) << err;
  EXPECT_EQ(RunInDaemon({"pgbackfs", "umount", "/tmp/mnt"}, &err), 1);
  EXPECT_NE(err.find("inside the mount daemon"), std::string::npos) << err;
}

}  // namespace
}  // namespace pgbackfs
