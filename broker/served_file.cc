#include "broker/served_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "core/fs/path.h"
#include "core/wire/envelope.h"

namespace mirrorcast {

namespace {

int64_t Nanos(const struct timespec& ts) {
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + static_cast<int64_t>(ts.tv_nsec);
}

// O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer.
constexpr int kReadFlags = O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC;
constexpr int kDirFlags = O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC;

// Why openat(2) with O_NOFOLLOW refused `shown`, in words.
Status OpenError(int err, const std::string& shown) {
  switch (err) {
    case ELOOP:
      return Status::Rejected(shown + " is a symlink; refusing to follow it");
    case ENOTDIR:
      return Status::Rejected(shown + " is not a directory");
    case ENOENT:
      return Status::NotFound(shown + " does not exist");
    default:
      return Status::FromErrno("open " + shown, err);
  }
}

// O_DIRECTORY|O_NOFOLLOW reports a symlink as ENOTDIR: say which it was.
Status DirOpenError(int err, int parent, const std::string& name, const std::string& shown) {
  struct stat st {};
  if (err == ENOTDIR && ::fstatat(parent, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 &&
      S_ISLNK(st.st_mode)) {
    err = ELOOP;
  }
  return OpenError(err, shown);
}

Status CheckRegular(OpenedFile& file, const std::string& shown) {
  if (::fstat(file.fd.get(), &file.st) != 0) return Status::FromErrno("stat " + shown, errno);
  if (!S_ISREG(file.st.st_mode)) return Status::Rejected(shown + " is not a regular file");
  // Back to blocking reads (O_NONBLOCK only guarded the open).
  const int flags = ::fcntl(file.fd.get(), F_GETFL);
  if (flags >= 0) ::fcntl(file.fd.get(), F_SETFL, flags & ~O_NONBLOCK);
  return Status::Ok();
}

}  // namespace

FileIdentity IdentityOf(const struct stat& st) {
  FileIdentity id;
  id.dev = static_cast<uint64_t>(st.st_dev);
  id.ino = static_cast<uint64_t>(st.st_ino);
  id.size = static_cast<uint64_t>(st.st_size);
  id.mtime_ns = Nanos(st.st_mtim);
  id.ctime_ns = Nanos(st.st_ctim);
  return id;
}

bool SameContent(const FileIdentity& published, const FileIdentity& now) {
  return published.dev == now.dev && published.ino == now.ino && published.size == now.size &&
         published.mtime_ns == now.mtime_ns;
}

Result<OpenedFile> OpenInTree(const std::filesystem::path& tree_root, std::string_view repo,
                              std::string_view rel, TreeDirCache* cache) {
  MC_RETURN_IF_ERROR(ValidateRepoName(repo));
  MC_RETURN_IF_ERROR(ValidateRelativePath(rel));
  const std::string repo_name(repo);
  const size_t last_slash = rel.rfind('/');
  const std::string_view parent_rel =
      last_slash == std::string_view::npos ? std::string_view() : rel.substr(0, last_slash);
  if (cache != nullptr && cache->fd.valid() && cache->repo == repo && cache->parent == parent_rel) {
    const std::string component(
        rel.substr(last_slash == std::string_view::npos ? 0 : last_slash + 1));
    const std::string shown = EscapeForLog(repo) + "/" + EscapeForLog(rel);
    OpenedFile file;
    file.fd.reset(::openat(cache->fd.get(), component.c_str(), kReadFlags));
    if (!file.fd.valid()) return OpenError(errno, shown);
    MC_RETURN_IF_ERROR(CheckRegular(file, shown));
    file.parent.reset(::fcntl(cache->fd.get(), F_DUPFD_CLOEXEC, 0));
    if (!file.parent.valid()) return Status::FromErrno("dup", errno);
    file.name = component;
    return file;
  }
  // The configured root may itself be a symlink (configuration, not input).
  UniqueFd dir(::open(tree_root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dir.valid()) return Status::FromErrno("open tree root " + tree_root.string(), errno);
  UniqueFd next(::openat(dir.get(), repo_name.c_str(), kDirFlags));
  if (!next.valid()) {
    return DirOpenError(errno, dir.get(), repo_name, "repo directory " + EscapeForLog(repo));
  }
  dir = std::move(next);

  std::string shown = EscapeForLog(repo);
  size_t start = 0;
  for (;;) {
    const size_t slash = rel.find('/', start);
    const std::string component(rel.substr(
        start, slash == std::string_view::npos ? std::string_view::npos : slash - start));
    shown += '/';
    shown += EscapeForLog(component);
    if (slash == std::string_view::npos) {
      OpenedFile file;
      file.fd.reset(::openat(dir.get(), component.c_str(), kReadFlags));
      if (!file.fd.valid()) return OpenError(errno, shown);
      MC_RETURN_IF_ERROR(CheckRegular(file, shown));
      if (cache != nullptr) {
        cache->repo = repo_name;
        cache->parent = std::string(parent_rel);
        cache->fd.reset(::fcntl(dir.get(), F_DUPFD_CLOEXEC, 0));
      }
      file.parent = std::move(dir);
      file.name = component;
      return file;
    }
    next.reset(::openat(dir.get(), component.c_str(), kDirFlags));
    if (!next.valid()) return DirOpenError(errno, dir.get(), component, shown);
    dir = std::move(next);
    start = slash + 1;
  }
}

Result<OpenedFile> OpenStateFile(const std::filesystem::path& path) {
  OpenedFile file;
  file.fd.reset(::open(path.c_str(), kReadFlags));
  if (!file.fd.valid()) return OpenError(errno, path.string());
  MC_RETURN_IF_ERROR(CheckRegular(file, path.string()));
  file.name = path.filename().string();
  return file;
}

}  // namespace mirrorcast
