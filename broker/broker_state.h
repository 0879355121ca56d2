// The broker's durable state in SQLite (<state>/broker.db): latest serial of
// each repo, the event log, and the mirror table built from ACKs. Manifests
// are files beside it (<state>/manifests/<repo>/<serial>.pb), written and
// fsync'd before the event that names them is committed.
//
// Owned by the broker's control thread; not thread-safe.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

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

  std::filesystem::path ManifestPath(const std::string& repo, uint64_t serial) const;

  // Records a published event durably (one transaction): the event row and
  // the repo's new head. The manifest file must already be durable.
  Status CommitEvent(const std::string& repo, const RepoHead& head, const std::string& envelope,
                     int64_t now_unix);

  // Events with serial > since, oldest first, at most `max`.
  Result<StoredEvents> EventsSince(const std::string& repo, uint64_t since, uint32_t max);

  // Upserts the mirror row from an ACK.
  Status RecordAck(const v1::Ack& ack, int64_t now_unix);
  Result<std::vector<v1::MirrorStatus>> Mirrors();

  // Keeps the newest `keep_events` events and `keep_manifests` manifests of a repo.
  Status Prune(const std::string& repo, uint64_t keep_events, uint64_t keep_manifests);

 private:
  BrokerState(std::filesystem::path dir, std::unique_ptr<Database> db)
      : dir_(std::move(dir)), db_(std::move(db)) {}
  Status Load();

  std::filesystem::path dir_;
  std::unique_ptr<Database> db_;
  std::map<std::string, RepoHead> repos_;
};

}  // namespace mirrorcast
