// A real Broker in-process over CURVE on 127.0.0.1 port 0, driven by the
// real clients with real keys: the ZAP handler lets only allow-listed keys
// in, each role may make only its requests, a mirror ACKs only as the name
// its key is listed under, a reload of the allow-list takes effect on live
// connections, and the control limits follow the key, not the connection.
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "broker/broker.h"
#include "core/crypto/keys.h"
#include "core/net/control_client.h"
#include "core/net/curve.h"
#include "core/wire/envelope.h"
#include "tests/support/temp_dir.h"
#include "tests/support/tree.h"

namespace mirrorcast::testing {
namespace {

namespace fs = std::filesystem;
using std::chrono::milliseconds;
constexpr milliseconds kTimeout{5000};
// A refused handshake is retried by libzmq; this is how long a client tries.
constexpr milliseconds kRefusedTimeout{1500};

class CurveBrokerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    fs::create_directories(dir_ / "tree/main");
    auto key = SigningKey::Generate();
    ASSERT_TRUE(key.ok());
    WriteFile(dir_ / "publisher.pub", key->public_key().ToFileText());
    signing_.emplace(std::move(*key));
    broker_keys_ = NewKeys();
    for (const std::string name : {"m1", "m2", "release", "ops", "stranger"}) {
      keys_[name] = NewKeys();
    }
    WriteAllowList("mirror m1 " + keys_["m1"].public_z85 + "\nmirror m2 " + keys_["m2"].public_z85 +
                   "\npublish release " + keys_["release"].public_z85 + "\nadmin ops " +
                   keys_["ops"].public_z85 + "\n");
    ASSERT_TRUE(SaveCurveKeyFiles(broker_keys_, (dir_ / "broker").string()).ok());
    options_.listen = HostPort{"127.0.0.1", 0};
    options_.state_dir = dir_ / "state";
    options_.tree_root = dir_ / "tree";
    options_.trust = {dir_ / "publisher.pub"};
    options_.broker_id = "curve-broker";
    options_.content_workers = 1;
    options_.curve_key = dir_ / "broker.curve.key";
    options_.allow_file = dir_ / "allow.list";
  }

  void StartBroker() {
    broker_ = std::make_unique<Broker>(options_);
    Status started = broker_->Start();
    ASSERT_TRUE(started.ok()) << started.ToString();
  }

  void TearDown() override {
    if (broker_) broker_->Stop();
  }

  static CurveKeyPair NewKeys() {
    auto keys = GenerateCurveKeyPair();
    EXPECT_TRUE(keys.ok());
    return *keys;
  }

  void WriteAllowList(const std::string& text) { WriteFile(dir_ / "allow.list", text, 0644); }

  HostPort Control() const { return HostPort{"127.0.0.1", broker_->control_port()}; }
  ClientTransport As(const std::string& name) {
    return ClientCurve{keys_.at(name), broker_keys_.public_z85};
  }
  std::unique_ptr<ControlClient> Client(const std::string& name) {
    return std::make_unique<ControlClient>(context_, Control(), As(name));
  }

  static v1::Ack AckOf(const std::string& mirror_id) {
    v1::Ack ack;
    ack.set_mirror_id(mirror_id);
    ack.set_repo("main");
    ack.set_state(v1::ACK_APPLIED);
    return ack;
  }

  std::map<std::string, std::string> MirrorsInStatus() {
    auto status = Client("ops")->GetStatus(kTimeout);
    EXPECT_TRUE(status.ok()) << status.status().ToString();
    std::map<std::string, std::string> out;
    if (!status.ok()) return out;
    EXPECT_FALSE(status->insecure_plaintext());
    for (const auto& m : status->mirrors()) out[m.mirror_id()] = m.repo();
    return out;
  }

  TempDir dir_{"mirrorcast-curve"};
  zmq::context_t context_;
  std::optional<SigningKey> signing_;
  CurveKeyPair broker_keys_;
  std::map<std::string, CurveKeyPair> keys_;
  BrokerOptions options_;
  std::unique_ptr<Broker> broker_;
};

TEST_F(CurveBrokerTest, WithoutKeysOrPlaintextTheBrokerRefusesToStart) {
  BrokerOptions none = options_;
  none.curve_key.reset();
  none.allow_file.reset();
  Broker broker(none);
  Status s = broker.Start();
  EXPECT_EQ(s.code(), Status::Code::kInvalidArgument);
  EXPECT_NE(s.message().find("--insecure-plaintext"), std::string::npos) << s.ToString();
  EXPECT_NE(s.message().find("--curve-key"), std::string::npos) << s.ToString();
}

TEST_F(CurveBrokerTest, OnlyListedKeysGetInAndPlainClientsAreToldWhy) {
  StartBroker();
  auto hello = Client("m1")->Hello("m1", kTimeout);
  ASSERT_TRUE(hello.ok()) << hello.status().ToString();

  auto stranger = Client("stranger")->Hello("stranger", kRefusedTimeout);
  ASSERT_FALSE(stranger.ok());
  EXPECT_EQ(stranger.status().code(), Status::Code::kUnavailable);
  EXPECT_NE(stranger.status().message().find("refused this client's key"), std::string::npos)
      << stranger.status().ToString();

  ControlClient plain(context_, Control());
  auto plaintext = plain.Hello("plain", kRefusedTimeout);
  ASSERT_FALSE(plaintext.ok());
  EXPECT_NE(plaintext.status().message().find("another transport security"), std::string::npos)
      << plaintext.status().ToString();

  // A client holding the wrong broker key never gets an answer.
  ControlClient wrong_broker(context_, Control(), ClientCurve{keys_["m1"], NewKeys().public_z85});
  EXPECT_FALSE(wrong_broker.Hello("m1", kRefusedTimeout).ok());
}

TEST_F(CurveBrokerTest, EachRoleMayMakeOnlyItsRequests) {
  StartBroker();
  // A mirror key cannot publish, upload or read the mirror table.
  v1::ControlRequest publish;
  publish.mutable_publish()->set_envelope("not even an envelope");
  auto refused = Client("m1")->Call(publish, kTimeout);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("the mirror key m1 may not send Publish"),
            std::string::npos)
      << refused.status().ToString();
  auto status = Client("m1")->GetStatus(kTimeout);
  ASSERT_FALSE(status.ok());
  EXPECT_NE(status.status().message().find("may not send Status"), std::string::npos);

  // The publish key gets to the publish checks (and fails them on its merits).
  auto publish_key = Client("release")->Call(publish, kTimeout);
  ASSERT_FALSE(publish_key.ok());
  EXPECT_EQ(publish_key.status().message().find("may not send"), std::string::npos)
      << publish_key.status().ToString();
  // ... but cannot ACK; an admin may read the status and do nothing else.
  EXPECT_FALSE(Client("release")->SendAck(AckOf("release"), kTimeout).ok());
  EXPECT_TRUE(Client("ops")->GetStatus(kTimeout).ok());
  auto admin_events = Client("ops")->Events("main", 0, 10, kTimeout);
  ASSERT_FALSE(admin_events.ok());
  EXPECT_NE(admin_events.status().message().find("the admin key ops may not send Events"),
            std::string::npos);
}

TEST_F(CurveBrokerTest, AMirrorAcksAndShowsOnlyAsTheNameItsKeyIsListedUnder) {
  StartBroker();
  auto m1 = Client("m1");
  Status own = m1->SendAck(AckOf("m1"), kTimeout);
  ASSERT_TRUE(own.ok()) << own.ToString();
  Status forged = m1->SendAck(AckOf("m2"), kTimeout);
  ASSERT_FALSE(forged.ok());
  EXPECT_NE(forged.message().find("may ACK only as mirror m1"), std::string::npos)
      << forged.ToString();
  const auto mirrors = MirrorsInStatus();
  EXPECT_EQ(mirrors.count("m1"), 1u);
  EXPECT_EQ(mirrors.count("m2"), 0u);
}

TEST_F(CurveBrokerTest, AReloadAddsAndRemovesKeysOnLiveConnections) {
  StartBroker();
  auto m1 = Client("m1");
  ASSERT_TRUE(m1->Hello("m1", kTimeout).ok());
  EXPECT_FALSE(Client("stranger")->Hello("stranger", kRefusedTimeout).ok());

  // The stranger is added as mirror m3; m1 is removed.
  WriteAllowList("mirror m3 " + keys_["stranger"].public_z85 + "\nadmin ops " +
                 keys_["ops"].public_z85 + "\n");
  ASSERT_TRUE(broker_->ReloadAllowList().ok());
  auto added = Client("stranger")->Hello("m3", kTimeout);
  EXPECT_TRUE(added.ok()) << added.status().ToString();
  // m1's connection stays up, but its next request is refused.
  auto removed = m1->Hello("m1", kTimeout);
  ASSERT_FALSE(removed.ok());
  EXPECT_NE(removed.status().message().find("not on the broker's allow-list"), std::string::npos)
      << removed.status().ToString();

  // A list with an error changes nothing.
  WriteAllowList("mirror m3 " + keys_["stranger"].public_z85 + "\nowner x y\n");
  Status bad = broker_->ReloadAllowList();
  EXPECT_FALSE(bad.ok());
  EXPECT_NE(bad.message().find(":2: "), std::string::npos) << bad.ToString();
  EXPECT_TRUE(Client("stranger")->Hello("m3", kTimeout).ok());
  EXPECT_TRUE(Client("ops")->GetStatus(kTimeout).ok());
}

TEST_F(CurveBrokerTest, ControlLimitsFollowTheKeyAcrossReconnects) {
  options_.control_limits.burst = 4;
  options_.control_limits.requests_per_second = 0.01;  // no refill within the test
  StartBroker();
  {
    auto first = Client("m1");
    for (int i = 0; i < 4; ++i) ASSERT_TRUE(first->Hello("m1", kTimeout).ok()) << i;
    EXPECT_FALSE(first->Hello("m1", kTimeout).ok());
  }
  // A new connection with the same key gets no fresh budget ...
  auto again = Client("m1")->Hello("m1", kTimeout);
  ASSERT_FALSE(again.ok());
  EXPECT_NE(again.status().message().find("a second from this peer"), std::string::npos)
      << again.status().ToString();
  // ... while another key has its own.
  EXPECT_TRUE(Client("m2")->Hello("m2", kTimeout).ok());
}

}  // namespace
}  // namespace mirrorcast::testing
