#include "core/fs/path.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <string>
#include <vector>

#include "tests/support/temp_dir.h"
#include "tests/support/tree.h"

namespace mirrorcast {
namespace {

using testing::TempDir;

TEST(PathTest, AcceptsOrdinaryRelativePaths) {
  for (std::string_view good :
       {"a", "a/b", "pool/main/f/foo/foo_1.0_amd64.deb", "repodata/repomd.xml", ".hidden",
        "a/.b/..c", "...", "a b/c-d_e+f~g", "UTF8-\xc3\xa9"}) {
    EXPECT_TRUE(ValidateRelativePath(good).ok()) << good;
  }
  EXPECT_TRUE(ValidateRelativePath(std::string(kMaxComponentBytes, 'x')).ok());
}

TEST(PathTest, RejectsUnsafePaths) {
  const std::string kNul("a\0b", 3);
  const std::string long_component(kMaxComponentBytes + 1, 'x');  // 256 bytes
  std::string too_long;
  while (too_long.size() <= kMaxPathBytes) too_long += "abcdefg/";
  too_long += "z";
  const std::vector<std::string> bad_paths = {
      "", "..", ".", "a/../b", "a/..", "../a", "/abs", "a//b", "a/", "./a", "a/./b", "a\\b",
      "..\\a", kNul, long_component, "a/" + long_component, too_long, "/",
      // Not UTF-8: Latin-1, overlong '/', a surrogate, a truncated sequence.
      "caf\xe9",
      "a/\xc0\xaf"
      "b",
      "\xed\xa0\x80", "x\xe2\x82"};
  for (const std::string& bad : bad_paths) {
    Status s = ValidateRelativePath(bad);
    EXPECT_FALSE(s.ok()) << "accepted: " << bad.substr(0, 40);
    if (!s.ok()) {
      EXPECT_EQ(s.code(), Status::Code::kRejected);
    }
  }
}

TEST(PathTest, RejectionMessageDoesNotCarryRawNul) {
  Status s = ValidateRelativePath(std::string_view("a\0b", 3));
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.message().find('\0'), std::string::npos);
}

TEST(PathTest, SymlinkTargetsInsideTheTree) {
  struct Case {
    const char* link;
    const char* target;
  };
  for (const Case& c : {Case{"a", "b"}, Case{"a", "b/c"}, Case{"d/a", ".."}, Case{"d/a", "../x"},
                        Case{"d/e/a", "../../x/y"}, Case{"d/a", "./x"}, Case{"d/a", "x//y/"},
                        Case{"dists/stable", "bookworm"}}) {
    EXPECT_TRUE(ValidateSymlinkTarget(c.link, c.target).ok()) << c.link << " -> " << c.target;
  }
}

TEST(PathTest, SymlinkTargetsEscapingOrMalformed) {
  struct Case {
    std::string link;
    std::string target;
  };
  for (const Case& c : {Case{"a", ".."}, Case{"a", "../x"}, Case{"d/a", "../../x"},
                        Case{"d/e/a", "../../../etc/passwd"}, Case{"a", "/etc/passwd"},
                        Case{"a", ""}, Case{"a", "x\\y"}, Case{"a", std::string("x\0y", 3)},
                        // ".." after a name could climb out of a symlinked directory.
                        Case{"d/a", "s/../x"}, Case{"a", "x/../../y"}, Case{"../a", "x"},
                        Case{"/a", "x"}, Case{"a", "caf\xe9"}}) {
    Status s = ValidateSymlinkTarget(c.link, c.target);
    EXPECT_FALSE(s.ok()) << c.link << " -> " << c.target;
    if (!s.ok()) {
      EXPECT_EQ(s.code(), Status::Code::kRejected);
    }
  }
}

TEST(PathTest, ParentOf) {
  EXPECT_EQ(ParentOf("a/b/c"), "a/b");
  EXPECT_EQ(ParentOf("a/b"), "a");
  EXPECT_EQ(ParentOf("c"), "");
}

TEST(PathTest, NoSymlinkParentsInOrdinaryOrMissingTree) {
  TempDir dir;
  testing::WriteFile(dir / "a/b/file", "x");
  EXPECT_TRUE(CheckNoSymlinkParents(dir.path(), "a/b/file").ok());
  EXPECT_TRUE(CheckNoSymlinkParents(dir.path(), "a/b/new").ok());
  EXPECT_TRUE(CheckNoSymlinkParents(dir.path(), "a/missing/deeper/new").ok());
  EXPECT_TRUE(CheckNoSymlinkParents(dir.path(), "top").ok());
}

TEST(PathTest, DetectsSymlinkedParentDirectory) {
  TempDir dir;
  TempDir outside;
  std::filesystem::create_directories(dir / "a");
  ASSERT_EQ(::symlink(outside.path().c_str(), (dir / "a/evil").c_str()), 0);
  Status s = CheckNoSymlinkParents(dir.path(), "a/evil/file");
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), Status::Code::kRejected);
  EXPECT_FALSE(CheckNoSymlinkParents(dir.path(), "a/evil/x/y").ok());
  // The last component itself may be a symlink: it is replaced, not followed.
  EXPECT_TRUE(CheckNoSymlinkParents(dir.path(), "a/evil").ok());

  // A symlink to a directory inside the tree is still refused as a parent.
  std::filesystem::create_directories(dir / "real");
  ASSERT_EQ(::symlink("real", (dir / "inner").c_str()), 0);
  EXPECT_FALSE(CheckNoSymlinkParents(dir.path(), "inner/file").ok());
}

TEST(PathTest, DetectsFileAsParent) {
  TempDir dir;
  testing::WriteFile(dir / "f", "x");
  Status s = CheckNoSymlinkParents(dir.path(), "f/x");
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), Status::Code::kRejected);
}

TEST(PathTest, CheckNoSymlinkParentsValidatesThePath) {
  TempDir dir;
  EXPECT_FALSE(CheckNoSymlinkParents(dir.path(), "../x").ok());
  EXPECT_FALSE(CheckNoSymlinkParents(dir.path(), "/etc/passwd").ok());
}

}  // namespace
}  // namespace mirrorcast
