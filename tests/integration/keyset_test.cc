// Keys that can be rotated and revoked, end to end with real processes.
//
// KeySetClusterTest: a real broker and subscribers started with --root-key;
// key sets made, signed, shown and published with the real `mirrorcast
// keys` commands. A publisher-key rotation reaches every mirror (the time
// from `keys publish` to every mirror applying the next event signed by the
// new key is printed), the removed key is refused, an older key set or one
// not signed by the root is refused, a root rotation needs both roots, and a
// restarted mirror keeps its key set.
//
// KeySetHostileTest: a real subscriber against HostileBroker, which hands out
// whatever key set and events the test decides: an event signed by a
// removed key is refused with the tree untouched, an older key set is
// refused (also after a restart), and a fast-forward attack (serial 10^9
// signed by a compromised key) is recovered by a key set with a serial reset.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <ctime>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <thread>

#include "core/crypto/keys.h"
#include "core/manifest/manifest.h"
#include "core/wire/envelope.h"
#include "core/wire/keyset.h"
#include "tests/integration/cluster.h"
#include "tests/integration/hostile_broker.h"
#include "tests/support/entries.h"
#include "tests/support/process.h"
#include "tests/support/temp_dir.h"
#include "tests/support/tree.h"

namespace mirrorcast::testing {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

std::string ReadText(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

RunResult Keys(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {BinPath("mirrorcast").string(), "keys"};
  argv.insert(argv.end(), args.begin(), args.end());
  return mirrorcast::testing::Run(argv, 60s);
}

class KeySetClusterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = c_.MakeKey("root");
    root2_ = c_.MakeKey("root2");
    pub2_ = c_.MakeKey("pub2");
    hb_ = c_.MakeKey("hb");
    c_.UseRootKey(root_.string() + ".pub");
    MakeSampleRepo(c_.origin_tree(), 5, 2000);
  }

  // `keys make` of version `version` signed by `signers` (secret key files),
  // with the publisher key `publisher` (a prefix) for repo demo.
  fs::path MakeSet(uint64_t version, const fs::path& publisher, const fs::path& root,
                   const std::vector<fs::path>& signers) {
    const fs::path out = c_.root() / ("v" + std::to_string(version) + ".set");
    std::vector<std::string> args = {"make",
                                     "--out",
                                     out.string(),
                                     "--keyset-version",
                                     std::to_string(version),
                                     "--expires-days",
                                     "30",
                                     "--root",
                                     root.string() + ".pub",
                                     "--publisher",
                                     "demo " + publisher.string() + ".pub",
                                     "--heartbeat",
                                     hb_.string() + ".pub"};
    for (const auto& s : signers) {
      args.push_back("--sign");
      args.push_back(s.string() + ".key");
    }
    RunResult r = Keys(args);
    EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
    return out;
  }

  RunResult PublishSet(const fs::path& set) {
    std::vector<std::string> args = {"publish", "--broker", c_.broker_address(), "--set",
                                     set.string()};
    for (const std::string& a : c_.PublisherTransport()) args.push_back(a);
    return Keys(args);
  }

  void ChangeOrigin(const std::string& name, const std::string& content) {
    WriteFile(c_.origin_tree() / "Packages" / name, content);
  }

  Cluster c_;
  fs::path root_, root2_, pub2_, hb_;
};

TEST_F(KeySetClusterTest, RotationRevocationAndRootRotation) {
  c_.StartBroker({"--heartbeat-key", hb_.string() + ".key", "--heartbeat-interval", "1"});
  // Before any key set, nothing is accepted.
  RunResult early = c_.Publish();
  EXPECT_NE(early.exit_code, 0);
  EXPECT_NE((early.out + early.err).find("no key set yet"), std::string::npos)
      << early.out << early.err;

  const fs::path origin = c_.root() / "keys" / "origin";
  const fs::path v1 = MakeSet(1, origin, root_, {root_});
  RunResult shown = Keys({"show", "--set", v1.string(), "--root-key", root_.string() + ".pub"});
  EXPECT_EQ(shown.exit_code, 0) << shown.out << shown.err;
  EXPECT_NE(shown.out.find("key set version 1"), std::string::npos) << shown.out;
  EXPECT_NE(shown.out.find("accepted"), std::string::npos) << shown.out;
  RunResult published = PublishSet(v1);
  ASSERT_EQ(published.exit_code, 0) << published.out << published.err << c_.Logs();

  c_.StartSubscriber("m1");
  c_.StartSubscriber("m2");
  c_.PublishOk();
  c_.WaitForSerial({"m1", "m2"}, 1);

  // Rotation of the publisher key: version 2 lists pub2 instead of origin.
  const fs::path v2 = MakeSet(2, pub2_, root_, {root_});
  ChangeOrigin("rotated.rpm", "published with the new key");
  const auto started = std::chrono::steady_clock::now();
  ASSERT_EQ(PublishSet(v2).exit_code, 0) << c_.Logs();
  RunResult with_new = c_.Publish({}, pub2_.string() + ".key");
  ASSERT_EQ(with_new.exit_code, 0) << with_new.out << with_new.err << c_.Logs();
  c_.WaitForSerial({"m1", "m2"}, 2);
  const double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started).count();
  std::cout << "[ measure  ] rotation time: " << ms
            << " ms from 'keys publish' of version 2 to every mirror (2) applying the next event "
               "signed by the new key (including that publish)\n";
  EXPECT_EQ(ReadFile(c_.mirror_tree("m1") / "Packages/rotated.rpm"), "published with the new key");

  // The removed key is refused from now on.
  ChangeOrigin("by-old-key.rpm", "x");
  RunResult old_key = c_.Publish();
  EXPECT_NE(old_key.exit_code, 0);
  EXPECT_NE((old_key.out + old_key.err).find("is not in key set version 2 (revoked"),
            std::string::npos)
      << old_key.out << old_key.err;

  // An older key set, and one not signed by the root, are refused.
  RunResult older = PublishSet(v1);
  EXPECT_EQ(older.exit_code, 1) << older.out << older.err;
  EXPECT_NE(older.err.find("not newer"), std::string::npos) << older.err;
  const fs::path forged = MakeSet(3, pub2_, root_, {pub2_});
  RunResult unsigned_by_root = PublishSet(forged);
  EXPECT_EQ(unsigned_by_root.exit_code, 1);
  EXPECT_NE(unsigned_by_root.err.find("not signed by the current root"), std::string::npos)
      << unsigned_by_root.err;

  // Root rotation: version 3 names root2; signed by the old root only it is
  // refused, signed by both it is accepted.
  const fs::path v3 = MakeSet(3, pub2_, root2_, {root_});
  RunResult half = PublishSet(v3);
  EXPECT_EQ(half.exit_code, 1);
  EXPECT_NE(half.err.find("names a root that did not sign it"), std::string::npos) << half.err;
  RunResult signed_too = Keys({"sign", "--set", v3.string(), "--key", root2_.string() + ".key"});
  ASSERT_EQ(signed_too.exit_code, 0) << signed_too.out << signed_too.err;
  ASSERT_EQ(PublishSet(v3).exit_code, 0) << c_.Logs();
  // The old root alone signs nothing any more.
  const fs::path v4_old = MakeSet(4, pub2_, root2_, {root_});
  EXPECT_EQ(PublishSet(v4_old).exit_code, 1);

  // Mirrors follow the rotation (an event under version 3 is applied), and
  // one restarted keeps version 3 from its state.
  ChangeOrigin("under-v3.rpm", "three");
  ASSERT_EQ(c_.Publish({}, pub2_.string() + ".key").exit_code, 0) << c_.Logs();
  c_.WaitForSerial({"m1", "m2"}, 3);
  EXPECT_EQ(c_.StopSubscriber("m1"), 0);
  c_.StartSubscriber("m1");
  ChangeOrigin("after-restart.rpm", "four");
  ASSERT_EQ(c_.Publish({}, pub2_.string() + ".key").exit_code, 0) << c_.Logs();
  c_.WaitForSerial({"m1", "m2"}, 4);
  const std::string log = ReadText(c_.root() / "logs" / "m1.log");
  EXPECT_NE(log.find("trust: key set version 3"), std::string::npos)
      << "the restarted mirror did not load version 3 from its state\n"
      << log.substr(log.size() > 6000 ? log.size() - 6000 : 0);

  // A publisher threshold: two of pub2, pub3, pub4 must sign each event.
  const fs::path pub3 = c_.MakeKey("pub3");
  const fs::path pub4 = c_.MakeKey("pub4");
  const fs::path v5 = c_.root() / "v5.set";
  RunResult made = Keys({"make", "--out", v5.string(), "--keyset-version", "5", "--expires-days",
                         "30", "--root", root2_.string() + ".pub", "--publisher",
                         "demo " + pub2_.string() + ".pub " + pub3.string() + ".pub " +
                             pub4.string() + ".pub threshold=2",
                         "--heartbeat", hb_.string() + ".pub", "--sign", root2_.string() + ".key"});
  ASSERT_EQ(made.exit_code, 0) << made.out << made.err;
  ASSERT_EQ(PublishSet(v5).exit_code, 0) << c_.Logs();
  ChangeOrigin("two-signers.rpm", "five");
  RunResult one = c_.Publish({}, pub2_.string() + ".key");
  EXPECT_NE(one.exit_code, 0) << "one signature of the two required";
  EXPECT_NE((one.out + one.err).find("fewer than a rule"), std::string::npos) << one.out << one.err;
  RunResult same_twice =
      c_.Publish({"--cosign-key", pub2_.string() + ".key"}, pub2_.string() + ".key");
  EXPECT_NE(same_twice.exit_code, 0) << "the same key twice counts once";
  RunResult two = c_.Publish({"--cosign-key", pub4.string() + ".key"}, pub2_.string() + ".key");
  ASSERT_EQ(two.exit_code, 0) << two.out << two.err << c_.Logs();
  c_.WaitForSerial({"m1", "m2"}, 5);
  EXPECT_EQ(ReadFile(c_.mirror_tree("m2") / "Packages/two-signers.rpm"), "five");
}

// A subscriber with --root-key against HostileBroker, whose Hello hands out
// the key set the test sets.
class KeySetHostileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = SigningKey::Generate().value();
    k1_ = SigningKey::Generate().value();
    k2_ = SigningKey::Generate().value();
    WriteFile(dir_ / "root.pub", root_.public_key().ToFileText());
    WriteFile(dir_ / "origin.pub", k1_.public_key().ToFileText());
    broker_.Start();
  }
  void TearDown() override {
    if (subscriber_.pid() > 0) subscriber_.Stop();
  }

  std::string KeySetOf(uint64_t version, const SigningKey& publisher,
                       std::optional<v1::SerialReset> reset = std::nullopt) {
    v1::KeySet body;
    body.set_version(version);
    body.set_issued_unix(time(nullptr) - 10);
    body.set_expires_unix(time(nullptr) + 3600);
    body.mutable_root()->add_keys(root_.public_key().raw());
    v1::PublisherRule* rule = body.add_publishers();
    rule->add_repos("demo");
    rule->mutable_signers()->add_keys(publisher.public_key().raw());
    if (reset) *body.add_resets() = *reset;
    return AddKeySetSignatures(MakeUnsignedKeySet(body), {&root_}).value();
  }

  // Serial `serial` after `previous` (a manifest from `manifests_`), signed
  // by `key` under `keyset_version`; served, and added to the history.
  std::string Publish(uint64_t serial, uint64_t previous, const Edits& edits, const SigningKey& key,
                      uint64_t keyset_version) {
    Manifest m = previous > 0 ? manifests_.at(previous) : Manifest("demo", 0);
    v1::SignedPayload payload = ServedEvent(broker_, &m, serial, previous, edits);
    payload.mutable_repo_changed()->set_keyset_version(keyset_version);
    manifests_[serial] = m;
    std::string envelope = SealEnvelope(payload, key);
    broker_.AddEvent(serial, envelope);
    return envelope;
  }

  void StartSubscriber() {
    std::vector<std::string> argv =
        HostileSubscriberArgv(broker_, dir_.path(), "victim", {"--stall-timeout", "5"});
    UseRootKeyInstead(argv, dir_ / "root.pub");
    log_before_ = ReadText(log_).size();
    subscriber_.Start(argv, log_);
  }

  bool HasAck(v1::AckState state, uint64_t serial, const std::string& text = "") {
    for (const auto& ack : broker_.acks()) {
      if (ack.state() == state && ack.serial() == serial &&
          ack.error().find(text) != std::string::npos) {
        return true;
      }
    }
    return false;
  }
  bool Rejected(const std::string& text) {
    for (const auto& ack : broker_.acks()) {
      if (ack.state() == v1::ACK_REJECTED && ack.error().find(text) != std::string::npos) {
        return true;
      }
    }
    return false;
  }
  std::string LogSinceStart() { return ReadText(log_).substr(log_before_); }

  // The honest history 1..3, signed by k1 under version 1.
  void FollowToSerial3() {
    broker_.SetKeySet(KeySetOf(1, k1_), 1);
    Publish(1, 0, {{"Packages/a.rpm", "a1"}, {"repodata/repomd.xml", "r1"}}, k1_, 1);
    Publish(2, 1, {{"Packages/b.rpm", "b2"}, {"repodata/repomd.xml", "r2"}}, k1_, 1);
    Publish(3, 2, {{"Packages/c.rpm", "c3"}, {"repodata/repomd.xml", "r3"}}, k1_, 1);
    StartSubscriber();
    ASSERT_TRUE(WaitUntil([&] { return HasAck(v1::ACK_APPLIED, 3); }, 60s)) << ReadText(log_);
  }

  TempDir dir_{"mirrorcast-keysets"};
  fs::path log_ = dir_ / "subscriber.log";
  size_t log_before_ = 0;
  SigningKey root_, k1_, k2_;
  HostileBroker broker_;
  ChildProcess subscriber_;
  std::map<uint64_t, Manifest> manifests_;
};

TEST_F(KeySetHostileTest, RemovedKeyAndOlderKeySetAreRefusedAlsoAfterARestart) {
  FollowToSerial3();
  const TreeSnapshot at3 = SnapshotTree(dir_ / "tree");
  const std::string v2 = KeySetOf(2, k2_);
  broker_.SetKeySet(v2, 2);
  ASSERT_TRUE(WaitUntil(
      [&] { return LogSinceStart().find("accepted key set version 2") != std::string::npos; }, 30s))
      << LogSinceStart();

  // Serial 4 signed by the removed key k1: refused, the tree untouched.
  Publish(4, 3, {{"Packages/d.rpm", "d4"}, {"repodata/repomd.xml", "r4"}}, k1_, 1);
  ASSERT_TRUE(WaitUntil([&] { return Rejected("is not in key set version 2 (revoked"); }, 30s))
      << LogSinceStart();
  EXPECT_EQ(SnapshotTree(dir_ / "tree"), at3)
      << "an event signed by a removed key changed the tree";
  EXPECT_FALSE(HasAck(v1::ACK_APPLIED, 4));

  // The broker hands out the older version 1 again: refused.
  broker_.SetKeySet(KeySetOf(1, k1_), 1);
  ASSERT_TRUE(WaitUntil([&] { return Rejected("not newer than the current version 2"); }, 30s))
      << LogSinceStart();

  // After a restart the mirror still holds version 2: version 1 is refused
  // and so is k1's event.
  subscriber_.Stop();
  StartSubscriber();
  ASSERT_TRUE(WaitUntil(
      [&] {
        return LogSinceStart().find("not newer than the current version 2") != std::string::npos;
      },
      30s))
      << LogSinceStart();
  EXPECT_NE(LogSinceStart().find("trust: key set version 2"), std::string::npos);
  std::this_thread::sleep_for(2s);  // a few polls: nothing may apply
  EXPECT_EQ(SnapshotTree(dir_ / "tree"), at3);
  EXPECT_FALSE(HasAck(v1::ACK_APPLIED, 4));

  // The honest path: version 2 again, serial 4 by k2.
  broker_.SetKeySet(v2, 2);
  const std::string honest =
      Publish(4, 3, {{"Packages/d.rpm", "d4"}, {"repodata/repomd.xml", "r4"}}, k2_, 2);
  broker_.SetBroadcasts(std::vector<std::string>{honest});  // news now, not after a backoff
  ASSERT_TRUE(WaitUntil([&] { return HasAck(v1::ACK_APPLIED, 4); }, 60s)) << LogSinceStart();
  EXPECT_EQ(ReadFile(dir_ / "tree/Packages/d.rpm"), "d4");
}

TEST_F(KeySetHostileTest, FastForwardAttackIsRecoveredByASerialReset) {
  FollowToSerial3();
  // k1 is compromised: the attacker's relay serves serial 10^9, adding a
  // file. It is valid under version 1, so the mirror takes it.
  constexpr uint64_t kInflated = 1'000'000'000;
  Publish(kInflated, 3, {{"Packages/evil.rpm", "evil"}, {"repodata/repomd.xml", "evil-md"}}, k1_,
          1);
  ASSERT_TRUE(WaitUntil([&] { return HasAck(v1::ACK_APPLIED, kInflated); }, 60s))
      << LogSinceStart();
  EXPECT_EQ(ReadFile(dir_ / "tree/Packages/evil.rpm"), "evil");

  // The honest origin goes on at serial 4 (still k1, version 1): without a
  // reset the mirror never goes backwards.
  broker_.RemoveEvent(kInflated);
  Publish(4, 3, {{"Packages/d.rpm", "d4"}, {"repodata/repomd.xml", "r4"}}, k1_, 1);
  ASSERT_TRUE(
      WaitUntil([&] { return Rejected("older than this mirror's serial 1000000000"); }, 30s))
      << LogSinceStart();
  EXPECT_EQ(ReadFile(dir_ / "tree/Packages/evil.rpm"), "evil");
  EXPECT_FALSE(HasAck(v1::ACK_APPLIED, 4));

  // Recovery: version 2 revokes k1 for k2 and resets demo to serial 3 for
  // serials accepted under versions before 2; the honest serial 4 is
  // signed again by k2 under version 2.
  broker_.RemoveEvent(4);
  v1::SerialReset reset;
  reset.set_repo("demo");
  reset.set_floor(3);
  reset.set_since_version(2);
  broker_.SetKeySet(KeySetOf(2, k2_, reset), 2);
  const std::string honest =
      Publish(4, 3, {{"Packages/d.rpm", "d4"}, {"repodata/repomd.xml", "r4"}}, k2_, 2);
  // Broadcast too: the event names key-set version 2, which makes the
  // mirror fetch the key set at once.
  broker_.SetBroadcasts(std::vector<std::string>{honest});
  ASSERT_TRUE(WaitUntil([&] { return HasAck(v1::ACK_APPLIED, 4); }, 60s)) << LogSinceStart();
  EXPECT_FALSE(fs::exists(dir_ / "tree/Packages/evil.rpm")) << "the inflated serial's file stays";
  EXPECT_EQ(ReadFile(dir_ / "tree/Packages/d.rpm"), "d4");
  EXPECT_EQ(ReadFile(dir_ / "tree/repodata/repomd.xml"), "r4");
  EXPECT_EQ(ReadFile(dir_ / "tree/Packages/a.rpm"), "a1");
  EXPECT_NE(LogSinceStart().find("resets repo demo: serial 1000000000"), std::string::npos)
      << LogSinceStart();

  // The reset is spent: serials accepted under version 2 are never reset,
  // and serials still only go forward after a restart.
  subscriber_.Stop();
  StartSubscriber();
  std::this_thread::sleep_for(2s);
  EXPECT_EQ(LogSinceStart().find("resets repo"), std::string::npos) << LogSinceStart();
  Publish(5, 4, {{"Packages/e.rpm", "e5"}, {"repodata/repomd.xml", "r5"}}, k2_, 2);
  ASSERT_TRUE(WaitUntil([&] { return HasAck(v1::ACK_APPLIED, 5); }, 60s)) << LogSinceStart();
}

}  // namespace
}  // namespace mirrorcast::testing
