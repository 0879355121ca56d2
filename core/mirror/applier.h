// Applies a change list to a mirror's tree so that a web client never sees an
// inconsistent repository.
//
// Two steps:
//   Stage(): every new file's content is placed in the staging directory (on
//     the tree's filesystem): reused from a local file with the same SHA-256,
//     rebuilt from a librsync delta against the old version, or fetched whole.
//     Every staged file is checked against its signed SHA-256 and size, gets
//     its mode and mtime, and is fsync'd. The tree is not touched; a failure
//     here leaves the mirror exactly at its old serial.
//   Commit(): moves staged content into the tree in a fixed order: new
//     directories; content files; metadata (repodata/, dists/, ...); index
//     roots (repomd.xml, InRelease, ...); then deletions; then directory
//     modes; with directory fsyncs between phases. Every step is idempotent,
//     so after a crash Commit() is simply run again from the journal (the same
//     change list and whatever is still staged) and finishes the job.
//
// Content is fetched into "<staging>/<sha256 hex>", so what an interrupted
// Stage() already has survives a restart; once a batch is there, each file is
// moved to its change's index in the list ("<staging>/<i>"), which is what
// makes Commit() replayable. Not thread-safe.
//
// The change list is a ChangeList: a vector in memory (an update), or rows
// read back a batch at a time from the journal (a bootstrap or jump of
// millions of entries), so memory stays bounded whatever its size. Stage()
// works through it in batches of kStageBatch files; Commit() visits it step
// by step (ApplyStep) across the WHOLE list, so the order a client can see is
// the same however the list is held.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "core/base/clock.h"
#include "core/base/status.h"
#include "core/fs/atomic.h"
#include "core/manifest/manifest.h"
#include "core/manifest/metadata.h"
#include "core/net/content_client.h"
#include "proto/mirrorcast.pb.h"

namespace mirrorcast {

// What a mirror's tree holds, as its recorded manifest says: Stage() asks it
// about the old version of each path it changes and for local copies of
// content it needs, so it never needs the whole manifest.
class LocalTree {
 public:
  virtual ~LocalTree() = default;
  virtual Result<std::optional<v1::FileEntry>> Find(std::string_view path) = 0;
  // A path whose recorded content has this SHA-256, if any.
  virtual Result<std::optional<std::string>> PathWithContent(std::string_view sha256) = 0;
};

// A LocalTree over an in-memory manifest (verify, tests).
class ManifestTree : public LocalTree {
 public:
  explicit ManifestTree(const Manifest& manifest);
  Result<std::optional<v1::FileEntry>> Find(std::string_view path) override;
  Result<std::optional<std::string>> PathWithContent(std::string_view sha256) override;

 private:
  const Manifest& manifest_;
  std::map<std::string, std::string, std::less<>> by_sha_;
};

// Which step of Commit() a change belongs to, in the order they run.
enum class ApplyStep : int {
  kDirectory = 0,          // new directories (their modes are set last)
  kContent = 1,            // files and symlinks outside the metadata
  kMetadata = 2,           // MetadataMatcher phase 1 (repodata/, dists/, ...)
  kIndexRoot = 3,          // phase 2 (repomd.xml, InRelease, ...)
  kDeletion = 4,           // deleted files and symlinks
  kDirectoryDeletion = 5,  // deleted directories (deepest first)
};
inline constexpr int kApplySteps = 6;
ApplyStep StepOf(const v1::Change& change, const MetadataMatcher& metadata);

// A change list as Stage() and Commit() read it.
class ChangeList {
 public:
  virtual ~ChangeList() = default;
  using Visitor = std::function<Status(uint64_t index, const v1::Change& change)>;
  // Calls `visit` for each change of `step`, in list order (reversed with
  // `reverse`), with its position in the whole list. The change is valid
  // only during the call.
  virtual Status ForEach(ApplyStep step, bool reverse, const Visitor& visit) = 0;
  // Number of changes.
  virtual uint64_t size() const = 0;
  // Files added or modified, and their bytes (progress totals).
  virtual uint64_t files() const = 0;
  virtual uint64_t file_bytes() const = 0;
};

// A ChangeList over a vector in memory (not owned; must outlive it).
class ChangeVector : public ChangeList {
 public:
  ChangeVector(const std::vector<v1::Change>& changes, const MetadataMatcher& metadata);
  Status ForEach(ApplyStep step, bool reverse, const Visitor& visit) override;
  uint64_t size() const override { return changes_.size(); }
  uint64_t files() const override { return files_; }
  uint64_t file_bytes() const override { return file_bytes_; }

 private:
  const std::vector<v1::Change>& changes_;
  std::vector<ApplyStep> steps_;
  uint64_t files_ = 0;
  uint64_t file_bytes_ = 0;
};

struct ApplyStats {
  uint64_t bytes_fetched = 0;    // whole-file and delta bytes received
  uint64_t bytes_reused = 0;     // bytes taken from content the mirror already had
  uint64_t bytes_signature = 0;  // librsync signature bytes sent
  uint64_t files_fetched = 0;
  uint64_t files_reused = 0;
  uint64_t files_delta = 0;
  uint64_t delta_fallbacks = 0;  // deltas that failed and were fetched whole
  uint64_t files_changed = 0;
};

// How far the whole-file fetch of a Stage() has come.
struct FetchProgress {
  uint64_t files_done = 0;
  uint64_t files_total = 0;
  uint64_t bytes_done = 0;
  uint64_t bytes_total = 0;
  double seconds = 0;  // since the fetch started
  bool finished = false;
};

struct ApplierOptions {
  std::filesystem::path tree;
  std::filesystem::path staging;  // same filesystem as `tree`; emptied by Stage()
  MetadataMatcher metadata;
  uint64_t delta_min_bytes = 64 * 1024;  // smaller files are fetched whole
  // Leave deleted paths in place; the caller removes them later with
  // Remove() (a grace period for clients still reading the old metadata).
  bool defer_deletions = false;
  // Test hook: runs after the signature of a delta basis is computed and
  // before the delta is fetched (lets a test change the basis underneath).
  std::function<void(const std::string& path)> after_signature;
  // Test hook: runs during Commit() and Remove() once the parent directory
  // of `path` has been opened (checked to be no symlink), just before `path`
  // itself is written, has its mode or mtime set, or is deleted. Lets a test
  // swap a parent for a symlink in that window, as a local attacker racing
  // the apply would.
  std::function<void(const std::string& path)> before_tree_change;
  // Called every `progress_interval` while whole files are fetched (a
  // bootstrap, a large apply), and once at the end of the fetch.
  std::function<void(const FetchProgress&)> progress;
  std::chrono::milliseconds progress_interval{5000};
  // Steady time for the progress reports. Not owned; nullptr: the real clock.
  const Clock* clock = nullptr;
};

class Applier {
 public:
  explicit Applier(ApplierOptions options) : options_(std::move(options)) {}

  // Stages the content of every file change in `changes`. `local` describes
  // what the tree holds now. `content` fetches from the broker; it may be
  // null when every file's content is already at hand (Stage then fails if
  // something must be fetched after all).
  Status Stage(LocalTree& local, const std::vector<v1::Change>& changes, ContentClient* content,
               ApplyStats* stats, const std::function<bool()>& should_stop = nullptr);
  // The same for a change list of any size, kStageBatch files at a time.
  Status Stage(LocalTree& local, ChangeList& changes, ContentClient* content, ApplyStats* stats,
               const std::function<bool()>& should_stop = nullptr);

  // Moves staged content into the tree in the safe order, fsyncs, and
  // removes what the change list deletes. Idempotent; see above.
  Status Commit(const std::vector<v1::Change>& changes);
  Status Commit(ChangeList& changes);

  // Refuses a path no change may write (invalid, or inside the staging area).
  static Status CheckPath(std::string_view path);

  // Files staged per batch: bounds what Stage() holds in memory.
  static constexpr size_t kStageBatch = 8192;

  // Empties the staging directory. With `keep_content`, verified-looking
  // content files ("<staging>/<sha256 hex>", left by an interrupted or failed
  // Stage) stay: the next Stage re-hashes and reuses them instead of fetching
  // the same bytes again.
  Status ClearStaging(bool keep_content = false);

  // Deletes tree/path (a directory with everything below it), refusing to
  // follow symlinks on the way. A path that is already gone is fine.
  Status Remove(const std::string& path, v1::EntryKind kind);

  const ApplierOptions& options() const { return options_; }
  const Clock& clock() const { return options_.clock ? *options_.clock : Clock::Real(); }

 private:
  struct Staging;  // the state of one Stage() across its batches
  Status StageBatch(LocalTree& local, const std::vector<std::pair<uint64_t, v1::Change>>& batch,
                    ContentClient* content, ApplyStats* stats,
                    const std::function<bool()>& should_stop, Staging& staging);
  std::filesystem::path StagedPath(uint64_t index) const;
  std::filesystem::path ContentPath(const std::string& sha256) const;
  Status PlaceFile(const v1::Change& change, uint64_t index);
  Status PlaceSymlink(const v1::FileEntry& entry);
  Status PrepareSlot(const std::string& path, v1::EntryKind new_kind);
  // An open descriptor of path's parent (made if missing), reached without
  // following a symlink; kept while consecutive files share it.
  Result<int> ParentDir(const std::string& path);
  // Drops the directory ParentDir remembers (after anything that may have
  // replaced a directory): always, or when it is at or below `path`.
  void ForgetDirs();
  void ForgetDirsUnder(const std::string& path);

  ApplierOptions options_;
  UniqueFd staging_fd_;  // during Commit
  UniqueFd parent_fd_;
  std::string parent_path_;
};

}  // namespace mirrorcast
