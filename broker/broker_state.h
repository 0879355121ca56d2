// The broker's durable state in SQLite (<state>/broker.db): latest serial and
// manifest root of each repo, the event log, the mirror table built from
// ACKs, and which serials name each manifest object. The objects themselves
// (chunks and indexes) are files in a ManifestStore beside it
// (<state>/manifest-objects/), made durable before the event that names them
// is committed; one object is kept once for every serial that names it.
//
// Owned by the broker's control thread; not thread-safe.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "broker/manifest_store.h"
#include "core/base/status.h"
#include "core/store/sqlite.h"
#include "proto/mirrorcast.pb.h"

namespace mirrorcast {

struct RepoHead {
  uint64_t serial = 0;
  std::string manifest_sha256;
  uint64_t manifest_entries = 0;
};

struct StoredEvents {
  std::vector<std::string> envelopes;  // oldest first
  uint64_t oldest_serial = 0;          // 0 when the log is empty
};

class BrokerState {
 public:
  static Result<std::unique_ptr<BrokerState>> Open(const std::filesystem::path& state_dir);

  const std::map<std::string, RepoHead>& repos() const { return repos_; }
  RepoHead Head(const std::string& repo) const;

  ManifestStore& objects() { return objects_; }

  // Records that `serial` of `repo` names these manifest objects (they stay
  // until no serial within the keep window does).
  Status TouchObjects(const std::string& repo, uint64_t serial,
                      const std::vector<std::string>& ids);

  // Records a published event durably (one transaction): the event row and
  // the repo's new head. The manifest file must already be durable.
  Status CommitEvent(const std::string& repo, const RepoHead& head, const std::string& envelope,
                     int64_t now_unix);

  // Events with serial > since, oldest first, at most `max`.
  Result<StoredEvents> EventsSince(const std::string& repo, uint64_t since, uint32_t max);

  // Upserts the mirror row from an ACK.
  Status RecordAck(const v1::Ack& ack, int64_t now_unix);
  Result<std::vector<v1::MirrorStatus>> Mirrors();

  // Keeps the newest `keep_events` events of a repo, and the manifest
  // objects named by its newest `keep_manifests` serials.
  Status Prune(const std::string& repo, uint64_t keep_events, uint64_t keep_manifests);

 private:
  BrokerState(std::filesystem::path dir, std::unique_ptr<Database> db)
      : dir_(std::move(dir)), db_(std::move(db)), objects_(dir_ / "manifest-objects") {}
  Status Load();

  std::filesystem::path dir_;
  std::unique_ptr<Database> db_;
  ManifestStore objects_;
  std::map<std::string, RepoHead> repos_;
};

}  // namespace mirrorcast
