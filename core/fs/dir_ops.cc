#include "core/fs/dir_ops.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <vector>

#include "core/fs/path.h"

namespace mirrorcast {
namespace {

// Deeper than any valid path (kMaxPathBytes / 2 components).
constexpr int kMaxRemoveDepth = static_cast<int>(kMaxPathBytes / 2) + 1;

Status RemoveAllAtDepth(int dir_fd, const std::string& name, const std::string& what, int depth) {
  if (depth > kMaxRemoveDepth) return Status::Rejected("delete " + what + ": nested too deep");
  struct stat st {};
  if (::fstatat(dir_fd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
    if (errno == ENOENT) return Status::Ok();
    return Status::FromErrno("lstat " + what, errno);
  }
  if (!S_ISDIR(st.st_mode)) {
    if (::unlinkat(dir_fd, name.c_str(), 0) != 0 && errno != ENOENT) {
      return Status::FromErrno("delete " + what, errno);
    }
    return Status::Ok();
  }
  UniqueFd sub(::openat(dir_fd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!sub.valid()) {
    const int err = errno;
    if (err == ENOENT) return Status::Ok();
    if (err == ELOOP || err == ENOTDIR) {
      // Swapped for a link or file since the fstatat: remove that instead.
      if (::unlinkat(dir_fd, name.c_str(), 0) != 0 && errno != ENOENT) {
        return Status::FromErrno("delete " + what, errno);
      }
      return Status::Ok();
    }
    return Status::FromErrno("open directory " + what, err);
  }
  // The names first, then the removals: deleting while reading a directory
  // stream may skip entries.
  std::vector<std::string> children;
  {
    const int listed = ::dup(sub.get());
    if (listed < 0) return Status::FromErrno("dup " + what, errno);
    DIR* d = ::fdopendir(listed);
    if (d == nullptr) {
      const int err = errno;
      ::close(listed);
      return Status::FromErrno("list " + what, err);
    }
    errno = 0;
    while (const dirent* e = ::readdir(d)) {
      const std::string child = e->d_name;
      if (child != "." && child != "..") children.push_back(child);
      errno = 0;
    }
    const int err = errno;
    ::closedir(d);
    if (err != 0) return Status::FromErrno("list " + what, err);
  }
  for (const std::string& child : children) {
    MC_RETURN_IF_ERROR(RemoveAllAtDepth(sub.get(), child, what + "/" + child, depth + 1));
  }
  if (::unlinkat(dir_fd, name.c_str(), AT_REMOVEDIR) != 0 && errno != ENOENT) {
    return Status::FromErrno("delete " + what, errno);
  }
  return Status::Ok();
}

}  // namespace

std::string_view BaseName(std::string_view rel) {
  const size_t slash = rel.rfind('/');
  return slash == std::string_view::npos ? rel : rel.substr(slash + 1);
}

Status SetModeAt(int dir_fd, const std::string& name, mode_t mode, std::string_view what) {
  // glibc opens the name O_PATH|O_NOFOLLOW and refuses a symlink
  // (EOPNOTSUPP) before it changes anything.
  if (::fchmodat(dir_fd, name.c_str(), mode & 07777, AT_SYMLINK_NOFOLLOW) == 0) {
    return Status::Ok();
  }
  int err = errno;
  struct stat st {};
  if (::fstatat(dir_fd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(st.st_mode)) {
    return Status::Rejected("refusing to change the mode of symlink " + std::string(what));
  }
  if (err == EOPNOTSUPP || err == ENOSYS) {
    // No /proc for glibc's O_PATH route: an open descriptor does it.
    UniqueFd fd(::openat(dir_fd, name.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC));
    if (!fd.valid()) return Status::FromErrno("open " + std::string(what), errno);
    if (::fchmod(fd.get(), mode & 07777) == 0) return Status::Ok();
    err = errno;
  }
  return Status::FromErrno("chmod " + std::string(what), err);
}

Status SetModeAndMtimeAt(int dir_fd, const std::string& name, mode_t mode, int64_t mtime,
                         std::string_view what) {
  MC_RETURN_IF_ERROR(SetModeAt(dir_fd, name, mode, what));
  struct timespec times[2];
  times[0].tv_sec = static_cast<time_t>(mtime);
  times[0].tv_nsec = 0;
  times[1] = times[0];
  if (::utimensat(dir_fd, name.c_str(), times, AT_SYMLINK_NOFOLLOW) != 0) {
    return Status::FromErrno("set mtime " + std::string(what), errno);
  }
  return Status::Ok();
}

Status RemoveAllAt(int dir_fd, const std::string& name, std::string_view what) {
  return RemoveAllAtDepth(dir_fd, name, std::string(what), 0);
}

Status WriteFileAt(int dir_fd, const std::string& name, std::string_view data, mode_t mode,
                   std::string_view what) {
  const std::string tmp = "." + name + ".tmp-" + std::to_string(::getpid());
  ::unlinkat(dir_fd, tmp.c_str(), 0);  // left by a crash of this very pid number
  UniqueFd fd(::openat(dir_fd, tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                       mode & 07777));
  if (!fd.valid()) return Status::FromErrno("create " + std::string(what), errno);
  size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = ::write(fd.get(), data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int err = errno;
      ::unlinkat(dir_fd, tmp.c_str(), 0);
      return Status::FromErrno("write " + std::string(what), err);
    }
    done += static_cast<size_t>(n);
  }
  if (::fchmod(fd.get(), mode & 07777) != 0 ||
      ::renameat(dir_fd, tmp.c_str(), dir_fd, name.c_str()) != 0) {
    const int err = errno;
    ::unlinkat(dir_fd, tmp.c_str(), 0);
    return Status::FromErrno("replace " + std::string(what), err);
  }
  return Status::Ok();
}

}  // namespace mirrorcast
