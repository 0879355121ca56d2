#include "broker/broker_state.h"

#include <algorithm>
#include <cstdlib>
#include <system_error>

#include "core/base/log.h"

namespace mirrorcast {

namespace fs = std::filesystem;

Result<std::unique_ptr<BrokerState>> BrokerState::Open(const fs::path& state_dir) {
  std::error_code ec;
  fs::create_directories(state_dir / "manifest-objects", ec);
  if (ec) return Status::IoError("create " + state_dir.string() + ": " + ec.message());
  MC_ASSIGN_OR_RETURN(auto db, Database::Open(state_dir / "broker.db"));
  MC_RETURN_IF_ERROR(db->Exec(R"sql(
    CREATE TABLE IF NOT EXISTS repos(
      repo TEXT PRIMARY KEY, serial INTEGER NOT NULL, manifest_sha256 BLOB NOT NULL,
      manifest_entries INTEGER NOT NULL, updated_unix INTEGER NOT NULL);
    CREATE TABLE IF NOT EXISTS events(
      repo TEXT NOT NULL, serial INTEGER NOT NULL, envelope BLOB NOT NULL,
      received_unix INTEGER NOT NULL, PRIMARY KEY(repo, serial));
    CREATE TABLE IF NOT EXISTS mirrors(
      mirror_id TEXT NOT NULL, repo TEXT NOT NULL, serial INTEGER NOT NULL,
      target_serial INTEGER NOT NULL, state INTEGER NOT NULL, last_ack_unix INTEGER NOT NULL,
      bytes_fetched INTEGER NOT NULL, bytes_reused INTEGER NOT NULL, millis INTEGER NOT NULL,
      error TEXT NOT NULL, PRIMARY KEY(mirror_id, repo));
    CREATE TABLE IF NOT EXISTS manifest_objects(
      repo TEXT NOT NULL, id BLOB NOT NULL, last_serial INTEGER NOT NULL,
      PRIMARY KEY(repo, id));
    CREATE INDEX IF NOT EXISTS manifest_objects_by_serial ON manifest_objects(repo, last_serial);
  )sql"));
  // Added after 0.1's first schema; an older broker.db gets the column here.
  if (Status s = db->Exec("ALTER TABLE mirrors ADD COLUMN bytes_signature INTEGER NOT NULL "
                          "DEFAULT 0");
      !s.ok() && s.message().find("duplicate column") == std::string::npos) {
    return s;
  }
  std::unique_ptr<BrokerState> state(new BrokerState(state_dir, std::move(db)));
  MC_RETURN_IF_ERROR(state->Load());
  return state;
}

Status BrokerState::Load() {
  MC_ASSIGN_OR_RETURN(Statement st,
                      db_->Prepare("SELECT repo, serial, manifest_sha256, manifest_entries "
                                   "FROM repos"));
  for (;;) {
    MC_ASSIGN_OR_RETURN(bool row, st.Step());
    if (!row) break;
    RepoHead head;
    head.serial = static_cast<uint64_t>(st.ColumnInt(1));
    head.manifest_sha256 = st.ColumnBlob(2);
    head.manifest_entries = static_cast<uint64_t>(st.ColumnInt(3));
    repos_[st.ColumnText(0)] = head;
  }
  return Status::Ok();
}

RepoHead BrokerState::Head(const std::string& repo) const {
  auto it = repos_.find(repo);
  return it == repos_.end() ? RepoHead{} : it->second;
}

Status BrokerState::CommitEvent(const std::string& repo, const RepoHead& head,
                                const std::string& envelope, int64_t now_unix) {
  Transaction tx(*db_);
  MC_RETURN_IF_ERROR(tx.status());
  {
    MC_ASSIGN_OR_RETURN(Statement ins,
                        db_->Prepare("INSERT INTO events(repo, serial, envelope, received_unix) "
                                     "VALUES(?, ?, ?, ?)"));
    ins.Bind(1, repo).Bind(2, static_cast<int64_t>(head.serial)).BindBlob(3, envelope);
    ins.Bind(4, now_unix);
    MC_RETURN_IF_ERROR(ins.Run());
    MC_ASSIGN_OR_RETURN(
        Statement up,
        db_->Prepare("INSERT INTO repos(repo, serial, manifest_sha256, manifest_entries, "
                     "updated_unix) VALUES(?, ?, ?, ?, ?) ON CONFLICT(repo) DO UPDATE SET "
                     "serial=excluded.serial, manifest_sha256=excluded.manifest_sha256, "
                     "manifest_entries=excluded.manifest_entries, "
                     "updated_unix=excluded.updated_unix"));
    up.Bind(1, repo).Bind(2, static_cast<int64_t>(head.serial)).BindBlob(3, head.manifest_sha256);
    up.Bind(4, static_cast<int64_t>(head.manifest_entries)).Bind(5, now_unix);
    MC_RETURN_IF_ERROR(up.Run());
  }
  MC_RETURN_IF_ERROR(tx.Commit());
  repos_[repo] = head;
  return Status::Ok();
}

Result<StoredEvents> BrokerState::EventsSince(const std::string& repo, uint64_t since,
                                              uint32_t max) {
  StoredEvents out;
  {
    MC_ASSIGN_OR_RETURN(Statement st,
                        db_->Prepare("SELECT MIN(serial) FROM events WHERE repo = ?"));
    st.Bind(1, repo);
    MC_ASSIGN_OR_RETURN(bool row, st.Step());
    if (row && !st.ColumnIsNull(0)) out.oldest_serial = static_cast<uint64_t>(st.ColumnInt(0));
  }
  MC_ASSIGN_OR_RETURN(Statement st, db_->Prepare("SELECT envelope FROM events WHERE repo = ? AND "
                                                 "serial > ? ORDER BY serial LIMIT ?"));
  st.Bind(1, repo).Bind(2, static_cast<int64_t>(since)).Bind(3, static_cast<int64_t>(max));
  for (;;) {
    MC_ASSIGN_OR_RETURN(bool row, st.Step());
    if (!row) break;
    out.envelopes.push_back(st.ColumnBlob(0));
  }
  return out;
}

Status BrokerState::RecordAck(const v1::Ack& ack, int64_t now_unix) {
  MC_ASSIGN_OR_RETURN(
      Statement st,
      db_->Prepare(
          "INSERT INTO mirrors(mirror_id, repo, serial, target_serial, state, "
          "last_ack_unix, bytes_fetched, bytes_reused, millis, error, bytes_signature) "
          "VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(mirror_id, repo) DO UPDATE SET "
          "serial=excluded.serial, target_serial=excluded.target_serial, "
          "state=excluded.state, last_ack_unix=excluded.last_ack_unix, "
          "bytes_fetched=excluded.bytes_fetched, bytes_reused=excluded.bytes_reused, "
          "millis=excluded.millis, error=excluded.error, "
          "bytes_signature=excluded.bytes_signature"));
  st.Bind(1, ack.mirror_id()).Bind(2, ack.repo()).Bind(3, static_cast<int64_t>(ack.serial()));
  st.Bind(4, static_cast<int64_t>(ack.target_serial())).Bind(5, static_cast<int64_t>(ack.state()));
  st.Bind(6, now_unix).Bind(7, static_cast<int64_t>(ack.bytes_fetched()));
  st.Bind(8, static_cast<int64_t>(ack.bytes_reused()));
  st.Bind(9, static_cast<int64_t>(ack.seconds() * 1000.0)).Bind(10, ack.error());
  st.Bind(11, static_cast<int64_t>(ack.bytes_signature()));
  return st.Run();
}

Result<std::vector<v1::MirrorStatus>> BrokerState::Mirrors() {
  std::vector<v1::MirrorStatus> out;
  MC_ASSIGN_OR_RETURN(Statement st,
                      db_->Prepare("SELECT mirror_id, repo, serial, target_serial, state, "
                                   "last_ack_unix, bytes_fetched, bytes_reused, millis, error, "
                                   "bytes_signature FROM mirrors ORDER BY repo, mirror_id"));
  for (;;) {
    MC_ASSIGN_OR_RETURN(bool row, st.Step());
    if (!row) break;
    v1::MirrorStatus m;
    m.set_mirror_id(st.ColumnText(0));
    m.set_repo(st.ColumnText(1));
    m.set_serial(static_cast<uint64_t>(st.ColumnInt(2)));
    m.set_target_serial(static_cast<uint64_t>(st.ColumnInt(3)));
    const int64_t state = st.ColumnInt(4);
    m.set_state(v1::AckState_IsValid(static_cast<int>(state)) ? static_cast<v1::AckState>(state)
                                                              : v1::ACK_STATE_UNSPECIFIED);
    m.set_last_ack_unix(st.ColumnInt(5));
    m.set_bytes_fetched(static_cast<uint64_t>(st.ColumnInt(6)));
    m.set_bytes_reused(static_cast<uint64_t>(st.ColumnInt(7)));
    m.set_seconds(static_cast<double>(st.ColumnInt(8)) / 1000.0);
    m.set_error(st.ColumnText(9));
    m.set_bytes_signature(static_cast<uint64_t>(st.ColumnInt(10)));
    out.push_back(std::move(m));
  }
  return out;
}

Status BrokerState::TouchObjects(const std::string& repo, uint64_t serial,
                                 const std::vector<std::string>& ids) {
  MC_ASSIGN_OR_RETURN(Statement st,
                      db_->Prepare("INSERT INTO manifest_objects(repo, id, last_serial) "
                                   "VALUES(?, ?, ?) ON CONFLICT(repo, id) DO UPDATE SET "
                                   "last_serial = max(last_serial, excluded.last_serial)"));
  for (const auto& id : ids) {
    st.Reset();
    st.Bind(1, repo).BindBlob(2, id).Bind(3, static_cast<int64_t>(serial));
    MC_RETURN_IF_ERROR(st.Run());
  }
  return Status::Ok();
}

Status BrokerState::Prune(const std::string& repo, uint64_t keep_events, uint64_t keep_manifests) {
  // The head's event and manifest always stay: catch-up, bootstrap and the
  // next publish's check need them.
  keep_events = std::max<uint64_t>(keep_events, 1);
  keep_manifests = std::max<uint64_t>(keep_manifests, 1);
  const uint64_t head = Head(repo).serial;
  if (head > keep_events) {
    MC_ASSIGN_OR_RETURN(Statement st,
                        db_->Prepare("DELETE FROM events WHERE repo = ? AND serial <= ?"));
    st.Bind(1, repo).Bind(2, static_cast<int64_t>(head - keep_events));
    MC_RETURN_IF_ERROR(st.Run());
  }
  if (head <= keep_manifests) return Status::Ok();
  // Objects no serial in the window names go, unless another repo's does.
  const int64_t cutoff = static_cast<int64_t>(head - keep_manifests);
  std::vector<std::string> stale;
  {
    MC_ASSIGN_OR_RETURN(Statement st, db_->Prepare("SELECT id FROM manifest_objects WHERE repo = "
                                                   "? AND last_serial <= ? LIMIT 100000"));
    st.Bind(1, repo).Bind(2, cutoff);
    for (;;) {
      MC_ASSIGN_OR_RETURN(bool row, st.Step());
      if (!row) break;
      stale.push_back(st.ColumnBlob(0));
    }
  }
  if (stale.empty()) return Status::Ok();
  MC_ASSIGN_OR_RETURN(Statement drop,
                      db_->Prepare("DELETE FROM manifest_objects WHERE repo = ? AND id = ?"));
  MC_ASSIGN_OR_RETURN(Statement other,
                      db_->Prepare("SELECT 1 FROM manifest_objects WHERE id = ? LIMIT 1"));
  for (const auto& id : stale) {
    drop.Reset();
    drop.Bind(1, repo).BindBlob(2, id);
    MC_RETURN_IF_ERROR(drop.Run());
    other.Reset();
    other.BindBlob(1, id);
    MC_ASSIGN_OR_RETURN(bool used, other.Step());
    other.Reset();
    if (used) continue;
    if (Status s = objects_.Remove(id); !s.ok()) {
      MC_LOG(warning) << "cannot remove an old manifest object: " << s.ToString();
    }
  }
  return Status::Ok();
}

}  // namespace mirrorcast
