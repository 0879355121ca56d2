// A publish whose change list and manifest are far larger than one message:
// the event leaves the change list out, the publisher uploads the manifest
// chunks in several requests, and every mirror fetches the index by the
// signed root and the chunks it lacks, diffs, applies and verifies. Caps are
// set small so a tree that runs in seconds crosses every boundary.
#include <gtest/gtest.h>

#include <fstream>
#include <string>

#include "tests/integration/cluster.h"
#include "tests/support/tree.h"

namespace mirrorcast::testing {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

constexpr int kFiles = 50000;
constexpr int kPerDir = 200;

std::string PathOf(int i) {
  return "pool/d" + std::to_string(i / kPerDir) + "/pkg-" + std::to_string(i) + ".rpm";
}

void WriteSmall(const fs::path& file, const std::string& content) {
  std::ofstream out(file, std::ios::binary | std::ios::trunc);
  out << content;
}

size_t Count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = 0; (at = text.find(what, at)) != std::string::npos; at += what.size()) ++n;
  return n;
}

TEST(Scale, AChangeListFarLargerThanOneMessageTravelsAsManifestChunks) {
  Cluster c;
  for (int d = 0; d <= (kFiles - 1) / kPerDir; ++d) {
    fs::create_directories(c.origin_tree() / ("pool/d" + std::to_string(d)));
  }
  for (int i = 0; i < kFiles; ++i) {
    WriteSmall(c.origin_tree() / PathOf(i), "package " + std::to_string(i) + "\n");
  }
  WriteFile(c.origin_tree() / "repodata/repomd.xml", "<repomd serial=\"1\"/>\n");
  c.StartBroker();
  const std::vector<std::string> mirrors = {"m1", "m2"};
  for (const auto& id : mirrors) c.StartSubscriber(id);

  // 50 k changes are ~5 MB of change list; 64 KiB may travel in the event,
  // and each upload request carries at most 1 MiB of manifest chunks.
  const std::vector<std::string> caps = {"--max-inline-change-bytes", "65536", "--max-upload-bytes",
                                         "1048576"};
  EXPECT_NE(c.PublishOk(caps).find("serial=1"), std::string::npos);
  c.WaitForSerial(mirrors, 1, 300s);
  const std::string log1 = ReadFile(c.root() / "logs" / "broker.log");
  EXPECT_NE(log1.find("serial=1 changes=" + std::to_string(kFiles + 2 + kFiles / kPerDir + 1) +
                      " (list left out)"),
            std::string::npos)
      << log1.substr(0, 4000);

  // A second large change, against a mirror that holds every other chunk:
  // 4000 files rewritten, 1000 deleted, 1000 added.
  for (int i = 0; i < kFiles; i += 25) {
    WriteSmall(c.origin_tree() / PathOf(i), "package " + std::to_string(i) + " rebuilt\n");
  }
  for (int i = 3; i < kFiles; i += 100) fs::remove(c.origin_tree() / PathOf(i));
  for (int i = 0; i < 1000; ++i) {
    WriteSmall(c.origin_tree() / ("pool/d0/new-" + std::to_string(i) + ".rpm"), "new\n");
  }
  WriteFile(c.origin_tree() / "repodata/repomd.xml", "<repomd serial=\"2\"/>\n");
  EXPECT_NE(c.PublishOk(caps).find("serial=2"), std::string::npos);
  c.WaitForSerial(mirrors, 2, 300s);
  const std::string log2 = ReadFile(c.root() / "logs" / "broker.log");
  EXPECT_EQ(Count(log2, "(list left out)"), 2u);

  const TreeSnapshot origin = SnapshotTree(c.origin_tree());
  for (const auto& id : mirrors) {
    EXPECT_EQ(SnapshotTree(c.mirror_tree(id)), origin) << id;
    auto m = c.Mirror(id);
    ASSERT_TRUE(m.has_value());
    EXPECT_EQ(m->state(), v1::ACK_APPLIED) << m->error();
    const std::string log = ReadFile(c.root() / "logs" / (id + ".log"));
    // Both serials came by manifest diff, not by a broadcast change list.
    EXPECT_EQ(Count(log, "jumping from serial"), 2u) << id;
    // The bootstrap's 50 k changes went through the journal's table as the
    // diff produced them (bounded memory); the second, smaller jump stayed
    // in memory.
    EXPECT_EQ(Count(log, "journaled as they came"), 1u) << id;
    // Small files travelled several to a content request.
    EXPECT_EQ(Count(log, "fetching one range per request"), 0u) << id;
  }
}

}  // namespace
}  // namespace mirrorcast::testing
