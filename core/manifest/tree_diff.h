// What changed in a tree since a manifest, without holding either in memory:
// the publisher's scan (format v2).
//
// DiffTree walks the whole tree in bytewise path order (each directory's
// names sorted, a subdirectory's entries placed where "name/" sorts), merges
// it with the previous manifest read chunk by chunk and with the hash cache
// read in path order, and emits the change list in path order. A file is
// hashed only when its stat identity (size, mtime and ctime in ns, inode) is
// not the cached one; files to hash are hashed by `hash_threads` threads in
// batches, so a first publish uses every core. Memory: one chunk, one
// directory listing per level, one batch of files to hash.
//
// DiffPaths does the same for just the listed paths (--paths-from): each is
// re-stat'ed, a directory is walked whole, a path that is gone is deleted
// with everything below it, a parent that is gone or no longer a directory
// is rescanned in its place, and missing parent directories are added. Only
// the chunks holding those paths are read: O(listed paths + their subtrees).
//
// Not thread-safe; the hashing threads are its own.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "core/base/status.h"
#include "core/manifest/chunks.h"
#include "core/manifest/hash_cache.h"
#include "core/manifest/scanner.h"

namespace mirrorcast {

struct TreeDiffOptions {
  ScanOptions scan;
  int hash_threads = 2;
  size_t hash_batch_files = 1024;
};

// `cache` may be null (every file is hashed). `stats->entries` is the number
// of entries of the scanned tree.
Status DiffTree(const std::filesystem::path& root, const ManifestIndex& previous,
                ChunkSource& chunks, HashCache* cache, ScanStats* stats,
                const TreeDiffOptions& options, const ChangeSink& sink);

// `paths` are relative and valid (ValidateRelativePath). `stats->entries`
// is left 0 (the tree is not walked).
Status DiffPaths(const std::filesystem::path& root, const std::vector<std::string>& paths,
                 const ManifestIndex& previous, ChunkSource& chunks, HashCache* cache,
                 ScanStats* stats, const TreeDiffOptions& options, const ChangeSink& sink);

// The entries of a manifest whose paths are in [lo, hi), reading only the
// chunks that can hold them.
Status ForEachEntryInRange(const ManifestIndex& index, ChunkSource& chunks, std::string_view lo,
                           std::string_view hi, const EntrySink& sink);

}  // namespace mirrorcast
