#include "core/base/thread_guard.h"

#include <exception>
#include <string>

#include "core/base/log.h"

namespace mirrorcast {

Status RunGuarded(std::string_view thread_name, const std::function<Status()>& body) noexcept {
  try {
    return body();
  } catch (const std::exception& e) {
    return Status::Internal(std::string(thread_name) + " thread: " + EscapeForLog(e.what()));
  } catch (...) {
    return Status::Internal(std::string(thread_name) + " thread: unknown exception");
  }
}

}  // namespace mirrorcast
