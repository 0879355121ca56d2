#include "core/manifest/tree_diff.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "tests/support/temp_dir.h"
#include "tests/support/tree.h"

namespace mirrorcast {
namespace {

using testing::RandomBytes;
using testing::TempDir;
using testing::WriteFile;
namespace fs = std::filesystem;

// Names that sort around '/' ('-' and '.' come before it, '0' after), so a
// walk that visited "a/" before "a.txt" would emit changes out of order.
const std::vector<std::string> kNames = {"a", "a-b", "a.txt", "a0", "b", "pkg.rpm", "z"};

class TreeDiffTest : public ::testing::Test {
 protected:
  // A random tree of depth <= 3 with files, directories and symlinks.
  void Grow(std::mt19937& rng, const fs::path& dir, int depth) {
    for (const std::string& name : kNames) {
      const int pick = static_cast<int>(rng() % 6);
      const fs::path p = dir / name;
      if (fs::exists(fs::symlink_status(p))) continue;
      if (pick <= 2) {
        WriteFile(p, RandomBytes(rng() % 300, rng()), (rng() % 2) ? 0644 : 0600);
      } else if (pick == 3 && depth < 3) {
        fs::create_directories(p);
        Grow(rng, p, depth + 1);
      } else if (pick == 4) {
        ASSERT_EQ(::symlink("a", p.c_str()), 0);
      }
    }
  }

  // Random edits: rewrite, delete, replace a directory by a file and back,
  // chmod, add.
  void Mutate(std::mt19937& rng) {
    std::vector<fs::path> all;
    for (auto it = fs::recursive_directory_iterator(tree_.path());
         it != fs::recursive_directory_iterator(); ++it) {
      all.push_back(it->path());
    }
    for (int i = 0; i < 6 && !all.empty(); ++i) {
      const fs::path p = all[rng() % all.size()];
      if (!fs::exists(fs::symlink_status(p))) continue;
      switch (rng() % 5) {
        case 0:
          if (fs::is_regular_file(fs::symlink_status(p))) WriteFile(p, RandomBytes(50, rng()));
          break;
        case 1:
          fs::remove_all(p);
          break;
        case 2:
          fs::remove_all(p);
          WriteFile(p, "now a file");
          break;
        case 3:
          ::chmod(p.c_str(), 0700);
          break;
        default:
          if (fs::is_directory(fs::symlink_status(p))) Grow(rng, p, 2);
          break;
      }
    }
  }

  Manifest Scan() {
    auto m = ScanTree(tree_.path(), nullptr, nullptr);
    EXPECT_TRUE(m.ok()) << m.status().ToString();
    return m.ok() ? std::move(m).value() : Manifest();
  }

  TempDir tree_{"mirrorcast-tree-diff"};
  TempDir state_{"mirrorcast-tree-diff-state"};
};

std::vector<std::string> Encoded(const std::vector<v1::Change>& changes) {
  std::vector<std::string> out;
  for (const auto& c : changes) out.push_back(c.SerializeAsString());
  return out;
}

TEST_F(TreeDiffTest, AStreamingScanGivesTheChangesOfAFullScanAndDiff) {
  for (uint32_t seed = 1; seed <= 12; ++seed) {
    fs::remove_all(tree_.path());
    fs::create_directories(tree_.path());
    std::mt19937 rng(seed);
    Grow(rng, tree_.path(), 0);
    const Manifest before = Scan();
    MemoryChunks chunks;
    auto index = BuildIndex(before, [&](const ChunkRef& r, std::string b) {
      chunks.Put(r.id, std::move(b));
      return Status::Ok();
    });
    ASSERT_TRUE(index.ok());
    auto cache = HashCache::Open(state_.path() / ("cache" + std::to_string(seed) + ".db"));
    ASSERT_TRUE(cache.ok());

    // Nothing changed: nothing, and (cache warm) no file read twice.
    std::vector<v1::Change> none;
    ScanStats stats;
    TreeDiffOptions options;
    options.hash_batch_files = 3;  // many small batches across both threads
    auto collect = [](std::vector<v1::Change>* out) {
      return [out](v1::Change c) {
        out->push_back(std::move(c));
        return Status::Ok();
      };
    };
    ASSERT_TRUE(
        DiffTree(tree_.path(), *index, chunks, cache->get(), &stats, options, collect(&none)).ok());
    EXPECT_TRUE(none.empty()) << "seed " << seed << ": " << none.size();
    EXPECT_EQ(stats.entries, before.size());
    ScanStats again;
    ASSERT_TRUE(
        DiffTree(tree_.path(), *index, chunks, cache->get(), &again, options, collect(&none)).ok());
    EXPECT_EQ(again.files_hashed, 0u) << "seed " << seed;

    Mutate(rng);
    const Manifest after = Scan();
    std::vector<v1::Change> streamed;
    ASSERT_TRUE(
        DiffTree(tree_.path(), *index, chunks, cache->get(), &stats, options, collect(&streamed))
            .ok());
    EXPECT_EQ(Encoded(streamed), Encoded(DiffManifests(before, after))) << "seed " << seed;

    // The streamed list applies to the chunks and gives the scanned root.
    auto applied = ApplyChangesToIndex(*index, chunks, streamed, nullptr);
    ASSERT_TRUE(applied.ok()) << applied.status().ToString();
    EXPECT_EQ(applied->Root(), after.Digest()) << "seed " << seed;
  }
}

TEST_F(TreeDiffTest, ListedPathsGiveTheSameChangesAsAFullScanOfThem) {
  std::mt19937 rng(7);
  Grow(rng, tree_.path(), 0);
  fs::create_directories(tree_.path() / "pool/a");
  WriteFile(tree_.path() / "pool/a/old.rpm", "old");
  WriteFile(tree_.path() / "pool/a.txt", "sorts between pool/a and pool/a/");
  WriteFile(tree_.path() / "repodata/repomd.xml", "<v1/>");
  const Manifest before = Scan();
  MemoryChunks chunks;
  auto index = BuildIndex(before, [&](const ChunkRef& r, std::string b) {
    chunks.Put(r.id, std::move(b));
    return Status::Ok();
  });
  ASSERT_TRUE(index.ok());

  // Changed: a new file in a new directory, a rewritten file, a deleted
  // directory, a deleted file, and a listed path that is a directory.
  WriteFile(tree_.path() / "pool/new/dir/n.rpm", "new");
  WriteFile(tree_.path() / "repodata/repomd.xml", "<v2/>");
  WriteFile(tree_.path() / "pool/a.txt", "rewritten");
  fs::remove_all(tree_.path() / "pool/a");
  const Manifest after = Scan();
  std::vector<v1::Change> listed;
  ScanStats stats;
  ASSERT_TRUE(DiffPaths(tree_.path(),
                        {"repodata/repomd.xml", "pool/new/dir/n.rpm", "pool/a", "pool/a.txt"},
                        *index, chunks, nullptr, &stats, TreeDiffOptions{},
                        [&](v1::Change c) {
                          listed.push_back(std::move(c));
                          return Status::Ok();
                        })
                  .ok());
  EXPECT_EQ(Encoded(listed), Encoded(DiffManifests(before, after)));
}

// The walk hands entries over in batches of a few thousand: a directory
// larger than a batch, names that sort around '/' and beyond ASCII, and
// entries the scan must skip (unsafe names and symlinks, a FIFO, the
// excluded staging directory) give exactly the changes and stats of a full
// scan and diff.
TEST_F(TreeDiffTest, AWalkOfManyBatchesGivesTheChangesAndStatsOfAFullScan) {
  const fs::path big = tree_.path() / "pool/big";
  fs::create_directories(big);
  for (int i = 0; i < 9000; ++i) WriteFile(big / ("p" + std::to_string(i) + ".rpm"), "");
  for (const std::string& name : kNames) {
    WriteFile(tree_.path() / "pool" / name / "x", name);
    WriteFile(tree_.path() / ("pool/" + name + "-f"), name);
  }
  WriteFile(tree_.path() / "pool/caf\xc3\xa9", "utf-8 name");     // sorts after ASCII
  WriteFile(tree_.path() / "pool/a\x7f", "DEL sorts after '/'");  // still ASCII
  WriteFile(tree_.path() / "pool/back\\slash", "unsafe");         // skipped
  WriteFile(tree_.path() / "pool/latin1-caf\xe9", "not UTF-8");   // skipped
  ASSERT_EQ(::symlink("../../../etc", (tree_.path() / "pool/evil").c_str()), 0);  // skipped
  ASSERT_EQ(::symlink("big/p1.rpm", (tree_.path() / "pool/good").c_str()), 0);
  ASSERT_EQ(::mkfifo((tree_.path() / "pool/fifo").c_str(), 0644), 0);  // skipped
  WriteFile(tree_.path() / ".mirrorcast-staging/partial", "x");        // excluded

  MemoryChunks chunks;
  auto empty = BuildIndex(Manifest(), nullptr);
  ASSERT_TRUE(empty.ok());
  ScanStats full_stats;
  auto full = ScanTree(tree_.path(), nullptr, &full_stats);
  ASSERT_TRUE(full.ok()) << full.status().ToString();
  std::vector<v1::Change> streamed;
  ScanStats stats;
  ASSERT_TRUE(
      DiffTree(tree_.path(), *empty, chunks, nullptr, &stats, TreeDiffOptions{}, [&](v1::Change c) {
        streamed.push_back(std::move(c));
        return Status::Ok();
      }).ok());
  EXPECT_EQ(Encoded(streamed), Encoded(DiffManifests(Manifest(), *full)));
  EXPECT_EQ(stats.entries, full->size());
  EXPECT_EQ(stats.skipped, full_stats.skipped);
  EXPECT_EQ(stats.files_hashed, full_stats.files_hashed);
  EXPECT_EQ(stats.skipped, 5u);

  // The quick count a first publish's progress takes as its total: every
  // name the walk visits, the skipped ones too, but not the excluded staging
  // directory (which `skipped` counts: 4 unsafe or special names + it).
  auto counted = CountTreeEntries(tree_.path(), ScanOptions{});
  ASSERT_TRUE(counted.ok()) << counted.status().ToString();
  EXPECT_EQ(*counted, stats.entries + stats.skipped - 1);

  // Progress reports, the last one finished and complete.
  std::vector<ScanProgress> reports;
  TreeDiffOptions with_progress;
  with_progress.progress_interval = std::chrono::milliseconds(0);
  with_progress.entries_total = *counted;
  with_progress.progress = [&](const ScanProgress& p) { reports.push_back(p); };
  ScanStats again;
  ASSERT_TRUE(
      DiffTree(tree_.path(), *empty, chunks, nullptr, &again, with_progress, [&](v1::Change) {
        return Status::Ok();
      }).ok());
  ASSERT_GE(reports.size(), 2u);
  for (size_t i = 1; i < reports.size(); ++i) {
    EXPECT_GE(reports[i].entries, reports[i - 1].entries);
    EXPECT_EQ(reports[i].entries_total, *counted);
  }
  EXPECT_FALSE(reports.front().finished);
  EXPECT_TRUE(reports.back().finished);
  EXPECT_EQ(reports.back().entries, again.entries);
  EXPECT_EQ(reports.back().files_hashed, again.files_hashed);
  EXPECT_EQ(reports.back().bytes_hashed, again.bytes_hashed);
}

// A sink that fails ends the scan with its error while the walk and the
// hashing are still going (their threads are stopped, nothing hangs): more
// entries than the batches in flight hold, so the walk is still waiting to
// hand some over.
TEST_F(TreeDiffTest, AFailingSinkEndsTheScanWithItsError) {
  for (int d = 0; d < 5; ++d) {
    for (int i = 0; i < 5000; ++i) {
      WriteFile(tree_.path() / ("d" + std::to_string(d)) / ("f" + std::to_string(i)), "x");
    }
  }
  MemoryChunks chunks;
  auto empty = BuildIndex(Manifest(), nullptr);
  ASSERT_TRUE(empty.ok());
  for (const int fail_at : {1, 2500, 20000}) {
    int seen = 0;
    ScanStats stats;
    TreeDiffOptions options;
    options.hash_batch_files = 16;
    Status s = DiffTree(tree_.path(), *empty, chunks, nullptr, &stats, options, [&](v1::Change) {
      return ++seen == fail_at ? Status::Rejected("enough") : Status::Ok();
    });
    EXPECT_EQ(s.code(), Status::Code::kRejected) << fail_at << ": " << s.ToString();
    EXPECT_EQ(seen, fail_at);
  }
}

// Listing a directory that did not change reads none of its files: the
// listed paths' scan takes digests from the hash cache too.
TEST_F(TreeDiffTest, ListedPathsTakeUnchangedDigestsFromTheHashCache) {
  for (int i = 0; i < 50; ++i) WriteFile(tree_.path() / "pool" / std::to_string(i), "same");
  WriteFile(tree_.path() / "pool/changed", "before");
  const Manifest before = Scan();
  MemoryChunks chunks;
  auto index = BuildIndex(before, [&](const ChunkRef& r, std::string b) {
    chunks.Put(r.id, std::move(b));
    return Status::Ok();
  });
  ASSERT_TRUE(index.ok());
  auto cache = HashCache::Open(state_.path() / "cache.db");
  ASSERT_TRUE(cache.ok());
  std::vector<v1::Change> changes;
  auto collect = [&](v1::Change c) {
    changes.push_back(std::move(c));
    return Status::Ok();
  };
  ScanStats warm;
  ASSERT_TRUE(
      DiffTree(tree_.path(), *index, chunks, cache->get(), &warm, TreeDiffOptions{}, collect).ok());
  EXPECT_TRUE(changes.empty());

  WriteFile(tree_.path() / "pool/changed", "after!");
  ScanStats stats;
  ASSERT_TRUE(DiffPaths(tree_.path(), {"pool"}, *index, chunks, cache->get(), &stats,
                        TreeDiffOptions{}, collect)
                  .ok());
  ASSERT_EQ(changes.size(), 1u);
  EXPECT_EQ(changes[0].entry().path(), "pool/changed");
  EXPECT_EQ(stats.files_hashed, 1u);
  EXPECT_EQ(stats.cache_hits, 50u);
}

}  // namespace
}  // namespace mirrorcast
