// How the daemons behave for an operator: one daemon per directory (a second
// broker on one --state, or a second subscriber on one --tree or --state,
// refuses to start with exit 2 and a message that says what to do, and the
// first keeps working), safe defaults, `status --check`.
#include <gtest/gtest.h>

#include <fstream>
#include <thread>

#include "tests/integration/cluster.h"
#include "tests/support/process.h"

namespace mirrorcast::testing {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

std::vector<std::string> SubscriberArgv(Cluster& c, const fs::path& tree, const fs::path& state,
                                        const std::string& id) {
  return c.SubscriberCommand(id, tree, state, {"--once", "--connect-timeout", "5"});
}

TEST(Locks, ASecondBrokerOnOneStateDirectoryRefusesToStart) {
  Cluster c;
  std::ofstream(c.origin_tree() / "a.rpm") << "a";
  c.StartBroker();
  const RunResult second = mirrorcast::testing::Run(
      {BinPath("mirrorcast-broker").string(), "--listen", "127.0.0.1:0", "--state",
       (c.root() / "broker-state").string(), "--tree-root", (c.root() / "origin").string(),
       "--trust", c.origin_pub().string(), "--curve-key",
       (c.root() / "keys" / "broker.curve.key").string(), "--allow", c.allow_list().string()},
      30s);
  EXPECT_EQ(second.exit_code, 2) << second.err;
  EXPECT_NE(second.err.find("is in use by another running mirrorcast process"), std::string::npos)
      << second.err;
  // The first one still works.
  c.PublishOk();
  EXPECT_EQ(c.Status().repos(0).serial(), 1u);
}

TEST(Locks, ASecondSubscriberOnOneTreeOrStateRefusesToStart) {
  Cluster c;
  std::ofstream(c.origin_tree() / "a.rpm") << "a";
  c.StartBroker();
  c.PublishOk();
  c.StartSubscriber("a");
  c.WaitForSerial({"a"}, 1);

  // Same tree, its own state.
  RunResult tree = mirrorcast::testing::Run(
      SubscriberArgv(c, c.mirror_tree("a"), c.root() / "other-state", "b"), 60s);
  EXPECT_EQ(tree.exit_code, 2) << tree.err;
  EXPECT_NE(tree.err.find("--tree) is in use"), std::string::npos) << tree.err;
  // Same state, its own tree.
  RunResult state = mirrorcast::testing::Run(
      SubscriberArgv(c, c.root() / "other-tree", c.mirror_state("a"), "b"), 60s);
  EXPECT_EQ(state.exit_code, 2) << state.err;
  EXPECT_NE(state.err.find("--state) is in use"), std::string::npos) << state.err;

  // The first one still follows; once it stops, its tree is free again.
  std::ofstream(c.origin_tree() / "b.rpm") << "b";
  c.PublishOk();
  c.WaitForSerial({"a"}, 2);
  EXPECT_EQ(c.StopSubscriber("a"), 0);
  RunResult after = mirrorcast::testing::Run(
      SubscriberArgv(c, c.mirror_tree("a"), c.mirror_state("a"), "a"), 60s);
  EXPECT_EQ(after.exit_code, 0) << after.err;
}

// `mirrorcast status --check` against a real broker: Nagios-style exit codes.
TEST(StatusCheck, ExitCodesFollowHowFarMirrorsAreBehind) {
  Cluster c;
  std::ofstream(c.origin_tree() / "a.rpm") << "a";
  c.StartBroker();
  c.PublishOk();
  c.StartSubscriber("m");
  c.WaitForSerial({"m"}, 1);
  auto check = [&](std::vector<std::string> extra = {"--warn-behind", "1", "--crit-behind", "2"}) {
    std::vector<std::string> argv = {BinPath("mirrorcast").string(), "status", "--broker",
                                     c.broker_address(), "--check"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    for (const std::string& a : c.AdminTransport()) argv.push_back(a);
    return mirrorcast::testing::Run(argv, 30s);
  };
  RunResult ok = check();
  EXPECT_EQ(ok.exit_code, 0) << ok.out << ok.err;
  EXPECT_TRUE(ok.out.starts_with("MIRRORCAST OK - 1 mirror(s)")) << ok.out;

  ASSERT_EQ(c.StopSubscriber("m"), 0);
  std::ofstream(c.origin_tree() / "b.rpm") << "b";
  c.PublishOk();
  RunResult warning = check();
  EXPECT_EQ(warning.exit_code, 1) << warning.out;
  EXPECT_NE(warning.out.find("m/demo 1 behind"), std::string::npos) << warning.out;
  std::ofstream(c.origin_tree() / "c.rpm") << "c";
  c.PublishOk();
  RunResult critical = check();
  EXPECT_EQ(critical.exit_code, 2) << critical.out;
  EXPECT_TRUE(critical.out.starts_with("MIRRORCAST CRITICAL")) << critical.out;

  c.StopBroker();
  RunResult unknown = check({"--timeout", "1"});
  EXPECT_EQ(unknown.exit_code, 3) << unknown.out;
  EXPECT_TRUE(unknown.out.starts_with("MIRRORCAST UNKNOWN")) << unknown.out;
}

// With the default settings a deleted file stays for the grace period, so a
// client holding the previous metadata still finds it.
TEST(Defaults, DeletedFilesStayForTheGracePeriod) {
  Cluster c;
  std::ofstream(c.origin_tree() / "old.rpm") << "old";
  for (int i = 0; i < 20; ++i) std::ofstream(c.origin_tree() / ("keep-" + std::to_string(i))) << i;
  c.StartBroker();
  c.PublishOk();
  const fs::path tree = c.root() / "default-tree";
  const fs::path state = c.root() / "default-state";
  RunResult first = mirrorcast::testing::Run(SubscriberArgv(c, tree, state, "d"), 60s);
  ASSERT_EQ(first.exit_code, 0) << first.err;
  ASSERT_TRUE(fs::exists(tree / "old.rpm"));

  fs::remove(c.origin_tree() / "old.rpm");
  std::ofstream(c.origin_tree() / "new.rpm") << "new";
  c.PublishOk();
  RunResult second = mirrorcast::testing::Run(SubscriberArgv(c, tree, state, "d"), 60s);
  ASSERT_EQ(second.exit_code, 0) << second.err;
  EXPECT_TRUE(fs::exists(tree / "new.rpm"));
  EXPECT_TRUE(fs::exists(tree / "old.rpm")) << "deleted at once with the default settings";
  // The help says what the default is and why.
  RunResult help =
      mirrorcast::testing::Run({BinPath("mirrorcast-subscriber").string(), "--help"}, 30s);
  EXPECT_NE(help.out.find("--delete-delay arg (=172800)"), std::string::npos) << help.out;
  EXPECT_NE(help.out.find("metadata_expire"), std::string::npos) << help.out;
}

size_t Count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

// Losing the broker is one warning, however long it is gone, and getting
// it back is one line.
TEST(Logs, LosingAndRegainingTheBrokerIsOneLineEach) {
  Cluster c;
  std::ofstream(c.origin_tree() / "a.rpm") << "a";
  c.StartBroker();
  c.PublishOk();
  c.StartSubscriber("m");  // polls every 2 s
  c.WaitForSerial({"m"}, 1);
  c.KillBroker();
  // Longer than a poll's 5 s answer timeout, so polls fail meanwhile.
  std::this_thread::sleep_for(12s);
  c.StartBroker();
  std::ofstream(c.origin_tree() / "b.rpm") << "b";
  c.PublishOk();
  c.WaitForSerial({"m"}, 2);
  std::ifstream in(c.root() / "logs" / "m.log");
  const std::string log((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(Count(log, "warning mirrorcast-subscriber: lost the broker"), 1u) << log;
  EXPECT_EQ(Count(log, "answers again"), 1u) << log;
}

}  // namespace
}  // namespace mirrorcast::testing
