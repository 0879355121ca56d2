// Fault tests for delivery: nothing is lost when the broker is killed or down,
// a stopped mirror delays only itself, a mirror that starts late while events
// keep coming converges, and a mirror that misses an event learns of it from
// the signed heartbeats (and reports itself stale when they stop).
//
// Real processes on 127.0.0.1 (see cluster.h). Every wait polls a condition
// against a deadline; timings are reported (stdout and RecordProperty), never
// asserted. The random choices of the kill test come from a seed printed at
// the start (MIRRORCAST_FAULT_SEED overrides it) so a failure can be replayed.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <optional>
#include <random>
#include <regex>
#include <set>
#include <string>
#include <thread>
#include <vector>
#include <zmq.hpp>

#include "core/crypto/keys.h"
#include "core/net/control_client.h"
#include "core/net/endpoint.h"
#include "core/wire/envelope.h"
#include "tests/integration/cluster.h"
#include "tests/support/process.h"
#include "tests/support/tree.h"

namespace mirrorcast::testing {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using SteadyClock = std::chrono::steady_clock;

double SecondsSince(SteadyClock::time_point start) {
  return std::chrono::duration<double>(SteadyClock::now() - start).count();
}

// Polls `done` every 50 ms until it holds or `timeout` passes. Returns the
// seconds it took, or nullopt at the deadline.
std::optional<double> WaitUntil(const std::function<bool()>& done, std::chrono::seconds timeout) {
  const auto start = SteadyClock::now();
  for (;;) {
    if (done()) return SecondsSince(start);
    if (SteadyClock::now() - start > timeout) return std::nullopt;
    std::this_thread::sleep_for(50ms);
  }
}

std::string ReadText(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

bool LogHas(const fs::path& log, const std::string& needle) {
  return ReadText(log).find(needle) != std::string::npos;
}

uint64_t Seed() {
  if (const char* env = std::getenv("MIRRORCAST_FAULT_SEED"))
    return std::strtoull(env, nullptr, 10);
  return std::random_device{}();
}

// mirrorcast-publish for the cluster's origin tree, with a short per-reply
// timeout: an attempt whose broker vanished fails in seconds (exit 3) and is
// retried, as release tooling does.
std::vector<std::string> PublishArgv(const Cluster& c, int timeout_seconds) {
  return c.PublishArgv({}, std::nullopt, timeout_seconds);
}

// What one successful mirrorcast-publish run printed.
struct Outcome {
  bool published = false;  // false: "nothing changed"
  uint64_t serial = 0;
};

std::optional<Outcome> ParseOutcome(const std::string& out) {
  static const std::regex published(R"(published repo=\S+ serial=(\d+))");
  static const std::regex unchanged(R"(nothing changed: repo=\S+ stays at serial (\d+))");
  std::smatch m;
  if (std::regex_search(out, m, published)) return Outcome{true, std::stoull(m[1].str())};
  if (std::regex_search(out, m, unchanged)) return Outcome{false, std::stoull(m[1].str())};
  return std::nullopt;
}

// Runs mirrorcast-publish until it exits 0 (bounded), as release tooling
// would. Failed attempts are counted in *failures.
Outcome PublishUntilOk(const Cluster& c, int* failures, int timeout_seconds = 2) {
  for (int attempt = 0; attempt < 10; ++attempt) {
    RunResult r = mirrorcast::testing::Run(PublishArgv(c, timeout_seconds), 60s);
    if (r.exit_code == 0) {
      auto outcome = ParseOutcome(r.out);
      EXPECT_TRUE(outcome.has_value()) << r.out;
      return outcome.value_or(Outcome{});
    }
    ++*failures;
    std::cout << "  publish attempt failed (exit " << r.exit_code << "): " << r.err;
    std::this_thread::sleep_for(200ms);
  }
  ADD_FAILURE() << "mirrorcast-publish did not succeed in 10 attempts\n" << c.Logs();
  return Outcome{};
}

// The test's own record of what it did to the origin tree: every file it
// wrote (path -> bytes) and every file it deleted. Every mirror must end up
// with all of it.
class ChangeRecord {
 public:
  explicit ChangeRecord(fs::path tree) : tree_(std::move(tree)) {}

  void Write(const std::string& rel, const std::string& data) {
    WriteFile(tree_ / rel, data);
    files_[rel] = data;
    deleted_.erase(rel);
  }
  void Remove(const std::string& rel) {
    fs::remove(tree_ / rel);
    files_.erase(rel);
    deleted_.insert(rel);
  }

  // A small release: one or two new packages, an earlier one rewritten,
  // sometimes one deleted, and new metadata naming the step.
  void Release(int step, std::mt19937_64& rng) {
    const int added = 1 + static_cast<int>(rng() % 2);
    for (int k = 0; k < added; ++k) {
      const std::string rel =
          "Packages/outage/s" + std::to_string(step) + "-" + std::to_string(k) + ".rpm";
      Write(rel, RandomBytes(500 + rng() % 4000, rng()));
      packages_.push_back(rel);
    }
    if (packages_.size() > 3) {
      const std::string& rel = packages_[rng() % (packages_.size() - added)];
      // A different size, so even a same-second rewrite shows in a stat.
      Write(rel, RandomBytes(files_[rel].size() + 1 + rng() % 100, rng()));
    }
    if (packages_.size() > 6 && rng() % 3 == 0) {
      const size_t i = rng() % (packages_.size() - added);
      Remove(packages_[i]);
      packages_.erase(packages_.begin() + static_cast<std::ptrdiff_t>(i));
    }
    Write("repodata/repomd.xml", "<repomd step=\"" + std::to_string(step) + "\"/>\n");
  }

  // Every write is in `mirror` with the same bytes, every deletion is gone.
  void ExpectIn(const fs::path& mirror, const std::string& id) const {
    int missing = 0;
    for (const auto& [rel, data] : files_) {
      std::error_code ec;
      if (!fs::is_regular_file(mirror / rel, ec) || ReadText(mirror / rel) != data) {
        if (++missing <= 5) ADD_FAILURE() << id << ": " << rel << " missing or different";
      }
    }
    for (const auto& rel : deleted_) {
      EXPECT_FALSE(fs::exists(mirror / rel)) << id << ": deleted " << rel << " still there";
    }
    EXPECT_EQ(missing, 0) << id;
  }

  size_t files() const { return files_.size(); }
  size_t deletions() const { return deleted_.size(); }

 private:
  fs::path tree_;
  std::map<std::string, std::string> files_;
  std::set<std::string> deleted_;
  std::vector<std::string> packages_;  // deletable files the test added
};

// Reads the broker's whole event log for the cluster's repo over the control
// socket and checks it: every envelope verifies against the origin key and
// the serials run 1..latest with each event naming its predecessor. Returns
// the number of events.
size_t CheckEventLog(const Cluster& c, uint64_t latest) {
  TrustStore trust;
  EXPECT_TRUE(trust.AddFile(c.origin_pub()).ok());
  zmq::context_t context(1);
  ControlClient client(context, HostPort{"127.0.0.1", c.broker_port()},
                       LoadClientTransport(c.PublisherTransport()));
  auto reply = client.Events(c.repo(), 0, 1000, 5000ms);
  if (!reply.ok()) {
    ADD_FAILURE() << "events: " << reply.status().ToString();
    return 0;
  }
  EXPECT_EQ(reply->latest_serial(), latest);
  EXPECT_FALSE(reply->gap());
  EXPECT_EQ(static_cast<uint64_t>(reply->envelopes_size()), latest) << "events lost or doubled";
  uint64_t expected = 1;
  for (const auto& bytes : reply->envelopes()) {
    auto opened = OpenEnvelope(bytes, trust);
    if (!opened.ok()) {
      ADD_FAILURE() << "event " << expected << ": " << opened.status().ToString();
      break;
    }
    EXPECT_TRUE(opened->payload.has_repo_changed());
    const v1::RepoChanged& event = opened->payload.repo_changed();
    EXPECT_EQ(event.serial(), expected);
    EXPECT_EQ(event.previous_serial(), expected - 1);
    ++expected;
  }
  return static_cast<size_t>(reply->envelopes_size());
}

void ExpectMirrorsEqualOrigin(Cluster& c, const std::vector<std::string>& ids) {
  const TreeSnapshot origin = SnapshotTree(c.origin_tree());
  for (const auto& id : ids) EXPECT_EQ(SnapshotTree(c.mirror_tree(id)), origin) << id;
}

// `flags` plus the ones that bring the broker back on the events and content
// ports it has now (asked over its control socket), as a production broker
// with fixed ports restarts. Without them a broker first started on port 0
// comes back on control+1 and +2, which a client's ephemeral port may hold
// meanwhile (a mirror following the broker to new ports has its own test).
std::vector<std::string> KeepBrokerPorts(const Cluster& c, std::vector<std::string> flags = {}) {
  zmq::context_t context(1);
  ControlClient client(context, HostPort{"127.0.0.1", c.broker_port()},
                       LoadClientTransport(c.PublisherTransport()));
  auto hello = client.Hello("outage-test", 5000ms);
  if (!hello.ok()) throw std::runtime_error("hello: " + hello.status().ToString());
  flags.insert(flags.end(), {"--events-port", std::to_string(hello->events_port()),
                             "--content-port", std::to_string(hello->content_port())});
  return flags;
}

void Report(const std::string& key, double value) {
  std::cout << "  " << key << " = " << value << "\n";
  ::testing::Test::RecordProperty(key, std::to_string(value));
}

// -------------------------------------------------------------------------

TEST(Outage, BrokerKilledBetweenAndDuringPublishesLosesNoEvent) {
  const uint64_t seed = Seed();
  std::cout << "  seed = " << seed << " (MIRRORCAST_FAULT_SEED to replay)\n";
  std::mt19937_64 rng(seed);

  Cluster c;
  MakeSampleRepo(c.origin_tree(), 20, 256 * 1024);
  c.StartBroker();
  const std::vector<std::string> restart_flags = KeepBrokerPorts(c);
  const std::vector<std::string> mirrors = {"m1", "m2"};
  for (const auto& id : mirrors) c.StartSubscriber(id);
  int failures = 0;
  ASSERT_EQ(PublishUntilOk(c, &failures).serial, 1u);

  ChangeRecord record(c.origin_tree());
  constexpr int kReleases = 20;
  int kills_between = 0, kills_in_flight = 0;
  int retried_publishes = 0, unchanged_retries = 0;
  auto last_restart = SteadyClock::now();
  const fs::path publish_logs = c.root() / "publish-logs";
  fs::create_directories(publish_logs);

  for (int step = 1; step <= kReleases; ++step) {
    record.Release(step, rng);
    const uint64_t expected = static_cast<uint64_t>(step) + 1;
    const int action = static_cast<int>(rng() % 10);
    std::optional<Outcome> outcome;
    const int failures_before = failures;
    if (action < 3) {
      // Between publishes.
      c.KillBroker();
      ++kills_between;
      c.StartBroker(restart_flags);
      last_restart = SteadyClock::now();
    } else if (action < 7) {
      // While a publish is in flight: somewhere in its Hello, scan, manifest
      // fetch or publish request (or just after it finished).
      ChildProcess publisher;
      const fs::path log = publish_logs / ("step-" + std::to_string(step) + ".log");
      publisher.Start(PublishArgv(c, 2), log);
      std::this_thread::sleep_for(std::chrono::milliseconds(rng() % 80));
      const bool in_flight = publisher.Running();
      c.KillBroker();
      ++(in_flight ? kills_in_flight : kills_between);
      // Sometimes the broker is back before the publisher gives up.
      std::this_thread::sleep_for(std::chrono::milliseconds(rng() % 400));
      c.StartBroker(restart_flags);
      last_restart = SteadyClock::now();
      const std::optional<int> status = publisher.Wait(30s);
      ASSERT_TRUE(status.has_value()) << "publisher hung after the broker was killed";
      if (*status == 0) {
        outcome = ParseOutcome(ReadText(log));
        EXPECT_TRUE(outcome.has_value()) << ReadText(log);
      } else {
        ++failures;  // exit 3: the reply never came; retried below
      }
    }
    if (!outcome) {
      outcome = PublishUntilOk(c, &failures);
      if (failures > failures_before) {
        ++retried_publishes;
        // "nothing changed" after a failed attempt: the killed attempt had
        // in fact been committed by the broker.
        if (!outcome->published) ++unchanged_retries;
      }
    }
    // Exactly one new serial per release: none lost, none doubled.
    ASSERT_EQ(outcome->serial, expected) << "step " << step << "\n" << c.Logs();
  }
  const uint64_t final_serial = kReleases + 1;
  const auto after_last_publish = SteadyClock::now();

  c.WaitForSerial(mirrors, final_serial, 60s);
  const double convergence_restart = SecondsSince(last_restart);
  const double convergence_publish = SecondsSince(after_last_publish);
  const size_t events = CheckEventLog(c, final_serial);
  EXPECT_EQ(events, final_serial);
  for (const auto& id : mirrors) record.ExpectIn(c.mirror_tree(id), id);
  ExpectMirrorsEqualOrigin(c, mirrors);

  Report("kills_between_publishes", kills_between);
  Report("kills_during_publish", kills_in_flight);
  Report("publishes_retried", retried_publishes);
  Report("retries_that_found_it_committed", unchanged_retries);
  Report("failed_publish_attempts", failures);
  Report("events_in_log", static_cast<double>(events));
  Report("events_lost",
         static_cast<double>(final_serial - std::min<uint64_t>(events, final_serial)));
  Report("files_written", static_cast<double>(record.files()));
  Report("convergence_s_after_last_restart", convergence_restart);
  Report("convergence_s_after_last_publish", convergence_publish);
}

TEST(Outage, PublishesFailWhileTheBrokerIsDownAndMirrorsConvergeAfterRestart) {
  std::mt19937_64 rng(7);
  Cluster c;
  MakeSampleRepo(c.origin_tree(), 20, 256 * 1024);
  c.StartBroker();
  const std::vector<std::string> restart_flags = KeepBrokerPorts(c);
  const std::vector<std::string> mirrors = {"m1", "m2"};
  for (const auto& id : mirrors) c.StartSubscriber(id);
  c.PublishOk();
  c.WaitForSerial(mirrors, 1);

  ChangeRecord record(c.origin_tree());
  c.KillBroker();
  const auto down = SteadyClock::now();
  constexpr int kFailed = 4;
  for (int step = 1; step <= kFailed; ++step) {
    record.Release(step, rng);
    RunResult r = mirrorcast::testing::Run(PublishArgv(c, 1), 60s);
    EXPECT_EQ(r.exit_code, 3) << "publish to a dead broker: " << r.out << r.err;
  }
  const double downtime = SecondsSince(down);
  c.StartBroker(restart_flags);
  const auto restart = SteadyClock::now();

  // The tooling retries each failed publish: the first carries every change
  // made meanwhile, the others find nothing left to send.
  int failures = 0;
  for (int retry = 0; retry < kFailed; ++retry) {
    const Outcome o = PublishUntilOk(c, &failures);
    EXPECT_EQ(o.serial, 2u);
    EXPECT_EQ(o.published, retry == 0);
  }
  c.WaitForSerial(mirrors, 2, 60s);
  const double convergence = SecondsSince(restart);
  EXPECT_EQ(CheckEventLog(c, 2), 2u);
  for (const auto& id : mirrors) record.ExpectIn(c.mirror_tree(id), id);
  ExpectMirrorsEqualOrigin(c, mirrors);

  Report("broker_down_s", downtime);
  Report("failed_publishes_while_down", kFailed);
  Report("convergence_s_after_restart", convergence);
}

// A mirror is configured with the control address alone and learns the
// events and content ports from it (see --broker): when the broker comes back
// with other ones, the mirror must follow.
TEST(Outage, AMirrorFollowsTheBrokerToNewPortsAfterARestart) {
  std::mt19937_64 rng(5);
  Cluster c;
  MakeSampleRepo(c.origin_tree(), 10, 0);
  c.StartBroker();  // port 0: random events and content ports
  c.StartSubscriber("m1");
  c.PublishOk();
  c.WaitForSerial({"m1"}, 1);

  c.KillBroker();
  // Same control port, other events and content ports.
  c.StartBroker({"--events-port", std::to_string(FreeLoopbackPort()), "--content-port",
                 std::to_string(FreeLoopbackPort())});
  const auto restart = SteadyClock::now();
  ChangeRecord record(c.origin_tree());
  record.Release(1, rng);
  int failures = 0;
  ASSERT_EQ(PublishUntilOk(c, &failures).serial, 2u);
  c.WaitForSerial({"m1"}, 2, 60s);
  const double convergence = SecondsSince(restart);
  record.ExpectIn(c.mirror_tree("m1"), "m1");
  ExpectMirrorsEqualOrigin(c, {"m1"});
  Report("convergence_s_after_restart_on_new_ports", convergence);
}

TEST(Outage, AStoppedMirrorDelaysOnlyItself) {
  std::mt19937_64 rng(11);
  Cluster c;
  MakeSampleRepo(c.origin_tree(), 20, 1u << 20);
  c.StartBroker();
  const std::vector<std::string> running = {"m1", "m2"};
  for (const auto& id : {"m1", "m2", "frozen"}) c.StartSubscriber(id);
  c.PublishOk();
  c.WaitForSerial({"m1", "m2", "frozen"}, 1);

  c.subscriber("frozen").Signal(SIGSTOP);
  // A failed assertion must not leave it stopped (the cluster's SIGTERM would wait).
  struct Resume {
    ChildProcess& p;
    ~Resume() { p.Signal(SIGCONT); }
  } resume{c.subscriber("frozen")};

  ChangeRecord record(c.origin_tree());
  constexpr uint64_t kPublishes = 4;
  const auto start = SteadyClock::now();
  for (uint64_t step = 1; step <= kPublishes; ++step) {
    record.Release(static_cast<int>(step), rng);
    // A large new file, then a large file rewritten.
    if (step == 2) record.Write("isos/dvd.iso", RandomBytes(6u << 20, 2024));
    if (step == 3) record.Write("isos/big.iso", RandomBytes(3u << 20, 2025));
    int failures = 0;
    EXPECT_EQ(PublishUntilOk(c, &failures).serial, step + 1);
  }
  const double publish_seconds = SecondsSince(start);
  const auto published = SteadyClock::now();
  c.WaitForSerial(running, kPublishes + 1, 60s);
  const double others = SecondsSince(published);
  ExpectMirrorsEqualOrigin(c, running);
  auto frozen = c.Mirror("frozen");
  ASSERT_TRUE(frozen.has_value());
  EXPECT_EQ(frozen->serial(), 1u) << "the stopped mirror cannot have moved";

  c.subscriber("frozen").Signal(SIGCONT);
  const auto resumed = SteadyClock::now();
  c.WaitForSerial({"frozen"}, kPublishes + 1, 60s);
  const double late = SecondsSince(resumed);
  record.ExpectIn(c.mirror_tree("frozen"), "frozen");
  ExpectMirrorsEqualOrigin(c, {"m1", "m2", "frozen"});

  Report("publish_s_total", publish_seconds);
  Report("running_mirrors_convergence_s", others);
  Report("stopped_mirror_convergence_s_after_sigcont", late);
}

TEST(Outage, AMirrorStartingEmptyWhileEventsKeepComingConverges) {
  std::mt19937_64 rng(13);
  Cluster c;
  MakeSampleRepo(c.origin_tree(), 20, 512 * 1024);
  c.StartBroker();
  c.StartSubscriber("early");

  ChangeRecord record(c.origin_tree());
  constexpr int kPublishes = 15;
  constexpr int kLateAfter = 3;
  int failures = 0;
  SteadyClock::time_point late_start;
  for (int step = 1; step <= kPublishes; ++step) {
    if (step > 1) record.Release(step, rng);
    EXPECT_EQ(PublishUntilOk(c, &failures).serial, static_cast<uint64_t>(step));
    if (step == kLateAfter) {
      // Starts with an empty tree while the next publishes follow at once.
      c.StartSubscriber("late");
      late_start = SteadyClock::now();
    }
  }
  const auto published = SteadyClock::now();
  c.WaitForSerial({"early", "late"}, kPublishes, 60s);
  const double after_publish = SecondsSince(published);
  const double after_start = SecondsSince(late_start);
  for (const auto& id : {"early", "late"}) record.ExpectIn(c.mirror_tree(id), id);
  ExpectMirrorsEqualOrigin(c, {"early", "late"});
  auto late = c.Mirror("late");
  ASSERT_TRUE(late.has_value());
  EXPECT_EQ(late->serial(), static_cast<uint64_t>(kPublishes));

  Report("late_mirror_convergence_s_after_its_start", after_start);
  Report("late_mirror_convergence_s_after_last_publish", after_publish);
}

// -------------------------------------------------------------------------
// Freshness: signed heartbeats.

bool HelpMentions(const std::string& program, const std::string& flag) {
  RunResult r = mirrorcast::testing::Run({BinPath(program).string(), "--help"}, 30s);
  return (r.out + r.err).find(flag) != std::string::npos;
}

// A subscriber started by hand: Cluster::StartSubscriber fixes --poll-interval.
ChildProcess StartHeartbeatSubscriber(Cluster& c, const std::string& id,
                                      const fs::path& heartbeat_pub, int stale_after) {
  ChildProcess p;
  p.Start(c.SubscriberCommand(id, c.mirror_tree(id), c.mirror_state(id),
                              {"--no-trace-files", "--delete-delay", "0", "--heartbeat-trust",
                               heartbeat_pub.string(), "--stale-after", std::to_string(stale_after),
                               "--poll-interval", "3600", "--log-level", "debug"}),
          c.root() / "logs" / (id + ".log"));
  return p;
}

TEST(Outage, AMirrorThatMissedAnEventLearnsOfItFromTheNextHeartbeat) {
  if (!HelpMentions("mirrorcast-broker", "--heartbeat-key") ||
      !HelpMentions("mirrorcast-broker", "--heartbeat-interval") ||
      !HelpMentions("mirrorcast-subscriber", "--heartbeat-trust") ||
      !HelpMentions("mirrorcast-subscriber", "--stale-after")) {
    GTEST_SKIP() << "heartbeat flags are not in mirrorcast-broker / mirrorcast-subscriber";
  }
  std::mt19937_64 rng(17);
  Cluster c;
  const fs::path heartbeat = c.MakeKey("heartbeat");
  const std::vector<std::string> broker_flags = {"--heartbeat-key", heartbeat.string() + ".key",
                                                 "--heartbeat-interval", "1"};
  MakeSampleRepo(c.origin_tree(), 10, 0);
  c.StartBroker(broker_flags);
  const std::vector<std::string> restart_flags = KeepBrokerPorts(c, broker_flags);
  c.PublishOk();

  ChildProcess sub = StartHeartbeatSubscriber(c, "quiet", heartbeat.string() + ".pub", 60);
  c.WaitForSerial({"quiet"}, 1, 30s);

  // Make it miss serial 2: it is stopped while the broker restarts (its old
  // event connection dies) and while the event goes out.
  ChangeRecord record(c.origin_tree());
  sub.Signal(SIGSTOP);
  c.KillBroker();
  c.StartBroker(restart_flags);
  record.Release(1, rng);
  int failures = 0;
  ASSERT_EQ(PublishUntilOk(c, &failures).serial, 2u);
  sub.Signal(SIGCONT);
  const auto resumed = SteadyClock::now();
  // Only a heartbeat can tell it: it polls the broker once an hour.
  c.WaitForSerial({"quiet"}, 2, 15s);
  const double caught_up = SecondsSince(resumed);
  record.ExpectIn(c.mirror_tree("quiet"), "quiet");
  ExpectMirrorsEqualOrigin(c, {"quiet"});
  const fs::path log = c.root() / "logs" / "quiet.log";
  // Informational: the log is written asynchronously, so give it a moment.
  const bool by_heartbeat =
      WaitUntil([&] { return LogHas(log, "heartbeat says serial 2"); }, 5s).has_value();
  std::cout << "  the subscriber logged that a heartbeat named serial 2: "
            << (by_heartbeat ? "yes" : "no") << "\n";
  Report("missed_event_caught_up_s_after_sigcont", caught_up);
}

TEST(Outage, AMirrorReportsItselfStaleWhenHeartbeatsStop) {
  if (!HelpMentions("mirrorcast-broker", "--heartbeat-key") ||
      !HelpMentions("mirrorcast-broker", "--heartbeat-interval") ||
      !HelpMentions("mirrorcast-subscriber", "--heartbeat-trust") ||
      !HelpMentions("mirrorcast-subscriber", "--stale-after")) {
    GTEST_SKIP() << "heartbeat flags are not in mirrorcast-broker / mirrorcast-subscriber";
  }
  Cluster c;
  const fs::path heartbeat = c.MakeKey("heartbeat");
  MakeSampleRepo(c.origin_tree(), 5, 0);
  c.StartBroker({"--heartbeat-key", heartbeat.string() + ".key", "--heartbeat-interval", "1"});
  c.PublishOk();
  constexpr int kStaleAfter = 3;
  ChildProcess sub = StartHeartbeatSubscriber(c, "watch", heartbeat.string() + ".pub", kStaleAfter);
  c.WaitForSerial({"watch"}, 1, 30s);
  const fs::path log = c.root() / "logs" / "watch.log";
  ASSERT_FALSE(LogHas(log, "stale")) << ReadText(log);

  // A frozen origin: the broker stops answering and heartbeats stop.
  c.broker().Signal(SIGSTOP);
  struct Resume {
    ChildProcess& p;
    ~Resume() { p.Signal(SIGCONT); }
  } resume{c.broker()};
  const auto frozen = SteadyClock::now();
  const auto noticed = WaitUntil([&] { return LogHas(log, "stale"); }, 30s);
  EXPECT_TRUE(noticed.has_value()) << "no stale report within 30 s\n" << ReadText(log);
  const double stale_after = SecondsSince(frozen);

  c.broker().Signal(SIGCONT);
  const auto thawed = SteadyClock::now();
  // The STALE report was queued durably and reaches the broker once it runs.
  const fs::path broker_log = c.root() / "logs" / "broker.log";
  const auto reported = WaitUntil(
      [&] {
        const std::string text = ReadText(broker_log);
        return text.find("mirror=watch") != std::string::npos &&
               text.find("state=ACK_STALE") != std::string::npos;
      },
      30s);
  EXPECT_TRUE(reported.has_value()) << "the broker never recorded the STALE report\n" << c.Logs();
  // Fresh heartbeats again: the mirror row goes back to applied.
  const auto fresh = WaitUntil(
      [&] {
        auto m = c.Mirror("watch");
        return m && m->state() == v1::ACK_APPLIED && m->serial() == 1;
      },
      30s);
  EXPECT_TRUE(fresh.has_value()) << "the mirror never reported itself fresh again\n" << c.Logs();
  const double fresh_seconds = SecondsSince(thawed);

  Report("stale_reported_s_after_broker_sigstop", stale_after);
  Report("fresh_again_s_after_broker_sigcont", fresh_seconds);
}

}  // namespace
}  // namespace mirrorcast::testing
