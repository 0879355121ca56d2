// The trace files checkers read: their format, where they go, and that the
// origin's own files of those names are left alone.
#include "core/mirror/trace_files.h"

#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "tests/support/temp_dir.h"

namespace mirrorcast {
namespace {

namespace fs = std::filesystem;

std::string Read(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

TraceInfo Info() {
  TraceInfo info;
  info.name = "mirror.example.org";
  info.repo = "fedora";
  info.serial = 42;
  info.started_unix = 1796188790;  // Wed, 02 Dec 2026 05:19:50 +0000
  info.applied_unix = 1796188800;
  info.upstream = "origin.example.org:7400";
  info.bytes_fetched = 1234;
  return info;
}

TEST(TraceFilesTest, DebianTraceHasTheFtpsyncShape) {
  EXPECT_EQ(DebianTrace(Info()),
            "Wed Dec  2 05:20:00 UTC 2026\n"
            "Date: Wed, 02 Dec 2026 05:20:00 +0000\n"
            "Date-Started: Wed, 02 Dec 2026 05:19:50 +0000\n"
            "Archive serial: 42\n"
            "Creator: mirrorcast 0.1.0\n"
            "Running on host: mirror.example.org\n"
            "Trigger: push (mirrorcast repo fedora serial 42)\n"
            "Upstream-mirror: origin.example.org:7400\n"
            "Total bytes received: 1234\n"
            "Total time spent: 10\n");
  EXPECT_EQ(ArchLastSync(Info()), "1796188800\n");
}

TEST(TraceFilesTest, WritesBothAndLeavesWhatTheManifestNamesAlone) {
  testing::TempDir dir;
  const fs::path tree = dir.path() / "tree";
  fs::create_directories(tree);
  ASSERT_TRUE(WriteTraceFiles(tree, Info(), [](const std::string&) { return false; }).ok());
  EXPECT_EQ(Read(tree / "project/trace/mirror.example.org"), DebianTrace(Info()));
  EXPECT_EQ(Read(tree / "lastsync"), "1796188800\n");
  EXPECT_EQ(fs::status(tree / "lastsync").permissions() & fs::perms::others_read,
            fs::perms::others_read);

  // The origin publishes a lastsync of its own: it is not overwritten.
  std::ofstream(tree / "lastsync") << "origin's\n";
  TraceInfo later = Info();
  later.serial = 43;
  ASSERT_TRUE(
      WriteTraceFiles(tree, later, [](const std::string& p) { return p == "lastsync"; }).ok());
  EXPECT_EQ(Read(tree / "lastsync"), "origin's\n");
  EXPECT_NE(Read(tree / "project/trace/mirror.example.org").find("Archive serial: 43"),
            std::string::npos);
}

TEST(TraceFilesTest, NeverWritesThroughASymlinkedParent) {
  testing::TempDir dir;
  const fs::path tree = dir.path() / "tree";
  const fs::path outside = dir.path() / "outside";
  fs::create_directories(tree);
  fs::create_directories(outside);
  fs::create_directory_symlink(outside, tree / "project");
  Status s = WriteTraceFiles(tree, Info(), [](const std::string&) { return false; });
  EXPECT_FALSE(s.ok());
  EXPECT_TRUE(fs::is_empty(outside));
  // A symlink where lastsync goes is replaced, not followed.
  fs::remove(tree / "project");
  std::ofstream(outside / "target") << "keep";
  fs::create_symlink(outside / "target", tree / "lastsync");
  ASSERT_TRUE(WriteTraceFiles(tree, Info(), [](const std::string&) { return false; }).ok());
  EXPECT_EQ(Read(outside / "target"), "keep");
  EXPECT_FALSE(fs::is_symlink(tree / "lastsync"));
}

TEST(TraceFilesTest, NamesAndPaths) {
  EXPECT_TRUE(ValidTraceName("mirror-1.example.org"));
  EXPECT_FALSE(ValidTraceName(""));
  EXPECT_FALSE(ValidTraceName(".hidden"));
  EXPECT_FALSE(ValidTraceName("a/b"));
  EXPECT_FALSE(ValidTraceName("a b"));
  EXPECT_FALSE(ValidTraceName(std::string(256, 'a')));
  EXPECT_TRUE(IsTraceFilePath("lastsync"));
  EXPECT_TRUE(IsTraceFilePath("project/trace/m"));
  EXPECT_FALSE(IsTraceFilePath("project/trace/m/x"));
  EXPECT_FALSE(IsTraceFilePath("project/trace"));
  EXPECT_FALSE(IsTraceFilePath("project/tracex/m"));
  EXPECT_TRUE(IsTraceDirPath("project"));
  EXPECT_TRUE(IsTraceDirPath("project/trace"));
  EXPECT_FALSE(IsTraceDirPath("project/other"));
}

}  // namespace
}  // namespace mirrorcast
