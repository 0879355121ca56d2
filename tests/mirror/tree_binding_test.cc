// A state directory describes one tree.
#include "core/mirror/tree_binding.h"

#include <gtest/gtest.h>

#include <fstream>

#include "tests/support/temp_dir.h"

namespace mirrorcast {
namespace {

namespace fs = std::filesystem;

TEST(TreeBindingTest, AStateAcceptsItsTreeMovedOrRestoredAndRefusesAnother) {
  testing::TempDir dir;
  const fs::path state = dir.path() / "state";
  const fs::path tree = dir.path() / "tree";
  const fs::path other = dir.path() / "other";
  fs::create_directories(state);
  fs::create_directories(tree);
  fs::create_directories(other);

  EXPECT_TRUE(CheckStateTree(state, other).ok()) << "nothing recorded yet: an older state";
  ASSERT_TRUE(BindStateToTree(state, tree).ok());
  EXPECT_TRUE(BindStateToTree(state, tree).ok());
  EXPECT_TRUE(CheckStateTree(state, dir.path() / "." / "tree").ok()) << "another spelling";

  const Status refused = CheckStateTree(state, other);
  EXPECT_EQ(refused.code(), Status::Code::kFailedPrecondition);
  EXPECT_NE(refused.message().find("belongs to the tree " + fs::canonical(tree).string()),
            std::string::npos)
      << refused.message();
  EXPECT_NE(refused.message().find("remove " + (state / "tree").string()), std::string::npos);
  EXPECT_FALSE(BindStateToTree(state, other).ok());

  // Moved: same inode, new path.
  const fs::path moved = dir.path() / "moved";
  fs::rename(tree, moved);
  EXPECT_TRUE(CheckStateTree(state, moved).ok());
  // Restored in place: same path, new inode.
  fs::create_directories(tree);
  EXPECT_TRUE(CheckStateTree(state, tree).ok());

  std::ofstream(state / "tree") << "garbage\n";
  EXPECT_EQ(CheckStateTree(state, tree).code(), Status::Code::kCorruption);
}

}  // namespace
}  // namespace mirrorcast
