// Status and Result<T>: how everything that can fail in mirrorcast reports it.
//
// A peer or the disk can cause a failure: it comes back as a Status and is
// handled (logged with context, counted, ACKed); ignoring one does not
// compile. Our own bugs are MC_CHECKs (core/base/check.h), on in every build.
// Exceptions are used only at start-up and config parsing, caught in main().
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <variant>

#include "core/base/check.h"

namespace mirrorcast {

class [[nodiscard]] Status {
 public:
  enum class Code {
    kOk = 0,
    kInvalidArgument,  // malformed input from a user or a peer
    kNotFound,
    kAlreadyExists,
    kIoError,      // the disk or the OS said no
    kCorruption,   // data does not match its signed hash or format
    kRejected,     // verification refused it (signature, serial, expiry)
    kUnavailable,  // a peer could not be reached
    kTimeout,
    kResourceExhausted,  // too large, disk full, too many
    kFailedPrecondition,
    kInternal,
  };

  Status() = default;
  static Status Ok() { return Status(); }
  static Status InvalidArgument(std::string msg) {
    return {Code::kInvalidArgument, std::move(msg)};
  }
  static Status NotFound(std::string msg) { return {Code::kNotFound, std::move(msg)}; }
  static Status AlreadyExists(std::string msg) { return {Code::kAlreadyExists, std::move(msg)}; }
  static Status IoError(std::string msg) { return {Code::kIoError, std::move(msg)}; }
  // An I/O error carrying strerror(errno_value).
  static Status FromErrno(std::string_view what, int errno_value);
  static Status Corruption(std::string msg) { return {Code::kCorruption, std::move(msg)}; }
  static Status Rejected(std::string msg) { return {Code::kRejected, std::move(msg)}; }
  static Status Unavailable(std::string msg) { return {Code::kUnavailable, std::move(msg)}; }
  static Status Timeout(std::string msg) { return {Code::kTimeout, std::move(msg)}; }
  static Status ResourceExhausted(std::string msg) {
    return {Code::kResourceExhausted, std::move(msg)};
  }
  static Status FailedPrecondition(std::string msg) {
    return {Code::kFailedPrecondition, std::move(msg)};
  }
  static Status Internal(std::string msg) { return {Code::kInternal, std::move(msg)}; }

  bool ok() const { return code_ == Code::kOk; }
  Code code() const { return code_; }
  const std::string& message() const { return message_; }
  // "ok", or "<code name>: <message>".
  std::string ToString() const;
  // The same status with "context: " in front of the message.
  Status WithContext(std::string_view context) const;

 private:
  Status(Code code, std::string message) : code_(code), message_(std::move(message)) {}
  Code code_ = Code::kOk;
  std::string message_;
};

const char* CodeName(Status::Code code);

// Either a value or a non-ok Status.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : data_(std::move(value)) {}        // NOLINT: implicit by design
  Result(Status status) : data_(std::move(status)) {  // NOLINT: implicit by design
    MC_CHECK(!std::get<Status>(data_).ok(), "Result built from an ok Status");
  }

  bool ok() const { return std::holds_alternative<T>(data_); }
  Status status() const { return ok() ? Status::Ok() : std::get<Status>(data_); }
  T& value() & {
    MC_CHECK(ok(), "value() of a failed Result");
    return std::get<T>(data_);
  }
  const T& value() const& {
    MC_CHECK(ok(), "value() of a failed Result");
    return std::get<T>(data_);
  }
  T&& value() && {
    MC_CHECK(ok(), "value() of a failed Result");
    return std::get<T>(std::move(data_));
  }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

 private:
  std::variant<T, Status> data_;
};

}  // namespace mirrorcast

#define MC_STATUS_CONCAT_INNER(a, b) a##b
#define MC_STATUS_CONCAT(a, b) MC_STATUS_CONCAT_INNER(a, b)

// Returns the Status from the enclosing function if `expr` is not ok.
#define MC_RETURN_IF_ERROR(expr)              \
  do {                                        \
    ::mirrorcast::Status mc_status_ = (expr); \
    if (!mc_status_.ok()) return mc_status_;  \
  } while (0)

// `lhs = value of expr`, or return its Status.
#define MC_ASSIGN_OR_RETURN(lhs, expr) \
  MC_ASSIGN_OR_RETURN_IMPL(MC_STATUS_CONCAT(mc_result_, __LINE__), lhs, expr)
#define MC_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                             \
  if (!tmp.ok()) return tmp.status();            \
  lhs = std::move(tmp).value()
