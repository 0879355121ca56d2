// Writes every fuzz target's seeds as a starting corpus for libFuzzer:
//   fuzz_seeds DIR   ->   DIR/<target>/seed-<n>
// (see tests/fuzz/CMakeLists.txt for how to run the fuzzers).
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "tests/fuzz/fuzz_targets.h"

int main(int argc, char** argv) {
  using namespace mirrorcast::fuzz;
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
    return 2;
  }
  const std::vector<std::pair<const char*, std::vector<std::string> (*)()>> targets = {
      {"envelope", &EnvelopeSeeds}, {"manifest", &ManifestSeeds},    {"delta", &DeltaSeeds},
      {"path", &PathSeeds},         {"messages", &MessagesSeeds},    {"keyfile", &KeyfileSeeds},
      {"chunks", &ChunksSeeds},     {"allow_list", &AllowListSeeds}, {"keyset", &KeysetSeeds},
  };
  for (const auto& [name, seeds] : targets) {
    const std::filesystem::path dir = std::filesystem::path(argv[1]) / name;
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    if (ec) {
      std::fprintf(stderr, "create %s: %s\n", dir.c_str(), ec.message().c_str());
      return 1;
    }
    int n = 0;
    for (const std::string& seed : seeds()) {
      const std::filesystem::path file = dir / ("seed-" + std::to_string(n++));
      std::ofstream out(file, std::ios::binary | std::ios::trunc);
      out.write(seed.data(), static_cast<std::streamsize>(seed.size()));
      out.close();
      if (!out) {
        std::fprintf(stderr, "write %s failed\n", file.c_str());
        return 1;
      }
    }
    std::printf("%s: %d seeds in %s\n", name, n, dir.c_str());
  }
  return 0;
}
