#include <gtest/gtest.h>

#include <cerrno>

#include "fs/errno_map.h"

namespace pgbackfs {
namespace {

TEST(StatusToErrno, MapsEveryCode) {
  EXPECT_EQ(StatusToErrno(Status::OK()), 0);
  EXPECT_EQ(StatusToErrno(Status::NotFound("x")), ENOENT);
  EXPECT_EQ(StatusToErrno(Status::Corruption("x")), EIO);
  EXPECT_EQ(StatusToErrno(Status::IOError("x")), EIO);
  EXPECT_EQ(StatusToErrno(Status::InvalidArgument("x")), EINVAL);
  EXPECT_EQ(StatusToErrno(Status::AlreadyExists("x")), EEXIST);
  EXPECT_EQ(StatusToErrno(Status::Busy("x")), EBUSY);
  EXPECT_EQ(StatusToErrno(Status::NotSupported("x")), EOPNOTSUPP);
  EXPECT_EQ(StatusToErrno(Status::NoSpace("x")), ENOSPC);
  EXPECT_EQ(StatusToErrno(Status::FailedPrecondition("x")), EINVAL);
  EXPECT_EQ(StatusToErrno(Status::PermissionDenied("x")), EPERM);
  EXPECT_EQ(StatusToErrno(Status::NotEmpty("x")), ENOTEMPTY);
  EXPECT_EQ(StatusToErrno(Status::IsADirectory("x")), EISDIR);
  EXPECT_EQ(StatusToErrno(Status::NotADirectory("x")), ENOTDIR);
}

}  // namespace
}  // namespace pgbackfs
