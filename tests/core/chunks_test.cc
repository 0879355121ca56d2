#include "core/manifest/chunks.h"

#include <gtest/gtest.h>

#include <random>
#include <set>

#include "core/crypto/sha256.h"
#include "tests/support/entries.h"

namespace mirrorcast {
namespace {

using testing::DirEntryOf;
using testing::FileEntryOf;
using testing::LinkEntryOf;

// A chunk store that counts what it was asked for.
class CountingChunks : public ChunkSource {
 public:
  Result<std::string> LoadChunk(std::string_view id) override {
    ++loads;
    return chunks.LoadChunk(id);
  }
  ChunkSink Sink() {
    return [this](const ChunkRef& ref, std::string bytes) {
      chunks.Put(ref.id, std::move(bytes));
      return Status::Ok();
    };
  }
  MemoryChunks chunks;
  int loads = 0;
};

Manifest TreeOf(int files, uint32_t seed = 1) {
  Manifest m("repo", 1);
  std::mt19937 rng(seed);
  for (int d = 0; d < files / 200 + 1; ++d) m.Put(DirEntryOf("d" + std::to_string(d)));
  for (int i = 0; i < files; ++i) {
    const std::string dir = "d" + std::to_string(i / 200);
    m.Put(FileEntryOf(dir + "/pkg-" + std::to_string(i) + ".rpm", std::to_string(rng())));
  }
  m.Put(LinkEntryOf("latest", "d0"));
  return m;
}

// A random change list against `m`: modifies, deletes and adds.
std::vector<v1::Change> RandomChanges(const Manifest& m, int count, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<std::string> files;
  for (const auto& [path, e] : m.entries()) {
    if (e.kind() == v1::ENTRY_FILE) files.push_back(path);
  }
  std::map<std::string, v1::Change> by_path;
  for (int i = 0; i < count; ++i) {
    v1::Change c;
    switch (rng() % 3) {
      case 0: {  // modify
        const std::string& path = files[rng() % files.size()];
        c.set_kind(v1::CHANGE_MODIFIED);
        *c.mutable_entry() = FileEntryOf(path, "new " + std::to_string(rng()));
        c.set_previous_sha256(m.Find(path)->sha256());
        break;
      }
      case 1: {  // delete
        const std::string& path = files[rng() % files.size()];
        c.set_kind(v1::CHANGE_DELETED);
        c.mutable_entry()->set_path(path);
        c.mutable_entry()->set_kind(v1::ENTRY_FILE);
        break;
      }
      default: {  // add
        const std::string path = "d0/new-" + std::to_string(rng()) + ".rpm";
        c.set_kind(v1::CHANGE_ADDED);
        *c.mutable_entry() = FileEntryOf(path, "added");
        break;
      }
    }
    by_path[c.entry().path()] = c;
  }
  std::vector<v1::Change> out;
  for (auto& [path, c] : by_path) out.push_back(c);
  return out;
}

TEST(Chunks, ARecordRoundTripsAndIsCanonical) {
  std::string bytes;
  AppendEntryRecord(&bytes, DirEntryOf("a"));
  AppendEntryRecord(&bytes, FileEntryOf("a/b", "x", 0600, -5));
  AppendEntryRecord(&bytes, LinkEntryOf("a/c", "b"));
  auto entries = DecodeChunk(bytes);
  ASSERT_TRUE(entries.ok()) << entries.status().ToString();
  ASSERT_EQ(entries->size(), 3u);
  EXPECT_TRUE(SameEntry((*entries)[1], FileEntryOf("a/b", "x", 0600, -5)));
  EXPECT_EQ((*entries)[2].symlink_target(), "b");
}

TEST(Chunks, DecodeRefusesDisorderBadEntriesAndGarbage) {
  std::string out_of_order;
  AppendEntryRecord(&out_of_order, FileEntryOf("b", "x"));
  AppendEntryRecord(&out_of_order, FileEntryOf("a", "x"));
  EXPECT_FALSE(DecodeChunk(out_of_order).ok());

  std::string escape;
  AppendEntryRecord(&escape, FileEntryOf("../etc/passwd", "x"));
  EXPECT_FALSE(DecodeChunk(escape).ok());

  std::string truncated;
  AppendEntryRecord(&truncated, FileEntryOf("a", "x"));
  truncated.pop_back();
  EXPECT_FALSE(DecodeChunk(truncated).ok());
  EXPECT_FALSE(DecodeChunk(std::string("\x05hello?", 7)).ok());
  EXPECT_FALSE(ManifestIndex::Decode("garbage").ok());
}

TEST(Chunks, ChunksAverageAboutAThousandEntries) {
  const Manifest m = TreeOf(50000);
  auto index = BuildIndex(m, nullptr);
  ASSERT_TRUE(index.ok());
  EXPECT_EQ(index->entries(), m.size());
  EXPECT_GT(index->refs.size(), 20u);
  EXPECT_LT(index->refs.size(), 150u);
  for (const auto& r : index->refs) EXPECT_LE(r.bytes, kMaxChunkBytes);
}

TEST(Chunks, IndexRoundTripsAndTheRootNamesItsBytes) {
  auto index = BuildIndex(TreeOf(5000), nullptr);
  ASSERT_TRUE(index.ok());
  auto again = ManifestIndex::Decode(index->Encode());
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(again->Root(), index->Root());
  EXPECT_EQ(index->Root(), Sha256Of(index->Encode()));
}

// The property the whole format rests on: re-deriving the index from a
// change list gives exactly the index of the changed manifest built from
// scratch, and reads only the chunks the changes fall in.
TEST(Chunks, ApplyingChangesGivesTheIndexOfTheChangedManifestReadingFewChunks) {
  const Manifest base = TreeOf(30000);
  CountingChunks store;
  auto index = BuildIndex(base, store.Sink());
  ASSERT_TRUE(index.ok());
  for (uint32_t seed = 1; seed <= 25; ++seed) {
    const int count = seed <= 20 ? static_cast<int>(seed % 7) + 1 : 400;
    std::vector<v1::Change> changes = RandomChanges(base, count, seed);
    Manifest expected = base;
    google::protobuf::RepeatedPtrField<v1::Change> list(changes.begin(), changes.end());
    ASSERT_TRUE(expected.ApplyChanges(list).ok());
    auto full = BuildIndex(expected, nullptr);
    ASSERT_TRUE(full.ok());

    store.loads = 0;
    MemoryChunks fresh(&store.chunks);
    auto updated =
        ApplyChangesToIndex(*index, store, changes, [&](const ChunkRef& r, std::string b) {
          fresh.Put(r.id, std::move(b));
          return Status::Ok();
        });
    ASSERT_TRUE(updated.ok()) << updated.status().ToString();
    EXPECT_EQ(updated->Root(), full->Root()) << "seed " << seed;
    if (count < 10) {
      // Each change touches its chunk and at most a neighbour or two.
      EXPECT_LE(store.loads, 3 * static_cast<int>(changes.size()) + 2) << "seed " << seed;
    }

    // And the diff reads back exactly the change list.
    std::vector<v1::Change> diff;
    ASSERT_TRUE(DiffIndexes(*index, store.chunks, *updated, fresh, [&](v1::Change c) {
                  diff.push_back(std::move(c));
                  return Status::Ok();
                }).ok());
    std::vector<v1::Change> want = DiffManifests(base, expected);
    ASSERT_EQ(diff.size(), want.size()) << "seed " << seed;
    for (size_t i = 0; i < diff.size(); ++i) {
      EXPECT_EQ(diff[i].SerializeAsString(), want[i].SerializeAsString()) << "seed " << seed;
    }
  }
}

TEST(Chunks, ChangesFromEmptyAndToEmpty) {
  const Manifest m = TreeOf(3000);
  MemoryChunks store;
  auto sink = [&](const ChunkRef& r, std::string b) {
    store.Put(r.id, std::move(b));
    return Status::Ok();
  };
  std::vector<v1::Change> add = DiffManifests(Manifest("repo", 0), m);
  auto built = ApplyChangesToIndex(ManifestIndex{}, store, add, sink);
  ASSERT_TRUE(built.ok()) << built.status().ToString();
  EXPECT_EQ(built->Root(), BuildIndex(m, nullptr)->Root());

  std::vector<v1::Change> remove = DiffManifests(m, Manifest("repo", 0));
  auto emptied = ApplyChangesToIndex(*built, store, remove, sink);
  ASSERT_TRUE(emptied.ok()) << emptied.status().ToString();
  EXPECT_TRUE(emptied->refs.empty());
  EXPECT_EQ(emptied->Root(), ManifestIndex{}.Root());
}

TEST(Chunks, RefusesChangesThatDoNotFitOrAreOutOfOrder) {
  const Manifest m = TreeOf(2000);
  MemoryChunks store;
  auto index = BuildIndex(m, [&](const ChunkRef& r, std::string b) {
    store.Put(r.id, std::move(b));
    return Status::Ok();
  });
  ASSERT_TRUE(index.ok());
  v1::Change add_existing;
  add_existing.set_kind(v1::CHANGE_ADDED);
  *add_existing.mutable_entry() = FileEntryOf("d0/pkg-1.rpm", "again");
  EXPECT_EQ(ApplyChangesToIndex(*index, store, std::vector<v1::Change>{add_existing}, nullptr)
                .status()
                .code(),
            Status::Code::kFailedPrecondition);

  v1::Change wrong_previous;
  wrong_previous.set_kind(v1::CHANGE_MODIFIED);
  *wrong_previous.mutable_entry() = FileEntryOf("d0/pkg-1.rpm", "new");
  wrong_previous.set_previous_sha256(Sha256Of("not what it was"));
  EXPECT_FALSE(
      ApplyChangesToIndex(*index, store, std::vector<v1::Change>{wrong_previous}, nullptr).ok());

  v1::Change a = add_existing, b = add_existing;
  a.mutable_entry()->set_path("d0/zz");
  b.mutable_entry()->set_path("d0/aa");
  EXPECT_EQ(
      ApplyChangesToIndex(*index, store, std::vector<v1::Change>{a, b}, nullptr).status().code(),
      Status::Code::kInvalidArgument);
}

TEST(Chunks, ATamperedOrMisplacedChunkIsRefused) {
  const Manifest m = TreeOf(5000);
  MemoryChunks store;
  auto index = BuildIndex(m, [&](const ChunkRef& r, std::string b) {
    store.Put(r.id, std::move(b));
    return Status::Ok();
  });
  ASSERT_TRUE(index.ok());
  ASSERT_GE(index->refs.size(), 2u);

  // Bytes that do not hash to the id.
  MemoryChunks tampered;
  for (const auto& [id, bytes] : store.chunks()) {
    std::string b = bytes;
    b[b.size() / 2] ^= 1;
    tampered.Put(id, b);
  }
  EXPECT_EQ(LoadChunkEntries(tampered, index->refs[0], "").status().code(),
            Status::Code::kCorruption);

  // A genuine chunk in the wrong place of an index.
  ChunkRef swapped = index->refs[1];
  EXPECT_EQ(LoadChunkEntries(store, swapped, index->refs[1].last_path).status().code(),
            Status::Code::kCorruption);

  // A missing chunk.
  MemoryChunks empty;
  EXPECT_EQ(LoadChunkEntries(empty, index->refs[0], "").status().code(), Status::Code::kNotFound);
}

}  // namespace
}  // namespace mirrorcast
