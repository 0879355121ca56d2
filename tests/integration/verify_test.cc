// `mirrorcast verify`: the scrub finds damage that a stat-only look cannot
// see, and --repair brings the tree back to the signed manifest.
#include <fcntl.h>
#include <sys/stat.h>

#include <gtest/gtest.h>

#include <chrono>
#include <fstream>
#include <string>
#include <vector>

#include "tests/integration/cluster.h"
#include "tests/support/process.h"
#include "tests/support/tree.h"

namespace mirrorcast::testing {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

RunResult Verify(Cluster& c, const std::string& id, const std::vector<std::string>& extra) {
  std::vector<std::string> argv = {
      BinPath("mirrorcast").string(), "verify",  "--tree",
      c.mirror_tree(id).string(),     "--state", c.mirror_state(id).string()};
  argv.insert(argv.end(), extra.begin(), extra.end());
  if (std::find(extra.begin(), extra.end(), "--repair") != extra.end()) {
    for (const std::string& a : c.MirrorTransport(id)) argv.push_back(a);
  }
  return mirrorcast::testing::Run(argv, 120s);
}

struct stat StatOf(const fs::path& path) {
  struct stat st {};
  EXPECT_EQ(::lstat(path.c_str(), &st), 0) << path;
  return st;
}

// Flips one byte in the middle of `file` and puts its mtime back, so size
// and mtime are unchanged: only reading the content can find the damage.
void FlipByteKeepingMtime(const fs::path& file) {
  const struct stat before = StatOf(file);
  {
    std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
    ASSERT_TRUE(f);
    const std::streamoff middle = before.st_size / 2;
    f.seekg(middle);
    char byte = 0;
    f.read(&byte, 1);
    byte = static_cast<char>(byte ^ 0x5a);
    f.seekp(middle);
    f.write(&byte, 1);
  }
  const struct timespec times[2] = {before.st_atim, before.st_mtim};
  ASSERT_EQ(::utimensat(AT_FDCWD, file.c_str(), times, AT_SYMLINK_NOFOLLOW), 0);
  const struct stat after = StatOf(file);
  ASSERT_EQ(after.st_size, before.st_size);
  ASSERT_EQ(after.st_mtim.tv_sec, before.st_mtim.tv_sec);
  ASSERT_EQ(after.st_mtim.tv_nsec, before.st_mtim.tv_nsec);
}

bool Contains(const std::string& text, const std::string& what) {
  return text.find(what) != std::string::npos;
}

TEST(Verify, FindsCorruptMissingExtraAndMetadataAndRepairFixesThem) {
  Cluster c;
  MakeSampleRepo(c.origin_tree(), 20, 1u << 20);
  c.StartBroker();
  c.StartSubscriber("m1");
  c.PublishOk();
  c.WaitForSerial({"m1"}, 1);
  ASSERT_EQ(c.StopSubscriber("m1"), 0) << c.Logs();
  const fs::path tree = c.mirror_tree("m1");
  const TreeSnapshot origin = SnapshotTree(c.origin_tree());
  ASSERT_EQ(SnapshotTree(tree), origin);

  {
    const RunResult clean = Verify(c, "m1", {});
    EXPECT_EQ(clean.exit_code, 0) << clean.out << clean.err;
    EXPECT_TRUE(Contains(clean.out, ": 0 problems")) << clean.out;
  }

  const std::string corrupt = "Packages/p3/pkg-3.rpm";
  const std::string missing = "Packages/p1/pkg-1.rpm";
  const std::string chmodded = "repodata/primary.xml.gz";
  FlipByteKeepingMtime(tree / corrupt);
  fs::remove(tree / missing);
  WriteFile(tree / "Packages" / "extra.rpm", RandomBytes(100, 3));
  ASSERT_EQ(::chmod((tree / chmodded).c_str(), 0600), 0);
  const struct timespec old_times[2] = {{1000000000, 0}, {1000000000, 0}};
  ASSERT_EQ(::utimensat(AT_FDCWD, (tree / chmodded).c_str(), old_times, 0), 0);

  {
    const RunResult r = Verify(c, "m1", {"--rate", "0"});
    EXPECT_EQ(r.exit_code, 1) << r.out << r.err;
    EXPECT_TRUE(Contains(r.out, "CORRUPT " + corrupt + " (sha256 mismatch)\n")) << r.out;
    EXPECT_TRUE(Contains(r.out, "MISSING " + missing + "\n")) << r.out;
    EXPECT_TRUE(Contains(r.out, "EXTRA Packages/extra.rpm\n")) << r.out;
    EXPECT_TRUE(Contains(r.out, "MODE " + chmodded + " (mode 0600, expected 0644)\n")) << r.out;
    EXPECT_TRUE(Contains(r.out, "MTIME " + chmodded)) << r.out;
    EXPECT_TRUE(Contains(r.out, ": 5 problems\n")) << r.out;
  }
  {
    // Usage error, and an unreachable broker, change nothing.
    const RunResult no_broker = Verify(c, "m1", {"--repair"});
    EXPECT_EQ(no_broker.exit_code, 2) << no_broker.out << no_broker.err;
    const RunResult unreachable =
        Verify(c, "m1", {"--repair", "--broker", "127.0.0.1:1", "--timeout", "1"});
    EXPECT_EQ(unreachable.exit_code, 3) << unreachable.out << unreachable.err;
    EXPECT_FALSE(fs::exists(tree / missing));
  }
  {
    // Repair keeps the extra file unless asked.
    const RunResult r = Verify(c, "m1", {"--repair", "--broker", c.broker_address()});
    EXPECT_EQ(r.exit_code, 0) << r.out << r.err << c.Logs();
    EXPECT_TRUE(Contains(r.out, ": 5 problems, 4 repaired")) << r.out;
    TreeSnapshot expected = origin;
    expected["Packages/extra.rpm"] = SnapshotTree(tree).at("Packages/extra.rpm");
    EXPECT_EQ(SnapshotTree(tree), expected);
    EXPECT_EQ(StatOf(tree / chmodded).st_mtim.tv_sec,
              StatOf(c.origin_tree() / chmodded).st_mtim.tv_sec);
    // Nothing of the repair's staging is left behind.
    EXPECT_TRUE(fs::is_empty(c.mirror_state("m1") / "staging"));
  }
  {
    const RunResult r = Verify(c, "m1", {});
    EXPECT_EQ(r.exit_code, 1) << r.out << r.err;
    EXPECT_TRUE(Contains(r.out, ": 1 problems\n")) << r.out;
  }
  {
    const RunResult r =
        Verify(c, "m1", {"--repair", "--delete-extra", "--broker", c.broker_address()});
    EXPECT_EQ(r.exit_code, 0) << r.out << r.err << c.Logs();
    EXPECT_TRUE(Contains(r.out, ": 1 problems, 1 repaired")) << r.out;
    EXPECT_EQ(SnapshotTree(tree), origin);
  }
  {
    const RunResult r = Verify(c, "m1", {"--json"});
    EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
    EXPECT_TRUE(Contains(r.out, "\"problems\":[]")) << r.out;
  }

  // The repaired mirror still follows the next publish.
  WriteFile(c.origin_tree() / "Packages" / "next.rpm", RandomBytes(2000, 11));
  c.StartSubscriber("m1");
  c.PublishOk();
  c.WaitForSerial({"m1"}, 2);
  EXPECT_EQ(SnapshotTree(tree), SnapshotTree(c.origin_tree()));
}

TEST(Verify, ReadsNoFasterThanTheRateLimit) {
  Cluster c;
  MakeSampleRepo(c.origin_tree(), 3, 3'000'000);
  c.StartBroker();
  c.StartSubscriber("m1");
  c.PublishOk();
  c.WaitForSerial({"m1"}, 1);
  ASSERT_EQ(c.StopSubscriber("m1"), 0) << c.Logs();

  // ~3.03 MB at 1 MB/s: at least 3 s of reading; 2 s is a bound that cannot
  // flake (only an upper bound on speed is promised).
  const auto started = std::chrono::steady_clock::now();
  const RunResult r = Verify(c, "m1", {"--rate", "1"});
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_TRUE(Contains(r.out, ": 0 problems")) << r.out;
  EXPECT_GE(seconds, 2.0) << r.out;
  std::cout << "verify --rate 1 over ~3 MB took " << seconds << " s\n";
}

}  // namespace
}  // namespace mirrorcast::testing

namespace mirrorcast::testing {
namespace {

std::string ReadText(const fs::path& p) {
  std::ifstream in(p);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// The Debian trace file and Arch's lastsync follow every applied serial, and
// verify does not count them as extra entries.
TEST(TraceFiles, FollowEveryAppliedSerialAndVerifyLeavesThemAlone) {
  Cluster c;
  MakeSampleRepo(c.origin_tree(), 5, 4096);
  c.StartBroker();
  c.StartSubscriber("m1", {"--trace-name", "m1.example.org"});
  c.PublishOk();
  c.WaitForSerial({"m1"}, 1);
  const fs::path tree = c.mirror_tree("m1");
  const fs::path trace = tree / "project/trace/m1.example.org";
  EXPECT_TRUE(Contains(ReadText(trace), "Archive serial: 1\n")) << ReadText(trace);
  const int64_t now = std::chrono::duration_cast<std::chrono::seconds>(
                          std::chrono::system_clock::now().time_since_epoch())
                          .count();
  const int64_t lastsync = std::stoll(ReadText(tree / "lastsync"));
  EXPECT_LE(std::abs(now - lastsync), 120);

  std::ofstream(c.origin_tree() / "Packages" / "new.rpm") << "new";
  c.PublishOk();
  c.WaitForSerial({"m1"}, 2);
  const std::string text = ReadText(trace);
  EXPECT_TRUE(Contains(text, "Archive serial: 2\n")) << text;
  EXPECT_TRUE(Contains(text, "Upstream-mirror: " + c.broker_address() + "\n")) << text;
  ASSERT_EQ(c.StopSubscriber("m1"), 0) << c.Logs();

  const RunResult v = Verify(c, "m1", {});
  EXPECT_EQ(v.exit_code, 0) << v.out << v.err;
  EXPECT_FALSE(Contains(v.out, "EXTRA")) << v.out;
  // What else is in project/ is still an extra entry.
  std::ofstream(tree / "project" / "stray") << "x";
  const RunResult v2 = Verify(c, "m1", {});
  EXPECT_NE(v2.exit_code, 0) << v2.out;
  EXPECT_TRUE(Contains(v2.out, "project/stray")) << v2.out;
}

// verify with a state made for another tree refuses before it reads or
// changes anything: a repair with --delete-extra would turn that tree into
// the state's repo.
TEST(Verify, RefusesAStateRecordedForAnotherTree) {
  Cluster c;
  MakeSampleRepo(c.origin_tree(), 5, 4096);
  c.StartBroker();
  c.StartSubscriber("m1");
  c.PublishOk();
  c.WaitForSerial({"m1"}, 1);
  ASSERT_EQ(c.StopSubscriber("m1"), 0);
  const fs::path other = c.root() / "another-repo";
  fs::create_directories(other / "pool");
  std::ofstream(other / "pool" / "theirs.deb") << "not in this state's manifest";
  const TreeSnapshot before = SnapshotTree(other);

  std::vector<std::string> argv = {BinPath("mirrorcast").string(),
                                   "verify",
                                   "--tree",
                                   other.string(),
                                   "--state",
                                   c.mirror_state("m1").string(),
                                   "--repair",
                                   "--delete-extra",
                                   "--broker",
                                   c.broker_address()};
  for (const std::string& a : c.MirrorTransport("m1")) argv.push_back(a);
  const RunResult r = mirrorcast::testing::Run(argv, 60s);
  EXPECT_EQ(r.exit_code, 2) << r.out << r.err;
  EXPECT_TRUE(Contains(r.err, "belongs to the tree")) << r.err;
  EXPECT_EQ(SnapshotTree(other), before);
  // Its own tree still verifies.
  EXPECT_EQ(Verify(c, "m1", {}).exit_code, 0);
}

}  // namespace
}  // namespace mirrorcast::testing
