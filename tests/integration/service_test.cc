// The daemons as systemd services: sd_notify messages on a real NOTIFY_SOCKET
// (READY, STATUS, WATCHDOG, RELOADING, STOPPING), SIGHUP reloading the trust
// keys of a running broker and subscriber, --check-config and exit code 2 for
// configuration errors, and heartbeats from a key the mirror does not trust
// (logged once, never a rejected mirror).
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <csignal>
#include <cstdlib>
#include <fstream>
#include <thread>

#include "tests/integration/cluster.h"
#include "tests/support/process.h"

namespace mirrorcast::testing {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

// systemd's side of NOTIFY_SOCKET: a datagram socket the daemon sends to.
class NotifySocket {
 public:
  explicit NotifySocket(const fs::path& path) : path_(path) {
    fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd_ < 0) throw std::runtime_error("socket(AF_UNIX) failed");
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (path.string().size() >= sizeof(addr.sun_path)) {
      throw std::runtime_error("notify socket path too long: " + path.string());
    }
    std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path.c_str());
    if (::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
      throw std::runtime_error("bind " + path.string() + " failed");
    }
    timeval tv{0, 100 * 1000};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  }
  ~NotifySocket() {
    ::close(fd_);
    std::error_code ec;
    fs::remove(path_, ec);
  }

  // Reads datagrams until one contains `needle` (true) or `timeout` passes.
  bool WaitFor(const std::string& needle, std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      char buf[4096];
      const ssize_t n = ::recv(fd_, buf, sizeof(buf), 0);
      if (n <= 0) continue;
      const std::string message(buf, static_cast<size_t>(n));
      seen_ += message + "\n--\n";
      if (message.find(needle) != std::string::npos) return true;
    }
    return false;
  }
  const std::string& seen() const { return seen_; }

 private:
  fs::path path_;
  int fd_ = -1;
  std::string seen_;
};

// Children started inside the scope get NOTIFY_SOCKET (and a watchdog).
class NotifyEnvironment {
 public:
  NotifyEnvironment(const fs::path& socket, const char* watchdog_usec) {
    ::setenv("NOTIFY_SOCKET", socket.c_str(), 1);
    ::setenv("WATCHDOG_USEC", watchdog_usec, 1);
  }
  ~NotifyEnvironment() {
    ::unsetenv("NOTIFY_SOCKET");
    ::unsetenv("WATCHDOG_USEC");
  }
};

TEST(Service, BrokerTellsSystemdReadyStatusReloadStopAndPetsTheWatchdog) {
  Cluster c;
  std::ofstream(c.origin_tree() / "a.rpm") << "a";
  NotifySocket notify(c.root() / "notify.sock");
  {
    NotifyEnvironment env(c.root() / "notify.sock", "2000000");
    c.StartBroker();
  }
  ASSERT_TRUE(notify.WaitFor("READY=1", 10s)) << notify.seen();
  EXPECT_TRUE(notify.WaitFor("WATCHDOG=1", 5s)) << notify.seen();
  c.PublishOk();
  EXPECT_TRUE(notify.WaitFor("STATUS=1 repo (demo at serial 1)", 15s)) << notify.seen();

  c.broker().Signal(SIGHUP);
  ASSERT_TRUE(notify.WaitFor("RELOADING=1", 10s)) << notify.seen();
  EXPECT_NE(notify.seen().find("MONOTONIC_USEC="), std::string::npos) << notify.seen();
  EXPECT_TRUE(notify.WaitFor("READY=1", 10s)) << notify.seen();
  EXPECT_TRUE(
      WaitUntil([&] { return Cluster::CountInLog(c.broker_log(), "trust reloaded") == 1; }, 10s))
      << c.Logs();

  c.StopBroker();
  EXPECT_TRUE(notify.WaitFor("STOPPING=1", 10s)) << notify.seen();
}

TEST(Service, SubscriberIsReadyWithItsSerialAndReloadsOnSighup) {
  Cluster c;
  std::ofstream(c.origin_tree() / "a.rpm") << "a";
  c.StartBroker();
  c.PublishOk();
  NotifySocket notify(c.root() / "notify-sub.sock");
  {
    NotifyEnvironment env(c.root() / "notify-sub.sock", "2000000");
    c.StartSubscriber("a");
  }
  ASSERT_TRUE(notify.WaitFor("READY=1", 20s)) << notify.seen() << c.Logs();
  EXPECT_NE(notify.seen().find("STATUS=repo demo at serial"), std::string::npos) << notify.seen();
  c.WaitForSerial({"a"}, 1);
  EXPECT_TRUE(notify.WaitFor("STATUS=repo demo at serial 1; following", 10s)) << notify.seen();
  EXPECT_TRUE(notify.WaitFor("WATCHDOG=1", 5s)) << notify.seen();

  c.subscriber("a").Signal(SIGHUP);
  ASSERT_TRUE(notify.WaitFor("RELOADING=1", 10s)) << notify.seen();
  EXPECT_TRUE(notify.WaitFor("READY=1", 10s)) << notify.seen();
  const fs::path log = c.subscriber("a").log_path();
  EXPECT_TRUE(WaitUntil([&] { return Cluster::CountInLog(log, "trust reloaded") == 1; }, 10s))
      << c.Logs();
  EXPECT_TRUE(c.subscriber("a").Running()) << "SIGHUP must not end the subscriber";
  c.StopSubscriber("a");
  EXPECT_TRUE(notify.WaitFor("STOPPING=1", 10s)) << notify.seen();
}

// A new origin key put in place of the old one's file: after SIGHUP the
// broker accepts publishes signed by it and the mirror applies them.
TEST(Service, SighupPutsANewTrustKeyInForceOnBrokerAndMirror) {
  Cluster c;
  std::ofstream(c.origin_tree() / "a.rpm") << "a";
  c.StartBroker();
  c.PublishOk();
  c.StartSubscriber("a");
  c.WaitForSerial({"a"}, 1);

  const fs::path next = c.MakeKey("next-origin");
  std::ofstream(c.origin_tree() / "b.rpm") << "b";
  const RunResult refused = c.Publish({}, fs::path(next.string() + ".key"));
  EXPECT_NE(refused.exit_code, 0) << "the broker does not trust the new key yet";

  fs::copy_file(next.string() + ".pub", c.origin_pub(), fs::copy_options::overwrite_existing);
  c.broker().Signal(SIGHUP);
  c.subscriber("a").Signal(SIGHUP);
  ASSERT_TRUE(
      WaitUntil([&] { return Cluster::CountInLog(c.broker_log(), "trust reloaded") == 1; }, 10s))
      << c.Logs();
  ASSERT_TRUE(WaitUntil(
      [&] { return Cluster::CountInLog(c.subscriber("a").log_path(), "trust reloaded") == 1; },
      10s))
      << c.Logs();
  {
    const RunResult r = c.Publish({}, fs::path(next.string() + ".key"));
    ASSERT_EQ(r.exit_code, 0) << r.out << r.err << c.Logs();
  }
  c.WaitForSerial({"a"}, 2);
  EXPECT_TRUE(fs::exists(c.mirror_tree("a") / "b.rpm"));

  // A broken trust file on reload keeps the keys in force.
  std::ofstream(c.origin_pub(), std::ios::trunc) << "not a key\n";
  c.broker().Signal(SIGHUP);
  ASSERT_TRUE(WaitUntil(
      [&] { return Cluster::CountInLog(c.broker_log(), "trust reload failed") == 1; }, 10s))
      << c.Logs();
  std::ofstream(c.origin_tree() / "c.rpm") << "c";
  {
    const RunResult r = c.Publish({}, fs::path(next.string() + ".key"));
    ASSERT_EQ(r.exit_code, 0) << r.out << r.err << c.Logs();
  }
  c.WaitForSerial({"a"}, 3);
}

std::vector<std::string> BrokerArgv(Cluster& c, const std::string& trust) {
  return {BinPath("mirrorcast-broker").string(),
          "--listen",
          "127.0.0.1:0",
          "--state",
          (c.root() / "broker-state").string(),
          "--tree-root",
          (c.root() / "origin").string(),
          "--trust",
          trust,
          "--insecure-plaintext"};
}

TEST(Service, CheckConfigAndConfigurationErrorsExitTwo) {
  Cluster c;
  std::ofstream(c.origin_tree() / "a.rpm") << "a";

  std::vector<std::string> ok = BrokerArgv(c, c.origin_pub().string());
  ok.push_back("--check-config");
  RunResult checked = mirrorcast::testing::Run(ok, 30s);
  EXPECT_EQ(checked.exit_code, 0) << checked.err;
  EXPECT_NE(checked.out.find("configuration OK"), std::string::npos) << checked.out;
  EXPECT_FALSE(fs::exists(c.root() / "broker-state")) << "--check-config creates nothing";

  std::vector<std::string> bad = BrokerArgv(c, (c.root() / "missing.pub").string());
  bad.push_back("--check-config");
  checked = mirrorcast::testing::Run(bad, 30s);
  EXPECT_EQ(checked.exit_code, 2) << checked.err;
  EXPECT_NE(checked.err.find("missing.pub"), std::string::npos) << checked.err;

  // The daemon itself: the same error, exit 2 (RestartPreventExitStatus=2).
  bad.pop_back();
  const RunResult ran = mirrorcast::testing::Run(bad, 30s);
  EXPECT_EQ(ran.exit_code, 2) << ran.err;
  EXPECT_NE((ran.out + ran.err).find("configuration error"), std::string::npos)
      << ran.out << ran.err;

  // A subscriber whose --tree is a regular file.
  std::ofstream(c.root() / "not-a-dir") << "x";
  std::vector<std::string> sub =
      c.SubscriberCommand("a", c.root() / "not-a-dir", c.root() / "sub-state", {"--check-config"});
  checked = mirrorcast::testing::Run(sub, 30s);
  EXPECT_EQ(checked.exit_code, 2) << checked.err;
  EXPECT_NE(checked.err.find("--tree"), std::string::npos) << checked.err;
  sub = c.SubscriberCommand("a", c.root() / "tree", c.root() / "sub-state", {"--check-config"});
  checked = mirrorcast::testing::Run(sub, 30s);
  EXPECT_EQ(checked.exit_code, 0) << checked.err;
  EXPECT_NE(checked.out.find("configuration OK"), std::string::npos) << checked.out;
}

TEST(Service, HeartbeatFromAnUntrustedKeyIsLoggedOnceAndRejectsNothing) {
  Cluster c;
  std::ofstream(c.origin_tree() / "a.rpm") << "a";
  const fs::path hb = c.MakeKey("heartbeat");
  c.StartBroker({"--heartbeat-key", hb.string() + ".key", "--heartbeat-interval", "1"});
  c.PublishOk();
  c.StartSubscriber("a");  // no --heartbeat-trust
  c.WaitForSerial({"a"}, 1);
  const fs::path log = c.subscriber("a").log_path();
  ASSERT_TRUE(WaitUntil([&] { return Cluster::CountInLog(log, "ignoring heartbeats") >= 1; }, 10s))
      << c.Logs();
  std::this_thread::sleep_for(3s);  // three more heartbeats
  EXPECT_EQ(Cluster::CountInLog(log, "ignoring heartbeats signed by key"), 1u) << c.Logs();
  EXPECT_EQ(Cluster::CountInLog(log, "--heartbeat-trust"), 1u) << c.Logs();
  EXPECT_EQ(Cluster::CountInLog(log, "rejected"), 0u) << c.Logs();
  auto mirror = c.Mirror("a");
  ASSERT_TRUE(mirror.has_value());
  EXPECT_EQ(mirror->state(), v1::ACK_APPLIED);
}

}  // namespace
}  // namespace mirrorcast::testing
