#include "broker/object_store.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <system_error>

#include "core/base/log.h"
#include "core/crypto/sha256.h"
#include "core/fs/atomic.h"

namespace mirrorcast {

namespace fs = std::filesystem;

fs::path ObjectStore::PathOf(std::string_view repo, std::string_view sha256) const {
  const std::string hex = ToHex(sha256);
  return dir_ / std::string(repo) / hex.substr(0, 2) / hex;
}

Result<std::optional<RetainedObject>> ObjectStore::Retain(std::string_view repo,
                                                          std::string_view sha256,
                                                          const OpenedFile& source,
                                                          std::string* why_not) {
  const uint64_t device = static_cast<uint64_t>(source.st.st_dev);
  auto known = mode_by_device_.find(device);
  const Mode mode = known == mode_by_device_.end() ? Mode::kLink : known->second;
  if (mode == Mode::kNone) return std::optional<RetainedObject>();

  const fs::path path = PathOf(repo, sha256);
  // The store's directories, opened once each (a first publish retains
  // every file); the descriptor stays valid whatever happens to the name.
  auto cached = dir_fds_.find(path.parent_path().string());
  if (cached == dir_fds_.end()) {
    std::error_code ec;
    fs::create_directories(path.parent_path(), ec);
    if (ec) return Status::IoError("create " + path.parent_path().string() + ": " + ec.message());
    UniqueFd opened(
        ::open(path.parent_path().c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!opened.valid()) return Status::FromErrno("open " + path.parent_path().string(), errno);
    if (dir_fds_.size() >= kMaxCachedDirs) dir_fds_.clear();
    cached = dir_fds_.emplace(path.parent_path().string(), std::move(opened)).first;
  }
  const UniqueFd& dir = cached->second;
  const std::string name = path.filename().string();
  const std::string tmp = "." + name + ".tmp";
  auto clear_tmp = [&]() -> Status {
    if (::unlinkat(dir.get(), tmp.c_str(), 0) != 0 && errno != ENOENT) {
      return Status::FromErrno("remove " + tmp, errno);
    }
    return Status::Ok();
  };
  if (mode == Mode::kClone) {
    MC_RETURN_IF_ERROR(clear_tmp());
    return Clone(dir.get(), tmp, name, source, path);
  }

  // By directory and name, never following a symlink (flags 0): the
  // directory is the one OpenInTree walked to without following any. A new
  // object is linked under its name at once (a first publish makes a
  // million); one that exists is replaced through a temporary name.
  const char* made = name.c_str();
  int linked_ok = ::linkat(source.parent.get(), source.name.c_str(), dir.get(), made, 0);
  if (linked_ok != 0 && errno == EEXIST) {
    MC_RETURN_IF_ERROR(clear_tmp());
    made = tmp.c_str();
    linked_ok = ::linkat(source.parent.get(), source.name.c_str(), dir.get(), made, 0);
  }
  if (linked_ok != 0) {
    const int err = errno;
    if (err == EXDEV) {
      MC_RETURN_IF_ERROR(clear_tmp());
      auto cloned = Clone(dir.get(), tmp, name, source, path);
      if (cloned.ok() && cloned->has_value()) {
        mode_by_device_[device] = Mode::kClone;
        MC_LOG(warning) << "retained store " << dir_.string()
                        << " is on another filesystem than the tree (device " << device
                        << "): retaining versions as reflinks (FICLONE)";
      }
      return cloned;
    }
    if (why_not != nullptr) *why_not = "link " + source.name + ": " + std::strerror(err);
    return std::optional<RetainedObject>();
  }
  // The name may have been replaced between OpenInTree and linkat: the link
  // must be the inode that was checked, or nothing.
  struct stat linked {};
  if (::fstatat(dir.get(), made, &linked, AT_SYMLINK_NOFOLLOW) != 0 ||
      linked.st_ino != source.st.st_ino || linked.st_dev != source.st.st_dev) {
    ::unlinkat(dir.get(), made, 0);
    return Status::Rejected(source.name + " was replaced while the broker was recording it");
  }
  if (made == tmp.c_str() && ::renameat(dir.get(), tmp.c_str(), dir.get(), name.c_str()) != 0) {
    const int err = errno;
    ::unlinkat(dir.get(), tmp.c_str(), 0);
    return Status::FromErrno("rename into " + path.string(), err);
  }
  struct stat after {};
  if (::fstat(source.fd.get(), &after) != 0) return Status::FromErrno("stat " + source.name, errno);
  return std::optional<RetainedObject>(RetainedObject{ObjectKind::kLink, IdentityOf(after)});
}

Result<std::optional<RetainedObject>> ObjectStore::Clone(int dir_fd, const std::string& tmp,
                                                         const std::string& name,
                                                         const OpenedFile& source,
                                                         const fs::path& shown) {
  UniqueFd out(
      ::openat(dir_fd, tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0444));
  if (!out.valid()) return Status::FromErrno("create " + shown.string(), errno);
  if (::ioctl(out.get(), FICLONE, source.fd.get()) != 0) {
    const int err = errno;
    out.reset();
    ::unlinkat(dir_fd, tmp.c_str(), 0);
    const uint64_t device = static_cast<uint64_t>(source.st.st_dev);
    mode_by_device_[device] = Mode::kNone;
    MC_LOG(warning) << "retained store " << dir_.string()
                    << " is on another filesystem than the tree (device " << device
                    << ") and reflinks fail there (FICLONE: " << std::strerror(err)
                    << "): superseded versions of files on that filesystem are not kept; only "
                       "current versions are served, from the tree. Put --state on the tree's "
                       "filesystem to keep them";
    return std::optional<RetainedObject>();
  }
  // A clone is a copy in time: the source must not have moved while it was made.
  struct stat st {};
  struct stat source_after {};
  if (::fstat(out.get(), &st) != 0) return Status::FromErrno("stat " + shown.string(), errno);
  if (::fstat(source.fd.get(), &source_after) != 0) {
    return Status::FromErrno("stat " + source.name, errno);
  }
  if (static_cast<uint64_t>(st.st_size) != static_cast<uint64_t>(source.st.st_size) ||
      !SameContent(IdentityOf(source.st), IdentityOf(source_after))) {
    ::unlinkat(dir_fd, tmp.c_str(), 0);
    return Status::Rejected(source.name + " changed while the broker was recording it");
  }
  if (::renameat(dir_fd, tmp.c_str(), dir_fd, name.c_str()) != 0) {
    const int err = errno;
    ::unlinkat(dir_fd, tmp.c_str(), 0);
    return Status::FromErrno("rename into " + shown.string(), err);
  }
  return std::optional<RetainedObject>(RetainedObject{ObjectKind::kClone, IdentityOf(st)});
}

Status ObjectStore::Remove(std::string_view repo, std::string_view sha256) {
  const fs::path path = PathOf(repo, sha256);
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
    return Status::FromErrno("remove " + path.string(), errno);
  }
  return Status::Ok();
}

}  // namespace mirrorcast
