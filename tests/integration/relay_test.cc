// Relay brokers (mirrorcast-broker --upstream): real processes on loopback.
// A relay follows its upstream as a mirror does, re-publishes the origin's
// signed event unchanged once the apply is durable, and serves its region
// from its own tree and log; a relay can follow a relay (three tiers); a
// mirror behind a relay that dies fails over to the origin and comes back.
#include <gtest/gtest.h>
#include <signal.h>

#include <fstream>

#include "core/net/control_client.h"
#include "tests/integration/cluster.h"
#include "tests/integration/hostile_broker.h"
#include "tests/support/process.h"
#include "tests/support/tree.h"

namespace mirrorcast::testing {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

// A relay broker process: its own CURVE key (listed as role relay on the
// shared allow-list, which also lists every mirror), state and tree.
class RelayBroker {
 public:
  // Makes its key and lists it (before the origin starts, or reload).
  RelayBroker(Cluster& c, std::string name) : c_(c), name_(std::move(name)) {
    c.MakeCurveKey(name_);
    c.AllowKey("relay", name_, name_ + ".curve.pub");
  }
  ~RelayBroker() { Stop(); }

  // `upstreams`: (address, that broker's CURVE public key file), in order.
  void Start(std::vector<std::pair<std::string, fs::path>> upstreams,
             const std::vector<std::string>& extra = {}) {
    upstreams_ = std::move(upstreams);
    const fs::path port_file = c_.root() / (name_ + ".port");
    fs::remove(port_file);
    std::vector<std::string> argv = {BinPath("mirrorcast-broker").string(),
                                     "--listen",
                                     port_ ? "127.0.0.1:" + std::to_string(port_) : "127.0.0.1:0",
                                     "--port-file",
                                     port_file.string(),
                                     "--state",
                                     state().string(),
                                     "--tree-root",
                                     tree_root().string(),
                                     "--trust",
                                     c_.origin_pub().string(),
                                     "--curve-key",
                                     (c_.root() / "keys" / (name_ + ".curve.key")).string(),
                                     "--allow",
                                     c_.allow_list().string(),
                                     "--broker-id",
                                     name_,
                                     "--upstream-poll",
                                     "2",
                                     "--failover-after",
                                     "2",
                                     "--log-level",
                                     "debug"};
    for (const auto& [address, key] : upstreams_) {
      argv.insert(argv.end(), {"--upstream", address, "--upstream-key", key.string()});
    }
    argv.insert(argv.end(), extra.begin(), extra.end());
    fs::create_directories(tree_root());
    process_ = std::make_unique<ChildProcess>();
    process_->Start(argv, log());
    const std::string address = WaitForFile(port_file, 20s);
    port_ = static_cast<uint16_t>(std::stoi(address.substr(address.rfind(':') + 1)));
  }
  void Stop() {
    if (process_) process_->Stop(10s);
    process_.reset();
  }
  void Kill() {
    if (!process_) return;
    process_->Signal(SIGKILL);
    (void)process_->Wait(10s);
    process_.reset();
  }

  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  fs::path public_key() const { return c_.root() / "keys" / (name_ + ".curve.pub"); }
  fs::path state() const { return c_.root() / (name_ + "-state"); }
  fs::path tree_root() const { return c_.root() / (name_ + "-trees"); }
  fs::path log() const { return c_.root() / "logs" / (name_ + ".log"); }
  size_t Relayed(uint64_t serial) const {
    return Cluster::CountInLog(log(), "relayed repo=demo serial=" + std::to_string(serial) + " ");
  }

 private:
  Cluster& c_;
  std::string name_;
  std::vector<std::pair<std::string, fs::path>> upstreams_;
  std::unique_ptr<ChildProcess> process_;
  uint16_t port_ = 0;
};

// Mirrors started by StartMirror, stopped when the test ends.
std::vector<std::unique_ptr<ChildProcess>>& mirrors() {
  static std::vector<std::unique_ptr<ChildProcess>> all;
  return all;
}

// A mirror's subscriber flags for following `brokers` (address, public key)
// in order.
std::vector<std::string> Follow(const std::vector<std::pair<std::string, fs::path>>& brokers) {
  std::vector<std::string> out;
  for (const auto& [address, key] : brokers) out.insert(out.end(), {"--broker", address});
  for (const auto& [address, key] : brokers) out.insert(out.end(), {"--broker-key", key.string()});
  return out;
}

// The cluster's SubscriberArgv with its own --broker and --broker-key
// replaced by `brokers`.
void StartMirror(Cluster& c, const std::string& id,
                 const std::vector<std::pair<std::string, fs::path>>& brokers,
                 const std::vector<std::string>& extra = {}) {
  (void)c.MirrorTransport(id);  // its key on the allow-list
  std::vector<std::string> flags = Follow(brokers);
  flags.insert(flags.end(),
               {"--curve-key", (c.root() / "keys" / ("mirror-" + id + ".curve.key")).string()});
  flags.insert(flags.end(), extra.begin(), extra.end());
  std::vector<std::string> argv = c.SubscriberArgv(id, flags, /*with_transport=*/false);
  // SubscriberCommand put the origin first: the brokers given replace it.
  for (size_t i = 0; i + 1 < argv.size(); ++i) {
    if (argv[i] == "--broker") {
      argv.erase(argv.begin() + static_cast<long>(i), argv.begin() + static_cast<long>(i) + 2);
      break;
    }
  }
  auto child = std::make_unique<ChildProcess>();
  child->Start(argv, c.root() / "logs" / (id + ".log"));
  mirrors().emplace_back(std::move(child));
}

bool SameTree(const fs::path& a, const fs::path& b) { return SnapshotTree(a) == SnapshotTree(b); }

class Relay : public ::testing::Test {
 protected:
  void TearDown() override { mirrors().clear(); }
};

TEST_F(Relay, ThreeTiersCarryEveryPublishUnchangedToEveryMirror) {
  Cluster c;
  WriteFile(c.origin_tree() / "repodata/repomd.xml", "<repomd>1</repomd>");
  WriteFile(c.origin_tree() / "Packages/a.rpm", RandomBytes(200000, 1));
  RelayBroker a2(c, "relay-a");
  RelayBroker b(c, "relay-b");
  (void)c.MirrorTransport("m-a");  // every key listed before the relays read the list
  (void)c.MirrorTransport("m-b");
  c.StartBroker();
  a2.Start({{c.broker_address(), c.broker_curve_pub()}});
  b.Start({{a2.address(), a2.public_key()}});
  c.PublishOk();
  StartMirror(c, "m-a", {{a2.address(), a2.public_key()}});
  StartMirror(c, "m-b", {{b.address(), b.public_key()}});

  const fs::path tree_a = a2.tree_root() / "demo";
  const fs::path tree_b = b.tree_root() / "demo";
  ASSERT_TRUE(WaitUntil([&] { return SameTree(c.mirror_tree("m-b"), c.origin_tree()); }, 60s))
      << c.Logs() << ReadFile(a2.log()) << ReadFile(b.log());
  ASSERT_TRUE(WaitUntil([&] { return SameTree(c.mirror_tree("m-a"), c.origin_tree()); }, 30s))
      << c.Logs() << ReadFile(a2.log());

  // An update: the relays apply it, then re-publish the origin's envelope.
  WriteFile(c.origin_tree() / "repodata/repomd.xml", "<repomd>2</repomd>");
  std::string pkg = RandomBytes(200000, 1);
  pkg[1000] ^= 0x55;
  WriteFile(c.origin_tree() / "Packages/a.rpm", pkg);
  WriteFile(c.origin_tree() / "Packages/b.rpm", "b");
  c.PublishOk();
  ASSERT_TRUE(WaitUntil([&] { return SameTree(c.mirror_tree("m-b"), c.origin_tree()); }, 60s))
      << c.Logs() << ReadFile(a2.log()) << ReadFile(b.log());
  ASSERT_TRUE(WaitUntil([&] { return SameTree(c.mirror_tree("m-a"), c.origin_tree()); }, 30s));
  EXPECT_TRUE(SameTree(tree_a, c.origin_tree()));
  EXPECT_TRUE(SameTree(tree_b, c.origin_tree()));
  EXPECT_EQ(a2.Relayed(2), 1u) << ReadFile(a2.log());
  EXPECT_EQ(b.Relayed(2), 1u) << ReadFile(b.log());

  // The mirrors behind relay-b never talked to the origin.
  EXPECT_EQ(Cluster::CountInLog(c.broker_log(), "m-b"), 0u);

  // Forwarded ACKs: the origin shows every mirror behind the relays it
  // reports through, as a tree.
  auto via_is = [&](const std::string& id, const std::string& via, uint64_t serial) {
    auto row = c.Mirror(id);
    return row && row->via() == via && row->serial() == serial;
  };
  EXPECT_TRUE(WaitUntil(
      [&] {
        return via_is("m-a", "relay-a", 2) && via_is("relay-b", "relay-a", 2) &&
               via_is("m-b", "relay-a/relay-b", 2) && via_is("relay-a", "", 2);
      },
      30s))
      << c.Status().DebugString() << ReadFile(a2.log());

  // A relay takes no publish.
  std::vector<std::string> argv = c.PublishArgv();
  for (size_t i = 0; i + 1 < argv.size(); ++i) {
    if (argv[i] == "--broker") argv[i + 1] = a2.address();
    if (argv[i] == "--broker-key") argv[i + 1] = a2.public_key().string();
  }
  WriteFile(c.origin_tree() / "c.rpm", "c");
  const RunResult refused = mirrorcast::testing::Run(argv, 60s);
  EXPECT_NE(refused.exit_code, 0);
  EXPECT_NE((refused.out + refused.err).find("relay"), std::string::npos)
      << refused.out << refused.err;
}

TEST_F(Relay, AMirrorBehindADeadRelayFailsOverToTheOriginAndComesBack) {
  Cluster c;
  WriteFile(c.origin_tree() / "a.rpm", "a");
  RelayBroker a(c, "relay-a");
  (void)c.MirrorTransport("m");
  c.StartBroker();
  const std::vector<std::pair<std::string, fs::path>> origin = {
      {c.broker_address(), c.broker_curve_pub()}};
  a.Start(origin);
  c.PublishOk();
  StartMirror(c, "m", {{a.address(), a.public_key()}, {c.broker_address(), c.broker_curve_pub()}},
              {"--failover-after", "2"});
  c.WaitForSerial({"relay-a"}, 1);
  ASSERT_TRUE(WaitUntil([&] { return fs::exists(c.mirror_tree("m") / "a.rpm"); }, 30s))
      << c.Logs() << ReadFile(a.log());
  const fs::path log = c.root() / "logs" / "m.log";

  // kill -9 of the relay; serial 2 reaches the mirror from the origin.
  a.Kill();
  WriteFile(c.origin_tree() / "b.rpm", "b");
  c.PublishOk();
  ASSERT_TRUE(WaitUntil([&] { return fs::exists(c.mirror_tree("m") / "b.rpm"); }, 40s))
      << c.Logs() << ReadFile(log);
  EXPECT_EQ(Cluster::CountInLog(log, "switched from broker"), 1u) << ReadFile(log);

  // The relay comes back, catches up from the origin, and the mirror goes back.
  a.Start(origin);
  ASSERT_TRUE(WaitUntil([&] { return a.Relayed(2) == 1; }, 40s)) << ReadFile(a.log());
  ASSERT_TRUE(WaitUntil(
      [&] { return Cluster::CountInLog(log, "the first broker answers again") == 1; }, 40s))
      << ReadFile(log);
  WriteFile(c.origin_tree() / "c.rpm", "c");
  c.PublishOk();
  ASSERT_TRUE(WaitUntil([&] { return SameTree(c.mirror_tree("m"), c.origin_tree()); }, 40s))
      << ReadFile(log) << ReadFile(a.log());
  EXPECT_EQ(Cluster::CountInLog(log, "applied repo=demo serial=1 "), 1u) << ReadFile(log);
  EXPECT_EQ(Cluster::CountInLog(log, "applied repo=demo serial=2 "), 1u) << ReadFile(log);
  EXPECT_EQ(Cluster::CountInLog(log, "applied repo=demo serial=3 "), 1u) << ReadFile(log);
  EXPECT_EQ(Cluster::CountInLog(log, "rejected"), 0u) << ReadFile(log);
}

TEST_F(Relay, AMirrorRefusesWhatAHostileRelayAltersAndFailsOverToTheOrigin) {
  Cluster c;
  c.UseInsecurePlaintext();
  WriteFile(c.origin_tree() / "a.rpm", "a");
  c.StartBroker();
  c.PublishOk();
  // The relay in front of the mirror serves the origin's event with one
  // byte of its signed payload changed.
  zmq::context_t context(1);
  ControlClient origin(context, HostPort{"127.0.0.1", c.broker_port()});
  auto events = origin.Events("demo", 0, 10, 5s);
  ASSERT_TRUE(events.ok()) << events.status().ToString();
  ASSERT_EQ(events->envelopes_size(), 1);
  v1::Envelope envelope;
  ASSERT_TRUE(envelope.ParseFromString(events->envelopes(0)));
  std::string payload = envelope.payload();
  payload[payload.size() / 2] ^= 0x01;
  envelope.set_payload(payload);
  HostileBroker relay("demo");
  relay.AddEvent(1, envelope.SerializeAsString());
  relay.SetBroadcasts({envelope.SerializeAsString()});
  relay.Start();

  std::vector<std::string> argv = c.SubscriberArgv(
      "m", {"--broker", relay.address(), "--broker", c.broker_address(), "--failover-after", "2"});
  for (size_t i = 0; i + 1 < argv.size(); ++i) {
    if (argv[i] == "--broker") {  // the cluster's own --broker: replaced by the two above
      argv.erase(argv.begin() + static_cast<long>(i), argv.begin() + static_cast<long>(i) + 2);
      break;
    }
  }
  ChildProcess mirror;
  mirror.Start(argv, c.root() / "logs" / "m.log");
  const fs::path log = c.root() / "logs" / "m.log";
  ASSERT_TRUE(WaitUntil([&] { return fs::exists(c.mirror_tree("m") / "a.rpm"); }, 40s))
      << ReadFile(log);
  EXPECT_GE(Cluster::CountInLog(log, "switched from broker " + relay.address()), 1u)
      << ReadFile(log);
  EXPECT_GE(Cluster::CountInLog(log, "offers what this mirror refuses"), 1u) << ReadFile(log);
  // Nothing of the altered event was applied: the tree is the origin's.
  EXPECT_TRUE(SameTree(c.mirror_tree("m"), c.origin_tree()));
  mirror.Stop(10s);
}

}  // namespace
}  // namespace mirrorcast::testing
