// A mirror's durable record of what its tree holds (<state>/subscriber.db):
// per repo, the serial and manifest root, the manifest index and the chunks
// it names (format v2, core/manifest/chunks.h), every entry indexed by path
// and by content hash, the journal of an apply in progress, deferred
// deletions and ACKs not yet confirmed.
//
// Nothing here holds the whole manifest in memory: lookups are indexed
// SQLite reads, and an apply of k changes writes O(k) entry rows and the
// few chunks that changed. Only the index (about 100 bytes per 1000
// entries) is kept in memory.
//
// The journal makes applies resumable: it is written (durably) once all
// content is staged and before the tree is touched, and removed in the same
// transaction that records the new serial. If it is present at start-up, the
// apply was interrupted and Applier::Commit() is run again from it.
//
// A state written by format v1 (no manifest index) is dropped on open and
// rebuilt by the follower from a scan of the tree, which reuses every file
// already there.
//
// Owned by one thread (the follower's); not thread-safe.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "core/base/status.h"
#include "core/manifest/chunks.h"
#include "core/manifest/manifest.h"
#include "core/mirror/applier.h"
#include "core/store/sqlite.h"
#include "proto/mirrorcast.pb.h"

namespace mirrorcast {

struct Journal {
  uint64_t serial = 0;              // the serial being applied
  std::string manifest_sha256;      // its manifest root
  std::vector<v1::Change> changes;  // the change list being applied
  // A change list too large for memory (a bootstrap, a jump): `changes` is
  // empty and the list is MirrorState::stored_changes(); `target_index` is
  // the encoded manifest index it leads to, whose new chunks the state holds
  // (fetched_chunks()).
  bool stored = false;
  std::string target_index;
};

// The manifest an apply leads to, when the caller has already derived it and
// checked its root: the new index, and a source holding every chunk of it
// that the current manifest lacks.
struct AppliedManifest {
  ManifestIndex index;
  ChunkSource* chunks = nullptr;
};

class MirrorState : public LocalTree {
 public:
  static Result<std::unique_ptr<MirrorState>> Open(const std::filesystem::path& state_dir,
                                                   const std::string& repo);
  // The repos recorded in <state_dir>/subscriber.db (which must exist).
  static Result<std::vector<std::string>> RecordedRepos(const std::filesystem::path& state_dir);

  // False until the first apply (or an adopted scan) is recorded.
  bool initialized() const { return initialized_; }
  uint64_t serial() const { return serial_; }
  const std::string& digest() const { return digest_; }
  const ManifestIndex& index() const { return index_; }
  uint64_t entries() const { return index_.entries(); }
  // The chunks of the recorded manifest.
  ChunkSource& chunks() { return chunks_; }

  // LocalTree: what the recorded manifest says of a path, and a path whose
  // recorded content has a given SHA-256.
  Result<std::optional<v1::FileEntry>> Find(std::string_view path) override;
  Result<std::optional<std::string>> PathWithContent(std::string_view sha256) override;

  // The recorded manifest, whole, in memory (for a full scrub).
  Result<Manifest> LoadManifest();

  // Adopts `scanned` (a scan of the existing tree at serial 0) as the local
  // manifest, so content already there can be reused.
  Status Adopt(const Manifest& scanned);

  Status WriteJournal(const Journal& journal);
  Result<std::optional<Journal>> ReadJournal();

  // The change list of a large apply, kept in subscriber.db (table
  // journal_changes) instead of memory, and the manifest chunks fetched for
  // it (fetched_chunks). ClearStoredChanges() starts a new one;
  // StoreChange() appends (buffered, written a few thousand rows per
  // transaction); FinishStoredChanges() writes what is buffered and must run
  // before stored_changes() is read or the journal names it. CommitApply()
  // removes both.
  Status ClearStoredChanges();
  Status StoreChange(const v1::Change& change, ApplyStep step);
  Status FinishStoredChanges();
  ChangeList& stored_changes() { return stored_; }
  // Manifest chunks fetched from a broker for an apply in progress (each
  // checked against its id by whoever reads it, as every chunk is).
  Status PutFetchedChunk(const std::string& id, std::string bytes);
  ChunkSource& fetched_chunks() { return fetched_; }

  // Applies `changes` to the recorded manifest and records `serial` and
  // `digest` (`serial` must be above the recorded one once initialized:
  // anything else is refused as kInternal, never recorded), removing the journal and queueing `ack`
  // (when given), in one transaction: a crash can never record the serial but lose its ACK. With
  // `delete_after_unix` > 0 the deleted paths stay in the tree and are recorded as deferred
  // deletions due at that time (re-added paths are taken off that list). `applied`, when given, is
  // the resulting manifest already derived and checked; otherwise it is derived here from the
  // recorded chunks and its root checked against `digest`.
  Status CommitApply(uint64_t serial, const std::string& digest,
                     const std::vector<v1::Change>& changes, const v1::Ack* ack = nullptr,
                     int64_t delete_after_unix = 0,
                     const std::optional<AppliedManifest>& applied = std::nullopt);
  // The same for a change list of any size (stored_changes()), whose
  // resulting manifest the caller has derived and checked.
  Status CommitApply(uint64_t serial, const std::string& digest, ChangeList& changes,
                     const v1::Ack* ack, int64_t delete_after_unix, const AppliedManifest& applied);

  // Deferred deletions (grace period), oldest due first.
  struct DeferredDeletion {
    std::string path;
    v1::EntryKind kind = v1::ENTRY_KIND_UNSPECIFIED;
    int64_t due_unix = 0;
  };
  // Those due at `now_unix` (all of them with now_unix = INT64_MAX).
  Result<std::vector<DeferredDeletion>> DueDeletions(int64_t now_unix);
  Status DropDeferred(const std::string& path);

  // What the follower refused (rollback, conflict, expired or badly signed
  // events, a broker behind this mirror), newest first: recorded once per
  // distinct reason per run and shown by `mirrorcast verify`, so a refusal
  // is visible on the mirror even when the broker that caused it hides it.
  // At most 100 reasons are kept per repo.
  struct Refusal {
    uint64_t serial = 0;  // the serial offered (0: none or unknown)
    std::string reason;   // escaped, capped text
    int64_t first_unix = 0;
    int64_t last_unix = 0;
    uint64_t count = 0;  // runs (or distinct occasions) it was recorded in
  };
  Status RecordRefusal(uint64_t serial, const std::string& reason, int64_t now_unix);
  Result<std::vector<Refusal>> Refusals(size_t limit = 10);

  // The key set a rooted mirror holds (table keyset: one row, whatever the
  // repo), as SignedKeySet bytes; nullopt before the first.
  Result<std::optional<std::string>> StoredKeySet();
  // Records `bytes` (version `version`) as the current key set, and with
  // `reset_serial_to` (a SerialReset, below the recorded serial) lowers the
  // recorded serial to it, keeping the tree and its manifest, in one
  // transaction. Sets keyset_version() to `version`.
  Status StoreKeySet(uint64_t version, const std::string& bytes,
                     std::optional<uint64_t> reset_serial_to = std::nullopt);
  // The key-set version this mirror holds (0: fixed keys or none yet):
  // recorded with every serial committed from now on.
  void set_keyset_version(uint64_t version) { keyset_version_ = version; }
  uint64_t keyset_version() const { return keyset_version_; }
  // The key-set version the recorded serial was accepted under.
  uint64_t serial_keyset_version() const { return serial_keyset_version_; }

  // Keeps the signed envelope of `serial` (about to be applied) beside the
  // recorded serial's, durably, before the apply touches the tree: whoever
  // reads the state after a commit finds the envelope of what it holds
  // (AppliedHead). Older envelopes are dropped.
  Status StoreEnvelope(uint64_t serial, const std::string& envelope);

  // ACKs that the broker has not confirmed yet, oldest first.
  Status QueueAck(const v1::Ack& ack);
  Result<std::vector<std::pair<int64_t, v1::Ack>>> PendingAcks();
  Status DropAck(int64_t id);

 private:
  class StoredChunks : public ChunkSource {
   public:
    StoredChunks(Database& db, const std::string& repo) : db_(db), repo_(repo) {}
    Result<std::string> LoadChunk(std::string_view id) override;

   private:
    Database& db_;
    const std::string& repo_;
  };

  // journal_changes rows, read back a page at a time.
  class StoredChanges : public ChangeList {
   public:
    explicit StoredChanges(MirrorState& state) : state_(state) {}
    Status ForEach(ApplyStep step, bool reverse, const Visitor& visit) override;
    uint64_t size() const override { return size_; }
    uint64_t files() const override { return files_; }
    uint64_t file_bytes() const override { return file_bytes_; }

   private:
    friend class MirrorState;
    MirrorState& state_;
    uint64_t size_ = 0;
    uint64_t files_ = 0;
    uint64_t file_bytes_ = 0;
  };
  // fetched_chunks rows, and those not written yet.
  class FetchedChunks : public ChunkSource {
   public:
    explicit FetchedChunks(MirrorState& state) : state_(state) {}
    Result<std::string> LoadChunk(std::string_view id) override;

   private:
    MirrorState& state_;
  };

  MirrorState(std::string repo, std::unique_ptr<Database> db)
      : repo_(std::move(repo)),
        db_(std::move(db)),
        chunks_(*db_, repo_),
        stored_(*this),
        fetched_(*this) {}
  Status Load();
  // Writes the buffered journal_changes rows and fetched chunks.
  Status FlushStored();
  // Upserts the entries `visit_all` yields, inside the caller's transaction.
  Status RecordChanges(const std::function<Status(const ChangeList::Visitor&)>& visit_all,
                       int64_t delete_after_unix);
  // Removes the journal, the stored changes and the fetched chunks, inside
  // the caller's transaction.
  Status DropJournal();
  // Writes the head row and the chunks `index` names that `from` holds and
  // the store lacks, and drops stored chunks `index` no longer names. Inside
  // the caller's transaction.
  Status StoreManifest(uint64_t serial, const std::string& digest, const ManifestIndex& index,
                       ChunkSource& from);

  std::string repo_;
  std::unique_ptr<Database> db_;
  StoredChunks chunks_;
  std::optional<Statement> find_, with_content_;  // prepared on first use
  StoredChanges stored_;
  FetchedChunks fetched_;
  // Buffered rows: (step, seq, change bytes), and fetched chunks by id.
  std::vector<std::tuple<int, uint64_t, std::string>> pending_changes_;
  std::map<std::string, std::string, std::less<>> pending_chunks_;
  size_t pending_chunk_bytes_ = 0;
  uint64_t serial_ = 0;
  uint64_t keyset_version_ = 0;         // held now
  uint64_t serial_keyset_version_ = 0;  // of the recorded serial
  std::string digest_;
  ManifestIndex index_;
  bool initialized_ = false;
};

// What a mirror state records as applied, read from another thread than the
// follower's (its own SQLite connection, one read transaction: a consistent
// snapshot of one committed serial while the follower goes on). A relay
// broker reads it to re-publish what its follower applied: the serial, the
// manifest and its chunks, and the signed envelope (empty when the state
// predates envelopes or the serial came from an adopted scan).
class AppliedHead : public ChunkSource {
 public:
  static Result<std::unique_ptr<AppliedHead>> Read(const std::filesystem::path& state_dir,
                                                   const std::string& repo);
  ~AppliedHead() override;
  uint64_t serial() const { return serial_; }  // 0: nothing applied
  const std::string& digest() const { return digest_; }
  const ManifestIndex& index() const { return index_; }
  const std::string& envelope() const { return envelope_; }
  // The key set the mirror holds (SignedKeySet bytes; empty: none).
  const std::string& key_set() const { return key_set_; }
  // A chunk of the recorded manifest.
  Result<std::string> LoadChunk(std::string_view id) override;

 private:
  AppliedHead(std::string repo, std::unique_ptr<Database> db)
      : repo_(std::move(repo)), db_(std::move(db)) {}
  std::string repo_;
  std::unique_ptr<Database> db_;
  bool open_ = false;
  uint64_t serial_ = 0;
  std::string digest_;
  ManifestIndex index_;
  std::string envelope_;
  std::string key_set_;
};

}  // namespace mirrorcast
