// Transport security end to end: a real mirrorcast-broker over CURVE with an
// allow-list, real subscriber, publisher and admin processes, and hostile
// clients with real keys over real loopback sockets.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <chrono>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "core/net/content_client.h"
#include "core/net/control_client.h"
#include "core/net/curve.h"
#include "tests/integration/cluster.h"
#include "tests/support/tree.h"

namespace mirrorcast::testing {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

// The flags of a client holding `prefix`'s key.
std::vector<std::string> KeyFlags(const Cluster& c, const fs::path& prefix) {
  return {"--curve-key", prefix.string() + ".curve.key", "--broker-key",
          c.broker_curve_pub().string()};
}

// mirrorcast-subscriber --once for mirror `id` with `flags` as its transport
// (none at all when empty).
RunResult SubscribeOnce(Cluster& c, const std::string& id, const std::vector<std::string>& flags) {
  std::vector<std::string> extra = {"--once", "--connect-timeout", "3"};
  extra.insert(extra.end(), flags.begin(), flags.end());
  return mirrorcast::testing::Run(c.SubscriberArgv(id, extra, /*with_transport=*/false), 60s);
}

// mirrorcast-publish of the origin tree with `flags` as its transport and a
// short reply timeout.
RunResult PublishWith(const Cluster& c, const std::vector<std::string>& flags) {
  return mirrorcast::testing::Run(c.PublishArgv(flags, std::nullopt, 3), 60s);
}

// An ACK a client forges for mirror `id`.
v1::Ack ForgedAck(const Cluster& c, const std::string& id, const std::string& error) {
  v1::Ack ack;
  ack.set_mirror_id(id);
  ack.set_repo(c.repo());
  ack.set_serial(0);
  ack.set_state(v1::ACK_FAILED);
  ack.set_error(error);
  return ack;
}

RunResult StatusCommand(const Cluster& c, const std::vector<std::string>& flags) {
  std::vector<std::string> argv = {
      BinPath("mirrorcast").string(), "status", "--broker", c.broker_address(), "--timeout", "3"};
  argv.insert(argv.end(), flags.begin(), flags.end());
  return mirrorcast::testing::Run(argv, 60s);
}

std::string PublicKeyOf(const fs::path& prefix) {
  auto key = LoadCurvePublicFile(prefix.string() + ".curve.pub");
  EXPECT_TRUE(key.ok()) << key.status().ToString();
  return key.ok() ? *key : std::string();
}

// Whether a tree exists and holds anything.
bool HasFiles(const fs::path& tree) {
  std::error_code ec;
  return fs::exists(tree, ec) && !fs::is_empty(tree, ec);
}

TEST(Transport, KeygenCurveWritesTheSecretPrivatelyAndThePublicKeyInZ85) {
  Cluster c;
  const fs::path prefix = c.root() / "keys" / "fresh";
  RunResult r = mirrorcast::testing::Run(
      {BinPath("mirrorcast").string(), "keygen", "--curve", "--out", prefix.string()}, 30s);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  struct stat st {};
  ASSERT_EQ(::stat((prefix.string() + ".curve.key").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  const std::string pub = PublicKeyOf(prefix);
  EXPECT_TRUE(IsCurveKeyZ85(pub));
  EXPECT_NE(r.out.find("public key: " + pub), std::string::npos) << r.out;
  // Never overwrites.
  RunResult again = mirrorcast::testing::Run(
      {BinPath("mirrorcast").string(), "keygen", "--curve", "--out", prefix.string()}, 30s);
  EXPECT_NE(again.exit_code, 0);
  EXPECT_EQ(PublicKeyOf(prefix), pub);
}

TEST(Transport, AKeyNotOnTheListCannotSubscribeFetchPublishOrAckAndIsLoggedOnce) {
  Cluster c;
  MakeSampleRepo(c.origin_tree(), 10, 0);
  c.StartBroker();
  c.StartSubscriber("m1");
  c.PublishOk();
  c.WaitForSerial({"m1"}, 1);
  const TreeSnapshot origin = SnapshotTree(c.origin_tree());
  const fs::path intruder = c.MakeCurveKey("intruder");
  const std::string intruder_key = PublicKeyOf(intruder);

  // Subscribe: the handshake is refused, nothing is written.
  RunResult sub = SubscribeOnce(c, "m9", KeyFlags(c, intruder));
  EXPECT_EQ(sub.exit_code, 1) << sub.err;
  EXPECT_NE(sub.err.find("refused this client's key"), std::string::npos) << sub.err;
  EXPECT_FALSE(HasFiles(c.mirror_tree("m9")));

  // Publish: refused before anything is sent; the broker's head is unchanged.
  WriteFile(c.origin_tree() / "Packages/intruder.rpm", "not for mirrors");
  RunResult pub = PublishWith(c, KeyFlags(c, intruder));
  EXPECT_EQ(pub.exit_code, 3) << pub.err;
  EXPECT_NE(pub.err.find("refused this client's key"), std::string::npos) << pub.err;
  fs::remove(c.origin_tree() / "Packages/intruder.rpm");

  // ACK and fetch, from this process with the intruder's key.
  const ClientTransport transport = LoadClientTransport(KeyFlags(c, intruder));
  zmq::context_t context(1);
  {
    ControlClient control(context, HostPort{"127.0.0.1", c.broker_port()}, transport);
    EXPECT_FALSE(control.SendAck(ForgedAck(c, "m1", "forged by an intruder"), 2000ms).ok());
  }
  const v1::StatusReply status = c.Status();
  ASSERT_EQ(status.repos_size(), 1);
  EXPECT_EQ(status.repos(0).serial(), 1u);
  auto m1 = c.Mirror("m1");
  ASSERT_TRUE(m1.has_value());
  EXPECT_EQ(m1->state(), v1::ACK_APPLIED);
  EXPECT_EQ(m1->serial(), 1u);
  {
    // The content port is announced to listed keys only: ask as the admin.
    ControlClient admin(context, HostPort{"127.0.0.1", c.broker_port()},
                        LoadClientTransport(c.AdminTransport()));
    auto hello = admin.Hello("transport-test", 5000ms);
    ASSERT_TRUE(hello.ok()) << hello.status().ToString();
    ContentClientOptions options;
    options.transport = transport;
    options.stall_timeout = 2000ms;
    ContentClient content(context,
                          HostPort{"127.0.0.1", static_cast<uint16_t>(hello->content_port())},
                          c.repo(), options);
    FetchStats stats;
    auto object = content.FetchManifestObject(status.repos(0).manifest_sha256(), 1u << 20, &stats);
    EXPECT_FALSE(object.ok());
    EXPECT_EQ(stats.bytes_fetched, 0u);
  }

  // The honest mirror still follows, and the trees are the origin's.
  EXPECT_EQ(SnapshotTree(c.mirror_tree("m1")), origin);
  EXPECT_EQ(SnapshotTree(c.origin_tree()), origin);
  // Many handshakes on three sockets, one log line naming the key.
  EXPECT_EQ(Cluster::CountInLog(c.broker_log(), "refused CURVE key " + intruder_key), 1u)
      << c.Logs();
}

TEST(Transport, AMirrorKeyCannotAckAsAnotherMirrorOrPublish) {
  Cluster c;
  MakeSampleRepo(c.origin_tree(), 10, 0);
  c.StartBroker();
  c.StartSubscriber("m1");
  c.StartSubscriber("m2");
  c.PublishOk();
  c.WaitForSerial({"m1", "m2"}, 1);

  const ClientTransport m1 = LoadClientTransport(c.MirrorTransport("m1"));
  zmq::context_t context(1);
  ControlClient control(context, HostPort{"127.0.0.1", c.broker_port()}, m1);
  for (int i = 0; i < 3; ++i) {
    Status s = control.SendAck(ForgedAck(c, "m2", "forged by m1"), 5000ms);
    ASSERT_FALSE(s.ok());
    EXPECT_NE(s.message().find("may ACK only as mirror m1"), std::string::npos) << s.ToString();
  }
  auto m2 = c.Mirror("m2");
  ASSERT_TRUE(m2.has_value());
  EXPECT_EQ(m2->state(), v1::ACK_APPLIED);
  EXPECT_EQ(m2->serial(), 1u);
  EXPECT_EQ(Cluster::CountInLog(c.broker_log(), "refused ACK as mirror m2"), 1u) << c.Logs();

  // A mirror key cannot publish (the tree has a change to publish).
  WriteFile(c.origin_tree() / "Packages/by-mirror.rpm", "a mirror's idea");
  RunResult pub = PublishWith(c, c.MirrorTransport("m1"));
  EXPECT_EQ(pub.exit_code, 1) << pub.err;
  EXPECT_NE(pub.err.find("the mirror key m1 may not send"), std::string::npos) << pub.err;
  EXPECT_EQ(c.Status().repos(0).serial(), 1u);
  EXPECT_FALSE(fs::exists(c.mirror_tree("m2") / "Packages/by-mirror.rpm"));
  // The publish key still can.
  EXPECT_NE(c.PublishOk().find("serial=2"), std::string::npos);
  c.WaitForSerial({"m1", "m2"}, 2);
}

TEST(Transport, SighupReloadAddsAndRemovesAKeyWithoutDroppingOtherConnections) {
  Cluster c;
  MakeSampleRepo(c.origin_tree(), 10, 0);
  c.StartBroker();
  c.StartSubscriber("m1");
  c.PublishOk();
  c.WaitForSerial({"m1"}, 1);
  const std::string before = ReadFile(c.allow_list());
  const size_t reloads = Cluster::CountInLog(c.broker_log(), "allow-list reloaded");

  const fs::path newcomer = c.MakeCurveKey("newcomer");
  RunResult refused = SubscribeOnce(c, "newcomer", KeyFlags(c, newcomer));
  EXPECT_EQ(refused.exit_code, 1) << refused.err;
  EXPECT_FALSE(HasFiles(c.mirror_tree("newcomer")));

  c.AllowKey("mirror", "newcomer", newcomer.string() + ".curve.pub");
  c.ReloadAllowList();
  RunResult admitted = SubscribeOnce(c, "newcomer", KeyFlags(c, newcomer));
  EXPECT_EQ(admitted.exit_code, 0) << admitted.err << c.Logs();
  EXPECT_EQ(SnapshotTree(c.mirror_tree("newcomer")), SnapshotTree(c.origin_tree()));

  // Removed again: refused from its next connection on.
  c.WriteAllowList(before);
  c.ReloadAllowList();
  WriteFile(c.origin_tree() / "Packages/after-removal.rpm", "serial 2");
  c.PublishOk();
  c.WaitForSerial({"m1"}, 2);
  RunResult removed = SubscribeOnce(c, "newcomer", KeyFlags(c, newcomer));
  EXPECT_EQ(removed.exit_code, 1) << removed.err;
  EXPECT_FALSE(fs::exists(c.mirror_tree("newcomer") / "Packages/after-removal.rpm"));

  // m1, connected before both reloads, kept its connection and its events.
  EXPECT_EQ(SnapshotTree(c.mirror_tree("m1")), SnapshotTree(c.origin_tree()));
  EXPECT_EQ(Cluster::CountInLog(c.subscriber("m1").log_path(), "connected to broker"), 1u)
      << c.Logs();
  EXPECT_EQ(Cluster::CountInLog(c.broker_log(), "allow-list reloaded"), reloads + 2);
}

TEST(Transport, APlaintextClientAgainstACurveBrokerFailsClearly) {
  Cluster c;
  c.StartBroker();
  RunResult status = StatusCommand(c, {"--insecure-plaintext"});
  EXPECT_EQ(status.exit_code, 3) << status.err;
  EXPECT_NE(status.err.find("another transport security"), std::string::npos) << status.err;
  RunResult sub = SubscribeOnce(c, "plain", {"--insecure-plaintext"});
  EXPECT_EQ(sub.exit_code, 1) << sub.err;
  EXPECT_NE(sub.err.find("another transport security"), std::string::npos) << sub.err;
  // With the admin key it works, and says nothing of plain TCP.
  RunResult admin = StatusCommand(c, c.AdminTransport());
  EXPECT_EQ(admin.exit_code, 0) << admin.err;
  EXPECT_EQ(admin.out.find("INSECURE"), std::string::npos) << admin.out;
}

TEST(Transport, InsecurePlaintextWorksAndWarnsAtStartAndInStatus) {
  Cluster c;
  c.UseInsecurePlaintext();
  MakeSampleRepo(c.origin_tree(), 5, 0);
  c.StartBroker();
  c.StartSubscriber("m1");
  c.PublishOk();
  c.WaitForSerial({"m1"}, 1);
  EXPECT_EQ(SnapshotTree(c.mirror_tree("m1")), SnapshotTree(c.origin_tree()));
  EXPECT_TRUE(c.Status().insecure_plaintext());
  EXPECT_GE(Cluster::CountInLog(c.broker_log(), "INSECURE: --insecure-plaintext"), 1u);
  RunResult table = StatusCommand(c, {"--insecure-plaintext"});
  ASSERT_EQ(table.exit_code, 0) << table.err;
  EXPECT_NE(table.out.find("WARNING: INSECURE"), std::string::npos) << table.out;
  EXPECT_NE(table.err.find("INSECURE"), std::string::npos) << table.err;
  RunResult json = StatusCommand(c, {"--insecure-plaintext", "--json"});
  EXPECT_NE(json.out.find("\"insecure_plaintext\":true"), std::string::npos) << json.out;
}

TEST(Transport, ProgramsWithoutKeysOrWithKeysOthersCanReachRefuseToStart) {
  Cluster c;
  const std::vector<std::string> broker = {BinPath("mirrorcast-broker").string(),
                                           "--listen",
                                           "127.0.0.1:0",
                                           "--state",
                                           (c.root() / "unused-state").string(),
                                           "--tree-root",
                                           (c.root() / "origin").string(),
                                           "--trust",
                                           c.origin_pub().string()};
  RunResult no_keys = mirrorcast::testing::Run(broker, 30s);
  EXPECT_EQ(no_keys.exit_code, 2) << no_keys.err;
  EXPECT_NE(no_keys.err.find("--curve-key FILE"), std::string::npos) << no_keys.err;
  EXPECT_NE(no_keys.err.find("--insecure-plaintext"), std::string::npos) << no_keys.err;

  RunResult sub = SubscribeOnce(c, "m1", {});
  EXPECT_EQ(sub.exit_code, 2) << sub.err;
  EXPECT_NE(sub.err.find("--broker-key FILE"), std::string::npos) << sub.err;
  RunResult status = StatusCommand(c, {});
  EXPECT_EQ(status.exit_code, 2) << status.err;

  // A secret key others can read, an allow-list others can write.
  const fs::path loose = c.MakeCurveKey("loose");
  ASSERT_EQ(::chmod((loose.string() + ".curve.key").c_str(), 0644), 0);
  RunResult readable = SubscribeOnce(c, "m1", KeyFlags(c, loose));
  EXPECT_EQ(readable.exit_code, 2) << readable.err;
  EXPECT_NE(readable.err.find("chmod 600"), std::string::npos) << readable.err;
  ASSERT_EQ(::chmod(c.allow_list().c_str(), 0666), 0);
  std::vector<std::string> with_keys = broker;
  for (const std::string& a :
       {std::string("--curve-key"), (c.root() / "keys" / "broker.curve.key").string(),
        std::string("--allow"), c.allow_list().string()}) {
    with_keys.push_back(a);
  }
  RunResult open_list = mirrorcast::testing::Run(with_keys, 30s);
  EXPECT_EQ(open_list.exit_code, 2) << open_list.err;
  EXPECT_NE(open_list.err.find("chmod go-w"), std::string::npos) << open_list.err;
  EXPECT_FALSE(fs::exists(c.root() / "unused-state"));
}

}  // namespace
}  // namespace mirrorcast::testing
