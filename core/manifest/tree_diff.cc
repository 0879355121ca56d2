#include "core/manifest/tree_diff.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <deque>
#include <map>
#include <optional>
#include <thread>

#include "core/base/log.h"
#include "core/fs/atomic.h"
#include "core/fs/path.h"

namespace mirrorcast {
namespace {

namespace fs = std::filesystem;

using OldEntries = ManifestEntryStream;

v1::Change Deletion(const v1::FileEntry& old) {
  v1::Change c;
  c.set_kind(v1::CHANGE_DELETED);
  c.mutable_entry()->set_path(old.path());
  c.mutable_entry()->set_kind(old.kind());
  return c;
}

// The change from `old` (may be null) to `now`, if any.
std::optional<v1::Change> ChangeTo(const v1::FileEntry* old, const v1::FileEntry& now) {
  if (old != nullptr && SameEntry(*old, now)) return std::nullopt;
  v1::Change c;
  c.set_kind(old == nullptr ? v1::CHANGE_ADDED : v1::CHANGE_MODIFIED);
  *c.mutable_entry() = now;
  if (old != nullptr && old->kind() == v1::ENTRY_FILE) c.set_previous_sha256(old->sha256());
  return c;
}

// Changes in path order, some waiting for their file's hash. Files are
// hashed in batches by several threads; changes leave in order.
class ChangeQueue {
 public:
  ChangeQueue(const fs::path& root, HashCache* cache, ScanStats* stats,
              const TreeDiffOptions& options, const ChangeSink& sink)
      : root_(root), cache_(cache), stats_(stats), options_(options), sink_(sink) {}

  Status Ready(v1::Change change) {
    Item item;
    item.change = std::move(change);
    items_.push_back(std::move(item));
    return items_.size() >= 4 * options_.hash_batch_files ? Flush() : Status::Ok();
  }

  // `entry` lacks size and sha256; `old` is what the manifest had there.
  Status NeedsHash(v1::FileEntry entry, const struct stat& st, const v1::FileEntry* old) {
    Item item;
    item.file = std::move(entry);
    item.st = st;
    if (old != nullptr) item.old = *old;
    items_.push_back(std::move(item));
    ++pending_;
    return pending_ >= options_.hash_batch_files ? Flush() : Status::Ok();
  }

  Status Flush() {
    std::vector<Item*> work;
    for (Item& item : items_) {
      if (item.file) work.push_back(&item);
    }
    if (!work.empty()) HashAll(work);
    for (Item& item : items_) {
      if (!item.file) {
        MC_RETURN_IF_ERROR(sink_(std::move(item.change)));
        continue;
      }
      if (item.hashed.code() == Status::Code::kNotFound) {
        // Gone while we walked: not part of this scan (a deletion if it was known).
        if (item.old) MC_RETURN_IF_ERROR(sink_(Deletion(*item.old)));
        continue;
      }
      MC_RETURN_IF_ERROR(item.hashed.WithContext("hash " + item.file->path()));
      if (cache_ != nullptr) {
        if (Status s = cache_->Store(item.file->path(), item.st, item.file->sha256()); !s.ok()) {
          MC_LOG(warning) << "hash cache: cannot store " << item.file->path() << ": "
                          << s.ToString();
        }
      }
      std::optional<v1::Change> c = ChangeTo(item.old ? &*item.old : nullptr, *item.file);
      if (c) MC_RETURN_IF_ERROR(sink_(std::move(*c)));
    }
    items_.clear();
    pending_ = 0;
    return Status::Ok();
  }

 private:
  struct Item {
    v1::Change change;                  // ready, when !file
    std::optional<v1::FileEntry> file;  // waiting for its hash
    struct stat st {};
    std::optional<v1::FileEntry> old;
    Status hashed;
  };

  void HashAll(const std::vector<Item*>& work) {
    std::atomic<size_t> next{0};
    std::vector<ScanStats> counts(static_cast<size_t>(std::max(1, options_.hash_threads)));
    auto run = [&](size_t t) {
      for (size_t i; (i = next.fetch_add(1)) < work.size();) {
        Item& item = *work[i];
        Result<std::string> sha = HashStableFile(root_ / item.file->path(), &item.st, &counts[t]);
        if (!sha.ok()) {
          item.hashed = sha.status();
          continue;
        }
        item.file->set_size(static_cast<uint64_t>(item.st.st_size));
        item.file->set_sha256(std::move(*sha));
        item.file->set_mode(item.st.st_mode & 07777);
        item.file->set_mtime(static_cast<int64_t>(item.st.st_mtim.tv_sec));
      }
    };
    std::vector<std::thread> threads;
    for (size_t t = 1; t < counts.size() && work.size() > 1; ++t) threads.emplace_back(run, t);
    run(0);
    for (auto& th : threads) th.join();
    for (const ScanStats& c : counts) {
      stats_->files_hashed += c.files_hashed;
      stats_->bytes_hashed += c.bytes_hashed;
    }
  }

  const fs::path& root_;
  HashCache* cache_;
  ScanStats* stats_;
  const TreeDiffOptions& options_;
  const ChangeSink& sink_;
  std::deque<Item> items_;
  size_t pending_ = 0;
};

// Walks a tree in bytewise path order and diffs each entry against the old
// manifest's: `old` (when set) must be positioned at or before the walk.
class OrderedWalk {
 public:
  OrderedWalk(const fs::path& root, HashCache::OrderedReader* cache, ScanStats* stats,
              const TreeDiffOptions& options, ChangeQueue& queue, OldEntries* old)
      : root_(root), cache_(cache), stats_(stats), options_(options), queue_(queue), old_(old) {}

  Result<UniqueFd> OpenRoot() {
    UniqueFd fd(::open(root_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!fd.valid()) return Status::FromErrno("open tree root " + root_.string(), errno);
    return fd;
  }

  bool Excluded(std::string_view rel) const { return IsExcludedPath(options_.scan, rel); }

  // Old entries before `rel` are gone from the tree.
  Status DeleteOldBefore(std::string_view rel) {
    if (old_ == nullptr) return Status::Ok();
    for (;;) {
      MC_ASSIGN_OR_RETURN(const v1::FileEntry* e, old_->Peek());
      if (e == nullptr || !(std::string_view(e->path()) < rel)) return Status::Ok();
      MC_RETURN_IF_ERROR(queue_.Ready(Deletion(*e)));
      old_->Next();
    }
  }

  // The old entry at exactly `rel` (consumed), if any.
  Result<std::optional<v1::FileEntry>> TakeOld(std::string_view rel) {
    if (old_ == nullptr) return std::optional<v1::FileEntry>();
    MC_RETURN_IF_ERROR(DeleteOldBefore(rel));
    MC_ASSIGN_OR_RETURN(const v1::FileEntry* e, old_->Peek());
    if (e == nullptr || e->path() != rel) return std::optional<v1::FileEntry>();
    std::optional<v1::FileEntry> out(*e);
    old_->Next();
    return out;
  }

  // Diffs `rel` (the entry `name` of `dir_fd`, lstat `st`) and, for a
  // directory, everything below it.
  Status Visit(int dir_fd, const std::string& name, const std::string& rel, const struct stat& st) {
    MC_ASSIGN_OR_RETURN(std::optional<v1::FileEntry> old, TakeOld(rel));
    const v1::FileEntry* before = old ? &*old : nullptr;
    v1::FileEntry entry;
    entry.set_path(rel);
    entry.set_mode(st.st_mode & 07777);
    ++stats_->entries;
    if (S_ISDIR(st.st_mode)) {
      entry.set_kind(v1::ENTRY_DIRECTORY);
      if (auto c = ChangeTo(before, entry)) MC_RETURN_IF_ERROR(queue_.Ready(std::move(*c)));
      return Status::Ok();  // the walk descends at "name/"
    }
    if (S_ISLNK(st.st_mode)) {
      Result<std::string> target = ReadSymlinkAt(dir_fd, name, (root_ / rel).string(), st);
      Status safe = target.ok() ? ValidateSymlinkTarget(rel, *target) : target.status();
      if (!safe.ok()) {
        if (safe.code() != Status::Code::kNotFound) {
          if (!target.ok()) return safe;
          MC_LOG(warning) << "scan: skipping symlink that is not safe to publish: "
                          << safe.message();
          ++stats_->skipped;
        }
        --stats_->entries;
        if (before) MC_RETURN_IF_ERROR(queue_.Ready(Deletion(*before)));
        return Status::Ok();
      }
      entry.set_kind(v1::ENTRY_SYMLINK);
      entry.set_symlink_target(std::move(*target));
      if (auto c = ChangeTo(before, entry)) MC_RETURN_IF_ERROR(queue_.Ready(std::move(*c)));
      return Status::Ok();
    }
    if (S_ISREG(st.st_mode)) {
      entry.set_kind(v1::ENTRY_FILE);
      entry.set_mtime(static_cast<int64_t>(st.st_mtim.tv_sec));
      if (cache_ != nullptr) {
        if (std::optional<std::string> cached = cache_->Lookup(rel, st)) {
          ++stats_->cache_hits;
          entry.set_size(static_cast<uint64_t>(st.st_size));
          entry.set_sha256(std::move(*cached));
          if (auto c = ChangeTo(before, entry)) MC_RETURN_IF_ERROR(queue_.Ready(std::move(*c)));
          return Status::Ok();
        }
      }
      return queue_.NeedsHash(std::move(entry), st, before);
    }
    MC_LOG(warning) << "scan: skipping " << (root_ / rel).string()
                    << ": not a regular file, symlink or directory";
    ++stats_->skipped;
    --stats_->entries;
    if (before) MC_RETURN_IF_ERROR(queue_.Ready(Deletion(*before)));
    return Status::Ok();
  }

  // Walks the directory `dir` (taken over) whose path is `rel` ("" for the
  // root). Each name is visited where it sorts; a subdirectory's contents
  // where "name/" sorts, so the whole walk is in bytewise path order.
  Status WalkDir(UniqueFd dir, const std::string& rel) {
    MC_ASSIGN_OR_RETURN(std::vector<std::string> names, ListDirectory(dir, (root_ / rel).string()));
    struct Step {
      std::string key;  // name, or name + "/" for the descent
      bool descend;
      struct stat st;
    };
    std::vector<Step> steps;
    steps.reserve(names.size() + 16);
    for (std::string& name : names) {
      const std::string child = rel.empty() ? name : rel + "/" + name;
      if (Excluded(child)) {
        ++stats_->skipped;
        continue;
      }
      if (Status valid = ValidateRelativePath(child); !valid.ok()) {
        MC_LOG(warning) << "scan: skipping unsafe name under " << root_.string() << ": "
                        << valid.message();
        ++stats_->skipped;
        continue;
      }
      struct stat st;
      if (::fstatat(dir.get(), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
        if (errno == ENOENT) continue;  // deleted while we walk
        return Status::FromErrno("lstat " + (root_ / child).string(), errno);
      }
      if (S_ISDIR(st.st_mode)) steps.push_back(Step{name + "/", true, st});
      steps.push_back(Step{std::move(name), false, st});
    }
    std::sort(steps.begin(), steps.end(),
              [](const Step& a, const Step& b) { return a.key < b.key; });
    for (const Step& step : steps) {
      const std::string name = step.descend ? step.key.substr(0, step.key.size() - 1) : step.key;
      const std::string child = rel.empty() ? name : rel + "/" + name;
      if (!step.descend) {
        MC_RETURN_IF_ERROR(Visit(dir.get(), name, child, step.st));
        continue;
      }
      UniqueFd sub(
          ::openat(dir.get(), name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
      if (!sub.valid()) {
        if (errno == ENOENT || errno == ENOTDIR || errno == ELOOP) continue;  // replaced meanwhile
        return Status::FromErrno("open directory " + (root_ / child).string(), errno);
      }
      MC_RETURN_IF_ERROR(WalkDir(std::move(sub), child));
    }
    return Status::Ok();
  }

 private:
  const fs::path& root_;
  HashCache::OrderedReader* cache_;
  ScanStats* stats_;
  const TreeDiffOptions& options_;
  ChangeQueue& queue_;
  OldEntries* old_;
};

// Batches cache writes into one transaction; commits what was written even
// after a failure (each entry is right on its own).
class CacheBatch {
 public:
  explicit CacheBatch(HashCache* cache) : cache_(cache) {
    if (cache_ != nullptr && !cache_->Begin().ok()) cache_ = nullptr;
  }
  ~CacheBatch() {
    if (cache_ != nullptr && !cache_->Commit().ok()) {
      MC_LOG(warning) << "hash cache: commit failed, the next scan re-hashes";
    }
  }

 private:
  HashCache* cache_;
};

std::string SubtreeEnd(const std::string& dir) { return dir + "0"; }  // '0' follows '/'

}  // namespace

Status ForEachEntryInRange(const ManifestIndex& index, ChunkSource& chunks, std::string_view lo,
                           std::string_view hi, const EntrySink& sink) {
  if (index.refs.empty() || !(lo < hi)) return Status::Ok();
  for (size_t i = index.Locate(lo); i < index.refs.size(); ++i) {
    const std::string after = i == 0 ? "" : index.refs[i - 1].last_path;
    if (!(std::string_view(after) < hi)) break;  // the chunk starts past the range
    MC_ASSIGN_OR_RETURN(std::vector<v1::FileEntry> entries,
                        LoadChunkEntries(chunks, index.refs[i], after));
    for (auto& e : entries) {
      const std::string_view p = e.path();
      if (p < lo) continue;
      if (!(p < hi)) return Status::Ok();
      MC_RETURN_IF_ERROR(sink(std::move(e)));
    }
  }
  return Status::Ok();
}

Status DiffTree(const fs::path& root, const ManifestIndex& previous, ChunkSource& chunks,
                HashCache* cache, ScanStats* stats, const TreeDiffOptions& options,
                const ChangeSink& sink) {
  ScanStats local;
  if (stats == nullptr) stats = &local;
  *stats = ScanStats{};
  std::unique_ptr<HashCache::OrderedReader> reader;
  if (cache != nullptr) {
    auto opened = cache->OpenOrderedReader();
    if (opened.ok()) {
      reader = std::move(*opened);
    } else {
      MC_LOG(warning) << "hash cache: cannot read it in order, re-hashing: "
                      << opened.status().ToString();
    }
  }
  CacheBatch batch(cache);
  ChangeQueue queue(root, cache, stats, options, sink);
  OldEntries old(previous, chunks);
  OrderedWalk walk(root, reader.get(), stats, options, queue, &old);
  MC_ASSIGN_OR_RETURN(UniqueFd root_fd, walk.OpenRoot());
  MC_RETURN_IF_ERROR(walk.WalkDir(std::move(root_fd), ""));
  // Whatever the manifest still has after the walk is gone from the tree.
  for (;;) {
    MC_ASSIGN_OR_RETURN(const v1::FileEntry* e, old.Peek());
    if (e == nullptr) break;
    MC_RETURN_IF_ERROR(queue.Ready(Deletion(*e)));
    old.Next();
  }
  return queue.Flush();
}

Status DiffPaths(const fs::path& root, const std::vector<std::string>& paths,
                 const ManifestIndex& previous, ChunkSource& chunks, HashCache* cache,
                 ScanStats* stats, const TreeDiffOptions& options, const ChangeSink& sink) {
  ScanStats local;
  if (stats == nullptr) stats = &local;
  *stats = ScanStats{};
  std::vector<std::string> sorted = paths;
  std::sort(sorted.begin(), sorted.end());
  sorted.erase(std::unique(sorted.begin(), sorted.end()), sorted.end());
  for (const std::string& path : sorted) {
    MC_RETURN_IF_ERROR(ValidateRelativePath(path).WithContext("listed path"));
  }

  // Changes of all listed paths, by path: parents and subtrees of different
  // listed paths interleave in path order only once all are known.
  std::map<std::string, v1::Change> changes;
  ChangeSink collect = [&](v1::Change c) {
    std::string key = c.entry().path();
    changes.insert_or_assign(std::move(key), std::move(c));
    return Status::Ok();
  };
  CacheBatch batch(cache);
  ChangeQueue queue(root, cache, stats, options, collect);
  auto old_entry = [&](const std::string& path) -> Result<std::optional<v1::FileEntry>> {
    std::optional<v1::FileEntry> found;
    MC_RETURN_IF_ERROR(ForEachEntryInRange(previous, chunks, path, path + std::string(1, '\0'),
                                           [&](v1::FileEntry e) {
                                             found = std::move(e);
                                             return Status::Ok();
                                           }));
    return found;
  };
  std::map<std::string, bool> parents_done;

  // Rescans `rel` (the entry `name` of `dir_fd`): its old entry and subtree
  // against what is on disk now.
  auto rescan = [&](int dir_fd, const std::string& name, const std::string& rel) -> Status {
    // The old subtree, in order, as a manifest of its own to merge against.
    Manifest old_tree;
    if (auto e = old_entry(rel); !e.ok()) {
      return e.status();
    } else if (*e) {
      old_tree.Put(**e);
    }
    MC_RETURN_IF_ERROR(
        ForEachEntryInRange(previous, chunks, rel + "/", SubtreeEnd(rel), [&](v1::FileEntry e) {
          old_tree.Put(std::move(e));
          return Status::Ok();
        }));
    MemoryChunks sub_chunks;
    MC_ASSIGN_OR_RETURN(ManifestIndex sub_index,
                        BuildIndex(old_tree, [&](const ChunkRef& ref, std::string bytes) {
                          sub_chunks.Put(ref.id, std::move(bytes));
                          return Status::Ok();
                        }));
    OldEntries old(sub_index, sub_chunks);
    OrderedWalk walk(root, nullptr, stats, options, queue, &old);
    struct stat st;
    if (::fstatat(dir_fd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0) {
      if (!walk.Excluded(rel)) {
        MC_RETURN_IF_ERROR(walk.Visit(dir_fd, name, rel, st));
        if (S_ISDIR(st.st_mode)) {
          UniqueFd sub(
              ::openat(dir_fd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
          if (sub.valid()) MC_RETURN_IF_ERROR(walk.WalkDir(std::move(sub), rel));
        }
      }
    } else if (errno != ENOENT) {
      return Status::FromErrno("lstat " + (root / rel).string(), errno);
    }
    for (;;) {  // what the old subtree still has is gone
      MC_ASSIGN_OR_RETURN(const v1::FileEntry* e, old.Peek());
      if (e == nullptr) break;
      MC_RETURN_IF_ERROR(queue.Ready(Deletion(*e)));
      old.Next();
    }
    return Status::Ok();
  };

  UniqueFd root_fd(::open(root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!root_fd.valid()) return Status::FromErrno("open tree root " + root.string(), errno);
  std::string covered;  // a listed directory already rescanned whole
  for (const std::string& path : sorted) {
    if (!covered.empty() && path.compare(0, covered.size() + 1, covered + "/") == 0) continue;
    if (IsExcludedPath(options.scan, path)) {
      MC_LOG(warning) << "rescan: ignoring excluded path " << path;
      ++stats->skipped;
      continue;
    }
    UniqueFd dir(::dup(root_fd.get()));
    if (!dir.valid()) return Status::FromErrno("dup", errno);
    size_t start = 0;
    bool done = false;
    for (size_t slash; !done && (slash = path.find('/', start)) != std::string::npos;) {
      const std::string name = path.substr(start, slash - start);
      const std::string parent = path.substr(0, slash);
      start = slash + 1;
      struct stat st;
      const bool there = ::fstatat(dir.get(), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0;
      if (!there && errno != ENOENT) {
        return Status::FromErrno("lstat " + (root / parent).string(), errno);
      }
      UniqueFd sub;
      if (there && S_ISDIR(st.st_mode)) {
        sub.reset(
            ::openat(dir.get(), name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
      }
      if (!sub.valid()) {
        // The parent is gone or no longer a directory: it is what changed.
        MC_RETURN_IF_ERROR(rescan(dir.get(), name, parent).WithContext(path));
        covered = parent;
        done = true;
        break;
      }
      if (!parents_done.emplace(parent, true).second) {
        dir = std::move(sub);
        continue;
      }
      MC_ASSIGN_OR_RETURN(std::optional<v1::FileEntry> known, old_entry(parent));
      v1::FileEntry entry;
      entry.set_path(parent);
      entry.set_kind(v1::ENTRY_DIRECTORY);
      entry.set_mode(st.st_mode & 07777);
      if (auto c = ChangeTo(known ? &*known : nullptr, entry)) {
        MC_RETURN_IF_ERROR(queue.Ready(std::move(*c)));
      }
      dir = std::move(sub);
    }
    if (done) continue;
    MC_RETURN_IF_ERROR(rescan(dir.get(), path.substr(start), path).WithContext(path));
    covered = path;
  }
  MC_RETURN_IF_ERROR(queue.Flush());
  for (auto& [path, change] : changes) MC_RETURN_IF_ERROR(sink(std::move(change)));
  stats->entries = 0;
  return Status::Ok();
}

}  // namespace mirrorcast
