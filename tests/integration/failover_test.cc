// A mirror with several brokers (--broker repeated): when its first broker
// goes away it switches to the next, applies what that one has, and goes
// back once the first answers again with a head at least the mirror's; no
// apply is lost or repeated. Two real brokers serve the same origin tree
// (each published to by mirrorcast-publish), as a relay and the origin will.
#include <gtest/gtest.h>

#include <fstream>

#include "tests/integration/cluster.h"
#include "tests/support/process.h"

namespace mirrorcast::testing {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

// A second broker on the cluster's origin tree, keys and allow-list.
class SecondBroker {
 public:
  explicit SecondBroker(Cluster& c) : c_(c) {
    const fs::path port_file = c.root() / "broker-b.port";
    process_.Start(
        {BinPath("mirrorcast-broker").string(), "--listen", "127.0.0.1:0", "--port-file",
         port_file.string(), "--state", (c.root() / "broker-b-state").string(), "--tree-root",
         (c.root() / "origin").string(), "--trust", c.origin_pub().string(), "--curve-key",
         (c.root() / "keys" / "broker.curve.key").string(), "--allow", c.allow_list().string(),
         "--broker-id", "broker-b", "--log-level", "debug"},
        c.root() / "logs" / "broker-b.log");
    address_ = WaitForFile(port_file, 20s);
  }
  const std::string& address() const { return address_; }

  // mirrorcast-publish of the origin tree to this broker (its own
  // publisher state).
  void Publish() {
    std::vector<std::string> argv = c_.PublishArgv();
    for (size_t i = 0; i + 1 < argv.size(); ++i) {
      if (argv[i] == "--broker") argv[i + 1] = address_;
      if (argv[i] == "--state") argv[i + 1] = (c_.root() / "publish-state-b").string();
    }
    const RunResult r = mirrorcast::testing::Run(argv, 120s);
    ASSERT_EQ(r.exit_code, 0) << r.out << r.err << c_.Logs();
  }

 private:
  Cluster& c_;
  ChildProcess process_;
  std::string address_;
};

TEST(Failover, AMirrorSwitchesToItsNextBrokerAndGoesBackWithoutLosingOrRepeatingAnApply) {
  Cluster c;
  std::ofstream(c.origin_tree() / "a.rpm") << "a";
  c.StartBroker();
  c.PublishOk();
  (void)c.MirrorTransport("m");  // the mirror's key on the allow-list before B reads it
  SecondBroker b(c);
  b.Publish();

  c.StartSubscriber("m", {"--broker", b.address(), "--failover-after", "2"});
  c.WaitForSerial({"m"}, 1);
  const fs::path log = c.subscriber("m").log_path();

  // The first broker goes away; serial 2 is published to the second only.
  c.StopBroker();
  std::ofstream(c.origin_tree() / "b.rpm") << "b";
  b.Publish();
  ASSERT_TRUE(WaitUntil([&] { return fs::exists(c.mirror_tree("m") / "b.rpm"); }, 40s)) << c.Logs();
  EXPECT_EQ(Cluster::CountInLog(log, "switched from broker"), 1u) << c.Logs();

  // The first comes back behind the mirror (serial 1): the mirror stays.
  c.StartBroker();
  std::this_thread::sleep_for(3s);
  EXPECT_EQ(Cluster::CountInLog(log, "the first broker answers again"), 0u) << c.Logs();
  // Once it has serial 2 too, the mirror goes back and tells it so.
  c.PublishOk();
  ASSERT_TRUE(WaitUntil(
      [&] { return Cluster::CountInLog(log, "the first broker answers again") == 1; }, 30s))
      << c.Logs();
  c.WaitForSerial({"m"}, 2, 30s);
  EXPECT_EQ(Cluster::CountInLog(log, "applied repo=demo serial=1 "), 1u) << c.Logs();
  EXPECT_EQ(Cluster::CountInLog(log, "applied repo=demo serial=2 "), 1u) << c.Logs();
  EXPECT_EQ(Cluster::CountInLog(log, "rejected"), 0u) << c.Logs();
}

}  // namespace
}  // namespace mirrorcast::testing
