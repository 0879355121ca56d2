#include "core/mirror/mirror_state.h"

#include <climits>
#include <set>
#include <system_error>

#include "core/base/log.h"
#include "core/crypto/sha256.h"

namespace mirrorcast {

namespace fs = std::filesystem;

namespace {

// 2: chunked manifests (format v2). Older states are dropped and rebuilt.
// 3: large change lists stored in journal_changes (a v2 state is upgraded).
// 4: the current key set (table keyset) and the key-set version each serial
//    was accepted under (head.keyset_version); v2 and v3 states are upgraded.
constexpr int64_t kSchemaVersion = 4;

// Stored changes and fetched chunks are written in transactions of this many
// rows or bytes, and read back in pages of kStoredPage rows.
constexpr size_t kStoreRowsPerTransaction = 16384;
constexpr size_t kStoreChunkBytes = 8u << 20;
constexpr int64_t kStoredPage = 4096;

Status CreateSchema(Database& db) {
  Result<Statement> version = db.Prepare("PRAGMA user_version");
  if (!version.ok()) return version.status();
  MC_ASSIGN_OR_RETURN(bool row, version->Step());
  const int64_t have = row ? version->ColumnInt(0) : 0;
  version->Reset();
  if (have != kSchemaVersion && have != 3 && have != 2) {
    // Version 1 recorded whole-manifest digests that mean nothing now. The
    // tree itself is kept: the follower rescans and adopts it.
    Result<Statement> any =
        db.Prepare("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'head'");
    if (!any.ok()) return any.status();
    MC_ASSIGN_OR_RETURN(bool has_row, any->Step());
    if (has_row && any->ColumnInt(0) > 0) {
      MC_LOG(warning) << "state was written by an older mirrorcast; rebuilding it from the tree "
                         "(files already there are reused, not fetched)";
    }
    any->Reset();
    MC_RETURN_IF_ERROR(db.Exec(R"sql(
      DROP TABLE IF EXISTS head;
      DROP TABLE IF EXISTS entries;
      DROP TABLE IF EXISTS chunks;
      DROP TABLE IF EXISTS journal;
    )sql"));
  }
  MC_RETURN_IF_ERROR(db.Exec(R"sql(
    CREATE TABLE IF NOT EXISTS head(
      repo TEXT PRIMARY KEY, serial INTEGER NOT NULL, manifest_sha256 BLOB NOT NULL,
      manifest_index BLOB NOT NULL, keyset_version INTEGER NOT NULL DEFAULT 0);
    CREATE TABLE IF NOT EXISTS entries(
      repo TEXT NOT NULL, path TEXT NOT NULL, entry BLOB NOT NULL, sha256 BLOB,
      PRIMARY KEY(repo, path));
    CREATE INDEX IF NOT EXISTS entries_by_sha256 ON entries(repo, sha256, path);
    CREATE TABLE IF NOT EXISTS chunks(
      repo TEXT NOT NULL, id BLOB NOT NULL, bytes BLOB NOT NULL, PRIMARY KEY(repo, id));
    CREATE TABLE IF NOT EXISTS journal(
      repo TEXT PRIMARY KEY, serial INTEGER NOT NULL, manifest_sha256 BLOB NOT NULL,
      changes BLOB NOT NULL, stored INTEGER NOT NULL DEFAULT 0, target_index BLOB);
    CREATE TABLE IF NOT EXISTS journal_changes(
      repo TEXT NOT NULL, step INTEGER NOT NULL, seq INTEGER NOT NULL, change BLOB NOT NULL,
      PRIMARY KEY(repo, step, seq)) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS fetched_chunks(
      repo TEXT NOT NULL, id BLOB NOT NULL, bytes BLOB NOT NULL, PRIMARY KEY(repo, id));
    CREATE TABLE IF NOT EXISTS deferred_deletes(
      repo TEXT NOT NULL, path TEXT NOT NULL, kind INTEGER NOT NULL, due_unix INTEGER NOT NULL,
      PRIMARY KEY(repo, path));
    CREATE TABLE IF NOT EXISTS pending_acks(
      id INTEGER PRIMARY KEY AUTOINCREMENT, ack BLOB NOT NULL);
    CREATE TABLE IF NOT EXISTS keyset(
      id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL, bytes BLOB NOT NULL);
  )sql"));
  // Refusals (rollback, conflict, expiry...) the follower reported: what an
  // operator reads to learn that a broker offered something it must not.
  // Additive, so no version change: older states simply gain the table.
  MC_RETURN_IF_ERROR(db.Exec(R"sql(
    CREATE TABLE IF NOT EXISTS refusals(
      repo TEXT NOT NULL, reason TEXT NOT NULL, serial INTEGER NOT NULL,
      first_unix INTEGER NOT NULL, last_unix INTEGER NOT NULL, count INTEGER NOT NULL,
      PRIMARY KEY(repo, reason));
  )sql"));
  // The signed envelope of the serial being applied and of the recorded one
  // (a relay broker re-publishes it once the apply is durable). Additive.
  MC_RETURN_IF_ERROR(db.Exec(R"sql(
    CREATE TABLE IF NOT EXISTS envelopes(
      repo TEXT NOT NULL, serial INTEGER NOT NULL, envelope BLOB NOT NULL,
      PRIMARY KEY(repo, serial));
  )sql"));
  if (have == 2) {
    // Version 3 only adds: the journal learns where a large change list is.
    MC_RETURN_IF_ERROR(db.Exec(R"sql(
      ALTER TABLE journal ADD COLUMN stored INTEGER NOT NULL DEFAULT 0;
      ALTER TABLE journal ADD COLUMN target_index BLOB;
    )sql"));
  }
  if (have == 2 || have == 3) {
    // Version 4 only adds: serials recorded before it were accepted under
    // fixed keys or no key set (version 0).
    MC_RETURN_IF_ERROR(
        db.Exec("ALTER TABLE head ADD COLUMN keyset_version INTEGER NOT NULL DEFAULT 0"));
  }
  return db.Exec("PRAGMA user_version = " + std::to_string(kSchemaVersion));
}

Result<v1::FileEntry> ParseEntry(const std::string& blob) {
  v1::FileEntry entry;
  if (!entry.ParseFromString(blob)) return Status::Corruption("unreadable entry in state");
  return entry;
}

}  // namespace

Result<std::unique_ptr<MirrorState>> MirrorState::Open(const fs::path& state_dir,
                                                       const std::string& repo) {
  std::error_code ec;
  fs::create_directories(state_dir, ec);
  if (ec) return Status::IoError("create " + state_dir.string() + ": " + ec.message());
  MC_ASSIGN_OR_RETURN(auto db, Database::Open(state_dir / "subscriber.db"));
  MC_RETURN_IF_ERROR(CreateSchema(*db));
  std::unique_ptr<MirrorState> state(new MirrorState(repo, std::move(db)));
  MC_RETURN_IF_ERROR(state->Load());
  return state;
}

Result<std::vector<std::string>> MirrorState::RecordedRepos(const fs::path& state_dir) {
  std::error_code ec;
  if (!fs::exists(state_dir / "subscriber.db", ec)) {
    return Status::NotFound(state_dir.string() + " holds no subscriber.db");
  }
  MC_ASSIGN_OR_RETURN(auto db, Database::Open(state_dir / "subscriber.db"));
  MC_RETURN_IF_ERROR(CreateSchema(*db));
  MC_ASSIGN_OR_RETURN(Statement st, db->Prepare("SELECT repo FROM head ORDER BY repo"));
  std::vector<std::string> repos;
  for (;;) {
    MC_ASSIGN_OR_RETURN(bool row, st.Step());
    if (!row) break;
    repos.push_back(st.ColumnText(0));
  }
  return repos;
}

Status MirrorState::Load() {
  MC_ASSIGN_OR_RETURN(
      Statement st,
      db_->Prepare("SELECT serial, manifest_sha256, manifest_index, keyset_version FROM head "
                   "WHERE repo = ?"));
  st.Bind(1, repo_);
  MC_ASSIGN_OR_RETURN(bool row, st.Step());
  if (!row) return Status::Ok();
  serial_ = static_cast<uint64_t>(st.ColumnInt(0));
  serial_keyset_version_ = static_cast<uint64_t>(st.ColumnInt(3));
  digest_ = st.ColumnBlob(1);
  const std::string index_bytes = st.ColumnBlob(2);
  auto index = ManifestIndex::Decode(index_bytes);
  if (!index.ok() || index->Root() != digest_) {
    return Status::Corruption(
        "recorded manifest index does not match its root; remove the state "
        "directory to rebuild it from the tree");
  }
  index_ = std::move(*index);
  initialized_ = true;
  return Status::Ok();
}

Result<std::string> MirrorState::StoredChunks::LoadChunk(std::string_view id) {
  MC_ASSIGN_OR_RETURN(Statement st,
                      db_.Prepare("SELECT bytes FROM chunks WHERE repo = ? AND id = ?"));
  st.Bind(1, repo_).BindBlob(2, id);
  MC_ASSIGN_OR_RETURN(bool row, st.Step());
  if (!row) return Status::NotFound("manifest chunk " + ToHex(id) + " is not in the state");
  return st.ColumnBlob(0);
}

Result<std::optional<v1::FileEntry>> MirrorState::Find(std::string_view path) {
  // Asked once per file an apply stages: prepared once, not per call.
  if (!find_) {
    MC_ASSIGN_OR_RETURN(Statement st,
                        db_->Prepare("SELECT entry FROM entries WHERE repo = ? AND path = ?"));
    find_.emplace(std::move(st));
  }
  Statement& st = *find_;
  st.Reset();
  st.Bind(1, repo_).Bind(2, path);
  MC_ASSIGN_OR_RETURN(bool row, st.Step());
  if (!row) return std::optional<v1::FileEntry>();
  auto entry = ParseEntry(st.ColumnBlob(0));
  st.Reset();
  if (!entry.ok()) return entry.status();
  return std::optional<v1::FileEntry>(std::move(*entry));
}

Result<std::optional<std::string>> MirrorState::PathWithContent(std::string_view sha256) {
  if (!with_content_) {
    MC_ASSIGN_OR_RETURN(
        Statement st,
        db_->Prepare("SELECT path FROM entries INDEXED BY entries_by_sha256 WHERE repo = ? AND "
                     "sha256 = ? LIMIT 1"));
    with_content_.emplace(std::move(st));
  }
  Statement& st = *with_content_;
  st.Reset();
  st.Bind(1, repo_).BindBlob(2, sha256);
  MC_ASSIGN_OR_RETURN(bool row, st.Step());
  if (!row) return std::optional<std::string>();
  std::string path = st.ColumnText(0);
  st.Reset();
  return std::optional<std::string>(std::move(path));
}

Result<Manifest> MirrorState::LoadManifest() {
  Manifest manifest(repo_, serial_);
  MC_ASSIGN_OR_RETURN(Statement st,
                      db_->Prepare("SELECT entry FROM entries WHERE repo = ? ORDER BY path"));
  st.Bind(1, repo_);
  for (;;) {
    MC_ASSIGN_OR_RETURN(bool row, st.Step());
    if (!row) break;
    MC_ASSIGN_OR_RETURN(v1::FileEntry entry, ParseEntry(st.ColumnBlob(0)));
    manifest.Put(std::move(entry));
  }
  if (manifest.size() != index_.entries()) {
    return Status::Corruption("recorded entries (" + std::to_string(manifest.size()) +
                              ") do not match the manifest index (" +
                              std::to_string(index_.entries()) + ")");
  }
  return manifest;
}

Status MirrorState::StoreManifest(uint64_t serial, const std::string& digest,
                                  const ManifestIndex& index, ChunkSource& from) {
  std::set<std::string> old_ids, new_ids;
  for (const auto& r : index_.refs) old_ids.insert(r.id);
  for (const auto& r : index.refs) new_ids.insert(r.id);
  {
    MC_ASSIGN_OR_RETURN(Statement put, db_->Prepare("INSERT OR IGNORE INTO chunks(repo, id, "
                                                    "bytes) VALUES(?, ?, ?)"));
    for (const auto& r : index.refs) {
      if (old_ids.count(r.id)) continue;
      MC_ASSIGN_OR_RETURN(std::string bytes, from.LoadChunk(r.id));
      if (Sha256Of(bytes) != r.id) {
        return Status::Corruption("manifest chunk " + ToHex(r.id) + " does not match its id");
      }
      put.Reset();
      put.Bind(1, repo_).BindBlob(2, r.id).BindBlob(3, bytes);
      MC_RETURN_IF_ERROR(put.Run());
    }
  }
  {
    MC_ASSIGN_OR_RETURN(Statement drop,
                        db_->Prepare("DELETE FROM chunks WHERE repo = ? AND id = ?"));
    for (const auto& id : old_ids) {
      if (new_ids.count(id)) continue;
      drop.Reset();
      drop.Bind(1, repo_).BindBlob(2, id);
      MC_RETURN_IF_ERROR(drop.Run());
    }
  }
  MC_ASSIGN_OR_RETURN(Statement head,
                      db_->Prepare("INSERT OR REPLACE INTO head(repo, serial, manifest_sha256, "
                                   "manifest_index, keyset_version) VALUES(?, ?, ?, ?, ?)"));
  head.Bind(1, repo_).Bind(2, static_cast<int64_t>(serial)).BindBlob(3, digest);
  head.BindBlob(4, index.Encode());
  head.Bind(5, static_cast<int64_t>(keyset_version_));
  return head.Run();
}

Result<std::optional<std::string>> MirrorState::StoredKeySet() {
  MC_ASSIGN_OR_RETURN(Statement st, db_->Prepare("SELECT bytes FROM keyset WHERE id = 1"));
  MC_ASSIGN_OR_RETURN(bool row, st.Step());
  if (!row) return std::optional<std::string>();
  return std::optional<std::string>(st.ColumnBlob(0));
}

Status MirrorState::StoreKeySet(uint64_t version, const std::string& bytes,
                                std::optional<uint64_t> reset_serial_to) {
  Transaction tx(*db_);
  MC_RETURN_IF_ERROR(tx.status());
  {
    MC_ASSIGN_OR_RETURN(Statement st, db_->Prepare(R"sql(
      INSERT INTO keyset(id, version, bytes) VALUES(1, ?, ?)
      ON CONFLICT(id) DO UPDATE SET version = excluded.version, bytes = excluded.bytes)sql"));
    st.Bind(1, static_cast<int64_t>(version)).BindBlob(2, bytes);
    MC_RETURN_IF_ERROR(st.Run());
  }
  if (reset_serial_to) {
    MC_CHECK(initialized_ && *reset_serial_to < serial_, "a serial reset only lowers the serial");
    MC_ASSIGN_OR_RETURN(Statement st,
                        db_->Prepare("UPDATE head SET serial = ?, keyset_version = ? WHERE "
                                     "repo = ?"));
    st.Bind(1, static_cast<int64_t>(*reset_serial_to))
        .Bind(2, static_cast<int64_t>(version))
        .Bind(3, repo_);
    MC_RETURN_IF_ERROR(st.Run());
  }
  MC_RETURN_IF_ERROR(tx.Commit());
  keyset_version_ = version;
  if (reset_serial_to) {
    serial_ = *reset_serial_to;
    serial_keyset_version_ = version;
  }
  return Status::Ok();
}

Status MirrorState::Adopt(const Manifest& scanned) {
  MemoryChunks built;
  MC_ASSIGN_OR_RETURN(ManifestIndex index,
                      BuildIndex(scanned, [&](const ChunkRef& ref, std::string bytes) {
                        built.Put(ref.id, std::move(bytes));
                        return Status::Ok();
                      }));
  const std::string digest = index.Root();
  Transaction tx(*db_);
  MC_RETURN_IF_ERROR(tx.status());
  {
    MC_ASSIGN_OR_RETURN(Statement del, db_->Prepare("DELETE FROM entries WHERE repo = ?"));
    del.Bind(1, repo_);
    MC_RETURN_IF_ERROR(del.Run());
    MC_ASSIGN_OR_RETURN(Statement chunks, db_->Prepare("DELETE FROM chunks WHERE repo = ?"));
    chunks.Bind(1, repo_);
    MC_RETURN_IF_ERROR(chunks.Run());
    MC_ASSIGN_OR_RETURN(Statement ins, db_->Prepare("INSERT INTO entries(repo, path, entry, "
                                                    "sha256) VALUES(?, ?, ?, ?)"));
    for (const auto& [path, entry] : scanned.entries()) {
      ins.Reset();
      ins.Bind(1, repo_).Bind(2, path).BindBlob(3, entry.SerializeAsString());
      if (entry.kind() == v1::ENTRY_FILE) {
        ins.BindBlob(4, entry.sha256());
      } else {
        ins.BindNull(4);
      }
      MC_RETURN_IF_ERROR(ins.Run());
    }
    index_ = ManifestIndex{};  // every chunk is new
    MC_RETURN_IF_ERROR(StoreManifest(0, digest, index, built));
  }
  MC_RETURN_IF_ERROR(tx.Commit());
  serial_ = 0;
  serial_keyset_version_ = keyset_version_;
  digest_ = digest;
  index_ = std::move(index);
  initialized_ = true;
  return Status::Ok();
}

Status MirrorState::WriteJournal(const Journal& journal) {
  v1::RepoChanged record;  // reused as a container: never signed, never sent
  record.set_repo(repo_);
  record.set_serial(journal.serial);
  record.set_manifest_sha256(journal.manifest_sha256);
  for (const auto& c : journal.changes) *record.add_changes() = c;
  MC_ASSIGN_OR_RETURN(Statement st,
                      db_->Prepare("INSERT OR REPLACE INTO journal(repo, serial, manifest_sha256, "
                                   "changes, stored, target_index) VALUES(?, ?, ?, ?, ?, ?)"));
  st.Bind(1, repo_).Bind(2, static_cast<int64_t>(journal.serial));
  st.BindBlob(3, journal.manifest_sha256).BindBlob(4, record.SerializeAsString());
  st.Bind(5, int64_t{journal.stored ? 1 : 0});
  if (journal.stored) {
    st.BindBlob(6, journal.target_index);
  } else {
    st.BindNull(6);
  }
  return st.Run();
}

Result<std::optional<Journal>> MirrorState::ReadJournal() {
  MC_ASSIGN_OR_RETURN(
      Statement st,
      db_->Prepare("SELECT changes, stored, target_index FROM journal WHERE repo = ?"));
  st.Bind(1, repo_);
  MC_ASSIGN_OR_RETURN(bool row, st.Step());
  if (!row) return std::optional<Journal>();
  v1::RepoChanged record;
  if (!record.ParseFromString(st.ColumnBlob(0))) return Status::Corruption("unreadable journal");
  Journal journal;
  journal.serial = record.serial();
  journal.manifest_sha256 = record.manifest_sha256();
  journal.changes.assign(record.changes().begin(), record.changes().end());
  journal.stored = st.ColumnInt(1) != 0;
  if (journal.stored) {
    journal.target_index = st.ColumnBlob(2);
    // The counts of the stored list (its rows were written before the journal).
    MC_ASSIGN_OR_RETURN(Statement count,
                        db_->Prepare("SELECT count(*) FROM journal_changes WHERE repo = ?"));
    count.Bind(1, repo_);
    MC_ASSIGN_OR_RETURN(bool counted, count.Step());
    stored_.size_ = counted ? static_cast<uint64_t>(count.ColumnInt(0)) : 0;
  }
  return std::optional<Journal>(std::move(journal));
}

Status MirrorState::ClearStoredChanges() {
  pending_changes_.clear();
  pending_chunks_.clear();
  pending_chunk_bytes_ = 0;
  stored_.size_ = stored_.files_ = stored_.file_bytes_ = 0;
  Transaction tx(*db_);
  MC_RETURN_IF_ERROR(tx.status());
  for (const char* sql : {"DELETE FROM journal_changes WHERE repo = ?",
                          "DELETE FROM fetched_chunks WHERE repo = ?"}) {
    MC_ASSIGN_OR_RETURN(Statement st, db_->Prepare(sql));
    st.Bind(1, repo_);
    MC_RETURN_IF_ERROR(st.Run());
  }
  return tx.Commit();
}

Status MirrorState::StoreChange(const v1::Change& change, ApplyStep step) {
  pending_changes_.emplace_back(static_cast<int>(step), stored_.size_++,
                                change.SerializeAsString());
  if (change.kind() != v1::CHANGE_DELETED && change.entry().kind() == v1::ENTRY_FILE) {
    stored_.files_++;
    stored_.file_bytes_ += change.entry().size();
  }
  return pending_changes_.size() >= kStoreRowsPerTransaction ? FlushStored() : Status::Ok();
}

Status MirrorState::PutFetchedChunk(const std::string& id, std::string bytes) {
  pending_chunk_bytes_ += bytes.size();
  pending_chunks_.emplace(id, std::move(bytes));
  return pending_chunk_bytes_ >= kStoreChunkBytes ? FlushStored() : Status::Ok();
}

Status MirrorState::FinishStoredChanges() { return FlushStored(); }

Status MirrorState::FlushStored() {
  if (pending_changes_.empty() && pending_chunks_.empty()) return Status::Ok();
  Transaction tx(*db_);
  MC_RETURN_IF_ERROR(tx.status());
  {
    MC_ASSIGN_OR_RETURN(Statement put,
                        db_->Prepare("INSERT OR REPLACE INTO journal_changes(repo, step, seq, "
                                     "change) VALUES(?, ?, ?, ?)"));
    for (const auto& [step, seq, bytes] : pending_changes_) {
      put.Reset();
      put.Bind(1, repo_).Bind(2, int64_t{step}).Bind(3, static_cast<int64_t>(seq));
      put.BindBlob(4, bytes);
      MC_RETURN_IF_ERROR(put.Run());
    }
    MC_ASSIGN_OR_RETURN(Statement chunk,
                        db_->Prepare("INSERT OR IGNORE INTO fetched_chunks(repo, id, bytes) "
                                     "VALUES(?, ?, ?)"));
    for (const auto& [id, bytes] : pending_chunks_) {
      chunk.Reset();
      chunk.Bind(1, repo_).BindBlob(2, id).BindBlob(3, bytes);
      MC_RETURN_IF_ERROR(chunk.Run());
    }
  }
  MC_RETURN_IF_ERROR(tx.Commit());
  pending_changes_.clear();
  pending_chunks_.clear();
  pending_chunk_bytes_ = 0;
  return Status::Ok();
}

Result<std::string> MirrorState::FetchedChunks::LoadChunk(std::string_view id) {
  if (auto it = state_.pending_chunks_.find(id); it != state_.pending_chunks_.end()) {
    return it->second;
  }
  MC_ASSIGN_OR_RETURN(
      Statement st,
      state_.db_->Prepare("SELECT bytes FROM fetched_chunks WHERE repo = ? AND id = ?"));
  st.Bind(1, state_.repo_).BindBlob(2, id);
  MC_ASSIGN_OR_RETURN(bool row, st.Step());
  if (!row) return Status::NotFound("manifest chunk " + ToHex(id) + " was not fetched");
  return st.ColumnBlob(0);
}

Status MirrorState::StoredChanges::ForEach(ApplyStep step, bool reverse, const Visitor& visit) {
  MC_ASSIGN_OR_RETURN(
      Statement st,
      state_.db_->Prepare(reverse ? "SELECT seq, change FROM journal_changes WHERE repo = ? AND "
                                    "step = ? AND seq < ? ORDER BY seq DESC LIMIT ?"
                                  : "SELECT seq, change FROM journal_changes WHERE repo = ? AND "
                                    "step = ? AND seq > ? ORDER BY seq LIMIT ?"));
  int64_t after = reverse ? INT64_MAX : -1;
  std::vector<std::pair<uint64_t, v1::Change>> page;
  for (;;) {
    // A page at a time, the statement done before any visit: the visitor
    // may use the database freely.
    page.clear();
    st.Reset();
    st.Bind(1, state_.repo_).Bind(2, int64_t{static_cast<int>(step)}).Bind(3, after);
    st.Bind(4, kStoredPage);
    for (;;) {
      MC_ASSIGN_OR_RETURN(bool row, st.Step());
      if (!row) break;
      v1::Change change;
      if (!change.ParseFromString(st.ColumnBlob(1))) {
        return Status::Corruption("unreadable change in the journal");
      }
      page.emplace_back(static_cast<uint64_t>(st.ColumnInt(0)), std::move(change));
    }
    st.Reset();
    if (page.empty()) return Status::Ok();
    for (const auto& [seq, change] : page) MC_RETURN_IF_ERROR(visit(seq, change));
    after = static_cast<int64_t>(page.back().first);
  }
}

Status MirrorState::RecordChanges(
    const std::function<Status(const ChangeList::Visitor&)>& visit_all, int64_t delete_after_unix) {
  MC_ASSIGN_OR_RETURN(Statement put, db_->Prepare("INSERT OR REPLACE INTO entries(repo, path, "
                                                  "entry, sha256) VALUES(?, ?, ?, ?)"));
  MC_ASSIGN_OR_RETURN(Statement del,
                      db_->Prepare("DELETE FROM entries WHERE repo = ? AND path = ?"));
  MC_ASSIGN_OR_RETURN(Statement defer,
                      db_->Prepare("INSERT OR REPLACE INTO deferred_deletes(repo, path, kind, "
                                   "due_unix) VALUES(?, ?, ?, ?)"));
  MC_ASSIGN_OR_RETURN(Statement undefer,
                      db_->Prepare("DELETE FROM deferred_deletes WHERE repo = ? AND path = ?"));
  // Nothing deferred (the usual case, and every bootstrap): no re-added path
  // needs taking off the list.
  MC_ASSIGN_OR_RETURN(Statement any_deferred,
                      db_->Prepare("SELECT 1 FROM deferred_deletes WHERE repo = ? LIMIT 1"));
  any_deferred.Bind(1, repo_);
  MC_ASSIGN_OR_RETURN(const bool deferred, any_deferred.Step());
  any_deferred.Reset();
  std::string bytes;
  return visit_all([&](uint64_t, const v1::Change& c) -> Status {
    if (c.kind() == v1::CHANGE_DELETED) {
      del.Reset();
      del.Bind(1, repo_).Bind(2, c.entry().path());
      MC_RETURN_IF_ERROR(del.Run());
      if (delete_after_unix > 0) {
        defer.Reset();
        defer.Bind(1, repo_).Bind(2, c.entry().path());
        defer.Bind(3, static_cast<int64_t>(c.entry().kind())).Bind(4, delete_after_unix);
        MC_RETURN_IF_ERROR(defer.Run());
      }
      return Status::Ok();
    }
    put.Reset();
    c.entry().SerializeToString(&bytes);
    put.Bind(1, repo_).Bind(2, c.entry().path()).BindBlob(3, bytes);
    if (c.entry().kind() == v1::ENTRY_FILE) {
      put.BindBlob(4, c.entry().sha256());
    } else {
      put.BindNull(4);
    }
    MC_RETURN_IF_ERROR(put.Run());
    if (deferred || delete_after_unix > 0) {
      undefer.Reset();
      undefer.Bind(1, repo_).Bind(2, c.entry().path());
      MC_RETURN_IF_ERROR(undefer.Run());
    }
    return Status::Ok();
  });
}

Status MirrorState::DropJournal() {
  for (const char* sql :
       {"DELETE FROM journal WHERE repo = ?", "DELETE FROM journal_changes WHERE repo = ?",
        "DELETE FROM fetched_chunks WHERE repo = ?"}) {
    MC_ASSIGN_OR_RETURN(Statement st, db_->Prepare(sql));
    st.Bind(1, repo_);
    MC_RETURN_IF_ERROR(st.Run());
  }
  return Status::Ok();
}

Status MirrorState::CommitApply(uint64_t serial, const std::string& digest,
                                const std::vector<v1::Change>& changes, const v1::Ack* ack,
                                int64_t delete_after_unix,
                                const std::optional<AppliedManifest>& applied) {
  // Serials never go backwards, whatever a broker offered: the follower
  // refuses older and conflicting events before this, so reaching here is
  // our own bug, and it must not become a rollback.
  if (initialized_ && serial <= serial_) {
    return Status::Internal("refusing to record serial " + std::to_string(serial) +
                            " over serial " + std::to_string(serial_) +
                            ": serials never go backwards");
  }
  MemoryChunks derived(&chunks_);
  ManifestIndex next;
  ChunkSource* next_chunks = nullptr;
  if (applied) {
    next = applied->index;
    next_chunks = applied->chunks;
  } else {
    MC_ASSIGN_OR_RETURN(next, ApplyChangesToIndex(index_, chunks_, changes,
                                                  [&](const ChunkRef& ref, std::string bytes) {
                                                    derived.Put(ref.id, std::move(bytes));
                                                    return Status::Ok();
                                                  }));
    if (next.Root() != digest) {
      return Status::Corruption("applied changes do not give the signed manifest root");
    }
    next_chunks = &derived;
  }
  Transaction tx(*db_);
  MC_RETURN_IF_ERROR(tx.status());
  MC_RETURN_IF_ERROR(RecordChanges(
      [&](const ChangeList::Visitor& visit) -> Status {
        for (size_t i = 0; i < changes.size(); ++i) MC_RETURN_IF_ERROR(visit(i, changes[i]));
        return Status::Ok();
      },
      delete_after_unix));
  MC_RETURN_IF_ERROR(StoreManifest(serial, digest, next, *next_chunks));
  MC_RETURN_IF_ERROR(DropJournal());
  if (ack != nullptr) MC_RETURN_IF_ERROR(QueueAck(*ack));
  MC_RETURN_IF_ERROR(tx.Commit());
  serial_ = serial;
  serial_keyset_version_ = keyset_version_;
  digest_ = digest;
  index_ = std::move(next);
  initialized_ = true;
  return Status::Ok();
}

Status MirrorState::CommitApply(uint64_t serial, const std::string& digest, ChangeList& changes,
                                const v1::Ack* ack, int64_t delete_after_unix,
                                const AppliedManifest& applied) {
  // Serials never go backwards, whatever a broker offered: the follower
  // refuses older and conflicting events before this, so reaching here is
  // our own bug, and it must not become a rollback.
  if (initialized_ && serial <= serial_) {
    return Status::Internal("refusing to record serial " + std::to_string(serial) +
                            " over serial " + std::to_string(serial_) +
                            ": serials never go backwards");
  }
  Transaction tx(*db_);
  MC_RETURN_IF_ERROR(tx.status());
  MC_RETURN_IF_ERROR(RecordChanges(
      [&](const ChangeList::Visitor& visit) -> Status {
        for (int step = 0; step < kApplySteps; ++step) {
          MC_RETURN_IF_ERROR(changes.ForEach(static_cast<ApplyStep>(step), false, visit));
        }
        return Status::Ok();
      },
      delete_after_unix));
  MC_RETURN_IF_ERROR(StoreManifest(serial, digest, applied.index, *applied.chunks));
  MC_RETURN_IF_ERROR(DropJournal());
  if (ack != nullptr) MC_RETURN_IF_ERROR(QueueAck(*ack));
  MC_RETURN_IF_ERROR(tx.Commit());
  serial_ = serial;
  serial_keyset_version_ = keyset_version_;
  digest_ = digest;
  index_ = applied.index;
  initialized_ = true;
  stored_.size_ = stored_.files_ = stored_.file_bytes_ = 0;
  return Status::Ok();
}

Result<std::vector<MirrorState::DeferredDeletion>> MirrorState::DueDeletions(int64_t now_unix) {
  std::vector<DeferredDeletion> out;
  MC_ASSIGN_OR_RETURN(Statement st,
                      db_->Prepare("SELECT path, kind, due_unix FROM deferred_deletes WHERE repo = "
                                   "? AND due_unix <= ? ORDER BY due_unix, path DESC LIMIT 10000"));
  st.Bind(1, repo_).Bind(2, now_unix);
  for (;;) {
    MC_ASSIGN_OR_RETURN(bool row, st.Step());
    if (!row) break;
    const int64_t kind = st.ColumnInt(1);
    out.push_back(DeferredDeletion{st.ColumnText(0),
                                   v1::EntryKind_IsValid(static_cast<int>(kind))
                                       ? static_cast<v1::EntryKind>(kind)
                                       : v1::ENTRY_KIND_UNSPECIFIED,
                                   st.ColumnInt(2)});
  }
  return out;
}

Status MirrorState::DropDeferred(const std::string& path) {
  MC_ASSIGN_OR_RETURN(Statement st,
                      db_->Prepare("DELETE FROM deferred_deletes WHERE repo = ? AND path = ?"));
  st.Bind(1, repo_).Bind(2, path);
  return st.Run();
}

Status MirrorState::StoreEnvelope(uint64_t serial, const std::string& envelope) {
  Transaction tx(*db_);
  MC_RETURN_IF_ERROR(tx.status());
  MC_ASSIGN_OR_RETURN(Statement drop,
                      db_->Prepare("DELETE FROM envelopes WHERE repo = ? AND serial <> ?"));
  drop.Bind(1, repo_).Bind(2, static_cast<int64_t>(serial_));
  MC_RETURN_IF_ERROR(drop.Run());
  MC_ASSIGN_OR_RETURN(
      Statement put,
      db_->Prepare("INSERT OR REPLACE INTO envelopes(repo, serial, envelope) VALUES(?, ?, ?)"));
  put.Bind(1, repo_).Bind(2, static_cast<int64_t>(serial)).BindBlob(3, envelope);
  MC_RETURN_IF_ERROR(put.Run());
  return tx.Commit();
}

Result<std::unique_ptr<AppliedHead>> AppliedHead::Read(const fs::path& state_dir,
                                                       const std::string& repo) {
  std::error_code ec;
  if (!fs::exists(state_dir / "subscriber.db", ec)) {
    return Status::NotFound(state_dir.string() + " holds no subscriber.db yet");
  }
  MC_ASSIGN_OR_RETURN(auto db, Database::Open(state_dir / "subscriber.db"));
  std::unique_ptr<AppliedHead> head(new AppliedHead(repo, std::move(db)));
  // One read transaction: the head, its envelope and every chunk read later
  // belong to one committed serial, whatever the follower commits meanwhile.
  MC_RETURN_IF_ERROR(head->db_->Exec("BEGIN"));
  head->open_ = true;
  MC_ASSIGN_OR_RETURN(
      Statement st, head->db_->Prepare(
                        "SELECT serial, manifest_sha256, manifest_index FROM head WHERE repo = ?"));
  st.Bind(1, repo);
  MC_ASSIGN_OR_RETURN(bool row, st.Step());
  if (!row) return head;  // nothing applied yet: serial 0
  head->serial_ = static_cast<uint64_t>(st.ColumnInt(0));
  head->digest_ = st.ColumnBlob(1);
  auto index = ManifestIndex::Decode(st.ColumnBlob(2));
  if (!index.ok() || index->Root() != head->digest_) {
    return Status::Corruption("the mirror state's manifest index of " + repo +
                              " does not match its root");
  }
  head->index_ = std::move(*index);
  MC_ASSIGN_OR_RETURN(Statement env,
                      head->db_->Prepare("SELECT envelope FROM envelopes WHERE repo = ? AND "
                                         "serial = ?"));
  env.Bind(1, repo).Bind(2, static_cast<int64_t>(head->serial_));
  MC_ASSIGN_OR_RETURN(bool has_envelope, env.Step());
  if (has_envelope) head->envelope_ = env.ColumnBlob(0);
  MC_ASSIGN_OR_RETURN(Statement keys, head->db_->Prepare("SELECT bytes FROM keyset WHERE id = 1"));
  MC_ASSIGN_OR_RETURN(bool has_keys, keys.Step());
  if (has_keys) head->key_set_ = keys.ColumnBlob(0);
  return head;
}

AppliedHead::~AppliedHead() {
  if (open_) (void)db_->Exec("ROLLBACK");
}

Result<std::string> AppliedHead::LoadChunk(std::string_view id) {
  MC_ASSIGN_OR_RETURN(Statement st,
                      db_->Prepare("SELECT bytes FROM chunks WHERE repo = ? AND id = ?"));
  st.Bind(1, repo_).BindBlob(2, id);
  MC_ASSIGN_OR_RETURN(bool row, st.Step());
  if (!row) return Status::NotFound("manifest chunk " + ToHex(id) + " is not in the mirror state");
  return st.ColumnBlob(0);
}

Status MirrorState::QueueAck(const v1::Ack& ack) {
  MC_ASSIGN_OR_RETURN(Statement st, db_->Prepare("INSERT INTO pending_acks(ack) VALUES(?)"));
  st.BindBlob(1, ack.SerializeAsString());
  return st.Run();
}

Result<std::vector<std::pair<int64_t, v1::Ack>>> MirrorState::PendingAcks() {
  std::vector<std::pair<int64_t, v1::Ack>> out;
  MC_ASSIGN_OR_RETURN(Statement st,
                      db_->Prepare("SELECT id, ack FROM pending_acks ORDER BY id LIMIT 100"));
  for (;;) {
    MC_ASSIGN_OR_RETURN(bool row, st.Step());
    if (!row) break;
    v1::Ack ack;
    if (ack.ParseFromString(st.ColumnBlob(1))) out.emplace_back(st.ColumnInt(0), std::move(ack));
  }
  return out;
}

Status MirrorState::DropAck(int64_t id) {
  MC_ASSIGN_OR_RETURN(Statement st, db_->Prepare("DELETE FROM pending_acks WHERE id = ?"));
  st.Bind(1, id);
  return st.Run();
}

namespace {
constexpr int64_t kMaxRefusalsKept = 100;
}  // namespace

Status MirrorState::RecordRefusal(uint64_t serial, const std::string& reason, int64_t now_unix) {
  Transaction tx(*db_);
  MC_RETURN_IF_ERROR(tx.status());
  {
    MC_ASSIGN_OR_RETURN(Statement st, db_->Prepare(R"sql(
      INSERT INTO refusals(repo, reason, serial, first_unix, last_unix, count)
      VALUES(?, ?, ?, ?, ?, 1)
      ON CONFLICT(repo, reason) DO UPDATE SET
        serial = excluded.serial, last_unix = excluded.last_unix, count = count + 1)sql"));
    st.Bind(1, repo_)
        .Bind(2, reason)
        .Bind(3, static_cast<int64_t>(serial))
        .Bind(4, now_unix)
        .Bind(5, now_unix);
    MC_RETURN_IF_ERROR(st.Run());
  }
  {
    // Bounded: a broker that keeps inventing reasons cannot grow the state.
    MC_ASSIGN_OR_RETURN(Statement st, db_->Prepare(R"sql(
      DELETE FROM refusals WHERE repo = ?1 AND reason NOT IN (
        SELECT reason FROM refusals WHERE repo = ?1 ORDER BY last_unix DESC, rowid DESC
        LIMIT ?2))sql"));
    st.Bind(1, repo_).Bind(2, kMaxRefusalsKept);
    MC_RETURN_IF_ERROR(st.Run());
  }
  return tx.Commit();
}

Result<std::vector<MirrorState::Refusal>> MirrorState::Refusals(size_t limit) {
  MC_ASSIGN_OR_RETURN(Statement st, db_->Prepare(R"sql(
    SELECT serial, reason, first_unix, last_unix, count FROM refusals WHERE repo = ?
    ORDER BY last_unix DESC, rowid DESC LIMIT ?)sql"));
  st.Bind(1, repo_).Bind(2, static_cast<int64_t>(limit));
  std::vector<Refusal> out;
  for (;;) {
    MC_ASSIGN_OR_RETURN(bool row, st.Step());
    if (!row) break;
    Refusal r;
    r.serial = static_cast<uint64_t>(st.ColumnInt(0));
    r.reason = st.ColumnText(1);
    r.first_unix = st.ColumnInt(2);
    r.last_unix = st.ColumnInt(3);
    r.count = static_cast<uint64_t>(st.ColumnInt(4));
    out.push_back(std::move(r));
  }
  return out;
}

}  // namespace mirrorcast
