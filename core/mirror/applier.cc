#include "core/mirror/applier.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <map>
#include <system_error>

#include "core/base/log.h"
#include "core/crypto/sha256.h"
#include "core/delta/delta.h"
#include "core/fs/atomic.h"
#include "core/fs/dir_ops.h"
#include "core/fs/path.h"

namespace mirrorcast {

namespace fs = std::filesystem;

namespace {

constexpr std::string_view kStagingName = ".mirrorcast-staging";
// A directory inode larger than this once held many thousands of names.
constexpr off_t kShrinkStagingAbove = 1 << 20;

bool IsFileChange(const v1::Change& c) {
  return c.kind() != v1::CHANGE_DELETED && c.entry().kind() == v1::ENTRY_FILE;
}

Status CheckWritable(std::string_view path) {
  MC_RETURN_IF_ERROR(ValidateRelativePath(path));
  std::string_view first = path.substr(0, path.find('/'));
  if (first == kStagingName) return Status::Rejected("path inside mirrorcast's staging area");
  return Status::Ok();
}

Status SetModeAndTime(const fs::path& file, const v1::FileEntry& entry) {
  return SetModeAndMtime(file, static_cast<mode_t>(entry.mode()), entry.mtime());
}

Status VerifyFile(const fs::path& file, const v1::FileEntry& entry) {
  std::error_code ec;
  const uint64_t size = fs::file_size(file, ec);
  if (ec) return Status::IoError("stat " + file.string() + ": " + ec.message());
  if (size != entry.size()) {
    return Status::Corruption(entry.path() + ": " + std::to_string(size) +
                              " bytes, signed size is " + std::to_string(entry.size()));
  }
  MC_ASSIGN_OR_RETURN(std::string sha, Sha256File(file));
  if (sha != entry.sha256()) {
    return Status::Corruption(entry.path() + " does not match its signed SHA-256");
  }
  return Status::Ok();
}

// Makes each phase of a Commit() durable before the next one starts: one
// syncfs per phase that changed anything, so a crash can never keep metadata
// but lose content.
class PhaseSync {
 public:
  explicit PhaseSync(const fs::path& tree) : tree_(tree) {}
  void Changed() { changed_ = true; }
  Status Flush() {
    if (!changed_) return Status::Ok();
    changed_ = false;
    return SyncFilesystem(tree_);
  }

 private:
  fs::path tree_;
  bool changed_ = false;
};

}  // namespace

fs::path Applier::StagedPath(uint64_t index) const {
  return options_.staging / std::to_string(index);
}

fs::path Applier::ContentPath(const std::string& sha256) const {
  return options_.staging / ToHex(sha256);
}

namespace {

bool IsContentName(const std::string& name) {
  return name.size() == 2 * kSha256Size &&
         name.find_first_not_of("0123456789abcdef") == std::string::npos;
}

// "<staging>/<i>": a file a finished batch of an interrupted Stage() moved to
// its change's slot.
bool IsSlotName(const std::string& name) {
  return !name.empty() && name.size() <= 20 &&
         name.find_first_not_of("0123456789") == std::string::npos;
}

}  // namespace

Status Applier::ClearStaging(bool keep_content) {
  std::error_code ec;
  fs::create_directories(options_.staging, ec);
  if (ec) return Status::IoError("create " + options_.staging.string() + ": " + ec.message());
  for (const auto& entry : fs::directory_iterator(options_.staging, ec)) {
    const std::string name = entry.path().filename().string();
    if (keep_content && IsContentName(name)) continue;
    std::error_code rm;
    if (keep_content && IsSlotName(name) && entry.is_regular_file(rm)) {
      // Staged whole and verified by a batch of an interrupted Stage(): it goes
      // back under its content name (re-hashed here, and verified against its
      // signed SHA-256 again before use), so a restart does not fetch again
      // what finished batches already have.
      auto sha = Sha256File(entry.path());
      if (sha.ok()) {
        const fs::path content = ContentPath(*sha);
        if (!fs::exists(content, rm) && !rm) {
          fs::rename(entry.path(), content, rm);
          if (!rm) continue;
        }
      }
    }
    fs::remove_all(entry.path(), rm);
    if (rm) return Status::IoError("clean " + entry.path().string() + ": " + rm.message());
  }
  if (ec) return Status::IoError("list " + options_.staging.string() + ": " + ec.message());
  // A directory that once held a bootstrap's million files keeps its size
  // on ext4 (directories never shrink), and every later listing reads all of
  // it: an emptied staging directory that grew is made anew. If it cannot be
  // removed (a mount point, say), it simply stays.
  struct stat st {};
  if (!keep_content && ::lstat(options_.staging.c_str(), &st) == 0 && S_ISDIR(st.st_mode) &&
      st.st_size > kShrinkStagingAbove && ::rmdir(options_.staging.c_str()) == 0) {
    fs::create_directories(options_.staging, ec);
    if (ec) return Status::IoError("create " + options_.staging.string() + ": " + ec.message());
    ::chmod(options_.staging.c_str(), st.st_mode & 07777);
  }
  return Status::Ok();
}

ManifestTree::ManifestTree(const Manifest& manifest) : manifest_(manifest) {
  for (const auto& [path, entry] : manifest.entries()) {
    if (entry.kind() == v1::ENTRY_FILE) by_sha_.emplace(entry.sha256(), path);
  }
}

Result<std::optional<v1::FileEntry>> ManifestTree::Find(std::string_view path) {
  const v1::FileEntry* e = manifest_.Find(path);
  return e ? std::optional<v1::FileEntry>(*e) : std::nullopt;
}

Result<std::optional<std::string>> ManifestTree::PathWithContent(std::string_view sha256) {
  auto it = by_sha_.find(sha256);
  return it == by_sha_.end() ? std::nullopt : std::optional<std::string>(it->second);
}

ApplyStep StepOf(const v1::Change& change, const MetadataMatcher& metadata) {
  const bool dir = change.entry().kind() == v1::ENTRY_DIRECTORY;
  if (change.kind() == v1::CHANGE_DELETED) {
    return dir ? ApplyStep::kDirectoryDeletion : ApplyStep::kDeletion;
  }
  if (dir) return ApplyStep::kDirectory;
  switch (metadata.ApplyPhase(change.entry().path())) {
    case 0:
      return ApplyStep::kContent;
    case 1:
      return ApplyStep::kMetadata;
    default:
      return ApplyStep::kIndexRoot;
  }
}

ChangeVector::ChangeVector(const std::vector<v1::Change>& changes, const MetadataMatcher& metadata)
    : changes_(changes) {
  steps_.reserve(changes.size());
  for (const auto& c : changes) {
    steps_.push_back(StepOf(c, metadata));
    if (IsFileChange(c)) {
      ++files_;
      file_bytes_ += c.entry().size();
    }
  }
}

Status ChangeVector::ForEach(ApplyStep step, bool reverse, const Visitor& visit) {
  const size_t n = changes_.size();
  for (size_t k = 0; k < n; ++k) {
    const size_t i = reverse ? n - 1 - k : k;
    if (steps_[i] == step) MC_RETURN_IF_ERROR(visit(i, changes_[i]));
  }
  return Status::Ok();
}

Status Applier::CheckPath(std::string_view path) { return CheckWritable(path); }

// What one Stage() carries from batch to batch: the progress of the whole.
struct Applier::Staging {
  FetchProgress progress;  // files_done/bytes_done: every file change dealt with so far
  std::chrono::steady_clock::time_point started;
  std::chrono::steady_clock::time_point next_report;
  bool reported = false;
};

Status Applier::Stage(LocalTree& local, const std::vector<v1::Change>& changes,
                      ContentClient* content, ApplyStats* stats,
                      const std::function<bool()>& should_stop) {
  // Every path is checked before a byte is fetched.
  for (const auto& c : changes) MC_RETURN_IF_ERROR(CheckWritable(c.entry().path()));
  ChangeVector list(changes, options_.metadata);
  return Stage(local, list, content, stats, should_stop);
}

Status Applier::Stage(LocalTree& local, ChangeList& changes, ContentClient* content,
                      ApplyStats* stats, const std::function<bool()>& should_stop) {
  MC_RETURN_IF_ERROR(ClearStaging(/*keep_content=*/true));
  Staging staging;
  staging.started = clock().Steady();
  staging.progress.files_total = changes.files();
  staging.progress.bytes_total = changes.file_bytes();
  staging.next_report = staging.started + options_.progress_interval;
  std::vector<std::pair<uint64_t, v1::Change>> batch;
  auto flush = [&]() -> Status {
    if (batch.empty()) return Status::Ok();
    Status s = StageBatch(local, batch, content, stats, should_stop, staging);
    batch.clear();
    return s;
  };
  for (ApplyStep step : {ApplyStep::kContent, ApplyStep::kMetadata, ApplyStep::kIndexRoot}) {
    MC_RETURN_IF_ERROR(changes.ForEach(step, false, [&](uint64_t i, const v1::Change& c) {
      if (!IsFileChange(c)) return Status::Ok();
      MC_RETURN_IF_ERROR(CheckWritable(c.entry().path()));
      batch.emplace_back(i, c);
      return batch.size() >= kStageBatch ? flush() : Status::Ok();
    }));
  }
  MC_RETURN_IF_ERROR(flush());
  if (options_.progress && staging.reported) {
    staging.progress.seconds =
        std::chrono::duration<double>(clock().Steady() - staging.started).count();
    staging.progress.finished = true;
    options_.progress(staging.progress);
  }
  // One syncfs makes every staged file (content, mode, mtime) durable.
  return SyncFilesystem(options_.staging);
}

Status Applier::StageBatch(LocalTree& local,
                           const std::vector<std::pair<uint64_t, v1::Change>>& batch,
                           ContentClient* content, ApplyStats* stats,
                           const std::function<bool()>& should_stop, Staging& staging) {
  // First staged copy of a hash in this batch (a copy in an earlier batch
  // has moved to its slot already, so a later duplicate is simply fetched).
  std::map<std::string, uint64_t, std::less<>> staged_by_sha;
  std::vector<std::pair<uint64_t, uint64_t>> duplicates;  // (index, copy from index)
  std::vector<FileFetch> whole;
  std::vector<std::pair<uint64_t, const v1::FileEntry*>> staged;  // indices with a staged file
  std::set<uint64_t> has_mode;  // staged files fetched with their mode and mtime set
  FetchProgress& progress = staging.progress;

  for (const auto& [i, change] : batch) {
    if (should_stop && should_stop()) return Status::Unavailable("stopping");
    const v1::FileEntry& entry = change.entry();
    MC_ASSIGN_OR_RETURN(const std::optional<v1::FileEntry> old, local.Find(entry.path()));
    if (old && old->kind() == v1::ENTRY_FILE && old->sha256() == entry.sha256()) {
      stats->bytes_reused += entry.size();  // kept in place; Commit() sets mode and mtime
      progress.files_done++;
      progress.bytes_done += entry.size();
      continue;
    }
    stats->files_changed++;
    staged.emplace_back(i, &entry);
    if (auto dup = staged_by_sha.find(entry.sha256()); dup != staged_by_sha.end()) {
      duplicates.emplace_back(i, dup->second);
      progress.files_done++;
      progress.bytes_done += entry.size();
      continue;
    }
    staged_by_sha.emplace(entry.sha256(), i);
    const fs::path dest = ContentPath(entry.sha256());

    // Left by an earlier attempt that did not finish: re-hashed, never
    // trusted. A file cut short is resumed where it stopped.
    bool resume = false;
    if (struct stat st{}; ::lstat(dest.c_str(), &st) == 0) {
      if (S_ISREG(st.st_mode) && static_cast<uint64_t>(st.st_size) == entry.size() &&
          VerifyFile(dest, entry).ok()) {
        stats->bytes_reused += entry.size();
        stats->files_reused++;
        progress.files_done++;
        progress.bytes_done += entry.size();
        continue;
      }
      if (S_ISREG(st.st_mode) && static_cast<uint64_t>(st.st_size) < entry.size()) {
        resume = true;
        stats->bytes_reused += static_cast<uint64_t>(st.st_size);
      } else {
        std::error_code ec;
        fs::remove(dest, ec);
      }
    }

    MC_ASSIGN_OR_RETURN(const std::optional<std::string> have,
                        local.PathWithContent(entry.sha256()));
    if (have) {
      uint64_t copied = 0;
      Status s = CopyFileContents(options_.tree / *have, dest, 0600, &copied);
      if (s.ok()) s = VerifyFile(dest, entry);
      if (s.ok()) {
        stats->bytes_reused += copied;
        stats->files_reused++;
        progress.files_done++;
        progress.bytes_done += entry.size();
        continue;
      }
      MC_LOG(warning) << "cannot reuse " << *have << " for " << entry.path() << ": " << s.ToString()
                      << "; fetching it";
    }

    if (content == nullptr) {
      return Status::Unavailable("no broker to fetch " + entry.path() + " from");
    }
    if (!resume && old && old->kind() == v1::ENTRY_FILE &&
        old->size() >= options_.delta_min_bytes && entry.size() >= options_.delta_min_bytes) {
      const fs::path basis = options_.tree / entry.path();
      const fs::path delta_file = options_.staging / (std::to_string(i) + ".delta");
      FetchStats fetch;
      Status s = CheckNoSymlinkParents(options_.tree, entry.path());
      std::string signature;
      if (s.ok()) {
        auto sig = ComputeSignature(basis);
        s = sig.status();
        if (sig.ok()) signature = std::move(*sig);
      }
      if (s.ok() && options_.after_signature) options_.after_signature(entry.path());
      if (s.ok()) {
        // A delta larger than the file is worse than the file itself.
        s = content->FetchDelta(entry.path(), entry.sha256(), signature, delta_file, entry.size(),
                                &fetch);
      }
      std::string rebuilt_sha;
      if (s.ok()) s = ApplyDelta(basis, delta_file, dest, entry.size(), &rebuilt_sha);
      if (s.ok() && rebuilt_sha != entry.sha256()) {
        s = Status::Corruption(entry.path() +
                               " rebuilt from the delta does not match its signed "
                               "SHA-256 (basis changed?)");
      }
      std::error_code ec;
      fs::remove(delta_file, ec);
      stats->bytes_fetched += fetch.bytes_fetched;
      stats->bytes_signature += fetch.bytes_signature;
      if (s.ok()) {
        stats->files_delta++;
        if (entry.size() > fetch.bytes_fetched)
          stats->bytes_reused += entry.size() - fetch.bytes_fetched;
        progress.files_done++;
        progress.bytes_done += entry.size();
        continue;
      }
      stats->delta_fallbacks++;
      MC_LOG(warning) << "delta for " << entry.path() << " failed (" << s.ToString()
                      << "); fetching the whole file";
    }
    FileFetch fetch{entry.path(), entry.size(), entry.sha256(), dest, resume};
    // Mode and mtime go on the open descriptor as the file completes.
    fetch.set_mode_and_mtime = true;
    fetch.mode = entry.mode();
    fetch.mtime = entry.mtime();
    whole.push_back(std::move(fetch));
    has_mode.insert(i);
  }

  if (!whole.empty()) {
    FetchStats fetch;
    const uint64_t files_before = progress.files_done;
    const uint64_t bytes_before = progress.bytes_done;
    auto report = [&]() {
      progress.files_done = files_before + fetch.files_fetched;
      progress.bytes_done = bytes_before + fetch.bytes_fetched;
      progress.seconds = std::chrono::duration<double>(clock().Steady() - staging.started).count();
      progress.finished = false;
      staging.reported = true;
      options_.progress(progress);
    };
    // Polled between replies: reports progress, and passes the stop on.
    auto poll = [&]() {
      if (options_.progress && clock().Steady() >= staging.next_report) {
        report();
        staging.next_report = clock().Steady() + options_.progress_interval;
      }
      return should_stop && should_stop();
    };
    Status s = content->FetchFiles(whole, &fetch, poll);
    const bool resumed = std::any_of(whole.begin(), whole.end(), [](auto& f) { return f.resume; });
    if (s.code() == Status::Code::kCorruption && resumed) {
      // A kept prefix was bad (the SHA-256 over it and the rest failed): that
      // file starts from scratch; everything else resumes where it is.
      MC_LOG(warning) << "a resumed transfer did not verify (" << s.ToString()
                      << "); fetching it from the start";
      for (FileFetch& f : whole) {
        std::error_code ec;
        const uint64_t have = fs::file_size(f.dest, ec);
        bool keep = !ec && have <= f.size;
        if (keep && have == f.size) {
          auto sha = Sha256File(f.dest);
          keep = sha.ok() && *sha == f.sha256;
        }
        f.resume = keep;
        if (!keep) fs::remove(f.dest, ec);
      }
      s = content->FetchFiles(whole, &fetch, poll);
    }
    stats->bytes_fetched += fetch.bytes_fetched;
    stats->files_fetched += fetch.files_fetched;
    if (!s.ok()) {
      // What arrived stays for the next attempt (complete files are re-hashed,
      // partial ones resumed), except on a full disk, where the partial files
      // hold the very space that ran out.
      if (s.code() == Status::Code::kResourceExhausted) {
        for (const FileFetch& f : whole) {
          std::error_code ec;
          if (fs::file_size(f.dest, ec) != f.size || ec) fs::remove(f.dest, ec);
        }
      }
      return s;
    }
    progress.files_done = files_before;
    progress.bytes_done = bytes_before;
    for (const FileFetch& f : whole) {
      progress.files_done++;
      progress.bytes_done += f.size;
    }
  }
  // Everything is here: each file goes to its change's slot.
  UniqueFd staging_dir(::open(options_.staging.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!staging_dir.valid()) return Status::FromErrno("open " + options_.staging.string(), errno);
  for (const auto& [sha, index] : staged_by_sha) {
    if (::renameat(staging_dir.get(), ToHex(sha).c_str(), staging_dir.get(),
                   std::to_string(index).c_str()) != 0) {
      return Status::FromErrno("stage content for change " + std::to_string(index), errno);
    }
  }
  for (const auto& [index, from] : duplicates) {
    uint64_t copied = 0;
    MC_RETURN_IF_ERROR(CopyFileContents(StagedPath(from), StagedPath(index), 0600, &copied));
    stats->bytes_reused += copied;
  }
  for (const auto& [i, entry] : staged) {
    if (has_mode.count(i)) continue;
    MC_RETURN_IF_ERROR(SetModeAndTime(StagedPath(i), *entry));
  }
  return Status::Ok();
}

Status Applier::PrepareSlot(const std::string& path, v1::EntryKind new_kind) {
  MC_RETURN_IF_ERROR(CheckWritable(path));
  // Relative to the parent's descriptor (opened without following a
  // symlink), so what is removed here is inside the tree.
  MC_ASSIGN_OR_RETURN(const int dir, ParentDir(path));
  const std::string name(BaseName(path));
  const fs::path target = options_.tree / path;
  struct stat st {};
  if (::fstatat(dir, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) return Status::Ok();
  const bool is_dir = S_ISDIR(st.st_mode);
  if (is_dir && new_kind != v1::ENTRY_DIRECTORY) {
    // A directory becomes a file or link: everything below it was deleted by
    // the same change list.
    ForgetDirsUnder(path);
    if (options_.before_tree_change) options_.before_tree_change(path);
    return RemoveAllAt(dir, name, target.string());
  }
  if (!is_dir && new_kind == v1::ENTRY_DIRECTORY) {
    if (options_.before_tree_change) options_.before_tree_change(path);
    if (::unlinkat(dir, name.c_str(), 0) != 0 && errno != ENOENT) {
      return Status::FromErrno("unlink " + target.string(), errno);
    }
  }
  return Status::Ok();
}

Result<int> Applier::ParentDir(const std::string& path) {
  const std::string_view parent = ParentOf(path);
  if (parent_fd_.valid() && parent == parent_path_) return parent_fd_.get();
  parent_fd_.reset();
  // Made where missing and opened one component at a time, never following
  // a symlink: what the descriptor names is inside the tree, so a rename
  // relative to it cannot escape.
  MC_ASSIGN_OR_RETURN(UniqueFd dir, OpenDirsUnder(options_.tree, parent));
  parent_fd_ = std::move(dir);
  parent_path_ = std::string(parent);
  return parent_fd_.get();
}

void Applier::ForgetDirs() {
  parent_fd_.reset();
  parent_path_.clear();
}

void Applier::ForgetDirsUnder(const std::string& path) {
  auto under = [&](std::string_view p) {
    return p == path || (p.size() > path.size() && p.compare(0, path.size(), path) == 0 &&
                         p[path.size()] == '/');
  };
  if (under(parent_path_)) {
    parent_fd_.reset();
    parent_path_.clear();
  }
}

Status Applier::PlaceFile(const v1::Change& change, uint64_t index) {
  const v1::FileEntry& entry = change.entry();
  MC_RETURN_IF_ERROR(CheckWritable(entry.path()));
  MC_ASSIGN_OR_RETURN(const int dir, ParentDir(entry.path()));
  const std::string name(BaseName(entry.path()));
  const std::string staged = std::to_string(index);
  if (options_.before_tree_change) options_.before_tree_change(entry.path());
  // One rename relative to two open directories: no path walk per file.
  if (::renameat(staging_fd_.get(), staged.c_str(), dir, name.c_str()) == 0) return Status::Ok();
  int err = errno;
  if (err == EISDIR || err == ENOTEMPTY || err == EEXIST) {
    // A directory is where the file goes: everything below it was deleted by
    // the same change list.
    MC_RETURN_IF_ERROR(PrepareSlot(entry.path(), v1::ENTRY_FILE));
    if (::renameat(staging_fd_.get(), staged.c_str(), dir, name.c_str()) == 0) return Status::Ok();
    err = errno;
  }
  const fs::path target = options_.tree / entry.path();
  if (err != ENOENT) return Status::FromErrno("rename into " + target.string(), err);
  // Nothing staged: same content as before (mode or mtime changed), or
  // already moved into place by an earlier, interrupted Commit().
  struct stat st {};
  if (::fstatat(dir, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode) ||
      static_cast<uint64_t>(st.st_size) != entry.size()) {
    return Status::Corruption("no staged content for " + entry.path());
  }
  // Mode and mtime relative to the parent's descriptor, never by path: a
  // parent swapped for a symlink since it was opened changes nothing.
  return SetModeAndMtimeAt(dir, name, static_cast<mode_t>(entry.mode()), entry.mtime(),
                           target.string());
}

Status Applier::PlaceSymlink(const v1::FileEntry& entry) {
  MC_RETURN_IF_ERROR(ValidateSymlinkTarget(entry.path(), entry.symlink_target()));
  MC_RETURN_IF_ERROR(PrepareSlot(entry.path(), v1::ENTRY_SYMLINK));
  ForgetDirsUnder(entry.path());  // a symlink may now stand where a directory was
  MC_ASSIGN_OR_RETURN(const int dir, ParentDir(entry.path()));
  const std::string name(BaseName(entry.path()));
  const fs::path target = options_.tree / entry.path();
  std::string tmp = ".mirrorcast-link." + name;
  if (tmp.size() > kMaxComponentBytes) tmp.resize(kMaxComponentBytes);
  if (options_.before_tree_change) options_.before_tree_change(entry.path());
  ::unlinkat(dir, tmp.c_str(), 0);
  if (::symlinkat(entry.symlink_target().c_str(), dir, tmp.c_str()) != 0) {
    return Status::FromErrno("symlink " + (target.parent_path() / tmp).string(), errno);
  }
  if (::renameat(dir, tmp.c_str(), dir, name.c_str()) != 0) {
    const int err = errno;
    ::unlinkat(dir, tmp.c_str(), 0);
    return Status::FromErrno("rename into " + target.string(), err);
  }
  return Status::Ok();
}

Status Applier::Remove(const std::string& path, v1::EntryKind kind) {
  MC_RETURN_IF_ERROR(CheckWritable(path));
  // The parent as it is now (a deferred deletion runs long after the apply
  // that recorded it), opened without following a symlink and creating
  // nothing: a missing parent means the path is gone already.
  auto parent = OpenDirUnder(options_.tree, ParentOf(path));
  if (!parent.ok()) {
    if (parent.status().code() == Status::Code::kNotFound) return Status::Ok();
    return parent.status().WithContext("delete " + path);
  }
  const int dir = parent->get();
  const std::string name(BaseName(path));
  const fs::path target = options_.tree / path;
  if (options_.before_tree_change) options_.before_tree_change(path);
  struct stat st {};
  if (::fstatat(dir, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) return Status::Ok();
  if (S_ISDIR(st.st_mode)) {
    if (kind != v1::ENTRY_DIRECTORY) return Status::Ok();  // replaced by a directory since
    ForgetDirsUnder(path);
    return RemoveAllAt(dir, name, target.string());  // never follows symlinks below
  }
  if (kind == v1::ENTRY_DIRECTORY) return Status::Ok();  // replaced by a file or link since
  if (::unlinkat(dir, name.c_str(), 0) != 0 && errno != ENOENT) {
    return Status::FromErrno("delete " + target.string(), errno);
  }
  return Status::Ok();
}

Status Applier::Commit(const std::vector<v1::Change>& changes) {
  ChangeVector list(changes, options_.metadata);
  return Commit(list);
}

Status Applier::Commit(ChangeList& changes) {
  // The directory the last file went to is opened afresh by each Commit.
  ForgetDirs();
  staging_fd_.reset(::open(options_.staging.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!staging_fd_.valid()) return Status::FromErrno("open " + options_.staging.string(), errno);
  PhaseSync sync(options_.tree);
  // 1. New directories (parents first: changes are in path order).
  MC_RETURN_IF_ERROR(changes.ForEach(ApplyStep::kDirectory, false, [&](uint64_t, const auto& c) {
    MC_RETURN_IF_ERROR(PrepareSlot(c.entry().path(), v1::ENTRY_DIRECTORY));
    MC_RETURN_IF_ERROR(MakeDirsUnder(options_.tree, c.entry().path()));
    sync.Changed();
    return Status::Ok();
  }));
  MC_RETURN_IF_ERROR(sync.Flush());

  // 2. Content, then metadata, then index roots: a client reading an index
  //    always finds what it names.
  for (ApplyStep step : {ApplyStep::kContent, ApplyStep::kMetadata, ApplyStep::kIndexRoot}) {
    MC_RETURN_IF_ERROR(changes.ForEach(step, false, [&](uint64_t i, const v1::Change& c) {
      const v1::FileEntry& entry = c.entry();
      if (entry.kind() == v1::ENTRY_FILE) {
        MC_RETURN_IF_ERROR(PlaceFile(c, i));
      } else if (entry.kind() == v1::ENTRY_SYMLINK) {
        MC_RETURN_IF_ERROR(PlaceSymlink(entry));
      }
      sync.Changed();
      return Status::Ok();
    }));
    MC_RETURN_IF_ERROR(sync.Flush());
  }

  // 3. Deletions last: files and links, then directories deepest first
  //    (unless a grace period defers them to Remove()).
  if (!options_.defer_deletions) {
    auto remove = [&](uint64_t, const v1::Change& c) {
      MC_RETURN_IF_ERROR(Remove(c.entry().path(), c.entry().kind()));
      sync.Changed();
      return Status::Ok();
    };
    MC_RETURN_IF_ERROR(changes.ForEach(ApplyStep::kDeletion, false, remove));
    MC_RETURN_IF_ERROR(changes.ForEach(ApplyStep::kDirectoryDeletion, true, remove));
    MC_RETURN_IF_ERROR(sync.Flush());
  }

  // 4. Directory modes last, so a read-only directory is filled first.
  MC_RETURN_IF_ERROR(changes.ForEach(ApplyStep::kDirectory, false, [&](uint64_t, const auto& c) {
    const std::string& path = c.entry().path();
    MC_ASSIGN_OR_RETURN(UniqueFd parent, OpenDirUnder(options_.tree, ParentOf(path)));
    if (options_.before_tree_change) options_.before_tree_change(path);
    const std::string name(BaseName(path));
    struct stat st {};
    if (::fstatat(parent.get(), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0 ||
        !S_ISDIR(st.st_mode)) {
      return Status::Rejected("not a directory: " + (options_.tree / path).string());
    }
    MC_RETURN_IF_ERROR(SetModeAt(parent.get(), name, static_cast<mode_t>(c.entry().mode()),
                                 (options_.tree / path).string()));
    sync.Changed();
    return Status::Ok();
  }));
  return sync.Flush();
}

}  // namespace mirrorcast
