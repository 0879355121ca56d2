// Crash safety, as a web client sees it (DESIGN.md section 5, invariants 1-3).
//
// A mirror subscriber is killed with SIGKILL at many points of applying a
// multi-thousand-file update, while mirrorcast-test-reader (a dnf/apt stand-in)
// reads the mirror's repodata/repomd.xml in a loop and checks that every file
// it names is there with the named SHA-256. The reader must see zero failed
// reads; after every kill the tree must hold only old or new versions of each
// path with a self-consistent index; and every restart must converge to the
// new serial on its own.
//
// Each update has the shape of a real repo update: a new version of every
// package at a new path, a new primary file and a rewritten repomd.xml naming
// only the new packages. Files the old index names stay for one more serial
// (the grace period real repos keep); each update deletes the previous
// serial's unlisted files and the packages two serials old, which no index
// the reader could hold still names.
//
// Kill points: the duration T of one full apply is measured first (serial 2,
// not killed). Then half the kills land at a uniformly random instant of the
// i-th of equal slices of [0, T] after the subscriber starts (start-up,
// staging, commit); a kill that lands after the apply finished is counted as
// late and shortens later delays. The other half watch the staging directory
// drain into the tree and kill when a random fraction (again one slice each)
// of the staged files has moved; one more kills 0-200 ms after it drained
// (deletions, fsyncs, the record) and one as soon as the subscriber logs the
// apply as recorded (before its ACK is queued). Where each kill landed is
// judged afterwards from the tree, the log and the broker, and printed.
// MIRRORCAST_CRASH_SEED fixes the random choices to replay a run.
#include <gtest/gtest.h>

#include <algorithm>
#include <csignal>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <random>
#include <sstream>
#include <thread>
#include <vector>

#include "core/crypto/sha256.h"
#include "tests/integration/cluster.h"
#include "tests/support/process.h"
#include "tests/support/tree.h"

namespace mirrorcast::testing {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using SteadyClock = std::chrono::steady_clock;
using Seconds = std::chrono::duration<double>;

constexpr int kPackages = 3000;
constexpr int kUnlisted = 300;
constexpr int kSlices = 5;  // time slices, and commit-progress slices
constexpr int kKills = 2 * kSlices + 2;
// Files an update stages: new packages, unlisted files, primary, repomd.xml.
constexpr size_t kStagedFiles = kPackages + kUnlisted + 2;
constexpr auto kConvergeTimeout = 60s;
const std::string kMirror = "m1";
const std::string kIndex = "repodata/repomd.xml";

std::string PackagePath(uint64_t serial, int i) {
  return "Packages/" + std::string(1, static_cast<char>('a' + i % 16)) + "/pkg" +
         std::to_string(i) + "-1." + std::to_string(serial) + "-1.noarch.rpm";
}
std::string UnlistedPath(uint64_t serial, int i) {
  return "Packages/unlisted/u" + std::to_string(serial) + "-" + std::to_string(i) + ".rpm.part";
}
std::string PrimaryPath(uint64_t serial) {
  return "repodata/primary-" + std::to_string(serial) + ".xml";
}

// Brings the origin tree to the content of `serial` (see the top of the file).
void WriteSerial(const fs::path& tree, uint64_t serial) {
  std::ostringstream index;
  index << "<repomd serial=\"" << serial << "\">\n";
  auto add = [&](const std::string& rel, const std::string& data, bool listed) {
    WriteFile(tree / rel, data);
    if (listed) index << ToHex(Sha256Of(data)) << " " << rel << "\n";
  };
  for (int i = 0; i < kPackages; ++i) {
    const size_t size = 200 + (static_cast<size_t>(i) * 7919 + serial * 31) % 2801;
    add(PackagePath(serial, i), RandomBytes(size, serial * 1000003 + static_cast<uint64_t>(i)),
        true);
  }
  for (int i = 0; i < kUnlisted; ++i) {
    add(UnlistedPath(serial, i), RandomBytes(700, (serial << 32) + static_cast<uint64_t>(i)),
        false);
  }
  add(PrimaryPath(serial), RandomBytes(30000, (serial << 40) + 1), true);
  index << "</repomd>\n";
  WriteFile(tree / kIndex, index.str());
  if (serial >= 2) {
    for (int i = 0; i < kUnlisted; ++i) fs::remove(tree / UnlistedPath(serial - 1, i));
  }
  if (serial >= 3) {
    for (int i = 0; i < kPackages; ++i) fs::remove(tree / PackagePath(serial - 2, i));
    fs::remove(tree / PrimaryPath(serial - 2));
  }
}

std::string Format(double v) {
  std::ostringstream out;
  out.precision(3);
  out << v;
  return out.str();
}

std::string ReadFrom(const fs::path& path, uintmax_t offset) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return "";
  in.seekg(static_cast<std::streamoff>(offset));
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

uintmax_t SizeOf(const fs::path& path) {
  std::error_code ec;
  const uintmax_t size = fs::file_size(path, ec);
  return ec ? 0 : size;
}

size_t CountEntries(const fs::path& dir) {
  std::error_code ec;
  size_t n = 0;
  for (auto it = fs::directory_iterator(dir, ec); !ec && it != fs::directory_iterator();
       it.increment(ec)) {
    ++n;
  }
  return n;
}

// The sha256 hex of a snapshot entry "f <size> <hex> <mode>", or "" if not a file.
std::string SnapshotHex(const std::string& description) {
  std::istringstream in(description);
  std::string kind, size, hex;
  in >> kind >> size >> hex;
  return kind == "f" ? hex : "";
}

// What a tree left by a kill may look like: every path holds its old or its
// new version (never a partial or foreign file), and the index it serves
// names only files it holds with the named hash. Returns the violations.
std::vector<std::string> CheckKilledTree(const TreeSnapshot& mirror, const TreeSnapshot& before,
                                         const TreeSnapshot& after) {
  std::vector<std::string> problems;
  for (const auto& [path, description] : mirror) {
    auto b = before.find(path);
    auto a = after.find(path);
    const bool is_dir = description.rfind("d ", 0) == 0;
    const bool matches = (b != before.end() && (is_dir || b->second == description)) ||
                         (a != after.end() && (is_dir || a->second == description));
    if (!matches) problems.push_back(path + ": '" + description + "' is neither version");
  }
  return problems;
}

// The files the index in `tree` names that `mirror` (its snapshot) does not
// hold as named.
std::vector<std::string> CheckIndex(const fs::path& tree, const TreeSnapshot& mirror) {
  std::vector<std::string> problems;
  if (!fs::exists(tree / kIndex)) return {kIndex + " is missing"};
  std::istringstream lines(ReadFile(tree / kIndex));
  std::string line;
  while (std::getline(lines, line)) {
    if (line.size() < 66 || line[64] != ' ') continue;
    const std::string rel = line.substr(65);
    auto it = mirror.find(rel);
    if (it == mirror.end()) {
      problems.push_back("index names missing " + rel);
    } else if (SnapshotHex(it->second) != line.substr(0, 64)) {
      problems.push_back("index names " + rel + " with another hash");
    }
  }
  return problems;
}

// Polls the broker until the mirror has ACKed `serial` as applied. Returns
// the time since `since`, or nullopt at the deadline.
std::optional<Seconds> WaitApplied(Cluster& c, uint64_t serial, SteadyClock::time_point since,
                                   std::chrono::seconds timeout) {
  const auto deadline = SteadyClock::now() + timeout;
  for (;;) {
    auto m = c.Mirror(kMirror);
    if (m && m->serial() >= serial && m->state() == v1::ACK_APPLIED) {
      return Seconds(SteadyClock::now() - since);
    }
    if (SteadyClock::now() > deadline) return std::nullopt;
    std::this_thread::sleep_for(20ms);
  }
}

// How a kill is aimed.
enum class Aim {
  kTime,            // a random instant of slice `slice` of `slices` of one full apply
  kCommitFraction,  // when a random fraction (slice of slices) of the staged files is moved
  kAfterDrain,      // 0-200 ms after the last staged file moved: deletions, fsyncs, record
  kOnRecord,        // as soon as the subscriber logs the apply as recorded, before its ACK
};
struct KillPlan {
  Aim aim;
  int slice = 0;
  int slices = 1;
};

// Where a kill landed, judged afterwards from the tree, the log and the broker.
enum class KillPoint {
  kBeforeStaging,    // tree at the old serial, nothing staged yet
  kStaging,          // tree at the old serial, content staged
  kPlacing,          // new content partly moved in, old index still served
  kDeleting,         // new index served, old files not all deleted yet
  kCommitted,        // tree at the new serial, serial not recorded
  kRecordedUnacked,  // recorded ("applied" logged), broker not told yet
  kLate,             // the broker had the ACK: the apply was over
};

const char* Name(KillPoint p) {
  switch (p) {
    case KillPoint::kBeforeStaging:
      return "before-staging";
    case KillPoint::kStaging:
      return "staging";
    case KillPoint::kPlacing:
      return "commit-placing";
    case KillPoint::kDeleting:
      return "commit-deleting";
    case KillPoint::kCommitted:
      return "committed-unrecorded";
    case KillPoint::kRecordedUnacked:
      return "recorded-unacked";
    case KillPoint::kLate:
      return "late";
  }
  return "?";
}

std::map<std::string, uint64_t> ParseCounters(const std::string& line) {
  std::map<std::string, uint64_t> out;
  std::istringstream in(line);
  std::string field;
  while (in >> field) {
    const auto eq = field.find('=');
    if (eq == std::string::npos) continue;
    out[field.substr(0, eq)] = std::strtoull(field.c_str() + eq + 1, nullptr, 10);
  }
  return out;
}

TEST(Crash, KillNineDuringApplyNeverShowsAClientABrokenRepoAndAlwaysConverges) {
  const auto test_started = SteadyClock::now();
  uint64_t seed = std::random_device{}();
  if (const char* env = std::getenv("MIRRORCAST_CRASH_SEED"))
    seed = std::strtoull(env, nullptr, 10);
  std::cout << "[ crash    ] seed=" << seed << " (MIRRORCAST_CRASH_SEED replays it)" << std::endl;
  std::mt19937_64 random(seed);

  Cluster c;
  c.StartBroker();
  const fs::path origin = c.origin_tree();
  const fs::path mirror = c.mirror_tree(kMirror);
  const fs::path staging = c.mirror_state(kMirror) / "staging";
  const fs::path sub_log = c.root() / "logs" / (kMirror + ".log");

  // Serial 1: the mirror bootstraps (not killed).
  WriteSerial(origin, 1);
  ASSERT_NE(c.PublishOk().find("serial=1"), std::string::npos);
  c.StartSubscriber(kMirror);
  c.WaitForSerial({kMirror}, 1);
  ASSERT_FALSE(::testing::Test::HasFailure());
  TreeSnapshot before = SnapshotTree(origin);
  ASSERT_EQ(SnapshotTree(mirror), before);

  // The web client reads from now on, across every apply and kill.
  const fs::path reader_out = c.root() / "reader.out";
  ChildProcess reader;
  reader.Start({BinPath("mirrorcast-test-reader").string(), "--tree", mirror.string(), "--metadata",
                kIndex, "--out", reader_out.string()},
               c.root() / "logs" / "reader.log");

  // Serial 2 is applied whole (not killed) to measure one full apply.
  ASSERT_EQ(c.StopSubscriber(kMirror), 0) << c.Logs();
  WriteSerial(origin, 2);
  ASSERT_NE(c.PublishOk().find("serial=2"), std::string::npos);
  auto started = SteadyClock::now();
  c.StartSubscriber(kMirror);
  const auto full = WaitApplied(c, 2, started, kConvergeTimeout);
  ASSERT_TRUE(full.has_value()) << c.Logs();
  before = SnapshotTree(origin);
  ASSERT_EQ(SnapshotTree(mirror), before);
  const double full_apply = full->count();
  std::cout << "[ crash    ] one full apply of " << kPackages << " new + " << kUnlisted
            << " unlisted files: " << full_apply << " s (from process start to ACK)" << std::endl;

  std::map<KillPoint, int> points;
  std::vector<double> converge;
  std::vector<std::string> tree_problems;
  double scale = 1.0;
  uint64_t serial = 2;
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  std::vector<KillPlan> plans;
  for (int i = 0; i < kSlices; ++i) {
    plans.push_back({Aim::kTime, i, kSlices});
    plans.push_back({Aim::kCommitFraction, i, kSlices});
  }
  plans.push_back({Aim::kAfterDrain});
  plans.push_back({Aim::kOnRecord});
  for (int k = 0; k < kKills; ++k) {
    ASSERT_EQ(c.StopSubscriber(kMirror), 0) << c.Logs();
    ++serial;
    WriteSerial(origin, serial);
    // Each serial replaces half the small tree: allowed explicitly.
    const std::string published = c.PublishOk({"--max-delete-percent", "100"});
    ASSERT_NE(published.find("serial=" + std::to_string(serial)), std::string::npos) << published;
    const TreeSnapshot after = SnapshotTree(origin);

    const KillPlan plan = plans[static_cast<size_t>(k)];
    const double u = unit(random);
    std::string kill_at;
    const uintmax_t log_offset = SizeOf(sub_log);
    const std::string applied_line =
        "applied repo=" + c.repo() + " serial=" + std::to_string(serial) + " ";
    started = SteadyClock::now();
    const auto deadline = started + Seconds(3 * full_apply + 5);
    c.StartSubscriber(kMirror);
    size_t peak = 0, left = 0;
    // Polls the staging directory until `done(peak, left)` or the deadline.
    auto watch_staging = [&](auto done) {
      while (SteadyClock::now() < deadline) {
        left = CountEntries(staging);
        peak = std::max(peak, left);
        if (peak >= kStagedFiles && done(left)) return;
        std::this_thread::sleep_for(1ms);
      }
    };
    switch (plan.aim) {
      case Aim::kTime: {
        const double delay = scale * full_apply * (plan.slice + u) / plan.slices;
        std::this_thread::sleep_until(started + Seconds(delay));  // the kill point itself
        kill_at = "t=" + Format(delay) + "s";
        break;
      }
      case Aim::kCommitFraction: {
        const double moved = (plan.slice + u) / plan.slices;
        watch_staging([&](size_t n) { return n <= (1.0 - moved) * kStagedFiles; });
        kill_at = "commit " + Format(moved * 100) + "% moved";
        break;
      }
      case Aim::kAfterDrain: {
        watch_staging([](size_t n) { return n == 0; });
        const double delay = 0.2 * u;
        std::this_thread::sleep_for(Seconds(delay));
        kill_at = "staging drained+" + Format(delay) + "s";
        break;
      }
      case Aim::kOnRecord:
        while (SteadyClock::now() < deadline &&
               ReadFrom(sub_log, log_offset).find(applied_line) == std::string::npos) {
          std::this_thread::sleep_for(1ms);
        }
        kill_at = "'applied' logged";
        break;
    }
    if (plan.aim == Aim::kCommitFraction || plan.aim == Aim::kAfterDrain) {
      kill_at += " (" + std::to_string(peak - left) + "/" + std::to_string(peak) + " seen moved)";
    }
    const size_t staged_at_kill = CountEntries(staging);
    c.subscriber(kMirror).Signal(SIGKILL);
    const std::optional<int> status = c.subscriber(kMirror).Wait(5s);
    ASSERT_TRUE(status.has_value());
    EXPECT_EQ(*status, 128 + SIGKILL) << "the subscriber exited on its own before the kill\n"
                                      << c.Logs();

    // Where the kill landed.
    const std::string log = ReadFrom(sub_log, log_offset);
    const bool applied_before_kill = log.find(applied_line) != std::string::npos;
    auto row = c.Mirror(kMirror);
    const bool acked_before_kill = row && row->serial() >= serial;
    const TreeSnapshot killed = SnapshotTree(mirror);
    KillPoint point;
    if (acked_before_kill) {
      point = KillPoint::kLate;
    } else if (applied_before_kill) {
      point = KillPoint::kRecordedUnacked;
    } else if (killed == after) {
      point = KillPoint::kCommitted;
    } else if (killed == before) {
      point = staged_at_kill > 0 ? KillPoint::kStaging : KillPoint::kBeforeStaging;
    } else if (killed.count(kIndex) && killed.at(kIndex) == before.at(kIndex)) {
      point = KillPoint::kPlacing;
    } else {
      point = KillPoint::kDeleting;
    }
    ++points[point];
    if (point == KillPoint::kLate && plan.aim == Aim::kTime) scale *= 0.75;

    for (const auto& p : CheckKilledTree(killed, before, after)) tree_problems.push_back(p);
    for (const auto& p : CheckIndex(mirror, killed)) tree_problems.push_back(p);

    // Restart: it must finish or redo the apply on its own.
    started = SteadyClock::now();
    c.StartSubscriber(kMirror);
    const auto took = WaitApplied(c, serial, started, kConvergeTimeout);
    std::cout << "[ crash    ] run " << k + 1 << "/" << kKills << " serial=" << serial
              << " kill at " << kill_at << ": " << Name(point)
              << ", staged_files=" << staged_at_kill
              << ", converged=" << (took ? std::to_string(took->count()) + "s" : std::string("NO"))
              << std::endl;
    ASSERT_TRUE(took.has_value()) << "run " << k + 1 << ": no ACK of serial " << serial
                                  << " within " << kConvergeTimeout.count()
                                  << " s after restarting a subscriber killed at " << kill_at
                                  << " (" << Name(point) << "); tree at the new serial: "
                                  << (SnapshotTree(mirror) == after ? "yes" : "no") << "\n"
                                  << c.Logs();
    converge.push_back(took->count());
    ASSERT_EQ(SnapshotTree(mirror), after) << "run " << k + 1 << " converged to another tree";
    before = after;
  }

  ASSERT_TRUE(reader.Running()) << c.Logs();
  reader.Signal(SIGTERM);
  const std::optional<int> reader_status = reader.Wait(20s);
  ASSERT_TRUE(reader_status.has_value());
  auto counters = ParseCounters(ReadFile(reader_out));

  const int late = points[KillPoint::kLate];
  const int mid = kKills - late;
  double max_converge = 0, sum_converge = 0;
  for (double t : converge) {
    max_converge = std::max(max_converge, t);
    sum_converge += t;
  }
  const double avg_converge = converge.empty() ? 0 : sum_converge / converge.size();
  std::ostringstream summary;
  summary << "kill_points=" << kKills << " mid_apply=" << mid << " late=" << late << " (";
  for (const auto& [p, n] : points) summary << Name(p) << "=" << n << " ";
  summary << ") reader: reads=" << counters["reads"] << " files=" << counters["files"]
          << " failed=" << counters["failed"] << "; convergence after restart: max=" << max_converge
          << "s avg=" << avg_converge << "s; full apply=" << full_apply
          << "s; test=" << Seconds(SteadyClock::now() - test_started).count() << "s";
  std::cout << "[ crash    ] " << summary.str() << std::endl;
  ::testing::Test::RecordProperty("kill_points", kKills);
  ::testing::Test::RecordProperty("kills_mid_apply", mid);
  ::testing::Test::RecordProperty("failed_reads", static_cast<int>(counters["failed"]));
  ::testing::Test::RecordProperty("reads", static_cast<int>(counters["reads"]));
  ::testing::Test::RecordProperty("converge_max_ms", static_cast<int>(max_converge * 1000));
  ::testing::Test::RecordProperty("converge_avg_ms", static_cast<int>(avg_converge * 1000));

  EXPECT_EQ(counters.count("failed"), 1u) << "no summary from the reader\n" << c.Logs();
  EXPECT_EQ(counters["failed"], 0u) << "a client read a broken repo\n" << c.Logs();
  EXPECT_EQ(*reader_status, 0);
  EXPECT_GT(counters["reads"], 0u);
  EXPECT_TRUE(tree_problems.empty())
      << tree_problems.size()
      << " problems, first: " << (tree_problems.empty() ? "" : tree_problems.front());
  // Most kills must land inside an apply, or the test proves little.
  EXPECT_GE(mid, kKills / 2) << summary.str();
  EXPECT_EQ(SnapshotTree(mirror), SnapshotTree(origin));
}

}  // namespace
}  // namespace mirrorcast::testing
