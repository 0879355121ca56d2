// A kill -9 halfway through a bootstrap large enough that its change list is
// kept in the journal's tables (over the 20 000 changes held in memory): the
// restarted subscriber resumes from the journal, reuses what was already
// staged instead of fetching it again, and ends with the origin's tree.
#include <gtest/gtest.h>

#include <csignal>
#include <fstream>
#include <iostream>
#include <string>
#include <thread>

#include "tests/integration/cluster.h"
#include "tests/support/tree.h"

namespace mirrorcast::testing {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using SteadyClock = std::chrono::steady_clock;

constexpr int kFiles = 24000;  // over the 20 000 changes a jump keeps in memory
constexpr int kPerDir = 300;

std::string PathOf(int i) {
  return "pool/d" + std::to_string(i / kPerDir) + "/pkg-" + std::to_string(i) + ".rpm";
}

// Unique content of 1000-2000 bytes.
std::string ContentOf(int i) {
  std::string s = "package " + std::to_string(i) + "\n";
  s.resize(1000 + static_cast<size_t>(i % 1000), static_cast<char>('a' + i % 26));
  return s;
}

struct StagedSoFar {
  size_t files = 0;
  uint64_t bytes = 0;
};

StagedSoFar Staged(const fs::path& staging) {
  StagedSoFar out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(staging, ec)) {
    std::error_code size_ec;
    if (!e.is_regular_file(size_ec)) continue;
    const auto size = e.file_size(size_ec);
    if (size_ec) continue;  // moved away meanwhile
    ++out.files;
    out.bytes += size;
  }
  return out;
}

TEST(BootstrapResume, KillNineHalfwayThroughALargeBootstrapFetchesOnlyTheRest) {
  Cluster c;
  uint64_t total_bytes = 0;
  for (int i = 0; i < kFiles; ++i) {
    const fs::path file = c.origin_tree() / PathOf(i);
    if (i % kPerDir == 0) fs::create_directories(file.parent_path());
    const std::string content = ContentOf(i);
    std::ofstream(file, std::ios::binary) << content;
    total_bytes += content.size();
  }
  c.StartBroker();
  c.PublishOk();

  const std::string id = "m";
  const fs::path staging = c.mirror_state(id) / "staging";
  c.StartSubscriber(id);
  // Kill once 40-99 % of the files are staged: past the first staging batch
  // of 8192 files, whose files have moved to their slots by then (nothing
  // reaches the tree before every file is staged).
  StagedSoFar at_kill;
  const auto deadline = SteadyClock::now() + 180s;
  while (SteadyClock::now() < deadline && c.subscriber(id).Running()) {
    at_kill = Staged(staging);
    if (at_kill.files >= kFiles * 4 / 10) break;
    std::this_thread::sleep_for(5ms);
  }
  ASSERT_TRUE(c.subscriber(id).Running()) << "the bootstrap ended before the kill\n" << c.Logs();
  c.subscriber(id).Signal(SIGKILL);
  const int status = c.StopSubscriber(id);
  EXPECT_EQ(status, 128 + SIGKILL) << c.Logs();
  at_kill = Staged(staging);  // what the killed process left
  ASSERT_GE(at_kill.files, static_cast<size_t>(kFiles * 4 / 10)) << c.Logs();
  ASSERT_LT(at_kill.files, static_cast<size_t>(kFiles)) << "the kill came after staging ended";
  const fs::path pool = c.mirror_tree(id) / "pool";
  ASSERT_TRUE(!fs::exists(pool) || fs::is_empty(pool))
      << "files reached the tree before staging ended";

  c.StartSubscriber(id);
  c.WaitForSerial({id}, 1, 180s);
  EXPECT_EQ(SnapshotTree(c.mirror_tree(id)), SnapshotTree(c.origin_tree()));
  auto m = c.Mirror(id);
  ASSERT_TRUE(m.has_value());
  // The restart fetched what was missing, and not what was staged (neither
  // the files of the batch in progress nor those of finished batches, moved
  // to their slots). Slack: the requests in flight at the kill.
  const uint64_t slack = 1u << 20;
  std::cout << "bootstrap of " << kFiles << " files (" << total_bytes << " bytes): killed with "
            << at_kill.files << " files (" << at_kill.bytes
            << " bytes) staged; the restart fetched " << m->bytes_fetched() << " bytes\n";
  EXPECT_LE(m->bytes_fetched(), total_bytes - at_kill.bytes + slack) << c.Logs();
  EXPECT_GE(m->bytes_fetched() + at_kill.bytes + slack, total_bytes);
  EXPECT_TRUE(fs::is_empty(staging));
}

}  // namespace
}  // namespace mirrorcast::testing
