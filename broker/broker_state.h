// The broker's durable state in SQLite (<state>/broker.db): latest serial and
// manifest root of each repo, the event log, the mirror table built from
// ACKs, which serials name each manifest object, and the servable file
// versions. Manifest objects (chunks and indexes) are files in a
// ManifestStore beside it (<state>/manifest-objects/), made durable before
// the event that names them is committed, one copy however many serials name
// it; retained file versions are in ObjectStore (<state>/objects/).
//
// Servable versions (docs/architecture.md, "Serving content"): one row per
// (repo, sha256, path) a published manifest named, with the stat identity of
// the tree file taken when that publish committed, and retired_serial once
// the head no longer names it at that path. A version is servable while some
// row of it is current or retired less than keep_versions serials ago. The
// objects table says which versions have a retained object, and its identity.
//
// BrokerState is owned by the broker's control thread; not thread-safe.
// ServableVersionReader is the read side for content workers: one per
// thread, each with its own SQLite connection.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "broker/manifest_store.h"
#include "broker/object_store.h"
#include "broker/served_file.h"
#include "core/base/status.h"
#include "core/store/sqlite.h"
#include "proto/mirrorcast.pb.h"

namespace mirrorcast {

// A file version named by a published manifest at `path`.
struct PublishedVersion {
  std::string sha256;  // 32 raw bytes
  std::string path;
  FileIdentity identity;        // of the tree file when the publish committed
  uint64_t retired_serial = 0;  // read side: the serial that stopped naming it here; 0: current
};

// A retained object of a version.
struct StoredObject {
  std::string sha256;
  RetainedObject object;
};

// What one publish changes in the servable versions of a repo.
struct VersionChanges {
  // (path, sha256) pairs the new head no longer names: kept for keep_versions serials.
  std::vector<std::pair<std::string, std::string>> retired;
  // Versions the new head names that are new at their path (or changed identity).
  std::vector<PublishedVersion> published;
  // Objects made (or replaced) for this publish.
  std::vector<StoredObject> objects;
  // Links past what the publish reply carries: kept until the repo's next
  // publish, for the publisher to page through (LinkedPage).
  std::vector<v1::LinkedFile> linked;
};

// Where a version can be served from, as recorded.
struct ServableVersion {
  std::optional<RetainedObject> object;
  std::vector<PublishedVersion> paths;  // the asked-for path first, when it is one of them
};

struct RepoHead {
  uint64_t serial = 0;
  std::string manifest_sha256;
  uint64_t manifest_entries = 0;
};

// A mirror heard from (a poll), for BrokerState::RecordSeen.
struct MirrorSeen {
  std::string mirror_id;
  std::string repo;
  uint64_t serial = 0;
  int64_t seen_unix = 0;
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

  // Records a published event durably (one transaction): the event row, the
  // repo's new head, its servable-version changes (retired at head.serial)
  // and, for a recall, its record; clears the repo's pending objects. The
  // manifest objects must already be durable.
  Status CommitEvent(const std::string& repo, const RepoHead& head, const std::string& envelope,
                     int64_t now_unix, const VersionChanges& versions = {},
                     const v1::RecallRecord* recall = nullptr);

  // A large publish hands its version changes over in batches as it goes,
  // so that memory stays bounded: each batch is written to staging tables
  // (one transaction), and CommitEvent moves every staged row of the repo
  // into place together with its own `versions`, in key order, staged rows
  // first. Staged rows of a publish that never committed are dropped with
  // ClearStagedVersions (at start-up, and when a publish fails).
  Status StageVersions(const std::string& repo, uint64_t serial, const VersionChanges& batch);
  Status ClearStagedVersions(const std::string& repo);  // "": of every repo

  // Linked files of `serial` kept past the publish reply, after `after_path`
  // in path order: at most `max`, and paths of at most `max_path_bytes` in
  // all (at least one); `more` when others follow.
  Result<std::vector<v1::LinkedFile>> LinkedPage(const std::string& repo, uint64_t serial,
                                                 const std::string& after_path, size_t max,
                                                 size_t max_path_bytes, bool* more);

  // The retained object of a version, when there is one.
  Result<std::optional<RetainedObject>> ObjectOf(const std::string& repo,
                                                 const std::string& sha256);

  // Objects about to be made for a publish not yet committed, recorded first
  // so that a crash before the commit leaves no object nobody knows about.
  Status AddPendingObjects(const std::string& repo, const std::vector<std::string>& sha256s);
  Status ClearPendingObjects(const std::string& repo);  // "": of every repo
  // Pending objects of a publish that never committed: (repo, sha256) with no
  // row in the objects table. Their files are the caller's to remove.
  // With a repo, only that repo's.
  Result<std::vector<std::pair<std::string, std::string>>> UncommittedObjects(
      const std::string& repo = "");

  // Versions whose every row was retired `keep_versions` or more serials
  // before the head and that have an object: the objects PruneVersions will
  // forget. The caller removes their files first, then calls PruneVersions
  // (so a crash in between leaves rows without files, never files without rows).
  Result<std::vector<std::string>> ExpiredObjects(const std::string& repo, uint64_t keep_versions);
  Status PruneVersions(const std::string& repo, uint64_t keep_versions);

  // Events with serial > since, oldest first, at most `max`.
  Result<StoredEvents> EventsSince(const std::string& repo, uint64_t since, uint32_t max);
  // The RepoChanged of the stored event of `serial` (nullopt when the log no
  // longer holds it). Parsed, not verified again: it was when published.
  Result<std::optional<v1::RepoChanged>> StoredEvent(const std::string& repo, uint64_t serial);
  // Removes the events of `serials` from the log of `repo` (one
  // transaction): events signed by keys a new key set revokes.
  Status DropEvents(const std::string& repo, const std::vector<uint64_t>& serials);
  // The oldest serial the event log of `repo` holds (0: none).
  Result<uint64_t> OldestEventSerial(const std::string& repo);

  // Recalls committed (CommitEvent with a record): the one published as
  // `serial`, if it was a recall; the newest `per_repo` of every repo,
  // newest first. Kept as long as their events.
  Result<std::optional<v1::RecallRecord>> RecallAt(const std::string& repo, uint64_t serial);
  Result<std::vector<v1::RecallRecord>> Recalls(size_t per_repo);

  // Upserts the mirror row from an ACK.
  // `via`: the relays a forwarded ACK came through ("" from the mirror
  // itself); `seen_unix`: when a relay last heard from it (0: now is the ACK).
  Status RecordAck(const v1::Ack& ack, int64_t now_unix, const std::string& via = "",
                   int64_t seen_unix = 0);
  // Before RecordAck: the serials after the mirror's recorded one, up to
  // ack.serial(), were reached at now_ms (the propagation view).
  Status RecordReached(const v1::Ack& ack, int64_t now_ms);
  // A committed serial's time, for the propagation view; keeps the newest
  // kPropagationSerials serials of the repo (and their reached rows).
  Status RecordPublished(const std::string& repo, uint64_t serial, int64_t now_ms);
  // Liveness from polls, one transaction: last_seen_unix only moves forward;
  // a mirror not yet in the table gets a row at the serial it reports.
  Status RecordSeen(const std::vector<MirrorSeen>& seen);
  // When the first event after `serial` was committed (nullopt: none, or
  // pruned from the log): the start of a mirror's lag.
  Result<std::optional<int64_t>> PublishedAfter(const std::string& repo, uint64_t serial);
  // The newest `serials` serials of the repo with their reach times, newest first.
  Result<std::vector<v1::SerialPropagation>> Propagation(const std::string& repo, size_t serials);
  // Rows carry last_seen_unix (the later of the last poll and the last ACK).
  Result<std::vector<v1::MirrorStatus>> Mirrors();

  static constexpr uint64_t kPropagationSerials = 32;

  // Keeps the newest `keep_events` events of a repo, and the manifest
  // objects named by its newest `keep_manifests` serials.
  Status Prune(const std::string& repo, uint64_t keep_events, uint64_t keep_manifests);

 private:
  BrokerState(std::filesystem::path dir, std::unique_ptr<Database> db)
      : dir_(std::move(dir)), db_(std::move(db)), objects_(dir_ / "manifest-objects") {}
  Status Load();

  Status WriteVersions(const std::string& repo, uint64_t serial, const VersionChanges& versions);
  Status WriteStagedVersions(const std::string& repo, uint64_t serial);
  Status WriteLinked(const std::string& repo, uint64_t serial,
                     const std::vector<v1::LinkedFile>& linked);

  std::filesystem::path dir_;
  std::unique_ptr<Database> db_;
  std::optional<Statement> object_of_;  // prepared once: asked for every new file
  ManifestStore objects_;
  std::map<std::string, RepoHead> repos_;
};

class ServableVersionReader {
 public:
  static Result<std::unique_ptr<ServableVersionReader>> Open(
      const std::filesystem::path& state_dir);

  // What is recorded for version `sha256` of `repo` (nothing: never
  // published, or pruned). `path` is the client's hint: listed first.
  Result<ServableVersion> Find(const std::string& repo, const std::string& sha256,
                               const std::string& path, uint64_t keep_versions);

 private:
  explicit ServableVersionReader(std::unique_ptr<Database> db) : db_(std::move(db)) {}
  std::unique_ptr<Database> db_;
  // Prepared once: every content request asks (parsing SQL per request was
  // a measurable share of a bootstrap's broker CPU).
  std::optional<Statement> begin_, commit_, paths_, object_;
};

}  // namespace mirrorcast
