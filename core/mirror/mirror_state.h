// A mirror's durable record of what its tree holds (<state>/subscriber.db):
// the serial and manifest digest of its repo, every entry of that manifest,
// the journal of an apply in progress, and ACKs not yet confirmed.
//
// The journal makes applies resumable: it is written (durably) once all
// content is staged and before the tree is touched, and removed in the same
// transaction that records the new serial. If it is present at start-up, the
// apply was interrupted and Applier::Commit() is run again from it.
//
// Owned by one thread (the follower's); not thread-safe.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/base/status.h"
#include "core/manifest/manifest.h"
#include "core/store/sqlite.h"
#include "proto/mirrorcast.pb.h"

namespace mirrorcast {

struct Journal {
  uint64_t serial = 0;              // the serial being applied
  std::string manifest_sha256;      // its canonical digest
  std::vector<v1::Change> changes;  // the change list being applied
};

class MirrorState {
 public:
  static Result<std::unique_ptr<MirrorState>> Open(const std::filesystem::path& state_dir,
                                                   const std::string& repo);
  // The repos recorded in <state_dir>/subscriber.db (which must exist).
  static Result<std::vector<std::string>> RecordedRepos(const std::filesystem::path& state_dir);

  // False until the first apply (or an adopted scan) is recorded.
  bool initialized() const { return initialized_; }
  const Manifest& manifest() const { return manifest_; }
  uint64_t serial() const { return manifest_.serial(); }
  const std::string& digest() const { return digest_; }

  // Adopts `scanned` (a scan of the existing tree at serial 0) as the local
  // manifest, so content already there can be reused.
  Status Adopt(Manifest scanned);

  Status WriteJournal(const Journal& journal);
  Result<std::optional<Journal>> ReadJournal();

  // Applies `changes` to the recorded manifest and records `serial` and
  // `digest`, removing the journal and queueing `ack` (when given), in one
  // transaction: a crash can never record the serial but lose its ACK.
  // With `delete_after_unix` > 0 the deleted paths stay in the tree and are
  // recorded as deferred deletions due at that time (re-added paths are
  // taken off that list).
  // `applied`, when the caller already has it, is the recorded manifest with
  // `changes` applied and its digest checked; otherwise it is computed here.
  Status CommitApply(uint64_t serial, const std::string& digest,
                     const std::vector<v1::Change>& changes, const v1::Ack* ack = nullptr,
                     int64_t delete_after_unix = 0, std::optional<Manifest> applied = {});

  // Deferred deletions (grace period), oldest due first.
  struct DeferredDeletion {
    std::string path;
    v1::EntryKind kind = v1::ENTRY_KIND_UNSPECIFIED;
    int64_t due_unix = 0;
  };
  // Those due at `now_unix` (all of them with now_unix = INT64_MAX).
  Result<std::vector<DeferredDeletion>> DueDeletions(int64_t now_unix);
  Status DropDeferred(const std::string& path);

  // ACKs that the broker has not confirmed yet, oldest first.
  Status QueueAck(const v1::Ack& ack);
  Result<std::vector<std::pair<int64_t, v1::Ack>>> PendingAcks();
  Status DropAck(int64_t id);

 private:
  MirrorState(std::string repo, std::unique_ptr<Database> db)
      : repo_(std::move(repo)), db_(std::move(db)) {}
  Status Load();

  std::string repo_;
  std::unique_ptr<Database> db_;
  Manifest manifest_;
  std::string digest_;
  bool initialized_ = false;
};

}  // namespace mirrorcast
