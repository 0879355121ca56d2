// What changed in a tree since a manifest, without holding either in memory:
// the publisher's scan (format v2).
//
// DiffTree walks the whole tree in bytewise path order (each directory's
// names sorted, a subdirectory's entries placed where "name/" sorts), merges
// it with the previous manifest read chunk by chunk and with the hash cache
// read in path order, and emits the change list in path order. A file is
// hashed only when its stat identity (size, mtime and ctime in ns, inode) is
// not the cached one. Threads: the walk (getdents64 and an fstatat per name,
// relative to the open directory, never following a symlink) runs on a
// thread of its own and hands batches of entries to the calling thread,
// which decodes the old manifest, reads the cache and merges; files to hash
// go to `hash_threads` threads, and changes leave in order as soon as
// everything before them is known. So the walk, which is system-call bound
// like `find`, is never held up by the merge, and a first publish hashes on
// every core. Memory: one chunk, one directory listing per level, a few
// batches of walked entries and at most `hash_batch_files` files waiting for
// their hash.
//
// DiffPaths does the same for just the listed paths (--paths-from): each is
// re-stat'ed, a directory is walked whole, a path that is gone is deleted
// with everything below it, a parent that is gone or no longer a directory
// is rescanned in its place, and missing parent directories are added. Only
// the chunks holding those paths are read: O(listed paths + their subtrees).
// The walk runs on the calling thread; the hash cache is looked up by path.
//
// Not thread-safe; the walking and hashing threads are its own and end
// before it returns. `sink` is called on the calling thread only.
#pragma once

#include <chrono>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "core/base/clock.h"
#include "core/base/status.h"
#include "core/manifest/chunks.h"
#include "core/manifest/hash_cache.h"
#include "core/manifest/scanner.h"

namespace mirrorcast {

// What a scan has done so far (TreeDiffOptions::progress).
struct ScanProgress {
  uint64_t entries = 0;        // walked and merged so far
  uint64_t entries_total = 0;  // TreeDiffOptions::entries_total (0: unknown)
  uint64_t files_hashed = 0;
  uint64_t bytes_hashed = 0;
  double seconds = 0;
  bool finished = false;
};

struct TreeDiffOptions {
  ScanOptions scan;
  int hash_threads = 2;
  // Files waiting for their hash at most; then the merge waits for the
  // oldest (bounds memory on a first publish).
  size_t hash_batch_files = 4096;
  // DiffTree calls `progress` on the calling thread about every
  // `progress_interval` of a long scan, and once more with `finished` at
  // the end if it was called before. `entries_total` is what the scan is
  // expected to visit (the previous manifest's count, or CountTreeEntries).
  std::function<void(const ScanProgress&)> progress;
  std::chrono::milliseconds progress_interval{5000};
  uint64_t entries_total = 0;
  const Clock* clock = nullptr;  // for the interval; nullptr: the real clock
};

// How many entries a full scan of `root` will visit (excluded top-level
// names left out), from the directory listings alone: getdents64 with the
// entry type, no stat per name, so it costs a fraction of the scan. A total
// for a first publish's progress.
Result<uint64_t> CountTreeEntries(const std::filesystem::path& root, const ScanOptions& options);

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
