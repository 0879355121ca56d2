#include "core/mirror/mirror_state.h"

#include <system_error>

namespace mirrorcast {

namespace fs = std::filesystem;

Result<std::unique_ptr<MirrorState>> MirrorState::Open(const fs::path& state_dir,
                                                       const std::string& repo) {
  std::error_code ec;
  fs::create_directories(state_dir, ec);
  if (ec) return Status::IoError("create " + state_dir.string() + ": " + ec.message());
  MC_ASSIGN_OR_RETURN(auto db, Database::Open(state_dir / "subscriber.db"));
  MC_RETURN_IF_ERROR(db->Exec(R"sql(
    CREATE TABLE IF NOT EXISTS head(
      repo TEXT PRIMARY KEY, serial INTEGER NOT NULL, manifest_sha256 BLOB NOT NULL);
    CREATE TABLE IF NOT EXISTS entries(
      repo TEXT NOT NULL, path TEXT NOT NULL, entry BLOB NOT NULL, PRIMARY KEY(repo, path));
    CREATE TABLE IF NOT EXISTS journal(
      repo TEXT PRIMARY KEY, serial INTEGER NOT NULL, manifest_sha256 BLOB NOT NULL,
      changes BLOB NOT NULL);
    CREATE TABLE IF NOT EXISTS deferred_deletes(
      repo TEXT NOT NULL, path TEXT NOT NULL, kind INTEGER NOT NULL, due_unix INTEGER NOT NULL,
      PRIMARY KEY(repo, path));
    CREATE TABLE IF NOT EXISTS pending_acks(
      id INTEGER PRIMARY KEY AUTOINCREMENT, ack BLOB NOT NULL);
  )sql"));
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
  MC_RETURN_IF_ERROR(
      db->Exec("CREATE TABLE IF NOT EXISTS head(repo TEXT PRIMARY KEY, serial INTEGER NOT NULL, "
               "manifest_sha256 BLOB NOT NULL)"));
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
  manifest_ = Manifest(repo_, 0);
  {
    MC_ASSIGN_OR_RETURN(Statement st,
                        db_->Prepare("SELECT serial, manifest_sha256 FROM head WHERE repo = ?"));
    st.Bind(1, repo_);
    MC_ASSIGN_OR_RETURN(bool row, st.Step());
    if (row) {
      initialized_ = true;
      manifest_.set_serial(static_cast<uint64_t>(st.ColumnInt(0)));
      digest_ = st.ColumnBlob(1);
    }
  }
  MC_ASSIGN_OR_RETURN(Statement st, db_->Prepare("SELECT entry FROM entries WHERE repo = ?"));
  st.Bind(1, repo_);
  for (;;) {
    MC_ASSIGN_OR_RETURN(bool row, st.Step());
    if (!row) break;
    v1::FileEntry entry;
    const std::string blob = st.ColumnBlob(0);
    if (!entry.ParseFromString(blob)) return Status::Corruption("unreadable entry in state");
    manifest_.Put(std::move(entry));
  }
  if (initialized_ && manifest_.Digest() != digest_) {
    return Status::Corruption(
        "recorded manifest does not match its digest; remove the state "
        "directory to rebuild it from the tree");
  }
  return Status::Ok();
}

Status MirrorState::Adopt(Manifest scanned) {
  Transaction tx(*db_);
  MC_RETURN_IF_ERROR(tx.status());
  {
    MC_ASSIGN_OR_RETURN(Statement del, db_->Prepare("DELETE FROM entries WHERE repo = ?"));
    del.Bind(1, repo_);
    MC_RETURN_IF_ERROR(del.Run());
    MC_ASSIGN_OR_RETURN(Statement ins,
                        db_->Prepare("INSERT INTO entries(repo, path, entry) VALUES(?, ?, ?)"));
    for (const auto& [path, entry] : scanned.entries()) {
      ins.Reset();
      ins.Bind(1, repo_).Bind(2, path).BindBlob(3, entry.SerializeAsString());
      MC_RETURN_IF_ERROR(ins.Run());
    }
    const std::string digest = scanned.Digest();
    MC_ASSIGN_OR_RETURN(Statement head,
                        db_->Prepare("INSERT OR REPLACE INTO head(repo, serial, manifest_sha256) "
                                     "VALUES(?, 0, ?)"));
    head.Bind(1, repo_).BindBlob(2, digest);
    MC_RETURN_IF_ERROR(head.Run());
    MC_RETURN_IF_ERROR(tx.Commit());
    digest_ = digest;
  }
  scanned.set_repo(repo_);
  scanned.set_serial(0);
  manifest_ = std::move(scanned);
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
                                   "changes) VALUES(?, ?, ?, ?)"));
  st.Bind(1, repo_).Bind(2, static_cast<int64_t>(journal.serial));
  st.BindBlob(3, journal.manifest_sha256).BindBlob(4, record.SerializeAsString());
  return st.Run();
}

Result<std::optional<Journal>> MirrorState::ReadJournal() {
  MC_ASSIGN_OR_RETURN(Statement st, db_->Prepare("SELECT changes FROM journal WHERE repo = ?"));
  st.Bind(1, repo_);
  MC_ASSIGN_OR_RETURN(bool row, st.Step());
  if (!row) return std::optional<Journal>();
  v1::RepoChanged record;
  if (!record.ParseFromString(st.ColumnBlob(0))) return Status::Corruption("unreadable journal");
  Journal journal;
  journal.serial = record.serial();
  journal.manifest_sha256 = record.manifest_sha256();
  journal.changes.assign(record.changes().begin(), record.changes().end());
  return std::optional<Journal>(std::move(journal));
}

Status MirrorState::CommitApply(uint64_t serial, const std::string& digest,
                                const std::vector<v1::Change>& changes, const v1::Ack* ack,
                                int64_t delete_after_unix, std::optional<Manifest> applied) {
  if (!applied) {
    applied = manifest_;
    google::protobuf::RepeatedPtrField<v1::Change> list(changes.begin(), changes.end());
    MC_RETURN_IF_ERROR(applied->ApplyChanges(list));
    if (applied->Digest() != digest) {
      return Status::Corruption("applied changes do not give the signed manifest digest");
    }
  }
  Manifest& next = *applied;
  Transaction tx(*db_);
  MC_RETURN_IF_ERROR(tx.status());
  {
    MC_ASSIGN_OR_RETURN(Statement put, db_->Prepare("INSERT OR REPLACE INTO entries(repo, path, "
                                                    "entry) VALUES(?, ?, ?)"));
    MC_ASSIGN_OR_RETURN(Statement del,
                        db_->Prepare("DELETE FROM entries WHERE repo = ? AND path = ?"));
    MC_ASSIGN_OR_RETURN(Statement defer,
                        db_->Prepare("INSERT OR REPLACE INTO deferred_deletes(repo, path, kind, "
                                     "due_unix) VALUES(?, ?, ?, ?)"));
    MC_ASSIGN_OR_RETURN(Statement undefer,
                        db_->Prepare("DELETE FROM deferred_deletes WHERE repo = ? AND path = ?"));
    for (const auto& c : changes) {
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
      } else {
        put.Reset();
        put.Bind(1, repo_).Bind(2, c.entry().path()).BindBlob(3, c.entry().SerializeAsString());
        MC_RETURN_IF_ERROR(put.Run());
        undefer.Reset();
        undefer.Bind(1, repo_).Bind(2, c.entry().path());
        MC_RETURN_IF_ERROR(undefer.Run());
      }
    }
    MC_ASSIGN_OR_RETURN(Statement head,
                        db_->Prepare("INSERT OR REPLACE INTO head(repo, serial, manifest_sha256) "
                                     "VALUES(?, ?, ?)"));
    head.Bind(1, repo_).Bind(2, static_cast<int64_t>(serial)).BindBlob(3, digest);
    MC_RETURN_IF_ERROR(head.Run());
    MC_ASSIGN_OR_RETURN(Statement journal, db_->Prepare("DELETE FROM journal WHERE repo = ?"));
    journal.Bind(1, repo_);
    MC_RETURN_IF_ERROR(journal.Run());
    if (ack != nullptr) MC_RETURN_IF_ERROR(QueueAck(*ack));
  }
  MC_RETURN_IF_ERROR(tx.Commit());
  next.set_serial(serial);
  manifest_ = std::move(next);
  digest_ = digest;
  initialized_ = true;
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

}  // namespace mirrorcast
