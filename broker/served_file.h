// Opening the files a broker serves, and telling whether they still hold the
// bytes that were published.
//
// A served file is opened below tree_root/REPO one component at a time with
// openat(2) and O_NOFOLLOW (directories with O_DIRECTORY too, the repo
// directory included), so no symlink anywhere below tree_root is followed: a
// repo name or a directory that is a symlink out of the tree is refused, not
// resolved. tree_root itself is configuration and may be a symlink.
//
// All functions are thread-safe (no shared state).
#pragma once

#include <sys/stat.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

#include "core/base/log.h"  // EscapeForLog
#include "core/base/status.h"
#include "core/fs/atomic.h"

namespace mirrorcast {

// The stat identity of a file version, recorded when its publish commits.
struct FileIdentity {
  uint64_t dev = 0;
  uint64_t ino = 0;
  uint64_t size = 0;
  int64_t mtime_ns = 0;
  int64_t ctime_ns = 0;
};

FileIdentity IdentityOf(const struct stat& st);

// Whether `now` still holds the content recorded in `published`: same inode
// on the same device, same size, same mtime to the nanosecond. ctime is
// recorded but not compared: hard-linking a version into the retained store,
// the release tooling renaming a new version over the path (which unlinks
// the old inode), or a chmod all move it without touching a byte, and
// comparing it would refuse exactly the versions the store exists to keep. A
// rewrite moves mtime; a rewrite that restores the old mtime to the
// nanosecond still cannot reach a mirror, which checks every file's SHA-256.
bool SameContent(const FileIdentity& published, const FileIdentity& now);

// A regular file opened below tree_root/REPO, with its directory kept open so
// the caller can link it (linkat) without resolving the path again.
struct OpenedFile {
  UniqueFd fd;       // O_RDONLY
  UniqueFd parent;   // the directory holding it
  std::string name;  // its last path component
  struct stat st {};
};

// Opens tree_root/repo/rel for reading (see the top of this file). `rel` must
// be a valid relative path; `repo` a valid repo name. Refusals (a symlink or
// a non-directory on the way, not a regular file) are kRejected; a missing
// component is kNotFound. Never blocks on a FIFO.
// The last directory OpenInTree walked to, kept so that the next file in the
// same directory (a publish records files in path order) opens with one
// openat instead of a walk from the root. The descriptor names the directory
// the O_NOFOLLOW walk reached, whatever is renamed meanwhile. One thread.
struct TreeDirCache {
  std::string repo;
  std::string parent;  // repo-relative
  UniqueFd fd;
};

Result<OpenedFile> OpenInTree(const std::filesystem::path& tree_root, std::string_view repo,
                              std::string_view rel, TreeDirCache* cache = nullptr);

// Opens a file of the broker's own state (a retained object) read-only,
// without following a symlink at its last component; regular files only.
Result<OpenedFile> OpenStateFile(const std::filesystem::path& path);

}  // namespace mirrorcast
