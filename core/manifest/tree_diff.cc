#include "core/manifest/tree_diff.h"

#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>

#include "core/base/log.h"
#include "core/base/thread_guard.h"
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

// Whether `old` is the entry the tree has now (SameEntry, field by field,
// without building the new entry: the common case of a full scan).
bool Unchanged(const v1::FileEntry& old, v1::EntryKind kind, uint32_t mode, uint64_t size,
               std::string_view sha256, int64_t mtime, std::string_view target) {
  return old.kind() == kind && old.mode() == mode && old.size() == size &&
         std::string_view(old.sha256()) == sha256 && old.mtime() == mtime &&
         std::string_view(old.symlink_target()) == target;
}

// Changes in path order, some waiting for their file's hash. Files are
// hashed by `hash_threads` threads of its own while the caller goes on;
// changes leave in order, each as soon as everything before it is known. At
// most `hash_batch_files` files wait for their hash (then the caller waits
// for the oldest).
class ChangeQueue {
 public:
  ChangeQueue(const fs::path& root, HashCache* cache, ScanStats* stats,
              const TreeDiffOptions& options, const ChangeSink& sink)
      : root_(root),
        cache_(cache),
        stats_(stats),
        options_(options),
        sink_(sink),
        max_pending_(std::max<size_t>(1, options.hash_batch_files)) {}

  ~ChangeQueue() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    work_cv_.notify_all();
    for (std::thread& t : threads_) t.join();
  }

  ChangeQueue(const ChangeQueue&) = delete;
  ChangeQueue& operator=(const ChangeQueue&) = delete;

  Status Ready(v1::Change change) {
    if (items_.empty()) return sink_(std::move(change));
    items_.emplace_back().change = std::move(change);
    return Drain(false);
  }

  // `entry` lacks size and sha256; `old` is what the manifest had there.
  Status NeedsHash(v1::FileEntry entry, const struct stat& st, const v1::FileEntry* old) {
    StartThreads();
    Item& item = items_.emplace_back();
    item.file = std::move(entry);
    item.st = st;
    if (old != nullptr) item.old = *old;
    {
      std::lock_guard<std::mutex> lock(mu_);
      todo_.push_back(&item);
      ++undone_;
    }
    work_cv_.notify_one();
    ++pending_;
    return Drain(false);
  }

  // Files and bytes hashed so far (for progress reports).
  ScanStats HashedSoFar() {
    std::lock_guard<std::mutex> lock(mu_);
    ScanStats s = hashed_;
    s.files_hashed += stats_->files_hashed;
    s.bytes_hashed += stats_->bytes_hashed;
    return s;
  }

  // Waits for every hash and hands every change on.
  Status Flush() {
    MC_RETURN_IF_ERROR(Drain(true));
    std::lock_guard<std::mutex> lock(mu_);
    stats_->files_hashed += hashed_.files_hashed;
    stats_->bytes_hashed += hashed_.bytes_hashed;
    hashed_ = ScanStats{};
    return Status::Ok();
  }

 private:
  struct Item {
    v1::Change change;                  // ready, when !file
    std::optional<v1::FileEntry> file;  // waiting for its hash
    struct stat st {};
    std::optional<v1::FileEntry> old;
    Status hashed;
    bool done = false;  // guarded by mu_ while the item is queued
  };

  void StartThreads() {
    if (!threads_.empty()) return;
    const int n = std::max(1, options_.hash_threads);
    for (int t = 0; t < n; ++t) {
      threads_.emplace_back([this] {
        ::pthread_setname_np(::pthread_self(), "mc-scan-hash");  // for top and perf
        HashLoop();
      });
    }
  }

  // Files are opened relative to their directory, kept open while the
  // files come from the same one: opening each by its full path made the
  // kernel look up every component again (a third of the hashing threads'
  // time on the 1 M-file tree).
  void HashLoop() {
    std::string dir_rel;
    UniqueFd dir;
    for (;;) {
      Item* item = nullptr;
      {
        std::unique_lock<std::mutex> lock(mu_);
        work_cv_.wait(lock, [&] { return stop_ || !todo_.empty(); });
        if (stop_) return;
        item = todo_.front();
        todo_.pop_front();
      }
      const std::string& path = item->file->path();
      ScanStats counts;
      Result<std::string> sha = Status::Unavailable("not hashed");
      // An exception (bad_alloc) fails this file, never the process.
      Status guarded = RunGuarded("scan hash", [&] {
        const size_t slash = path.rfind('/');
        const std::string_view parent = slash == std::string::npos
                                            ? std::string_view()
                                            : std::string_view(path).substr(0, slash);
        if (!dir.valid() || parent != dir_rel) {
          dir_rel.assign(parent);
          dir.reset(::open((root_ / dir_rel).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
        }
        const fs::path full = root_ / path;
        if (dir.valid()) {
          // Taken only when it is exactly the file the walk saw; anything
          // else (the directory replaced meanwhile, the file changing) is
          // hashed again by its full path, with retries.
          struct stat st = item->st;
          sha = HashStableFileAt(dir.get(), path.c_str() + (slash + 1), full, &st, &counts, 1);
        }
        if (!sha.ok()) sha = HashStableFile(full, &item->st, &counts);
        return Status::Ok();
      });
      if (!guarded.ok()) sha = guarded;
      if (sha.ok()) {
        item->file->set_size(static_cast<uint64_t>(item->st.st_size));
        item->file->set_sha256(std::move(*sha));
        item->file->set_mode(item->st.st_mode & 07777);
        item->file->set_mtime(static_cast<int64_t>(item->st.st_mtim.tv_sec));
      } else {
        item->hashed = sha.status();
      }
      bool wake = false;
      {
        std::lock_guard<std::mutex> lock(mu_);
        item->done = true;
        --undone_;
        hashed_.files_hashed += counts.files_hashed;
        hashed_.bytes_hashed += counts.bytes_hashed;
        wake = waiting_ && undone_ <= wake_at_;
      }
      if (wake) done_cv_.notify_one();
    }
  }

  // Hands on the changes at the front that are known. With `all`, waits for
  // every hash. When too much is waiting, waits for the oldest hash and for
  // half of the others, so that the caller sleeps once per many files, not
  // once per file.
  Status Drain(bool all) {
    while (!items_.empty()) {
      Item& item = items_.front();
      if (item.file) {
        std::unique_lock<std::mutex> lock(mu_);
        if (all || pending_ > max_pending_ || items_.size() > 4 * max_pending_) {
          wake_at_ = all ? 0 : max_pending_ / 2;
          waiting_ = true;
          done_cv_.wait(lock, [&] { return item.done && undone_ <= wake_at_; });
          waiting_ = false;
        }
        if (!item.done) return Status::Ok();
        lock.unlock();
        --pending_;
        MC_RETURN_IF_ERROR(Emit(item));
      } else {
        MC_RETURN_IF_ERROR(sink_(std::move(item.change)));
      }
      items_.pop_front();
    }
    return Status::Ok();
  }

  // The change of a hashed file, if any.
  Status Emit(Item& item) {
    if (item.hashed.code() == Status::Code::kNotFound) {
      // Gone while we walked: not part of this scan (a deletion if it was known).
      return item.old ? sink_(Deletion(*item.old)) : Status::Ok();
    }
    MC_RETURN_IF_ERROR(item.hashed.WithContext("hash " + item.file->path()));
    if (cache_ != nullptr) {
      if (Status s = cache_->Store(item.file->path(), item.st, item.file->sha256()); !s.ok()) {
        MC_LOG(warning) << "hash cache: cannot store " << item.file->path() << ": " << s.ToString();
      }
    }
    std::optional<v1::Change> c = ChangeTo(item.old ? &*item.old : nullptr, *item.file);
    return c ? sink_(std::move(*c)) : Status::Ok();
  }

  const fs::path& root_;
  HashCache* cache_;
  ScanStats* stats_;
  const TreeDiffOptions& options_;
  const ChangeSink& sink_;
  const size_t max_pending_;
  std::deque<Item> items_;  // in path order; the caller's thread only
  size_t pending_ = 0;      // items waiting for a hash

  std::mutex mu_;
  std::condition_variable work_cv_;  // todo_ or stop_
  std::condition_variable done_cv_;  // an item is done
  std::deque<Item*> todo_;           // guarded by mu_
  size_t undone_ = 0;                // queued items not hashed yet; guarded by mu_
  bool waiting_ = false;             // the caller waits on done_cv_; guarded by mu_
  size_t wake_at_ = 0;               // ... until undone_ is this low; guarded by mu_
  ScanStats hashed_;                 // guarded by mu_
  bool stop_ = false;                // guarded by mu_
  std::vector<std::thread> threads_;
};

// What a walk found, in path order: each entry's path and lstat (and a
// symlink's target), with the paths in one buffer so that a batch of
// thousands of entries costs a few allocations, reused batch after batch.
struct WalkBatch {
  struct Entry {
    uint32_t path = 0, path_size = 0;
    uint32_t target = 0, target_size = 0;  // ENTRY_SYMLINK
    struct stat st;
  };
  std::string text;
  std::vector<Entry> entries;

  std::string_view Path(const Entry& e) const { return {text.data() + e.path, e.path_size}; }
  std::string_view Target(const Entry& e) const { return {text.data() + e.target, e.target_size}; }
  bool Full() const { return entries.size() >= 4096 || text.size() >= (512u << 10); }
  void Clear() {
    text.clear();
    entries.clear();
  }
};

// Receives each batch the walk filled; leaves an empty batch in its place.
using BatchSink = std::function<Status(std::unique_ptr<WalkBatch>& batch)>;

// Whether a name from the kernel (never empty, '/' or NUL) is certainly a
// safe path component: ASCII without backslash, short enough. Anything else
// goes through ValidateRelativePath.
bool PlainName(std::string_view name) {
  if (name.size() > kMaxComponentBytes) return false;
  for (const char c : name) {
    if (static_cast<unsigned char>(c) >= 0x80 || c == '\\') return false;
  }
  return true;
}

// Walks a tree in bytewise path order: each directory's names are read with
// getdents64 and lstat'ed relative to the directory (fstatat,
// AT_SYMLINK_NOFOLLOW), then visited sorted, a subdirectory's contents where
// "name/" sorts. Records regular files, directories and safe symlinks; skips
// (with a warning where a user would want one) excluded and unsafe names,
// unsafe symlinks and other kinds. Never follows a symlink. Runs on one
// thread; the batches go to `sink`.
class TreeWalker {
 public:
  TreeWalker(const fs::path& root, const ScanOptions& options, BatchSink sink)
      : root_(root),
        options_(options),
        sink_(std::move(sink)),
        batch_(std::make_unique<WalkBatch>()),
        buffer_(256 << 10) {}

  // Everything below the open directory `dir` whose path is `rel` ("" for
  // the root).
  Status WalkBelow(int dir, std::string_view rel) {
    rel_.assign(rel);
    return WalkDir(dir, 0);
  }

  // `rel`, the entry `name` of `dir_fd` (lstat `st`), and everything below
  // it when it is a directory.
  Status WalkEntry(int dir_fd, const char* name, std::string_view rel, const struct stat& st) {
    MC_RETURN_IF_ERROR(Record(dir_fd, name, rel, st));
    if (!S_ISDIR(st.st_mode)) return Status::Ok();
    UniqueFd sub(::openat(dir_fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!sub.valid()) return Status::Ok();  // replaced meanwhile: its record says what it was
    return WalkBelow(sub.get(), rel);
  }

  // Hands over the last batch.
  Status Finish() { return batch_->entries.empty() ? Status::Ok() : sink_(batch_); }

  uint64_t skipped() const { return skipped_; }

 private:
  // Small, so that sorting a directory's steps moves little.
  struct Step {
    uint32_t name = 0;  // offset in Level::names ("name\0")
    uint32_t name_size = 0;
    uint32_t stat = 0;     // index in Level::stats
    bool descend = false;  // the contents, where "name/" sorts
  };
  // One directory being walked; one per depth, reused.
  struct Level {
    std::string names;
    std::vector<struct stat> stats;
    std::vector<Step> steps;
  };

  // name (+ '/' when `descend`) against the same of another, bytewise.
  static bool StepBefore(std::string_view a, bool a_descend, std::string_view b, bool b_descend) {
    const size_t n = std::min(a.size(), b.size());
    if (const int c = n == 0 ? 0 : std::memcmp(a.data(), b.data(), n); c != 0) return c < 0;
    if (a.size() == b.size()) return !a_descend && b_descend;
    // One name is a prefix of the other: the shorter one continues with '/'
    // (which no name holds) or ends.
    if (a.size() < b.size()) return !a_descend || '/' < static_cast<unsigned char>(b[n]);
    return b_descend && static_cast<unsigned char>(a[n]) < '/';
  }

  std::string Shown(std::string_view rel) const { return (root_ / std::string(rel)).string(); }

  Status Record(int dir_fd, const char* name, std::string_view rel, const struct stat& st) {
    const bool dir = S_ISDIR(st.st_mode), link = S_ISLNK(st.st_mode);
    if (!dir && !link && !S_ISREG(st.st_mode)) {
      MC_LOG(warning) << "scan: skipping " << Shown(rel)
                      << ": not a regular file, symlink or directory";
      ++skipped_;
      return Status::Ok();
    }
    WalkBatch& b = *batch_;
    WalkBatch::Entry e;
    e.st = st;
    if (link) {
      Result<std::string> target = ReadSymlinkAt(dir_fd, name, Shown(rel), st);
      Status safe = target.ok() ? ValidateSymlinkTarget(rel, *target) : target.status();
      if (!safe.ok()) {
        if (safe.code() == Status::Code::kNotFound) return Status::Ok();  // gone meanwhile
        if (!target.ok()) return safe;
        MC_LOG(warning) << "scan: skipping symlink that is not safe to publish: " << safe.message();
        ++skipped_;
        return Status::Ok();
      }
      e.target = static_cast<uint32_t>(b.text.size());
      e.target_size = static_cast<uint32_t>(target->size());
      b.text.append(*target);
    }
    e.path = static_cast<uint32_t>(b.text.size());
    e.path_size = static_cast<uint32_t>(rel.size());
    b.text.append(rel);
    b.entries.push_back(e);
    return b.Full() ? sink_(batch_) : Status::Ok();
  }

  // Reads, lstats and sorts the names of `dir` (path rel_) into `level`.
  Status List(int dir, Level& level) {
    level.names.clear();
    level.stats.clear();
    level.steps.clear();
    const bool top = rel_.empty();
    for (;;) {
      const ssize_t n = ::getdents64(dir, buffer_.data(), buffer_.size());
      if (n < 0) {
        if (errno == EINTR) continue;
        return Status::FromErrno("read directory " + Shown(rel_), errno);
      }
      if (n == 0) break;
      for (ssize_t at = 0; at < n;) {
        const auto* de = reinterpret_cast<const struct dirent64*>(buffer_.data() + at);
        at += de->d_reclen;
        const std::string_view name(de->d_name);
        if (name == "." || name == "..") continue;
        if (top && IsExcludedPath(options_, name)) {
          ++skipped_;
          continue;
        }
        if (!PlainName(name) || rel_.size() + 1 + name.size() > kMaxPathBytes) {
          const std::string child = top ? std::string(name) : rel_ + "/" + std::string(name);
          if (Status valid = ValidateRelativePath(child); !valid.ok()) {
            MC_LOG(warning) << "scan: skipping unsafe name under " << root_.string() << ": "
                            << valid.message();
            ++skipped_;
            continue;
          }
        }
        struct stat& st = level.stats.emplace_back();
        if (::fstatat(dir, de->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
          level.stats.pop_back();
          if (errno == ENOENT) continue;  // deleted while we walk
          return Status::FromErrno(
              "lstat " + Shown(top ? std::string(name) : rel_ + "/" + std::string(name)), errno);
        }
        Step step;
        step.name = static_cast<uint32_t>(level.names.size());
        step.name_size = static_cast<uint32_t>(name.size());
        step.stat = static_cast<uint32_t>(level.stats.size() - 1);
        level.names.append(name);
        level.names.push_back('\0');
        level.steps.push_back(step);
        if (S_ISDIR(st.st_mode)) {
          step.descend = true;
          level.steps.push_back(step);
        }
      }
    }
    const char* base = level.names.data();
    std::sort(level.steps.begin(), level.steps.end(), [base](const Step& a, const Step& b) {
      return StepBefore({base + a.name, a.name_size}, a.descend, {base + b.name, b.name_size},
                        b.descend);
    });
    return Status::Ok();
  }

  // Walks the directory `dir` whose path is rel_, at `depth`.
  Status WalkDir(int dir, size_t depth) {
    while (levels_.size() <= depth) levels_.push_back(std::make_unique<Level>());
    Level& level = *levels_[depth];
    MC_RETURN_IF_ERROR(List(dir, level));
    const size_t rel_size = rel_.size();
    for (const Step& step : level.steps) {
      const char* name = level.names.data() + step.name;
      if (rel_size != 0) rel_.push_back('/');
      rel_.append(name, step.name_size);
      Status status;
      if (!step.descend) {
        status = Record(dir, name, rel_, level.stats[step.stat]);
      } else {
        UniqueFd sub(::openat(dir, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
        if (sub.valid()) {
          status = WalkDir(sub.get(), depth + 1);
        } else if (errno != ENOENT && errno != ENOTDIR && errno != ELOOP) {  // else replaced
          status = Status::FromErrno("open directory " + Shown(rel_), errno);
        }
      }
      rel_.resize(rel_size);
      MC_RETURN_IF_ERROR(status);
    }
    return Status::Ok();
  }

  const fs::path& root_;
  const ScanOptions& options_;
  BatchSink sink_;
  std::unique_ptr<WalkBatch> batch_;
  std::vector<char> buffer_;  // getdents64
  std::string rel_;           // the directory being walked
  std::vector<std::unique_ptr<Level>> levels_;
  uint64_t skipped_ = 0;
};

// Cached digests: read in path order (a full scan) or looked up one by one
// (listed paths), or none.
struct CacheLookup {
  HashCache::OrderedReader* ordered = nullptr;
  HashCache* direct = nullptr;

  std::optional<std::string> operator()(std::string_view path, const struct stat& st) const {
    if (ordered != nullptr) return ordered->Lookup(path, st);
    if (direct != nullptr) return direct->Lookup(path, st);
    return std::nullopt;
  }
};

// Merges walked entries with the old manifest (`old`, positioned at or
// before the first of them) and the hash cache read in path order, and
// queues each change. Entries must come in increasing path order.
class Merger {
 public:
  Merger(CacheLookup cache, ScanStats* stats, ChangeQueue& queue, OldEntries* old)
      : cache_(cache), stats_(stats), queue_(queue), old_(old) {}

  Status Take(const WalkBatch& batch) {
    for (const WalkBatch::Entry& e : batch.entries) {
      MC_RETURN_IF_ERROR(Visit(batch.Path(e), e.st, batch.Target(e)));
    }
    return Status::Ok();
  }

  // What the old manifest still has is gone from the tree.
  Status DeleteRest() {
    for (;;) {
      MC_ASSIGN_OR_RETURN(const v1::FileEntry* e, old_->Peek());
      if (e == nullptr) return Status::Ok();
      MC_RETURN_IF_ERROR(queue_.Ready(Deletion(*e)));
      old_->Next();
    }
  }

 private:
  Status Visit(std::string_view rel, const struct stat& st, std::string_view target) {
    // Old entries before `rel` are gone from the tree.
    const v1::FileEntry* old = nullptr;
    for (;;) {
      MC_ASSIGN_OR_RETURN(const v1::FileEntry* e, old_->Peek());
      if (e == nullptr) break;
      const std::string_view at = e->path();
      if (at == rel) old = e;
      if (!(at < rel)) break;
      MC_RETURN_IF_ERROR(queue_.Ready(Deletion(*e)));
      old_->Next();
    }
    ++stats_->entries;
    const auto mode = static_cast<uint32_t>(st.st_mode & 07777);
    auto fresh = [&](v1::EntryKind kind) {
      v1::FileEntry entry;
      entry.set_path(std::string(rel));
      entry.set_kind(kind);
      entry.set_mode(mode);
      return entry;
    };
    Status status;
    if (S_ISDIR(st.st_mode)) {
      if (old == nullptr || !Unchanged(*old, v1::ENTRY_DIRECTORY, mode, 0, {}, 0, {})) {
        status = queue_.Ready(*ChangeTo(old, fresh(v1::ENTRY_DIRECTORY)));
      }
    } else if (S_ISLNK(st.st_mode)) {
      if (old == nullptr || !Unchanged(*old, v1::ENTRY_SYMLINK, mode, 0, {}, 0, target)) {
        v1::FileEntry entry = fresh(v1::ENTRY_SYMLINK);
        entry.set_symlink_target(std::string(target));
        status = queue_.Ready(*ChangeTo(old, entry));
      }
    } else {
      const auto mtime = static_cast<int64_t>(st.st_mtim.tv_sec);
      const auto size = static_cast<uint64_t>(st.st_size);
      std::optional<std::string> cached = cache_(rel, st);
      if (cached) {
        ++stats_->cache_hits;
        if (old == nullptr || !Unchanged(*old, v1::ENTRY_FILE, mode, size, *cached, mtime, {})) {
          v1::FileEntry entry = fresh(v1::ENTRY_FILE);
          entry.set_mtime(mtime);
          entry.set_size(size);
          entry.set_sha256(std::move(*cached));
          status = queue_.Ready(*ChangeTo(old, entry));
        }
      } else {
        v1::FileEntry entry = fresh(v1::ENTRY_FILE);
        entry.set_mtime(mtime);
        status = queue_.NeedsHash(std::move(entry), st, old);
      }
    }
    if (old != nullptr) old_->Next();
    return status;
  }

  CacheLookup cache_;
  ScanStats* stats_;
  ChangeQueue& queue_;
  OldEntries* old_;
};

// Hands walked batches from the walking thread to the merging one: at most
// `depth` full batches in flight, emptied ones recycled. Either side can end
// it: the walker with Close (its status), the merger with Cancel.
class BatchPipe {
 public:
  explicit BatchPipe(size_t depth) : depth_(depth) {}

  // Walker side: hands `batch` over and puts an empty one in its place.
  Status Push(std::unique_ptr<WalkBatch>& batch) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return cancelled_ || full_.size() < depth_; });
    if (cancelled_) return Status::Internal("tree walk cancelled");
    full_.push_back(std::move(batch));
    if (free_.empty()) {
      batch = std::make_unique<WalkBatch>();
    } else {
      batch = std::move(free_.back());
      free_.pop_back();
    }
    cv_.notify_all();
    return Status::Ok();
  }
  void Close(Status status) {
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = true;
    status_ = std::move(status);
    cv_.notify_all();
  }

  // Merger side: the next batch, or null once the walk has ended.
  std::unique_ptr<WalkBatch> Pop() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return cancelled_ || closed_ || !full_.empty(); });
    if (cancelled_ || full_.empty()) return nullptr;
    std::unique_ptr<WalkBatch> batch = std::move(full_.front());
    full_.pop_front();
    cv_.notify_all();
    return batch;
  }
  void Recycle(std::unique_ptr<WalkBatch> batch) {
    batch->Clear();
    std::lock_guard<std::mutex> lock(mu_);
    free_.push_back(std::move(batch));
  }
  void Cancel() {
    std::lock_guard<std::mutex> lock(mu_);
    cancelled_ = true;
    cv_.notify_all();
  }
  // The walker's status, once Pop() returned null.
  Status status() {
    std::lock_guard<std::mutex> lock(mu_);
    return status_;
  }

 private:
  const size_t depth_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::unique_ptr<WalkBatch>> full_;   // guarded by mu_
  std::vector<std::unique_ptr<WalkBatch>> free_;  // guarded by mu_
  bool closed_ = false;                           // guarded by mu_
  bool cancelled_ = false;                        // guarded by mu_
  Status status_;                                 // guarded by mu_
};

// The walking thread of DiffTree; stopped and joined however the merge ends.
class WalkThread {
 public:
  WalkThread(const fs::path& root, int root_fd, const ScanOptions& options, BatchPipe& pipe)
      : pipe_(pipe), thread_([this, &root, root_fd, &options] {
          ::pthread_setname_np(::pthread_self(), "mc-scan-walk");
          Status status = RunGuarded("scan walk", [&] {
            TreeWalker walker(root, options,
                              [this](std::unique_ptr<WalkBatch>& b) { return pipe_.Push(b); });
            Status walked = walker.WalkBelow(root_fd, "");
            if (walked.ok()) walked = walker.Finish();
            skipped_ = walker.skipped();
            return walked;
          });
          pipe_.Close(std::move(status));
        }) {}
  ~WalkThread() {
    pipe_.Cancel();
    if (thread_.joinable()) thread_.join();
  }
  WalkThread(const WalkThread&) = delete;
  WalkThread& operator=(const WalkThread&) = delete;

  // After the pipe ran dry: the walker's status and what it skipped.
  Status Join(uint64_t* skipped) {
    thread_.join();
    *skipped = skipped_;
    return pipe_.status();
  }

 private:
  BatchPipe& pipe_;
  uint64_t skipped_ = 0;  // written by the thread before it ends
  std::thread thread_;
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

// Calls TreeDiffOptions::progress when it is due.
class ScanReporter {
 public:
  explicit ScanReporter(const TreeDiffOptions& options)
      : options_(options),
        clock_(options.clock != nullptr ? *options.clock : Clock::Real()),
        started_(clock_.Steady()),
        next_(started_ + options.progress_interval) {}

  void Maybe(uint64_t entries, ChangeQueue& queue) {
    if (!options_.progress || clock_.Steady() < next_) return;
    Report(entries, queue.HashedSoFar(), false);
    next_ = clock_.Steady() + options_.progress_interval;
  }
  void Finish(const ScanStats& stats) {
    if (reported_) Report(stats.entries, stats, true);
  }

 private:
  void Report(uint64_t entries, const ScanStats& hashed, bool finished) {
    ScanProgress p;
    p.entries = entries;
    p.entries_total = options_.entries_total;
    p.files_hashed = hashed.files_hashed;
    p.bytes_hashed = hashed.bytes_hashed;
    p.seconds = std::chrono::duration<double>(clock_.Steady() - started_).count();
    p.finished = finished;
    reported_ = true;
    options_.progress(p);
  }

  const TreeDiffOptions& options_;
  const Clock& clock_;
  std::chrono::steady_clock::time_point started_;
  std::chrono::steady_clock::time_point next_;
  bool reported_ = false;
};

namespace {

// Counts the entries below the open directory `dir` (depth first: one
// descriptor per level, the subdirectories' names listed before descending).
Status CountBelow(int dir, bool top, const ScanOptions& options, std::vector<char>& buffer,
                  int depth, uint64_t* count) {
  if (depth > static_cast<int>(kMaxPathBytes / 2)) return Status::Rejected("tree nested too deep");
  std::vector<std::string> subdirs;
  for (;;) {
    const ssize_t n = ::getdents64(dir, buffer.data(), buffer.size());
    if (n < 0) return Status::FromErrno("list a directory", errno);
    if (n == 0) break;
    for (ssize_t at = 0; at < n;) {
      const auto* de = reinterpret_cast<const struct dirent64*>(buffer.data() + at);
      at += de->d_reclen;
      const std::string_view name(de->d_name);
      if (name == "." || name == "..") continue;
      if (top && IsExcludedPath(options, name)) continue;
      ++*count;
      unsigned char type = de->d_type;
      if (type == DT_UNKNOWN) {
        struct stat st {};
        if (::fstatat(dir, de->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) continue;
        type = S_ISDIR(st.st_mode) ? DT_DIR : DT_REG;
      }
      if (type == DT_DIR) subdirs.emplace_back(name);
    }
  }
  for (const std::string& name : subdirs) {
    UniqueFd child(::openat(dir, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!child.valid()) continue;  // gone meanwhile, or unreadable: the scan will say so
    MC_RETURN_IF_ERROR(CountBelow(child.get(), false, options, buffer, depth + 1, count));
  }
  return Status::Ok();
}

}  // namespace

Result<uint64_t> CountTreeEntries(const fs::path& root, const ScanOptions& options) {
  UniqueFd root_fd(::open(root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!root_fd.valid()) return Status::FromErrno("open tree root " + root.string(), errno);
  uint64_t count = 0;
  std::vector<char> buffer(1 << 16);
  MC_RETURN_IF_ERROR(CountBelow(root_fd.get(), true, options, buffer, 0, &count)
                         .WithContext("counting entries of " + root.string()));
  return count;
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
  UniqueFd root_fd(::open(root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!root_fd.valid()) return Status::FromErrno("open tree root " + root.string(), errno);
  CacheBatch batch(cache);
  ChangeQueue queue(root, cache, stats, options, sink);
  OldEntries old(previous, chunks);
  Merger merger(CacheLookup{reader.get(), nullptr}, stats, queue, &old);
  // The walk (system calls) on a thread of its own, the merge with the old
  // manifest and the hash cache (decoding, lookups) on this one.
  ScanReporter reporter(options);
  BatchPipe pipe(4);
  WalkThread walk(root, root_fd.get(), options.scan, pipe);
  while (std::unique_ptr<WalkBatch> walked = pipe.Pop()) {
    MC_RETURN_IF_ERROR(merger.Take(*walked));
    pipe.Recycle(std::move(walked));
    reporter.Maybe(stats->entries, queue);
  }
  uint64_t skipped = 0;
  MC_RETURN_IF_ERROR(walk.Join(&skipped));
  stats->skipped += skipped;
  MC_RETURN_IF_ERROR(merger.DeleteRest());
  MC_RETURN_IF_ERROR(queue.Flush());
  reporter.Finish(*stats);
  return Status::Ok();
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
    Merger merger(CacheLookup{nullptr, cache}, stats, queue, &old);
    TreeWalker walker(root, options.scan, [&](std::unique_ptr<WalkBatch>& walked) {
      Status merged = merger.Take(*walked);
      walked->Clear();
      return merged;
    });
    struct stat st;
    if (::fstatat(dir_fd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0) {
      if (!IsExcludedPath(options.scan, rel)) {
        MC_RETURN_IF_ERROR(walker.WalkEntry(dir_fd, name.c_str(), rel, st));
        MC_RETURN_IF_ERROR(walker.Finish());
      }
    } else if (errno != ENOENT) {
      return Status::FromErrno("lstat " + (root / rel).string(), errno);
    }
    stats->skipped += walker.skipped();
    return merger.DeleteRest();  // what the old subtree still has is gone
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
