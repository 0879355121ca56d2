// Which tree a mirror's state directory describes: <state>/tree, written the
// first time a follower opens the pair, holding the tree's canonical path and
// its device and inode. Opening a state with another tree (a subscriber or a
// `verify --repair --delete-extra` given the wrong --state) is refused: it
// would turn one tree into the other's repo.
//
// The binding matches when the path is the same (a tree restored in place)
// or the device and inode are (a tree moved or reached by another path).
#pragma once

#include <filesystem>

#include "core/base/status.h"

namespace mirrorcast {

// Records `tree` for `state` when nothing is recorded yet; refuses
// (kFailedPrecondition, with what to do) when another tree is.
Status BindStateToTree(const std::filesystem::path& state, const std::filesystem::path& tree);

// Only the check: Ok when nothing is recorded (a state older than the
// binding) or when `tree` matches.
Status CheckStateTree(const std::filesystem::path& state, const std::filesystem::path& tree);

}  // namespace mirrorcast
