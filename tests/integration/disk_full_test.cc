// A full disk during an apply: the apply stops cleanly, the served tree stays
// at the old serial, the ACK says FAILED with the reason, and the subscriber
// retries by itself and succeeds once space is back.
//
// The mirror's tree and state live on a small tmpfs (mounting needs root; the
// test is skipped otherwise).
#include <sys/statvfs.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <fstream>
#include <iostream>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "tests/integration/cluster.h"
#include "tests/support/process.h"
#include "tests/support/tree.h"

namespace mirrorcast::testing {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

// A tmpfs mounted at a directory for the lifetime of this object; unmounted
// (lazily if still busy) on destruction.
class TmpfsMount {
 public:
  TmpfsMount(fs::path dir, int megabytes) : dir_(std::move(dir)) {
    fs::create_directories(dir_);
    const RunResult r = mirrorcast::testing::Run(
        {"/bin/mount", "-t", "tmpfs", "-o", "size=" + std::to_string(megabytes) + "m", "tmpfs",
         dir_.string()},
        30s);
    if (r.exit_code == 0) {
      mounted_ = true;
    } else {
      error_ = "cannot mount a tmpfs at " + dir_.string() + " (needs root): exit " +
               std::to_string(r.exit_code) + ": " + r.err;
    }
  }
  ~TmpfsMount() {
    if (!mounted_) return;
    const RunResult r = mirrorcast::testing::Run({"/bin/umount", dir_.string()}, 30s);
    if (r.exit_code != 0) mirrorcast::testing::Run({"/bin/umount", "-l", dir_.string()}, 30s);
  }
  TmpfsMount(const TmpfsMount&) = delete;
  TmpfsMount& operator=(const TmpfsMount&) = delete;

  bool mounted() const { return mounted_; }
  const std::string& error() const { return error_; }

 private:
  fs::path dir_;
  bool mounted_ = false;
  std::string error_;
};

uint64_t FreeBytes(const fs::path& dir) {
  struct statvfs st {};
  if (::statvfs(dir.c_str(), &st) != 0) throw std::runtime_error("statvfs " + dir.string());
  return static_cast<uint64_t>(st.f_bavail) * st.f_frsize;
}

void WriteZeros(const fs::path& file, uint64_t bytes) {
  std::ofstream out(file, std::ios::binary | std::ios::trunc);
  const std::string block(1 << 20, '\0');
  while (bytes > 0) {
    const uint64_t n = std::min<uint64_t>(bytes, block.size());
    out.write(block.data(), static_cast<std::streamsize>(n));
    bytes -= n;
  }
  out.flush();
  if (!out) throw std::runtime_error("cannot write filler " + file.string());
}

std::string Lower(std::string text) {
  std::transform(text.begin(), text.end(), text.begin(),
                 [](unsigned char ch) { return static_cast<char>(std::tolower(ch)); });
  return text;
}

TEST(DiskFull, ApplyFailsCleanlyAndSucceedsOnItsOwnOnceSpaceIsBack) {
  Cluster c;
  const fs::path small = c.root() / "small-fs";
  TmpfsMount mount(small, 24);
  if (!mount.mounted()) GTEST_SKIP() << mount.error();
  const fs::path tree = small / "tree";
  const fs::path state = small / "state";
  const fs::path filler = small / "filler";

  MakeSampleRepo(c.origin_tree(), 20, 1u << 20);
  c.StartBroker();
  // Declared after the mount: stopped before it is unmounted.
  ChildProcess subscriber;
  subscriber.Start({BinPath("mirrorcast-subscriber").string(),
                    "--broker",
                    c.broker_address(),
                    "--trust",
                    c.origin_pub().string(),
                    "--repo",
                    c.repo(),
                    "--tree",
                    tree.string(),
                    "--state",
                    state.string(),
                    "--id",
                    "m1",
                    "--poll-interval",
                    "2",
                    "--log-level",
                    "debug",
                    "--curve-key",
                    c.MirrorTransport("m1")[1],
                    "--broker-key",
                    c.broker_curve_pub().string()},
                   c.root() / "logs" / "m1.log");
  c.PublishOk();
  c.WaitForSerial({"m1"}, 1);
  const TreeSnapshot serial1 = SnapshotTree(tree);
  ASSERT_EQ(serial1, SnapshotTree(c.origin_tree()));

  // Leave 2 MiB free, then publish an 8 MB file.
  const uint64_t free_before = FreeBytes(small);
  ASSERT_GT(free_before, 4u << 20);
  WriteZeros(filler, free_before - (2u << 20));
  const uint64_t free_with_filler = FreeBytes(small);
  WriteFile(c.origin_tree() / "isos" / "huge.iso", RandomBytes(8'000'000, 5));
  c.PublishOk();

  // The broker hears a FAILED ACK for serial 2 that names the cause.
  const auto deadline = std::chrono::steady_clock::now() + 60s;
  std::optional<v1::MirrorStatus> failed;
  for (;;) {
    auto m = c.Mirror("m1");
    if (m && m->state() == v1::ACK_FAILED && m->target_serial() == 2) {
      failed = m;
      break;
    }
    ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "no FAILED ACK for serial 2\n"
                                                          << c.Logs();
    std::this_thread::sleep_for(50ms);
  }
  const std::string error = Lower(failed->error());
  EXPECT_TRUE(error.find("no space left") != std::string::npos ||
              error.find("resource exhausted") != std::string::npos ||
              error.find("resource_exhausted") != std::string::npos)
      << failed->error();
  EXPECT_EQ(failed->serial(), 1u);
  EXPECT_EQ(SnapshotTree(tree), serial1);
  EXPECT_TRUE(subscriber.Running()) << c.Logs();
  // A failed attempt removes what it staged: between retries the space is
  // free again (else no retry could ever succeed on a full disk).
  const auto cleaned_deadline = std::chrono::steady_clock::now() + 20s;
  while (FreeBytes(small) + (512u << 10) < free_with_filler) {
    ASSERT_LT(std::chrono::steady_clock::now(), cleaned_deadline)
        << "staged content of the failed apply was not removed: " << FreeBytes(small)
        << " bytes free, " << free_with_filler << " before the apply\n"
        << c.Logs();
    std::this_thread::sleep_for(20ms);
  }

  // Space comes back: the subscriber retries on its own (backoff from 2 s).
  fs::remove(filler);
  const auto freed = std::chrono::steady_clock::now();
  c.WaitForSerial({"m1"}, 2, 45s);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - freed).count();
  EXPECT_EQ(SnapshotTree(tree), SnapshotTree(c.origin_tree()));
  EXPECT_TRUE(subscriber.Running()) << c.Logs();
  std::cout << "converged " << seconds << " s after space was freed\n";
  RecordProperty("seconds_to_converge_after_freeing", std::to_string(seconds));

  EXPECT_EQ(subscriber.Stop(10s), 0) << c.Logs();
}

}  // namespace
}  // namespace mirrorcast::testing
