// Status and Result<T>: how repo/ reports expected failures. No exceptions cross the library's
// public API; RocksDB's own status is converted to this one inside the kv layer only.
#pragma once

#include <optional>
#include <string>
#include <utility>
#include <variant>

namespace pgbackfs {

class [[nodiscard]] Status {
 public:
  enum class Code {
    kOk = 0,
    kNotFound,
    kCorruption,
    kInvalidArgument,
    kIOError,
    kAlreadyExists,
    kBusy,
    kNotSupported,
    kNoSpace,
    kFailedPrecondition,
    kPermissionDenied,
    kNotEmpty,       // a directory that must be empty is not (ENOTEMPTY)
    kIsADirectory,   // EISDIR
    kNotADirectory,  // ENOTDIR
  };

  Status() = default;
  static Status OK() { return Status(); }
  static Status NotFound(std::string msg) { return Status(Code::kNotFound, std::move(msg)); }
  static Status Corruption(std::string msg) { return Status(Code::kCorruption, std::move(msg)); }
  static Status InvalidArgument(std::string msg) {
    return Status(Code::kInvalidArgument, std::move(msg));
  }
  static Status IOError(std::string msg) { return Status(Code::kIOError, std::move(msg)); }
  static Status AlreadyExists(std::string msg) {
    return Status(Code::kAlreadyExists, std::move(msg));
  }
  static Status Busy(std::string msg) { return Status(Code::kBusy, std::move(msg)); }
  static Status NotSupported(std::string msg) {
    return Status(Code::kNotSupported, std::move(msg));
  }
  static Status NoSpace(std::string msg) { return Status(Code::kNoSpace, std::move(msg)); }
  static Status FailedPrecondition(std::string msg) {
    return Status(Code::kFailedPrecondition, std::move(msg));
  }
  static Status PermissionDenied(std::string msg) {
    return Status(Code::kPermissionDenied, std::move(msg));
  }
  static Status NotEmpty(std::string msg) { return Status(Code::kNotEmpty, std::move(msg)); }
  static Status IsADirectory(std::string msg) {
    return Status(Code::kIsADirectory, std::move(msg));
  }
  static Status NotADirectory(std::string msg) {
    return Status(Code::kNotADirectory, std::move(msg));
  }
  // An IOError or NoSpace built from errno, naming what failed: "open 'path': No such file".
  static Status FromErrno(int err, const std::string& what);

  bool ok() const { return code_ == Code::kOk; }
  bool IsNotFound() const { return code_ == Code::kNotFound; }
  bool IsCorruption() const { return code_ == Code::kCorruption; }
  bool IsAlreadyExists() const { return code_ == Code::kAlreadyExists; }
  Code code() const { return code_; }
  const std::string& message() const { return message_; }
  std::string ToString() const;
  // Returns a status of the same code with "context: " prepended to the message.
  Status WithContext(const std::string& context) const;

 private:
  Status(Code code, std::string message) : code_(code), message_(std::move(message)) {}
  Code code_ = Code::kOk;
  std::string message_;
};

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : value_(std::move(value)) {}          // NOLINT: implicit by design
  Result(Status status) : status_(std::move(status)) {}  // NOLINT: implicit by design

  bool ok() const { return status_.ok(); }
  const Status& status() const { return status_; }
  T& value() & { return *value_; }
  const T& value() const& { return *value_; }
  T&& value() && { return std::move(*value_); }
  T* operator->() { return &*value_; }
  const T* operator->() const { return &*value_; }
  T& operator*() { return *value_; }

 private:
  Status status_;
  std::optional<T> value_;
};

}  // namespace pgbackfs

#define PGBACKFS_CONCAT_INNER(a, b) a##b
#define PGBACKFS_CONCAT(a, b) PGBACKFS_CONCAT_INNER(a, b)

// Returns from the current function when `expr` (a Status) is not ok.
#define RETURN_IF_ERROR(expr)        \
  do {                               \
    ::pgbackfs::Status _st = (expr); \
    if (!_st.ok()) return _st;       \
  } while (0)

// `ASSIGN_OR_RETURN(auto x, F())`: unwraps a Result or returns its status.
#define ASSIGN_OR_RETURN(lhs, expr) \
  ASSIGN_OR_RETURN_IMPL(PGBACKFS_CONCAT(_res_, __LINE__), lhs, expr)
#define ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                          \
  if (!tmp.ok()) return tmp.status();         \
  lhs = std::move(tmp).value()
