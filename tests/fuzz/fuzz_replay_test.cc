// Replays a deterministic corpus through every fuzz target on each ordinary
// (GCC) build, so the decoders' robustness is checked without clang or
// libFuzzer. Per target: its valid seeds, every truncation of each seed,
// single-bit flips, byte insertions and deletions, splices of two seeds, and
// random inputs from a fixed-seed generator. A target that crashes or traps
// kills this process, which fails the test run.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "tests/fuzz/fuzz_targets.h"
#include "tests/fuzz/quiet_logs.h"

namespace mirrorcast::fuzz {
namespace {

using Entry = int (*)(const uint8_t*, size_t);

struct Budget {
  size_t max_flips_per_seed;  // bit flips; every byte of a seed up to this many
  size_t max_edits_per_seed;  // insertions plus deletions
  size_t random_inputs;
};

// Enough mutations to reach every decoder branch a one-byte change can reach
// on the seeds, small enough that the whole replay stays well under 30 s.
constexpr Budget kDefaultBudget{4096, 512, 5000};

class CorpusRunner {
 public:
  explicit CorpusRunner(Entry entry) : entry_(entry) {}

  void Run(const std::string& input) {
    // A copy of exactly `size` bytes, so ASan sees reads past the end.
    std::vector<uint8_t> bytes(input.begin(), input.end());
    EXPECT_EQ(entry_(bytes.data(), bytes.size()), 0);
    ++runs_;
  }
  size_t runs() const { return runs_; }

 private:
  Entry entry_;
  size_t runs_ = 0;
};

// Positions 0..n-1, all of them when n <= limit, else `limit` evenly spread.
std::vector<size_t> Positions(size_t n, size_t limit) {
  std::vector<size_t> out;
  if (n <= limit) {
    for (size_t i = 0; i < n; ++i) out.push_back(i);
  } else {
    for (size_t k = 0; k < limit; ++k) out.push_back(k * n / limit);
  }
  return out;
}

size_t Replay(Entry entry, const std::vector<std::string>& seeds, const Budget& budget) {
  CorpusRunner runner(entry);
  std::mt19937_64 rng(0x6d6972726f726361);  // fixed: the same corpus every run
  runner.Run("");
  for (const std::string& seed : seeds) {
    runner.Run(seed);
    for (size_t len = 0; len < seed.size(); ++len) runner.Run(seed.substr(0, len));
    for (size_t i : Positions(seed.size(), budget.max_flips_per_seed)) {
      std::string flipped = seed;
      flipped[i] = static_cast<char>(flipped[i] ^ (1u << (rng() % 8)));
      runner.Run(flipped);
    }
    for (size_t i : Positions(seed.size() + 1, budget.max_edits_per_seed / 2)) {
      std::string inserted = seed;
      inserted.insert(inserted.begin() + static_cast<std::ptrdiff_t>(i),
                      static_cast<char>(rng() & 0xff));
      runner.Run(inserted);
      if (i < seed.size()) {
        std::string deleted = seed;
        deleted.erase(i, 1);
        runner.Run(deleted);
      }
    }
    // Extreme values where a length or count might sit.
    for (size_t i : Positions(seed.size(), 64)) {
      for (char c : {'\x00', '\x7f', '\x80', '\xff'}) {
        std::string set = seed;
        set[i] = c;
        runner.Run(set);
      }
    }
  }
  // Splices: the head of one seed on the tail of another.
  for (const std::string& a : seeds) {
    for (const std::string& b : seeds) {
      runner.Run(a.substr(0, a.size() / 2) + b.substr(b.size() / 2));
    }
  }
  // Random inputs: raw bytes, and seeds with a few random mutations.
  for (size_t n = 0; n < budget.random_inputs; ++n) {
    std::string input;
    if (n % 2 == 0 || seeds.empty()) {
      input.resize(rng() % 512);
      for (char& c : input) c = static_cast<char>(rng() & 0xff);
    } else {
      input = seeds[rng() % seeds.size()];
      const int mutations = 1 + static_cast<int>(rng() % 8);
      for (int m = 0; m < mutations && !input.empty(); ++m) {
        const size_t at = rng() % input.size();
        switch (rng() % 4) {
          case 0:
            input[at] = static_cast<char>(rng() & 0xff);
            break;
          case 1:
            input.insert(at, 1 + rng() % 16, static_cast<char>(rng() & 0xff));
            break;
          case 2:
            input.erase(at, 1 + rng() % 16);
            break;
          default:
            input.resize(at);
            break;
        }
      }
    }
    runner.Run(input);
  }
  return runner.runs();
}

class FuzzReplay : public ::testing::Test {
 protected:
  void SetUp() override { QuietLibraryLogs(); }

  void ReplayTarget(Entry entry, const std::vector<std::string>& seeds) {
    ASSERT_FALSE(seeds.empty());
    for (const std::string& seed : seeds) ASSERT_FALSE(seed.empty());
    const auto start = std::chrono::steady_clock::now();
    const size_t runs = Replay(entry, seeds, kDefaultBudget);
    const std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
    RecordProperty("inputs", static_cast<int>(runs));
    std::printf("[ replay   ] %zu inputs from %zu seeds in %.2f s\n", runs, seeds.size(),
                took.count());
  }
};

TEST_F(FuzzReplay, Envelope) { ReplayTarget(&FuzzEnvelope, EnvelopeSeeds()); }
TEST_F(FuzzReplay, Manifest) { ReplayTarget(&FuzzManifest, ManifestSeeds()); }
TEST_F(FuzzReplay, Delta) { ReplayTarget(&FuzzDelta, DeltaSeeds()); }
TEST_F(FuzzReplay, Path) { ReplayTarget(&FuzzPath, PathSeeds()); }
TEST_F(FuzzReplay, Messages) { ReplayTarget(&FuzzMessages, MessagesSeeds()); }
TEST_F(FuzzReplay, Keyfile) { ReplayTarget(&FuzzKeyfile, KeyfileSeeds()); }
TEST_F(FuzzReplay, Chunks) { ReplayTarget(&FuzzChunks, ChunksSeeds()); }
TEST_F(FuzzReplay, AllowList) { ReplayTarget(&FuzzAllowList, AllowListSeeds()); }
TEST_F(FuzzReplay, Keyset) { ReplayTarget(&FuzzKeyset, KeysetSeeds()); }

}  // namespace
}  // namespace mirrorcast::fuzz
