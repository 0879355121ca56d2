#include "core/manifest/scanner.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <string>
#include <vector>

#include "core/crypto/sha256.h"
#include "tests/support/temp_dir.h"
#include "tests/support/tree.h"

namespace mirrorcast {
namespace {

using testing::RandomBytes;
using testing::TempDir;
using testing::WriteFile;
namespace fs = std::filesystem;

// Sets a file's mtime to `seconds` (and so bumps its ctime).
void SetMtime(const fs::path& p, int64_t seconds) {
  struct timespec times[2] = {{seconds, 0}, {seconds, 0}};
  ASSERT_EQ(::utimensat(AT_FDCWD, p.c_str(), times, AT_SYMLINK_NOFOLLOW), 0) << p;
}

class ScannerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    WriteFile(tree_ / "a.txt", "alpha", 0644);
    WriteFile(tree_ / "dir/b.bin", RandomBytes(100000, 1), 0600);
    WriteFile(tree_ / "dir/sub/c", "gamma", 0755);
    fs::create_directories(tree_ / "empty");
    ASSERT_EQ(::chmod((tree_ / "empty").c_str(), 0750), 0);
    ASSERT_EQ(::symlink("dir/b.bin", (tree_ / "link").c_str()), 0);
    ASSERT_EQ(::symlink("../sub/c", (tree_ / "dir/rel-link").c_str()), 0);
    // Unsafe or unpublishable: all skipped.
    ASSERT_EQ(::symlink("../../etc/passwd", (tree_ / "dir/evil").c_str()), 0);
    ASSERT_EQ(::symlink("/etc/passwd", (tree_ / "abs").c_str()), 0);
    ASSERT_EQ(::mkfifo((tree_ / "fifo").c_str(), 0644), 0);
    WriteFile(tree_ / "back\\slash", "x");
    WriteFile(tree_ / "latin1-caf\xe9", "x");  // not UTF-8: protobuf could not carry it
    WriteFile(tree_ / ".mirrorcast-staging/partial", "x");
    file_bytes_ = 5 + 100000 + 5;
  }

  std::unique_ptr<HashCache> OpenCache() {
    auto cache = HashCache::Open(state_ / "hashes.db");
    EXPECT_TRUE(cache.ok()) << cache.status().ToString();
    return cache.ok() ? std::move(cache).value() : nullptr;
  }

  Manifest Scan(HashCache* cache, ScanStats* stats) {
    auto m = ScanTree(tree_.path(), cache, stats);
    EXPECT_TRUE(m.ok()) << m.status().ToString();
    return m.ok() ? std::move(m).value() : Manifest();
  }

  TempDir tree_{"mirrorcast-scan-tree"};
  TempDir state_{"mirrorcast-scan-state"};
  uint64_t file_bytes_ = 0;
};

std::vector<std::string> Paths(const Manifest& m) {
  std::vector<std::string> out;
  for (const auto& [path, entry] : m.entries()) out.push_back(path);
  return out;
}

TEST_F(ScannerTest, ScansFilesDirectoriesAndSafeSymlinks) {
  ScanStats stats;
  Manifest m = Scan(nullptr, &stats);
  EXPECT_EQ(Paths(m), (std::vector<std::string>{"a.txt", "dir", "dir/b.bin", "dir/rel-link",
                                                "dir/sub", "dir/sub/c", "empty", "link"}));
  EXPECT_EQ(stats.entries, 8u);
  EXPECT_EQ(stats.files_hashed, 3u);
  EXPECT_EQ(stats.bytes_hashed, file_bytes_);
  EXPECT_EQ(stats.cache_hits, 0u);
  // evil, abs, fifo, back\slash, latin1-caf\xe9, .mirrorcast-staging
  EXPECT_EQ(stats.skipped, 6u);

  const v1::FileEntry* b = m.Find("dir/b.bin");
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->kind(), v1::ENTRY_FILE);
  EXPECT_EQ(b->size(), 100000u);
  EXPECT_EQ(b->sha256(), Sha256Of(RandomBytes(100000, 1)));
  EXPECT_EQ(b->mode(), 0600u);
  struct stat st;
  ASSERT_EQ(::stat((tree_ / "dir/b.bin").c_str(), &st), 0);
  EXPECT_EQ(b->mtime(), st.st_mtim.tv_sec);
  EXPECT_EQ(m.Find("dir/sub/c")->mode(), 0755u);

  const v1::FileEntry* empty = m.Find("empty");
  ASSERT_NE(empty, nullptr);
  EXPECT_EQ(empty->kind(), v1::ENTRY_DIRECTORY);
  EXPECT_EQ(empty->mode(), 0750u);
  EXPECT_EQ(empty->mtime(), 0);
  EXPECT_EQ(empty->size(), 0u);

  const v1::FileEntry* link = m.Find("link");
  ASSERT_NE(link, nullptr);
  EXPECT_EQ(link->kind(), v1::ENTRY_SYMLINK);
  EXPECT_EQ(link->symlink_target(), "dir/b.bin");
  EXPECT_EQ(m.Find("dir/rel-link")->symlink_target(), "../sub/c");

  // Everything the scanner produces is a well-formed entry, and it survives a
  // serialization round trip.
  for (const auto& [path, entry] : m.entries()) EXPECT_TRUE(CheckEntry(entry).ok()) << path;
  auto parsed = Manifest::Parse(m.Serialize());
  ASSERT_TRUE(parsed.ok());
  EXPECT_EQ(parsed->Digest(), m.Digest());
}

TEST_F(ScannerTest, SecondScanWithCacheReadsNoFileContents) {
  auto cache = OpenCache();
  ASSERT_NE(cache, nullptr);
  ScanStats first;
  Manifest m1 = Scan(cache.get(), &first);
  EXPECT_EQ(first.files_hashed, 3u);
  EXPECT_EQ(first.bytes_hashed, file_bytes_);

  ScanStats second;
  Manifest m2 = Scan(cache.get(), &second);
  EXPECT_EQ(second.files_hashed, 0u);
  EXPECT_EQ(second.bytes_hashed, 0u);
  EXPECT_EQ(second.cache_hits, 3u);
  EXPECT_EQ(m2.Digest(), m1.Digest());

  // The cache persists across opens (a new publisher run).
  cache.reset();
  cache = OpenCache();
  ASSERT_NE(cache, nullptr);
  ScanStats third;
  Manifest m3 = Scan(cache.get(), &third);
  EXPECT_EQ(third.files_hashed, 0u);
  EXPECT_EQ(m3.Digest(), m1.Digest());
}

TEST_F(ScannerTest, TouchingOneFileRehashesExactlyThatFile) {
  auto cache = OpenCache();
  ASSERT_NE(cache, nullptr);
  ScanStats stats;
  Manifest before = Scan(cache.get(), &stats);

  SetMtime(tree_ / "dir/sub/c", 1600000000);
  Manifest after = Scan(cache.get(), &stats);
  EXPECT_EQ(stats.files_hashed, 1u);
  EXPECT_EQ(stats.bytes_hashed, 5u);
  EXPECT_EQ(stats.cache_hits, 2u);
  EXPECT_EQ(after.Find("dir/sub/c")->mtime(), 1600000000);
  EXPECT_NE(after.Digest(), before.Digest());
  std::vector<v1::Change> diff = DiffManifests(before, after);
  ASSERT_EQ(diff.size(), 1u);
  EXPECT_EQ(diff[0].entry().path(), "dir/sub/c");
}

TEST_F(ScannerTest, SameSizeRewriteWithRestoredMtimeIsStillDetected) {
  auto cache = OpenCache();
  ASSERT_NE(cache, nullptr);
  SetMtime(tree_ / "a.txt", 1500000000);
  ScanStats stats;
  Scan(cache.get(), &stats);
  // Same size, same mtime: only the ctime (and the content) differ.
  WriteFile(tree_ / "a.txt", "ALPHA");
  SetMtime(tree_ / "a.txt", 1500000000);
  Manifest m = Scan(cache.get(), &stats);
  EXPECT_EQ(stats.files_hashed, 1u);
  EXPECT_EQ(m.Find("a.txt")->sha256(), Sha256Of("ALPHA"));
}

// Each hashing thread reuses one hasher and one read buffer: files larger
// than the buffer (several reads) and small ones after them each get their
// own digest.
TEST_F(ScannerTest, OneHasherPerThreadGivesEachFileItsOwnDigest) {
  const std::string big = RandomBytes((3 << 20) + 5, 9);
  WriteFile(tree_ / "big", big);
  for (const auto& [name, content] : std::vector<std::pair<std::string, std::string>>{
           {"big", big}, {"a.txt", "alpha"}, {"big", big}, {"dir/sub/c", "gamma"}}) {
    struct stat st;
    ASSERT_EQ(::lstat((tree_ / name).c_str(), &st), 0);
    ScanStats stats;
    auto sha = HashStableFile(tree_ / name, &st, &stats);
    ASSERT_TRUE(sha.ok()) << sha.status().ToString();
    EXPECT_EQ(*sha, Sha256Of(content)) << name;
    EXPECT_EQ(stats.bytes_hashed, content.size());
  }
}

TEST_F(ScannerTest, MissingRootIsAnError) {
  ScanStats stats;
  auto m = ScanTree(tree_ / "no-such-dir", nullptr, &stats);
  EXPECT_FALSE(m.ok());
}

TEST_F(ScannerTest, RescanPathsMatchesAFullRescan) {
  auto cache = OpenCache();
  ASSERT_NE(cache, nullptr);
  ScanStats stats;
  Manifest m = Scan(cache.get(), &stats);
  m.set_repo("r");
  m.set_serial(4);

  WriteFile(tree_ / "dir/new", "new file");         // added
  WriteFile(tree_ / "a.txt", "alpha, longer now");  // modified
  fs::remove_all(tree_ / "dir/sub");                // deleted subtree
  WriteFile(tree_ / "fresh/x/y", "deep");           // new directory tree
  WriteFile(tree_ / "fresh/x/z", "deeper");
  WriteFile(tree_ / "p1/p2/leaf", "leaf");           // parents missing
  ASSERT_EQ(::unlink((tree_ / "link").c_str()), 0);  // symlink retargeted
  ASSERT_EQ(::symlink("a.txt", (tree_ / "link").c_str()), 0);
  fs::remove(tree_ / "empty");  // directory becomes a file
  WriteFile(tree_ / "empty", "now a file");

  ASSERT_TRUE(RescanPaths(tree_.path(),
                          {"dir/new", "a.txt", "dir/sub", "fresh", "p1/p2/leaf", "link", "empty",
                           "a.txt", "never/existed"},
                          cache.get(), &m, &stats)
                  .ok());
  EXPECT_EQ(m.repo(), "r");
  EXPECT_EQ(m.serial(), 4u);
  // Only the new or changed files were read.
  EXPECT_EQ(stats.files_hashed, 6u);
  EXPECT_EQ(m.Find("dir/sub"), nullptr);
  EXPECT_EQ(m.Find("dir/sub/c"), nullptr);
  EXPECT_EQ(m.Find("dir/rel-link")->symlink_target(), "../sub/c");  // dangling but safe
  ASSERT_NE(m.Find("p1"), nullptr);
  EXPECT_EQ(m.Find("p1")->kind(), v1::ENTRY_DIRECTORY);
  ASSERT_NE(m.Find("p1/p2"), nullptr);
  EXPECT_EQ(m.Find("fresh/x/z")->sha256(), Sha256Of("deeper"));
  EXPECT_EQ(m.Find("empty")->kind(), v1::ENTRY_FILE);

  ScanStats full_stats;
  Manifest full = Scan(cache.get(), &full_stats);
  EXPECT_EQ(full_stats.files_hashed, 0u) << "RescanPaths filled the cache";
  EXPECT_TRUE(DiffManifests(full, m).empty());
  EXPECT_EQ(m.Digest(), full.Digest());
}

TEST_F(ScannerTest, RescanPathsOfADeletedDirectoryRemovesItsSubtree) {
  ScanStats stats;
  Manifest m = Scan(nullptr, &stats);
  fs::remove_all(tree_ / "dir");
  ASSERT_TRUE(RescanPaths(tree_.path(), {"dir/sub/c"}, nullptr, &m, &stats).ok());
  for (const auto& [path, entry] : m.entries()) {
    EXPECT_NE(path.rfind("dir", 0), 0u) << path << " should be gone";
  }
  EXPECT_EQ(m.Digest(), Scan(nullptr, &stats).Digest());
}

TEST_F(ScannerTest, RescanPathsSkipsUnsafeSymlinks) {
  ScanStats stats;
  Manifest m = Scan(nullptr, &stats);
  ASSERT_EQ(::unlink((tree_ / "link").c_str()), 0);
  ASSERT_EQ(::symlink("../outside", (tree_ / "link").c_str()), 0);
  ASSERT_TRUE(RescanPaths(tree_.path(), {"link"}, nullptr, &m, &stats).ok());
  EXPECT_EQ(m.Find("link"), nullptr);
  EXPECT_EQ(stats.skipped, 1u);
}

TEST_F(ScannerTest, RescanPathsRejectsBadPathsWithoutChanges) {
  ScanStats stats;
  Manifest m = Scan(nullptr, &stats);
  const std::string before = m.Digest();
  WriteFile(tree_ / "a.txt", "changed");
  for (std::string bad : {"../etc/passwd", "/etc/passwd", "a//b", "a\\b"}) {
    EXPECT_FALSE(RescanPaths(tree_.path(), {"a.txt", bad}, nullptr, &m, &stats).ok()) << bad;
    EXPECT_EQ(m.Digest(), before);
  }
}

TEST_F(ScannerTest, RescanPathsDoesNotFollowSymlinkedParents) {
  TempDir outside;
  WriteFile(outside / "secret", "s");
  ASSERT_EQ(::symlink(outside.path().c_str(), (tree_ / "out").c_str()), 0);
  ScanStats stats;
  Manifest m = Scan(nullptr, &stats);
  EXPECT_EQ(m.Find("out"), nullptr);  // absolute target: skipped
  ASSERT_TRUE(RescanPaths(tree_.path(), {"out/secret"}, nullptr, &m, &stats).ok());
  EXPECT_EQ(m.Find("out/secret"), nullptr);
  EXPECT_EQ(m.Find("out"), nullptr);
  EXPECT_EQ(stats.files_hashed, 0u);
}

}  // namespace
}  // namespace mirrorcast
