#include "core/store/sqlite.h"

#include <gtest/gtest.h>

#include <string>

#include "tests/support/temp_dir.h"

namespace mirrorcast {
namespace {

using testing::TempDir;

std::unique_ptr<Database> OpenOrDie(const std::filesystem::path& path) {
  auto db = Database::Open(path);
  EXPECT_TRUE(db.ok()) << db.status().ToString();
  return db.ok() ? std::move(db).value() : nullptr;
}

std::string PragmaText(Database& db, const char* sql) {
  auto stmt = db.Prepare(sql);
  EXPECT_TRUE(stmt.ok()) << stmt.status().ToString();
  auto row = stmt->Step();
  EXPECT_TRUE(row.ok() && *row);
  return stmt->ColumnText(0);
}

int64_t Count(Database& db, const char* table) {
  auto stmt = db.Prepare(std::string("SELECT COUNT(*) FROM ") + table);
  EXPECT_TRUE(stmt.ok());
  auto row = stmt->Step();
  EXPECT_TRUE(row.ok() && *row);
  return stmt->ColumnInt(0);
}

TEST(SqliteTest, OpenSetsDurabilityPragmas) {
  TempDir dir;
  auto db = OpenOrDie(dir / "state.db");
  ASSERT_NE(db, nullptr);
  EXPECT_EQ(PragmaText(*db, "PRAGMA journal_mode"), "wal");
  EXPECT_EQ(PragmaText(*db, "PRAGMA synchronous"), "2");  // FULL
  EXPECT_EQ(PragmaText(*db, "PRAGMA foreign_keys"), "1");
  EXPECT_EQ(PragmaText(*db, "PRAGMA busy_timeout"), "5000");
}

TEST(SqliteTest, OpenFailsInMissingDirectory) {
  TempDir dir;
  auto db = Database::Open(dir / "no" / "such" / "dir" / "state.db");
  ASSERT_FALSE(db.ok());
  EXPECT_NE(db.status().message().find("state.db"), std::string::npos);
}

TEST(SqliteTest, BindAndReadBackAllTypes) {
  TempDir dir;
  auto db = OpenOrDie(dir / "state.db");
  ASSERT_NE(db, nullptr);
  ASSERT_TRUE(db->Exec("CREATE TABLE t(i INTEGER, s TEXT, b BLOB, n TEXT, d REAL)").ok());
  auto insert = db->Prepare("INSERT INTO t VALUES (?, ?, ?, ?, 2.5)");
  ASSERT_TRUE(insert.ok()) << insert.status().ToString();
  const std::string blob("a\0b\xff", 4);
  {
    // Bound from a temporary that dies before Run(): SQLITE_TRANSIENT copies.
    std::string text = "hello";
    insert->Bind(1, int64_t{-1} << 40)
        .Bind(2, std::string_view(text))
        .BindBlob(3, blob)
        .BindNull(4);
    text.assign("XXXXX");
  }
  ASSERT_TRUE(insert->Run().ok());
  EXPECT_EQ(db->LastInsertRowId(), 1);

  auto select = db->Prepare("SELECT i, s, b, n, d FROM t");
  ASSERT_TRUE(select.ok());
  auto row = select->Step();
  ASSERT_TRUE(row.ok() && *row);
  EXPECT_EQ(select->ColumnInt(0), int64_t{-1} << 40);
  EXPECT_EQ(select->ColumnText(1), "hello");
  EXPECT_EQ(select->ColumnBlob(2), blob);
  EXPECT_TRUE(select->ColumnIsNull(3));
  EXPECT_FALSE(select->ColumnIsNull(1));
  EXPECT_DOUBLE_EQ(select->ColumnDouble(4), 2.5);
  row = select->Step();
  ASSERT_TRUE(row.ok());
  EXPECT_FALSE(*row);
}

TEST(SqliteTest, EmptyTextBindsAsEmptyNotNull) {
  TempDir dir;
  auto db = OpenOrDie(dir / "state.db");
  ASSERT_NE(db, nullptr);
  ASSERT_TRUE(db->Exec("CREATE TABLE t(s TEXT NOT NULL, b BLOB NOT NULL)").ok());
  auto insert = db->Prepare("INSERT INTO t VALUES (?, ?)");
  ASSERT_TRUE(insert.ok());
  ASSERT_TRUE(insert->Bind(1, std::string_view()).BindBlob(2, std::string_view()).Run().ok());
  EXPECT_EQ(Count(*db, "t"), 1);
}

TEST(SqliteTest, StatementIsReusableAfterReset) {
  TempDir dir;
  auto db = OpenOrDie(dir / "state.db");
  ASSERT_NE(db, nullptr);
  ASSERT_TRUE(db->Exec("CREATE TABLE t(k INTEGER PRIMARY KEY, v TEXT)").ok());
  auto insert = db->Prepare("INSERT INTO t VALUES (?, ?)");
  ASSERT_TRUE(insert.ok());
  for (int64_t i = 0; i < 10; ++i) {
    insert->Reset();
    ASSERT_TRUE(insert->Bind(1, i).Bind(2, "v" + std::to_string(i)).Run().ok());
  }
  EXPECT_EQ(Count(*db, "t"), 10);
  // A constraint violation is an error, and the statement stays usable.
  insert->Reset();
  Status dup = insert->Bind(1, int64_t{3}).Bind(2, "again").Run();
  EXPECT_FALSE(dup.ok());
  EXPECT_NE(dup.message().find("INSERT INTO t"), std::string::npos) << dup.message();
  insert->Reset();
  EXPECT_TRUE(insert->Bind(1, int64_t{42}).Bind(2, "x").Run().ok());
  EXPECT_EQ(Count(*db, "t"), 11);
}

TEST(SqliteTest, ErrorsCarryMessageAndSql) {
  TempDir dir;
  auto db = OpenOrDie(dir / "state.db");
  ASSERT_NE(db, nullptr);
  Status exec = db->Exec("SELEKT 1");
  ASSERT_FALSE(exec.ok());
  EXPECT_NE(exec.message().find("syntax error"), std::string::npos) << exec.message();
  EXPECT_NE(exec.message().find("SELEKT 1"), std::string::npos) << exec.message();

  auto prep = db->Prepare("SELECT * FROM missing_table");
  ASSERT_FALSE(prep.ok());
  EXPECT_NE(prep.status().message().find("no such table"), std::string::npos);
  EXPECT_NE(prep.status().message().find("missing_table"), std::string::npos);
}

TEST(SqliteTest, ForeignKeysAreEnforced) {
  TempDir dir;
  auto db = OpenOrDie(dir / "state.db");
  ASSERT_NE(db, nullptr);
  ASSERT_TRUE(db->Exec("CREATE TABLE p(id INTEGER PRIMARY KEY);"
                       "CREATE TABLE c(pid INTEGER REFERENCES p(id));")
                  .ok());
  EXPECT_FALSE(db->Exec("INSERT INTO c VALUES (7)").ok());
  EXPECT_TRUE(db->Exec("INSERT INTO p VALUES (7); INSERT INTO c VALUES (7)").ok());
}

TEST(SqliteTest, TransactionRollsBackWithoutCommit) {
  TempDir dir;
  auto db = OpenOrDie(dir / "state.db");
  ASSERT_NE(db, nullptr);
  ASSERT_TRUE(db->Exec("CREATE TABLE t(v INTEGER)").ok());
  {
    Transaction txn(*db);
    ASSERT_TRUE(txn.status().ok());
    ASSERT_TRUE(db->Exec("INSERT INTO t VALUES (1)").ok());
    EXPECT_EQ(Count(*db, "t"), 1);
  }
  EXPECT_EQ(Count(*db, "t"), 0);
  {
    Transaction txn(*db);
    ASSERT_TRUE(txn.status().ok());
    ASSERT_TRUE(db->Exec("INSERT INTO t VALUES (2)").ok());
    ASSERT_TRUE(txn.Commit().ok());
    EXPECT_FALSE(txn.Commit().ok());  // only once
  }
  EXPECT_EQ(Count(*db, "t"), 1);
}

TEST(SqliteTest, NestedBeginFailsAndDoesNotRollBackOuter) {
  TempDir dir;
  auto db = OpenOrDie(dir / "state.db");
  ASSERT_NE(db, nullptr);
  ASSERT_TRUE(db->Exec("CREATE TABLE t(v INTEGER)").ok());
  Transaction outer(*db);
  ASSERT_TRUE(outer.status().ok());
  ASSERT_TRUE(db->Exec("INSERT INTO t VALUES (1)").ok());
  {
    Transaction inner(*db);
    EXPECT_FALSE(inner.status().ok());
    EXPECT_FALSE(inner.Commit().ok());
  }
  ASSERT_TRUE(outer.Commit().ok());
  EXPECT_EQ(Count(*db, "t"), 1);
}

TEST(SqliteTest, CommittedDataSurvivesReopen) {
  TempDir dir;
  {
    auto db = OpenOrDie(dir / "state.db");
    ASSERT_NE(db, nullptr);
    ASSERT_TRUE(db->Exec("CREATE TABLE t(v TEXT)").ok());
    Transaction txn(*db);
    auto insert = db->Prepare("INSERT INTO t VALUES (?)");
    ASSERT_TRUE(insert.ok());
    ASSERT_TRUE(insert->Bind(1, "kept").Run().ok());
    ASSERT_TRUE(txn.Commit().ok());
  }
  auto db = OpenOrDie(dir / "state.db");
  ASSERT_NE(db, nullptr);
  auto select = db->Prepare("SELECT v FROM t");
  ASSERT_TRUE(select.ok());
  auto row = select->Step();
  ASSERT_TRUE(row.ok() && *row);
  EXPECT_EQ(select->ColumnText(0), "kept");
}

TEST(SqliteTest, StatementMoveTransfersOwnership) {
  TempDir dir;
  auto db = OpenOrDie(dir / "state.db");
  ASSERT_NE(db, nullptr);
  auto a = db->Prepare("SELECT 1");
  auto b = db->Prepare("SELECT 2");
  ASSERT_TRUE(a.ok() && b.ok());
  Statement s = std::move(*a);
  s = std::move(*b);  // finalizes the first statement
  auto row = s.Step();
  ASSERT_TRUE(row.ok() && *row);
  EXPECT_EQ(s.ColumnInt(0), 2);
}

}  // namespace
}  // namespace mirrorcast
