#include "core/fs/atomic.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <string>

#include "tests/support/temp_dir.h"
#include "tests/support/tree.h"

namespace mirrorcast {
namespace {

using testing::ReadFile;
using testing::TempDir;
using testing::WriteFile;
namespace fs = std::filesystem;

mode_t ModeOf(const fs::path& p) {
  struct stat st;
  EXPECT_EQ(::lstat(p.c_str(), &st), 0) << p;
  return st.st_mode & 07777;
}

size_t CountEntries(const fs::path& dir) {
  size_t n = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir)) ++n;
  return n;
}

TEST(UniqueFdTest, ClosesAndReleases) {
  int raw = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  ASSERT_GE(raw, 0);
  {
    UniqueFd fd(raw);
    EXPECT_TRUE(fd.valid());
    UniqueFd moved(std::move(fd));
    EXPECT_FALSE(fd.valid());  // NOLINT: testing the moved-from state
    EXPECT_EQ(moved.get(), raw);
  }
  EXPECT_EQ(::fcntl(raw, F_GETFD), -1);  // closed by the destructor
  int raw2 = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  ASSERT_GE(raw2, 0);
  UniqueFd fd(raw2);
  EXPECT_EQ(fd.release(), raw2);
  EXPECT_FALSE(fd.valid());
  EXPECT_NE(::fcntl(raw2, F_GETFD), -1);  // still open: we own it now
  ::close(raw2);
}

TEST(AtomicTest, WriteFileAtomicCreatesAndReplacesContentAndMode) {
  TempDir dir;
  const fs::path p = dir / "config.toml";
  ASSERT_TRUE(WriteFileAtomic(p, "first", 0600).ok());
  EXPECT_EQ(ReadFile(p), "first");
  EXPECT_EQ(ModeOf(p), 0600u);

  ASSERT_TRUE(WriteFileAtomic(p, std::string("second\0x", 8), 0644).ok());
  EXPECT_EQ(ReadFile(p), std::string("second\0x", 8));
  EXPECT_EQ(ModeOf(p), 0644u);

  ASSERT_TRUE(WriteFileAtomic(p, "", 0640).ok());
  EXPECT_EQ(ReadFile(p), "");
  EXPECT_EQ(ModeOf(p), 0640u);
  // No temporary file left behind.
  EXPECT_EQ(CountEntries(dir.path()), 1u);
}

TEST(AtomicTest, WriteFileAtomicReplacesASymlinkInsteadOfFollowingIt) {
  TempDir dir;
  TempDir outside;
  WriteFile(outside / "victim", "keep");
  ASSERT_EQ(::symlink((outside / "victim").c_str(), (dir / "link").c_str()), 0);
  ASSERT_TRUE(WriteFileAtomic(dir / "link", "new").ok());
  EXPECT_EQ(ReadFile(outside / "victim"), "keep");
  EXPECT_FALSE(fs::is_symlink(dir / "link"));
  EXPECT_EQ(ReadFile(dir / "link"), "new");
}

TEST(AtomicTest, WriteFileAtomicFailsInMissingDirectoryWithoutLeftovers) {
  TempDir dir;
  Status s = WriteFileAtomic(dir / "missing" / "f", "x");
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.code(), Status::Code::kNotFound);
  EXPECT_EQ(CountEntries(dir.path()), 0u);
}

TEST(AtomicTest, ReadFileToStringHonoursLimit) {
  TempDir dir;
  WriteFile(dir / "f", std::string(100, 'a'));
  auto exact = ReadFileToString(dir / "f", 100);
  ASSERT_TRUE(exact.ok()) << exact.status().ToString();
  EXPECT_EQ(*exact, std::string(100, 'a'));
  auto over = ReadFileToString(dir / "f", 99);
  ASSERT_FALSE(over.ok());
  EXPECT_EQ(over.status().code(), Status::Code::kResourceExhausted);
  auto missing = ReadFileToString(dir / "nope", 10);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), Status::Code::kNotFound);
  WriteFile(dir / "empty", "");
  auto empty = ReadFileToString(dir / "empty", 0);
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(*empty, "");
  EXPECT_FALSE(ReadFileToString(dir.path(), 1000).ok());
}

TEST(AtomicTest, RenameDurableMovesAcrossDirectories) {
  TempDir dir;
  WriteFile(dir / "stage/f", "payload");
  fs::create_directories(dir / "tree");
  ASSERT_TRUE(RenameDurable(dir / "stage/f", dir / "tree/f").ok());
  EXPECT_FALSE(fs::exists(dir / "stage/f"));
  EXPECT_EQ(ReadFile(dir / "tree/f"), "payload");
  EXPECT_FALSE(RenameDurable(dir / "stage/f", dir / "tree/g").ok());
}

TEST(AtomicTest, MakeDirsUnderCreatesMissingParentsWithMode) {
  TempDir dir;
  fs::create_directories(dir / "a");
  ASSERT_TRUE(MakeDirsUnder(dir.path(), "a/b/c", 0750).ok());
  EXPECT_TRUE(fs::is_directory(dir / "a/b/c"));
  EXPECT_EQ(ModeOf(dir / "a/b"), 0750u);
  EXPECT_EQ(ModeOf(dir / "a/b/c"), 0750u);
  // Idempotent; existing directories keep their mode.
  ASSERT_TRUE(MakeDirsUnder(dir.path(), "a/b/c", 0700).ok());
  EXPECT_EQ(ModeOf(dir / "a/b/c"), 0750u);
  EXPECT_TRUE(MakeDirsUnder(dir.path(), "", 0755).ok());
}

TEST(AtomicTest, MakeDirsUnderRefusesSymlinkedParent) {
  TempDir dir;
  TempDir outside;
  ASSERT_EQ(::symlink(outside.path().c_str(), (dir / "evil").c_str()), 0);
  Status s = MakeDirsUnder(dir.path(), "evil/x/y");
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), Status::Code::kRejected);
  EXPECT_EQ(CountEntries(outside.path()), 0u);
  // The last component being a symlink is refused too: it is not a directory.
  EXPECT_FALSE(MakeDirsUnder(dir.path(), "evil").ok());
}

TEST(AtomicTest, MakeDirsUnderRefusesFileInTheWayAndBadPaths) {
  TempDir dir;
  WriteFile(dir / "f", "x");
  EXPECT_FALSE(MakeDirsUnder(dir.path(), "f/x").ok());
  EXPECT_FALSE(MakeDirsUnder(dir.path(), "f").ok());
  EXPECT_FALSE(MakeDirsUnder(dir.path(), "../escape").ok());
  EXPECT_FALSE(fs::exists(dir.path().parent_path() / "escape"));
  EXPECT_FALSE(MakeDirsUnder(dir.path(), "/abs").ok());
}

TEST(AtomicTest, CopyFileContentsCopiesLargeFileWithMode) {
  TempDir dir;
  const std::string data = testing::RandomBytes(3 * 1024 * 1024 + 17, 7);
  WriteFile(dir / "src", data);
  uint64_t copied = 0;
  ASSERT_TRUE(CopyFileContents(dir / "src", dir / "dst", 0604, &copied).ok());
  EXPECT_EQ(copied, data.size());
  EXPECT_EQ(ReadFile(dir / "dst"), data);
  EXPECT_EQ(ModeOf(dir / "dst"), 0604u);

  // Overwrites (truncates) an existing, longer destination.
  WriteFile(dir / "small", "tiny");
  ASSERT_TRUE(CopyFileContents(dir / "small", dir / "dst", 0644, &copied).ok());
  EXPECT_EQ(copied, 4u);
  EXPECT_EQ(ReadFile(dir / "dst"), "tiny");
  EXPECT_EQ(ModeOf(dir / "dst"), 0644u);
}

TEST(AtomicTest, CopyFileContentsNeverWritesThroughSymlink) {
  TempDir dir;
  TempDir outside;
  WriteFile(dir / "src", "evil");
  WriteFile(outside / "victim", "keep");
  ASSERT_EQ(::symlink((outside / "victim").c_str(), (dir / "dst").c_str()), 0);
  Status s = CopyFileContents(dir / "src", dir / "dst", 0644);
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(ReadFile(outside / "victim"), "keep");
  EXPECT_FALSE(CopyFileContents(dir / "missing", dir / "x", 0644).ok());
  EXPECT_FALSE(CopyFileContents(dir.path(), dir / "x", 0644).ok());
}

TEST(AtomicTest, SameFilesystem) {
  TempDir dir;
  fs::create_directories(dir / "a");
  auto same = SameFilesystem(dir / "a", dir / "not/yet/there");
  ASSERT_TRUE(same.ok()) << same.status().ToString();
  EXPECT_TRUE(*same);
  // /proc is always its own filesystem.
  auto other = SameFilesystem(dir.path(), "/proc/self");
  ASSERT_TRUE(other.ok());
  EXPECT_FALSE(*other);
}

TEST(AtomicTest, FsyncHelpers) {
  TempDir dir;
  WriteFile(dir / "f", "x");
  EXPECT_TRUE(FsyncPath(dir / "f").ok());
  EXPECT_TRUE(FsyncPath(dir.path()).ok());
  EXPECT_TRUE(FsyncDir(dir.path()).ok());
  EXPECT_FALSE(FsyncDir(dir / "f").ok());
  EXPECT_FALSE(FsyncPath(dir / "missing").ok());
}

}  // namespace
}  // namespace mirrorcast
