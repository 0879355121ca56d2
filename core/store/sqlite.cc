#include "core/store/sqlite.h"

#include <utility>

#include "core/base/check.h"
#include "core/base/log.h"

namespace mirrorcast {
namespace {

// SQLITE_FULL means the disk is full; everything else is an I/O-level failure
// of the store from the caller's point of view.
Status SqliteStatus(int rc, std::string msg) {
  if ((rc & 0xff) == SQLITE_FULL) return Status::ResourceExhausted(std::move(msg));
  if ((rc & 0xff) == SQLITE_CORRUPT || (rc & 0xff) == SQLITE_NOTADB) {
    return Status::Corruption(std::move(msg));
  }
  return Status::IoError(std::move(msg));
}

Status SqliteError(sqlite3* db, int rc, std::string_view what, std::string_view sql) {
  std::string msg(what);
  msg += ": ";
  msg += db != nullptr ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
  if (!sql.empty()) {
    msg += " [sql: ";
    msg += sql;
    msg += "]";
  }
  return SqliteStatus(rc, std::move(msg));
}

std::string_view StatementSql(sqlite3_stmt* stmt) {
  const char* sql = stmt != nullptr ? sqlite3_sql(stmt) : nullptr;
  return sql != nullptr ? std::string_view(sql) : std::string_view();
}

}  // namespace

// ---------------------------------------------------------------------------
// Statement
// ---------------------------------------------------------------------------

Statement::Statement(Statement&& other) noexcept
    : db_(std::exchange(other.db_, nullptr)), stmt_(std::exchange(other.stmt_, nullptr)) {}

Statement& Statement::operator=(Statement&& other) noexcept {
  if (this != &other) {
    if (stmt_ != nullptr) sqlite3_finalize(stmt_);
    db_ = std::exchange(other.db_, nullptr);
    stmt_ = std::exchange(other.stmt_, nullptr);
  }
  return *this;
}

Statement::~Statement() {
  if (stmt_ != nullptr) sqlite3_finalize(stmt_);
}

// Bind errors (index out of range, misuse) are our own bugs: the SQL and the
// indexes are written in our code, never taken from input.
Statement& Statement::Bind(int index, int64_t value) {
  int rc = sqlite3_bind_int64(stmt_, index, value);
  MC_CHECK(rc == SQLITE_OK, "SQLite bind failed (our SQL or index)");
  return *this;
}

Statement& Statement::Bind(int index, std::string_view text) {
  // A non-null pointer even for an empty view, so "" binds as '' and not NULL.
  const char* data = text.data() != nullptr ? text.data() : "";
  int rc = sqlite3_bind_text64(stmt_, index, data, text.size(), SQLITE_TRANSIENT, SQLITE_UTF8);
  MC_CHECK(rc == SQLITE_OK, "SQLite bind failed (our SQL or index)");
  return *this;
}

Statement& Statement::BindBlob(int index, std::string_view blob) {
  const char* data = blob.data() != nullptr ? blob.data() : "";
  int rc = sqlite3_bind_blob64(stmt_, index, data, blob.size(), SQLITE_TRANSIENT);
  MC_CHECK(rc == SQLITE_OK, "SQLite bind failed (our SQL or index)");
  return *this;
}

Statement& Statement::BindNull(int index) {
  int rc = sqlite3_bind_null(stmt_, index);
  MC_CHECK(rc == SQLITE_OK, "SQLite bind failed (our SQL or index)");
  return *this;
}

Result<bool> Statement::Step() {
  int rc = sqlite3_step(stmt_);
  if (rc == SQLITE_ROW) return true;
  if (rc == SQLITE_DONE) return false;
  Status status = SqliteError(db_, rc, "sqlite step", StatementSql(stmt_));
  // Leave the statement reusable after an error (a constraint violation, say).
  sqlite3_reset(stmt_);
  return status;
}

Status Statement::Run() {
  for (;;) {
    Result<bool> row = Step();
    if (!row.ok()) return row.status();
    if (!*row) break;
  }
  // Rewind so the statement does not hold a read transaction open; bindings
  // stay in place (Reset() clears them).
  sqlite3_reset(stmt_);
  return Status::Ok();
}

void Statement::Reset() {
  sqlite3_reset(stmt_);
  sqlite3_clear_bindings(stmt_);
}

int64_t Statement::ColumnInt(int column) const { return sqlite3_column_int64(stmt_, column); }

double Statement::ColumnDouble(int column) const { return sqlite3_column_double(stmt_, column); }

std::string Statement::ColumnText(int column) const {
  const unsigned char* text = sqlite3_column_text(stmt_, column);
  int size = sqlite3_column_bytes(stmt_, column);
  if (text == nullptr || size <= 0) return {};
  return std::string(reinterpret_cast<const char*>(text), static_cast<size_t>(size));
}

std::string Statement::ColumnBlob(int column) const {
  const void* blob = sqlite3_column_blob(stmt_, column);
  int size = sqlite3_column_bytes(stmt_, column);
  if (blob == nullptr || size <= 0) return {};
  return std::string(static_cast<const char*>(blob), static_cast<size_t>(size));
}

bool Statement::ColumnIsNull(int column) const {
  return sqlite3_column_type(stmt_, column) == SQLITE_NULL;
}

// ---------------------------------------------------------------------------
// Database
// ---------------------------------------------------------------------------

Result<std::unique_ptr<Database>> Database::Open(const std::filesystem::path& path) {
  sqlite3* raw = nullptr;
  int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX;
  int rc = sqlite3_open_v2(path.c_str(), &raw, flags, nullptr);
  if (rc != SQLITE_OK) {
    Status status = SqliteError(raw, rc, "open database " + path.string(), {});
    sqlite3_close(raw);  // sqlite3_open_v2 may allocate a handle even on failure
    return status;
  }
  sqlite3_extended_result_codes(raw, 1);
  std::unique_ptr<Database> db(new Database(raw));
  rc = sqlite3_busy_timeout(raw, 5000);
  if (rc != SQLITE_OK) return SqliteError(raw, rc, "busy_timeout " + path.string(), {});

  // journal_mode answers with the mode actually in effect: check it, since a
  // database on a filesystem without shared memory support silently stays in
  // rollback mode.
  Result<Statement> wal = db->Prepare("PRAGMA journal_mode=WAL");
  if (!wal.ok()) return wal.status().WithContext(path.string());
  Result<bool> row = wal->Step();
  if (!row.ok()) return row.status().WithContext(path.string());
  if (!*row || wal->ColumnText(0) != "wal") {
    return Status::IoError("cannot enable WAL journal mode on " + path.string() + " (got '" +
                           (*row ? wal->ColumnText(0) : std::string()) + "')");
  }
  wal->Reset();

  for (std::string_view pragma : {"PRAGMA synchronous=FULL", "PRAGMA foreign_keys=ON"}) {
    Status status = db->Exec(pragma);
    if (!status.ok()) return status.WithContext(path.string());
  }
  return db;
}

Database::~Database() {
  // sqlite3_close_v2 defers the close until every statement is finalized, so
  // a Statement outliving its Database is not a use-after-free of the handle.
  if (db_ != nullptr) sqlite3_close_v2(db_);
}

Status Database::Exec(std::string_view sql) {
  std::string text(sql);  // sqlite3_exec needs NUL termination
  char* error = nullptr;
  int rc = sqlite3_exec(db_, text.c_str(), nullptr, nullptr, &error);
  if (rc != SQLITE_OK) {
    std::string msg = "sqlite exec: ";
    msg += error != nullptr ? error : sqlite3_errmsg(db_);
    sqlite3_free(error);
    msg += " [sql: ";
    msg += sql;
    msg += "]";
    return SqliteStatus(rc, std::move(msg));
  }
  return Status::Ok();
}

Result<Statement> Database::Prepare(std::string_view sql) {
  sqlite3_stmt* stmt = nullptr;
  const char* tail = nullptr;
  int rc = sqlite3_prepare_v3(db_, sql.data(), static_cast<int>(sql.size()),
                              SQLITE_PREPARE_PERSISTENT, &stmt, &tail);
  if (rc != SQLITE_OK) {
    if (stmt != nullptr) sqlite3_finalize(stmt);
    return SqliteError(db_, rc, "sqlite prepare", sql);
  }
  if (stmt == nullptr) {
    return Status::InvalidArgument("sqlite prepare: empty statement [sql: " + std::string(sql) +
                                   "]");
  }
  return Statement(db_, stmt);
}

int64_t Database::LastInsertRowId() const { return sqlite3_last_insert_rowid(db_); }

// ---------------------------------------------------------------------------
// Transaction
// ---------------------------------------------------------------------------

Transaction::Transaction(Database& db) : db_(db), begin_status_(db.Begin()) {
  done_ = !begin_status_.ok();  // nothing to roll back if BEGIN failed
}

Transaction::~Transaction() {
  if (done_) return;
  // After a failed COMMIT SQLite may already have rolled back on its own.
  if (sqlite3_get_autocommit(db_.raw()) != 0) return;
  Status status = db_.Rollback();
  if (!status.ok()) MC_LOG(error) << "transaction rollback failed: " << status.ToString();
}

Status Transaction::Commit() {
  if (!begin_status_.ok()) return begin_status_;
  if (done_) return Status::FailedPrecondition("transaction already finished");
  Status status = db_.Commit();
  // On failure (SQLITE_BUSY on commit, disk full) the transaction may still be
  // open; the destructor rolls it back.
  if (status.ok()) done_ = true;
  return status;
}

}  // namespace mirrorcast
