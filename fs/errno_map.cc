#include "fs/errno_map.h"

#include <cerrno>

namespace pgbackfs {

int StatusToErrno(const Status& status) {
  switch (status.code()) {
    case Status::Code::kOk:
      return 0;
    case Status::Code::kNotFound:
      return ENOENT;
    case Status::Code::kInvalidArgument:
      return EINVAL;
    case Status::Code::kAlreadyExists:
      return EEXIST;
    case Status::Code::kBusy:
      return EBUSY;
    case Status::Code::kNotSupported:
      return EOPNOTSUPP;
    case Status::Code::kNoSpace:
      return ENOSPC;
    case Status::Code::kFailedPrecondition:
      // A WAL file from another cluster, a file that does not fit the archive: bad input.
      return EINVAL;
    case Status::Code::kPermissionDenied:
      return EPERM;
    case Status::Code::kNotEmpty:
      return ENOTEMPTY;
    case Status::Code::kIsADirectory:
      return EISDIR;
    case Status::Code::kNotADirectory:
      return ENOTDIR;
    case Status::Code::kCorruption:
    case Status::Code::kIOError:
      return EIO;
  }
  return EIO;
}

}  // namespace pgbackfs
