// Applier::Commit(): the order a web client can observe (inotify sees every
// rename in the tree), idempotent replay after a crash, and refusal to write
// through a symlinked directory.
#include "core/mirror/applier.h"

#include <gtest/gtest.h>
#include <sys/inotify.h>
#include <unistd.h>

#include <map>

#include "core/crypto/sha256.h"
#include "tests/support/temp_dir.h"
#include "tests/support/tree.h"

namespace mirrorcast::testing {
namespace {

namespace fs = std::filesystem;

v1::Change FileChange(v1::ChangeKind kind, const std::string& path, const std::string& content) {
  v1::Change c;
  c.set_kind(kind);
  auto* e = c.mutable_entry();
  e->set_path(path);
  e->set_kind(v1::ENTRY_FILE);
  e->set_size(content.size());
  e->set_sha256(Sha256Of(content));
  e->set_mode(0644);
  e->set_mtime(1700000000);
  return c;
}

v1::Change DirChange(const std::string& path) {
  v1::Change c;
  c.set_kind(v1::CHANGE_ADDED);
  c.mutable_entry()->set_path(path);
  c.mutable_entry()->set_kind(v1::ENTRY_DIRECTORY);
  c.mutable_entry()->set_mode(0755);
  return c;
}

v1::Change Deletion(const std::string& path) {
  v1::Change c;
  c.set_kind(v1::CHANGE_DELETED);
  c.mutable_entry()->set_path(path);
  c.mutable_entry()->set_kind(v1::ENTRY_FILE);
  return c;
}

class ApplierTest : public ::testing::Test {
 protected:
  ApplierTest() {
    fs::create_directories(dir_ / "tree");
    fs::create_directories(dir_ / "staging");
    ApplierOptions options;
    options.tree = dir_ / "tree";
    options.staging = dir_ / "staging";
    applier_ = std::make_unique<Applier>(options);
  }

  // What Stage() would have left: content of change i at staging/i.
  void StageContent(const std::vector<v1::Change>& changes,
                    const std::map<std::string, std::string>& content) {
    for (size_t i = 0; i < changes.size(); ++i) {
      const auto& e = changes[i].entry();
      if (changes[i].kind() == v1::CHANGE_DELETED || e.kind() != v1::ENTRY_FILE) continue;
      WriteFile(dir_ / "staging" / std::to_string(i), content.at(e.path()), 0644);
    }
  }

  // The update used by several tests: content, metadata and an index root,
  // listed in path order as a change list is.
  std::vector<v1::Change> Update() {
    content_ = {{"Packages/a.rpm", "package a"},
                {"Packages/b.rpm", "package b"},
                {"repodata/primary.xml", "<primary/>"},
                {"repodata/repomd.xml", "<repomd/>"}};
    return {DirChange("Packages"),
            FileChange(v1::CHANGE_ADDED, "Packages/a.rpm", content_["Packages/a.rpm"]),
            FileChange(v1::CHANGE_ADDED, "Packages/b.rpm", content_["Packages/b.rpm"]),
            Deletion("old.rpm"),
            DirChange("repodata"),
            FileChange(v1::CHANGE_ADDED, "repodata/primary.xml", content_["repodata/primary.xml"]),
            FileChange(v1::CHANGE_ADDED, "repodata/repomd.xml", content_["repodata/repomd.xml"])};
  }

  TempDir dir_{"mirrorcast-applier"};
  std::unique_ptr<Applier> applier_;
  std::map<std::string, std::string> content_;
};

TEST_F(ApplierTest, ContentLandsBeforeMetadataIndexRootsLastAndDeletionsAfter) {
  WriteFile(dir_ / "tree/old.rpm", "old");
  fs::create_directories(dir_ / "tree/Packages");
  fs::create_directories(dir_ / "tree/repodata");
  const auto changes = Update();
  StageContent(changes, content_);

  // Watch every directory of the tree, as a web client polling would see it.
  int fd = inotify_init1(IN_NONBLOCK);
  ASSERT_GE(fd, 0);
  std::map<int, std::string> dirs;
  for (const std::string d : {"", "Packages", "repodata"}) {
    int wd = inotify_add_watch(fd, (dir_ / "tree" / d).c_str(), IN_MOVED_TO | IN_DELETE);
    ASSERT_GE(wd, 0);
    dirs[wd] = d;
  }
  ASSERT_TRUE(applier_->Commit(changes).ok());

  std::vector<std::string> order;
  alignas(inotify_event) char buf[8192];
  ssize_t n;
  while ((n = read(fd, buf, sizeof(buf))) > 0) {
    for (char* p = buf; p < buf + n;) {
      auto* ev = reinterpret_cast<inotify_event*>(p);
      const std::string dir = dirs[ev->wd];
      const std::string name = ev->len ? ev->name : "";
      order.push_back(std::string(ev->mask & IN_DELETE ? "delete " : "place ") +
                      (dir.empty() ? name : dir + "/" + name));
      p += sizeof(inotify_event) + ev->len;
    }
  }
  close(fd);
  const std::vector<std::string> expected = {"place Packages/a.rpm", "place Packages/b.rpm",
                                             "place repodata/primary.xml",
                                             "place repodata/repomd.xml", "delete old.rpm"};
  EXPECT_EQ(order, expected);
}

TEST_F(ApplierTest, CommitReplaysAfterAnInterruptionAndIsIdempotent) {
  const auto changes = Update();
  StageContent(changes, content_);
  // A crash after the first content file moved into place.
  fs::create_directories(dir_ / "tree/Packages");
  fs::rename(dir_ / "staging/1", dir_ / "tree/Packages/a.rpm");
  ASSERT_TRUE(applier_->Commit(changes).ok());
  ASSERT_TRUE(applier_->Commit(changes).ok());  // and once more: nothing changes
  for (const auto& [path, content] : content_) {
    EXPECT_EQ(ReadFile(dir_ / "tree" / path), content) << path;
  }
  EXPECT_FALSE(fs::exists(dir_ / "tree/old.rpm"));
}

TEST_F(ApplierTest, MissingStagedContentIsAnErrorNotAnEmptyFile) {
  const auto changes = Update();
  // Nothing staged and nothing in the tree.
  Status s = applier_->Commit(changes);
  EXPECT_FALSE(s.ok());
  EXPECT_FALSE(fs::exists(dir_ / "tree/repodata/repomd.xml"));
}

TEST_F(ApplierTest, RefusesToWriteThroughASymlinkedDirectory) {
  fs::create_directories(dir_ / "outside");
  fs::create_directory_symlink(dir_ / "outside", dir_ / "tree/Packages");
  std::vector<v1::Change> changes = {FileChange(v1::CHANGE_ADDED, "Packages/evil.rpm", "evil")};
  StageContent(changes, {{"Packages/evil.rpm", "evil"}});
  Status s = applier_->Commit(changes);
  EXPECT_FALSE(s.ok());
  EXPECT_FALSE(fs::exists(dir_ / "outside/evil.rpm"));
}

TEST_F(ApplierTest, RefusesPathsInsideTheStagingArea) {
  std::vector<v1::Change> changes = {FileChange(v1::CHANGE_ADDED, ".mirrorcast-staging/x", "x")};
  StageContent(changes, {{".mirrorcast-staging/x", "x"}});
  EXPECT_EQ(applier_->Commit(changes).code(), Status::Code::kRejected);
}

}  // namespace
}  // namespace mirrorcast::testing
