// File-tree helpers for tests: write and read files, deterministic random
// content, and a snapshot of a tree to compare two trees.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>

namespace mirrorcast::testing {

// Writes `data` to root/rel, creating parent directories. Throws on failure.
void WriteFile(const std::filesystem::path& path, const std::string& data, mode_t mode = 0644);
std::string ReadFile(const std::filesystem::path& path);
// `size` bytes from a fixed-seed generator: the same (size, seed) gives the same bytes.
std::string RandomBytes(size_t size, uint64_t seed);

// path -> description ("f <size> <sha256hex> <mode>", "l <target>", "d <mode>")
// for everything below root, except the top-level ".mirrorcast-staging".
using TreeSnapshot = std::map<std::string, std::string>;
TreeSnapshot SnapshotTree(const std::filesystem::path& root);

}  // namespace mirrorcast::testing
