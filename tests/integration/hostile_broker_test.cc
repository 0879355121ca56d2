// A hostile or broken broker cannot roll a mirror back. A real
// mirrorcast-subscriber daemon follows a programmable broker (HostileBroker)
// through an honest history (serials 1..3), then the broker turns: it serves
// an older signed, unexpired event as its head, replays older events in a
// catch-up, advertises an older head in signed heartbeats, is replaced by an
// older broker after a restart, or offers the applied serial with another
// manifest. Each time the tree stays exactly as it was, the refusal is
// logged and ACKed once (no loop: ACKs, commits and log lines are counted
// over a few seconds), it is recorded in the mirror's state (shown by
// `mirrorcast verify`), and the honest path still works afterwards.
#include <gtest/gtest.h>

#include <algorithm>
#include <ctime>
#include <fstream>
#include <functional>
#include <optional>
#include <thread>

#include "core/crypto/keys.h"
#include "core/manifest/manifest.h"
#include "core/mirror/subscriber.h"
#include "core/net/endpoint.h"
#include "core/wire/envelope.h"
#include "tests/integration/hostile_broker.h"
#include "tests/support/entries.h"
#include "tests/support/fake_clock.h"
#include "tests/support/process.h"
#include "tests/support/temp_dir.h"
#include "tests/support/tree.h"

namespace mirrorcast::testing {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

// How long the test watches a refusing mirror for a loop.
constexpr auto kWatchForLoop = 4s;

bool WaitFor(const std::function<bool()>& done, std::chrono::seconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (done()) return true;
    std::this_thread::sleep_for(50ms);
  }
  return done();
}

std::string ReadText(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

size_t Count(const std::string& text, const std::string& needle) {
  size_t n = 0;
  for (size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) ++n;
  return n;
}

class RollbackTest : public ::testing::Test {
 protected:
  void SetUp() override {
    origin_ = *SigningKey::Generate();
    WriteFile(dir_ / "origin.pub", origin_.public_key().ToFileText());
    heartbeat_ = *SigningKey::Generate();
    WriteFile(dir_ / "heartbeat.pub", heartbeat_.public_key().ToFileText());
    // The honest history.
    Publish(1, {{"Packages/a.rpm", "a1"}, {"Packages/b.rpm", "b1"}, {"repodata/repomd.xml", "r1"}});
    Publish(2, {{"Packages/c.rpm", "c2"}, {"repodata/repomd.xml", "r2"}});
    Publish(3, {{"Packages/b.rpm", std::nullopt},
                {"Packages/d.rpm", "d3"},
                {"repodata/repomd.xml", "r3"}});
    broker_.Start();
  }

  void TearDown() override {
    if (subscriber_.pid() > 0) subscriber_.Stop();
  }

  // Serial `serial` built from the previous one of `manifests` (default:
  // the honest history) with `edits`, signed and served; with `add`, it
  // joins the broker's history. Returns the envelope.
  std::string Publish(uint64_t serial, const Edits& edits,
                      std::map<uint64_t, Manifest>* manifests = nullptr, bool add = true) {
    std::map<uint64_t, Manifest>& versions = manifests ? *manifests : manifests_;
    Manifest m = serial > 1 ? versions.at(serial - 1) : Manifest("demo", 0);
    const v1::SignedPayload payload = ServedEvent(broker_, &m, serial, serial - 1, edits);
    std::string envelope = SealEnvelope(payload, origin_);
    versions[serial] = m;
    if (add) {
      envelopes_[serial] = envelope;
      broker_.AddEvent(serial, envelope);
    }
    return envelope;
  }

  std::string Heartbeat(uint64_t serial) {
    v1::SignedPayload payload;
    auto* hb = payload.mutable_heartbeat();
    hb->set_origin("origin");
    hb->set_issued_unix(time(nullptr));
    hb->set_expires_unix(time(nullptr) + 3600);
    auto* r = hb->add_repos();
    r->set_repo("demo");
    r->set_serial(serial);
    return SealEnvelope(payload, heartbeat_);
  }

  void StartSubscriber(const std::vector<std::string>& extra = {}) {
    std::vector<std::string> argv = {"--stall-timeout", "5"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    subscriber_.Start(HostileSubscriberArgv(broker_, dir_.path(), "victim", argv), log_);
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

  // The mirror follows the honest history to serial 3.
  void FollowToSerial3(const std::vector<std::string>& extra = {}) {
    StartSubscriber(extra);
    ASSERT_TRUE(WaitFor([&] { return HasAck(v1::ACK_APPLIED, 3); }, 60s)) << ReadText(log_);
    at_serial3_ = SnapshotTree(dir_ / "tree");
    ASSERT_EQ(ReadFile(dir_ / "tree/repodata/repomd.xml"), "r3");
  }

  // Marks where the attack starts: what is counted from here.
  void AttackStarts() {
    acks_before_ = broker_.acks().size();
    log_before_ = ReadText(log_).size();
  }
  std::string LogSinceAttack() { return ReadText(log_).substr(log_before_); }
  std::vector<v1::Ack> AcksSinceAttack() {
    auto all = broker_.acks();
    return std::vector<v1::Ack>(all.begin() + static_cast<long>(acks_before_), all.end());
  }

  // The refusal arrives; then, watched for a few seconds: the tree is
  // untouched, one refusal ACK and one log line, no apply, no loop.
  // `distinct`: refusals with different reasons expected (each once).
  void ExpectRefusedOnce(const std::string& reason, size_t distinct = 1) {
    const bool refused = WaitFor(
        [&] {
          for (const auto& ack : AcksSinceAttack()) {
            if (ack.state() == v1::ACK_REJECTED && ack.error().find(reason) != std::string::npos) {
              return true;
            }
          }
          return false;
        },
        30s);
    // Not an ASSERT: what happened instead (a rollback, a loop) is counted
    // below.
    EXPECT_TRUE(refused) << "no ACK_REJECTED mentioning '" << reason << "'";
    std::this_thread::sleep_for(kWatchForLoop);
    EXPECT_EQ(SnapshotTree(dir_ / "tree"), at_serial3_) << "the tree changed";
    const std::vector<v1::Ack> acks = AcksSinceAttack();
    size_t applied = 0, rejected = 0, elsewhere = 0;
    for (const auto& ack : acks) {
      if (ack.serial() != 3) ++elsewhere;
      if (ack.state() == v1::ACK_APPLIED) ++applied;
      if (ack.state() == v1::ACK_REJECTED) ++rejected;
    }
    const std::string log = LogSinceAttack();
    std::cout << "  since the attack began: " << acks.size() << " ACK(s) (" << rejected
              << " rejected, " << applied << " applied, " << elsewhere << " at another serial), "
              << Count(log, "refused") << " 'refused' log line(s), " << Count(log, "jumping from")
              << " jump(s), " << Count(log, "applied repo=") << " apply/applies\n";
    EXPECT_EQ(elsewhere, 0u) << "ACKs from a serial other than 3: the mirror moved";
    EXPECT_EQ(applied, 0u);
    const std::string excerpt = log.substr(0, 4000);
    EXPECT_EQ(rejected, distinct) << "a refusal must be ACKed once, not on every retry\n"
                                  << excerpt;
    EXPECT_EQ(Count(log, "jumping from"), 0u) << excerpt;
    EXPECT_EQ(Count(log, "applied repo="), 0u) << excerpt;
    EXPECT_EQ(Count(log, "refused"), distinct) << "a refusal must be logged once\n" << excerpt;
    EXPECT_NE(log.find(reason), std::string::npos) << excerpt;
  }

  // The honest broker again, with a new serial 4: the mirror applies it.
  void ExpectHonestPathWorks() {
    broker_.SetEvents(nullptr);
    broker_.SetHelloSerial(0);
    broker_.SetBroadcasts(std::vector<std::string>{});
    Publish(4, {{"Packages/e.rpm", "e4"}, {"repodata/repomd.xml", "r4"}});
    ASSERT_TRUE(WaitFor([&] { return HasAck(v1::ACK_APPLIED, 4); }, 60s)) << LogSinceAttack();
    EXPECT_EQ(ReadFile(dir_ / "tree/Packages/e.rpm"), "e4");
    EXPECT_EQ(ReadFile(dir_ / "tree/repodata/repomd.xml"), "r4");
    EXPECT_TRUE(fs::exists(dir_ / "tree/Packages/d.rpm"));
  }

  // The mirror's own state shows the refusal (`mirrorcast verify`).
  void ExpectStateShows(const std::string& reason) {
    subscriber_.Stop();
    RunResult r = mirrorcast::testing::Run({BinPath("mirrorcast").string(), "verify", "--tree",
                                            (dir_ / "tree").string(), "--state",
                                            (dir_ / "state").string(), "--rate", "0"});
    EXPECT_NE(r.out.find("refused"), std::string::npos) << r.out << r.err;
    EXPECT_NE(r.out.find(reason), std::string::npos) << r.out << r.err;
  }

  TempDir dir_{"mirrorcast-rollback"};
  fs::path log_ = dir_ / "subscriber.log";
  SigningKey origin_;
  SigningKey heartbeat_;
  HostileBroker broker_;
  ChildProcess subscriber_;
  std::map<uint64_t, Manifest> manifests_;
  std::map<uint64_t, std::string> envelopes_;
  TreeSnapshot at_serial3_;
  size_t acks_before_ = 0;
  size_t log_before_ = 0;
};

// The attack the issue found: the broker's head is "serial 4", and what it
// serves as the latest event is the genuine, still unexpired serial 1.
TEST_F(RollbackTest, OlderEventServedAsTheHeadIsRefused) {
  FollowToSerial3();
  AttackStarts();
  broker_.SetHelloSerial(4);
  broker_.SetEvents([&](uint64_t, uint32_t) {
    v1::EventsReply reply;
    reply.set_latest_serial(4);
    reply.set_oldest_serial(1);
    reply.add_envelopes(envelopes_.at(1));
    return reply;
  });
  ExpectRefusedOnce("rollback");
  ExpectHonestPathWorks();
  ExpectStateShows("rollback");
}

// A catch-up whose log replays older events (2, then 3 again).
TEST_F(RollbackTest, OlderEventsInACatchUpAreRefused) {
  FollowToSerial3();
  AttackStarts();
  broker_.SetHelloSerial(5);
  broker_.SetEvents([&](uint64_t, uint32_t) {
    v1::EventsReply reply;
    reply.set_latest_serial(5);
    reply.set_oldest_serial(1);
    reply.add_envelopes(envelopes_.at(2));
    reply.add_envelopes(envelopes_.at(3));
    return reply;
  });
  ExpectRefusedOnce("rollback");
  ExpectHonestPathWorks();
}

// Signed heartbeats that advertise an older head: refused, and no longer a
// proof of freshness (the mirror reports itself stale).
TEST_F(RollbackTest, HeartbeatAdvertisingAnOlderHeadIsRefused) {
  // Heartbeats signed afresh every 100 ms, as the origin's would be.
  broker_.SetBroadcasts([&] { return std::vector<std::string>{Heartbeat(3)}; });
  FollowToSerial3({"--heartbeat-trust", (dir_ / "heartbeat.pub").string(), "--stale-after", "2"});
  AttackStarts();
  broker_.SetHelloSerial(3);
  broker_.SetBroadcasts([&] { return std::vector<std::string>{Heartbeat(1)}; });
  ExpectRefusedOnce("heartbeat says the head is serial 1");
  EXPECT_TRUE(WaitFor([&] { return LogSinceAttack().find("stale") != std::string::npos; }, 20s))
      << "heartbeats naming an older head must not keep the mirror fresh\n"
      << LogSinceAttack();
  // Honest heartbeats again: fresh, and serial 4 arrives.
  broker_.SetBroadcasts([&] { return std::vector<std::string>{Heartbeat(3)}; });
  EXPECT_TRUE(
      WaitFor([&] { return LogSinceAttack().find("fresh again") != std::string::npos; }, 20s))
      << LogSinceAttack();
  ExpectHonestPathWorks();
}

// The mirror restarts and finds a broker restored from an old backup: its
// head is serial 1, and it broadcasts its own serial 2 (a fork with other
// content).
TEST_F(RollbackTest, AnOlderBrokerAfterARestartIsRefused) {
  FollowToSerial3();
  subscriber_.Stop();
  AttackStarts();
  broker_.SetEvents([&](uint64_t since, uint32_t max) {
    v1::EventsReply reply = broker_.HonestEvents(0, 1);  // only serial 1 is left
    reply.set_latest_serial(1);
    (void)since;
    (void)max;
    return reply;
  });
  broker_.SetHelloSerial(1);
  // Its own serial 2 (other content), broadcast: older than the mirror,
  // ignored (broadcasts race with catch-up, so an older one is no alarm).
  std::map<uint64_t, Manifest> fork = {{1, manifests_.at(1)}};
  broker_.SetBroadcasts({Publish(2, {{"Packages/evil.rpm", "evil"}}, &fork, /*add=*/false)});
  StartSubscriber();
  ExpectRefusedOnce("older than this mirror's serial 3");
  EXPECT_FALSE(fs::exists(dir_ / "tree/Packages/evil.rpm"));
  ExpectHonestPathWorks();
}

// The applied serial offered again with another manifest: a conflict,
// refused and reported, never applied (by catch-up, jump or broadcast).
TEST_F(RollbackTest, EqualSerialWithAnotherManifestIsAConflict) {
  FollowToSerial3();
  std::map<uint64_t, Manifest> fork = {{2, manifests_.at(2)}};
  const std::string other3 =
      Publish(3, {{"Packages/evil.rpm", "evil"}, {"repodata/repomd.xml", "evil"}}, &fork,
              /*add=*/false);
  AttackStarts();
  broker_.SetHelloSerial(4);
  broker_.SetEvents([&](uint64_t, uint32_t) {
    v1::EventsReply reply;
    reply.set_latest_serial(4);
    reply.set_oldest_serial(1);
    reply.add_envelopes(other3);
    return reply;
  });
  broker_.SetBroadcasts({other3});
  // Once from the catch-up, once from the broadcast: each reported once.
  ExpectRefusedOnce("conflict", 2);
  EXPECT_FALSE(fs::exists(dir_ / "tree/Packages/evil.rpm"));
  ExpectHonestPathWorks();
  ExpectStateShows("conflict");
}

// Staleness and heartbeat expiry on a fake clock: an in-process subscriber
// whose every wall and steady time comes from a FakeClock, so a minute of
// silence or an expiry passes in a few milliseconds of real time.
TEST_F(RollbackTest, StalenessAndHeartbeatExpiryRunOnAFakeClock) {
  FakeClock clock(time(nullptr));
  auto heartbeat_at = [&](int64_t issued, int64_t lifetime) {
    v1::SignedPayload payload;
    auto* hb = payload.mutable_heartbeat();
    hb->set_origin("origin");
    hb->set_issued_unix(issued);
    hb->set_expires_unix(issued + lifetime);
    auto* r = hb->add_repos();
    r->set_repo("demo");
    r->set_serial(3);
    return SealEnvelope(payload, heartbeat_);
  };
  SubscriberOptions options;
  options.broker = *ParseHostPort(broker_.address());
  options.trust = {dir_ / "origin.pub"};
  options.heartbeat_trust = {dir_ / "heartbeat.pub"};
  options.stale_after = 60s;
  options.repo = "demo";
  options.tree = dir_ / "tree";
  options.state = dir_ / "state";
  options.id = "fake-clock";
  options.clock = &clock;
  const std::string first = heartbeat_at(clock.NowUnix(), 120);
  broker_.SetBroadcasts({first});
  Subscriber subscriber(options);
  ASSERT_TRUE(subscriber.Start().ok());
  ASSERT_TRUE(WaitFor([&] { return HasAck(v1::ACK_APPLIED, 3); }, 60s));
  auto acked = [&](v1::AckState state, const std::string& text) {
    return WaitFor(
        [&] {
          for (const auto& ack : broker_.acks()) {
            if (ack.state() == state && ack.error().find(text) != std::string::npos) return true;
          }
          return false;
        },
        20s);
  };

  // 61 s of silence, without waiting for them: stale ("for 61 s", or
  // "since start" when the first heartbeat had not arrived by the applied
  // ACK: the fake broker's broadcasts race with the catch-up).
  broker_.SetBroadcasts(std::vector<std::string>{});
  clock.Advance(61s);
  EXPECT_TRUE(acked(v1::ACK_STALE, "no valid heartbeat"));

  // The same heartbeat again, now past its expiry (120 s): refused, still
  // stale.
  clock.Advance(100s);
  broker_.SetBroadcasts({first});
  EXPECT_TRUE(acked(v1::ACK_REJECTED, "expired at"));

  // A heartbeat with no expiry at all proves nothing either.
  broker_.SetBroadcasts({heartbeat_at(clock.NowUnix(), -clock.NowUnix())});
  EXPECT_TRUE(acked(v1::ACK_REJECTED, "no expiry"));

  // A fresh one, issued at the fake now: fresh again.
  const size_t before = broker_.acks().size();
  broker_.SetBroadcasts({heartbeat_at(clock.NowUnix(), 120)});
  EXPECT_TRUE(WaitFor(
      [&] {
        auto acks = broker_.acks();
        for (size_t i = before; i < acks.size(); ++i) {
          if (acks[i].state() == v1::ACK_APPLIED && acks[i].serial() == 3) return true;
        }
        return false;
      },
      20s));
  subscriber.Stop();
}

}  // namespace
}  // namespace mirrorcast::testing
