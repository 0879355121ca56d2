#include "core/base/status.h"

#include <cstring>

namespace mirrorcast {

const char* CodeName(Status::Code code) {
  switch (code) {
    case Status::Code::kOk:
      return "ok";
    case Status::Code::kInvalidArgument:
      return "invalid argument";
    case Status::Code::kNotFound:
      return "not found";
    case Status::Code::kAlreadyExists:
      return "already exists";
    case Status::Code::kIoError:
      return "I/O error";
    case Status::Code::kCorruption:
      return "corruption";
    case Status::Code::kRejected:
      return "rejected";
    case Status::Code::kUnavailable:
      return "unavailable";
    case Status::Code::kTimeout:
      return "timeout";
    case Status::Code::kResourceExhausted:
      return "resource exhausted";
    case Status::Code::kFailedPrecondition:
      return "failed precondition";
    case Status::Code::kInternal:
      return "internal error";
  }
  return "unknown";
}

Status Status::FromErrno(std::string_view what, int errno_value) {
  std::string msg(what);
  msg += ": ";
  msg += std::strerror(errno_value);
  if (errno_value == ENOSPC || errno_value == EDQUOT) {
    return Status(Code::kResourceExhausted, std::move(msg));
  }
  if (errno_value == ENOENT) return Status(Code::kNotFound, std::move(msg));
  return Status(Code::kIoError, std::move(msg));
}

std::string Status::ToString() const {
  if (ok()) return "ok";
  return std::string(CodeName(code_)) + ": " + message_;
}

Status Status::WithContext(std::string_view context) const {
  if (ok()) return *this;
  std::string msg(context);
  msg += ": ";
  msg += message_;
  return Status(code_, std::move(msg));
}

}  // namespace mirrorcast
