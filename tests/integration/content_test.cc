// End to end, real processes: the broker serves exactly what was signed. A
// mirror several serials behind catches up after the origin tree has already
// moved on (the superseded versions come from the broker's retained store),
// and with the store turned off the same mirror is refused instead of being
// served the tree's newer, unpublished bytes.
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <thread>

#include "tests/integration/cluster.h"
#include "tests/support/tree.h"

namespace mirrorcast::testing {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

// What release tooling does: the new version is written beside the old one
// and renamed over it, so the old inode is not touched.
void Replace(const fs::path& file, const std::string& data) {
  const fs::path tmp = file.string() + ".tmp";
  WriteFile(tmp, data);
  fs::rename(tmp, file);
}

// Takes the cluster from serial 1 to serial 3 while mirror `id` is down, then
// moves the origin tree on without publishing (serial 4 being prepared).
// Returns the tree as it was at serial 3.
TreeSnapshot PublishTwiceThenMoveOn(Cluster& c, const std::string& id) {
  const fs::path tree = c.origin_tree();
  c.StartSubscriber(id);
  c.PublishOk();
  c.WaitForSerial({id}, 1);
  EXPECT_EQ(c.StopSubscriber(id), 0);

  Replace(tree / "Packages/p1/pkg-1.rpm", RandomBytes(4000, 201));
  fs::remove(tree / "Packages/p2/pkg-2.rpm");
  Replace(tree / "repodata/repomd.xml", "<repomd serial=\"2\"/>\n");
  EXPECT_NE(c.PublishOk().find("serial=2"), std::string::npos);

  Replace(tree / "isos/big.iso", RandomBytes(1u << 20, 300));
  Replace(tree / "Packages/new.rpm", RandomBytes(3000, 301));
  Replace(tree / "repodata/repomd.xml", "<repomd serial=\"3\"/>\n");
  EXPECT_NE(c.PublishOk().find("serial=3"), std::string::npos);
  const TreeSnapshot at3 = SnapshotTree(tree);

  // Serial 4 in the making: every file serial 3 changed is replaced again or gone.
  Replace(tree / "isos/big.iso", RandomBytes(1u << 20, 400));
  Replace(tree / "Packages/p1/pkg-1.rpm", RandomBytes(4000, 401));
  Replace(tree / "repodata/repomd.xml", "<repomd serial=\"4\" draft=\"yes\"/>\n");
  fs::remove(tree / "Packages/new.rpm");
  WriteFile(tree / "Packages/unpublished.rpm", RandomBytes(2000, 402));
  return at3;
}

size_t RetainedObjects(const Cluster& c) {
  size_t n = 0;
  const fs::path dir = c.root() / "broker-state/objects" / c.repo();
  if (!fs::exists(dir)) return 0;
  for (const auto& e : fs::recursive_directory_iterator(dir)) n += e.is_regular_file() ? 1 : 0;
  return n;
}

TEST(Content, MirrorSeveralSerialsBehindCatchesUpFromTheRetainedStore) {
  Cluster c;
  MakeSampleRepo(c.origin_tree(), 20, 1u << 20);
  c.StartBroker();
  const TreeSnapshot at3 = PublishTwiceThenMoveOn(c, "behind");
  ASSERT_NE(SnapshotTree(c.origin_tree()), at3);
  EXPECT_GT(RetainedObjects(c), 0u);

  c.StartSubscriber("behind");
  c.WaitForSerial({"behind"}, 3);
  // Exactly serial 3, although the tree holds none of serial 3's new
  // versions any more: nothing of serial 4's draft leaked through.
  EXPECT_EQ(SnapshotTree(c.mirror_tree("behind")), at3);
  EXPECT_FALSE(fs::exists(c.mirror_tree("behind") / "Packages/unpublished.rpm"));
  auto m = c.Mirror("behind");
  ASSERT_TRUE(m.has_value());
  EXPECT_EQ(m->state(), v1::ACK_APPLIED);
  EXPECT_GT(m->bytes_fetched(), 0u);
}

TEST(Content, WithoutRetainedVersionsAMirrorBehindIsRefusedNotServedNewerBytes) {
  Cluster c;
  MakeSampleRepo(c.origin_tree(), 20, 1u << 20);
  c.StartBroker({"--keep-versions", "0"});
  const TreeSnapshot at1 = SnapshotTree(c.origin_tree());
  PublishTwiceThenMoveOn(c, "behind");
  EXPECT_EQ(RetainedObjects(c), 0u);

  c.StartSubscriber("behind");
  const auto deadline = std::chrono::steady_clock::now() + 60s;
  std::optional<v1::MirrorStatus> failed;
  for (;;) {
    auto m = c.Mirror("behind");
    if (m && m->state() == v1::ACK_FAILED && m->target_serial() == 3) {
      failed = m;
      break;
    }
    ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "no FAILED ACK for serial 3\n"
                                                          << c.Logs();
    std::this_thread::sleep_for(50ms);
  }
  // Refused by the broker: a file serial 3 named has other bytes at its path now, or is gone.
  const std::string& error = failed->error();
  EXPECT_TRUE(error.find("changed since it was published") != std::string::npos ||
              error.find("no retained copy of it is left") != std::string::npos)
      << error;
  EXPECT_EQ(failed->serial(), 1u);
  // The mirror stays exactly at serial 1.
  EXPECT_EQ(SnapshotTree(c.mirror_tree("behind")), at1);
}

}  // namespace
}  // namespace mirrorcast::testing
