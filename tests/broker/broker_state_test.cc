// BrokerState: what survives a restart (events, heads, the mirror table), the
// event log's order and limits, pruning of events and manifests, the
// migration of a broker.db written before MirrorStatus.bytes_signature, and
// the servable-version table (keep window, pruning, pending objects) as the
// content workers' ServableVersionReader sees it.
#include "broker/broker_state.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <set>
#include <string>

#include "core/crypto/sha256.h"
#include "core/store/sqlite.h"
#include "tests/support/temp_dir.h"
#include "tests/support/tree.h"

namespace mirrorcast::testing {
namespace {

namespace fs = std::filesystem;

RepoHead HeadAt(uint64_t serial) {
  return RepoHead{serial, Sha256Of("manifest " + std::to_string(serial)), serial * 10};
}

std::string EnvelopeOf(const std::string& repo, uint64_t serial) {
  return "envelope " + repo + " " + std::to_string(serial);
}

v1::Ack MakeAck(const std::string& mirror, const std::string& repo, uint64_t serial) {
  v1::Ack ack;
  ack.set_mirror_id(mirror);
  ack.set_repo(repo);
  ack.set_serial(serial);
  ack.set_target_serial(serial);
  ack.set_state(v1::ACK_APPLIED);
  ack.set_bytes_fetched(1000 + serial);
  ack.set_bytes_reused(2000 + serial);
  ack.set_bytes_signature(300 + serial);
  ack.set_seconds(1.5);
  return ack;
}

class BrokerStateTest : public ::testing::Test {
 protected:
  std::unique_ptr<BrokerState> Open() {
    auto state = BrokerState::Open(dir_.path());
    EXPECT_TRUE(state.ok()) << state.status().ToString();
    return state.ok() ? std::move(state).value() : nullptr;
  }

  // Commits serials 1..n of `repo`.
  void CommitSerials(BrokerState& state, const std::string& repo, uint64_t n) {
    for (uint64_t s = 1; s <= n; ++s) {
      ASSERT_TRUE(state.CommitEvent(repo, HeadAt(s), EnvelopeOf(repo, s), 1700000000 + s).ok());
    }
  }

  TempDir dir_{"mirrorcast-broker-state"};
};

TEST_F(BrokerStateTest, EmptyStateHasNoRepos) {
  auto state = Open();
  ASSERT_NE(state, nullptr);
  EXPECT_TRUE(state->repos().empty());
  EXPECT_EQ(state->Head("main").serial, 0u);
  EXPECT_TRUE(state->Head("main").manifest_sha256.empty());
  auto events = state->EventsSince("main", 0, 100);
  ASSERT_TRUE(events.ok());
  EXPECT_TRUE(events->envelopes.empty());
  EXPECT_EQ(events->oldest_serial, 0u);
}

TEST_F(BrokerStateTest, CommittedEventsAndHeadsSurviveReopen) {
  {
    auto state = Open();
    ASSERT_NE(state, nullptr);
    CommitSerials(*state, "main", 3);
    CommitSerials(*state, "other", 1);
    EXPECT_EQ(state->Head("main").serial, 3u);
  }
  auto state = Open();
  ASSERT_NE(state, nullptr);
  ASSERT_EQ(state->repos().size(), 2u);
  const RepoHead head = state->Head("main");
  EXPECT_EQ(head.serial, 3u);
  EXPECT_EQ(head.manifest_sha256, HeadAt(3).manifest_sha256);
  EXPECT_EQ(head.manifest_entries, 30u);
  EXPECT_EQ(state->Head("other").serial, 1u);
  EXPECT_EQ(state->Head("absent").serial, 0u);

  auto events = state->EventsSince("main", 0, 100);
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->envelopes.size(), 3u);
  EXPECT_EQ(events->envelopes[0], EnvelopeOf("main", 1));
  EXPECT_EQ(events->envelopes[2], EnvelopeOf("main", 3));
}

TEST_F(BrokerStateTest, EventsSinceIsOrderedLimitedAndPerRepo) {
  auto state = Open();
  ASSERT_NE(state, nullptr);
  CommitSerials(*state, "main", 5);
  CommitSerials(*state, "other", 2);

  auto events = state->EventsSince("main", 1, 2);
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->envelopes.size(), 2u);
  EXPECT_EQ(events->envelopes[0], EnvelopeOf("main", 2));
  EXPECT_EQ(events->envelopes[1], EnvelopeOf("main", 3));
  EXPECT_EQ(events->oldest_serial, 1u);

  events = state->EventsSince("main", 3, 100);
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->envelopes.size(), 2u);
  EXPECT_EQ(events->envelopes[0], EnvelopeOf("main", 4));
  EXPECT_EQ(events->envelopes[1], EnvelopeOf("main", 5));

  events = state->EventsSince("main", 5, 100);
  ASSERT_TRUE(events.ok());
  EXPECT_TRUE(events->envelopes.empty());
  EXPECT_EQ(events->oldest_serial, 1u);

  events = state->EventsSince("other", 0, 100);
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->envelopes.size(), 2u);
  EXPECT_EQ(events->envelopes[1], EnvelopeOf("other", 2));
}

TEST_F(BrokerStateTest, CommittingASerialTwiceFailsAndKeepsTheHead) {
  auto state = Open();
  ASSERT_NE(state, nullptr);
  CommitSerials(*state, "main", 2);
  RepoHead other = HeadAt(2);
  other.manifest_sha256 = Sha256Of("a different manifest");
  EXPECT_FALSE(state->CommitEvent("main", other, "another envelope", 1700000100).ok());
  EXPECT_EQ(state->Head("main").manifest_sha256, HeadAt(2).manifest_sha256);
  auto events = state->EventsSince("main", 1, 100);
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->envelopes.size(), 1u);
  EXPECT_EQ(events->envelopes[0], EnvelopeOf("main", 2));
}

TEST_F(BrokerStateTest, AckUpsertsOneRowPerMirrorAndRepo) {
  auto state = Open();
  ASSERT_NE(state, nullptr);
  ASSERT_TRUE(state->RecordAck(MakeAck("mirror-b", "main", 1), 1700000001).ok());
  ASSERT_TRUE(state->RecordAck(MakeAck("mirror-a", "main", 1), 1700000002).ok());
  v1::Ack later = MakeAck("mirror-a", "main", 2);
  later.set_state(v1::ACK_FAILED);
  later.set_target_serial(3);
  later.set_error("disk full");
  ASSERT_TRUE(state->RecordAck(later, 1700000009).ok());
  ASSERT_TRUE(state->RecordAck(MakeAck("mirror-a", "other", 4), 1700000010).ok());

  auto mirrors = state->Mirrors();
  ASSERT_TRUE(mirrors.ok()) << mirrors.status().ToString();
  ASSERT_EQ(mirrors->size(), 3u);
  // Ordered by repo, then mirror.
  EXPECT_EQ((*mirrors)[0].mirror_id(), "mirror-a");
  EXPECT_EQ((*mirrors)[0].repo(), "main");
  EXPECT_EQ((*mirrors)[1].mirror_id(), "mirror-b");
  EXPECT_EQ((*mirrors)[2].repo(), "other");

  const v1::MirrorStatus& a = (*mirrors)[0];
  EXPECT_EQ(a.serial(), 2u);
  EXPECT_EQ(a.target_serial(), 3u);
  EXPECT_EQ(a.state(), v1::ACK_FAILED);
  EXPECT_EQ(a.last_ack_unix(), 1700000009);
  EXPECT_EQ(a.bytes_fetched(), 1002u);
  EXPECT_EQ(a.bytes_reused(), 2002u);
  EXPECT_EQ(a.bytes_signature(), 302u);
  EXPECT_DOUBLE_EQ(a.seconds(), 1.5);
  EXPECT_EQ(a.error(), "disk full");

  // The mirror table survives a restart, bytes_signature included.
  state.reset();
  state = Open();
  ASSERT_NE(state, nullptr);
  mirrors = state->Mirrors();
  ASSERT_TRUE(mirrors.ok());
  ASSERT_EQ(mirrors->size(), 3u);
  EXPECT_EQ((*mirrors)[0].bytes_signature(), 302u);
  EXPECT_EQ((*mirrors)[1].bytes_signature(), 301u);
}

TEST_F(BrokerStateTest, PruneKeepsTheNewestEventsAndTheObjectsTheirManifestsName) {
  auto state = Open();
  ASSERT_NE(state, nullptr);
  CommitSerials(*state, "main", 6);
  CommitSerials(*state, "other", 6);
  // Serial s of "main" names "only s" and "shared"; "other" names "shared"
  // at serial 1 only.
  std::vector<std::string> only;
  auto shared = state->objects().Put("shared by every serial");
  ASSERT_TRUE(shared.ok());
  for (uint64_t s = 1; s <= 6; ++s) {
    auto id = state->objects().Put("only " + std::to_string(s));
    ASSERT_TRUE(id.ok());
    only.push_back(*id);
    ASSERT_TRUE(state->TouchObjects("main", s, {*id, *shared}).ok());
  }
  ASSERT_TRUE(state->TouchObjects("other", 1, {*shared}).ok());

  ASSERT_TRUE(state->Prune("main", 2, 3).ok());

  auto events = state->EventsSince("main", 0, 100);
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->envelopes.size(), 2u);
  EXPECT_EQ(events->envelopes[0], EnvelopeOf("main", 5));
  EXPECT_EQ(events->envelopes[1], EnvelopeOf("main", 6));
  EXPECT_EQ(events->oldest_serial, 5u);

  // Serials 4..6 keep their objects; 1..3 lose theirs; the shared one stays.
  for (size_t i = 0; i < only.size(); ++i) {
    EXPECT_EQ(state->objects().Has(only[i]), i >= 3) << "serial " << i + 1;
  }
  EXPECT_TRUE(state->objects().Has(*shared));

  // Another repo is untouched.
  events = state->EventsSince("other", 0, 100);
  ASSERT_TRUE(events.ok());
  EXPECT_EQ(events->envelopes.size(), 6u);

  // Fewer events than the limit: nothing goes.
  ASSERT_TRUE(state->Prune("other", 100, 100).ok());
  events = state->EventsSince("other", 0, 100);
  ASSERT_TRUE(events.ok());
  EXPECT_EQ(events->envelopes.size(), 6u);
  EXPECT_EQ(events->oldest_serial, 1u);

  // Once "other" drops serial 1 too, nothing names the shared object.
  ASSERT_TRUE(state->Prune("other", 1, 1).ok());
  EXPECT_TRUE(state->objects().Has(*shared));  // main's window still names it
}

TEST_F(BrokerStateTest, OldDatabaseWithHeadsIsRefusedAndOneWithoutIsMigrated) {
  {
    // The mirrors table as 0.1's first schema created it.
    auto db = Database::Open(dir_.path() / "broker.db");
    ASSERT_TRUE(db.ok()) << db.status().ToString();
    ASSERT_TRUE((*db)
                    ->Exec(R"sql(
      CREATE TABLE repos(
        repo TEXT PRIMARY KEY, serial INTEGER NOT NULL, manifest_sha256 BLOB NOT NULL,
        manifest_entries INTEGER NOT NULL, updated_unix INTEGER NOT NULL);
      CREATE TABLE events(
        repo TEXT NOT NULL, serial INTEGER NOT NULL, envelope BLOB NOT NULL,
        received_unix INTEGER NOT NULL, PRIMARY KEY(repo, serial));
      CREATE TABLE mirrors(
        mirror_id TEXT NOT NULL, repo TEXT NOT NULL, serial INTEGER NOT NULL,
        target_serial INTEGER NOT NULL, state INTEGER NOT NULL, last_ack_unix INTEGER NOT NULL,
        bytes_fetched INTEGER NOT NULL, bytes_reused INTEGER NOT NULL, millis INTEGER NOT NULL,
        error TEXT NOT NULL, PRIMARY KEY(mirror_id, repo));
      INSERT INTO mirrors VALUES('old-mirror', 'main', 4, 4, 1, 1690000000, 10, 20, 2500, '');
    )sql")
                    .ok());
    auto ins = (*db)->Prepare(
        "INSERT INTO repos(repo, serial, manifest_sha256, manifest_entries, updated_unix) "
        "VALUES('main', 4, ?, 40, 1690000000)");
    ASSERT_TRUE(ins.ok());
    ins->BindBlob(1, HeadAt(4).manifest_sha256);
    ASSERT_TRUE(ins->Run().ok());
  }
  // Its heads name format-v1 manifests: refused, with what to do.
  auto refused = BrokerState::Open(dir_.path());
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("mirrorcast 0.1"), std::string::npos)
      << refused.status().ToString();
  {
    auto db = Database::Open(dir_.path() / "broker.db");
    ASSERT_TRUE(db.ok());
    ASSERT_TRUE((*db)->Exec("DELETE FROM repos").ok());
  }
  // Without heads, its mirror table is kept and migrated.
  auto state = Open();
  ASSERT_NE(state, nullptr);
  EXPECT_EQ(state->Head("main").serial, 0u);

  auto mirrors = state->Mirrors();
  ASSERT_TRUE(mirrors.ok()) << mirrors.status().ToString();
  ASSERT_EQ(mirrors->size(), 1u);
  EXPECT_EQ((*mirrors)[0].mirror_id(), "old-mirror");
  EXPECT_EQ((*mirrors)[0].serial(), 4u);
  EXPECT_DOUBLE_EQ((*mirrors)[0].seconds(), 2.5);
  EXPECT_EQ((*mirrors)[0].bytes_signature(), 0u);

  // The migrated table takes new ACKs with the new column.
  ASSERT_TRUE(state->RecordAck(MakeAck("old-mirror", "main", 5), 1700000000).ok());
  mirrors = state->Mirrors();
  ASSERT_TRUE(mirrors.ok());
  ASSERT_EQ(mirrors->size(), 1u);
  EXPECT_EQ((*mirrors)[0].serial(), 5u);
  EXPECT_EQ((*mirrors)[0].bytes_signature(), 305u);

  // A second open of the migrated database does not trip over the column.
  state.reset();
  state = Open();
  ASSERT_NE(state, nullptr);
  mirrors = state->Mirrors();
  ASSERT_TRUE(mirrors.ok());
  EXPECT_EQ((*mirrors)[0].bytes_signature(), 305u);
}

// A version at `path` with a made-up identity.
PublishedVersion VersionAt(const std::string& content, const std::string& path, uint64_t ino) {
  return PublishedVersion{Sha256Of(content), path, FileIdentity{1, ino, content.size(), 5, 6}, 0};
}

TEST_F(BrokerStateTest, RetiredVersionsStayServableForKeepVersionsSerials) {
  auto state = Open();
  ASSERT_NE(state, nullptr);
  const std::string old_sha = Sha256Of("old");
  VersionChanges first;

  first.published = {VersionAt("old", "a.rpm", 10), VersionAt("kept", "b.rpm", 11)};
  first.objects = {StoredObject{old_sha, RetainedObject{ObjectKind::kLink, {1, 10, 3, 5, 7}}}};
  ASSERT_TRUE(state->CommitEvent("main", HeadAt(1), EnvelopeOf("main", 1), 1, first).ok());

  VersionChanges second;  // a.rpm replaced by a new version
  second.retired = {{"a.rpm", old_sha}};
  second.published = {VersionAt("new", "a.rpm", 12)};
  ASSERT_TRUE(state->CommitEvent("main", HeadAt(2), EnvelopeOf("main", 2), 2, second).ok());

  // The content workers' view, through their own connection.
  auto reader = ServableVersionReader::Open(dir_.path());
  ASSERT_TRUE(reader.ok()) << reader.status().ToString();
  auto found = (*reader)->Find("main", old_sha, "a.rpm", 2);
  ASSERT_TRUE(found.ok()) << found.status().ToString();
  ASSERT_EQ(found->paths.size(), 1u);
  EXPECT_EQ(found->paths[0].path, "a.rpm");
  EXPECT_EQ(found->paths[0].identity.ino, 10u);
  EXPECT_EQ(found->paths[0].retired_serial, 2u);
  ASSERT_TRUE(found->object.has_value());
  EXPECT_EQ(found->object->identity.ctime_ns, 7);
  EXPECT_TRUE((*reader)->Find("main", Sha256Of("never"), "a.rpm", 2)->paths.empty());
  EXPECT_TRUE((*reader)->Find("other", old_sha, "a.rpm", 2)->paths.empty());
  // With a window of 0 a retired version is not servable at all.
  EXPECT_TRUE((*reader)->Find("main", old_sha, "a.rpm", 0)->paths.empty());

  // Head 3 with a window of 2: still kept, nothing expired.
  ASSERT_TRUE(state->CommitEvent("main", HeadAt(3), EnvelopeOf("main", 3), 3).ok());
  EXPECT_FALSE((*reader)->Find("main", old_sha, "a.rpm", 2)->paths.empty());
  EXPECT_TRUE(state->ExpiredObjects("main", 2)->empty());

  // Head 4: expired; pruning forgets its rows and its object, not the others.
  ASSERT_TRUE(state->CommitEvent("main", HeadAt(4), EnvelopeOf("main", 4), 4).ok());
  EXPECT_TRUE((*reader)->Find("main", old_sha, "a.rpm", 2)->paths.empty());
  auto expired = state->ExpiredObjects("main", 2);
  ASSERT_TRUE(expired.ok()) << expired.status().ToString();
  EXPECT_EQ(*expired, std::vector<std::string>{old_sha});
  ASSERT_TRUE(state->PruneVersions("main", 2).ok());
  EXPECT_FALSE(state->ObjectOf("main", old_sha)->has_value());
  EXPECT_EQ((*reader)->Find("main", Sha256Of("kept"), "b.rpm", 2)->paths.size(), 1u);
  EXPECT_EQ((*reader)->Find("main", Sha256Of("new"), "a.rpm", 2)->paths.size(), 1u);
}

TEST_F(BrokerStateTest, AVersionStillNamedAtAnotherPathKeepsItsObject) {
  auto state = Open();
  ASSERT_NE(state, nullptr);
  const std::string sha = Sha256Of("same bytes");
  VersionChanges first;

  first.published = {VersionAt("same bytes", "x/one", 10), VersionAt("same bytes", "y/two", 11)};
  first.objects = {StoredObject{sha, RetainedObject{ObjectKind::kLink, {1, 10, 10, 5, 6}}}};
  ASSERT_TRUE(state->CommitEvent("main", HeadAt(1), EnvelopeOf("main", 1), 1, first).ok());
  VersionChanges second;
  second.retired = {{"x/one", sha}};
  ASSERT_TRUE(state->CommitEvent("main", HeadAt(2), EnvelopeOf("main", 2), 2, second).ok());
  for (uint64_t s = 3; s <= 6; ++s) {
    ASSERT_TRUE(state->CommitEvent("main", HeadAt(s), EnvelopeOf("main", s), s).ok());
  }
  EXPECT_TRUE(state->ExpiredObjects("main", 1)->empty());
  ASSERT_TRUE(state->PruneVersions("main", 1).ok());
  EXPECT_TRUE(state->ObjectOf("main", sha)->has_value());
  auto reader = ServableVersionReader::Open(dir_.path());
  ASSERT_TRUE(reader.ok());
  auto found = (*reader)->Find("main", sha, "x/one", 1);
  ASSERT_TRUE(found.ok());
  ASSERT_EQ(found->paths.size(), 1u);  // x/one's row is gone; y/two still names it
  EXPECT_EQ(found->paths[0].path, "y/two");
  EXPECT_TRUE(found->object.has_value());
}

TEST_F(BrokerStateTest, PendingObjectsWithoutACommitAreReported) {
  auto state = Open();
  ASSERT_NE(state, nullptr);
  const std::string committed = Sha256Of("committed");
  const std::string lost = Sha256Of("lost in a crash");
  ASSERT_TRUE(state->AddPendingObjects("main", {committed}).ok());
  VersionChanges first;

  first.published = {VersionAt("committed", "a", 1)};
  first.objects = {StoredObject{committed, RetainedObject{}}};
  ASSERT_TRUE(state->CommitEvent("main", HeadAt(1), EnvelopeOf("main", 1), 1, first).ok());
  auto none = state->UncommittedObjects();
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->empty());  // the commit cleared them

  ASSERT_TRUE(state->AddPendingObjects("main", {committed, lost}).ok());
  auto uncommitted = state->UncommittedObjects();
  ASSERT_TRUE(uncommitted.ok());
  ASSERT_EQ(uncommitted->size(), 1u);  // the committed one has its object row
  EXPECT_EQ((*uncommitted)[0], std::make_pair(std::string("main"), lost));
  ASSERT_TRUE(state->ClearPendingObjects("").ok());
  EXPECT_TRUE(state->UncommittedObjects()->empty());
}

}  // namespace
}  // namespace mirrorcast::testing
