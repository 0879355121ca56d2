// Builds a Manifest from a directory tree: regular files, symlinks and
// directories (other kinds are skipped with a warning). Files are hashed only
// when the HashCache has no valid entry, so a scan of an unchanged tree is a
// stat-only walk that reads no file contents.
#pragma once

#include <sys/stat.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "core/base/status.h"
#include "core/fs/atomic.h"
#include "core/manifest/hash_cache.h"
#include "core/manifest/manifest.h"

namespace mirrorcast {

struct ScanStats {
  uint64_t entries = 0;       // entries in the resulting manifest
  uint64_t files_hashed = 0;  // files whose contents were read
  uint64_t bytes_hashed = 0;  // bytes read from file contents
  uint64_t cache_hits = 0;    // files whose digest came from the cache
  uint64_t skipped = 0;       // sockets, fifos, devices, excluded names
};

struct ScanOptions {
  // Top-level names never included (mirrorcast's own staging directory).
  std::vector<std::string> exclude_top_level = {".mirrorcast-staging"};
};

// Scans all of `root`. `cache` may be null (then every file is hashed).
Result<Manifest> ScanTree(const std::filesystem::path& root, HashCache* cache, ScanStats* stats,
                          const ScanOptions& options = {});

// Updates `manifest` for just `paths` (relative): each is re-stat'ed (and
// re-hashed if its identity changed); a path that no longer exists is removed
// together with everything below it; a new directory is scanned whole; missing
// parent directories are added. Used by `mirrorcast-publish --paths-from`.
Status RescanPaths(const std::filesystem::path& root, const std::vector<std::string>& paths,
                   HashCache* cache, Manifest* manifest, ScanStats* stats,
                   const ScanOptions& options = {});

// Building blocks shared with tree_diff.h.

// Whether `rel` names an excluded top-level entry (or something below it).
bool IsExcludedPath(const ScanOptions& options, std::string_view rel);

// The names in the directory `dir` (an open descriptor: it is handed to
// fdopendir and replaced by a duplicate, so the caller keeps one for
// fstatat/openat), without "." and "..", unsorted. `shown` names it in errors.
Result<std::vector<std::string>> ListDirectory(UniqueFd& dir, const std::string& shown);

// The target of the symlink `name` in `dir_fd` (whose lstat is `st`); `rel`
// names it in errors. NotFound when it vanished.
Result<std::string> ReadSymlinkAt(int dir_fd, const std::string& name, const std::string& rel,
                                  const struct stat& st);

// SHA-256 of the regular file `full` whose lstat was *st, read again until
// its identity is the same before and after (a file that keeps changing is
// Unavailable after a few tries; *st is updated to what was hashed). Counts
// into `stats` (may be null).
Result<std::string> HashStableFile(const std::filesystem::path& full, struct stat* st,
                                   ScanStats* stats);
// The same for the entry `name` of the open directory `dir_fd` (opened and
// re-stat'ed relative to it, never following a symlink at `name`), read at
// most `attempts` times; `full` names it in errors.
Result<std::string> HashStableFileAt(int dir_fd, const char* name,
                                     const std::filesystem::path& full, struct stat* st,
                                     ScanStats* stats, int attempts);

}  // namespace mirrorcast
