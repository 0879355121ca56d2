// MirrorState: the record never goes backwards, and refusals are kept
// (bounded) for the operator.
#include "core/mirror/mirror_state.h"

#include <gtest/gtest.h>

#include "tests/support/entries.h"
#include "tests/support/temp_dir.h"

namespace mirrorcast::testing {
namespace {

std::vector<v1::Change> Adding(const std::string& path, const std::string& content) {
  v1::Change c;
  c.set_kind(v1::CHANGE_ADDED);
  *c.mutable_entry() = FileEntryOf(path, content);
  return {c};
}

std::string DigestWith(const std::vector<std::pair<std::string, std::string>>& files) {
  Manifest m("demo", 0);
  for (const auto& [path, content] : files) m.Put(FileEntryOf(path, content));
  return m.Digest();
}

TEST(MirrorStateTest, RefusesToRecordASerialThatIsNotNewer) {
  TempDir dir("mirrorcast-state");
  auto state = MirrorState::Open(dir.path(), "demo");
  ASSERT_TRUE(state.ok()) << state.status().ToString();
  ASSERT_TRUE((*state)->Adopt(Manifest("demo", 0)).ok());
  const std::string one = DigestWith({{"a", "1"}});
  ASSERT_TRUE((*state)->CommitApply(2, one, Adding("a", "1")).ok());
  const std::string two = DigestWith({{"a", "1"}, {"b", "2"}});
  for (uint64_t serial : {uint64_t{1}, uint64_t{2}}) {
    Status s = (*state)->CommitApply(serial, two, Adding("b", "2"));
    EXPECT_EQ(s.code(), Status::Code::kInternal) << serial << ": " << s.ToString();
    EXPECT_NE(s.message().find("never go backwards"), std::string::npos) << s.ToString();
  }
  EXPECT_EQ((*state)->serial(), 2u);
  EXPECT_EQ((*state)->digest(), one);
  // Reopened: still serial 2, and serial 3 goes on top.
  state->reset();
  state = MirrorState::Open(dir.path(), "demo");
  ASSERT_TRUE(state.ok());
  EXPECT_EQ((*state)->serial(), 2u);
  EXPECT_TRUE((*state)->CommitApply(3, two, Adding("b", "2")).ok());
}

TEST(MirrorStateTest, KeepsTheNewestRefusalsBounded) {
  TempDir dir("mirrorcast-state");
  auto state = MirrorState::Open(dir.path(), "demo");
  ASSERT_TRUE(state.ok());
  ASSERT_TRUE((*state)->RecordRefusal(1, "rollback: serial 1", 100).ok());
  ASSERT_TRUE((*state)->RecordRefusal(1, "rollback: serial 1", 200).ok());
  auto refusals = (*state)->Refusals();
  ASSERT_TRUE(refusals.ok());
  ASSERT_EQ(refusals->size(), 1u);
  EXPECT_EQ((*refusals)[0].count, 2u);
  EXPECT_EQ((*refusals)[0].first_unix, 100);
  EXPECT_EQ((*refusals)[0].last_unix, 200);
  for (int i = 0; i < 150; ++i) {
    ASSERT_TRUE((*state)->RecordRefusal(7, "reason " + std::to_string(i), 300 + i).ok());
  }
  refusals = (*state)->Refusals(1000);
  ASSERT_TRUE(refusals.ok());
  EXPECT_EQ(refusals->size(), 100u);
  EXPECT_EQ(refusals->front().reason, "reason 149");
}

TEST(MirrorStateTest, KeySetAndItsVersionSurviveAReopen) {
  TempDir dir("mirrorcast-state");
  auto state = MirrorState::Open(dir.path(), "demo");
  ASSERT_TRUE(state.ok());
  auto none = (*state)->StoredKeySet();
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());
  ASSERT_TRUE((*state)->Adopt(Manifest("demo", 0)).ok());
  ASSERT_TRUE((*state)->StoreKeySet(1, "set one").ok());
  const std::string one = DigestWith({{"a", "1"}});
  ASSERT_TRUE((*state)->CommitApply(5, one, Adding("a", "1")).ok());
  EXPECT_EQ((*state)->serial_keyset_version(), 1u);
  ASSERT_TRUE((*state)->StoreKeySet(2, "set two").ok());
  EXPECT_EQ((*state)->serial_keyset_version(), 1u) << "serial 5 was accepted under version 1";
  state->reset();
  state = MirrorState::Open(dir.path(), "demo");
  ASSERT_TRUE(state.ok());
  auto stored = (*state)->StoredKeySet();
  ASSERT_TRUE(stored.ok());
  ASSERT_TRUE(stored->has_value());
  EXPECT_EQ(**stored, "set two");
  EXPECT_EQ((*state)->serial(), 5u);
  EXPECT_EQ((*state)->serial_keyset_version(), 1u);
}

TEST(MirrorStateTest, SerialResetLowersTheRecordedSerialDurablyAndKeepsTheTree) {
  TempDir dir("mirrorcast-state");
  auto state = MirrorState::Open(dir.path(), "demo");
  ASSERT_TRUE(state.ok());
  ASSERT_TRUE((*state)->Adopt(Manifest("demo", 0)).ok());
  const std::string inflated = DigestWith({{"evil", "x"}});
  ASSERT_TRUE((*state)->CommitApply(1'000'000'000, inflated, Adding("evil", "x")).ok());
  ASSERT_TRUE((*state)->StoreKeySet(2, "set two", uint64_t{3}).ok());
  EXPECT_EQ((*state)->serial(), 3u);
  EXPECT_EQ((*state)->digest(), inflated) << "the tree's manifest is kept";
  state->reset();
  state = MirrorState::Open(dir.path(), "demo");
  ASSERT_TRUE(state.ok());
  EXPECT_EQ((*state)->serial(), 3u);
  EXPECT_EQ((*state)->serial_keyset_version(), 2u);
  // Serials still only move forward from there.
  EXPECT_FALSE((*state)->CommitApply(3, inflated, {}).ok());
  EXPECT_TRUE(
      (*state)->CommitApply(4, DigestWith({{"evil", "x"}, {"b", "2"}}), Adding("b", "2")).ok());
}

TEST(MirrorStateTest, SchemaThreeStateIsUpgradedInPlace) {
  TempDir dir("mirrorcast-state");
  {
    auto state = MirrorState::Open(dir.path(), "demo");
    ASSERT_TRUE(state.ok());
    ASSERT_TRUE((*state)->Adopt(Manifest("demo", 0)).ok());
    ASSERT_TRUE((*state)->CommitApply(7, DigestWith({{"a", "1"}}), Adding("a", "1")).ok());
  }
  {
    // What a schema-3 state looks like: no key-set table or column.
    auto db = Database::Open(dir.path() / "subscriber.db");
    ASSERT_TRUE(db.ok());
    ASSERT_TRUE((*db)
                    ->Exec("ALTER TABLE head DROP COLUMN keyset_version; DROP TABLE keyset; "
                           "PRAGMA user_version = 3")
                    .ok());
  }
  auto state = MirrorState::Open(dir.path(), "demo");
  ASSERT_TRUE(state.ok()) << state.status().ToString();
  EXPECT_EQ((*state)->serial(), 7u) << "upgraded, not rebuilt";
  EXPECT_EQ((*state)->serial_keyset_version(), 0u);
  EXPECT_TRUE((*state)->StoreKeySet(1, "set one").ok());
}

}  // namespace
}  // namespace mirrorcast::testing
