// Every change the applier makes in the tree (write, mode, mtime, symlink,
// deletion, directory mode) refuses to follow a symlinked parent: both a
// symlink that is already there when the apply starts, and one swapped in
// while it runs (a local attacker racing the apply, made deterministic here
// with ApplierOptions::before_tree_change). Whatever happens, nothing
// outside the tree changes.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <map>

#include "core/crypto/sha256.h"
#include "core/mirror/applier.h"
#include "tests/support/temp_dir.h"
#include "tests/support/tree.h"

namespace mirrorcast::testing {
namespace {

namespace fs = std::filesystem;

constexpr int64_t kOldMtime = 1600000000;
constexpr int64_t kNewMtime = 1700000000;

v1::Change FileChange(v1::ChangeKind kind, const std::string& path, const std::string& content,
                      uint32_t mode, int64_t mtime) {
  v1::Change c;
  c.set_kind(kind);
  auto* e = c.mutable_entry();
  e->set_path(path);
  e->set_kind(v1::ENTRY_FILE);
  e->set_size(content.size());
  e->set_sha256(Sha256Of(content));
  e->set_mode(mode);
  e->set_mtime(mtime);
  return c;
}

v1::Change DirChange(v1::ChangeKind kind, const std::string& path, uint32_t mode) {
  v1::Change c;
  c.set_kind(kind);
  c.mutable_entry()->set_path(path);
  c.mutable_entry()->set_kind(v1::ENTRY_DIRECTORY);
  c.mutable_entry()->set_mode(mode);
  return c;
}

v1::Change LinkChange(const std::string& path, const std::string& target) {
  v1::Change c;
  c.set_kind(v1::CHANGE_ADDED);
  c.mutable_entry()->set_path(path);
  c.mutable_entry()->set_kind(v1::ENTRY_SYMLINK);
  c.mutable_entry()->set_symlink_target(target);
  return c;
}

v1::Change Deletion(const std::string& path, v1::EntryKind kind = v1::ENTRY_FILE) {
  v1::Change c;
  c.set_kind(v1::CHANGE_DELETED);
  c.mutable_entry()->set_path(path);
  c.mutable_entry()->set_kind(kind);
  return c;
}

void SetTimes(const fs::path& path, int64_t mtime) {
  struct timespec times[2] = {{static_cast<time_t>(mtime), 0}, {static_cast<time_t>(mtime), 0}};
  ASSERT_EQ(::utimensat(AT_FDCWD, path.c_str(), times, AT_SYMLINK_NOFOLLOW), 0);
}

// mode and mtime of everything below `root`, on top of the snapshot's kind,
// size, SHA-256 and mode.
std::map<std::string, std::string> Describe(const fs::path& root) {
  std::map<std::string, std::string> out;
  for (const auto& [path, what] : SnapshotTree(root)) {
    struct stat st {};
    ::lstat((root / path).c_str(), &st);
    out[path] = what + " mtime " + std::to_string(st.st_mtim.tv_sec);
  }
  return out;
}

class SymlinkParentTest : public ::testing::Test {
 protected:
  SymlinkParentTest() {
    // The tree: Packages/a.rpm and the directory Packages/sub.
    WriteFile(tree() / "Packages/a.rpm", "package a", 0644);
    SetTimes(tree() / "Packages/a.rpm", kOldMtime);
    fs::create_directories(tree() / "Packages/sub");
    ::chmod((tree() / "Packages/sub").c_str(), 0755);
    // Outside the tree: the same names, which nothing may touch.
    WriteFile(outside() / "a.rpm", "package a", 0600);
    SetTimes(outside() / "a.rpm", kOldMtime);
    fs::create_directories(outside() / "sub");
    ::chmod((outside() / "sub").c_str(), 0700);
    fs::create_directories(dir_ / "staging");
    outside_before_ = Describe(outside());
  }

  fs::path tree() const { return dir_.path() / "tree"; }
  fs::path outside() const { return dir_.path() / "outside"; }

  std::unique_ptr<Applier> MakeApplier(bool swap_during_commit) {
    ApplierOptions options;
    options.tree = tree();
    options.staging = dir_ / "staging";
    if (swap_during_commit) {
      // Once the apply has checked and opened Packages/, it becomes a
      // symlink to the outside directory (the real one moves aside, still
      // inside the tree).
      options.before_tree_change = [this](const std::string& path) {
        if (swapped_ || path.rfind("Packages/", 0) != 0) return;
        swapped_ = true;
        fs::rename(tree() / "Packages", tree() / "Packages.moved");
        fs::create_directory_symlink(outside(), tree() / "Packages");
      };
    }
    return std::make_unique<Applier>(options);
  }

  void SymlinkPackagesNow() {
    fs::rename(tree() / "Packages", tree() / "Packages.moved");
    fs::create_directory_symlink(outside(), tree() / "Packages");
  }

  // The honest path afterwards: with Packages a real directory again, the
  // same change list applies.
  void ExpectHonestCommitWorks(const std::vector<v1::Change>& changes,
                               const std::map<std::string, std::string>& staged = {}) {
    fs::remove(tree() / "Packages");
    if (!fs::exists(tree() / "Packages"))
      fs::rename(tree() / "Packages.moved", tree() / "Packages");
    for (const auto& [index, content] : staged) WriteFile(dir_ / "staging" / index, content, 0644);
    auto applier = MakeApplier(false);
    Status s = applier->Commit(changes);
    EXPECT_TRUE(s.ok()) << s.ToString();
  }

  void ExpectOutsideUntouched() {
    EXPECT_EQ(Describe(outside()), outside_before_) << "a file outside the tree changed";
  }

  TempDir dir_{"mirrorcast-symlink-parent"};
  std::map<std::string, std::string> outside_before_;
  bool swapped_ = false;
};

// --- a symlinked parent already there: refused, with a message -------------

TEST_F(SymlinkParentTest, ModeAndMtimeChangeRefusesASymlinkedParent) {
  SymlinkPackagesNow();
  const std::vector<v1::Change> changes = {
      FileChange(v1::CHANGE_MODIFIED, "Packages/a.rpm", "package a", 0755, kNewMtime)};
  Status s = MakeApplier(false)->Commit(changes);
  EXPECT_EQ(s.code(), Status::Code::kRejected) << s.ToString();
  EXPECT_NE(s.message().find("symlink"), std::string::npos) << s.ToString();
  ExpectOutsideUntouched();
  ExpectHonestCommitWorks(changes);
  struct stat st {};
  ASSERT_EQ(::stat((tree() / "Packages/a.rpm").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0755u);
  EXPECT_EQ(st.st_mtim.tv_sec, kNewMtime);
}

TEST_F(SymlinkParentTest, WriteRefusesASymlinkedParent) {
  SymlinkPackagesNow();
  const std::vector<v1::Change> changes = {
      FileChange(v1::CHANGE_MODIFIED, "Packages/a.rpm", "evil", 0644, kNewMtime)};
  WriteFile(dir_ / "staging/0", "evil", 0644);
  Status s = MakeApplier(false)->Commit(changes);
  EXPECT_EQ(s.code(), Status::Code::kRejected) << s.ToString();
  ExpectOutsideUntouched();
  ExpectHonestCommitWorks(changes);
  EXPECT_EQ(ReadFile(tree() / "Packages/a.rpm"), "evil");
}

TEST_F(SymlinkParentTest, DeletionRefusesASymlinkedParent) {
  SymlinkPackagesNow();
  const std::vector<v1::Change> changes = {Deletion("Packages/a.rpm")};
  Status s = MakeApplier(false)->Commit(changes);
  EXPECT_EQ(s.code(), Status::Code::kRejected) << s.ToString();
  ExpectOutsideUntouched();
  ExpectHonestCommitWorks(changes);
  EXPECT_FALSE(fs::exists(tree() / "Packages/a.rpm"));
}

TEST_F(SymlinkParentTest, DirectoryModeRefusesASymlinkedParent) {
  SymlinkPackagesNow();
  const std::vector<v1::Change> changes = {DirChange(v1::CHANGE_MODIFIED, "Packages/sub", 0555)};
  Status s = MakeApplier(false)->Commit(changes);
  EXPECT_EQ(s.code(), Status::Code::kRejected) << s.ToString();
  ExpectOutsideUntouched();
  ExpectHonestCommitWorks(changes);
  struct stat st {};
  ASSERT_EQ(::lstat((tree() / "Packages/sub").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0555u);
}

TEST_F(SymlinkParentTest, SymlinkCreationRefusesASymlinkedParent) {
  SymlinkPackagesNow();
  const std::vector<v1::Change> changes = {LinkChange("Packages/latest.rpm", "a.rpm")};
  Status s = MakeApplier(false)->Commit(changes);
  EXPECT_EQ(s.code(), Status::Code::kRejected) << s.ToString();
  ExpectOutsideUntouched();
  ExpectHonestCommitWorks(changes);
  EXPECT_EQ(fs::read_symlink(tree() / "Packages/latest.rpm"), "a.rpm");
}

TEST_F(SymlinkParentTest, DeferredDeletionRefusesASymlinkedParent) {
  SymlinkPackagesNow();
  Status s = MakeApplier(false)->Remove("Packages/a.rpm", v1::ENTRY_FILE);
  EXPECT_EQ(s.code(), Status::Code::kRejected) << s.ToString();
  s = MakeApplier(false)->Remove("Packages/sub", v1::ENTRY_DIRECTORY);
  EXPECT_EQ(s.code(), Status::Code::kRejected) << s.ToString();
  ExpectOutsideUntouched();
}

// --- a parent swapped for a symlink while the apply runs ----------------------
// The apply holds a descriptor of the directory it checked, so the change
// lands in that directory (still inside the tree) or is refused; it never
// follows the symlink that now stands at the path.

TEST_F(SymlinkParentTest, ModeAndMtimeChangeNeverFollowsAParentSwappedMidApply) {
  const std::vector<v1::Change> changes = {
      FileChange(v1::CHANGE_MODIFIED, "Packages/a.rpm", "package a", 0755, kNewMtime)};
  Status s = MakeApplier(true)->Commit(changes);
  ASSERT_TRUE(swapped_);
  ExpectOutsideUntouched();
  if (s.ok()) {
    struct stat st {};
    ASSERT_EQ(::lstat((tree() / "Packages.moved/a.rpm").c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 07777, 0755u);
  }
  ExpectHonestCommitWorks(changes);
}

TEST_F(SymlinkParentTest, WriteNeverFollowsAParentSwappedMidApply) {
  const std::vector<v1::Change> changes = {
      FileChange(v1::CHANGE_MODIFIED, "Packages/a.rpm", "evil", 0644, kNewMtime)};
  WriteFile(dir_ / "staging/0", "evil", 0644);
  (void)MakeApplier(true)->Commit(changes);
  ASSERT_TRUE(swapped_);
  ExpectOutsideUntouched();
}

TEST_F(SymlinkParentTest, DeletionNeverFollowsAParentSwappedMidApply) {
  const std::vector<v1::Change> changes = {Deletion("Packages/a.rpm")};
  (void)MakeApplier(true)->Commit(changes);
  ASSERT_TRUE(swapped_);
  ExpectOutsideUntouched();
  ExpectHonestCommitWorks(changes);
  EXPECT_FALSE(fs::exists(tree() / "Packages/a.rpm"));
}

TEST_F(SymlinkParentTest, DirectoryDeletionNeverFollowsAParentSwappedMidApply) {
  WriteFile(outside() / "sub/keep", "keep", 0644);
  outside_before_ = Describe(outside());
  const std::vector<v1::Change> changes = {Deletion("Packages/sub", v1::ENTRY_DIRECTORY)};
  (void)MakeApplier(true)->Commit(changes);
  ASSERT_TRUE(swapped_);
  ExpectOutsideUntouched();
}

TEST_F(SymlinkParentTest, DirectoryModeNeverFollowsAParentSwappedMidApply) {
  const std::vector<v1::Change> changes = {DirChange(v1::CHANGE_MODIFIED, "Packages/sub", 0555)};
  (void)MakeApplier(true)->Commit(changes);
  ASSERT_TRUE(swapped_);
  ExpectOutsideUntouched();
}

TEST_F(SymlinkParentTest, SymlinkCreationNeverFollowsAParentSwappedMidApply) {
  const std::vector<v1::Change> changes = {LinkChange("Packages/latest.rpm", "a.rpm")};
  (void)MakeApplier(true)->Commit(changes);
  ASSERT_TRUE(swapped_);
  ExpectOutsideUntouched();
}

}  // namespace
}  // namespace mirrorcast::testing
