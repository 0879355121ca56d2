// A bad push contained: `mirrorcast recall` brings every mirror back to an
// earlier serial's tree from the broker's retained store, fetching only what
// the mirrors lack; a recall outside the window or with a key the broker does
// not trust changes nothing; the next ordinary publish builds on the recall.
// Real broker, publisher, subscriber and admin-tool processes on loopback.
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "tests/integration/cluster.h"
#include "tests/support/process.h"
#include "tests/support/tree.h"

namespace mirrorcast::testing {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

constexpr size_t kBig = 2u << 20;
const std::string kReason = "serial 3 replaced packages with broken builds (ticket 4711)";

// As release tooling does it: write beside, then rename over the path, so
// the broker's retained hard link keeps the old inode and its bytes.
void ReplaceFile(const fs::path& path, const std::string& data) {
  const fs::path tmp = path.string() + ".new";
  WriteFile(tmp, data);
  fs::rename(tmp, path);
}

RunResult RunRecall(Cluster& c, uint64_t to, const std::vector<std::string>& extra = {},
                    std::optional<fs::path> key = std::nullopt) {
  std::vector<std::string> argv = {BinPath("mirrorcast").string(),
                                   "recall",
                                   "--broker",
                                   c.broker_address(),
                                   "--key",
                                   (key ? *key : c.origin_key()).string(),
                                   "--repo",
                                   c.repo(),
                                   "--to",
                                   std::to_string(to),
                                   "--reason",
                                   kReason,
                                   "--timeout",
                                   "30"};
  for (const std::string& a : c.PublisherTransport()) argv.push_back(a);
  argv.insert(argv.end(), extra.begin(), extra.end());
  return Run(argv, 120s);
}

// path -> (size, sha256 hex) of the regular files of a snapshot.
struct FileVersion {
  uint64_t size = 0;
  std::string sha;
};
std::map<std::string, FileVersion> Files(const TreeSnapshot& snap) {
  std::map<std::string, FileVersion> out;
  for (const auto& [path, d] : snap) {
    if (d.rfind("f ", 0) != 0) continue;
    std::istringstream in(d.substr(2));
    FileVersion v;
    in >> v.size >> v.sha;
    out[path] = v;
  }
  return out;
}

size_t Count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = 0; (at = text.find(what, at)) != std::string::npos; at += what.size()) ++n;
  return n;
}

// Serials 1 and 2 (good), then 3: a bad push that rewrites packages and the
// big image, deletes packages and renames one. Two mirrors follow all three.
struct BadPush {
  TreeSnapshot serial2;
  TreeSnapshot serial3;
};

BadPush PublishThreeSerials(Cluster& c, const std::vector<std::string>& mirrors) {
  BadPush out;
  MakeSampleRepo(c.origin_tree(), 40, kBig);
  c.PublishOk();
  c.WaitForSerial(mirrors, 1);

  for (int i = 0; i < 3; ++i) {
    WriteFile(c.origin_tree() / ("Packages/new/good-" + std::to_string(i) + ".rpm"),
              RandomBytes(4000, 200 + i));
  }
  ReplaceFile(c.origin_tree() / "repodata/repomd.xml", "<repomd serial=\"2\"/>\n");
  c.PublishOk();
  c.WaitForSerial(mirrors, 2);
  out.serial2 = SnapshotTree(c.origin_tree());

  // The bad push.
  for (int i = 2; i < 8; ++i) {
    const fs::path p = c.origin_tree() / ("Packages/p" + std::to_string(i % 7) + "/pkg-" +
                                          std::to_string(i) + ".rpm");
    ReplaceFile(p, RandomBytes(3000 + i, 9000 + i));
  }
  std::string big = ReadFile(c.origin_tree() / "isos/big.iso");
  const std::string patch = RandomBytes(8192, 31337);
  big.replace(big.size() / 2, patch.size(), patch);
  ReplaceFile(c.origin_tree() / "isos/big.iso", big);
  fs::remove(c.origin_tree() / "Packages/p1/pkg-8.rpm");
  fs::remove(c.origin_tree() / "Packages/p2/pkg-9.rpm");
  fs::rename(c.origin_tree() / "Packages/p3/pkg-10.rpm", c.origin_tree() / "Packages/moved.rpm");
  ReplaceFile(c.origin_tree() / "repodata/repomd.xml", "<repomd serial=\"3\" broken=\"yes\"/>\n");
  c.PublishOk();
  c.WaitForSerial(mirrors, 3);
  out.serial3 = SnapshotTree(c.origin_tree());
  return out;
}

TEST(Recall, EveryMirrorGoesBackToTheRecalledTreeFetchingOnlyWhatItLacks) {
  Cluster c;
  c.StartBroker();
  const std::vector<std::string> mirrors = {"m1", "m2"};
  for (const auto& id : mirrors) c.StartSubscriber(id);
  const BadPush push = PublishThreeSerials(c, mirrors);
  ASSERT_NE(push.serial2, push.serial3);
  for (const auto& id : mirrors) ASSERT_EQ(SnapshotTree(c.mirror_tree(id)), push.serial3) << id;

  // The origin tree moves on before anyone recalls: nothing of serial 2
  // that serial 3 replaced is left in it.
  ReplaceFile(c.origin_tree() / "Packages/p1/pkg-1.rpm", RandomBytes(2500, 4242));
  WriteFile(c.origin_tree() / "Packages/next.rpm", RandomBytes(1500, 4243));

  const auto started = std::chrono::steady_clock::now();
  const RunResult recall = RunRecall(c, 2);
  ASSERT_EQ(recall.exit_code, 0) << recall.out << recall.err << c.Logs();
  EXPECT_NE(recall.out.find("recalled repo=demo serial=4 = serial 2"), std::string::npos)
      << recall.out;
  c.WaitForSerial(mirrors, 4);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  std::cout << "[ figure ] recall to serial 2 as serial 4: command start -> both mirrors applied "
            << seconds << " s" << std::endl;
  RecordProperty("recall_seconds", std::to_string(seconds));

  // What a mirror lacks: serial 2's file versions whose content is nowhere
  // in its serial-3 tree. The renamed package is a local copy, the big
  // image a delta against the bad version; everything else is already there.
  const auto files2 = Files(push.serial2);
  std::set<std::string> held;
  for (const auto& [path, v] : Files(push.serial3)) held.insert(v.sha);
  uint64_t lacking = 0;
  for (const auto& [path, v] : files2) {
    if (path != "isos/big.iso" && !held.count(v.sha)) lacking += v.size;
  }
  ASSERT_GT(lacking, 0u);
  for (const auto& id : mirrors) {
    EXPECT_EQ(SnapshotTree(c.mirror_tree(id)), push.serial2) << id;
    const auto m = c.Mirror(id);
    ASSERT_TRUE(m.has_value());
    EXPECT_EQ(m->serial(), 4u);
    std::cout << "[ figure ] " << id << " fetched " << m->bytes_fetched()
              << " bytes for the recall "
              << "(serial 2 content it lacked: " << lacking << " bytes + a delta of the " << kBig
              << "-byte image), reused " << m->bytes_reused() << std::endl;
    EXPECT_LE(m->bytes_fetched(), lacking + 256u * 1024) << id;
    EXPECT_GT(m->bytes_reused(), kBig / 2) << id;  // the image came back as a delta
    const std::string log = ReadFile(c.root() / "logs" / (id + ".log"));
    EXPECT_NE(log.find("serial 4 of demo is a recall of serial 2: " + kReason), std::string::npos)
        << log;
  }

  // Status: the broker's reply and the admin command show the recall.
  const v1::StatusReply status = c.Status();
  ASSERT_EQ(status.recalls_size(), 1);
  EXPECT_EQ(status.recalls(0).serial(), 4u);
  EXPECT_EQ(status.recalls(0).recall_of(), 2u);
  EXPECT_EQ(status.recalls(0).reason(), kReason);
  ASSERT_EQ(status.recall_windows_size(), 1);
  EXPECT_EQ(status.recall_windows(0).head_recall().recall_of(), 2u);
  std::vector<std::string> status_argv = {BinPath("mirrorcast").string(), "status", "--broker",
                                          c.broker_address(), "--wide"};
  for (const std::string& a : c.AdminTransport()) status_argv.push_back(a);
  const RunResult shown = mirrorcast::testing::Run(status_argv, 30s);
  ASSERT_EQ(shown.exit_code, 0) << shown.err;
  EXPECT_NE(shown.out.find("recall of serial 2: " + kReason), std::string::npos) << shown.out;
  EXPECT_NE(shown.out.find("4 (recall of 2)"), std::string::npos) << shown.out;
  status_argv.push_back("--json");
  const RunResult json = mirrorcast::testing::Run(status_argv, 30s);
  EXPECT_NE(json.out.find("\"recall_of\":2"), std::string::npos) << json.out;

  // The next ordinary publish of the origin tree builds on the recall (its
  // state directory is still at serial 3) and reaches every mirror.
  const RunResult next = c.Publish();
  ASSERT_EQ(next.exit_code, 0) << next.out << next.err << c.Logs();
  EXPECT_NE(next.out.find("serial=5"), std::string::npos) << next.out;
  EXPECT_NE(next.err.find("is a recall of serial 2"), std::string::npos) << next.err;
  c.WaitForSerial(mirrors, 5);
  const TreeSnapshot origin5 = SnapshotTree(c.origin_tree());
  for (const auto& id : mirrors) EXPECT_EQ(SnapshotTree(c.mirror_tree(id)), origin5) << id;
  EXPECT_EQ(Count(ReadFile(c.root() / "logs" / "broker.log"), "recall: repo=demo"), 1u);
}

TEST(Recall, OutsideTheWindowIsRefusedBeforeAnythingIsSigned) {
  Cluster c;
  c.StartBroker({"--keep-versions", "1"});
  c.StartSubscriber("m1");
  const BadPush push = PublishThreeSerials(c, {"m1"});

  const RunResult refused = RunRecall(c, 1);
  EXPECT_EQ(refused.exit_code, 1) << refused.out << refused.err;
  EXPECT_NE(refused.err.find("serial 1 is outside the recall window of demo at serial 3: "
                             "serials 2 to 2 can be recalled"),
            std::string::npos)
      << refused.err;
  EXPECT_NE(refused.err.find("--keep-versions"), std::string::npos) << refused.err;
  EXPECT_NE(refused.err.find("Nothing was signed or changed"), std::string::npos) << refused.err;
  const v1::StatusReply status = c.Status();
  ASSERT_EQ(status.repos_size(), 1);
  EXPECT_EQ(status.repos(0).serial(), 3u);
  EXPECT_EQ(status.recalls_size(), 0);
  EXPECT_EQ(status.recall_windows(0).oldest(), 2u);
  EXPECT_EQ(status.recall_windows(0).newest(), 2u);
  EXPECT_EQ(SnapshotTree(c.mirror_tree("m1")), push.serial3);

  // Not before the head either; and the window's own serial still works.
  const RunResult head = RunRecall(c, 3);
  EXPECT_EQ(head.exit_code, 1);
  EXPECT_NE(head.err.find("is not before the latest serial"), std::string::npos) << head.err;
  const RunResult ok = RunRecall(c, 2);
  ASSERT_EQ(ok.exit_code, 0) << ok.out << ok.err << c.Logs();
  c.WaitForSerial({"m1"}, 4);
  EXPECT_EQ(SnapshotTree(c.mirror_tree("m1")), push.serial2);
}

TEST(Recall, SignedByAKeyTheBrokerDoesNotTrustIsRefused) {
  Cluster c;
  c.StartBroker();
  c.StartSubscriber("m1");
  const BadPush push = PublishThreeSerials(c, {"m1"});
  const fs::path rogue = fs::path(c.MakeKey("rogue").string() + ".key");

  // The rogue key cannot even vouch for serial 2's event...
  const RunResult local = RunRecall(c, 2, {}, rogue);
  EXPECT_EQ(local.exit_code, 1) << local.out << local.err;
  EXPECT_NE(local.err.find("does not verify with the trusted keys"), std::string::npos)
      << local.err;
  // ...and told to trust the origin's, the broker refuses what it signs.
  const RunResult remote = RunRecall(c, 2, {"--trust", c.origin_pub().string()}, rogue);
  EXPECT_EQ(remote.exit_code, 1) << remote.out << remote.err;
  EXPECT_NE(remote.err.find("unknown signing key"), std::string::npos) << remote.err;

  const v1::StatusReply status = c.Status();
  EXPECT_EQ(status.repos(0).serial(), 3u);
  EXPECT_EQ(status.recalls_size(), 0);
  EXPECT_EQ(SnapshotTree(c.mirror_tree("m1")), push.serial3);
}

}  // namespace
}  // namespace mirrorcast::testing
