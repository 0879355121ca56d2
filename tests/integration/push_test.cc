// End to end: real broker, publisher and subscriber processes on loopback.
#include <gtest/gtest.h>

#include <fstream>
#include <thread>

#include "core/cli/signals.h"
#include "core/crypto/sha256.h"
#include "core/mirror/subscriber.h"
#include "core/net/endpoint.h"
#include "tests/integration/cluster.h"
#include "tests/support/tree.h"

namespace mirrorcast::testing {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

constexpr size_t kBig = 4u << 20;

// A few KiB changed in the middle of a file, in place.
void PatchMiddle(const fs::path& file, size_t bytes, uint64_t seed) {
  std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
  ASSERT_TRUE(f);
  f.seekp(static_cast<std::streamoff>(fs::file_size(file) / 2));
  const std::string data = RandomBytes(bytes, seed);
  f.write(data.data(), static_cast<std::streamsize>(data.size()));
}

TEST(Push, ThreeMirrorsConvergeAndALargeFileChangeTravelsAsADelta) {
  Cluster c;
  MakeSampleRepo(c.origin_tree(), 60, kBig);
  c.StartBroker();
  const std::vector<std::string> mirrors = {"m1", "m2", "m3"};
  for (const auto& id : mirrors) c.StartSubscriber(id);

  EXPECT_NE(c.PublishOk().find("serial=1"), std::string::npos);
  c.WaitForSerial(mirrors, 1);
  const TreeSnapshot origin1 = SnapshotTree(c.origin_tree());
  for (const auto& id : mirrors) EXPECT_EQ(SnapshotTree(c.mirror_tree(id)), origin1) << id;

  // Second change: files added, a few KiB inside the big file, a delete, a rename.
  for (int i = 0; i < 5; ++i) {
    WriteFile(c.origin_tree() / ("Packages/new/n" + std::to_string(i) + ".rpm"),
              RandomBytes(3000, 500 + i));
  }
  PatchMiddle(c.origin_tree() / "isos/big.iso", 4096, 42);
  fs::remove(c.origin_tree() / "Packages/p0/pkg-0.rpm");
  fs::rename(c.origin_tree() / "Packages/p1/pkg-1.rpm", c.origin_tree() / "Packages/renamed.rpm");
  WriteFile(c.origin_tree() / "repodata/repomd.xml", "<repomd version=\"2\"/>\n");
  EXPECT_NE(c.PublishOk().find("serial=2"), std::string::npos);
  c.WaitForSerial(mirrors, 2);

  const TreeSnapshot origin2 = SnapshotTree(c.origin_tree());
  for (const auto& id : mirrors) {
    EXPECT_EQ(SnapshotTree(c.mirror_tree(id)), origin2) << id;
    auto m = c.Mirror(id);
    ASSERT_TRUE(m.has_value());
    // New files (~15 KiB), repomd, and a delta for 4 KiB inside 4 MiB; the
    // signature the mirror sent for it is small too.
    EXPECT_LT(m->bytes_fetched(), 200u * 1024) << id;
    EXPECT_GT(m->bytes_signature(), 0u) << id;
    EXPECT_LT(m->bytes_signature(), 64u * 1024) << id;
    // The unchanged bulk of the big file and the renamed package were reused.
    EXPECT_GT(m->bytes_reused(), kBig - 200u * 1024) << id;
  }
  // All three mirrors held the same old version, so the broker computed the
  // delta once and served it three times.
  const std::string broker_log = ReadFile(c.root() / "logs" / "broker.log");
  size_t computed = 0;
  for (size_t at = 0;
       (at = broker_log.find("delta repo=demo path=isos/big.iso", at)) != std::string::npos; ++at) {
    ++computed;
  }
  EXPECT_EQ(computed, 1u) << broker_log;
}

TEST(Push, SecondPublishWithNothingChangedSendsNothingAndReadsNoFile) {
  Cluster c;
  MakeSampleRepo(c.origin_tree(), 30, 1u << 20);
  c.StartBroker();
  const std::string first = c.PublishOk();
  EXPECT_NE(first.find("hashed_files=33"), std::string::npos) << first;  // 30 + 2 repodata + iso
  const RunResult second = c.Publish();
  ASSERT_EQ(second.exit_code, 0) << second.err;
  EXPECT_NE(second.out.find("nothing changed"), std::string::npos) << second.out;
  EXPECT_NE(second.out.find("hashed_files=0 hashed_bytes=0"), std::string::npos) << second.out;
  EXPECT_EQ(c.Status().repos(0).serial(), 1u);
}

TEST(Push, LateSubscriberWithAStaleTreeCatchesUpAndReusesWhatItHas) {
  Cluster c;
  MakeSampleRepo(c.origin_tree(), 40, 1u << 20);
  c.StartBroker();
  c.PublishOk();
  WriteFile(c.origin_tree() / "Packages/late.rpm", RandomBytes(5000, 77));
  c.PublishOk();
  // The mirror already holds a stale copy (as after a one-off rsync).
  fs::create_directories(c.mirror_tree("late"));
  fs::copy(c.origin_tree() / "isos", c.mirror_tree("late") / "isos", fs::copy_options::recursive);
  WriteFile(c.mirror_tree("late") / "stray.txt", "not in the repo");

  c.StartSubscriber("late");
  c.WaitForSerial({"late"}, 2);
  EXPECT_EQ(SnapshotTree(c.mirror_tree("late")), SnapshotTree(c.origin_tree()));
  auto m = c.Mirror("late");
  ASSERT_TRUE(m.has_value());
  // The 1 MiB image the mirror already had did not travel again.
  EXPECT_LT(m->bytes_fetched(), 1u << 20);
  EXPECT_FALSE(fs::exists(c.mirror_tree("late") / "stray.txt"));
}

TEST(Push, BrokerRefusesAPublishSignedByAnUntrustedKey) {
  Cluster c;
  MakeSampleRepo(c.origin_tree(), 5, 0);
  c.StartBroker();
  const fs::path rogue = c.MakeKey("rogue");
  RunResult r = c.Publish({}, fs::path(rogue.string() + ".key"));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("unknown signing key"), std::string::npos) << r.err;
  EXPECT_EQ(c.Status().repos_size(), 0);
}

TEST(Push, DeltaThatYieldsTheWrongHashFallsBackToAWholeFileFetch) {
  Cluster c;
  const size_t size = 1u << 20;
  MakeSampleRepo(c.origin_tree(), 3, size);
  c.StartBroker();
  c.PublishOk();

  SubscriberOptions opts;
  opts.broker = HostPort{"127.0.0.1", c.broker_port()};
  opts.transport = LoadClientTransport(c.MirrorTransport("inproc"));
  opts.trust = {c.origin_pub()};
  opts.repo = c.repo();
  opts.tree = c.mirror_tree("inproc");
  opts.state = c.mirror_state("inproc");
  opts.id = "inproc";
  int hook_calls = 0;
  opts.after_signature = [&](const std::string& path) {
    // The basis changes after its signature was sent: the delta then rebuilds
    // garbage, which the SHA-256 check must catch.
    ++hook_calls;
    WriteFile(opts.tree / path, RandomBytes(size, 4242));
  };
  {
    Subscriber first(opts);
    auto r = first.SyncOnce();
    ASSERT_TRUE(r.ok()) << r.status().ToString() << c.Logs();
    EXPECT_EQ(r->serial, 1u);
  }
  PatchMiddle(c.origin_tree() / "isos/big.iso", 2048, 5);
  c.PublishOk();
  Subscriber second(opts);
  auto r = second.SyncOnce();
  ASSERT_TRUE(r.ok()) << r.status().ToString() << c.Logs();
  EXPECT_EQ(r->serial, 2u);
  EXPECT_EQ(hook_calls, 1);
  EXPECT_EQ(SnapshotTree(opts.tree), SnapshotTree(c.origin_tree()));
  auto m = c.Mirror("inproc");
  ASSERT_TRUE(m.has_value());
  EXPECT_GE(m->bytes_fetched(), size);  // the whole file came over the wire
}

}  // namespace
}  // namespace mirrorcast::testing

namespace mirrorcast::testing {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

TEST(Push, GracePeriodKeepsDeletedFilesForClientsOfTheOldMetadata) {
  Cluster c;
  MakeSampleRepo(c.origin_tree(), 10, 0);
  c.StartBroker();
  c.StartSubscriber("g", {"--delete-delay", "5"});
  c.PublishOk();
  c.WaitForSerial({"g"}, 1);

  fs::remove(c.origin_tree() / "Packages/p0/pkg-0.rpm");
  const std::string readded = ReadFile(c.origin_tree() / "Packages/p1/pkg-1.rpm");
  fs::remove(c.origin_tree() / "Packages/p1/pkg-1.rpm");
  c.PublishOk();
  c.WaitForSerial({"g"}, 2);
  // Applied, yet what serial 2 deleted is still there for the grace period.
  EXPECT_TRUE(fs::exists(c.mirror_tree("g") / "Packages/p0/pkg-0.rpm"));
  EXPECT_TRUE(fs::exists(c.mirror_tree("g") / "Packages/p1/pkg-1.rpm"));

  // Put back within the grace period: it must survive the sweep.
  WriteFile(c.origin_tree() / "Packages/p1/pkg-1.rpm", readded);
  c.PublishOk();
  c.WaitForSerial({"g"}, 3);

  const auto deadline = std::chrono::steady_clock::now() + 30s;
  while (fs::exists(c.mirror_tree("g") / "Packages/p0/pkg-0.rpm") &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(50ms);
  }
  EXPECT_FALSE(fs::exists(c.mirror_tree("g") / "Packages/p0/pkg-0.rpm")) << c.Logs();
  EXPECT_EQ(SnapshotTree(c.mirror_tree("g")), SnapshotTree(c.origin_tree()));
}

}  // namespace
}  // namespace mirrorcast::testing

namespace mirrorcast::testing {
namespace {

namespace fs = std::filesystem;

TEST(Push, ContentAnInterruptedApplyFetchedIsReusedOrResumed) {
  Cluster c;
  MakeSampleRepo(c.origin_tree(), 3, 1u << 20);
  c.StartBroker();
  c.PublishOk();
  // What a subscriber killed while staging leaves behind (named by SHA-256):
  // one file complete, one cut short, one cut short with a damaged prefix.
  const fs::path staging = c.mirror_state("r") / "staging";
  const std::string big = ReadFile(c.origin_tree() / "isos/big.iso");
  WriteFile(staging / ToHex(Sha256Of(big)), big, 0600);
  const std::string primary = ReadFile(c.origin_tree() / "repodata/primary.xml.gz");
  WriteFile(staging / ToHex(Sha256Of(primary)), primary.substr(0, primary.size() / 2), 0600);
  const std::string pkg = ReadFile(c.origin_tree() / "Packages/p0/pkg-0.rpm");
  std::string damaged = pkg.substr(0, pkg.size() / 2);
  damaged[10] = static_cast<char>(damaged[10] ^ 0x55);
  WriteFile(staging / ToHex(Sha256Of(pkg)), damaged, 0600);

  RunResult r = mirrorcast::testing::Run(
      c.SubscriberCommand("r", c.mirror_tree("r"), c.mirror_state("r"),
                          {"--no-trace-files", "--delete-delay", "0", "--once"}),
      std::chrono::seconds(60));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(SnapshotTree(c.mirror_tree("r")), SnapshotTree(c.origin_tree()));
  auto m = c.Mirror("r");
  ASSERT_TRUE(m.has_value());
  // Not fetched again: the image, the first half of primary.xml.gz. The
  // damaged package failed its hash after resuming and came whole.
  EXPECT_LT(m->bytes_fetched(), 1u << 20);
  EXPECT_LT(m->bytes_fetched(), primary.size());
  EXPECT_GE(m->bytes_fetched(), primary.size() - primary.size() / 2 + pkg.size());
  EXPECT_TRUE(fs::is_empty(staging));
}

}  // namespace
}  // namespace mirrorcast::testing

namespace mirrorcast::testing {
namespace {

TEST(Push, OnceGivesUpWhenTheBrokerNeverAnswers) {
  Cluster c;
  // Nothing listens on port 1 of the loopback: every connection is refused.
  RunResult r = mirrorcast::testing::Run(
      {BinPath("mirrorcast-subscriber").string(), "--broker", "127.0.0.1:1", "--trust",
       c.origin_pub().string(), "--repo", c.repo(), "--tree", c.mirror_tree("x").string(),
       "--state", c.mirror_state("x").string(), "--id", "x", "--once", "--connect-timeout", "1",
       "--insecure-plaintext"},
      std::chrono::seconds(60));
  EXPECT_FALSE(r.timed_out);
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("not reachable"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace mirrorcast::testing
