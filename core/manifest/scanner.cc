#include "core/manifest/scanner.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <memory>

#include "core/base/log.h"
#include "core/crypto/sha256.h"
#include "core/fs/atomic.h"
#include "core/fs/path.h"

namespace mirrorcast {
namespace {

// A file that keeps changing while it is hashed is re-hashed this many times
// before the scan gives up on it: publishing a half-written file would make
// every mirror fetch content that fails its hash.
constexpr int kHashAttempts = 3;

// SHA-256 of the file `full` (opened without following a symlink), and the
// bytes read. Like Sha256File, but with one hasher and one read buffer per
// thread, left uninitialised: a first publish hashes millions of small
// files, and allocating and zeroing a buffer for each cost more than the
// hashing.
Result<std::string> HashContents(int dir_fd, const char* name, const std::filesystem::path& full,
                                 const struct stat& st, uint64_t* bytes) {
  constexpr size_t kBufferBytes = 1 << 20;
  thread_local Sha256 hasher;
  thread_local std::unique_ptr<char[]> buffer(new char[kBufferBytes]);
  UniqueFd fd(::openat(dir_fd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (!fd.valid()) return Status::FromErrno("open " + full.string(), errno);
  if (static_cast<uint64_t>(st.st_size) > kBufferBytes) {
    ::posix_fadvise(fd.get(), 0, 0, POSIX_FADV_SEQUENTIAL);
  }
  uint64_t total = 0;
  for (;;) {
    const ssize_t n = ::read(fd.get(), buffer.get(), kBufferBytes);
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      (void)hasher.Finish();  // resets it for the next file
      return Status::FromErrno("read " + full.string(), err);
    }
    if (n == 0) break;
    hasher.Update(buffer.get(), static_cast<size_t>(n));
    total += static_cast<uint64_t>(n);
  }
  *bytes = total;
  return hasher.Finish();
}

bool SameIdentity(const struct stat& a, const struct stat& b) {
  return a.st_ino == b.st_ino && a.st_dev == b.st_dev && a.st_size == b.st_size &&
         a.st_mtim.tv_sec == b.st_mtim.tv_sec && a.st_mtim.tv_nsec == b.st_mtim.tv_nsec &&
         a.st_ctim.tv_sec == b.st_ctim.tv_sec && a.st_ctim.tv_nsec == b.st_ctim.tv_nsec &&
         (a.st_mode & S_IFMT) == (b.st_mode & S_IFMT);
}

// Everything strictly below `dir` ("dir/..."): a contiguous range of the
// bytewise-ordered map.
void EraseSubtree(Manifest* manifest, const std::string& dir) {
  const std::string prefix = dir + "/";
  std::vector<std::string> doomed;
  for (auto it = manifest->entries().lower_bound(prefix);
       it != manifest->entries().end() && it->first.compare(0, prefix.size(), prefix) == 0; ++it) {
    doomed.push_back(it->first);
  }
  for (const std::string& path : doomed) manifest->Erase(path);
}

// Walks a tree into a Manifest. One per scan; owns the cache transaction.
class TreeWalker {
 public:
  TreeWalker(const std::filesystem::path& root, HashCache* cache, ScanStats* stats,
             const ScanOptions& options)
      : root_(root), cache_(cache), stats_(stats), options_(options) {}

  // Batches every cache write of the scan into one transaction. The entries
  // written are each correct on their own, so End() commits even after a
  // failed scan: the work done so far is kept for the next run.
  void BeginCache() {
    if (cache_ == nullptr) return;
    Status s = cache_->Begin();
    if (s.ok()) {
      in_txn_ = true;
    } else {
      MC_LOG(warning) << "hash cache: cannot start a transaction, writing unbatched: "
                      << s.ToString();
    }
  }
  Status EndCache() {
    if (!in_txn_) return Status::Ok();
    in_txn_ = false;
    return cache_->Commit();
  }

  Result<UniqueFd> OpenRoot() {
    UniqueFd fd(::open(root_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!fd.valid()) return Status::FromErrno("open tree root " + root_.string(), errno);
    return fd;
  }

  bool Excluded(std::string_view rel) const { return IsExcludedPath(options_, rel); }

  // Adds `rel` (the entry `name` of the directory `dir_fd`) to `out`, and
  // everything below it when it is a directory. Sets *exists to whether
  // anything is there at all.
  Status ScanEntry(int dir_fd, const std::string& name, const std::string& rel, Manifest* out,
                   bool* exists = nullptr) {
    if (exists != nullptr) *exists = false;
    if (Excluded(rel)) {
      ++stats_->skipped;
      return Status::Ok();
    }
    if (Status valid = ValidateRelativePath(rel); !valid.ok()) {
      MC_LOG(warning) << "scan: skipping unsafe name under " << root_.string() << ": "
                      << valid.message();
      ++stats_->skipped;
      return Status::Ok();
    }
    struct stat st;
    if (::fstatat(dir_fd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
      // Deleted while we walk: it simply is not part of this scan.
      if (errno == ENOENT) return Status::Ok();
      return Status::FromErrno("lstat " + (root_ / rel).string(), errno);
    }
    if (exists != nullptr) *exists = true;

    v1::FileEntry entry;
    entry.set_path(rel);
    entry.set_mode(st.st_mode & 07777);
    if (S_ISDIR(st.st_mode)) {
      entry.set_kind(v1::ENTRY_DIRECTORY);
      out->Put(std::move(entry));
      UniqueFd sub(::openat(dir_fd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
      if (!sub.valid()) {
        if (errno == ENOENT) {
          out->Erase(rel);
          return Status::Ok();
        }
        return Status::FromErrno("open directory " + (root_ / rel).string(), errno);
      }
      return WalkDir(std::move(sub), rel, out);
    }
    if (S_ISLNK(st.st_mode)) {
      Result<std::string> target = ReadLink(dir_fd, name, rel, st);
      if (!target.ok()) {
        if (target.status().code() == Status::Code::kNotFound) return Status::Ok();
        return target.status();
      }
      if (Status safe = ValidateSymlinkTarget(rel, *target); !safe.ok()) {
        MC_LOG(warning) << "scan: skipping symlink that is not safe to publish: " << safe.message();
        ++stats_->skipped;
        return Status::Ok();
      }
      entry.set_kind(v1::ENTRY_SYMLINK);
      entry.set_symlink_target(std::move(target).value());
      out->Put(std::move(entry));
      return Status::Ok();
    }
    if (S_ISREG(st.st_mode)) {
      entry.set_kind(v1::ENTRY_FILE);
      entry.set_mtime(static_cast<int64_t>(st.st_mtim.tv_sec));
      Status hashed = HashFile(dir_fd, name, rel, &st, &entry);
      if (hashed.code() == Status::Code::kNotFound) return Status::Ok();
      MC_RETURN_IF_ERROR(hashed);
      out->Put(std::move(entry));
      return Status::Ok();
    }
    MC_LOG(warning) << "scan: skipping " << (root_ / rel).string()
                    << ": not a regular file, symlink or directory";
    ++stats_->skipped;
    return Status::Ok();
  }

  // Scans the directory `dir` (an open fd, taken over) whose path is `rel`
  // ("" for the root). Names are sorted bytewise so logs, errors and the
  // hashing order are the same on every run.
  Status WalkDir(UniqueFd dir, const std::string& rel, Manifest* out) {
    MC_ASSIGN_OR_RETURN(std::vector<std::string> names, ListDirectory(dir, (root_ / rel).string()));
    std::sort(names.begin(), names.end());
    for (const std::string& name : names) {
      std::string child = rel.empty() ? name : rel + "/" + name;
      MC_RETURN_IF_ERROR(ScanEntry(dir.get(), name, child, out));
    }
    return Status::Ok();
  }

 private:
  Result<std::string> ReadLink(int dir_fd, const std::string& name, const std::string& rel,
                               const struct stat& st) {
    return ReadSymlinkAt(dir_fd, name, rel, st);
  }

  // Fills entry's size and sha256: from the cache when the stat identity is
  // unchanged, else by reading the file. A file whose identity changes while
  // it is read is read again, so the digest matches the size and mtime
  // recorded with it.
  Status HashFile(int dir_fd, const std::string& name, const std::string& rel, struct stat* st,
                  v1::FileEntry* entry) {
    if (cache_ != nullptr) {
      if (std::optional<std::string> cached = cache_->Lookup(rel, *st)) {
        ++stats_->cache_hits;
        entry->set_size(static_cast<uint64_t>(st->st_size));
        entry->set_sha256(std::move(*cached));
        return Status::Ok();
      }
    }
    (void)dir_fd;
    (void)name;
    MC_ASSIGN_OR_RETURN(std::string digest, HashStableFile(root_ / rel, st, stats_));
    entry->set_size(static_cast<uint64_t>(st->st_size));
    entry->set_sha256(std::move(digest));
    entry->set_mode(st->st_mode & 07777);
    entry->set_mtime(static_cast<int64_t>(st->st_mtim.tv_sec));
    if (cache_ != nullptr) {
      if (Status s = cache_->Store(rel, *st, entry->sha256()); !s.ok()) {
        MC_LOG(warning) << "hash cache: cannot store " << rel << ": " << s.ToString();
      }
    }
    return Status::Ok();
  }

  const std::filesystem::path root_;
  HashCache* cache_;
  ScanStats* stats_;
  const ScanOptions& options_;
  bool in_txn_ = false;
};

}  // namespace

bool IsExcludedPath(const ScanOptions& options, std::string_view rel) {
  const std::string_view top = rel.substr(0, rel.find('/'));
  return std::find(options.exclude_top_level.begin(), options.exclude_top_level.end(), top) !=
         options.exclude_top_level.end();
}

Result<std::vector<std::string>> ListDirectory(UniqueFd& dir, const std::string& shown) {
  std::vector<std::string> names;
  DIR* d = ::fdopendir(dir.get());
  if (d == nullptr) return Status::FromErrno("opendir " + shown, errno);
  // The DIR owns the fd now; `dir` keeps a duplicate for fstatat/openat.
  int fd = dir.release();
  dir.reset(::dup(fd));
  if (!dir.valid()) {
    int err = errno;
    ::closedir(d);
    return Status::FromErrno("dup", err);
  }
  for (;;) {
    errno = 0;
    struct dirent* de = ::readdir(d);
    if (de == nullptr) {
      int err = errno;
      ::closedir(d);
      if (err != 0) return Status::FromErrno("readdir " + shown, err);
      break;
    }
    std::string_view n(de->d_name);
    if (n == "." || n == "..") continue;
    names.emplace_back(n);
  }
  return names;
}

Result<std::string> ReadSymlinkAt(int dir_fd, const std::string& name, const std::string& rel,
                                  const struct stat& st) {
  // st_size is the target length, but the link may be replaced meanwhile:
  // read into a buffer one byte larger and retry if it filled up.
  size_t size = static_cast<size_t>(st.st_size) + 1;
  if (size < 64) size = 64;
  for (;;) {
    std::string buf(size, '\0');
    ssize_t n = ::readlinkat(dir_fd, name.c_str(), buf.data(), buf.size());
    if (n < 0) {
      if (errno == ENOENT) return Status::NotFound("symlink " + rel + " vanished");
      return Status::FromErrno("readlink " + rel, errno);
    }
    if (static_cast<size_t>(n) < buf.size()) {
      buf.resize(static_cast<size_t>(n));
      return buf;
    }
    if (size > kMaxPathBytes * 2)
      return Status::Rejected("symlink target of " + rel + " is too long");
    size *= 2;
  }
}

Result<std::string> HashStableFile(const std::filesystem::path& full, struct stat* st,
                                   ScanStats* stats) {
  return HashStableFileAt(AT_FDCWD, full.c_str(), full, st, stats, kHashAttempts);
}

Result<std::string> HashStableFileAt(int dir_fd, const char* name,
                                     const std::filesystem::path& full, struct stat* st,
                                     ScanStats* stats, int attempts) {
  for (int attempt = 1;; ++attempt) {
    uint64_t bytes = 0;
    Result<std::string> digest = HashContents(dir_fd, name, full, *st, &bytes);
    if (stats != nullptr) {
      ++stats->files_hashed;
      stats->bytes_hashed += bytes;
    }
    if (!digest.ok()) return digest.status();
    struct stat after;
    if (::fstatat(dir_fd, name, &after, AT_SYMLINK_NOFOLLOW) != 0) {
      if (errno == ENOENT) return Status::NotFound(full.string() + " vanished while it was hashed");
      return Status::FromErrno("lstat " + full.string(), errno);
    }
    // The path was opened by name: only an identity unchanged from before to
    // after proves the bytes read are this regular file's content.
    if (SameIdentity(*st, after) && bytes == static_cast<uint64_t>(after.st_size)) {
      return digest;
    }
    if (attempt >= attempts || !S_ISREG(after.st_mode)) {
      return Status::Unavailable(full.string() + " kept changing while it was hashed");
    }
    *st = after;
  }
}

Result<Manifest> ScanTree(const std::filesystem::path& root, HashCache* cache, ScanStats* stats,
                          const ScanOptions& options) {
  ScanStats local;
  if (stats == nullptr) stats = &local;
  *stats = ScanStats{};
  TreeWalker walker(root, cache, stats, options);
  MC_ASSIGN_OR_RETURN(UniqueFd root_fd, walker.OpenRoot());
  Manifest manifest;
  walker.BeginCache();
  Status walked = walker.WalkDir(std::move(root_fd), "", &manifest);
  Status committed = walker.EndCache();
  MC_RETURN_IF_ERROR(walked);
  if (!committed.ok()) {
    MC_LOG(warning) << "hash cache: commit failed, next scan re-hashes: " << committed.ToString();
  }
  stats->entries = manifest.size();
  return manifest;
}

// Each listed path is brought up to date on a copy of the manifest, which
// replaces *manifest only when every path succeeded.
//
// For a path "a/b/c": the parents "a" and "a/b" are walked from the root with
// O_NOFOLLOW. A parent that is a real directory is (re)recorded as one, which
// adds it if the manifest lacked it. A parent that is gone or no longer a
// directory is itself what changed: it is rescanned in place of the path
// (removing its old subtree). Then the path is rescanned: its old entry and
// subtree are dropped and whatever is on disk now is scanned, whole if it is
// a directory.
Status RescanPaths(const std::filesystem::path& root, const std::vector<std::string>& paths,
                   HashCache* cache, Manifest* manifest, ScanStats* stats,
                   const ScanOptions& options) {
  ScanStats local;
  if (stats == nullptr) stats = &local;
  *stats = ScanStats{};
  for (const std::string& path : paths) {
    Status valid = ValidateRelativePath(path);
    if (!valid.ok()) return valid.WithContext("listed path");
  }
  std::vector<std::string> sorted = paths;
  std::sort(sorted.begin(), sorted.end());
  sorted.erase(std::unique(sorted.begin(), sorted.end()), sorted.end());

  TreeWalker walker(root, cache, stats, options);
  MC_ASSIGN_OR_RETURN(UniqueFd root_fd, walker.OpenRoot());
  Manifest next = *manifest;

  // Rescans `rel`, the entry `name` of `dir_fd`.
  auto rescan_one = [&](int dir_fd, const std::string& name, const std::string& rel) -> Status {
    next.Erase(rel);
    EraseSubtree(&next, rel);
    return walker.ScanEntry(dir_fd, name, rel, &next);
  };

  auto rescan_path = [&](const std::string& path) -> Status {
    if (walker.Excluded(path)) {
      MC_LOG(warning) << "rescan: ignoring excluded path " << path;
      ++stats->skipped;
      return Status::Ok();
    }
    UniqueFd dir(::dup(root_fd.get()));
    if (!dir.valid()) return Status::FromErrno("dup", errno);
    size_t start = 0;
    for (;;) {
      size_t slash = path.find('/', start);
      if (slash == std::string::npos) break;
      const std::string name = path.substr(start, slash - start);
      const std::string parent = path.substr(0, slash);
      start = slash + 1;
      struct stat st;
      if (::fstatat(dir.get(), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
        if (errno != ENOENT) return Status::FromErrno("lstat " + (root / parent).string(), errno);
        return rescan_one(dir.get(), name, parent);  // the parent itself is gone
      }
      // A parent that is no longer a directory is itself what changed.
      if (!S_ISDIR(st.st_mode)) return rescan_one(dir.get(), name, parent);
      const v1::FileEntry* known = next.Find(parent);
      if (known == nullptr || known->kind() != v1::ENTRY_DIRECTORY ||
          known->mode() != (st.st_mode & 07777)) {
        v1::FileEntry entry;
        entry.set_path(parent);
        entry.set_kind(v1::ENTRY_DIRECTORY);
        entry.set_mode(st.st_mode & 07777);
        next.Put(std::move(entry));
      }
      UniqueFd sub(
          ::openat(dir.get(), name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
      if (!sub.valid()) {
        if (errno == ENOENT || errno == ENOTDIR || errno == ELOOP) {
          return rescan_one(dir.get(), name, parent);  // replaced meanwhile
        }
        return Status::FromErrno("open directory " + (root / parent).string(), errno);
      }
      dir = std::move(sub);
    }
    return rescan_one(dir.get(), path.substr(start), path);
  };

  walker.BeginCache();
  Status status;
  for (const std::string& path : sorted) {
    status = rescan_path(path);
    if (!status.ok()) {
      status = status.WithContext(path);
      break;
    }
  }
  Status committed = walker.EndCache();
  MC_RETURN_IF_ERROR(status);
  if (!committed.ok()) {
    MC_LOG(warning) << "hash cache: commit failed, next scan re-hashes: " << committed.ToString();
  }
  stats->entries = next.size();
  *manifest = std::move(next);
  return Status::Ok();
}

}  // namespace mirrorcast
