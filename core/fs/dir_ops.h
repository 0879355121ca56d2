// Changes inside a tree made relative to directory descriptors, never by a
// path walk that could follow a symlink: every write, mode change, mtime
// change and deletion the applier makes goes through here, with a
// descriptor of the parent directory that was opened one component at a
// time with O_NOFOLLOW (OpenDirsUnder, OpenDirUnder). A parent swapped for
// a symlink after it was opened changes nothing: the descriptor still names
// the directory that was checked.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

#include "core/base/status.h"
#include "core/fs/atomic.h"

namespace mirrorcast {

// A descriptor of the existing directory root/rel (root itself for ""),
// opened one component at a time with O_NOFOLLOW and creating nothing.
// NotFound when a component is missing, Rejected when one is a symlink or
// not a directory.
Result<UniqueFd> OpenDirUnder(const std::filesystem::path& root, std::string_view rel);

// The last component of a relative path ("a/b/c" -> "c").
std::string_view BaseName(std::string_view rel);

// Sets the permission bits (mode & 07777) of `name` in `dir_fd`, refusing a
// symlink there (Rejected); `what` names it in errors.
Status SetModeAt(int dir_fd, const std::string& name, mode_t mode, std::string_view what);

// The same, and the mtime (whole seconds, also the atime), without following
// a symlink at any step.
Status SetModeAndMtimeAt(int dir_fd, const std::string& name, mode_t mode, int64_t mtime,
                         std::string_view what);

// Deletes `name` in `dir_fd`: a file or symlink is unlinked, a directory is
// emptied through descriptors (never following a symlink below) and
// removed. Already gone is fine.
Status RemoveAllAt(int dir_fd, const std::string& name, std::string_view what);

// Replaces `name` in `dir_fd` with a file holding `data` (mode `mode`),
// atomically: written under a temporary name (O_EXCL, O_NOFOLLOW), then
// renamed over it. A symlink at `name` is replaced, never followed. Not
// fsync'd: for small files whose loss in a crash does no harm.
Status WriteFileAt(int dir_fd, const std::string& name, std::string_view data, mode_t mode,
                   std::string_view what);

}  // namespace mirrorcast
