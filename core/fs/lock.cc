#include "core/fs/lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <system_error>

namespace mirrorcast {

Result<UniqueFd> LockDirectory(const std::filesystem::path& dir, std::string_view what) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return Status::IoError("create " + dir.string() + ": " + ec.message());
  UniqueFd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd.valid()) return Status::FromErrno("open " + dir.string(), errno);
  if (::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK) {
      return Status::FailedPrecondition(
          dir.string() + " (" + std::string(what) +
          ") is in use by another running mirrorcast process; stop that one first, or give "
          "this one its own directory");
    }
    return Status::FromErrno("lock " + dir.string(), errno);
  }
  return fd;
}

Status CheckUsableDirectory(const std::filesystem::path& dir, std::string_view what) {
  namespace fs = std::filesystem;
  const std::string name = std::string(what) + " " + dir.string();
  std::error_code ec;
  if (fs::exists(dir, ec)) {
    if (!fs::is_directory(dir, ec)) return Status::InvalidArgument(name + " is not a directory");
    if (::access(dir.c_str(), W_OK | X_OK) != 0) {
      return Status::IoError(name + " is not writable by this user");
    }
    return Status::Ok();
  }
  const fs::path parent = fs::absolute(dir, ec).parent_path();
  if (ec || !fs::is_directory(parent, ec)) {
    return Status::NotFound(name + " does not exist and neither does its parent directory");
  }
  return Status::Ok();
}

}  // namespace mirrorcast
