// Path safety: every path that comes from a manifest or a peer passes here
// before it touches the disk.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>

#include "core/base/status.h"

namespace mirrorcast {

inline constexpr size_t kMaxPathBytes = 4096;
inline constexpr size_t kMaxComponentBytes = 255;

// A safe repository-relative path: non-empty, at most kMaxPathBytes, no
// leading or trailing '/', no empty, "." or ".." component, no NUL, no '\',
// no component longer than kMaxComponentBytes, valid UTF-8 (paths travel in
// protobuf string fields). Returns Rejected otherwise.
Status ValidateRelativePath(std::string_view rel);

// A symlink at `link_path` (a valid relative path) pointing to `target` must
// stay inside the tree: target relative, not empty, valid UTF-8, no NUL or
// '\', and its lexical resolution from the link's directory never climbs above
// the root. '..' is accepted only as a leading run: after a name it could
// climb out through a symlinked directory.
Status ValidateSymlinkTarget(std::string_view link_path, std::string_view target);

// No existing component of root/rel *above the last one* is a symlink or a
// non-directory, so writing root/rel cannot escape through a symlink. Missing
// components are fine (they will be created as directories).
Status CheckNoSymlinkParents(const std::filesystem::path& root, std::string_view rel);

// The parent of a relative path ("a/b/c" -> "a/b", "c" -> "").
std::string_view ParentOf(std::string_view rel);

}  // namespace mirrorcast
