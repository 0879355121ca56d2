#include "core/fs/atomic.h"

#include "core/fs/dir_ops.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <memory>
#include <optional>
#include <random>

#include "core/fs/path.h"

namespace mirrorcast {
namespace {

constexpr size_t kCopyBufferBytes = 1 << 20;
constexpr int kTempNameAttempts = 16;

// A name for a staging file next to `path` that no other writer picks: the
// pid, a per-process counter and a random number, so concurrent writers in
// one process, several processes, or a leftover from a crash never collide
// (and O_EXCL catches whatever is left).
std::string TempName(const std::filesystem::path& path) {
  static std::atomic<uint64_t> counter{0};
  thread_local std::mt19937_64 rng{std::random_device{}()};
  std::string name = ".";
  name += path.filename().string();
  name += ".tmp.";
  name += std::to_string(::getpid());
  name += '.';
  name += std::to_string(counter.fetch_add(1, std::memory_order_relaxed));
  name += '.';
  name += std::to_string(rng() & 0xffffffff);
  // Keep the name within NAME_MAX even when the target's own name is long.
  if (name.size() > kMaxComponentBytes) name.erase(1, name.size() - kMaxComponentBytes);
  return name;
}

std::filesystem::path DirOf(const std::filesystem::path& path) {
  std::filesystem::path dir = path.parent_path();
  return dir.empty() ? std::filesystem::path(".") : dir;
}

Status WriteAll(int fd, std::string_view data, std::string_view what) {
  const char* p = data.data();
  size_t left = data.size();
  while (left > 0) {
    ssize_t n = ::write(fd, p, left);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::FromErrno(what, errno);
    }
    p += n;
    left -= static_cast<size_t>(n);
  }
  return Status::Ok();
}

// close(2) can report a deferred write error (NFS, quota): it must not be
// ignored on files we promise to be durable.
Status CloseChecked(UniqueFd& fd, std::string_view what) {
  int raw = fd.release();
  if (::close(raw) != 0 && errno != EINTR) return Status::FromErrno(what, errno);
  return Status::Ok();
}

}  // namespace

// ---------------------------------------------------------------------------
// UniqueFd
// ---------------------------------------------------------------------------

UniqueFd& UniqueFd::operator=(UniqueFd&& other) noexcept {
  if (this != &other) reset(other.release());
  return *this;
}

UniqueFd::~UniqueFd() { reset(); }

int UniqueFd::release() {
  int fd = fd_;
  fd_ = -1;
  return fd;
}

void UniqueFd::reset(int fd) {
  if (fd_ >= 0 && fd_ != fd) ::close(fd_);
  fd_ = fd;
}

// ---------------------------------------------------------------------------
// fsync
// ---------------------------------------------------------------------------

Status FsyncFd(int fd, std::string_view what) {
  while (::fsync(fd) != 0) {
    if (errno == EINTR) continue;
    return Status::FromErrno("fsync " + std::string(what), errno);
  }
  return Status::Ok();
}

Status FsyncPath(const std::filesystem::path& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return Status::FromErrno("open for fsync " + path.string(), errno);
  return FsyncFd(fd.get(), path.string());
}

Status FsyncDir(const std::filesystem::path& dir) {
  UniqueFd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd.valid()) return Status::FromErrno("open directory for fsync " + dir.string(), errno);
  return FsyncFd(fd.get(), dir.string());
}

// ---------------------------------------------------------------------------
// Whole-file operations
// ---------------------------------------------------------------------------

Status WriteFileAtomic(const std::filesystem::path& path, std::string_view data, mode_t mode) {
  const std::filesystem::path dir = DirOf(path);
  std::filesystem::path tmp;
  UniqueFd fd;
  for (int attempt = 0; attempt < kTempNameAttempts && !fd.valid(); ++attempt) {
    tmp = dir / TempName(path);
    fd.reset(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
    if (!fd.valid() && errno != EEXIST) {
      return Status::FromErrno("create temporary file " + tmp.string(), errno);
    }
  }
  if (!fd.valid()) return Status::IoError("no free temporary name next to " + path.string());

  // From here on the temporary file must not outlive a failure.
  auto fail = [&tmp](Status status) {
    ::unlink(tmp.c_str());
    return status;
  };
  Status status = WriteAll(fd.get(), data, "write " + tmp.string());
  if (!status.ok()) return fail(status);
  // fchmod before fsync so the mode is as durable as the content.
  if (::fchmod(fd.get(), mode) != 0)
    return fail(Status::FromErrno("fchmod " + tmp.string(), errno));
  status = FsyncFd(fd.get(), tmp.string());
  if (!status.ok()) return fail(status);
  status = CloseChecked(fd, "close " + tmp.string());
  if (!status.ok()) return fail(status);
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    return fail(Status::FromErrno("rename " + tmp.string() + " -> " + path.string(), errno));
  }
  return FsyncDir(dir);
}

Result<std::string> ReadFileToString(const std::filesystem::path& path, size_t max_bytes) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return Status::FromErrno("open " + path.string(), errno);
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return Status::FromErrno("fstat " + path.string(), errno);
  if (S_ISDIR(st.st_mode)) return Status::InvalidArgument(path.string() + " is a directory");
  if (S_ISREG(st.st_mode) && static_cast<uint64_t>(st.st_size) > max_bytes) {
    return Status::ResourceExhausted(path.string() + " is " + std::to_string(st.st_size) +
                                     " bytes, more than the limit of " + std::to_string(max_bytes));
  }
  std::string out;
  if (S_ISREG(st.st_mode)) out.reserve(static_cast<size_t>(st.st_size));
  // Read up to one byte past the limit: the file may have grown since fstat,
  // or not be a regular file at all (a pipe).
  char buf[64 * 1024];
  for (;;) {
    size_t want = sizeof(buf);
    if (max_bytes - out.size() + 1 < want) want = max_bytes - out.size() + 1;
    ssize_t n = ::read(fd.get(), buf, want);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::FromErrno("read " + path.string(), errno);
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
    if (out.size() > max_bytes) {
      return Status::ResourceExhausted(path.string() + " is larger than the limit of " +
                                       std::to_string(max_bytes) + " bytes");
    }
  }
  return out;
}

Status RenameDurable(const std::filesystem::path& from, const std::filesystem::path& to) {
  if (::rename(from.c_str(), to.c_str()) != 0) {
    return Status::FromErrno("rename " + from.string() + " -> " + to.string(), errno);
  }
  const std::filesystem::path to_dir = DirOf(to);
  const std::filesystem::path from_dir = DirOf(from);
  MC_RETURN_IF_ERROR(FsyncDir(to_dir));
  if (from_dir.lexically_normal() != to_dir.lexically_normal())
    MC_RETURN_IF_ERROR(FsyncDir(from_dir));
  return Status::Ok();
}

// Walks down with openat(O_NOFOLLOW) from an fd of each directory, so a
// component swapped for a symlink between the check and the use is still
// refused (no lstat-then-mkdir race).
Status MakeDirsUnder(const std::filesystem::path& root, std::string_view rel, mode_t mode) {
  return OpenDirsUnder(root, rel, mode).status();
}

namespace {

// Opens root/rel one component at a time, never following a symlink; with
// `create`, makes what is missing with that mode (fsyncing each new entry's
// parent), otherwise a missing component is NotFound.
Result<UniqueFd> WalkDirsUnder(const std::filesystem::path& root, std::string_view rel,
                               std::optional<mode_t> create) {
  UniqueFd dir(::open(root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dir.valid()) return Status::FromErrno("open root " + root.string(), errno);
  if (rel.empty()) return dir;  // root itself: nothing to create
  MC_RETURN_IF_ERROR(ValidateRelativePath(rel));

  std::string walked = root.string();
  size_t start = 0;
  while (start < rel.size()) {
    size_t end = rel.find('/', start);
    if (end == std::string_view::npos) end = rel.size();
    const std::string name(rel.substr(start, end - start));
    start = end + 1;
    walked += '/';
    walked += name;

    bool created = false;
    if (create && ::mkdirat(dir.get(), name.c_str(), *create) == 0) {
      created = true;
    } else if (create && errno != EEXIST) {
      return Status::FromErrno("mkdir " + walked, errno);
    }
    UniqueFd child(
        ::openat(dir.get(), name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!child.valid()) {
      int err = errno;
      if (!create && err == ENOENT) return Status::NotFound(walked + " does not exist");
      struct stat st;
      if (::fstatat(dir.get(), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0) {
        if (S_ISLNK(st.st_mode)) return Status::Rejected("refusing to follow symlink " + walked);
        if (!S_ISDIR(st.st_mode)) return Status::Rejected("not a directory: " + walked);
      }
      return Status::FromErrno("open directory " + walked, err);
    }
    if (created) {
      // mkdir's mode is filtered by the umask; the caller asked for `mode`.
      if (::fchmod(child.get(), *create) != 0) return Status::FromErrno("fchmod " + walked, errno);
      // The new directory's entry lives in its parent.
      MC_RETURN_IF_ERROR(FsyncFd(dir.get(), "parent of " + walked));
    }
    dir = std::move(child);
  }
  return dir;
}

}  // namespace

Result<UniqueFd> OpenDirsUnder(const std::filesystem::path& root, std::string_view rel,
                               mode_t mode) {
  return WalkDirsUnder(root, rel, mode);
}

Result<UniqueFd> OpenDirUnder(const std::filesystem::path& root, std::string_view rel) {
  return WalkDirsUnder(root, rel, std::nullopt);
}

Status CopyFileContents(const std::filesystem::path& from, const std::filesystem::path& to,
                        mode_t mode, uint64_t* bytes_copied) {
  if (bytes_copied != nullptr) *bytes_copied = 0;
  UniqueFd in(::open(from.c_str(), O_RDONLY | O_CLOEXEC));
  if (!in.valid()) return Status::FromErrno("open " + from.string(), errno);
  struct stat st;
  if (::fstat(in.get(), &st) != 0) return Status::FromErrno("fstat " + from.string(), errno);
  if (!S_ISREG(st.st_mode))
    return Status::InvalidArgument(from.string() + " is not a regular file");

  UniqueFd out(::open(to.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, mode));
  if (!out.valid()) {
    if (errno == ELOOP) return Status::Rejected("refusing to write through symlink " + to.string());
    return Status::FromErrno("create " + to.string(), errno);
  }
  // Both for the umask on creation and for a pre-existing file's old mode.
  if (::fchmod(out.get(), mode) != 0) return Status::FromErrno("fchmod " + to.string(), errno);

  uint64_t total = 0;
  bool use_copy_range = true;
  while (use_copy_range) {
    ssize_t n = ::copy_file_range(in.get(), nullptr, out.get(), nullptr, kCopyBufferBytes, 0);
    if (n > 0) {
      total += static_cast<uint64_t>(n);
      continue;
    }
    if (n == 0) break;
    if (errno == EINTR) continue;
    if (errno == EXDEV || errno == ENOSYS || errno == EINVAL || errno == EOPNOTSUPP ||
        errno == EPERM) {
      // Not offered here (old kernel, cross-filesystem, special filesystem):
      // continue with plain read/write from the current file offsets.
      use_copy_range = false;
      break;
    }
    return Status::FromErrno("copy " + from.string() + " -> " + to.string(), errno);
  }
  if (!use_copy_range) {
    std::unique_ptr<char[]> buf(new char[kCopyBufferBytes]);
    for (;;) {
      ssize_t n = ::read(in.get(), buf.get(), kCopyBufferBytes);
      if (n < 0) {
        if (errno == EINTR) continue;
        return Status::FromErrno("read " + from.string(), errno);
      }
      if (n == 0) break;
      MC_RETURN_IF_ERROR(WriteAll(out.get(), std::string_view(buf.get(), static_cast<size_t>(n)),
                                  "write " + to.string()));
      total += static_cast<uint64_t>(n);
    }
  }
  MC_RETURN_IF_ERROR(FsyncFd(out.get(), to.string()));
  MC_RETURN_IF_ERROR(CloseChecked(out, "close " + to.string()));
  if (bytes_copied != nullptr) *bytes_copied = total;
  return Status::Ok();
}

Result<bool> SameFilesystem(const std::filesystem::path& a, const std::filesystem::path& b) {
  // A path that does not exist yet (a staging directory about to be made)
  // lives on the filesystem of its nearest existing ancestor.
  auto device_of = [](std::filesystem::path p) -> Result<dev_t> {
    for (;;) {
      struct stat st;
      const std::filesystem::path probe = p.empty() ? std::filesystem::path(".") : p;
      if (::stat(probe.c_str(), &st) == 0) return st.st_dev;
      int err = errno;
      if (err != ENOENT && err != ENOTDIR) return Status::FromErrno("stat " + probe.string(), err);
      if (p.empty() || p == p.root_path()) return Status::FromErrno("stat " + probe.string(), err);
      std::filesystem::path parent = p.parent_path();
      if (parent == p) return Status::FromErrno("stat " + probe.string(), err);
      p = std::move(parent);
    }
  };
  MC_ASSIGN_OR_RETURN(dev_t dev_a, device_of(a));
  MC_ASSIGN_OR_RETURN(dev_t dev_b, device_of(b));
  return dev_a == dev_b;
}

Status SyncFilesystem(const std::filesystem::path& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_DIRECTORY));
  if (!fd.valid()) return Status::FromErrno("open " + path.string(), errno);
  if (::syncfs(fd.get()) != 0) return Status::FromErrno("syncfs " + path.string(), errno);
  return Status::Ok();
}

Status SetModeAndMtime(const std::filesystem::path& path, mode_t mode, int64_t mtime) {
  if (::chmod(path.c_str(), mode & 07777) != 0) {
    return Status::FromErrno("chmod " + path.string(), errno);
  }
  struct timespec times[2];
  times[0].tv_sec = static_cast<time_t>(mtime);
  times[0].tv_nsec = 0;
  times[1] = times[0];
  if (::utimensat(AT_FDCWD, path.c_str(), times, AT_SYMLINK_NOFOLLOW) != 0) {
    return Status::FromErrno("set mtime " + path.string(), errno);
  }
  return Status::Ok();
}

}  // namespace mirrorcast
