// One daemon per directory: an exclusive flock(2) on the directory itself,
// held for the life of the process (released by the kernel when it exits,
// however it exits, so a crash never leaves a stale lock behind).
//
// A broker locks its --state; a subscriber its --state and its --tree, so a
// second instance on either refuses to start instead of interleaving writes.
#pragma once

#include <filesystem>
#include <string_view>

#include "core/base/status.h"
#include "core/fs/atomic.h"

namespace mirrorcast {

// Creates `dir` (0755 for missing components) if needed, opens it and takes
// the lock without waiting. `what` names it for the refusal, e.g. "state
// directory (--state)". A lock held elsewhere is kFailedPrecondition.
Result<UniqueFd> LockDirectory(const std::filesystem::path& dir, std::string_view what);

// For --check-config: whether this process could lock and write `dir` (an
// existing directory it may write, or a missing one whose parent exists).
// Creates nothing. `what` names it, e.g. "--state".
Status CheckUsableDirectory(const std::filesystem::path& dir, std::string_view what);

}  // namespace mirrorcast
