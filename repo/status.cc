#include "repo/status.h"

#include <cerrno>
#include <cstring>

namespace pgbackfs {

namespace {
const char* CodeName(Status::Code code) {
  switch (code) {
    case Status::Code::kOk:
      return "ok";
    case Status::Code::kNotFound:
      return "not found";
    case Status::Code::kCorruption:
      return "corruption";
    case Status::Code::kInvalidArgument:
      return "invalid argument";
    case Status::Code::kIOError:
      return "i/o error";
    case Status::Code::kAlreadyExists:
      return "already exists";
    case Status::Code::kBusy:
      return "busy";
    case Status::Code::kNotSupported:
      return "not supported";
    case Status::Code::kNoSpace:
      return "no space";
    case Status::Code::kFailedPrecondition:
      return "failed precondition";
    case Status::Code::kPermissionDenied:
      return "permission denied";
    case Status::Code::kNotEmpty:
      return "not empty";
    case Status::Code::kIsADirectory:
      return "is a directory";
    case Status::Code::kNotADirectory:
      return "not a directory";
  }
  return "unknown";
}
}  // namespace

Status Status::FromErrno(int err, const std::string& what) {
  std::string msg = what + ": " + std::strerror(err);
  switch (err) {
    case ENOENT:
      return NotFound(msg);
    case ENOSPC:
    case EDQUOT:
      return NoSpace(msg);
    case EEXIST:
      return AlreadyExists(msg);
    case EACCES:
    case EPERM:
      return PermissionDenied(msg);
    case EINVAL:
      return InvalidArgument(msg);
    case ENOTEMPTY:
      return NotEmpty(msg);
    case EISDIR:
      return IsADirectory(msg);
    case ENOTDIR:
      return NotADirectory(msg);
    default:
      return IOError(msg);
  }
}

std::string Status::ToString() const {
  if (ok()) return "ok";
  return std::string(CodeName(code_)) + ": " + message_;
}

Status Status::WithContext(const std::string& context) const {
  if (ok()) return *this;
  return Status(code_, context + ": " + message_);
}

}  // namespace pgbackfs
