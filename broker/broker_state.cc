#include "broker/broker_state.h"

#include <algorithm>
#include <cstdlib>
#include <system_error>
#include <tuple>

#include "core/base/log.h"

namespace mirrorcast {

namespace fs = std::filesystem;

namespace {

// The columns (repo, sha256, path, dev, ino, size, mtime_ns, ctime_ns) of a
// version row, bound from 1: staged and written rows alike.
void BindVersionRow(Statement& st, const std::string& repo, const PublishedVersion& v) {
  st.Bind(1, repo).BindBlob(2, v.sha256).Bind(3, v.path);
  st.Bind(4, static_cast<int64_t>(v.identity.dev)).Bind(5, static_cast<int64_t>(v.identity.ino));
  st.Bind(6, static_cast<int64_t>(v.identity.size)).Bind(7, v.identity.mtime_ns);
  st.Bind(8, v.identity.ctime_ns);
}

// The columns (repo, sha256, kind, dev, ino, size, mtime_ns, ctime_ns) of an
// object row, bound from 1.
void BindObjectRow(Statement& st, const std::string& repo, const StoredObject& o) {
  const FileIdentity& id = o.object.identity;
  st.Bind(1, repo).BindBlob(2, o.sha256).Bind(3, static_cast<int64_t>(o.object.kind));
  st.Bind(4, static_cast<int64_t>(id.dev)).Bind(5, static_cast<int64_t>(id.ino));
  st.Bind(6, static_cast<int64_t>(id.size)).Bind(7, id.mtime_ns).Bind(8, id.ctime_ns);
}

// 2: manifests in format v2 (chunked, by root), servable versions.
constexpr int64_t kSchemaVersion = 2;

// A state written by 0.1 names its heads by format-v1 digests this version
// cannot read or serve: refusing beats publishing on top of it.
Status RefuseFormatOne(Database& db, const fs::path& state_dir) {
  MC_ASSIGN_OR_RETURN(Statement version, db.Prepare("PRAGMA user_version"));
  MC_ASSIGN_OR_RETURN(bool row, version.Step());
  if (row && version.ColumnInt(0) >= kSchemaVersion) return Status::Ok();
  MC_ASSIGN_OR_RETURN(
      Statement repos,
      db.Prepare("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'repos'"));
  MC_ASSIGN_OR_RETURN(bool has, repos.Step());
  if (!has || repos.ColumnInt(0) == 0) return Status::Ok();
  MC_ASSIGN_OR_RETURN(Statement heads, db.Prepare("SELECT count(*) FROM repos"));
  MC_ASSIGN_OR_RETURN(bool counted, heads.Step());
  if (!counted || heads.ColumnInt(0) == 0) return Status::Ok();
  return Status::FailedPrecondition(
      "broker state " + state_dir.string() +
      " was written by mirrorcast 0.1 (manifest format v1), which this version cannot serve: "
      "move it aside and publish again (mirrors rebuild their own state from their trees)");
}

}  // namespace

Result<std::unique_ptr<BrokerState>> BrokerState::Open(const fs::path& state_dir) {
  std::error_code ec;
  fs::create_directories(state_dir / "manifest-objects", ec);
  if (ec) return Status::IoError("create " + state_dir.string() + ": " + ec.message());
  MC_ASSIGN_OR_RETURN(auto db, Database::Open(state_dir / "broker.db"));
  MC_RETURN_IF_ERROR(RefuseFormatOne(*db, state_dir));
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
    CREATE TABLE IF NOT EXISTS recalls(
      repo TEXT NOT NULL, serial INTEGER NOT NULL, recall_of INTEGER NOT NULL,
      reason TEXT NOT NULL, published_unix INTEGER NOT NULL, key_id TEXT NOT NULL,
      PRIMARY KEY(repo, serial));
  )sql"));
  // Added after 0.1's first schema; an older broker.db gets the column here.
  if (Status s = db->Exec("ALTER TABLE mirrors ADD COLUMN bytes_signature INTEGER NOT NULL "
                          "DEFAULT 0");
      !s.ok() && s.message().find("duplicate column") == std::string::npos) {
    return s;
  }
  // Liveness: a mirror's last poll or ACK (added with the status page).
  if (Status s = db->Exec("ALTER TABLE mirrors ADD COLUMN last_seen_unix INTEGER NOT NULL "
                          "DEFAULT 0");
      !s.ok() && s.message().find("duplicate column") == std::string::npos) {
    return s;
  }
  // Relays: the path of relays a forwarded ACK came through ("" direct).
  if (Status s = db->Exec("ALTER TABLE mirrors ADD COLUMN via TEXT NOT NULL DEFAULT ''");
      !s.ok() && s.message().find("duplicate column") == std::string::npos) {
    return s;
  }
  // Propagation: when each recent serial was committed and when each mirror
  // first reached it (or passed it), kept for kPropagationSerials serials.
  MC_RETURN_IF_ERROR(db->Exec(R"sql(
    CREATE TABLE IF NOT EXISTS serial_times(
      repo TEXT NOT NULL, serial INTEGER NOT NULL, published_ms INTEGER NOT NULL,
      PRIMARY KEY(repo, serial)) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS reached(
      repo TEXT NOT NULL, serial INTEGER NOT NULL, mirror_id TEXT NOT NULL,
      at_ms INTEGER NOT NULL, PRIMARY KEY(repo, serial, mirror_id)) WITHOUT ROWID;
  )sql"));
  // Servable versions (content by SHA-256).
  MC_RETURN_IF_ERROR(db->Exec(R"sql(
    CREATE TABLE IF NOT EXISTS versions(
      repo TEXT NOT NULL, sha256 BLOB NOT NULL, path TEXT NOT NULL,
      dev INTEGER NOT NULL, ino INTEGER NOT NULL, size INTEGER NOT NULL,
      mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL,
      published_serial INTEGER NOT NULL, retired_serial INTEGER,
      PRIMARY KEY(repo, sha256, path)) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS versions_retired ON versions(repo, retired_serial)
      WHERE retired_serial IS NOT NULL;
    CREATE TABLE IF NOT EXISTS objects(
      repo TEXT NOT NULL, sha256 BLOB NOT NULL, kind INTEGER NOT NULL,
      dev INTEGER NOT NULL, ino INTEGER NOT NULL, size INTEGER NOT NULL,
      mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL,
      PRIMARY KEY(repo, sha256)) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS pending_objects(
      repo TEXT NOT NULL, sha256 BLOB NOT NULL, PRIMARY KEY(repo, sha256)) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS staged_retired(
      repo TEXT NOT NULL, sha256 BLOB NOT NULL, path TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS staged_versions(
      repo TEXT NOT NULL, sha256 BLOB NOT NULL, path TEXT NOT NULL,
      dev INTEGER NOT NULL, ino INTEGER NOT NULL, size INTEGER NOT NULL,
      mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL);
    CREATE TABLE IF NOT EXISTS linked_files(
      repo TEXT NOT NULL, path TEXT NOT NULL, serial INTEGER NOT NULL,
      inode INTEGER NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
      ctime_before_ns INTEGER NOT NULL, ctime_after_ns INTEGER NOT NULL,
      PRIMARY KEY(repo, serial, path)) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS staged_objects(
      repo TEXT NOT NULL, sha256 BLOB NOT NULL, kind INTEGER NOT NULL,
      dev INTEGER NOT NULL, ino INTEGER NOT NULL, size INTEGER NOT NULL,
      mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL);
  )sql"));
  MC_RETURN_IF_ERROR(db->Exec("PRAGMA user_version = " + std::to_string(kSchemaVersion)));
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
                                const std::string& envelope, int64_t now_unix,
                                const VersionChanges& versions, const v1::RecallRecord* recall) {
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
                     "updated_unix) VALUES(?, ?, ?, ?, ?) "
                     "ON CONFLICT(repo) DO UPDATE SET "
                     "serial=excluded.serial, manifest_sha256=excluded.manifest_sha256, "
                     "manifest_entries=excluded.manifest_entries, "
                     "updated_unix=excluded.updated_unix"));
    up.Bind(1, repo).Bind(2, static_cast<int64_t>(head.serial)).BindBlob(3, head.manifest_sha256);
    up.Bind(4, static_cast<int64_t>(head.manifest_entries)).Bind(5, now_unix);
    MC_RETURN_IF_ERROR(up.Run());
    MC_RETURN_IF_ERROR(WriteVersions(repo, head.serial, versions));
    MC_RETURN_IF_ERROR(WriteLinked(repo, head.serial, versions.linked));
    if (recall != nullptr) {
      MC_ASSIGN_OR_RETURN(Statement put,
                          db_->Prepare("INSERT OR REPLACE INTO recalls(repo, serial, recall_of, "
                                       "reason, published_unix, key_id) VALUES(?, ?, ?, ?, ?, ?)"));
      put.Bind(1, repo).Bind(2, static_cast<int64_t>(head.serial));
      put.Bind(3, static_cast<int64_t>(recall->recall_of())).Bind(4, recall->reason());
      put.Bind(5, recall->published_unix()).Bind(6, recall->key_id());
      MC_RETURN_IF_ERROR(put.Run());
    }
    MC_ASSIGN_OR_RETURN(Statement old_links,
                        db_->Prepare("DELETE FROM linked_files WHERE repo = ? AND serial < ?"));
    old_links.Bind(1, repo).Bind(2, static_cast<int64_t>(head.serial));
    MC_RETURN_IF_ERROR(old_links.Run());
    MC_ASSIGN_OR_RETURN(Statement clear,
                        db_->Prepare("DELETE FROM pending_objects WHERE repo = ?"));
    clear.Bind(1, repo);
    MC_RETURN_IF_ERROR(clear.Run());
  }
  MC_RETURN_IF_ERROR(tx.Commit());
  repos_[repo] = head;
  return Status::Ok();
}

Status BrokerState::WriteLinked(const std::string& repo, uint64_t serial,
                                const std::vector<v1::LinkedFile>& linked) {
  if (linked.empty()) return Status::Ok();
  MC_ASSIGN_OR_RETURN(Statement put,
                      db_->Prepare("INSERT OR REPLACE INTO linked_files(repo, path, serial, inode, "
                                   "size, mtime_ns, ctime_before_ns, ctime_after_ns) "
                                   "VALUES(?, ?, ?, ?, ?, ?, ?, ?)"));
  for (const v1::LinkedFile& f : linked) {
    put.Reset();
    put.Bind(1, repo).Bind(2, f.path()).Bind(3, static_cast<int64_t>(serial));
    put.Bind(4, static_cast<int64_t>(f.inode())).Bind(5, static_cast<int64_t>(f.size()));
    put.Bind(6, f.mtime_ns()).Bind(7, f.ctime_before_ns()).Bind(8, f.ctime_after_ns());
    MC_RETURN_IF_ERROR(put.Run());
  }
  return Status::Ok();
}

Result<std::vector<v1::LinkedFile>> BrokerState::LinkedPage(const std::string& repo,
                                                            uint64_t serial,
                                                            const std::string& after_path,
                                                            size_t max, size_t max_path_bytes,
                                                            bool* more) {
  std::vector<v1::LinkedFile> out;
  size_t path_bytes = 0;
  *more = false;
  MC_ASSIGN_OR_RETURN(Statement st,
                      db_->Prepare("SELECT path, inode, size, mtime_ns, ctime_before_ns, "
                                   "ctime_after_ns FROM linked_files WHERE repo = ? AND serial = ? "
                                   "AND path > ? ORDER BY path LIMIT ?"));
  st.Bind(1, repo).Bind(2, static_cast<int64_t>(serial)).Bind(3, after_path);
  st.Bind(4, static_cast<int64_t>(max) + 1);
  for (;;) {
    MC_ASSIGN_OR_RETURN(bool row, st.Step());
    if (!row) break;
    std::string path = st.ColumnText(0);
    if (out.size() == max || (!out.empty() && path_bytes + path.size() > max_path_bytes)) {
      *more = true;
      break;
    }
    path_bytes += path.size();
    v1::LinkedFile& f = out.emplace_back();
    f.set_path(std::move(path));
    f.set_inode(static_cast<uint64_t>(st.ColumnInt(1)));
    f.set_size(static_cast<uint64_t>(st.ColumnInt(2)));
    f.set_mtime_ns(st.ColumnInt(3));
    f.set_ctime_before_ns(st.ColumnInt(4));
    f.set_ctime_after_ns(st.ColumnInt(5));
  }
  return out;
}

Status BrokerState::StageVersions(const std::string& repo, uint64_t serial,
                                  const VersionChanges& batch) {
  Transaction tx(*db_);
  MC_RETURN_IF_ERROR(tx.status());
  // Written in place (advisory, keyed by the serial): a publish that never
  // commits has its rows dropped with the staged ones.
  MC_RETURN_IF_ERROR(WriteLinked(repo, serial, batch.linked));
  {
    MC_ASSIGN_OR_RETURN(
        Statement retired,
        db_->Prepare("INSERT INTO staged_retired(repo, sha256, path) VALUES(?, ?, ?)"));
    for (const auto& [path, sha256] : batch.retired) {
      retired.Reset();
      retired.Bind(1, repo).BindBlob(2, sha256).Bind(3, path);
      MC_RETURN_IF_ERROR(retired.Run());
    }
    MC_ASSIGN_OR_RETURN(Statement published,
                        db_->Prepare("INSERT INTO staged_versions(repo, sha256, path, dev, ino, "
                                     "size, mtime_ns, ctime_ns) VALUES(?, ?, ?, ?, ?, ?, ?, ?)"));
    for (const PublishedVersion& v : batch.published) {
      published.Reset();
      BindVersionRow(published, repo, v);
      MC_RETURN_IF_ERROR(published.Run());
    }
    MC_ASSIGN_OR_RETURN(Statement objects,
                        db_->Prepare("INSERT INTO staged_objects(repo, sha256, kind, dev, ino, "
                                     "size, mtime_ns, ctime_ns) VALUES(?, ?, ?, ?, ?, ?, ?, ?)"));
    for (const StoredObject& o : batch.objects) {
      objects.Reset();
      BindObjectRow(objects, repo, o);
      MC_RETURN_IF_ERROR(objects.Run());
    }
  }
  return tx.Commit();
}

Status BrokerState::ClearStagedVersions(const std::string& repo) {
  // Linked rows of a serial that never became the head.
  if (repo.empty()) {
    MC_RETURN_IF_ERROR(db_->Exec(
        "DELETE FROM linked_files WHERE serial > (SELECT coalesce(max(r.serial), 0) FROM repos r "
        "WHERE r.repo = linked_files.repo)"));
  } else {
    MC_ASSIGN_OR_RETURN(
        Statement st, db_->Prepare("DELETE FROM linked_files WHERE repo = ?1 AND serial > "
                                   "(SELECT coalesce(max(serial), 0) FROM repos WHERE repo = ?1)"));
    st.Bind(1, repo);
    MC_RETURN_IF_ERROR(st.Run());
  }
  for (const char* table : {"staged_retired", "staged_versions", "staged_objects"}) {
    if (repo.empty()) {
      MC_RETURN_IF_ERROR(db_->Exec(std::string("DELETE FROM ") + table));
      continue;
    }
    MC_ASSIGN_OR_RETURN(Statement st,
                        db_->Prepare(std::string("DELETE FROM ") + table + " WHERE repo = ?"));
    st.Bind(1, repo);
    MC_RETURN_IF_ERROR(st.Run());
  }
  return Status::Ok();
}

Status BrokerState::WriteStagedVersions(const std::string& repo, uint64_t serial) {
  // In key order (SQLite sorts on disk): see WriteVersions.
  MC_ASSIGN_OR_RETURN(
      Statement published,
      db_->Prepare("INSERT INTO versions(repo, sha256, path, dev, ino, size, mtime_ns, ctime_ns, "
                   "published_serial, retired_serial) SELECT repo, sha256, path, dev, ino, size, "
                   "mtime_ns, ctime_ns, ?2, NULL FROM staged_versions WHERE repo = ?1 "
                   "ORDER BY sha256, path ON CONFLICT(repo, sha256, path) DO UPDATE SET "
                   "dev=excluded.dev, ino=excluded.ino, size=excluded.size, "
                   "mtime_ns=excluded.mtime_ns, ctime_ns=excluded.ctime_ns, "
                   "published_serial=excluded.published_serial, retired_serial=NULL"));
  published.Bind(1, repo).Bind(2, static_cast<int64_t>(serial));
  MC_RETURN_IF_ERROR(published.Run());
  // The same version staged twice (two paths, two batches): the later
  // object is the one its file was last made from.
  MC_ASSIGN_OR_RETURN(
      Statement objects,
      db_->Prepare("INSERT OR REPLACE INTO objects(repo, sha256, kind, dev, ino, size, mtime_ns, "
                   "ctime_ns) SELECT repo, sha256, kind, dev, ino, size, mtime_ns, ctime_ns FROM "
                   "staged_objects WHERE repo = ?1 ORDER BY sha256, rowid"));
  objects.Bind(1, repo);
  MC_RETURN_IF_ERROR(objects.Run());
  return ClearStagedVersions(repo);
}

Status BrokerState::WriteVersions(const std::string& repo, uint64_t serial,
                                  const VersionChanges& versions) {
  // Retirements first: a version re-published at the same path in the same
  // serial (a mode or mtime change) ends up current again below. Staged
  // rows (earlier in the publish) before the ones in memory.
  MC_ASSIGN_OR_RETURN(Statement retire,
                      db_->Prepare("UPDATE versions SET retired_serial = ? WHERE repo = ? AND "
                                   "sha256 = ? AND path = ? AND retired_serial IS NULL"));
  {
    MC_ASSIGN_OR_RETURN(Statement staged,
                        db_->Prepare("SELECT sha256, path FROM staged_retired WHERE repo = ? "
                                     "ORDER BY sha256, path"));
    staged.Bind(1, repo);
    for (;;) {
      MC_ASSIGN_OR_RETURN(bool row, staged.Step());
      if (!row) break;
      retire.Reset();
      retire.Bind(1, static_cast<int64_t>(serial)).Bind(2, repo);
      retire.BindBlob(3, staged.ColumnBlob(0)).Bind(4, staged.ColumnText(1));
      MC_RETURN_IF_ERROR(retire.Run());
    }
  }
  if (!versions.retired.empty()) {
    // In key order: a million rows written in random order thrash SQLite's
    // page cache (a 1 M-file first publish took minutes that way).
    std::vector<const std::pair<std::string, std::string>*> order;
    order.reserve(versions.retired.size());
    for (const auto& r : versions.retired) order.push_back(&r);
    std::sort(order.begin(), order.end(), [](const auto* a, const auto* b) {
      return std::tie(a->second, a->first) < std::tie(b->second, b->first);
    });
    for (const auto* r : order) {
      const auto& [path, sha256] = *r;
      retire.Reset();
      retire.Bind(1, static_cast<int64_t>(serial)).Bind(2, repo).BindBlob(3, sha256).Bind(4, path);
      MC_RETURN_IF_ERROR(retire.Run());
    }
  }
  MC_RETURN_IF_ERROR(WriteStagedVersions(repo, serial));
  if (!versions.published.empty()) {
    MC_ASSIGN_OR_RETURN(
        Statement put,
        db_->Prepare("INSERT INTO versions(repo, sha256, path, dev, ino, size, mtime_ns, ctime_ns, "
                     "published_serial, retired_serial) VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, NULL) "
                     "ON CONFLICT(repo, sha256, path) DO UPDATE SET dev=excluded.dev, "
                     "ino=excluded.ino, size=excluded.size, mtime_ns=excluded.mtime_ns, "
                     "ctime_ns=excluded.ctime_ns, published_serial=excluded.published_serial, "
                     "retired_serial=NULL"));
    std::vector<const PublishedVersion*> order;
    order.reserve(versions.published.size());
    for (const auto& v : versions.published) order.push_back(&v);
    std::sort(order.begin(), order.end(), [](const auto* a, const auto* b) {
      return std::tie(a->sha256, a->path) < std::tie(b->sha256, b->path);
    });
    for (const PublishedVersion* v : order) {
      put.Reset();
      BindVersionRow(put, repo, *v);
      put.Bind(9, static_cast<int64_t>(serial));
      MC_RETURN_IF_ERROR(put.Run());
    }
  }
  if (!versions.objects.empty()) {
    MC_ASSIGN_OR_RETURN(Statement put,
                        db_->Prepare("INSERT OR REPLACE INTO objects(repo, sha256, kind, dev, ino, "
                                     "size, mtime_ns, ctime_ns) VALUES(?, ?, ?, ?, ?, ?, ?, ?)"));
    std::vector<const StoredObject*> order;
    order.reserve(versions.objects.size());
    for (const auto& o : versions.objects) order.push_back(&o);
    std::sort(order.begin(), order.end(),
              [](const auto* a, const auto* b) { return a->sha256 < b->sha256; });
    for (const StoredObject* o : order) {
      put.Reset();
      BindObjectRow(put, repo, *o);
      MC_RETURN_IF_ERROR(put.Run());
    }
  }
  return Status::Ok();
}

namespace {

RetainedObject ObjectFromRow(const Statement& st, int first) {
  RetainedObject o;
  o.kind = st.ColumnInt(first) == static_cast<int64_t>(ObjectKind::kClone) ? ObjectKind::kClone
                                                                           : ObjectKind::kLink;
  o.identity.dev = static_cast<uint64_t>(st.ColumnInt(first + 1));
  o.identity.ino = static_cast<uint64_t>(st.ColumnInt(first + 2));
  o.identity.size = static_cast<uint64_t>(st.ColumnInt(first + 3));
  o.identity.mtime_ns = st.ColumnInt(first + 4);
  o.identity.ctime_ns = st.ColumnInt(first + 5);
  return o;
}

// The newest serial whose retirements have outlived a keep window of `keep`
// at head `head`: rows retired at or before it are no longer servable.
std::optional<int64_t> ExpiredUpTo(uint64_t head, uint64_t keep) {
  if (head < keep) return std::nullopt;
  return static_cast<int64_t>(head - keep);
}

// Objects of `repo` (?1) none of whose rows is current or retired after ?2.
constexpr const char* kExpiredObjectsWhere =
    "o.repo = ?1 AND o.sha256 IN (SELECT sha256 FROM versions WHERE repo = ?1 AND "
    "retired_serial IS NOT NULL AND retired_serial <= ?2) AND NOT EXISTS (SELECT 1 FROM "
    "versions v WHERE v.repo = ?1 AND v.sha256 = o.sha256 AND (v.retired_serial IS NULL OR "
    "v.retired_serial > ?2))";

}  // namespace

Result<std::optional<RetainedObject>> BrokerState::ObjectOf(const std::string& repo,
                                                            const std::string& sha256) {
  if (!object_of_) {
    MC_ASSIGN_OR_RETURN(Statement st,
                        db_->Prepare("SELECT kind, dev, ino, size, mtime_ns, ctime_ns FROM objects "
                                     "WHERE repo = ? AND sha256 = ?"));
    object_of_.emplace(std::move(st));
  }
  Statement& st = *object_of_;
  st.Reset();
  st.Bind(1, repo).BindBlob(2, sha256);
  MC_ASSIGN_OR_RETURN(bool row, st.Step());
  std::optional<RetainedObject> out;
  if (row) out = ObjectFromRow(st, 0);
  st.Reset();
  return out;
}

Status BrokerState::AddPendingObjects(const std::string& repo,
                                      const std::vector<std::string>& sha256s) {
  if (sha256s.empty()) return Status::Ok();
  Transaction tx(*db_);
  MC_RETURN_IF_ERROR(tx.status());
  {
    MC_ASSIGN_OR_RETURN(
        Statement ins,
        db_->Prepare("INSERT OR IGNORE INTO pending_objects(repo, sha256) VALUES(?, ?)"));
    std::vector<const std::string*> order;
    order.reserve(sha256s.size());
    for (const auto& sha : sha256s) order.push_back(&sha);
    std::sort(order.begin(), order.end(), [](const auto* a, const auto* b) { return *a < *b; });
    for (const std::string* sha : order) {
      ins.Reset();
      ins.Bind(1, repo).BindBlob(2, *sha);
      MC_RETURN_IF_ERROR(ins.Run());
    }
  }
  return tx.Commit();
}

Status BrokerState::ClearPendingObjects(const std::string& repo) {
  if (repo.empty()) return db_->Exec("DELETE FROM pending_objects");
  MC_ASSIGN_OR_RETURN(Statement st, db_->Prepare("DELETE FROM pending_objects WHERE repo = ?"));
  st.Bind(1, repo);
  return st.Run();
}

Result<std::vector<std::pair<std::string, std::string>>> BrokerState::UncommittedObjects(
    const std::string& repo) {
  std::vector<std::pair<std::string, std::string>> out;
  MC_ASSIGN_OR_RETURN(Statement st,
                      db_->Prepare("SELECT p.repo, p.sha256 FROM pending_objects p WHERE "
                                   "(?1 = '' OR p.repo = ?1) AND NOT EXISTS (SELECT 1 FROM "
                                   "objects o WHERE o.repo = p.repo AND o.sha256 = p.sha256)"));
  st.Bind(1, repo);
  for (;;) {
    MC_ASSIGN_OR_RETURN(bool row, st.Step());
    if (!row) break;
    out.emplace_back(st.ColumnText(0), st.ColumnBlob(1));
  }
  return out;
}

Result<std::vector<std::string>> BrokerState::ExpiredObjects(const std::string& repo,
                                                             uint64_t keep_versions) {
  std::vector<std::string> out;
  const std::optional<int64_t> upto = ExpiredUpTo(Head(repo).serial, keep_versions);
  if (!upto) return out;
  MC_ASSIGN_OR_RETURN(Statement st, db_->Prepare(std::string("SELECT o.sha256 FROM objects o "
                                                             "WHERE ") +
                                                 kExpiredObjectsWhere));
  st.Bind(1, repo).Bind(2, *upto);
  for (;;) {
    MC_ASSIGN_OR_RETURN(bool row, st.Step());
    if (!row) break;
    out.push_back(st.ColumnBlob(0));
  }
  return out;
}

Status BrokerState::PruneVersions(const std::string& repo, uint64_t keep_versions) {
  const std::optional<int64_t> upto = ExpiredUpTo(Head(repo).serial, keep_versions);
  if (!upto) return Status::Ok();
  Transaction tx(*db_);
  MC_RETURN_IF_ERROR(tx.status());
  {
    MC_ASSIGN_OR_RETURN(
        Statement objects,
        db_->Prepare(std::string("DELETE FROM objects AS o WHERE ") + kExpiredObjectsWhere));
    objects.Bind(1, repo).Bind(2, *upto);
    MC_RETURN_IF_ERROR(objects.Run());
    MC_ASSIGN_OR_RETURN(Statement rows,
                        db_->Prepare("DELETE FROM versions WHERE repo = ? AND retired_serial IS "
                                     "NOT NULL AND retired_serial <= ?"));
    rows.Bind(1, repo).Bind(2, *upto);
    MC_RETURN_IF_ERROR(rows.Run());
  }
  return tx.Commit();
}

Result<std::unique_ptr<ServableVersionReader>> ServableVersionReader::Open(
    const fs::path& state_dir) {
  MC_ASSIGN_OR_RETURN(auto db, Database::Open(state_dir / "broker.db"));
  MC_RETURN_IF_ERROR(db->Exec("PRAGMA query_only = 1"));
  return std::unique_ptr<ServableVersionReader>(new ServableVersionReader(std::move(db)));
}

Result<ServableVersion> ServableVersionReader::Find(const std::string& repo,
                                                    const std::string& sha256,
                                                    const std::string& path,
                                                    uint64_t keep_versions) {
  ServableVersion out;
  if (!paths_) {
    MC_ASSIGN_OR_RETURN(Statement begin, db_->Prepare("BEGIN"));
    MC_ASSIGN_OR_RETURN(Statement commit, db_->Prepare("COMMIT"));
    // Rows still servable at the current head: current, or retired within the window.
    MC_ASSIGN_OR_RETURN(
        Statement paths,
        db_->Prepare("SELECT path, dev, ino, size, mtime_ns, ctime_ns, "
                     "IFNULL(retired_serial, 0) FROM versions WHERE "
                     "repo = ?1 AND sha256 = ?2 AND (retired_serial IS NULL OR retired_serial + "
                     "?3 > (SELECT serial FROM repos WHERE repo = ?1)) ORDER BY path = ?4 DESC, "
                     "retired_serial IS NOT NULL, path LIMIT 16"));
    MC_ASSIGN_OR_RETURN(Statement object,
                        db_->Prepare("SELECT kind, dev, ino, size, mtime_ns, ctime_ns FROM objects "
                                     "WHERE repo = ? AND sha256 = ?"));
    begin_.emplace(std::move(begin));
    commit_.emplace(std::move(commit));
    paths_.emplace(std::move(paths));
    object_.emplace(std::move(object));
  }
  // One read snapshot for both queries: a publish committing in between
  // cannot pair one serial's paths with another's object.
  begin_->Reset();
  MC_RETURN_IF_ERROR(begin_->Run());
  struct End {
    Statement& paths;
    Statement& object;
    Statement& commit;
    ~End() {
      paths.Reset();
      object.Reset();
      commit.Reset();
      (void)commit.Run();
    }
  } end{*paths_, *object_, *commit_};
  {
    Statement& st = *paths_;
    st.Reset();
    st.Bind(1, repo).BindBlob(2, sha256).Bind(3, static_cast<int64_t>(keep_versions)).Bind(4, path);
    for (;;) {
      MC_ASSIGN_OR_RETURN(bool row, st.Step());
      if (!row) break;
      PublishedVersion v;
      v.sha256 = sha256;
      v.path = st.ColumnText(0);
      v.identity.dev = static_cast<uint64_t>(st.ColumnInt(1));
      v.identity.ino = static_cast<uint64_t>(st.ColumnInt(2));
      v.identity.size = static_cast<uint64_t>(st.ColumnInt(3));
      v.identity.mtime_ns = st.ColumnInt(4);
      v.identity.ctime_ns = st.ColumnInt(5);
      v.retired_serial = static_cast<uint64_t>(st.ColumnInt(6));
      out.paths.push_back(std::move(v));
    }
  }
  if (out.paths.empty()) return out;
  Statement& st = *object_;
  st.Reset();
  st.Bind(1, repo).BindBlob(2, sha256);
  MC_ASSIGN_OR_RETURN(bool row, st.Step());
  if (row) out.object = ObjectFromRow(st, 0);
  return out;
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

Status BrokerState::DropEvents(const std::string& repo, const std::vector<uint64_t>& serials) {
  if (serials.empty()) return Status::Ok();
  Transaction tx(*db_);
  MC_RETURN_IF_ERROR(tx.status());
  MC_ASSIGN_OR_RETURN(Statement st,
                      db_->Prepare("DELETE FROM events WHERE repo = ? AND serial = ?"));
  for (uint64_t serial : serials) {
    st.Reset();
    st.Bind(1, repo).Bind(2, static_cast<int64_t>(serial));
    MC_RETURN_IF_ERROR(st.Run());
  }
  return tx.Commit();
}

Result<std::optional<v1::RepoChanged>> BrokerState::StoredEvent(const std::string& repo,
                                                                uint64_t serial) {
  MC_ASSIGN_OR_RETURN(Statement st,
                      db_->Prepare("SELECT envelope FROM events WHERE repo = ? AND serial = ?"));
  st.Bind(1, repo).Bind(2, static_cast<int64_t>(serial));
  MC_ASSIGN_OR_RETURN(bool row, st.Step());
  if (!row) return std::optional<v1::RepoChanged>();
  v1::Envelope envelope;
  v1::SignedPayload payload;
  if (!envelope.ParseFromString(st.ColumnBlob(0)) || !payload.ParseFromString(envelope.payload()) ||
      !payload.has_repo_changed()) {
    return Status::Corruption("the stored event of " + repo + " serial " + std::to_string(serial) +
                              " does not parse");
  }
  return std::optional<v1::RepoChanged>(std::move(*payload.mutable_repo_changed()));
}

Result<uint64_t> BrokerState::OldestEventSerial(const std::string& repo) {
  MC_ASSIGN_OR_RETURN(Statement st, db_->Prepare("SELECT MIN(serial) FROM events WHERE repo = ?"));
  st.Bind(1, repo);
  MC_ASSIGN_OR_RETURN(bool row, st.Step());
  if (!row || st.ColumnIsNull(0)) return uint64_t{0};
  return static_cast<uint64_t>(st.ColumnInt(0));
}

namespace {

constexpr const char* kRecallColumns = "repo, serial, recall_of, reason, published_unix, key_id";

v1::RecallRecord RecallFromRow(const Statement& st) {
  v1::RecallRecord r;
  r.set_repo(st.ColumnText(0));
  r.set_serial(static_cast<uint64_t>(st.ColumnInt(1)));
  r.set_recall_of(static_cast<uint64_t>(st.ColumnInt(2)));
  r.set_reason(st.ColumnText(3));
  r.set_published_unix(st.ColumnInt(4));
  r.set_key_id(st.ColumnText(5));
  return r;
}

}  // namespace

Result<std::optional<v1::RecallRecord>> BrokerState::RecallAt(const std::string& repo,
                                                              uint64_t serial) {
  MC_ASSIGN_OR_RETURN(Statement st, db_->Prepare(std::string("SELECT ") + kRecallColumns +
                                                 " FROM recalls WHERE repo = ? AND serial = ?"));
  st.Bind(1, repo).Bind(2, static_cast<int64_t>(serial));
  MC_ASSIGN_OR_RETURN(bool row, st.Step());
  if (!row) return std::optional<v1::RecallRecord>();
  return std::optional<v1::RecallRecord>(RecallFromRow(st));
}

Result<std::vector<v1::RecallRecord>> BrokerState::Recalls(size_t per_repo) {
  std::vector<v1::RecallRecord> out;
  MC_ASSIGN_OR_RETURN(Statement st, db_->Prepare(std::string("SELECT ") + kRecallColumns +
                                                 " FROM recalls r WHERE (SELECT count(*) FROM "
                                                 "recalls n WHERE n.repo = r.repo AND n.serial > "
                                                 "r.serial) < ? ORDER BY repo, serial DESC"));
  st.Bind(1, static_cast<int64_t>(per_repo));
  for (;;) {
    MC_ASSIGN_OR_RETURN(bool row, st.Step());
    if (!row) break;
    out.push_back(RecallFromRow(st));
  }
  return out;
}

Status BrokerState::RecordAck(const v1::Ack& ack, int64_t now_unix, const std::string& via,
                              int64_t seen_unix) {
  MC_ASSIGN_OR_RETURN(
      Statement st,
      db_->Prepare(
          "INSERT INTO mirrors(mirror_id, repo, serial, target_serial, state, "
          "last_ack_unix, bytes_fetched, bytes_reused, millis, error, bytes_signature, via, "
          "last_seen_unix) "
          "VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(mirror_id, repo) DO UPDATE "
          "SET serial=excluded.serial, target_serial=excluded.target_serial, "
          "state=excluded.state, last_ack_unix=excluded.last_ack_unix, "
          "bytes_fetched=excluded.bytes_fetched, bytes_reused=excluded.bytes_reused, "
          "millis=excluded.millis, error=excluded.error, "
          "bytes_signature=excluded.bytes_signature, via=excluded.via, "
          "last_seen_unix=max(last_seen_unix, excluded.last_seen_unix)"));
  st.Bind(1, ack.mirror_id()).Bind(2, ack.repo()).Bind(3, static_cast<int64_t>(ack.serial()));
  st.Bind(4, static_cast<int64_t>(ack.target_serial())).Bind(5, static_cast<int64_t>(ack.state()));
  st.Bind(6, now_unix).Bind(7, static_cast<int64_t>(ack.bytes_fetched()));
  st.Bind(8, static_cast<int64_t>(ack.bytes_reused()));
  st.Bind(9, static_cast<int64_t>(ack.seconds() * 1000.0)).Bind(10, ack.error());
  st.Bind(11, static_cast<int64_t>(ack.bytes_signature())).Bind(12, via).Bind(13, seen_unix);
  return st.Run();
}

Status BrokerState::RecordReached(const v1::Ack& ack, int64_t now_ms) {
  // The serial the mirror was at before this report: every serial after it,
  // up to the one it reports, was reached now (a catch-up passes several).
  int64_t before = 0;
  {
    MC_ASSIGN_OR_RETURN(Statement st, db_->Prepare("SELECT serial FROM mirrors WHERE "
                                                   "mirror_id = ? AND repo = ?"));
    st.Bind(1, ack.mirror_id()).Bind(2, ack.repo());
    MC_ASSIGN_OR_RETURN(bool row, st.Step());
    if (row) before = st.ColumnInt(0);
  }
  const auto serial = static_cast<int64_t>(ack.serial());
  if (serial <= before) return Status::Ok();
  MC_ASSIGN_OR_RETURN(Statement st,
                      db_->Prepare("INSERT OR IGNORE INTO reached(repo, serial, mirror_id, at_ms) "
                                   "SELECT repo, serial, ?, ? FROM serial_times "
                                   "WHERE repo = ? AND serial > ? AND serial <= ?"));
  st.Bind(1, ack.mirror_id()).Bind(2, now_ms).Bind(3, ack.repo()).Bind(4, before).Bind(5, serial);
  return st.Run();
}

Status BrokerState::RecordPublished(const std::string& repo, uint64_t serial, int64_t now_ms) {
  MC_ASSIGN_OR_RETURN(Statement st,
                      db_->Prepare("INSERT OR REPLACE INTO serial_times(repo, serial, "
                                   "published_ms) VALUES(?, ?, ?)"));
  st.Bind(1, repo).Bind(2, static_cast<int64_t>(serial)).Bind(3, now_ms);
  MC_RETURN_IF_ERROR(st.Run());
  if (serial <= kPropagationSerials) return Status::Ok();
  const auto cutoff = static_cast<int64_t>(serial - kPropagationSerials);
  for (const char* table : {"serial_times", "reached"}) {
    MC_ASSIGN_OR_RETURN(Statement drop, db_->Prepare(std::string("DELETE FROM ") + table +
                                                     " WHERE repo = ? AND serial <= ?"));
    drop.Bind(1, repo).Bind(2, cutoff);
    MC_RETURN_IF_ERROR(drop.Run());
  }
  return Status::Ok();
}

Status BrokerState::RecordSeen(const std::vector<MirrorSeen>& seen) {
  if (seen.empty()) return Status::Ok();
  // One transaction for the batch: hundreds of mirrors poll every 30 s.
  Transaction tx(*db_);
  MC_RETURN_IF_ERROR(tx.status());
  // A mirror heard from before its first ACK gets a row with the serial it
  // reports (state unspecified until it ACKs).
  MC_ASSIGN_OR_RETURN(
      Statement st,
      db_->Prepare("INSERT INTO mirrors(mirror_id, repo, serial, target_serial, state, "
                   "last_ack_unix, bytes_fetched, bytes_reused, millis, error, bytes_signature, "
                   "last_seen_unix) VALUES(?, ?, ?, 0, 0, 0, 0, 0, 0, '', 0, ?) "
                   "ON CONFLICT(mirror_id, repo) DO UPDATE SET "
                   "last_seen_unix = max(last_seen_unix, excluded.last_seen_unix)"));
  for (const auto& s : seen) {
    st.Reset();
    st.Bind(1, s.mirror_id).Bind(2, s.repo).Bind(3, static_cast<int64_t>(s.serial));
    st.Bind(4, s.seen_unix);
    MC_RETURN_IF_ERROR(st.Run());
  }
  return tx.Commit();
}

Result<std::optional<int64_t>> BrokerState::PublishedAfter(const std::string& repo,
                                                           uint64_t serial) {
  MC_ASSIGN_OR_RETURN(Statement st,
                      db_->Prepare("SELECT received_unix FROM events WHERE repo = ? AND serial > ? "
                                   "ORDER BY serial LIMIT 1"));
  st.Bind(1, repo).Bind(2, static_cast<int64_t>(serial));
  MC_ASSIGN_OR_RETURN(bool row, st.Step());
  if (!row) return std::optional<int64_t>();
  return std::optional<int64_t>(st.ColumnInt(0));
}

Result<std::vector<v1::SerialPropagation>> BrokerState::Propagation(const std::string& repo,
                                                                    size_t serials) {
  std::vector<v1::SerialPropagation> out;
  MC_ASSIGN_OR_RETURN(Statement times,
                      db_->Prepare("SELECT serial, published_ms FROM serial_times WHERE repo = ? "
                                   "ORDER BY serial DESC LIMIT ?"));
  times.Bind(1, repo).Bind(2, static_cast<int64_t>(serials));
  for (;;) {
    MC_ASSIGN_OR_RETURN(bool row, times.Step());
    if (!row) break;
    v1::SerialPropagation p;
    p.set_repo(repo);
    p.set_serial(static_cast<uint64_t>(times.ColumnInt(0)));
    p.set_published_ms(times.ColumnInt(1));
    out.push_back(std::move(p));
  }
  MC_ASSIGN_OR_RETURN(Statement reached,
                      db_->Prepare("SELECT at_ms FROM reached WHERE repo = ? AND serial = ? "
                                   "ORDER BY at_ms"));
  for (auto& p : out) {
    reached.Reset();
    reached.Bind(1, repo).Bind(2, static_cast<int64_t>(p.serial()));
    for (;;) {
      MC_ASSIGN_OR_RETURN(bool row, reached.Step());
      if (!row) break;
      p.add_reached_ms(reached.ColumnInt(0));
    }
  }
  return out;
}

Result<std::vector<v1::MirrorStatus>> BrokerState::Mirrors() {
  std::vector<v1::MirrorStatus> out;
  MC_ASSIGN_OR_RETURN(Statement st,
                      db_->Prepare("SELECT mirror_id, repo, serial, target_serial, state, "
                                   "last_ack_unix, bytes_fetched, bytes_reused, millis, error, "
                                   "bytes_signature, last_seen_unix, via FROM mirrors "
                                   "ORDER BY repo, mirror_id"));
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
    m.set_last_seen_unix(std::max(st.ColumnInt(11), m.last_ack_unix()));
    m.set_via(st.ColumnText(12));
    out.push_back(std::move(m));
  }
  return out;
}

Status BrokerState::TouchObjects(const std::string& repo, uint64_t serial,
                                 const std::vector<std::string>& ids) {
  // One transaction: a publish names every chunk of its manifest (about one
  // per thousand entries), and a commit per row is a disk sync per row.
  Transaction tx(*db_);
  MC_RETURN_IF_ERROR(tx.status());
  MC_ASSIGN_OR_RETURN(Statement st,
                      db_->Prepare("INSERT INTO manifest_objects(repo, id, last_serial) "
                                   "VALUES(?, ?, ?) ON CONFLICT(repo, id) DO UPDATE SET "
                                   "last_serial = max(last_serial, excluded.last_serial)"));
  for (const auto& id : ids) {
    st.Reset();
    st.Bind(1, repo).BindBlob(2, id).Bind(3, static_cast<int64_t>(serial));
    MC_RETURN_IF_ERROR(st.Run());
  }
  return tx.Commit();
}

Status BrokerState::Prune(const std::string& repo, uint64_t keep_events, uint64_t keep_manifests) {
  // The head's event and manifest always stay: catch-up, bootstrap and the
  // next publish's check need them.
  keep_events = std::max<uint64_t>(keep_events, 1);
  keep_manifests = std::max<uint64_t>(keep_manifests, 1);
  const uint64_t head = Head(repo).serial;
  if (head > keep_events) {
    for (const char* table : {"events", "recalls"}) {
      MC_ASSIGN_OR_RETURN(Statement st, db_->Prepare(std::string("DELETE FROM ") + table +
                                                     " WHERE repo = ? AND serial <= ?"));
      st.Bind(1, repo).Bind(2, static_cast<int64_t>(head - keep_events));
      MC_RETURN_IF_ERROR(st.Run());
    }
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
  // The rows go in one transaction; the files only after it commits, so a
  // row never names a file that is gone.
  std::vector<std::string> unused;
  {
    Transaction tx(*db_);
    MC_RETURN_IF_ERROR(tx.status());
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
      if (!used) unused.push_back(id);
    }
    MC_RETURN_IF_ERROR(tx.Commit());
  }
  for (const auto& id : unused) {
    if (Status s = objects_.Remove(id); !s.ok()) {
      MC_LOG(warning) << "cannot remove an old manifest object: " << s.ToString();
    }
  }
  return Status::Ok();
}

}  // namespace mirrorcast
