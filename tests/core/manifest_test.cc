#include "core/manifest/manifest.h"

#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

#include "core/crypto/sha256.h"
#include "core/manifest/chunks.h"
#include "tests/support/entries.h"
#include "tests/support/tree.h"

namespace mirrorcast {
namespace {

using std::string_literals::operator""s;

v1::FileEntry File(const std::string& path, const std::string& content, uint32_t mode = 0644,
                   int64_t mtime = 1700000000) {
  return testing::FileEntryOf(path, content, mode, mtime);
}
v1::FileEntry Dir(const std::string& path, uint32_t mode = 0755) {
  return testing::DirEntryOf(path, mode);
}
v1::FileEntry Link(const std::string& path, const std::string& target) {
  return testing::LinkEntryOf(path, target);
}

Manifest Tiny() {
  Manifest m("fedora", 7);
  m.Put(Dir("a"));
  m.Put(File("a/f", "hello"));
  m.Put(Link("l", "a/f"));
  return m;
}

google::protobuf::RepeatedPtrField<v1::Change> AsField(const std::vector<v1::Change>& changes) {
  google::protobuf::RepeatedPtrField<v1::Change> field;
  for (const v1::Change& c : changes) *field.Add() = c;
  return field;
}

std::string Varint(uint64_t v) {
  std::string out;
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
  return out;
}

// docs/protocol.md §3, written out by hand: one chunk (none of the three
// paths is a boundary), its records, the index naming it, and the root.
TEST(ManifestTest, DigestMatchesTheDocumentedChunkedFormat) {
  ASSERT_FALSE(IsChunkBoundary("a"));
  ASSERT_FALSE(IsChunkBoundary("a/f"));
  ASSERT_FALSE(IsChunkBoundary("l"));
  const std::string chunk = Varint(1) + "a" + "d" + Varint(0755) +                     // dir
                            Varint(3) + "a/f" + "f" + Varint(5) + Sha256Of("hello") +  // file
                            Varint(0644) + Varint(2 * 1700000000ull) +                 // zigzag
                            Varint(1) + "l" + "l" + Varint(0777) + Varint(3) + "a/f";  // link
  const std::string index = "mirrorcast-index-v2\n" + Varint(1) + Sha256Of(chunk) + Varint(3) +
                            Varint(chunk.size()) + Varint(1) + "l";
  EXPECT_EQ(Tiny().Digest(), Sha256Of(index));
}

TEST(ManifestTest, DigestOfEmptyManifestIsTheRootOfAnEmptyIndex) {
  EXPECT_EQ(Manifest().Digest(), Sha256Of("mirrorcast-index-v2\n" + Varint(0)));
}

TEST(ManifestTest, DigestIsStableAndIgnoresRepoAndSerial) {
  Manifest a = Tiny();
  Manifest b("other", 99);
  // Inserted in another order: the digest follows path order, not history.
  b.Put(Link("l", "a/f"));
  b.Put(File("a/f", "hello"));
  b.Put(Dir("a"));
  EXPECT_EQ(a.Digest(), b.Digest());
  EXPECT_EQ(a.Digest(), a.Digest());
}

TEST(ManifestTest, DigestChangesWhenAnyFieldChanges) {
  const std::string base = Tiny().Digest();
  std::vector<std::function<void(v1::FileEntry*)>> edits = {
      [](v1::FileEntry* e) { e->set_size(e->size() + 1); },
      [](v1::FileEntry* e) { e->set_sha256(Sha256Of("other")); },
      [](v1::FileEntry* e) { e->set_mode(0600); },
      [](v1::FileEntry* e) { e->set_mtime(e->mtime() + 1); },
      [](v1::FileEntry* e) { e->set_path("a/g"); },
      [](v1::FileEntry* e) { e->set_kind(v1::ENTRY_DIRECTORY); },
  };
  for (size_t i = 0; i < edits.size(); ++i) {
    Manifest m = Tiny();
    v1::FileEntry e = *m.Find("a/f");
    m.Erase("a/f");
    edits[i](&e);
    m.Put(e);
    EXPECT_NE(m.Digest(), base) << "edit " << i;
  }
  Manifest m = Tiny();
  m.Put(Link("l", "a"));
  EXPECT_NE(m.Digest(), base) << "symlink target";
  m = Tiny();
  m.Erase("a");
  EXPECT_NE(m.Digest(), base) << "entry removed";
}

TEST(ManifestTest, SerializeParseRoundTrip) {
  Manifest a = Tiny();
  v1::Manifest proto = a.ToProto();
  EXPECT_EQ(proto.protocol_version(), 1u);
  ASSERT_EQ(proto.entries_size(), 3);
  EXPECT_EQ(proto.entries(0).path(), "a");
  EXPECT_EQ(proto.entries(1).path(), "a/f");
  EXPECT_EQ(proto.entries(2).path(), "l");

  auto parsed = Manifest::Parse(a.Serialize());
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  EXPECT_EQ(parsed->repo(), "fedora");
  EXPECT_EQ(parsed->serial(), 7u);
  EXPECT_EQ(parsed->Digest(), a.Digest());
  EXPECT_EQ(parsed->size(), 3u);
}

TEST(ManifestTest, FromProtoRejectsUnsortedDuplicateAndBadEntries) {
  auto with = [](std::vector<v1::FileEntry> entries) {
    v1::Manifest proto;
    proto.set_protocol_version(1);
    proto.set_repo("r");
    for (auto& e : entries) *proto.add_entries() = e;
    return Manifest::FromProto(proto);
  };
  EXPECT_TRUE(with({Dir("a"), File("a/f", "x"), File("b", "y")}).ok());
  // Parents need not be listed.
  EXPECT_TRUE(with({File("x/y/z", "x")}).ok());
  EXPECT_FALSE(with({File("b", "y"), File("a", "x")}).ok()) << "unsorted";
  EXPECT_FALSE(with({File("a", "x"), File("a", "x")}).ok()) << "duplicate";
  EXPECT_FALSE(with({File("../etc/passwd", "x")}).ok());
  EXPECT_FALSE(with({File("/abs", "x")}).ok());
  EXPECT_FALSE(with({File("a\\b", "x")}).ok());
  EXPECT_FALSE(with({File("a//b", "x")}).ok());
  EXPECT_FALSE(with({Link("a/l", "../../etc")}).ok()) << "escaping symlink";
  EXPECT_FALSE(with({Link("l", "/etc/passwd")}).ok());

  v1::FileEntry bad = File("f", "x");
  bad.set_sha256("short");
  EXPECT_FALSE(with({bad}).ok()) << "short digest";
  bad = File("f", "x");
  bad.set_kind(v1::ENTRY_KIND_UNSPECIFIED);
  EXPECT_FALSE(with({bad}).ok()) << "no kind";
  bad = File("f", "x");
  bad.set_mode(010000);
  EXPECT_FALSE(with({bad}).ok()) << "mode";
  bad = Dir("d");
  bad.set_sha256(Sha256Of("x"));
  EXPECT_FALSE(with({bad}).ok()) << "directory with digest";

  v1::Manifest proto = Tiny().ToProto();
  proto.set_protocol_version(2);
  EXPECT_FALSE(Manifest::FromProto(proto).ok()) << "unknown version";
}

TEST(ManifestTest, ParseSurvivesGarbage) {
  EXPECT_FALSE(Manifest::Parse("\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff").ok());
  EXPECT_FALSE(Manifest::Parse("").ok()) << "no protocol version";
  const std::string good = Tiny().Serialize();
  // Every truncation and many byte flips either parse into something valid or
  // fail cleanly; none may crash.
  for (size_t n = 0; n < good.size(); ++n) (void)Manifest::Parse(good.substr(0, n));
  for (uint64_t seed = 1; seed <= 300; ++seed) {
    std::string mutated = good;
    const std::string noise = testing::RandomBytes(4, seed);
    mutated[static_cast<unsigned char>(noise[0]) % mutated.size()] = noise[1];
    mutated[static_cast<unsigned char>(noise[2]) % mutated.size()] = noise[3];
    auto parsed = Manifest::Parse(mutated);
    if (parsed.ok()) {
      for (const auto& [path, entry] : parsed->entries()) EXPECT_TRUE(CheckEntry(entry).ok());
    }
  }
  for (uint64_t seed = 1; seed <= 100; ++seed) {
    (void)Manifest::Parse(testing::RandomBytes(64 + seed, seed));
  }
}

Manifest Before() {
  Manifest m("r", 1);
  m.Put(Dir("d"));
  m.Put(File("d/keep", "same"));
  m.Put(File("d/change", "old"));
  m.Put(File("d/gone", "bye"));
  m.Put(File("mode", "m", 0644));
  m.Put(Dir("becomes-file"));
  m.Put(File("becomes-file/child", "c"));
  m.Put(File("becomes-link", "x"));
  return m;
}

Manifest After() {
  Manifest m("r", 2);
  m.Put(Dir("d"));
  m.Put(File("d/keep", "same"));
  m.Put(File("d/change", "new content"));
  m.Put(File("d/new", "hi"));
  m.Put(File("mode", "m", 0755));
  m.Put(File("becomes-file", "now a file"));
  m.Put(Link("becomes-link", "d/keep"));
  m.Put(Dir("e"));
  return m;
}

TEST(ManifestTest, DiffListsChangesInPathOrder) {
  std::vector<v1::Change> changes = DiffManifests(Before(), After());
  std::vector<std::pair<std::string, v1::ChangeKind>> got;
  for (const auto& c : changes) got.emplace_back(c.entry().path(), c.kind());
  std::vector<std::pair<std::string, v1::ChangeKind>> want = {
      {"becomes-file", v1::CHANGE_MODIFIED},
      {"becomes-file/child", v1::CHANGE_DELETED},
      {"becomes-link", v1::CHANGE_MODIFIED},
      {"d/change", v1::CHANGE_MODIFIED},
      {"d/gone", v1::CHANGE_DELETED},
      {"d/new", v1::CHANGE_ADDED},
      {"e", v1::CHANGE_ADDED},
      {"mode", v1::CHANGE_MODIFIED},
  };
  EXPECT_EQ(got, want);
  for (const auto& c : changes) {
    if (c.entry().path() == "d/change") {
      EXPECT_EQ(c.previous_sha256(), Sha256Of("old"));
      EXPECT_EQ(c.entry().sha256(), Sha256Of("new content"));
    }
    if (c.entry().path() == "becomes-file") {
      EXPECT_TRUE(c.previous_sha256().empty()) << "old entry was a directory";
      EXPECT_EQ(c.entry().kind(), v1::ENTRY_FILE);
    }
    if (c.entry().path() == "becomes-link") {
      EXPECT_EQ(c.previous_sha256(), Sha256Of("x"));
      EXPECT_EQ(c.entry().symlink_target(), "d/keep");
    }
    if (c.kind() == v1::CHANGE_DELETED) {
      EXPECT_NE(c.entry().kind(), v1::ENTRY_KIND_UNSPECIFIED);
      EXPECT_TRUE(c.entry().sha256().empty());
    }
  }
  EXPECT_TRUE(DiffManifests(After(), After()).empty());
}

TEST(ManifestTest, ApplyDiffRoundTrips) {
  for (const auto& [from, to] :
       std::vector<std::pair<Manifest, Manifest>>{{Before(), After()},
                                                  {After(), Before()},
                                                  {Manifest(), After()},
                                                  {Before(), Manifest()}}) {
    Manifest m = from;
    Status s = m.ApplyChanges(AsField(DiffManifests(from, to)));
    ASSERT_TRUE(s.ok()) << s.ToString();
    EXPECT_EQ(m.Digest(), to.Digest());
    EXPECT_TRUE(DiffManifests(m, to).empty());
  }
}

TEST(ManifestTest, ApplyChangesIsAllOrNothing) {
  std::vector<v1::Change> changes = DiffManifests(Before(), After());
  v1::Change bogus;
  bogus.set_kind(v1::CHANGE_DELETED);
  bogus.mutable_entry()->set_path("not/there");
  bogus.mutable_entry()->set_kind(v1::ENTRY_FILE);
  changes.push_back(bogus);
  Manifest m = Before();
  const std::string before = m.Digest();
  EXPECT_FALSE(m.ApplyChanges(AsField(changes)).ok());
  EXPECT_EQ(m.Digest(), before);
}

TEST(ManifestTest, ApplyChangesChecksPreconditions) {
  auto apply = [](Manifest m, v1::Change c) {
    google::protobuf::RepeatedPtrField<v1::Change> field;
    *field.Add() = std::move(c);
    return m.ApplyChanges(field);
  };
  v1::Change c;
  c.set_kind(v1::CHANGE_ADDED);
  *c.mutable_entry() = File("d/keep", "dup");
  EXPECT_FALSE(apply(Before(), c).ok()) << "added but present";

  c.set_kind(v1::CHANGE_MODIFIED);
  *c.mutable_entry() = File("nope", "x");
  EXPECT_FALSE(apply(Before(), c).ok()) << "modified but absent";

  *c.mutable_entry() = File("d/change", "new");
  c.set_previous_sha256(Sha256Of("not what is there"));
  EXPECT_FALSE(apply(Before(), c).ok()) << "wrong previous content";
  c.set_previous_sha256(Sha256Of("old"));
  EXPECT_TRUE(apply(Before(), c).ok());

  c.clear_previous_sha256();
  *c.mutable_entry() = File("../escape", "x");
  c.set_kind(v1::CHANGE_ADDED);
  EXPECT_FALSE(apply(Before(), c).ok()) << "bad path";

  c.set_kind(v1::CHANGE_DELETED);
  c.mutable_entry()->Clear();
  c.mutable_entry()->set_path("d/keep");
  EXPECT_FALSE(apply(Before(), c).ok()) << "deleted without kind";
  c.mutable_entry()->set_kind(v1::ENTRY_FILE);
  EXPECT_TRUE(apply(Before(), c).ok());

  c.set_kind(v1::CHANGE_KIND_UNSPECIFIED);
  EXPECT_FALSE(apply(Before(), c).ok()) << "no change kind";
}

TEST(ManifestTest, ApplyChangesSeesEarlierChangesInTheList) {
  v1::Change del;
  del.set_kind(v1::CHANGE_DELETED);
  del.mutable_entry()->set_path("d/keep");
  del.mutable_entry()->set_kind(v1::ENTRY_FILE);
  v1::Change add;
  add.set_kind(v1::CHANGE_ADDED);
  *add.mutable_entry() = Link("d/keep", "change");
  Manifest m = Before();
  ASSERT_TRUE(m.ApplyChanges(AsField({del, add})).ok());
  EXPECT_EQ(m.Find("d/keep")->kind(), v1::ENTRY_SYMLINK);
  Manifest n = Before();
  EXPECT_FALSE(n.ApplyChanges(AsField({del, del})).ok()) << "deleted twice";
}

TEST(ManifestTest, SameEntryComparesEveryField) {
  EXPECT_TRUE(SameEntry(File("a", "x"), File("a", "x")));
  EXPECT_FALSE(SameEntry(File("a", "x"), File("a", "y")));
  EXPECT_FALSE(SameEntry(File("a", "x"), File("b", "x")));
  EXPECT_FALSE(SameEntry(File("a", "x", 0644), File("a", "x", 0600)));
  EXPECT_FALSE(SameEntry(File("a", "x", 0644, 1), File("a", "x", 0644, 2)));
  EXPECT_FALSE(SameEntry(Link("a", "x"), Link("a", "y")));
  EXPECT_FALSE(SameEntry(Dir("a"), Link("a", "x")));
}

}  // namespace
}  // namespace mirrorcast
